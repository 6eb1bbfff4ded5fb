"""The accelerator top level on the simulated DDR (``accel_tb``), with the test-only ChecksumCore.

Python writes registers through cocotbext-axi's AxiLiteMaster and moves
memory through the DDR model's host port; the accelerator, the DDR model
and every beat run inside Verilator (Python waits on ``irq``).

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from accel_test_core import CLEAR_CYCLES, ChecksumCore, expected, stream_header
from mmfree.contract import registers as regs
from mmfree.hw.accelerator import Accelerator
from mmfree.models import numerics as nx

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

R = regs.BY_NAME
EMBED_ADDR = 0x0001_0000
STREAM_ADDR = 0x0010_0000
LOGITS_ADDR = 0x0030_0000
DDR_BYTES = 4 << 20

#: (name, accelerator parameters, DDR parameters): the widths ratios the weight FIFO must handle.
CASES = {
    # 2 x 64-bit ports (PYNQ-Z2 shape): merged word 16 B = E
    "b8p2e16": (dict(bus_bytes=8, ports=2, engine_bytes=16, fifo_bytes=4096),
                dict(bandwidth_num=14, bandwidth_den=1, latency_cycles=24)),
    # 1 x 64-bit port, E = 2 x merged word
    "b8p1e16": (dict(bus_bytes=8, ports=1, engine_bytes=16, fifo_bytes=2048),
                dict(bandwidth_num=7, bandwidth_den=2, latency_cycles=10)),
    # 4 x 128-bit ports (KV260 shape), E = merged word / 2
    "b16p4e32": (dict(bus_bytes=16, ports=4, engine_bytes=32, fifo_bytes=8192),
                 dict(bandwidth_num=64, bandwidth_den=1, latency_cycles=48)),
    # 3 ports: merged word 4 bus words (next power of two), E = merged word
    "b8p3e32": (dict(bus_bytes=8, ports=3, engine_bytes=32, fifo_bytes=4096),
                dict(bandwidth_num=20, bandwidth_den=1, latency_cycles=16)),
}
CAPACITY = dict(rows_per_block=64, max_hidden=256, max_layers=8, max_intermediate=768, max_vocab=4096)
DESIGN_HASH = 0x5EED_C0DE
STARVE_CYCLES = 1 << 16            # the Accelerator's default


def make_accelerator(case: str) -> Accelerator:
    acc, _ = CASES[case]
    return Accelerator(**acc, **CAPACITY, design_hash=DESIGN_HASH, outstanding=4, starve_cycles=STARVE_CYCLES,
                       core=ChecksumCore(engine_bytes=acc["engine_bytes"]))


# --------------------------------------------------------------------------------------------
# cocotb side
# --------------------------------------------------------------------------------------------
class TB:
    """Clock, reset, the register master and the DDR host port of accel_tb."""

    def __init__(self, dut, params):
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from mmfree.sim.ddr_access import DdrHostAccess

        self.dut, self.p = dut, params
        self.E = params["engine_bytes"]
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk)
        self.ddr = DdrHostAccess(dut)
        self.rng = random.Random(params["seed"])

    async def reset(self):
        from mmfree.sim.accel_tb import RST_DELAY
        from mmfree.sim.stream import start_clock_and_reset

        await start_clock_and_reset(self.dut, period_ns=10, reset_cycles=5, rst_delay=RST_DELAY)

    async def read(self, name):
        return await self.axil.read_dword(R[name].offset)

    async def write(self, name, value):
        await self.axil.write_dword(R[name].offset, value)

    async def wait_done(self, max_cycles):
        """Wait (no Python per cycle) until irq; return the cycles waited."""
        from cocotb.triggers import First, RisingEdge, Timer
        from cocotb.utils import get_sim_time

        start = get_sim_time("ns")
        if not int(self.dut.irq.value):
            fired = await First(RisingEdge(self.dut.irq), Timer(10 * max_cycles, "ns"))
            assert fired is not None and int(self.dut.irq.value), f"no irq within {max_cycles} cycles"
        await RisingEdge(self.dut.clk)
        return int((get_sim_time("ns") - start) // 10)

    async def load_model(self, *, vocab, stride, stream: bytes):
        table = bytes(self.rng.getrandbits(8) for _ in range(vocab * stride))
        await self.ddr.write(EMBED_ADDR, table)
        await self.ddr.write(STREAM_ADDR, stream)
        for name, value in (("VOCAB", vocab), ("EMBED_ADDR_LO", EMBED_ADDR), ("EMBED_ADDR_HI", 0),
                            ("EMBED_STRIDE", stride), ("STREAM_ADDR_LO", STREAM_ADDR), ("STREAM_ADDR_HI", 0),
                            ("STREAM_BYTES", len(stream)), ("LOGITS_ADDR_LO", LOGITS_ADDR),
                            ("LOGITS_ADDR_HI", 0), ("MODEL_DIMS", 64 | (2 << 16))):
            await self.write(name, value)
        self.table, self.stride, self.stream = table, stride, stream

    def make_stream(self, nbytes, *, logits, beats=None, error=0, stall=0):
        beats = nbytes // self.E if beats is None else beats
        body = bytes(self.rng.getrandbits(8) for _ in range(nbytes - 16))
        return stream_header(beats, logits, error, stall) + body

    async def run_token(self, token, *, max_cycles=200_000):
        await self.write("STATUS", R["STATUS"].field("done").put(1))
        await self.write("TOKEN", token)
        await self.write("CONTROL", R["CONTROL"].field("start").put(1))
        await self.wait_done(max_cycles)
        status = await self.read("STATUS")
        assert R["STATUS"].field("done").get(status) == 1
        assert R["STATUS"].field("busy").get(status) == 0, "busy after done"
        return R["STATUS"].field("error").get(status)

    async def check_token(self, token, *, logits_on=True):
        row = self.table[token * self.stride:(token + 1) * self.stride]
        want, arg, argval, err, beats = expected(row, self.stream, self.E)
        before = self.ddr.stats()
        error = await self.run_token(token)
        assert error == err, f"error {error}, want {err}"
        got_arg = await self.read("ARGMAX")
        got_val = await self.read("ARGMAX_VALUE_HI") << 32 | await self.read("ARGMAX_VALUE_LO")
        got_val -= (got_val >> 63) << 64                                  # sign-extended to 64 bits
        if not err and len(want):
            assert got_arg == arg and got_val == argval, (got_arg, got_val, arg, argval)
        if logits_on and not err:
            # one sign-extended little-endian word per logit (the core's are int32)
            raw = await self.ddr.read(LOGITS_ADDR, regs.LOGIT_WORD_BYTES * len(want))
            got = np.frombuffer(raw, dtype=f"<i{regs.LOGIT_WORD_BYTES}")
            bad = np.flatnonzero(got != want)
            assert not len(bad), f"{len(bad)} logits differ, first at {bad[:4]}: {got[bad[:4]]} vs {want[bad[:4]]}"
        bytes_read = await self.read("BYTES_READ")
        after = self.ddr.stats()
        assert bytes_read == after["read_bytes"] - before["read_bytes"], "BYTES_READ disagrees with the DDR"
        assert not after["protocol_error"], "the DDR model saw an AXI protocol violation"
        return bytes_read, want


async def _tb(dut):
    from mmfree.sim.runner import bench_params

    tb = TB(dut, bench_params())
    await tb.reset()
    return tb


if cocotb is not None:
    @cocotb.test()
    async def bench_identity(dut):
        """ID, VERSION, DESIGN_HASH, BUILD_CONFIG, CAPACITY_* from the build; STATUS idle."""
        tb = await _tb(dut)
        p = tb.p
        assert await tb.read("ID") == regs.ID_MAGIC
        v = await tb.read("VERSION")
        assert R["VERSION"].field("interface").get(v) == regs.INTERFACE_VERSION
        assert R["VERSION"].field("numerics").get(v) == nx.NUMERICS_VERSION
        assert await tb.read("DESIGN_HASH") == DESIGN_HASH
        bc = await tb.read("BUILD_CONFIG")
        f = R["BUILD_CONFIG"].field
        assert 1 << f("bus_bytes_log2").get(bc) == p["bus_bytes"]
        assert f("ports").get(bc) == p["ports"]
        assert 1 << f("engine_bytes_log2").get(bc) == p["engine_bytes"]
        assert 1 << f("rows_per_block_log2").get(bc) == CAPACITY["rows_per_block"]
        dims = await tb.read("CAPACITY_DIMS")
        assert R["CAPACITY_DIMS"].field("max_hidden").get(dims) == CAPACITY["max_hidden"]
        assert R["CAPACITY_DIMS"].field("max_layers").get(dims) == CAPACITY["max_layers"]
        inner = await tb.read("CAPACITY_INNER")
        assert R["CAPACITY_INNER"].field("max_intermediate").get(inner) == CAPACITY["max_intermediate"]
        assert 1 << R["CAPACITY_INNER"].field("max_vocab_log2").get(inner) >= CAPACITY["max_vocab"]
        assert await tb.read("STATUS") == 0 and int(dut.irq.value) == 0

    @cocotb.test()
    async def bench_tokens(dut):
        """Several tokens: logits in DDR, argmax, BYTES_READ = stride + stream bytes, counters, TOKENS."""
        tb = await _tb(dut)
        vocab, stride = 50, 128
        stream = tb.make_stream(4096 + 64 * tb.rng.randrange(1, 40), logits=vocab)
        await tb.load_model(vocab=vocab, stride=stride, stream=stream)
        for n, token in enumerate((0, vocab - 1, 17)):
            bytes_read, _ = await tb.check_token(token)
            assert bytes_read == stride + len(stream)
            total = await tb.read("CYCLES_TOTAL")
            phases = [await tb.read(f"CYCLES_{p.name}") for p in regs.Phase if p != regs.Phase.IDLE]
            wait = await tb.read("CYCLES_WEIGHT_WAIT")
            embed, prep, matvec, _, head = phases
            assert min(embed, prep, matvec, head) > 0, phases
            assert sum(phases) <= total and wait < total
            assert total >= len(stream) / tb.p["ddr_bytes_per_cycle"]        # no faster than the DDR
            assert await tb.read("TOKENS") == n + 1

    @cocotb.test()
    async def bench_logits_disabled(dut):
        """LOGITS_ADDR = 0: nothing written, argmax still valid."""
        tb = await _tb(dut)
        stream = tb.make_stream(2048, logits=20)
        await tb.load_model(vocab=20, stride=64, stream=stream)
        await tb.write("LOGITS_ADDR_LO", 0)
        before = tb.ddr.stats()["write_bytes"]
        await tb.check_token(3, logits_on=False)
        assert tb.ddr.stats()["write_bytes"] == before

    @cocotb.test()
    async def bench_token_range(dut):
        """TOKEN >= VOCAB: TOKEN_RANGE, done, and not one byte read."""
        tb = await _tb(dut)
        await tb.load_model(vocab=10, stride=64, stream=tb.make_stream(1024, logits=10))
        before = tb.ddr.stats()["read_bytes"]
        for token in (10, 0xFFFF_FFFF):
            assert await tb.run_token(token) == regs.ErrorCode.TOKEN_RANGE
            assert await tb.read("BYTES_READ") == 0
        assert tb.ddr.stats()["read_bytes"] == before
        assert await tb.read("TOKENS") == 0
        await tb.check_token(9)                                           # and it still works

    @cocotb.test()
    async def bench_core_error_drains(dut):
        """The core stops early with an error: done with its code, the unread stream drained."""
        tb = await _tb(dut)
        stream = tb.make_stream(64 * 1024, logits=8, beats=4, error=regs.ErrorCode.BAD_RECORD)
        await tb.load_model(vocab=8, stride=64, stream=stream)
        assert await tb.run_token(1) == regs.ErrorCode.BAD_RECORD
        assert 64 + 4 * tb.E <= await tb.read("BYTES_READ") <= 64 + len(stream)   # what the core took, at least
        assert not tb.ddr.stats()["protocol_error"]
        # A good token afterwards: nothing of the aborted one is left in the FIFOs.
        tb.stream = tb.make_stream(4096, logits=8)
        await tb.ddr.write(STREAM_ADDR, tb.stream)
        await tb.write("STREAM_BYTES", len(tb.stream))
        bytes_read, _ = await tb.check_token(2)
        assert bytes_read == 64 + len(tb.stream)

    @cocotb.test()
    async def bench_unread_tail(dut):
        """The core takes less than STREAM_BYTES: no error; what was read beyond is discarded, and the
        next token starts from the stream's first byte (nothing of the tail left in the FIFOs)."""
        tb = await _tb(dut)
        stream = tb.make_stream(16 * 1024, logits=12, beats=64)
        await tb.load_model(vocab=12, stride=64, stream=stream)
        for token in (5, 6):
            bytes_read, _ = await tb.check_token(token)
            assert 64 + 64 * tb.E <= bytes_read <= 64 + len(stream)

    @cocotb.test()
    async def bench_stream_short(dut):
        """The core wants more than STREAM_BYTES: STREAM_SHORT after starve_cycles, no hang."""
        tb = await _tb(dut)
        stream = tb.make_stream(2048, logits=4, beats=10_000)
        await tb.load_model(vocab=4, stride=64, stream=stream)
        assert await tb.run_token(0, max_cycles=200_000) == regs.ErrorCode.STREAM_SHORT
        assert await tb.read("BYTES_READ") == 64 + len(stream)
        assert await tb.read("CYCLES_TOTAL") > tb.p["starve_cycles"]
        assert await tb.read("TOKENS") == 0

    @cocotb.test()
    async def bench_read_error(dut):
        """SLVERR on a STREAM burst: AXI_READ, reads drained, no hang; fine again without it."""
        tb = await _tb(dut)
        stream = tb.make_stream(32 * 1024, logits=16)
        await tb.load_model(vocab=16, stride=128, stream=stream)
        tb.ddr.set_error_window(STREAM_ADDR + 8192, STREAM_ADDR + 8192 + 64)
        assert await tb.run_token(3) == regs.ErrorCode.AXI_READ
        assert not tb.ddr.stats()["protocol_error"]
        assert await tb.read("TOKENS") == 0
        tb.ddr.set_error_window(0, 0)
        bytes_read, _ = await tb.check_token(3)
        assert bytes_read == 128 + len(stream)

    @cocotb.test()
    async def bench_write_error(dut):
        """SLVERR on the logits buffer: AXI_WRITE after every response came back."""
        tb = await _tb(dut)
        stream = tb.make_stream(4096, logits=300)
        await tb.load_model(vocab=300, stride=64, stream=stream)
        tb.ddr.set_error_window(LOGITS_ADDR + 512, LOGITS_ADDR + 516)
        assert await tb.run_token(7) == regs.ErrorCode.AXI_WRITE
        tb.ddr.set_error_window(0, 0)
        await tb.check_token(7)

    @cocotb.test()
    async def bench_clear_state(dut):
        """CLEAR_STATE reaches the core (busy meanwhile), resets TOKENS; START with it runs after."""
        from cocotb.triggers import ClockCycles

        tb = await _tb(dut)
        stream = tb.make_stream(2048, logits=6)
        await tb.load_model(vocab=6, stride=64, stream=stream)
        await tb.check_token(1)
        assert await tb.read("TOKENS") == 1
        await tb.write("CONTROL", R["CONTROL"].field("clear_state").put(1))
        assert R["STATUS"].field("busy").get(await tb.read("STATUS")) == 1
        await ClockCycles(dut.clk, CLEAR_CYCLES + 10)
        assert await tb.read("STATUS") == R["STATUS"].field("done").put(1)   # idle; done of token 1
        assert await tb.read("TOKENS") == 0
        await tb.write("STATUS", R["STATUS"].field("done").put(1))
        assert int(dut.irq.value) == 0
        await tb.write("TOKEN", 2)
        await tb.write("CONTROL", R["CONTROL"].field("clear_state").put(1) | R["CONTROL"].field("start").put(1))
        await tb.wait_done(100_000)
        assert R["STATUS"].field("error").get(await tb.read("STATUS")) == 0
        assert await tb.read("TOKENS") == 1

    @cocotb.test()
    async def bench_slow_core_reads_ahead(dut):
        """A slow datapath: reads run ahead until the FIFOs are full, and stay correct."""
        tb = await _tb(dut)
        stream = tb.make_stream(24 * 1024, logits=10, stall=3)
        await tb.load_model(vocab=10, stride=64, stream=stream)
        bytes_read, _ = await tb.check_token(4)
        assert bytes_read == 64 + len(stream)
        assert await tb.read("CYCLES_WEIGHT_WAIT") < await tb.read("CYCLES_TOTAL") // 4

    @cocotb.test()
    async def bench_bandwidth(dut):
        """A long stream: bytes per cycle = min(DDR bandwidth, ports x bus, engine_bytes).

        Steady state (the third quarter of the token) within 0.5 %; the whole token
        (START to done, latency and drain included) within 3 % + 300 cycles.
        """
        from cocotb.triggers import ClockCycles

        tb = await _tb(dut)
        rate = tb.p["ddr_bytes_per_cycle"]
        nbytes = 256 * 1024
        stream = tb.make_stream(nbytes, logits=4)
        await tb.load_model(vocab=4, stride=64, stream=stream)
        await tb.write("STATUS", R["STATUS"].field("done").put(1))
        await tb.write("TOKEN", 0)
        await tb.write("CONTROL", R["CONTROL"].field("start").put(1))
        # from mid-token (the FIFOs, read ahead of a slower datapath, are full by then) for a quarter
        window = int(nbytes / rate / 4)
        await ClockCycles(dut.clk, 2 * window)
        a = tb.ddr.stats()
        await ClockCycles(dut.clk, window)
        b = tb.ddr.stats()
        await tb.wait_done(int(nbytes / rate * 2) + 10_000)
        steady = (b["read_bytes"] - a["read_bytes"]) / (b["cycles"] - a["cycles"])
        total = await tb.read("CYCLES_TOTAL")
        bytes_read = await tb.read("BYTES_READ")
        assert bytes_read == 64 + nbytes
        dut._log.info(f"steady {steady:.3f} B/cycle (bound {rate:.3f}); token {total} cycles for "
                      f"{bytes_read} bytes = {bytes_read / total:.3f} B/cycle")
        assert abs(steady - rate) / rate < 0.005, (steady, rate)
        assert total < bytes_read / rate * 1.03 + 300, (total, bytes_read / rate)


