"""Logic depth against the clock (hw/flow/depth.py): small designs of known depth, the budget, the board reports.

The ``synth`` tests map small Amaranth designs with the same yosys run the
board flow uses (``synth_verilog`` with ``netlist_path``) and check what the
analysis counts on them: k LUT6 primitives instantiated in series are k LUT
levels (instantiated, so that ABC9's delay-driven mapping cannot reshape them:
left to itself it maps an XOR of 100 bits into 5 levels, not ceil(log6 100) = 3,
because its LUT input pins differ in delay), and a w-bit registered adder is
one LUT level (the propagate LUT) in front of a ceil(w/4)-cell CARRY4 chain on
xc7.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from amaranth import Const, Elaboratable, Instance, Module, Signal
from amaranth.back import verilog

from mmfree.contract.boards import BOARDS, get_board
from mmfree.hw.flow import board_flow, depth

REPO = Path(__file__).resolve().parent.parent


class LutChain(Elaboratable):
    """``k`` LUT6 primitives in series between two registers: exactly ``k`` LUT levels.

    Each LUT6 is the XOR of the previous one (I0) and five register bits of its own, instantiated
    so that yosys's mapper cannot reshape the chain.
    """

    XOR6 = 0x6996966996696996

    def __init__(self, k: int):
        self.k = k
        self.i = Signal(5 * k + 1)
        self.o = Signal()
        self.ports = [self.i, self.o]

    def elaborate(self, platform):
        m = Module()
        r = Signal.like(self.i)
        m.d.sync += r.eq(self.i)
        stage = r[0]
        for n in range(self.k):
            out = Signal(name=f"lut{n}")
            m.submodules[f"lut{n}"] = Instance(
                "LUT6", p_INIT=Const(self.XOR6, 64), o_O=out, i_I0=stage,
                **{f"i_I{j}": r[1 + 5 * n + j - 1] for j in range(1, 6)})
            stage = out
        m.d.sync += self.o.eq(stage)
        return m


class RegisteredAdder(Elaboratable):
    """Two registered ``width``-bit operands, their sum registered: one carry chain between the registers."""

    def __init__(self, width: int):
        self.a, self.b = Signal(width), Signal(width)
        self.s = Signal(width)
        self.ports = [self.a, self.b, self.s]

    def elaborate(self, platform):
        m = Module()
        a, b = Signal.like(self.a), Signal.like(self.b)
        m.d.sync += [a.eq(self.a), b.eq(self.b), self.s.eq(a + b)]
        return m


def _analyze(component, name: str, tmp_path: Path, family: str = "xc7") -> depth.DepthReport:
    from mmfree.hw.flow.synth import synth_verilog

    netlist = tmp_path / f"{name}.json"
    text = verilog.convert(component, name=name, emit_src=False, ports=component.ports)
    synth_verilog(text, name, family, netlist_path=netlist)
    return depth.analyze(json.loads(netlist.read_text()), name, family)


def _reg_to_reg(report: depth.DepthReport) -> list[depth.Path]:
    return [p for p in report.paths if p.start.startswith("FD") and p.end.startswith("FD")]


@pytest.mark.synth
@pytest.mark.parametrize("k", [1, 4, 9])
def test_lut_chain_levels(tmp_path, k):
    report = _analyze(LutChain(k), f"chain{k}", tmp_path)
    worst = _reg_to_reg(report)[0]
    assert worst.levels == k and worst.through == ["LUT6"] * k, worst
    assert worst.carry_cells == 0 and worst.dsp_unregistered == 0
    timing = depth.PART_TIMING["xc7"]
    assert worst.delay_ns == pytest.approx(depth.path_delay_ns(timing, k))
    assert report.histogram.get(k) == 1          # the one capture register at the chain's end


@pytest.mark.synth
@pytest.mark.parametrize("width", [16, 32])
def test_adder_carry_chain(tmp_path, width):
    report = _analyze(RegisteredAdder(width), f"add{width}", tmp_path)
    worst = _reg_to_reg(report)[0]
    assert worst.carry_cells == math.ceil(width / 4) and worst.carry_chains == 1, worst
    assert worst.levels == 1, worst          # the propagate LUT in front of the chain
    assert worst.through == ["LUT2"] + ["CARRY4"] * math.ceil(width / 4), worst.through
    timing = depth.PART_TIMING["xc7"]
    assert worst.delay_ns == pytest.approx(depth.path_delay_ns(timing, 1, math.ceil(width / 4), 1))
    # the histogram counts every capture bit once
    assert sum(report.histogram.values()) == report.endpoints >= 3 * width


def test_budget_formula():
    t = depth.PART_TIMING["xc7"]
    # Tcko + Tnet + L (Tlut + Tnet) + Tsetup <= period
    period = 1e9 / 150e6
    levels = depth.budget_levels(t, 150e6)
    assert t.ff_cko + t.net + levels * t.level_ns + t.ff_setup <= period
    assert t.ff_cko + t.net + (levels + 1) * t.level_ns + t.ff_setup > period
    assert depth.path_delay_ns(t, levels) <= period < depth.path_delay_ns(t, levels + 1)
    assert depth.path_delay_ns(t, 2, carry_cells=5, carry_chains=1) == pytest.approx(
        t.ff_cko + t.net + 2 * (t.lut + t.net) + t.net + t.carry_in + 4 * t.carry_cell + t.ff_setup)
    assert depth.budget_levels(t, 1e6) > 100 and depth.budget_levels(t, 2e9) == 0
    # one table of figures, one per board family, each with its sources
    assert {b.yosys_family for b in BOARDS.values()} <= set(depth.PART_TIMING)
    assert all(pt.sources for pt in depth.PART_TIMING.values())


def test_dsp_registers_decide_the_stages():
    """A DSP input meets its first enabled register; P launches behind the last (yosys cells_sim.v figures)."""
    regs = {"AREG": "00000000000000000000000000000001", "BREG": "00000000000000000000000000000001",
            "MREG": "00000000000000000000000000000000", "PREG": "00000000000000000000000000000000",
            "USE_DPORT": "FALSE"}
    assert depth._dsp_stages(regs, "A") == (254, False)
    assert depth._dsp_arrival(regs) == (2952, True)            # AREG -> multiplier -> ALU -> P, unregistered
    assert depth._dsp_arrival(dict(regs, USE_DPORT="TRUE")) == (3935, True)      # and the pre-adder before it
    no_input_regs = dict(regs, AREG="0", BREG="0", MREG="1", PREG="1")
    assert depth._dsp_stages(no_input_regs, "A") == (1416, True)
    assert depth._dsp_arrival(no_input_regs) == (329, False)
    none = {"AREG": "0", "BREG": "0", "MREG": "0", "PREG": "0", "CREG": "0"}
    assert depth._dsp_stages(none, "A") == (None, True) and depth._dsp_arrival(none) == (None, True)


# --------------------------------------------------------------------------
# The committed board reports
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_committed_timing_report_is_current_and_within_budget(name):
    board = get_board(name)
    path = REPO / "bitstreams" / name / "timing.json"
    assert path.is_file(), f"{path} is missing: run make synth BOARD={name}"
    report = json.loads(path.read_text())
    assert "worst" in report and "budget_levels" in report, f"{path} has no worst path: run make synth BOARD={name}"
    assert board_flow.timing_problems(board) == []
    period = 1e9 / board.config.clock_hz
    assert report["worst"]["delay_ns"] <= period
    assert report["budget_levels"] == depth.budget_levels(depth.PART_TIMING[board.yosys_family],
                                                         board.config.clock_hz)
    md = (REPO / "bitstreams" / name / "timing.md").read_text()
    assert md == depth.render_markdown(report, board.title)


def test_timing_problems_name_the_cause(tmp_path):
    """A missing, stale or over-budget timing.json is one line each, saying what to run or what the clock allows."""
    board = get_board("pynq-z2")

    class Design:                       # what timing_problems reads of an elaborated design
        design_sha256, design_hash = "ab" * 32, 0xABABABAB

    missing = board_flow.timing_problems(board, design=Design, out_dir=tmp_path)
    assert len(missing) == 1 and missing[0].endswith("run make synth BOARD=pynq-z2")
    report = {"design_sha256": "cd" * 32, "design_hash": "0xCDCDCDCD", "clock_mhz": board.config.clock_hz / 1e6,
              "worst": {},
              "within_budget": True, "problems": []}
    (tmp_path / "timing.json").write_text(json.dumps(report))
    assert board_flow.timing_problems(board, design=Design, out_dir=tmp_path) == [
        f"{tmp_path / 'timing.json'} was made from other RTL (design hash 0xCDCDCDCD, the current one is "
        "0xABABABAB); run make synth BOARD=pynq-z2"]
    over = dict(report, design_sha256="ab" * 32, within_budget=False, problems=["worst path 9.00 ns ..."])
    (tmp_path / "timing.json").write_text(json.dumps(over))
    assert board_flow.timing_problems(board, design=Design, out_dir=tmp_path) == ["worst path 9.00 ns ..."]
    (tmp_path / "timing.json").write_text(json.dumps({k: v for k, v in over.items() if k != "worst"}))
    assert board_flow.timing_problems(board, design=Design, out_dir=tmp_path)[0].endswith(
        "has no worst path; run make synth BOARD=pynq-z2")


def test_board_report_says_the_clock_the_path_supports():
    timing = depth.PART_TIMING["xc7"]
    slow = depth.Path(start="FDRE a", end="FDRE.D b", levels=9, carry_cells=0, carry_chains=0, dsp_unregistered=0,
                      slow_launch=None, delay_ns=depth.path_delay_ns(timing, 9), through=["LUT6"] * 9)
    fast = dataclasses.replace(slow, levels=2, delay_ns=depth.path_delay_ns(timing, 2), through=["LUT6"] * 2)
    report = depth.DepthReport("xc7", [slow, fast], {9: 1, 2: 1}, 2, [slow], [slow.delay_ns, fast.delay_ns])
    r = depth.board_report(report, 150e6)
    assert r["budget_levels"] == 6 and not r["within_budget"] and r["endpoints_over_period"] == 1
    assert r["problems"] == [f"worst path {slow.delay_ns:.2f} ns (9 LUT levels, 0 carry cells) exceeds the 6.67 ns "
                             f"period at 150 MHz; the estimate supports {1e3 / slow.delay_ns:.0f} MHz"]
    assert depth.board_report(dataclasses.replace(report, paths=[fast]), 150e6)["within_budget"]
    md = depth.render_markdown(r, "PYNQ-Z2")
    assert "not Vivado timing closure" in md and "OVER budget" in md
