"""QuantizeVector against ``golden_int.quantize_vector`` (bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.quantize import QUANTIZE_OUT, QuantizeVector, quantize_in_layout
from mmfree.models import numerics as nx
from mmfree.models.golden_int import quantize_vector

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

GAIN_MAX = (1 << (nx.GAIN_BITS - 1)) - 1


def vectors(k: int, x_bits: int, seed: int):
    """(x, G) pairs: random at several scales, tiny peaks (left shift), zero, single, extremes, max length."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (x_bits - 1)), (1 << (x_bits - 1)) - 1
    out = []
    for scale_bits in (4, 12, 20, 31, 40, x_bits - 1):
        n = int(rng.integers(1, k + 1))
        x = rng.integers(-(1 << scale_bits), 1 << scale_bits, size=n, dtype=np.int64)
        out.append((np.clip(x, lo, hi), rng.integers(-GAIN_MAX - 1, GAIN_MAX + 1, size=n)))
    out.append((np.zeros(k, np.int64), rng.integers(-GAIN_MAX, GAIN_MAX, size=k)))          # zero vector
    out.append((np.array([3]), np.array([1])))                                              # peak 3: << 29
    out.append((np.array([-1]), np.array([-GAIN_MAX - 1])))                                 # single
    ext = np.resize(np.array([lo, hi, 0, -1, 1], np.int64), k)
    out.append((ext, np.resize(np.array([-GAIN_MAX - 1, GAIN_MAX], np.int64), k)))          # |p| = 2**(x_bits+22)
    tie = np.array([1, 2, 3, 127, -127, 254, 255, -255], np.int64)                          # near ties
    out.append((tie, np.ones(len(tie), np.int64)))
    exact = np.array([254, 1, 3, 63, 127, 253, -1, -253], np.int64) << 20                  # 127 p / M = k + 1/2
    out.append((exact, np.full(len(exact), 3, np.int64)))
    return out


def beats_and_expected(k: int, x_bits: int, seed: int):
    layout = quantize_in_layout(x_bits)
    beats, want = [], []
    for x, g in vectors(k, x_bits, seed):
        ref = quantize_vector(x, g)
        for n in range(len(x)):
            beats.append(layout.const({"x": int(x[n]), "gain": int(g[n]), "last": int(n == len(x) - 1)})
                         .as_value().value)
            want.append((int(ref.codes[n]), int(n == len(x) - 1), ref.peak_norm, ref.shift))
    return beats, want


async def _run(dut, idle, backpressure):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    p = bench_params()
    beats, want = beats_and_expected(p["k"], p["x_bits"], p["seed"])
    out = await run_stream_unit(dut, beats, idle=idle, backpressure=backpressure, seed=p["seed"],
                                cycles_per_item=40)
    got = []
    for word in out:
        v = QUANTIZE_OUT.from_bits(word)
        got.append((int(v.code), int(v.last), int(v.peak_norm), int(v.shift)))
    bad = [(n, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} mismatches (n, got, want) as (code, last, M', sh): {bad[:4]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_latency(dut):
        """One vector, no gaps: first code exactly `latency` cycles after the last input."""
        from mmfree.sim.bench import run_stream_unit
        from mmfree.sim.runner import bench_params

        p = bench_params()
        layout = quantize_in_layout(p["x_bits"])
        unit = QuantizeVector(k=p["k"], x_bits=p["x_bits"])
        word = layout.const({"x": 1000, "gain": 3, "last": 1}).as_value().value
        out = await run_stream_unit(dut, [word], idle=0.0, backpressure=0.0, seed=0, latency=unit.latency,
                                    cycles_per_item=100)
        assert int(QUANTIZE_OUT.from_bits(out[0]).code) == nx.ACT_CODE_MAX

    @cocotb.test()
    async def bench_latency_zero_vector(dut):
        """An all-zero vector skips the divider: its code 0 comes ZERO_VECTOR_LATENCY cycles after it."""
        from mmfree.sim.bench import run_stream_unit
        from mmfree.sim.runner import bench_params

        p = bench_params()
        layout = quantize_in_layout(p["x_bits"])
        word = layout.const({"x": 0, "gain": 5, "last": 1}).as_value().value
        out = await run_stream_unit(dut, [word], idle=0.0, backpressure=0.0, seed=0,
                                    latency=QuantizeVector.ZERO_VECTOR_LATENCY, cycles_per_item=100)
        beat = QUANTIZE_OUT.from_bits(out[0])
        assert (int(beat.code), int(beat.peak_norm), int(beat.shift)) == (0, 0, 0)

    @cocotb.test()
    async def bench_exact(dut):
        """Back-to-back vectors, output always ready: exact codes and scalars."""
        await _run(dut, 0.0, 0.0)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact codes, protocol kept."""
        await _run(dut, 0.3, 0.5)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(k=0, x_bits=48), ValueError, "k must be at least 1, not 0"),
    (dict(k=4.0, x_bits=48), TypeError, "k must be an integer, not 4.0"),
    (dict(k=4, x_bits=32), ValueError, "x_bits must be 48, not 32"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        QuantizeVector(**kwargs)
    assert str(info.value) == msg


def test_stimulus_covers_both_shift_directions_and_exact_ties():
    pairs = vectors(64, nx.ACT_BITS, 4)
    shifts = {quantize_vector(x, g).shift for x, g in pairs}
    assert min(shifts) < 0 < max(shifts)
    assert quantize_vector(*pairs[-1]).codes.tolist() == [127, 1, 2, 32, 64, 127, -1, -127]   # ties away from 0


@pytest.mark.sim
@pytest.mark.parametrize("k, x_bits", [(64, nx.ACT_BITS), (256, nx.ACT_BITS)])
def test_quantize_verilator(k, x_bits):
    from mmfree.sim.runner import simulate

    result = simulate(QuantizeVector(k=k, x_bits=x_bits), toplevel="quantize_vector",
                      test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"k": k, "x_bits": x_bits, "seed": 21 + k})
    assert result.tests == 4 and result.failed == 0
