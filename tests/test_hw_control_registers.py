"""ControlRegisters (the AXI4-Lite register block generated from contract/registers.py), in Verilator.

cocotbext-axi's AxiLiteMaster reads and writes every register by the
offsets of the register map; the bench drives the RO inputs and watches the
W1S pulses. This file is both the pytest module and the cocotb bench module.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from mmfree.contract import registers as regs
from mmfree.hw.control_registers import ControlRegisters, port_name
from mmfree.models import numerics as nx

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

CONSTANTS = {"DESIGN_HASH": 0xDEADBEEF, "BUILD_CONFIG": 0x6423, "CAPACITY_DIMS": (24 << 16) | 1024,
             "CAPACITY_INNER": (15 << 16) | 2816}
R = regs.BY_NAME


def _kind(r, f):
    return f.access if f is not None and f.access else r.access


class TB:
    def __init__(self, dut):
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        self.dut = dut
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axil_"), dut.clk)
        self.pulses = {}

    async def watch(self, names):
        from cocotb.triggers import ReadOnly, RisingEdge

        self.pulses = {n: [] for n in names}
        cycle = 0
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            cycle += 1
            for n in names:
                if int(getattr(self.dut, n).value):
                    self.pulses[n].append(cycle)


async def _tb(dut):
    from mmfree.sim.stream import start_clock_and_reset

    for r in regs.REGISTERS:                   # every RO input and W1C set input starts at 0
        for f in (r.fields or (None,)):
            kind = _kind(r, f)
            if r.name in CONSTANTS or r.name in ("ID", "VERSION"):
                continue
            if kind == "RO":
                getattr(dut, port_name(r, f)).value = 0
            elif kind == "W1C":
                getattr(dut, port_name(r, f) + "_set").value = 0
    tb = TB(dut)
    await start_clock_and_reset(dut)
    return tb


if cocotb is not None:
    @cocotb.test()
    async def bench_identity(dut):
        """ID, VERSION and the build constants read back; unmapped offsets read 0."""
        tb = await _tb(dut)
        assert await tb.axil.read_dword(R["ID"].offset) == regs.ID_MAGIC
        v = await tb.axil.read_dword(R["VERSION"].offset)
        assert R["VERSION"].field("interface").get(v) == regs.INTERFACE_VERSION
        assert R["VERSION"].field("numerics").get(v) == nx.NUMERICS_VERSION
        for name, value in CONSTANTS.items():
            assert await tb.axil.read_dword(R[name].offset) == value, name
        used = {r.offset for r in regs.REGISTERS}
        for offset in range(0, regs.REGISTER_SPACE_BYTES, 4):
            if offset not in used:
                await tb.axil.write_dword(offset, 0xFFFFFFFF)
                assert await tb.axil.read_dword(offset) == 0, hex(offset)

    async def _read_write(dut, stall: float):
        tb = await _tb(dut)
        rng = random.Random(5)
        if stall:
            from mmfree.sim.axi_bench import stall_channels

            wr, rd = tb.axil.write_if, tb.axil.read_if
            stall_channels((wr.aw_channel, wr.w_channel, wr.b_channel, rd.ar_channel, rd.r_channel), stall, rng)
        for r in regs.REGISTERS:
            if r.access != "RW":
                continue
            mask = sum(f.mask for f in r.fields) if r.fields else 0xFFFFFFFF
            value = rng.getrandbits(32)
            await tb.axil.write_dword(r.offset, value)
            assert await tb.axil.read_dword(r.offset) == value & mask, r.name
            for f in (r.fields or (None,)):      # the port shows the value
                port = int(getattr(dut, port_name(r, f)).value)
                assert port == (value if f is None else f.get(value)), (r.name, f)
            await tb.axil.write(r.offset + 2, b"\x5a")                # one byte lane only
            want = (value & ~0x00FF0000 | 0x005A0000) & mask
            assert await tb.axil.read_dword(r.offset) == want, r.name
        await tb.axil.write_dword(R["ID"].offset, 0)
        assert await tb.axil.read_dword(R["ID"].offset) == regs.ID_MAGIC

    @cocotb.test()
    async def bench_read_write(dut):
        """RW registers hold what was written (fields masked), byte strobes honoured; constants ignore writes."""
        await _read_write(dut, 0.0)

    @cocotb.test()
    async def bench_read_write_stalled(dut):
        """The same with random gaps on AW, W and AR and random backpressure on B and R."""
        await _read_write(dut, 0.4)

    @cocotb.test()
    async def bench_w1s_w1c_ro(dut):
        """W1S pulses once per written 1 and reads 0; W1C set by hardware, cleared by 1; RO inputs read back."""
        from cocotb.triggers import ClockCycles, FallingEdge

        tb = await _tb(dut)
        ctl = R["CONTROL"]
        names = [port_name(ctl, f) for f in ctl.fields]
        cocotb.start_soon(tb.watch(names))
        await tb.axil.write_dword(ctl.offset, ctl.field("start").put(1))
        await tb.axil.write_dword(ctl.offset, ctl.field("start").put(1) | ctl.field("clear_state").put(1))
        await tb.axil.write_dword(ctl.offset, 0)
        await ClockCycles(dut.clk, 3)
        assert len(tb.pulses["control_start"]) == 2 and len(tb.pulses["control_clear_state"]) == 1, tb.pulses
        assert await tb.axil.read_dword(ctl.offset) == 0
        st = R["STATUS"]
        done = st.field("done")
        await FallingEdge(dut.clk)
        dut.status_done_set.value = 1
        await FallingEdge(dut.clk)
        dut.status_done_set.value = 0
        assert int(dut.status_done.value) == 1
        assert done.get(await tb.axil.read_dword(st.offset)) == 1
        await tb.axil.write_dword(st.offset, 0)                       # writing 0 keeps it
        assert done.get(await tb.axil.read_dword(st.offset)) == 1
        await tb.axil.write_dword(st.offset, done.put(1))             # writing 1 clears it
        assert done.get(await tb.axil.read_dword(st.offset)) == 0 and int(dut.status_done.value) == 0
        dut.status_busy.value = 1
        dut.status_error.value = regs.ErrorCode.AXI_WRITE
        dut.bytes_read.value = 0x12345678
        await ClockCycles(dut.clk, 1)
        s = await tb.axil.read_dword(st.offset)
        assert st.field("busy").get(s) == 1 and st.field("error").get(s) == regs.ErrorCode.AXI_WRITE
        assert await tb.axil.read_dword(R["BYTES_READ"].offset) == 0x12345678


@pytest.mark.sim
def test_control_registers_verilator():
    from mmfree.sim.runner import simulate

    result = simulate(ControlRegisters(constants=CONSTANTS), toplevel="control_registers",
                      test_module=Path(__file__).stem, module_dir=Path(__file__).parent)
    assert result.tests == 4 and result.failed == 0


def test_ports_follow_the_register_map():
    unit = ControlRegisters(constants=CONSTANTS)
    members = unit.signature.members
    for r in regs.REGISTERS:
        if r.name in CONSTANTS or r.name in ("ID", "VERSION"):
            assert not any(n.startswith(r.name.lower()) for n in members if n != "axil"), r.name
            continue
        for f in (r.fields or (None,)):
            assert port_name(r, f) in members, (r.name, f)
    assert "status_done_set" in members and "control_start" in members


@pytest.mark.parametrize("constants, msg", [
    ({"ID": 1}, "register ID is fixed by the register map, not a constant to give"),
    ({"NOPE": 1}, "no register named 'NOPE' in the register map"),
    ({"TOKEN": 1}, "register TOKEN is RW, only RO registers are constants"),
    ({"DESIGN_HASH": 1 << 32}, "constant DESIGN_HASH must be an unsigned 32-bit integer, not 4294967296"),
])
def test_constant_errors(constants, msg):
    with pytest.raises(ValueError) as info:
        ControlRegisters(constants=constants)
    assert str(info.value) == msg
