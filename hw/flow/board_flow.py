"""Board builds: synthesis estimates (``make synth``) and the Vivado project (``make bitstream``).

    mmfree synth [--board pynq-z2|kv260|all] [--check]
    mmfree bitstream --board pynq-z2|kv260|all

(the commands: :mod:`mmfree.hw.flow.cli`).

``synth`` elaborates the whole accelerator at the board's configuration
(:mod:`mmfree.contract.configs`, the board table :mod:`mmfree.contract.boards`),
synthesizes it with yosys ``synth_xilinx -family xc7|xcup -noiopad -flatten``
(pyosys, see :mod:`mmfree.hw.flow.synth`), and writes
``bitstreams/<board>/utilization.json`` and ``utilization.md``: LUT (logic +
LUT RAM sites), FF, BRAM36 (a RAMB18 is half), URAM, DSP against the part's
capacity. The same yosys run writes the mapped netlist, whose logic depth
:mod:`mmfree.hw.flow.depth` measures against the configuration's clock:
``bitstreams/<board>/timing.json`` and ``timing.md`` (docs/timing.md). It exits
1 when a board uses more than its LUT budget (70 %: room for Vivado's routing)
or more of anything than the part has, or when its worst register-to-register
path is estimated longer than the clock period.

``bitstream`` writes ``build/vivado/<board>/``: the accelerator's Verilog,
the block-design wrapper and ``build.tcl`` (:mod:`mmfree.hw.flow.vivado`), and
``manifest.json``; with ``vivado`` on PATH it runs the script, which leaves
``mmfree.bit``, ``mmfree.hwh`` and the completed manifest in
``bitstreams/<board>/``. Without Vivado it stops after writing, with the
command to run and exit status 3.

``synth --check`` compares each committed ``utilization.json`` (and ``timing.json``) with the current RTL
(design hash) and its budget, without synthesis: what the test suite runs.

The design hash
---------------
``design_sha256`` is the SHA-256 of the board, part, clock and the
accelerator's Verilog as Amaranth writes it with ``DESIGN_HASH = 0``
(``emit_src=False``, so comments and file layout of the Python do not count).
``design_hash``, its first 32 bits, is built into the ``DESIGN_HASH``
register of the bitstream and written to the manifest and the utilization
report: the driver refuses a bitstream whose register and manifest differ, and
the test suite refuses a committed report made from other RTL.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from mmfree.contract.boards import RESOURCES, Board
from mmfree.contract.registers import design_hash_from_digest

__all__ = ["BoardDesign", "elaborate", "design_sha256", "utilization", "budget_problems", "render_table",
           "synth_board", "write_vivado_project", "committed_problems", "timing_problems", "build_bitstream",
           "BITSTREAMS", "VIVADO_BUILD",
           "VIVADO_EXIT"]

REPO = Path(__file__).resolve().parents[2]
#: Where the per-board results live (committed: utilization; built by Vivado: bit, hwh, manifest).
BITSTREAMS = REPO / "bitstreams"
#: Where ``bitstream`` writes the Vivado project's sources.
VIVADO_BUILD = REPO / "build" / "vivado"
#: Exit status of ``bitstream`` when Vivado is not on PATH (the scripts are written).
VIVADO_EXIT = 3


def _say(line: str) -> None:
    print(line, flush=True)


@dataclasses.dataclass
class BoardDesign:
    """The accelerator of one board build: its Verilog (with its DESIGN_HASH) and identity."""

    board: Board
    design_sha256: str
    accelerator: object            # the hw.accelerator.Accelerator the Verilog was written from
    verilog: str
    seconds: float                 # elaboration and conversion time

    @property
    def design_hash(self) -> int:
        return design_hash_from_digest(self.design_sha256)


def design_sha256(board: Board, verilog_without_hash: str) -> str:
    """The content hash of a build (see the module docstring)."""
    head = json.dumps({"board": board.name, "part": board.part, "clock_hz": board.config.clock_hz},
                      sort_keys=True)
    return hashlib.sha256(head.encode() + b"\0" + verilog_without_hash.encode()).hexdigest()


def elaborate(board: Board, *, with_hash: bool = True, say: Callable[[str], None] = lambda line: None) -> BoardDesign:
    """Elaborate and convert ``board``'s accelerator; ``with_hash=False`` stops after the hash
    (one conversion instead of two: the Verilog returned then has DESIGN_HASH 0)."""
    from amaranth.back import verilog

    from mmfree.hw.accelerator import Accelerator

    from .vivado import TOP

    start = time.perf_counter()
    cfg = board.config
    acc = Accelerator(**cfg.accelerator_params(0))
    text = verilog.convert(acc, name=TOP, emit_src=False)
    digest = design_sha256(board, text)
    say(f"  design hash 0x{design_hash_from_digest(digest):08X} ({time.perf_counter() - start:.1f} s)")
    if with_hash:
        acc = Accelerator(**cfg.accelerator_params(design_hash_from_digest(digest)))
        text = verilog.convert(acc, name=TOP, emit_src=False)
    return BoardDesign(board, digest, acc, text, time.perf_counter() - start)


# --------------------------------------------------------------------------
# Utilization
# --------------------------------------------------------------------------
def utilization(cells: dict[str, int], board: Board) -> dict:
    """``used``, ``percent`` and ``detail`` of a cell count (Xilinx primitives) on ``board``'s part."""
    from .synth import group_cells

    groups = group_cells(cells)
    uram = sum(n for name, n in cells.items() if name.startswith("URAM"))
    used = {"LUT": groups["LUT"], "FF": groups["FF"], "BRAM36": groups["BRAM"], "URAM": uram, "DSP": groups["DSP"]}
    percent = {k: (round(100 * used[k] / board.capacity[k], 1) if board.capacity[k] else
                   (0.0 if used[k] == 0 else float("inf"))) for k in RESOURCES}
    detail = {"LUT_logic": groups["LUT_logic"], "LUT_mem": groups["LUT_mem"], "CARRY": groups["CARRY"],
              "MUXF": groups["MUXF"], "other": groups["other"] - uram}
    return {"used": used, "capacity": dict(board.capacity), "percent": percent, "detail": detail}


