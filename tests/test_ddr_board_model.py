"""The board memory models of the simulated DDR (sim/ddr_model.v) against their documents.

* Calibration: through the accelerator's own read master (``sim/ddr_calib``), each board's model
  delivers a sustained sequential read bandwidth within +-10 % of every published calibration
  point of ``contract/memory.py`` (docs/memory.md cites them).
* The ideal model stays available and delivers exactly its constant rate.
* Each mechanism can be seen: refresh happens every tREFI, processor traffic takes its share,
  and the latency the master sees is spread above the documented read latency.
* The builds follow their boards' port rules: bursts within the HP port's limit, reads in flight
  within its acceptance, the two PYNQ-Z2 ports on different DDR controller ports.
"""
from __future__ import annotations

import dataclasses

import pytest

from mmfree.contract.boards import get_board
from mmfree.contract.configs import get_config
from mmfree.contract.memory import get_board_memory

BOARDS = ("pynq-z2", "kv260")
#: Enough bytes for many refresh intervals on either board.
READ_BYTES = 2 << 20


def measure(config, read_bytes: int = READ_BYTES) -> dict:
    from mmfree.sim.ddr_calib import measure_read

    ddr = dict(config.ddr_params(), size_bytes=read_bytes)
    stats = measure_read(ddr, bus_bytes=config.bus_bytes, ports=config.ports, outstanding=config.outstanding,
                         burst_bytes=config.max_burst_beats * config.bus_bytes, read_bytes=read_bytes)
    assert not stats["protocol_error"], "the read master broke an AXI rule the model checks"
    stats["gb_per_s"] = stats["bytes_per_cycle"] * config.clock_hz / 1e9
    return stats


@pytest.mark.sim
@pytest.mark.parametrize("board", BOARDS)
def test_sustained_read_bandwidth_meets_the_calibration_points(board):
    memory = get_board_memory(board)
    # the build's ports and bursts, at the PL clock the calibration points were measured at
    config = dataclasses.replace(get_config(board), clock_hz=memory.calibration_clock_mhz.value * 1e6)
    stats = measure(config)
    assert memory.calibration, f"{board} has no calibration point"
    for point in memory.calibration:
        assert abs(stats["gb_per_s"] / point.value - 1) <= 0.10, (
            f"{board}: the model sustains {stats['gb_per_s']:.3f} GB/s, the calibration point is "
            f"{point.value} GB/s ({point.source})")
    # below the DRAM's peak, and refresh came at its interval
    assert stats["gb_per_s"] < memory.peak_bytes_per_s / 1e9
    span = stats["last_read"] - stats["first_read"]
    interval = config.ddr_params()["refresh_interval_cycles"]
    assert abs(stats["refreshes"] - stats["cycles"] / interval) <= 1
    # the master saw at least the documented latency, and a spread above it
    assert stats["latency_min"] >= config.ddr_params()["latency_cycles"]
    assert stats["latency_max"] > stats["latency_min"]
    assert span > 0 and stats["row_misses"] > 0


@pytest.mark.sim
def test_ideal_model_and_processor_share():
    z2 = get_config("pynq-z2")
    ideal = measure(z2.with_memory("ideal"), 1 << 20)
    assert ideal["bytes_per_cycle"] == pytest.approx(float(z2.ddr_bytes_per_cycle), rel=2e-3)
    assert ideal["refreshes"] == 0 and ideal["row_misses"] == 0
    alone = measure(z2, 1 << 20)
    shared = measure(z2.with_memory("board", cpu_share=0.25), 1 << 20)
    # a quarter of the bus to the processor: the accelerator keeps about three quarters, a little less
    # for the rows the processor's accesses close
    assert 0.65 <= shared["bytes_per_cycle"] / alone["bytes_per_cycle"] <= 0.80
    assert shared["row_misses"] > alone["row_misses"]


@pytest.mark.parametrize("board", BOARDS)
def test_builds_follow_their_port_rules(board):
    config, memory = get_config(board), get_board_memory(board)
    assert config.max_burst_beats <= memory.pl_port_max_burst.value
    assert config.max_burst_beats * config.bus_bytes <= 4096          # never across 4 KiB (aligned bursts)
    assert config.outstanding <= memory.pl_port_read_acceptance.value
    assert 8 * config.bus_bytes == memory.pl_port_bits.value
    assert config.clock_hz / 1e6 <= memory.pl_port_max_clock_mhz.value
    used = get_board(board).used_hp_ports
    controller_ports = [memory.ddrc_port_of_hp[hp] for hp in used]
    if config.ports <= len(set(memory.ddrc_port_of_hp.values())):
        assert len(set(controller_ports)) == len(controller_ports), f"{board}: {used} share a controller port"
    # enough reads in flight to cover the latency at the port's share of the sustained rate
    latency_cycles = config.ddr_params()["latency_cycles"] + config.ddr_params()["jitter_cycles"]
    per_port = memory.calibration[0].value * 1e9 / config.clock_hz / config.ports
    assert config.outstanding * config.max_burst_beats * config.bus_bytes >= latency_cycles * per_port


def test_board_parameters_come_from_the_cited_figures():
    config = get_config("pynq-z2")
    z2, clock = config.ddr_params(), config.clock_hz
    memory = get_board_memory("pynq-z2")
    assert z2["bandwidth_num"] / z2["bandwidth_den"] == pytest.approx(memory.peak_bytes_per_s / clock, rel=1e-3)
    assert z2["refresh_interval_cycles"] == round(memory.t_refi_ns.value * clock / 1e9)
    assert z2["refresh_cycles"] * 1e9 / clock >= memory.t_rfc_ns.value
    assert 1 << z2["row_shift"] == memory.row_bytes.value * memory.banks.value
    assert z2["queue"] == memory.pl_port_read_acceptance.value
    # sim-default is the PYNQ-Z2 memory system (at its own clock)
    sim = get_config("sim-default")
    same_clock = dataclasses.replace(config, clock_hz=sim.clock_hz, ports=sim.ports,
                                     ddr_bytes_per_cycle=sim.ddr_bytes_per_cycle)
    assert {k: v for k, v in sim.ddr_params().items() if k != "size_bytes"} == \
        {k: v for k, v in same_clock.ddr_params().items() if k != "size_bytes"}
    assert dataclasses.replace(get_config("kv260"), memory="ideal").ddr_params().keys() == {
        "bandwidth_num", "bandwidth_den", "latency_cycles", "size_bytes", "base_page"}
