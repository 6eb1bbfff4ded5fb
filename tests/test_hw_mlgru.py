"""MLGRU and GLU element-wise units against ``golden_int.mlgru_step`` / ``glu`` (bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.glu import GLU, GLU_IN
from mmfree.hw.mlgru import MLGRU, MLGRU_IN, MLGRU_OUT
from mmfree.models import numerics as nx
from mmfree.models.golden_int import glu, mlgru_step

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

UNITS = {"mlgru": MLGRU, "glu": GLU}
N = 1200


def act_values(rng, n: int) -> np.ndarray:
    """ACT values at every scale: |x| < 1, < 16, < 2**14, full range, and the extremes."""
    scale = rng.choice([1 << nx.ACT_FRAC, 16 << nx.ACT_FRAC, 1 << (nx.ACT_BITS - 2), 1 << (nx.ACT_BITS - 1)], size=n)
    x = (rng.random(n) * 2 - 1) * scale
    x = np.clip(np.round(x), nx.ACT_MIN, nx.ACT_MAX).astype(np.int64)
    top = 1 << (nx.ACT_FRAC + nx.SIGMOID_RANGE_LOG2)          # |x| = 32: where the sigmoid table ends
    edges = np.array([0, 1, -1, nx.ACT_MAX, nx.ACT_MIN, -nx.ACT_MAX, 1 << nx.ACT_FRAC,
                      top - 1, top, top + 1, -top + 1, -top, -top - 1], np.int64)
    x[: len(edges)] = rng.permutation(edges)
    return x


def golden(unit: str, cols: dict) -> dict:
    """The golden model's per-unit functions (``golden_int.mlgru_step`` / ``glu``)."""
    if unit == "mlgru":
        w, h = mlgru_step(cols["i"], cols["f"], cols["g"], cols["h"], cols["lb"])
        return {"w": w, "h": h}
    return {"w": glu(cols["a"], cols["b"])}


def stimulus(unit: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if unit == "glu":
        return {"a": act_values(rng, N), "b": act_values(rng, N)}
    cols = {k: act_values(rng, N) for k in "ifgh"}
    lb = rng.integers(0, nx.GATE_ONE, size=N)
    lb[:4] = [0, nx.GATE_ONE - 1, 0, nx.GATE_ONE - 1]
    cols["lb"] = lb
    return cols


async def _run(dut, idle, backpressure, latency):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    p = bench_params()
    unit, seed = p["unit"], p["seed"]
    cols = stimulus(unit, seed)
    want = golden(unit, cols)
    layout = MLGRU_IN if unit == "mlgru" else GLU_IN
    words = [layout.const({k: int(v[n]) for k, v in cols.items()}).as_value().value for n in range(N)]
    out = await run_stream_unit(dut, words, idle=idle, backpressure=backpressure, seed=seed + 1,
                                latency=latency)
    if unit == "mlgru":
        got = {"w": [int(MLGRU_OUT.from_bits(o).w) for o in out],
               "h": [int(MLGRU_OUT.from_bits(o).h) for o in out]}
    else:
        got = {"w": [o - (1 << nx.ACT_BITS) if o >> (nx.ACT_BITS - 1) else o for o in out]}
    for key, ref in want.items():
        bad = [(n, g, int(r)) for n, (g, r) in enumerate(zip(got[key], ref)) if g != int(r)]
        assert not bad, f"{key}: {len(bad)} mismatches (n, got, want): {bad[:4]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """Exact results, one element per cycle, latency as published."""
        from mmfree.sim.runner import bench_params

        await _run(dut, 0.0, 0.0, UNITS[bench_params()["unit"]].latency)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run(dut, 0.3, 0.4, None)


@pytest.mark.parametrize("unit", ["mlgru", "glu"])
def test_stimulus_reaches_saturation(unit):
    """The bench's values drive the product w (and the MLGRU state) into saturation."""
    want = golden(unit, stimulus(unit, 11))
    assert np.abs(want["w"]).max() >= nx.ACT_MAX
    if unit == "mlgru":
        assert np.any(want["h"] == nx.ACT_MAX) or np.any(want["h"] == nx.ACT_MIN)


def test_latencies():
    assert MLGRU.latency == 42 and GLU.latency == 20


@pytest.mark.synth
@pytest.mark.parametrize("unit", ["mlgru", "glu"])
def test_logic_depth_meets_150mhz(tmp_path, unit):
    """yosys synth_xilinx -family xc7 of the unit alone (15 .. 35 s): the worst path's estimate
    (hw/flow/depth.py) fits the PYNQ-Z2's 150 MHz period and crosses no unregistered DSP48 stage."""
    from amaranth.back import verilog

    from mmfree.hw.flow import depth
    from mmfree.hw.flow.synth import synth_verilog

    netlist = tmp_path / f"{unit}.json"
    synth_verilog(verilog.convert(UNITS[unit](), name=unit, emit_src=False), unit, "xc7", netlist_path=netlist)
    worst = depth.analyze(json.loads(netlist.read_text()), unit, "xc7").worst
    assert worst.delay_ns <= 1e9 / 150e6 and worst.dsp_unregistered == 0, worst


@pytest.mark.sim
@pytest.mark.parametrize("unit", ["mlgru", "glu"])
def test_elementwise_verilator(unit):
    from mmfree.sim.runner import simulate

    result = simulate(UNITS[unit](), toplevel=unit, test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"unit": unit, "seed": 11})
    assert result.tests == 2 and result.failed == 0
