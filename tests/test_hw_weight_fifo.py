"""WeightFifo (StreamFifo + WidthConverter): the byte stream re-sliced exactly, in Verilator.

Swept over the width ratios the accelerator uses (datapath beat equal to,
twice, half, an eighth of and eight times the reader's word), each with
random input gaps and output backpressure. Also: the capacity is what the
parameter says (the reader's run-ahead depends on it), full throughput
with neither side stalling, and flush empties it.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from mmfree.hw.stream_fifo import StreamFifo
from mmfree.hw.weight_fifo import WeightFifo
from mmfree.hw.width_converter import WidthConverter

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None


def _words(data: bytes, width: int) -> list[int]:
    return [int.from_bytes(data[i:i + width], "little") for i in range(0, len(data), width)]


async def _setup(dut, idle, backpressure):
    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    dut.flush.value = 0
    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=p["seed"])
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=p["seed"] + 1)
    return p, src, sink


async def _exact(dut, idle, backpressure):
    from cocotb.triggers import ClockCycles

    p, src, sink = await _setup(dut, idle, backpressure)
    rng = random.Random(p["seed"])
    n = 3 * p["depth_bytes"] + 5 * max(p["in_bytes"], p["out_bytes"])
    data = bytes(rng.getrandbits(8) for _ in range(n))
    src.send(_words(data, p["in_bytes"]))
    want = _words(data, p["out_bytes"])
    await sink.wait_for(len(want), timeout_cycles=20 * len(want) + 200)
    await ClockCycles(dut.clk, 10)
    assert not sink.protocol_errors, sink.protocol_errors[:3]
    assert sink.items == want
    assert int(dut.empty.value) == 1
    return src, sink


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """No gaps, no backpressure: one transfer per cycle on the narrower side, after the fill latency."""
        from mmfree.sim.runner import bench_params

        p = bench_params()
        src, sink = await _exact(dut, 0.0, 0.0)
        # the side with more words (the narrower one) must move one word every cycle
        cycles = sink.transfer_cycles if p["out_bytes"] <= p["in_bytes"] else src.transfer_cycles
        assert cycles[-1] - cycles[0] == len(cycles) - 1, "a bubble in a free-running stream"

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: the same bytes in the same order."""
        await _exact(dut, 0.4, 0.6)

    @cocotb.test()
    async def bench_capacity_and_flush(dut):
        """With the output stalled it takes depth_bytes and a little more, never less; flush empties it."""
        from cocotb.triggers import ClockCycles, FallingEdge

        from mmfree.sim.stream import StreamDriver

        p, src, sink = await _setup(dut, 0.0, 1.0)                  # output never ready
        n_words = 2 * p["depth_bytes"] // p["in_bytes"]
        src.send(range(1, n_words + 1))
        await ClockCycles(dut.clk, n_words + 20)
        taken = len(src.transfer_cycles)
        slack = 4 * max(p["in_bytes"], p["out_bytes"])              # output and converter registers
        assert p["depth_bytes"] <= taken * p["in_bytes"] <= p["depth_bytes"] + slack, taken
        src.stop()                                                  # the words still queued are dropped
        await FallingEdge(dut.clk)
        dut.i__valid.value = 0
        dut.flush.value = 1
        await FallingEdge(dut.clk)
        dut.flush.value = 0
        src = StreamDriver(dut, "i", seed=p["seed"] + 2)
        await ClockCycles(dut.clk, 4)
        assert int(dut.empty.value) == 1 and int(dut.o__valid.value) == 0
        sink.backpressure = 0.0
        data = bytes(range(256)) * (max(p["in_bytes"], p["out_bytes"]) // 64 + 1)
        src.send(_words(data, p["in_bytes"]))
        want = _words(data, p["out_bytes"])
        await sink.wait_for(len(want), timeout_cycles=2000)
        assert sink.items == want


#: (in_bytes, out_bytes, depth_bytes)
CASES = [(16, 16, 1024), (16, 32, 1024), (16, 8, 512), (64, 8, 2048), (8, 64, 2048)]


@pytest.mark.sim
@pytest.mark.parametrize("in_bytes, out_bytes, depth_bytes", CASES)
def test_weight_fifo_verilator(in_bytes, out_bytes, depth_bytes):
    from mmfree.sim.runner import simulate

    result = simulate(WeightFifo(in_bytes=in_bytes, out_bytes=out_bytes, depth_bytes=depth_bytes),
                      toplevel="weight_fifo", test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"in_bytes": in_bytes, "out_bytes": out_bytes, "depth_bytes": depth_bytes,
                              "seed": in_bytes + 3 * out_bytes})
    assert result.tests == 3 and result.failed == 0


@pytest.mark.parametrize("make, exc, msg", [
    (lambda: WeightFifo(in_bytes=16, out_bytes=24, depth_bytes=1024), ValueError,
     "out_bytes must be a power of two, not 24"),
    (lambda: WeightFifo(in_bytes=16, out_bytes=64, depth_bytes=64), ValueError,
     "depth_bytes must be a power of two of at least 128, not 64"),
    (lambda: StreamFifo(shape=8, depth=1), ValueError, "depth must be at least 2, not 1"),
    (lambda: StreamFifo(shape=8, depth="4"), TypeError, "depth must be an integer, not '4'"),
    (lambda: WidthConverter(in_bytes=0, out_bytes=8), ValueError, "in_bytes must be a power of two, not 0"),
    (lambda: WeightFifo(in_bytes=16, out_bytes=64, depth_bytes=4096, ram_style="distributed"), ValueError,
     "ram_style must be None or one of block, ultra, not 'distributed'"),
])
def test_parameter_errors(make, exc, msg):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == msg


def test_storage_is_the_wider_side():
    assert WeightFifo(in_bytes=16, out_bytes=64, depth_bytes=4096).storage_bytes == 64
    assert WeightFifo(in_bytes=64, out_bytes=16, depth_bytes=4096).storage_bytes == 64


def test_ram_style_reaches_the_verilog():
    """kv260 asks for UltraRAM: the attribute must sit on the storage memory; without it the Verilog has none."""
    from amaranth.back import verilog

    with_style = verilog.convert(WeightFifo(in_bytes=16, out_bytes=64, depth_bytes=4096, ram_style="ultra"))
    assert '(* ram_style = "ultra" *)' in with_style
    assert "ram_style" not in verilog.convert(WeightFifo(in_bytes=16, out_bytes=64, depth_bytes=4096))
