"""Build the ``accel_tb`` bench: an ``Accelerator`` on the simulated DDR, in Verilator.

``sim/accel_tb.v`` (its header documents every port) instantiates
``accel_dut``, the module :class:`AccelDut` generates here: the accelerator
with its AXI4 read ports packed into vectors (port p of ``rd_araddr`` at
``[p*32 +: 32]``) so that one Verilog file serves 1 to 4 ports, and
``sim/ddr_model.v`` behind it.

Typical use (host side)::

    from mmfree.hw.accelerator import Accelerator
    from mmfree.contract.configs import get_config
    cfg = get_config("sim-default")
    tb = build_accel_tb(Accelerator(**cfg.accelerator_params(design_hash)), cfg.ddr_params())
    result, run_dir = tb.run("mmfree.sim.accel_server", extra_env={...})

and inside the cocotb module, ``AxiLiteBus.from_prefix(dut, "s_axil")`` for the
registers and :class:`mmfree.sim.ddr_access.DdrHostAccess` for the memory.
"""
from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.axi import AXI4LiteSignature, AXI4ReadSignature, AXI4WriteSignature, flat_ports
from mmfree.hw.control_registers import ADDR_WIDTH as REG_ADDR_WIDTH

from .runner import Build, build

__all__ = ["AccelDut", "TB_SOURCES", "DUT_NAME", "TOPLEVEL", "RST_DELAY", "tb_parameters", "build_accel_tb",
           "ddr_verilog_parameters",
           "simulate_accel_tb"]

_HERE = Path(__file__).resolve().parent
#: The hand-written Verilog of the bench.
TB_SOURCES = (_HERE / "ddr_model_params.vh", _HERE / "ddr_model_param_map.vh", _HERE / "ddr_model.v",
              _HERE / "accel_tb.v")
#: Module name of the generated accelerator wrapper, and of the bench's top.
DUT_NAME = "accel_dut"
TOPLEVEL = "accel_tb"
#: accel_tb.v registers ``rst`` (``rst_q``) before the accelerator and the DDR model see it: a
#: bench passes this to ``start_clock_and_reset`` (a DDR load in that cycle would be lost).
RST_DELAY = 1
#: ddr_params() keys -> Verilog parameters of sim/ddr_model.v (through accel_tb / ddr_calib_tb):
#: the ideal memory's, which every configuration gives ...
_DDR_PARAMETERS = {"bandwidth_num": "BW_NUM", "bandwidth_den": "BW_DEN", "latency_cycles": "LATENCY",
                   "size_bytes": "SIZE_BYTES"}
#: ... where the memory sits on the bus (optional: address 0 when absent) ...
_PLACEMENT_PARAMETERS = {"base_page": "BASE_PAGE"}
#: ... and the board model's (contract/configs.py ``board_ddr_params``), absent for the ideal memory.
_BOARD_PARAMETERS = {"queue": "QUEUE", "refresh_interval_cycles": "REFI", "refresh_cycles": "RFC",
                     "banks": "BANKS", "bank_shift": "BANK_SHIFT", "row_shift": "ROW_SHIFT",
                     "miss_cycles": "MISS", "turnaround_cycles": "TURN",
                     "group_queue": "GROUP_QUEUE", "port_group": "PORT_GROUP", "jitter_cycles": "JITTER",
                     "cpu_bytes_num": "CPU_NUM"}