def budget_problems(report: dict, board: Board) -> list[str]:
    """Why a utilization report does not fit ``board`` (empty when it does)."""
    problems = []
    used, cap = report["used"], board.capacity
    if used["LUT"] > board.lut_budget * cap["LUT"]:
        problems.append(f"LUT {_fmt(used['LUT'])} is {100 * used['LUT'] / cap['LUT']:.1f} % of {_fmt(cap['LUT'])}, "
                        f"above the {100 * board.lut_budget:.0f} % budget")
    for k in RESOURCES:
        if used[k] > cap[k]:
            problems.append(f"{k} {_fmt(used[k])} exceeds the part's {_fmt(cap[k])}")
    return problems


def _fmt(v) -> str:
    return f"{v:,.1f}" if isinstance(v, float) and v != int(v) else f"{int(v):,}"


def render_table(report: dict, board: Board) -> str:
    """The markdown table of one board's utilization (``utilization.md``)."""
    cfg = board.config
    lines = [f"# {board.title}: synthesis estimate", "",
             f"Generated by `make synth BOARD={board.name}` from yosys {report['yosys']} "
             f"`synth_xilinx -family {board.yosys_family} -noiopad -flatten` of the whole accelerator "
             f"(configuration `{board.name}`: {cfg.ports} x {8 * cfg.bus_bytes}-bit AXI read ports, "
             f"{cfg.engine_bytes} weight bytes per cycle, {cfg.clock_hz / 1e6:g} MHz; design hash "
             f"{report['design_hash']}, numerics version {report['numerics_version']}). Part {board.part}. "
             f"An estimate: Vivado maps differently; LUT counts LUT6 sites (logic and LUT RAM), "
             f"BRAM36 counts 36 Kb tiles (a RAMB18 is half). Budget: LUT at most "
             f"{100 * board.lut_budget:.0f} % (room for routing), nothing beyond the part.", "",
             "| resource | used | available | % |", "|---|---:|---:|---:|"]
    for k in RESOURCES:
        lines.append(f"| {k} | {_fmt(report['used'][k])} | {_fmt(report['capacity'][k])} | "
                     f"{report['percent'][k]:.1f} |")
    d = report["detail"]
    lines += ["", f"LUT: {d['LUT_logic']:,} logic, {d['LUT_mem']:,} as memory (LUT RAM / shift registers); "
                  f"{d['CARRY']:,} carry chains, {d['MUXF']:,} wide-function muxes.",
              f"Within budget: {'yes' if report['within_budget'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def synth_board(board: Board, *, out_dir: Path | None = None, say: Callable[[str], None] = _say) -> dict:
    """Synthesize ``board``'s accelerator and write ``utilization.json`` / ``.md`` into ``out_dir``
    (default ``bitstreams/<board>``); the report (with ``within_budget`` and ``problems``)."""
    from mmfree.contract.registers import INTERFACE_VERSION
    from mmfree.models.numerics import NUMERICS_VERSION

    from .synth import synth_verilog, yosys_version
    from .vivado import TOP

    # the yosys log and netlist go to build/synth/ for a board's own report, else beside the report
    logs = REPO / "build" / "synth" if out_dir is None else Path(out_dir)
    out_dir = Path(out_dir) if out_dir is not None else BITSTREAMS / board.name
    t0 = time.perf_counter()
    say(f"{board.name}: elaborating the accelerator ({board.config.description})")
    design = elaborate(board, say=say)
    say(f"  Verilog {len(design.verilog) / 1e6:.1f} MB ({design.seconds:.1f} s)")
    t1 = time.perf_counter()
    last = [t1, None]

    def phase(name):
        now = time.perf_counter()
        if last[1] is not None:
            say(f"  [{now - t0:7.1f} s] {last[1]} done ({now - last[0]:.1f} s)")
        say(f"  [{now - t0:7.1f} s] yosys: {name}")
        last[:] = [now, name]

    log = logs / f"{board.name}.yosys.log"
    netlist = log.with_name(f"{board.name}.netlist.json")
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{board.name}: yosys synth_xilinx -family {board.yosys_family} (log: {_show(log)})")
    from amaranth.back import rtlil

    # the same design as design.verilog, in the form yosys reads fastest (see synth_verilog)
    cells = synth_verilog(rtlil.convert(design.accelerator, name=TOP, emit_src=False), TOP, board.yosys_family,
                          phase=phase, log_path=log, netlist_path=netlist, language="rtlil")
    t2 = time.perf_counter()
    say(f"  [{t2 - t0:7.1f} s] synthesis done ({t2 - t1:.1f} s)")
    timing = _timing_report(board, design, netlist)
    say(f"  [{time.perf_counter() - t0:7.1f} s] logic depth: worst path {timing['worst']['delay_ns']:.2f} ns, "
        f"{timing['worst']['levels']:g} LUT levels, estimated Fmax {timing['fmax_mhz']:.0f} MHz")
    report = {"board": board.name, "title": board.title, "part": board.part, "family": board.yosys_family,
              "design_sha256": design.design_sha256, "design_hash": f"0x{design.design_hash:08X}",
              "numerics_version": NUMERICS_VERSION, "interface_version": INTERFACE_VERSION,
              "yosys": yosys_version(), "flow": f"yosys synth_xilinx -family {board.yosys_family} -noiopad -flatten",
              "config": board.config.to_dict(), **utilization(cells, board),
              "lut_budget_percent": round(100 * board.lut_budget),
              "seconds": {"elaborate": round(design.seconds, 1), "synthesis": round(t2 - t1, 1)},
              "cells": dict(sorted(cells.items()))}
    problems = budget_problems(report, board)
    report["within_budget"] = not problems
    report["problems"] = problems
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "utilization.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "utilization.md").write_text(render_table(report, board))
    _write_timing(timing, board, out_dir)
    report["timing"] = timing
    report["problems"] = problems + timing["problems"]
    return report


# --------------------------------------------------------------------------
# Logic depth (timing.json / timing.md beside the utilization report)
# --------------------------------------------------------------------------
def _timing_report(board: Board, design: BoardDesign, netlist: Path) -> dict:
    """The logic-depth report of a synthesized board (:mod:`.depth`), with the design hash it stands for."""
    from . import depth
    from .vivado import TOP

    analysis = depth.analyze(json.loads(netlist.read_text()), TOP, board.yosys_family)
    return {"board": board.name, "part": board.part, "design_sha256": design.design_sha256,
            "design_hash": f"0x{design.design_hash:08X}",
            **depth.board_report(analysis, board.config.clock_hz)}


def _write_timing(timing: dict, board: Board, out_dir: Path) -> None:
    from .depth import render_markdown

    (out_dir / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    (out_dir / "timing.md").write_text(render_markdown(timing, board.title))


def _committed_report(board: Board, name: str, design: BoardDesign | None, out_dir: Path | None):
    """``bitstreams/<board>/<name>`` (or in ``out_dir``) against the current RTL: ``(path, report,
    problem)``, where ``problem`` is the one line saying it cannot be read (``report`` None) or was
    made from other RTL (the design hash covers the clock too), else None."""
    path = (Path(out_dir) if out_dir is not None else BITSTREAMS / board.name) / name
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return path, None, f"{path}: cannot read it ({e}); run make synth BOARD={board.name}"
    design = design or elaborate(board, with_hash=False)
    if report.get("design_sha256") != design.design_sha256:
        return path, report, (f"{path} was made from other RTL (design hash {report.get('design_hash')}, the "
                              f"current one is 0x{design.design_hash:08X}); run make synth BOARD={board.name}")
    return path, report, None


def timing_problems(board: Board, *, design: BoardDesign | None = None, out_dir: Path | None = None) -> list[str]:
    """Why ``bitstreams/<board>/timing.json`` does not stand for the current RTL within the clock's budget."""
    path, report, problem = _committed_report(board, "timing.json", design, out_dir)
    if problem:
        return [problem]
    if "worst" not in report or "within_budget" not in report:
        return [f"{path} has no worst path; run make synth BOARD={board.name}"]
    return list(report.get("problems", []))


# --------------------------------------------------------------------------
# The committed reports against the current RTL (no synthesis)
# --------------------------------------------------------------------------
def committed_problems(board: Board, *, design: BoardDesign | None = None, out_dir: Path | None = None) -> list[str]:
    """Why ``bitstreams/<board>/utilization.json`` does not stand for the current RTL within budget."""
    path, report, problem = _committed_report(board, "utilization.json", design, out_dir)
    if report is None:
        return [problem]
    problems = [problem] if problem else []
    problems += [f"{path} has no {k} figure" for k in RESOURCES if k not in report.get("used", {})]
    if not problems:
        problems += budget_problems(report, board)
    return problems


# --------------------------------------------------------------------------
# The Vivado project
# --------------------------------------------------------------------------
def manifest(design: BoardDesign) -> dict:
    """``manifest.json`` of a build: what the driver checks against the bitstream's registers."""
    from mmfree.contract.registers import INTERFACE_VERSION
    from mmfree.models.numerics import NUMERICS_VERSION

    from .vivado import CELL

    b, cfg = design.board, design.board.config
    return {"board": b.name, "title": b.title, "part": b.part, "board_part": b.board_part,
            "design_hash": f"0x{design.design_hash:08X}", "design_sha256": design.design_sha256,
            "clock_hz": cfg.clock_hz, "config": cfg.to_dict(), "numerics_version": NUMERICS_VERSION,
            "interface_version": INTERFACE_VERSION, "ip_name": CELL,
            "control_address": f"0x{b.control_address:08X}", "hp_ports": list(b.used_hp_ports),
            "bitstream": "mmfree.bit", "hwh": "mmfree.hwh",
            # filled in by build.tcl once Vivado has met timing
            "tool_version": None, "wns_ns": None}


def write_vivado_project(board: Board, *, build_dir: Path | None = None, out_dir: Path | None = None,
                         design: BoardDesign | None = None, say: Callable[[str], None] = _say) -> Path:
    """Write ``build/vivado/<board>/`` (Verilog, wrapper, build.tcl, manifest.json); its path."""
    from .vivado import TOP, WRAPPER, build_tcl, wrapper_verilog

    build_dir = Path(build_dir) if build_dir is not None else VIVADO_BUILD / board.name
    out_dir = Path(out_dir) if out_dir is not None else BITSTREAMS / board.name
    if design is None:
        say(f"{board.name}: elaborating the accelerator ({board.config.description})")
        design = elaborate(board, say=say)
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = (f"{TOP}.v", f"{WRAPPER}.v")
    (build_dir / sources[0]).write_text(design.verilog)
    (build_dir / sources[1]).write_text(wrapper_verilog(design.accelerator))
    (build_dir / "manifest.json").write_text(json.dumps(manifest(design), indent=1) + "\n")
    out_rel = os.path.relpath(out_dir.resolve(), build_dir.resolve())
    (build_dir / "build.tcl").write_text(build_tcl(board, design_hash=design.design_hash, out_dir=out_rel,
                                                   sources=sources))
    return build_dir


def build_bitstream(board: Board, jobs: int | None = None) -> int:
    """Write the Vivado project and run it when ``vivado`` is on PATH; the exit status
    (0, 1 when Vivado left no bitstream, :data:`VIVADO_EXIT` when there is no Vivado)."""
    from .vivado import TOP, WRAPPER

    build_dir = write_vivado_project(board)
    rel = _show(build_dir)
    command = f"cd {rel} && vivado -mode batch -source build.tcl"
    vivado = shutil.which("vivado")
    if vivado is None:
        print(f"{board.name}: wrote {rel}/ (build.tcl, {TOP}.v, {WRAPPER}.v, manifest.json). Vivado is not on PATH, so no "
              f"bitstream was built: on a machine with Vivado and the {board.board_part} board files run "
              f"`{command}` (docs/board.md)", file=sys.stderr)
        return VIVADO_EXIT
    _say(f"{board.name}: running {command}")
    env = dict(os.environ, **({"MMFREE_VIVADO_JOBS": str(jobs)} if jobs else {}))
    run = subprocess.run([vivado, "-mode", "batch", "-source", "build.tcl", "-notrace"], cwd=build_dir, env=env)
    out = BITSTREAMS / board.name
    missing = [n for n in ("mmfree.bit", "mmfree.hwh", "manifest.json") if not (out / n).is_file()]
    if run.returncode != 0 or missing:
        print(f"Error: Vivado stopped (exit {run.returncode}) without writing "
              f"{', '.join(missing) or 'a new bitstream'} (see {rel}/vivado.log)", file=sys.stderr)
        return 1
    _say(f"{board.name}: {_show(out)}/mmfree.bit, mmfree.hwh, manifest.json")
    return 0


def _show(path: Path) -> Path:
    """``path`` relative to the repository when inside it (what a user types after ``cd`` there)."""
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path
