"""Every generated document equals what its one generator writes from the code as it is now.

* ``docs/registers.md``: :func:`mmfree.contract.registers.markdown`, compared whole.
* ``docs/units.md``: :func:`mmfree.hw.flow.synth.render_markdown` of the rows the document
  carries, compared whole; and each row's Verilog hash equals the unit's Verilog now, so a changed
  unit fails here until ``make synth-units`` runs again (yosys is too slow to rerun in a test).
* ``bitstreams/<board>/utilization.md``: :func:`mmfree.hw.flow.board_flow.render_table` of the
  committed ``utilization.json``; the design-hash guard of that JSON is in tests/test_board_flow.py.
"""
from __future__ import annotations

import json

import pytest

from mmfree.contract import registers
from mmfree.contract.boards import BOARDS, get_board

from helpers import REPO


def test_register_map_doc_is_generated():
    assert (REPO / "docs" / "registers.md").read_text() == registers.markdown(), \
        "docs/registers.md differs from contract/registers.py: python -m mmfree.contract.registers > docs/registers.md"


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_utilization_doc_is_generated(board):
    from mmfree.hw.flow.board_flow import render_table

    folder = REPO / "bitstreams" / board
    report = json.loads((folder / "utilization.json").read_text())
    assert (folder / "utilization.md").read_text() == render_table(report, get_board(board))


@pytest.fixture(scope="module")
def units_doc():
    from mmfree.hw.flow import synth

    text = (REPO / "docs" / "units.md").read_text()
    rows, yosys = synth.doc_rows(text)
    return synth, text, rows, yosys


def test_units_doc_is_generated(units_doc):
    synth, text, rows, yosys = units_doc
    assert text == synth.render_markdown(rows, yosys)


def test_units_doc_covers_every_unit(units_doc):
    synth, _, rows, _ = units_doc
    assert sorted({r["unit"] for r in rows}) == sorted(s.key for s in synth._unit_table())
    assert {(r["unit"], r["family"]) for r in rows} == {(s.key, f) for s in synth._unit_table() for f in synth.FAMILIES}


def test_units_doc_rows_are_the_current_rtl(units_doc):
    synth, _, rows, _ = units_doc
    current = {s.key: synth.verilog_sha256(synth.unit_verilog(s)) for s in synth._unit_table()}
    stale = sorted({r["unit"] for r in rows if r.get("verilog_sha256") != current.get(r["unit"])})
    assert stale == [], f"docs/units.md was made from other RTL for {stale}: run make synth-units"


def test_units_doc_without_rows_is_refused():
    from mmfree.hw.flow import synth

    with pytest.raises(ValueError, match="no units.json block at the end: regenerate with `make synth-units`"):
        synth.doc_rows("# RTL datapath units\n| unit |\n")