def ddr_verilog_parameters(ddr: dict) -> dict:
    """Verilog parameters of ``sim/ddr_model.v`` for a configuration's ``ddr_params()``; ValueError
    (one line) for a missing, unknown or non-integer one."""
    missing = sorted(set(_DDR_PARAMETERS) - set(ddr))
    if missing:
        raise ValueError(f"ddr parameters lack {', '.join(missing)}")
    unknown = sorted(set(ddr) - set(_DDR_PARAMETERS) - set(_BOARD_PARAMETERS) - set(_PLACEMENT_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown ddr parameters {', '.join(unknown)}")
    out = {}
    for key, value in ddr.items():
        name = _DDR_PARAMETERS.get(key) or _PLACEMENT_PARAMETERS.get(key) or _BOARD_PARAMETERS[key]
        least = 1 if key in ("bandwidth_num", "bandwidth_den", "size_bytes", "banks", "queue", "group_queue") else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"ddr parameter {key} must be an integer >= {least}, not {value!r}")
        out[name] = value
    if out["LATENCY"] < 2:
        raise ValueError(f"ddr parameter latency_cycles must be at least 2, not {out['LATENCY']}")
    if out["SIZE_BYTES"] > 1 << 28:         # Verilator refuses a larger unpacked array ("over 1 billion bits")
        raise ValueError(f"ddr parameter size_bytes must be at most 2**28, not {out['SIZE_BYTES']}")
    return out


class AccelDut(wiring.Component):
    """``accel_dut``: an ``Accelerator`` whose AXI4 ports are packed vectors ``rd_*`` (all read
    ports, port p at bits ``[p*w +: w]``) and ``wr_*`` (port 0's write channels); ``s_axil_*``
    and ``irq`` as on the accelerator."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        p = accelerator.params
        self.ports, self.addr_width, self.bus_bytes = p["ports"], p["addr_width"], p["bus_bytes"]
        self._read = AXI4ReadSignature(addr_width=self.addr_width, data_bytes=self.bus_bytes)
        self._write = AXI4WriteSignature(addr_width=self.addr_width, data_bytes=self.bus_bytes)
        members = flat_ports("s_axil", AXI4LiteSignature(addr_width=REG_ADDR_WIDTH).flip())
        members["irq"] = Out(1)
        for path, m in self._read.members.flatten():
            members[f"rd_{path[-1]}"] = (Out if m.flow == Out else In)(Shape.cast(m.shape).width * self.ports)
        members.update(flat_ports("wr", self._write))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = acc = self.accelerator
        for name, member in flat_ports("s_axil", AXI4LiteSignature(addr_width=REG_ADDR_WIDTH).flip()).items():
            inner, outer = getattr(acc, name), getattr(self, name)
            m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        m.d.comb += self.irq.eq(acc.irq)
        for path, member in self._read.members.flatten():
            name, w = path[-1], Shape.cast(member.shape).width
            for p in range(self.ports):
                inner, outer = getattr(acc, f"m_axi_p{p}_{name}"), getattr(self, f"rd_{name}")[p * w:(p + 1) * w]
                m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        for path, member in self._write.members.flatten():
            name = path[-1]
            inner, outer = getattr(acc, f"m_axi_p0_{name}"), getattr(self, f"wr_{name}")
            m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        return m


def tb_parameters(accelerator, ddr: dict) -> dict:
    """Verilog parameters of ``accel_tb`` for ``accelerator`` and a configuration's ``ddr_params()``."""
    p = accelerator.params
    return {"PORTS": p["ports"], "DATA_BYTES": p["bus_bytes"], "ADDR_W": p["addr_width"],
            **ddr_verilog_parameters(ddr)}


def build_accel_tb(accelerator, ddr: dict, *, waves: bool = False) -> Build:
    """The cached Verilator build of ``accel_tb`` around ``accelerator`` (an ``Accelerator``),
    with Verilator's runtime optimised too (its simulations run for millions of cycles)."""
    return build(AccelDut(accelerator), toplevel=TOPLEVEL, verilog_name=DUT_NAME, extra_sources=TB_SOURCES,
                 parameters=tb_parameters(accelerator, ddr), waves=waves, fast_runtime=True)


def simulate_accel_tb(accelerator, ddr: dict, **kwargs):
    """``runner.simulate`` of a cocotb module against ``accel_tb`` (keyword arguments as there)."""
    from .runner import simulate
    return simulate(AccelDut(accelerator), toplevel=TOPLEVEL, verilog_name=DUT_NAME, extra_sources=TB_SOURCES,
                    parameters=tb_parameters(accelerator, ddr), fast_runtime=True, **kwargs)
