"""The synthesis estimate script (hw/flow/synth.py) and the accumulate unit's LUT budget.

The ``synth`` tests run yosys ``synth_xilinx`` through pyosys (the ``synth``
extra, installed by the Makefile's venv and so in CI).
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from mmfree.models import numerics as nx
from mmfree.hw.flow import synth
from mmfree.hw.flow.cli import synth_units

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

#: Issue 4's budget: LUT6 sites (logic + LUT RAM) per weight-lane, and no DSP.
LUT_PER_WEIGHT_LANE_MAX = 20


def test_group_cells():
    groups = synth.group_cells({"LUT3": 5, "LUT6": 2, "RAM32M": 3, "SRL16E": 1, "FDRE": 9, "FDSE": 1,
                                "CARRY4": 4, "DSP48E1": 2, "RAMB18E1": 3, "RAMB36E2": 1, "MUXF7": 2,
                                "BUFG": 1, "INV": 1, "XORCY": 1})
    assert groups == {"LUT": 7 + 12 + 1, "LUT_logic": 7, "LUT_mem": 13, "FF": 10, "CARRY": 4, "DSP": 2,
                      "BRAM": 2.5, "MUXF": 2, "other": 1}


def test_unknown_unit_is_a_one_line_error():
    r = CliRunner().invoke(synth_units, ["no_such_unit"])
    assert r.exit_code == 1
    err = r.output.strip()
    assert err.startswith("Error: unknown unit no_such_unit; known: ternary_accumulate[pynq-z2]")
    assert "\n" not in err


def test_unit_table_covers_both_boards():
    keys = [s.key for s in synth._unit_table()]
    assert "ternary_accumulate[pynq-z2]" in keys and "ternary_accumulate[kv260]" in keys
    assert len(keys) == len(set(keys))


@pytest.mark.synth
def test_accumulate_lut_budget():
    """TernaryAccumulate at 8 bytes (40 weight-lanes), 4 rows per lane in LUT RAM, for Zynq-7000."""
    from mmfree.hw.ternary_accumulate import TernaryAccumulate

    lanes = 8
    unit = TernaryAccumulate(lanes=lanes, k=2816, rows_per_block=4 * lanes)
    groups = synth.group_cells(synth.synth_counts(unit, "ternary_accumulate", "xc7"))
    per_lane = groups["LUT"] / (lanes * nx.TRITS_PER_BYTE)
    assert groups["DSP"] == 0
    assert groups["BRAM"] == lanes / 4            # one RAMB18 (half a tile) per two lanes
    assert groups["LUT_mem"] > 0                  # the four accumulators per lane are LUT RAM
    assert per_lane <= LUT_PER_WEIGHT_LANE_MAX, f"{per_lane:.1f} LUT per weight-lane ({groups})"
