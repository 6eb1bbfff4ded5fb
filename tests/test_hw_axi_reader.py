"""AxiReader against cocotbext-axi's AxiRam (one per port, one shared memory), in Verilator.

Random R and AR stalls on every port, random backpressure on the output,
random gaps between commands; commands of random 64-byte aligned addresses
and lengths crossing 4 KiB boundaries. Checks: the bytes in address order,
every burst INCR, full width, at most 256 beats, inside one 4 KiB page,
bursts spread over all ports, at most ``outstanding`` bursts in flight per
port, RRESP errors reported per beat, cancel drains without a hang.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from mmfree.hw.axi_reader import AxiReader, read_command_layout

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

MEM_BYTES = 1 << 20


class TB:
    def __init__(self, dut, p):
        from cocotbext.axi import AxiReadBus, AxiSlaveRead

        from mmfree.sim.axi_bench import FaultyMemory

        self.dut, self.p = dut, p
        self.P, self.B = p["ports"], p["bus_bytes"]
        self.W = self.B * (1 << (self.P - 1).bit_length())
        self.rng = random.Random(p["seed"])
        self.mem = bytearray(self.rng.getrandbits(8) for _ in range(MEM_BYTES))
        self.memory = FaultyMemory(self.mem)          # one memory behind every port
        self.slaves = []
        for port in range(self.P):
            bus = AxiReadBus.from_prefix(dut, f"bus__{port}_")
            slave = AxiSlaveRead(bus, dut.clk, dut.rst, target=self.memory)
            slave.log.setLevel(logging.ERROR)         # injected errors log a warning per beat
            self.slaves.append(slave)
        self.layout = read_command_layout(32)
        self.bursts = []           # (cycle, port, addr, len, size, burst)
        self.in_flight = [0] * self.P
        self.max_in_flight = [0] * self.P
        self.error_beats = 0
        self.beats = 0

    def stall(self, probability):
        """Random AR and R stalls on every port."""
        from mmfree.sim.axi_bench import stall_channels

        stall_channels([ch for s in self.slaves for ch in (s.ar_channel, s.r_channel)], probability, self.rng)

    async def monitor(self):
        """Per cycle: AR handshakes (burst checks), bursts in flight, error pulses, beats."""
        from cocotb.triggers import ReadOnly, RisingEdge

        cycle = 0
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            cycle += 1
            for port in range(self.P):
                g = lambda name: int(getattr(self.dut, f"bus__{port}__{name}").value)  # noqa: E731
                if g("arvalid") and g("arready"):
                    self.bursts.append((cycle, port, g("araddr"), g("arlen"), g("arsize"), g("arburst")))
                    self.in_flight[port] += 1
                    self.max_in_flight[port] = max(self.max_in_flight[port], self.in_flight[port])
                if g("rvalid") and g("rready") and g("rlast"):
                    self.in_flight[port] -= 1
            self.error_beats += int(self.dut.read_error.value)
            self.beats += int(self.dut.beats.value)

    def commands(self, n, max_len):
        out = []
        for _ in range(n):
            length = 64 * self.rng.randrange(0, max_len // 64 + 1)
            addr = 64 * self.rng.randrange(0, (MEM_BYTES - length) // 64)
            out.append((addr, length))
        return out

    def expected_words(self, cmds):
        data = b"".join(bytes(self.mem[a:a + n]) for a, n in cmds)
        return [int.from_bytes(data[i:i + self.W], "little") for i in range(0, len(data), self.W)]

    def check_bursts(self):
        B = self.B
        for cycle, port, addr, alen, size, burst in self.bursts:
            assert burst == 1 and 1 << size == B, f"burst {burst} size {size}"
            assert addr % B == 0 and alen <= 255
            assert addr // 4096 == (addr + (alen + 1) * B - 1) // 4096, f"burst at {addr:#x} x{alen + 1} crosses 4 KiB"
        assert max(self.max_in_flight) <= self.p["outstanding"], self.max_in_flight


async def _setup(dut, *, stall, backpressure, idle):
    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    dut.cancel.value = 0
    tb = TB(dut, p)
    tb.stall(stall)
    await start_clock_and_reset(dut)
    cocotb.start_soon(tb.monitor())
    src = StreamDriver(dut, "cmd", idle=idle, seed=p["seed"])
    sink = StreamMonitor(dut, "data", backpressure=backpressure, seed=p["seed"] + 1)
    return tb, src, sink


async def _stream_test(dut, *, stall, backpressure, idle, n, max_len):
    from cocotb.triggers import ClockCycles

    tb, src, sink = await _setup(dut, stall=stall, backpressure=backpressure, idle=idle)
    cmds = tb.commands(n, max_len)
    cmds.append((4096 - 64, 128))                              # two bursts around a page boundary
    src.send(tb.layout.const({"addr": a, "length": ln}).as_value().value for a, ln in cmds)
    want = tb.expected_words(cmds)
    await sink.wait_for(len(want), timeout_cycles=40 * len(want) + 2000)
    await ClockCycles(dut.clk, 50)
    assert not sink.protocol_errors, sink.protocol_errors[:3]
    assert len(sink.items) == len(want), f"{len(sink.items)} words for {len(want)}"
    bad = [i for i, (g, w) in enumerate(zip(sink.items, want)) if g != w]
    assert not bad, f"{len(bad)} words differ, first at {bad[:5]}"
    tb.check_bursts()
    assert int(dut.idle.value) == 1
    assert tb.error_beats == 0
    assert tb.beats * tb.B == sum(ln for _, ln in cmds)
    ports_used = {port for _, port, *_ in tb.bursts}
    assert ports_used == set(range(tb.P)), f"bursts only on ports {ports_used}"
    return tb


if cocotb is not None:
    @cocotb.test()
    async def bench_no_stalls(dut):
        """Memory and consumer always ready: exact data; several bursts in flight per port."""
        tb = await _stream_test(dut, stall=0.0, backpressure=0.0, idle=0.0, n=6, max_len=12000)
        assert max(tb.max_in_flight) >= 2, tb.max_in_flight

    @cocotb.test()
    async def bench_stalls_backpressure(dut):
        """Random AR/R stalls on every port, output backpressure, command gaps: exact data, in order."""
        await _stream_test(dut, stall=0.3, backpressure=0.5, idle=0.5, n=10, max_len=9000)

    @cocotb.test()
    async def bench_read_error(dut):
        """SLVERR beats: one read_error pulse per bad beat, data still delivered in order."""
        from cocotb.triggers import ClockCycles

        tb, src, sink = await _setup(dut, stall=0.2, backpressure=0.2, idle=0.0)
        lo = 8192 + 128
        tb.memory.fail(lo, lo + 3 * tb.B)     # reads of bus words touching it answer SLVERR
        src.send([tb.layout.const({"addr": 8192, "length": 4096}).as_value().value])
        await sink.wait_for(4096 // tb.W, timeout_cycles=20_000)
        await ClockCycles(dut.clk, 20)
        assert tb.error_beats == 3

    @cocotb.test()
    async def bench_cancel(dut):
        """Cancel mid-command: drains to idle with no more output; the next command is exact."""
        from cocotb.triggers import ClockCycles, RisingEdge

        tb, src, sink = await _setup(dut, stall=0.2, backpressure=0.7, idle=0.0)
        src.send([tb.layout.const({"addr": 0, "length": 64 * 1024}).as_value().value])
        await ClockCycles(dut.clk, 300)
        dut.cancel.value = 1
        for _ in range(5000):
            await RisingEdge(dut.clk)
            if int(dut.idle.value):
                break
        assert int(dut.idle.value), "no idle within 5000 cycles of cancel"
        taken = len(sink.items)
        assert 0 < taken < 64 * 1024 // tb.W
        await ClockCycles(dut.clk, 5)
        assert len(sink.items) == taken, "output after cancel"
        dut.cancel.value = 0
        cmds = [(12288, 4096 + 192)]
        src.send([tb.layout.const({"addr": a, "length": ln}).as_value().value for a, ln in cmds])
        want = tb.expected_words(cmds)
        await sink.wait_for(taken + len(want), timeout_cycles=20_000)
        assert sink.items[taken:] == want
        tb.check_bursts()


#: (bus_bytes, ports, outstanding, burst_bytes)
CASES = [(8, 1, 2, None), (8, 2, 4, None), (16, 3, 2, 256), (16, 4, 4, 512)]


@pytest.mark.sim
@pytest.mark.parametrize("bus_bytes, ports, outstanding, burst_bytes", CASES)
def test_axi_reader_verilator(bus_bytes, ports, outstanding, burst_bytes):
    from mmfree.sim.runner import simulate

    unit = AxiReader(bus_bytes=bus_bytes, ports=ports, outstanding=outstanding, burst_bytes=burst_bytes)
    result = simulate(unit, toplevel="axi_reader", test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"bus_bytes": bus_bytes, "ports": ports, "outstanding": outstanding,
                              "seed": 3 + ports})
    assert result.tests == 4 and result.failed == 0


def test_merged_word_and_reorder_depth():
    r = AxiReader(bus_bytes=8, ports=3, outstanding=4)
    assert r.word_bytes == 32 and r.burst_bytes == 2048 and r.reorder_words == 4 * 2048 // 32
    assert AxiReader(bus_bytes=16, ports=4).burst_bytes == 4096


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(bus_bytes=12, ports=1), ValueError, "bus_bytes must be a power of two from 4 to 128, not 12"),
    (dict(bus_bytes=8, ports=0), ValueError, "ports must be in [1, 4], not 0"),
    (dict(bus_bytes=8, ports=1, outstanding=17), ValueError, "outstanding must be in [1, 16], not 17"),
    (dict(bus_bytes=8, ports=1, burst_bytes=4096), ValueError,
     "burst_bytes must be a power of two in [64, 2048], not 4096"),
    (dict(bus_bytes=8, ports=1, burst_bytes=96), ValueError,
     "burst_bytes must be a power of two in [64, 2048], not 96"),
    (dict(bus_bytes=8, ports="2"), TypeError, "ports must be an integer, not '2'"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        AxiReader(**kwargs)
    assert str(info.value) == msg
