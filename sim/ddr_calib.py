"""Measure what the simulated DDR delivers to the accelerator's read master: bandwidth and latency.

``measure_read(ddr, bus_bytes=..., ports=..., outstanding=..., burst_bytes=..., read_bytes=...)``
builds ``sim/ddr_calib_tb.v`` (the accelerator's own :class:`~mmfree.hw.axi_reader.AxiReader`,
ports packed as in ``accel_tb``, on ``sim/ddr_model.v`` with a configuration's ``ddr_params()``),
streams ``read_bytes`` from address 0 with the data always taken, and returns the DDR model's
statistics: bytes per cycle from the first to the last beat, AR-to-first-beat latency (least,
mean, most), row activations and refreshes. This is the calibration of the board memory models
(``docs/memory.md``): the sustained sequential read bandwidth a master with enough reads in
flight sees, compared with published measurements in ``tests/test_ddr_board_model.py``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.axi import AXI4ReadSignature
from mmfree.hw.axi_reader import AxiReader

from .accel_tb import ddr_verilog_parameters
from .runner import bench_params, simulate

__all__ = ["CalibDut", "measure_read"]

_HERE = Path(__file__).resolve().parent
SOURCES = (_HERE / "ddr_model_params.vh", _HERE / "ddr_model_param_map.vh", _HERE / "ddr_model.v",
           _HERE / "ddr_calib_tb.v")
#: Simulated cycles between two looks at ``done`` (Python never touches a beat).
POLL_CYCLES = 20_000


class CalibDut(wiring.Component):
    """``calib_dut``: an :class:`AxiReader` that reads ``length`` bytes from address 0 once after
    reset, takes every data word at once and raises ``done`` when all have come; its AXI4 read
    ports packed into vectors ``rd_*`` (port p at bits ``[p*w +: w]``)."""

    def __init__(self, reader: AxiReader):
        self.reader = reader
        self._read = AXI4ReadSignature(addr_width=reader.addr_width, data_bytes=reader.bus_bytes)
        members = {"length": In(32), "done": Out(1)}
        for path, m in self._read.members.flatten():
            members[f"rd_{path[-1]}"] = (Out if m.flow == Out else In)(Shape.cast(m.shape).width * reader.ports)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = self.reader
        for path, member in self._read.members.flatten():
            name, w = path[-1], Shape.cast(member.shape).width
            for p in range(reader.ports):
                inner, outer = getattr(reader.bus[p], name), getattr(self, f"rd_{name}")[p * w:(p + 1) * w]
                m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        issued = Signal()
        received = Signal(32)
        m.d.comb += [reader.cmd.payload.addr.eq(0), reader.cmd.payload.length.eq(self.length),
                     reader.cmd.valid.eq(~issued), reader.data.ready.eq(1),
                     self.done.eq(issued & (received >= self.length))]
        with m.If(reader.cmd.valid & reader.cmd.ready):
            m.d.sync += issued.eq(1)
        with m.If(reader.data.valid):
            m.d.sync += received.eq(received + reader.word_bytes)
        return m


def measure_read(ddr: dict, *, bus_bytes: int, ports: int, outstanding: int, burst_bytes: int,
                 read_bytes: int = 1 << 20, timeout_cycles: int = 20_000_000) -> dict:
    """Stream ``read_bytes`` through the read master on the DDR model ``ddr`` (a configuration's
    ``ddr_params()``); the model's statistics (see the module docstring)."""
    reader = AxiReader(bus_bytes=bus_bytes, ports=ports, outstanding=outstanding, burst_bytes=burst_bytes)
    parameters = {"PORTS": ports, "DATA_BYTES": bus_bytes, "ADDR_W": 32, **ddr_verilog_parameters(ddr),
                  "READ_BYTES": read_bytes}
    parameters["SIZE_BYTES"] = max(parameters["SIZE_BYTES"], read_bytes)
    parameters["BASE_PAGE"] = 0             # the master reads from address 0 of its 32-bit bus
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stats.json"
        simulate(CalibDut(reader), toplevel="ddr_calib_tb", verilog_name="calib_dut", extra_sources=SOURCES,
                 parameters=parameters, test_module="mmfree.sim.ddr_calib", testcase="calibrate",
                 params={"out": str(out), "timeout_cycles": timeout_cycles}, fast_runtime=True)
        stats = json.loads(out.read_text())
    span = stats["last_read"] - stats["first_read"] + 1
    stats["bytes_per_cycle"] = stats["read_bytes"] / span
    stats["latency_mean"] = stats["latency_sum"] / max(stats["bursts"], 1)
    return stats


try:  # the cocotb side, only inside the simulator process
    import cocotb
    from cocotb.triggers import ClockCycles
except ImportError:  # pragma: no cover
    cocotb = None

if cocotb is not None:
    @cocotb.test()
    async def calibrate(dut):
        from .stream import start_clock_and_reset

        p = bench_params()
        await start_clock_and_reset(dut, rst_delay=1)
        waited = 0
        while not int(dut.done.value):
            assert waited < p["timeout_cycles"], f"no done within {waited} cycles"
            await ClockCycles(dut.clk, POLL_CYCLES)
            waited += POLL_CYCLES
        names = ("read_bytes", "first_read", "last_read", "cycles", "row_misses", "refreshes", "bursts",
                 "latency_sum", "latency_min", "latency_max", "protocol_error")
        Path(p["out"]).write_text(json.dumps({n: int(getattr(dut, f"ddr_{n}").value) for n in names}))