# --------------------------------------------------------------------------------------------
# pytest side
# --------------------------------------------------------------------------------------------
@pytest.mark.sim
@pytest.mark.parametrize("case", list(CASES))
def test_accelerator_verilator(case):
    from mmfree.sim.accel_tb import simulate_accel_tb

    acc_params, ddr = CASES[case]
    # what a token can stream at: the DDR, the ports, or the datapath's beat, whichever is least
    rate = min(ddr["bandwidth_num"] / ddr["bandwidth_den"], acc_params["bus_bytes"] * acc_params["ports"],
               acc_params["engine_bytes"])
    result = simulate_accel_tb(make_accelerator(case), dict(ddr, size_bytes=DDR_BYTES),
                               test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                               params={**acc_params, "seed": 7, "ddr_bytes_per_cycle": rate,
                                       "starve_cycles": STARVE_CYCLES})
    assert result.failed == 0 and result.tests == 12


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(bus_bytes=4), ValueError, "bus_bytes must be 8 or 16, not 4"),
    (dict(ports=5), ValueError, "ports must be in [1, 4], not 5"),
    (dict(ports=2.0), TypeError, "ports must be an integer, not 2.0"),
    (dict(engine_bytes=24), ValueError, "engine_bytes must be a power of two, not 24"),
    (dict(rows_per_block=8), ValueError, "rows_per_block must be a multiple of engine_bytes (16) below 65536, not 8"),
    (dict(fifo_bytes=1000), ValueError, "fifo_bytes must be a power of two of at least 32, not 1000"),
    (dict(design_hash=-1), ValueError, "design_hash must be in [0, 4294967295], not -1"),
    (dict(outstanding=0), ValueError, "outstanding must be in [1, 16], not 0"),
    (dict(max_vocab=0), ValueError, "max_vocab must be in [1, 16777216], not 0"),
])
def test_parameter_errors(kwargs, exc, msg):
    params = dict(bus_bytes=8, ports=2, engine_bytes=16, rows_per_block=64, fifo_bytes=4096, **{
        k: v for k, v in CAPACITY.items() if k != "rows_per_block"})
    params.update(kwargs)
    with pytest.raises(exc) as info:
        Accelerator(**params, core=ChecksumCore(engine_bytes=16))
    assert str(info.value) == msg


def test_core_without_a_port_is_refused():
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In

    class NoDone(wiring.Component):
        def __init__(self):
            super().__init__({"start": In(1)})

        def elaborate(self, platform):  # pragma: no cover - never built
            raise AssertionError

    with pytest.raises(ValueError, match="core has no input port 'hidden'"):
        Accelerator(bus_bytes=8, ports=1, engine_bytes=16, fifo_bytes=4096, **CAPACITY, core=NoDone())


def test_expected_model_sees_every_word():
    """The Python checksum changes with any byte of the row or the taken STREAM beats."""
    stream = stream_header(4, 3) + bytes(48)
    base = expected(bytes(64), stream, 16)[0]
    assert not np.array_equal(base, expected(b"\x01" + bytes(63), stream, 16)[0])
    assert not np.array_equal(base, expected(bytes(64), stream[:63] + b"\x01", 16)[0])
    assert np.array_equal(base, expected(bytes(64), stream + b"\x01" * 16, 16)[0])     # not taken: no effect
