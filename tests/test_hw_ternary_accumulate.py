"""TernaryAccumulate against numpy ``T @ q`` (exact), in Verilator.

This file is both the pytest module (parameter checks, the Verilator sweep)
and the cocotb bench module the simulator imports (``bench_*`` coroutines).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.ternary_accumulate import TernaryAccumulate, weight_beat_layout
from mmfree.models import numerics as nx
from mmfree.models.weight_image import pack_matrix

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

G = nx.TRITS_PER_BYTE


# --------------------------------------------------------------------------
# Stimulus (shared by the bench and its checks)
# --------------------------------------------------------------------------
def make_problems(lanes: int, k: int, seed: int):
    """List of (name, T [N x K'], q [K']) covering random and edge cases up to K' = k."""
    rng = np.random.default_rng(seed)
    probs = []
    for n in range(4):
        kk = int(rng.integers(1, k + 1))
        rows = int(rng.integers(1, 2 * lanes + 1))
        t = rng.integers(-1, 2, size=(rows, kk)).astype(np.int8)
        q = rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1, size=kk)
        probs.append((f"random{n}", t, q))
    q_mix = np.where(rng.integers(0, 2, size=k) == 1, nx.ACT_CODE_MAX, -nx.ACT_CODE_MAX)
    q_max = np.full(k, nx.ACT_CODE_MAX)
    for w in (-1, 0, 1):
        probs.append((f"all{w:+d}_max", np.full((lanes, k), w, np.int8), q_max))
        probs.append((f"all{w:+d}_min", np.full((lanes, k), w, np.int8), -q_max))
        probs.append((f"all{w:+d}_mix", np.full((lanes, k), w, np.int8), q_mix))
    # Rows of different constant sign against +-127: the accumulator extremes.
    signs = np.resize(np.array([1, -1, 0], np.int8), lanes)[:, None]
    probs.append(("rows_pm_max", np.repeat(signs, k, axis=1), q_max))
    probs.append(("random_mix_max", rng.integers(-1, 2, size=(lanes, k)).astype(np.int8), q_mix))
    return probs


def beats_and_expected(layout, lanes: int, probs, seed: int):
    """Input payloads (ints) and the expected output beats (lists of ``lanes`` ints)."""
    rng = np.random.default_rng(seed + 1)
    beats, expected = [], []
    for _, t, q in probs:
        rows, kk = t.shape
        blocks = -(-rows // lanes)
        groups = -(-kk // G)
        packed = pack_matrix(t, lanes).reshape(blocks, groups, lanes)
        # Codes beyond K' meet zero (padding) weights: random values there must not count.
        qp = rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1, size=groups * G)
        qp[:kk] = q
        tp = np.zeros((blocks * lanes, kk), np.int64)
        tp[:rows] = t
        ref = tp @ np.asarray(q, np.int64)
        for b in range(blocks):
            for g in range(groups):
                beats.append(layout.const({
                    "weights": [int(x) for x in packed[b, g]],
                    "codes": [int(x) for x in qp[G * g: G * g + G]],
                    "last": int(g == groups - 1),
                }).as_value().value)
            expected.append([int(x) for x in ref[b * lanes:(b + 1) * lanes]])
    return beats, expected


# --------------------------------------------------------------------------
# cocotb bench
# --------------------------------------------------------------------------
async def _run_bench(dut, idle: float, backpressure: float):
    from amaranth.hdl import signed
    from amaranth.lib import data

    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    lanes, k, seed = p["lanes"], p["k"], p["seed"]
    layout = weight_beat_layout(lanes)
    out_layout = data.ArrayLayout(signed(nx.accumulator_bits(k)), lanes)
    probs = make_problems(lanes, k, seed)
    beats, expected = beats_and_expected(layout, lanes, probs, seed)

    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=seed + 2)
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=seed + 3)
    src.send(beats)
    await sink.wait_for(len(expected), timeout_cycles=20 * len(beats) + 100)
    for _ in range(10):  # nothing extra may come out
        await cocotb.triggers.RisingEdge(dut.clk)

    assert not sink.protocol_errors, sink.protocol_errors[:5]
    assert len(sink.items) == len(expected)
    for n, (word, want) in enumerate(zip(sink.items, expected)):
        got = [int(x) for x in out_layout.from_bits(word)]
        assert got == want, f"output beat {n}: got {got[:8]}..., want {want[:8]}..."
    return src, sink


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """No gaps, no backpressure: exact results, one beat per cycle, latency as published."""
        src, sink = await _run_bench(dut, 0.0, 0.0)
        ins = src.transfer_cycles
        assert ins[-1] - ins[0] == len(ins) - 1, "input did not run at one beat per cycle"
        lasts = [c for c, w in zip(ins, src_beats_last(dut, src)) if w]
        assert [o - i for o, i in zip(sink.transfer_cycles, lasts)] == [TernaryAccumulate.latency] * len(lasts)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run_bench(dut, 0.3, 0.5)

    @cocotb.test()
    async def bench_heavy_backpressure(dut):
        """Output mostly stalled: last beats must wait, nothing lost or duplicated."""
        await _run_bench(dut, 0.0, 0.9)


def src_beats_last(dut, src):
    """Per transferred input beat, its ``last`` bit (recomputed from the same stimulus)."""
    from mmfree.sim.runner import bench_params

    p = bench_params()
    layout = weight_beat_layout(p["lanes"])
    beats, _ = beats_and_expected(layout, p["lanes"], make_problems(p["lanes"], p["k"], p["seed"]), p["seed"])
    return [int(layout.from_bits(b).last) for b in beats]


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(lanes=0, k=10), ValueError, "lanes must be at least 1, not 0"),
    (dict(lanes=8, k=0), ValueError, "k must be at least 1, not 0"),
    (dict(lanes=8.0, k=10), TypeError, "lanes must be an integer, not 8.0"),
    (dict(lanes=8, k=True), TypeError, "k must be an integer, not True"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        TernaryAccumulate(**kwargs)
    assert str(info.value) == msg


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        TernaryAccumulate(8, 10)


def test_widths_follow_numerics():
    unit = TernaryAccumulate(lanes=16, k=2048)
    assert unit.acc_bits == nx.accumulator_bits(2048)
    assert unit.o.payload.shape().size == 16 * nx.accumulator_bits(2048)
    assert unit.latency == 3


def test_stimulus_matches_reference():
    """The bench's packing decodes back to the matrices it claims (guards the bench itself)."""
    lanes, k = 8, 23
    layout = weight_beat_layout(lanes)
    probs = make_problems(lanes, k, 5)
    beats, expected = beats_and_expected(layout, lanes, probs, 5)
    got, acc = [], np.zeros(lanes, np.int64)
    for word in beats:
        beat = layout.from_bits(word)
        q = np.array([int(c) for c in beat.codes])
        t = nx.unpack_trits(np.array([[int(w)] for w in beat.weights], np.uint8))
        acc += t.astype(np.int64) @ q
        if beat.last:
            got.append([int(x) for x in acc])
            acc[:] = 0
    assert got == expected


@pytest.mark.sim
@pytest.mark.parametrize("lanes, k", [(1, 1), (8, 40), (16, 643), (64, 2048)])
def test_ternary_accumulate_verilator(lanes, k):
    from mmfree.sim.runner import simulate

    result = simulate(TernaryAccumulate(lanes=lanes, k=k), toplevel="ternary_accumulate",
                      test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"lanes": lanes, "k": k, "seed": 1000 + lanes + k})
    assert result.tests == 3 and result.failed == 0
