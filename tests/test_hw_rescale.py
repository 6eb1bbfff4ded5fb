"""Rescale against ``numerics.rescale`` (bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.rescale import EXP_SHAPE, SCALE_SHAPE, Rescale, rescale_in_layout
from mmfree.models import numerics as nx

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

EXP_MIN, EXP_MAX = -(1 << (EXP_SHAPE.width - 1)), (1 << (EXP_SHAPE.width - 1)) - 1
SCALE_MAX = (1 << SCALE_SHAPE.width) - 1


def reference(acc: np.ndarray, scale: int, exp: int) -> np.ndarray:
    """``numerics.rescale``.

    Below exp = -62 numpy's int64 cannot hold the rounding half; there the same
    definition, ``saturate(rshift_round(acc * scale, -exp))``, runs on Python ints.
    """
    acc = np.asarray(acc, np.int64)
    if exp < -62:
        return np.array([nx.saturate(nx.rshift_round(int(a) * scale, -exp)) for a in acc], np.int64)
    return nx.rescale(acc, scale, exp)


def stimulus(acc_bits: int, seed: int) -> list[tuple[int, int, int]]:
    """(acc, scale, exp) triples: vectors of 1..40 elements sharing (scale, exp), covering
    realistic exponents, rounding ties, saturation both ways, exp >= 0, and the port extremes."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    acc_edges = [0, 1, -1, 2, -2, 3, -3, hi, lo, lo + 1, hi - 1]
    pairs = [(1, -1), (1, -2), (3, -1), (SCALE_MAX, -60), (SCALE_MAX, -24), (SCALE_MAX, -1), (SCALE_MAX, 0),
             (1, 0), (1, 5), (SCALE_MAX, 27), (SCALE_MAX, 31), (1, 31), (1, 32), (1, 46), (1, 47), (1, 48),
             (SCALE_MAX, EXP_MAX), (0, EXP_MAX), (SCALE_MAX, EXP_MIN), (1 << 29, -40), (0, -30),
             (SCALE_MAX, -2), (SCALE_MAX, -3)]
    for _ in range(40):
        scale = int(rng.integers(1 << 27, SCALE_MAX + 1))
        pairs.append((scale, int(rng.integers(-75, -20))))   # what output_scale gives
    for _ in range(10):
        pairs.append((int(rng.integers(0, SCALE_MAX + 1)), int(rng.integers(EXP_MIN, EXP_MAX + 1))))
    out = []
    for scale, exp in pairs:
        n = int(rng.integers(1, 41))
        accs = list(rng.integers(lo, hi + 1, size=n)) + acc_edges
        out += [(int(a), scale, exp) for a in accs]
    return out


def words_and_expected(acc_bits: int, seed: int):
    layout = rescale_in_layout(acc_bits)
    triples = stimulus(acc_bits, seed)
    words = [layout.const({"acc": a, "scale": s, "exp": e}).as_value().value for a, s, e in triples]
    want = [int(reference(np.array([a]), s, e)[0]) for a, s, e in triples]
    return words, want


async def _run(dut, idle, backpressure, latency):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    p = bench_params()
    words, want = words_and_expected(p["acc_bits"], p["seed"])
    out = await run_stream_unit(dut, words, idle=idle, backpressure=backpressure, seed=p["seed"],
                                latency=latency)
    got = [o - (1 << nx.ACT_BITS) if o >> (nx.ACT_BITS - 1) else o for o in out]
    bad = [(n, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} mismatches (n, got, want): {bad[:4]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """Exact results, one element per cycle, latency as published."""
        await _run(dut, 0.0, 0.0, Rescale.latency)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run(dut, 0.3, 0.5, None)


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(acc_bits=1), ValueError, f"acc_bits must be in 2 .. {Rescale.MAX_ACC_BITS}, not 1"),
    (dict(acc_bits=Rescale.MAX_ACC_BITS + 1), ValueError,
     f"acc_bits must be in 2 .. {Rescale.MAX_ACC_BITS}, not {Rescale.MAX_ACC_BITS + 1}"),
    (dict(acc_bits=20.0), TypeError, "acc_bits must be an integer, not 20.0"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        Rescale(**kwargs)
    assert str(info.value) == msg


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        Rescale(21)


def test_widths_follow_numerics():
    """The scale port holds output_scale's largest value (M' and inv at their largest) and no more."""
    assert Rescale.MAX_ACC_BITS == nx.accumulator_bits(8192)
    top = (1 << nx.QUANT_NORM_BITS) - 1
    inv_max = nx.rsqrt_fixed(1 << (nx.RSQRT_NORM_BITS - 2))[0]
    scale, _ = nx.output_scale(top, inv_max, 0, (1 << nx.SCALE_BITS) - 1, 0, 0, 0, 0, 0)
    assert scale.bit_length() == SCALE_SHAPE.width == 30
    assert Rescale().latency == 3


def test_reference_saturates_both_ways():
    """numerics.rescale (the reference) stays in ACT for every exponent, left shifts included."""
    rng = np.random.default_rng(3)
    for scale, exp in [(SCALE_MAX, -30), (SCALE_MAX, -1), (SCALE_MAX, 0), (12345, 4), (1, 40), (1, 60)]:
        acc = rng.integers(-(1 << 20), 1 << 20, size=200)
        ref = reference(acc, scale, exp)
        assert ref.min() >= nx.ACT_MIN and ref.max() <= nx.ACT_MAX
        exact = [int(a) * scale * 2**exp for a in acc] if exp >= 0 else None
        if exact is not None:
            assert ref.tolist() == [min(max(v, nx.ACT_MIN), nx.ACT_MAX) for v in exact]


def test_stimulus_covers_rounding_and_saturation():
    triples = stimulus(21, 7)
    want = [int(reference(np.array([a]), s, e)[0]) for a, s, e in triples]
    assert nx.ACT_MAX in want and nx.ACT_MIN in want
    # a tie rounds towards +inf: 1 * 1 / 2 -> 1, -1 * 1 / 2 -> 0
    assert (1, 1, -1) in triples and (-1, 1, -1) in triples
    assert int(reference(np.array([-1]), 1, -1)[0]) == 0 and int(reference(np.array([1]), 1, -1)[0]) == 1
    assert any(e >= 0 for _, _, e in triples) and any(e < -60 for _, _, e in triples)


@pytest.mark.sim
@pytest.mark.parametrize("acc_bits", [nx.accumulator_bits(2048), Rescale.MAX_ACC_BITS])
def test_rescale_verilator(acc_bits):
    from mmfree.sim.runner import simulate

    result = simulate(Rescale(acc_bits=acc_bits), toplevel="rescale", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"acc_bits": acc_bits, "seed": 40 + acc_bits})
    assert result.tests == 2 and result.failed == 0
