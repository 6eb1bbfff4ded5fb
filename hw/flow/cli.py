"""The build commands of ``mmfree``: ``synth``, ``synth-units`` and ``bitstream``.

Registered in the ``mmfree.commands`` entry-point group (pyproject.toml) with
the extras they need; the host's CLI finds them by name. This module imports
only click and the contract at load time, so ``mmfree --help`` lists the
commands on a machine without amaranth; the gateware and yosys are imported
when a command runs (a missing one is a one-line error from the host's group).

    mmfree synth [--board pynq-z2|kv260|all] [--check]
    mmfree synth-units [UNIT ...|--all] [--family xc7|xcup] [--json FILE] [--doc FILE] [--list]
    mmfree bitstream --board pynq-z2|kv260 [--jobs N]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mmfree.contract.boards import BOARDS, YOSYS_FAMILIES


def board_option(*, required: bool = False):
    """--board: one board of contract/boards.py or all (default all unless required)."""
    return click.option("--board", required=required, default=None if required else "all",
                        show_default=not required, type=click.Choice([*BOARDS, "all"]),
                        help="the board (contract/boards.py), or all of them")


def _boards(name: str):
    return list(BOARDS.values()) if name == "all" else [BOARDS[name]]


def _output_file(ctx, param, value):
    """A --json/--doc file: its folder is made, a folder in its place is refused (checked before synthesis)."""
    if value is not None and value.is_dir():
        raise click.BadParameter(f"{str(value)!r} is a folder", ctx, param)
    return value


@click.command()
@board_option()
@click.option("--check", is_flag=True,
              help="compare the committed bitstreams/<board>/utilization.json and timing.json with the current "
                   "RTL and their budgets (resources; logic depth at the clock), without synthesis")
def synth(board, check):
    """Synthesis estimate of the whole accelerator per board: bitstreams/<board>/utilization.{json,md}
    and timing.{json,md}.

    Elaborates the accelerator at the board's configuration and synthesizes it
    with yosys synth_xilinx (docs/board.md). Fails when a board uses more than
    its LUT budget (70 %) or more of anything than the part has, or when its
    worst register-to-register path is estimated longer than the clock period
    (docs/timing.md).
    """
    from . import board_flow
    from .synth import SynthError

    boards = _boards(board)
    if check:
        failed = []
        for b in boards:
            design = board_flow.elaborate(b, with_hash=False)
            problems = (board_flow.committed_problems(b, design=design)
                        + board_flow.timing_problems(b, design=design))
            if problems:
                failed.append(f"{b.name}: " + "; ".join(problems))
            else:
                click.echo(f"{b.name}: utilization.json and timing.json match the RTL, within budget")
        if failed:
            raise click.ClickException(" | ".join(failed))
        return
    failed = []
    for b in boards:
        try:
            report = board_flow.synth_board(b)
        except SynthError as e:
            raise click.ClickException(str(e)) from None
        click.echo("")
        click.echo(board_flow.render_table(report, b))
        if report["problems"]:
            failed.append(f"{b.name}: " + "; ".join(report["problems"]))
    if failed:
        raise click.ClickException("over budget: " + " | ".join(failed))


def _selects(name: str, key: str) -> bool:
    """A unit name selects its key and all its parameter sets (``ternary_accumulate[kv260]``)."""
    return key == name or key.startswith(name + "[")


@click.command("synth-units")
@click.argument("units", nargs=-1)
@click.option("--all", "all_units", is_flag=True, help="every unit")
@click.option("--list", "list_units", is_flag=True, help="print the unit keys and exit")
@click.option("--family", "families", multiple=True, type=click.Choice(YOSYS_FAMILIES),
              help="yosys synth_xilinx family (repeatable; default both)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), callback=_output_file,
              help="write every row to this file")
@click.option("--doc", type=click.Path(path_type=Path), callback=_output_file,
              help="write the markdown table (docs/units.md) to this file")
def synth_units(units, all_units, list_units, families, json_out, doc):
    """Resource estimates of the RTL units (yosys synth_xilinx, xc7 and xcup), one JSON line each.

    A bare unit name selects all its parameter sets (ternary_accumulate: both
    boards). `mmfree synth-units --all --json build/synth/units.json --doc
    docs/units.md` (make synth-units) regenerates docs/units.md; `--doc` with named units
    updates their rows of an existing document and keeps the others.
    """
    from tqdm import tqdm

    from . import synth as units_synth

    specs = units_synth._unit_table()
    if list_units:
        click.echo("\n".join(s.key for s in specs))
        return
    known = [s.key for s in specs]
    unknown = [u for u in units if not any(_selects(u, k) for k in known)]
    if unknown:
        raise click.ClickException(f"unknown unit {unknown[0]}; known: {', '.join(known)}")
    if not (units or all_units):
        raise click.ClickException(f"name units or give --all; known: {', '.join(known)}")
    chosen = specs if all_units else [s for s in specs if any(_selects(u, s.key) for u in units)]
    jobs = [(spec, family) for spec in chosen for family in families or YOSYS_FAMILIES]
    rows = []
    with tqdm(jobs, desc="synth-units", unit="run", file=sys.stderr, leave=False) as bar:
        for spec, family in bar:
            bar.set_postfix_str(f"{spec.key} {family}")
            try:
                row = units_synth.synth_unit(spec, family)
            except units_synth.SynthError as e:
                raise click.ClickException(str(e)) from None
            rows.append(row)
            bar.write(json.dumps({k: v for k, v in row.items() if k != "cells"}), file=sys.stdout)
    version = units_synth.yosys_version()
    doc_rows = rows
    if doc is not None and not all_units and doc.exists():
        # a subset updates its own rows of an existing document and keeps the others
        try:
            kept, _ = units_synth.doc_rows(doc.read_text())
        except ValueError:
            kept = []
        fresh = {(r["unit"], r["family"]): r for r in rows}
        doc_rows = [fresh.pop((r["unit"], r["family"]), r) for r in kept] + list(fresh.values())
    for path, text in ((json_out, lambda: json.dumps({"yosys": version, "rows": rows}, indent=1) + "\n"),
                       (doc, lambda: units_synth.render_markdown(doc_rows, version))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_text(text())
            tmp.replace(path)


@click.command()
@board_option(required=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Vivado run jobs (default 4)")
def bitstream(board, jobs):
    """Vivado project per board (build/vivado/<board>/); runs Vivado when it is on PATH.

    Without Vivado it writes the project and exits with status 3, saying the
    command to run on a machine that has it (docs/board.md).
    """
    from . import board_flow

    status = max(board_flow.build_bitstream(b, jobs) for b in _boards(board))
    if status:
        click.get_current_context().exit(status)


__all__ = ["synth", "synth_units", "bitstream", "board_option"]
