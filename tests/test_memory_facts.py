"""The boards' memory figures (contract/memory.py) are cited, consistent and match docs/memory.md.

* docs/memory.md's "Figures" table, between its markers, is :func:`markdown_table` exactly.
* Every figure has a positive value, a unit and a non-empty source.
* Peak bandwidth is data rate x bus bytes (PYNQ-Z2 2.1 GB/s, KV260 19.2 GB/s); every published
  calibration point lies below its board's peak and is in GB/s.
* ``ddrc_port_of_hp`` names exactly the HP ports of contract/boards.py.
"""
from __future__ import annotations

import pytest

from mmfree.contract.boards import BOARDS
from mmfree.contract.memory import (BOARD_MEMORY, TABLE_BEGIN, TABLE_END, BoardMemory, Figure,
                                    get_board_memory, markdown_table)

from helpers import REPO

MEMORIES = sorted(BOARD_MEMORY)


def test_doc_table_is_generated():
    text = (REPO / "docs" / "memory.md").read_text()
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1
    table = text.split(TABLE_BEGIN + "\n", 1)[1].split(TABLE_END, 1)[0]
    assert table == markdown_table(), \
        "docs/memory.md's Figures table differs from contract/memory.py: paste python -m mmfree.contract.memory"


def test_every_board_has_memory_figures():
    assert sorted(BOARDS) == MEMORIES
    for name, memory in BOARD_MEMORY.items():
        assert memory.board == name


@pytest.mark.parametrize("board", MEMORIES)
def test_every_figure_is_cited_and_positive(board):
    memory = get_board_memory(board)
    figures = memory.figures()
    # Each Figure field appears, plus every efficiency entry and calibration point.
    plain = [f for f in memory.__dataclass_fields__ if isinstance(getattr(memory, f), Figure)]
    assert len(figures) == len(plain) + len(memory.controller_efficiency) + len(memory.calibration)
    for name, figure in figures:
        assert isinstance(figure, Figure), name
        assert figure.value > 0, f"{board} {name}: {figure.value}"
        assert figure.unit.strip(), f"{board} {name}: no unit"
        assert figure.source.strip(), f"{board} {name}: no source"
    assert memory.address_map.strip() and memory.dram.strip()


@pytest.mark.parametrize("board, peak", [("pynq-z2", 2.1e9), ("kv260", 19.2e9)])
def test_peak_is_data_rate_times_bus_bytes(board, peak):
    memory = get_board_memory(board)
    assert memory.peak_bytes_per_s == pytest.approx(memory.data_rate_mt_s.value * 1e6 * memory.bus_bits.value / 8)
    assert memory.peak_bytes_per_s == pytest.approx(peak)


@pytest.mark.parametrize("board", MEMORIES)
def test_calibration_points_are_below_peak(board):
    memory = get_board_memory(board)
    assert memory.calibration, f"{board}: no calibration point"
    for point in memory.calibration:
        assert point.unit == "GB/s"
        assert 0 < point.value * 1e9 < memory.peak_bytes_per_s


@pytest.mark.parametrize("board", MEMORIES)
def test_ddrc_ports_cover_the_boards_hp_ports(board):
    memory = get_board_memory(board)
    assert set(memory.ddrc_port_of_hp) == set(BOARDS[board].hp_ports)
    assert all(isinstance(p, int) and p >= 0 for p in memory.ddrc_port_of_hp.values())


@pytest.mark.parametrize("board", MEMORIES)
def test_timings_hang_together(board):
    memory = get_board_memory(board)
    t_ck = memory.t_ck_ns.value
    # The DRAM clock is half the data rate; under row-bank-column the bank bits start above one row.
    assert t_ck == pytest.approx(2e3 / memory.data_rate_mt_s.value, rel=1e-3)
    assert memory.t_refi_ns.value > memory.t_rfc_ns.value > memory.t_ras_ns.value
    assert memory.banks.value % memory.bank_groups.value == 0
    assert 2 ** memory.bank_shift.value == memory.row_bytes.value


def test_pynq_z2_pairs_hp0_with_hp2():
    ports = get_board_memory("pynq-z2").ddrc_port_of_hp
    assert ports["S_AXI_HP0"] == ports["S_AXI_HP1"] != ports["S_AXI_HP2"] == ports["S_AXI_HP3"]


def test_kv260_hp1_and_hp2_share_a_port():
    ports = get_board_memory("kv260").ddrc_port_of_hp
    assert ports["S_AXI_HP1_FPD"] == ports["S_AXI_HP2_FPD"]
    assert len({ports["S_AXI_HP0_FPD"], ports["S_AXI_HP1_FPD"], ports["S_AXI_HP3_FPD"]}) == 3


def test_unknown_board_is_one_line():
    with pytest.raises(ValueError) as info:
        get_board_memory("zedboard")
    assert "\n" not in str(info.value) and "zedboard" in str(info.value)


def test_dataclass_is_frozen():
    memory = get_board_memory("kv260")
    assert isinstance(memory, BoardMemory)
    with pytest.raises(Exception):
        memory.board = "other"  # type: ignore[misc]
