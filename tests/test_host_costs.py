"""The host cost model (contract/host_costs.py): every board has cited costs, and the price of a
token is the equation its docstring states."""
from __future__ import annotations

import pytest

from mmfree.contract import host_costs as hc
from mmfree.contract.boards import BOARDS


def test_every_board_has_cited_costs():
    assert set(hc.HOST_COSTS) == set(BOARDS)
    for board, costs in hc.HOST_COSTS.items():
        figures = [costs.register_read_us, costs.register_write_us, costs.buffer_read_us_per_byte,
                   costs.invalidate_us, costs.completion_wakeup_us, costs.interrupt_wakeup_us]
        for cost in figures:
            assert cost.value > 0 and cost.kind in ("measured", "modelled", "assumed"), (board, cost)
            assert "http" in cost.source or "DS" in cost.source, (board, cost.source)


@pytest.mark.parametrize("board", sorted(hc.HOST_COSTS))
def test_host_time_is_the_stated_equation(board):
    c = hc.host_costs(board)
    us = hc.host_us_per_token(board, 2, 3, 1000, invalidates=1, waits=1)
    assert us == pytest.approx(2 * c.register_read_us.value + 3 * c.register_write_us.value
                               + 1000 * c.buffer_read_us_per_byte.value + c.invalidate_us.value
                               + c.completion_wakeup_us.value)
    assert hc.host_us_per_token(board, 0, 0, 0, waits=0) == 0.0


def test_the_kv260_is_the_z2_scaled_by_cpu_clock():
    z2, kv = hc.host_costs("pynq-z2"), hc.host_costs("kv260")
    ratio = hc.Z7020_CPU_MHZ / hc.K26_CPU_MHZ
    assert kv.register_read_us.value == pytest.approx(z2.register_read_us.value * ratio)
    assert kv.register_read_us.kind == "modelled"
    assert kv.completion_wakeup_us == z2.completion_wakeup_us          # the kernel's timer slack, not the CPU


def test_greedy_costs_a_fraction_of_reading_the_logits():
    """The 370M model (V 32000): greedy (2 reads, 3 writes) against the full readout it replaced."""
    for board in hc.HOST_COSTS:
        greedy = hc.host_us_per_token(board, 2, 3, 0)
        full = hc.host_us_per_token(board, 14, 3, 8 * 32000, invalidates=1)
        assert greedy < full / 5, (board, greedy, full)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=r"^no host costs for board 'zcu104' \(boards: pynq-z2, kv260\)$"):
        hc.host_us_per_token("zcu104", 1, 1, 0)
    with pytest.raises(ValueError, match=r"^reads must be >= 0, not -1$"):
        hc.host_us_per_token("pynq-z2", -1, 1, 0)


def test_buffer_writes_and_flushes_are_priced_like_reads_and_invalidates():
    """A token whose embedding row the host copies in (the table in host memory: docs/capacity.md)."""
    from mmfree.contract.host_costs import host_costs, host_us_per_token

    c = host_costs("pynq-z2")
    row = host_us_per_token("pynq-z2", 0, 2, 0, waits=0, bytes_written=2048, flushes=1)
    assert row == pytest.approx(2 * c.register_write_us.value + 2048 * c.buffer_read_us_per_byte.value
                                + c.invalidate_us.value)
    assert 100 < row < 110                       # 62 us of EMBED_ADDR writes, 12.8 us of copy, 31 us of flush
    with pytest.raises(ValueError, match="flushes must be >= 0"):
        host_us_per_token("pynq-z2", 0, 0, 0, flushes=-1)
