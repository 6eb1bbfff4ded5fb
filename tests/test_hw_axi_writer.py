"""AxiWriter against cocotbext-axi's AxiRamWrite, in Verilator.

Commands at random word-aligned addresses (so partial first and last
beats) with random lengths crossing 4 KiB boundaries, for 32- and 64-bit
words (the accelerator writes its logits as int64 words); random gaps on the
data stream, random AW/W/B stalls; a two-lane writer gets a random mix of
one- and two-word beats (pairs at odd lanes and across bursts too). Checks: the memory holds exactly the
words (bytes around them untouched), every burst is INCR, full width, at
most 256 beats and inside one 4 KiB page, BRESP errors are reported, and a
cancelled command completes its issued bursts with empty strobes.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import logging
import random
import struct
from pathlib import Path

import pytest

from mmfree.hw.axi_writer import AxiWriter, word_pair_layout, write_command_layout

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

MEM_BYTES = 1 << 18
FILL = 0xA5


class TB:
    def __init__(self, dut, p):
        from cocotbext.axi import AxiSlaveWrite, AxiWriteBus

        from mmfree.sim.axi_bench import FaultyMemory

        self.dut, self.p, self.B, self.W = dut, p, p["bus_bytes"], p["word_bytes"]
        self.fmt = {4: "I", 8: "Q"}[self.W]
        self.rng = random.Random(p["seed"])
        self.mem = bytearray([FILL]) * MEM_BYTES
        self.memory = FaultyMemory(self.mem)
        self.slave = AxiSlaveWrite(AxiWriteBus.from_prefix(dut, "bus_"), dut.clk, dut.rst, target=self.memory)
        self.slave.log.setLevel(logging.ERROR)        # injected errors log a warning per burst
        self.layout = write_command_layout(32)
        self.bursts = []
        self.errors = 0
        self.outstanding = 0
        self.max_outstanding = 0

    def data_beats(self, values, pairs=None):
        """``values`` as ``data`` beats: single words, or for a two-lane writer one or two words a
        beat (``pairs``: probability of a pair, random by default)."""
        values = list(values)
        if self.p["data_lanes"] == 1:
            return values
        layout, chance = word_pair_layout(self.W), self.rng.random() if pairs is None else pairs
        out, n = [], 0
        while n < len(values):
            pair = n + 1 < len(values) and self.rng.random() < chance
            out.append(layout.const({"words": [values[n], values[n + 1] if pair else 0],
                                     "pair": int(pair)}).as_value().value)
            n += 1 + pair
        return out

    def stall(self, probability):
        """Random AW, W and B stalls."""
        from mmfree.sim.axi_bench import stall_channels

        stall_channels((self.slave.aw_channel, self.slave.w_channel, self.slave.b_channel), probability, self.rng)

    async def monitor(self):
        from cocotb.triggers import ReadOnly, RisingEdge

        d = self.dut
        while True:
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(d.bus__awvalid.value) and int(d.bus__awready.value):
                self.bursts.append((int(d.bus__awaddr.value), int(d.bus__awlen.value), int(d.bus__awsize.value),
                                    int(d.bus__awburst.value)))
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
            if int(d.bus__bvalid.value) and int(d.bus__bready.value):
                self.outstanding -= 1
            self.errors += int(d.write_error.value)

    def check_bursts(self):
        for addr, alen, size, burst in self.bursts:
            assert burst == 1 and 1 << size == self.B and addr % self.B == 0 and alen <= 255
            assert addr // 4096 == (addr + (alen + 1) * self.B - 1) // 4096, f"burst at {addr:#x} crosses 4 KiB"
        assert self.max_outstanding <= self.p["outstanding"]


async def _setup(dut, *, stall, idle):
    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, start_clock_and_reset

    p = bench_params()
    dut.cancel.value = 0
    tb = TB(dut, p)
    tb.stall(stall)
    await start_clock_and_reset(dut)
    cocotb.start_soon(tb.monitor())
    cmd = StreamDriver(dut, "cmd", idle=idle, seed=p["seed"])
    words = StreamDriver(dut, "data", idle=idle, seed=p["seed"] + 1)
    return tb, cmd, words


async def _wait_idle(dut, cycles, *drivers):
    """Wait until the ``drivers`` (stream sources) have sent everything and the writer is idle."""
    from cocotb.triggers import ClockCycles, RisingEdge

    await ClockCycles(dut.clk, 3)
    for _ in range(cycles):
        await RisingEdge(dut.clk)
        if int(dut.idle.value) and all(d.idle_now for d in drivers):
            return
    raise AssertionError(f"not idle within {cycles} cycles")


async def _write_test(dut, *, stall, idle, n):
    tb, cmd, words = await _setup(dut, stall=stall, idle=idle)
    want = bytearray(tb.mem)
    W = tb.W
    regions = [(4096 - 3 * W, 9), (W, 1)]                                  # across a page; a single word
    for _ in range(n):
        count = tb.rng.randrange(1, 1500)
        regions.append((W * tb.rng.randrange(0, (MEM_BYTES - W * count) // W), count))
    total = sent = 0
    for addr, count in regions:
        values = [tb.rng.getrandbits(8 * W) for _ in range(count)]
        cmd.send([tb.layout.const({"addr": addr, "words": count}).as_value().value])
        beats = tb.data_beats(values)
        words.send(beats)
        want[addr:addr + W * count] = struct.pack(f"<{count}{tb.fmt}", *values)
        total, sent = total + count, sent + len(beats)
    await _wait_idle(dut, 20 * total + 2000, cmd, words)
    assert words.idle_now and len(words.transfer_cycles) == sent
    diff = [i for i in range(MEM_BYTES) if tb.mem[i] != want[i]]
    assert not diff, f"{len(diff)} bytes differ, first at {diff[:4]}"
    tb.check_bursts()
    assert tb.errors == 0
    return tb


if cocotb is not None:
    @cocotb.test()
    async def bench_no_stalls(dut):
        """Bus and data always ready: exact memory, bursts in flight ahead of their responses."""
        tb = await _write_test(dut, stall=0.0, idle=0.0, n=5)
        assert tb.max_outstanding >= 2

    @cocotb.test()
    async def bench_pair_rate(dut):
        """A two-lane writer on a bus of two words or more: aligned pairs go one a cycle (at most
        two cycles of slack a burst); a one-lane writer: one word a cycle."""
        tb, cmd, words = await _setup(dut, stall=0.0, idle=0.0)
        count = 2048
        cmd.send([tb.layout.const({"addr": 8192, "words": count}).as_value().value])
        values = [tb.rng.getrandbits(8 * tb.W) for _ in range(count)]
        words.send(tb.data_beats(values, pairs=1.0))
        await _wait_idle(dut, 20 * count, cmd, words)
        assert struct.unpack(f"<{count}{tb.fmt}", tb.mem[8192:8192 + tb.W * count]) == tuple(values)
        cycles = words.transfer_cycles[-1] - words.transfer_cycles[0] + 1
        per_cycle = 2 if tb.p["data_lanes"] == 2 and tb.B >= 2 * tb.W else 1
        bursts = -(-count * tb.W // min(4096, 256 * tb.B))
        assert cycles <= count // per_cycle + 2 * bursts, (cycles, count, per_cycle)

    @cocotb.test()
    async def bench_stalls_and_gaps(dut):
        """Random AW/W/B stalls and gaps between words and commands: exact memory."""
        await _write_test(dut, stall=0.4, idle=0.4, n=6)

    @cocotb.test()
    async def bench_write_error(dut):
        """SLVERR on one burst: one write_error pulse; the other bursts still written."""
        tb, cmd, words = await _setup(dut, stall=0.2, idle=0.0)
        tb.memory.fail(4096 + 64, 4096 + 68)
        count = 12_000 // tb.W                                             # 12 KB: bursts on 3+ pages
        cmd.send([tb.layout.const({"addr": 0, "words": count}).as_value().value])
        words.send(tb.data_beats(range(count)))
        await _wait_idle(dut, 50_000, cmd, words)
        assert tb.errors == 1
        assert tb.mem[:2 * tb.W] == struct.pack(f"<2{tb.fmt}", 0, 1)

    @cocotb.test()
    async def bench_cancel(dut):
        """Cancel with words missing: issued bursts complete with empty strobes, no hang."""
        from cocotb.triggers import ClockCycles

        tb, cmd, words = await _setup(dut, stall=0.2, idle=0.0)
        W = tb.W
        addr, count, sent = 1024 + W, 2000, 300
        cmd.send([tb.layout.const({"addr": addr, "words": count}).as_value().value])
        # the top bits set: a word is stored whole, not cut to 32 bits
        values = [(1 << (8 * W - 1)) | v for v in range(sent)]
        words.send(tb.data_beats(values))
        await ClockCycles(dut.clk, 20 * sent)
        dut.cancel.value = 1
        await _wait_idle(dut, 5000)
        dut.cancel.value = 0
        got = struct.unpack(f"<{sent}{tb.fmt}", tb.mem[addr:addr + W * sent])
        assert list(got) == values
        assert tb.mem[addr + W * sent:addr + W * count] == bytearray([FILL]) * (W * (count - sent))
        tb.check_bursts()
        # and it still works
        cmd.send([tb.layout.const({"addr": 64, "words": 10}).as_value().value])
        words.send(tb.data_beats(range(100, 110)))
        await _wait_idle(dut, 2000, cmd, words)
        assert struct.unpack(f"<10{tb.fmt}", tb.mem[64:64 + 10 * W]) == tuple(range(100, 110))


@pytest.mark.sim
@pytest.mark.parametrize("bus_bytes, word_bytes, outstanding, data_lanes",
                         [(8, 4, 4, 1), (16, 4, 2, 1), (8, 8, 3, 1), (16, 8, 2, 1), (8, 8, 3, 2), (16, 8, 2, 2),
                          (16, 4, 3, 2)])
def test_axi_writer_verilator(bus_bytes, word_bytes, outstanding, data_lanes):
    from mmfree.sim.runner import simulate

    result = simulate(AxiWriter(bus_bytes=bus_bytes, word_bytes=word_bytes, outstanding=outstanding,
                                data_lanes=data_lanes),
                      toplevel="axi_writer", test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"bus_bytes": bus_bytes, "word_bytes": word_bytes, "outstanding": outstanding,
                              "data_lanes": data_lanes, "seed": 11 + bus_bytes + word_bytes + data_lanes})
    assert result.tests == 5 and result.failed == 0


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(bus_bytes=3), ValueError, "bus_bytes must be a power of two from 4 to 128, not 3"),
    (dict(bus_bytes=8, outstanding=0), ValueError, "outstanding must be in [1, 16], not 0"),
    (dict(bus_bytes=8, addr_width=8), ValueError, "addr_width must be in [12, 64], not 8"),
    (dict(bus_bytes=8, outstanding=True), TypeError, "outstanding must be an integer, not True"),
    (dict(bus_bytes=8, word_bytes=2), ValueError, "word_bytes must be 4 or 8, not 2"),
    (dict(bus_bytes=8, word_bytes=8.0), TypeError, "word_bytes must be an integer, not 8.0"),
    (dict(bus_bytes=4, word_bytes=8), ValueError, "word_bytes (8) must not exceed bus_bytes (4)"),
    (dict(bus_bytes=8, data_lanes=3), ValueError, "data_lanes must be 1 or 2, not 3"),
    (dict(bus_bytes=8, data_lanes=True), ValueError, "data_lanes must be 1 or 2, not True"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        AxiWriter(**kwargs)
    assert str(info.value) == msg
