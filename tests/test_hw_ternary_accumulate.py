"""TernaryAccumulate against numpy ``T @ q`` (exact), in Verilator.

This file is both the pytest module (parameter checks, the Verilator sweep)
and the cocotb bench module the simulator imports (``bench_*`` coroutines).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.ternary_accumulate import DECODE_BITS, TernaryAccumulate, decode_words, weight_beat_layout
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
def make_problems(rows_per_block: int, k: int, seed: int, columns: int = 1):
    """List of (name, T [N x K'], Q [columns x K']) covering random and edge cases up to K' = k:
    column 0 takes the case's codes, column c > 0 the same negated (c odd: the extremes swap
    sign) or random, so columns that mixed would show."""
    rng = np.random.default_rng(seed + 7)
    return [(name, t, np.stack([q] + [(-q if c % 2 else rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1,
                                                                      size=len(q))) for c in range(1, columns)]))
            for name, t, q in _one_column_problems(rows_per_block, k, seed)]


def _one_column_problems(rows_per_block: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    r = rows_per_block
    probs = []
    for n in range(4):
        kk = int(rng.integers(1, k + 1))
        rows = int(rng.integers(1, 2 * r + 1))
        t = rng.integers(-1, 2, size=(rows, kk)).astype(np.int8)
        q = rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1, size=kk)
        probs.append((f"random{n}", t, q))
    q_mix = np.where(rng.integers(0, 2, size=k) == 1, nx.ACT_CODE_MAX, -nx.ACT_CODE_MAX)
    q_max = np.full(k, nx.ACT_CODE_MAX)
    for w in (-1, 0, 1):
        probs.append((f"all{w:+d}_max", np.full((r, k), w, np.int8), q_max))
        probs.append((f"all{w:+d}_min", np.full((r, k), w, np.int8), -q_max))
        probs.append((f"all{w:+d}_mix", np.full((r, k), w, np.int8), q_mix))
    # Rows of different constant sign against +-127: the accumulator extremes.
    signs = np.resize(np.array([1, -1, 0], np.int8), r)[:, None]
    probs.append(("rows_pm_max", np.repeat(signs, k, axis=1), q_max))
    probs.append(("random_mix_max", rng.integers(-1, 2, size=(r, k)).astype(np.int8), q_mix))
    # Single-group blocks back to back (K' <= 5): results leave while the next block runs.
    probs.append(("one_group", rng.integers(-1, 2, size=(3 * r, min(k, G))).astype(np.int8),
                  rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1, size=min(k, G))))
    return probs


def beats_and_expected(layout, lanes: int, rows_per_block: int, probs, seed: int):
    """Input payloads (ints), their ``last`` bits, and the expected output beats (per column a list of
    ``lanes`` ints).

    The weights are the image's own bytes (``pack_matrix``): a block of R rows,
    per group R bytes, sliced into R / lanes beats.
    """
    rng = np.random.default_rng(seed + 1)
    r = rows_per_block
    depth = r // lanes
    beats, lasts, expected = [], [], []
    for _, t, q in probs:
        rows, kk = t.shape
        blocks = -(-rows // r)
        groups = -(-kk // G)
        packed = pack_matrix(t, r).reshape(blocks, groups, depth, lanes)
        # Codes beyond K' meet zero (padding) weights: random values there must not count.
        qp = rng.integers(-nx.ACT_CODE_MAX, nx.ACT_CODE_MAX + 1, size=(len(q), groups * G))
        qp[:, :kk] = q
        tp = np.zeros((blocks * r, kk), np.int64)
        tp[:rows] = t
        ref = tp @ np.asarray(q, np.int64).T                  # rows x columns
        for b in range(blocks):
            for g in range(groups):
                for s in range(depth):
                    last = int(g == groups - 1 and s == depth - 1)
                    beats.append(layout.const({
                        "weights": [int(x) for x in packed[b, g, s]],
                        "codes": [[int(x) for x in qc[G * g: G * g + G]] for qc in qp],
                        "last": last,
                    }).as_value().value)
                    lasts.append(last)
            for s in range(depth):
                row0 = b * r + s * lanes
                expected.append([[int(x) for x in ref[row0:row0 + lanes, c]] for c in range(len(q))])
    return beats, lasts, expected


def stimulus(p: dict):
    """The bench's (beats, lasts, expected) for its parameters."""
    columns = p.get("columns", 1)
    layout = weight_beat_layout(p["lanes"], columns)
    probs = make_problems(p["rows_per_block"], p["k"], p["seed"], columns)
    return beats_and_expected(layout, p["lanes"], p["rows_per_block"], probs, p["seed"])


# --------------------------------------------------------------------------
# cocotb bench
# --------------------------------------------------------------------------
async def _run_bench(dut, idle: float, backpressure: float):
    from mmfree.hw.ternary_accumulate import accumulators_layout
    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    lanes, k, seed = p["lanes"], p["k"], p["seed"]
    out_layout = accumulators_layout(lanes, p.get("columns", 1), nx.accumulator_bits(k))
    beats, lasts, expected = stimulus(p)

    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=seed + 2)
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=seed + 3)
    src.send(beats)
    await sink.wait_for(len(expected), timeout_cycles=20 * (len(beats) + len(expected)) + 100)
    for _ in range(10):  # nothing extra may come out
        await cocotb.triggers.RisingEdge(dut.clk)

    assert not sink.protocol_errors, sink.protocol_errors[:5]
    assert len(sink.items) == len(expected)
    for n, (word, want) in enumerate(zip(sink.items, expected)):
        got = [[int(x) for x in column] for column in out_layout.from_bits(word)]
        assert got == want, f"output beat {n}: got {got[0][:8]}..., want {want[0][:8]}..."
    return src, sink, lasts


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """No gaps, no backpressure: exact results, one beat per cycle, latency as published."""
        from mmfree.sim.runner import bench_params

        src, sink, lasts = await _run_bench(dut, 0.0, 0.0)
        depth = bench_params()["rows_per_block"] // bench_params()["lanes"]
        ins = src.transfer_cycles
        assert ins[-1] - ins[0] == len(ins) - 1, "input did not run at one beat per cycle"
        # Block b's D results leave at (its last beat) + latency + s, s = 0..D-1.
        want = [c + TernaryAccumulate.latency + s for c, w in zip(ins, lasts) if w for s in range(depth)]
        assert sink.transfer_cycles == want, "output beats not at the published latency, one per cycle"

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run_bench(dut, 0.3, 0.5)

    @cocotb.test()
    async def bench_heavy_backpressure(dut):
        """Output mostly stalled: results must wait, nothing lost or duplicated."""
        await _run_bench(dut, 0.0, 0.9)


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(lanes=0, k=10), ValueError, "lanes must be at least 1, not 0"),
    (dict(lanes=8, k=0), ValueError, "k must be at least 1, not 0"),
    (dict(lanes=8.0, k=10), TypeError, "lanes must be an integer, not 8.0"),
    (dict(lanes=8, k=True), TypeError, "k must be an integer, not True"),
    (dict(lanes=8, k=10, rows_per_block=12), ValueError,
     "rows_per_block must be a positive multiple of lanes (8), not 12"),
    (dict(lanes=8, k=10, rows_per_block=0), ValueError,
     "rows_per_block must be a positive multiple of lanes (8), not 0"),
    (dict(lanes=8, k=10, rows_per_block=-8), ValueError,
     "rows_per_block must be a positive multiple of lanes (8), not -8"),
    (dict(lanes=8, k=10, rows_per_block=16.0), TypeError, "rows_per_block must be an integer, not 16.0"),
    (dict(lanes=8, k=10, columns=0), ValueError, "columns must be at least 1, not 0"),
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
    assert unit.rows_per_block == 16 and unit.depth == 1
    assert TernaryAccumulate(lanes=16, k=2048, rows_per_block=128).depth == 8
    assert unit.latency == 8
    wide = TernaryAccumulate(lanes=16, k=2048, columns=3)
    assert wide.o.payload.shape().size == 3 * 16 * nx.accumulator_bits(2048)
    assert wide.i.payload.shape().size == unit.i.payload.shape().size + 2 * G * 8


def test_decode_rom_follows_the_table():
    """Every ROM word: (nonzero, positive) per trit as TRIT_DECODE_TABLE says, offset = -count(+1) - 1."""
    words = decode_words()
    assert len(words) == len(nx.TRIT_DECODE_TABLE) and max(words) < 1 << DECODE_BITS
    for value, word in enumerate(words):
        trits = [((word >> 2 * j) & 1) * (1 if (word >> 2 * j + 1) & 1 else -1) for j in range(G)]
        assert trits == [int(t) for t in nx.TRIT_DECODE_TABLE[value]], value
        offset = word >> 2 * G
        offset -= (offset >> (DECODE_BITS - 2 * G - 1)) << (DECODE_BITS - 2 * G)   # 4-bit two's complement
        assert offset == -int((nx.TRIT_DECODE_TABLE[value] == 1).sum()) - 1, value


@pytest.mark.parametrize("lanes, rows_per_block, columns", [(8, 8, 1), (4, 16, 1), (2, 16, 1), (4, 8, 3)])
def test_stimulus_matches_reference(lanes, rows_per_block, columns):
    """The bench's packing decodes back to the matrices it claims (guards the bench itself)."""
    p = {"lanes": lanes, "k": 23, "rows_per_block": rows_per_block, "seed": 5, "columns": columns}
    layout = weight_beat_layout(lanes, columns)
    beats, lasts, expected = stimulus(p)
    depth = rows_per_block // lanes
    got, acc, s = [], np.zeros((depth, columns, lanes), np.int64), 0
    for word, last in zip(beats, lasts):
        beat = layout.from_bits(word)
        assert int(beat.last) == last
        q = np.array([[int(c) for c in column] for column in beat.codes])
        t = nx.unpack_trits(np.array([[int(w)] for w in beat.weights], np.uint8))
        acc[s] += (t.astype(np.int64) @ q.T).T
        s = (s + 1) % depth
        if last:
            assert s == 0
            got += [[[int(x) for x in row] for row in beat_acc] for beat_acc in acc]
            acc[:] = 0
    assert got == expected
    if columns > 1:
        assert any(e[0] != e[1] for e in expected)


@pytest.mark.sim
@pytest.mark.parametrize("lanes, k, rows_per_block, columns", [
    (1, 1, 1, 1), (1, 7, 3, 1), (8, 40, 8, 1), (8, 40, 16, 1), (4, 23, 32, 1), (16, 643, 64, 1), (16, 200, 128, 1),
    (64, 2048, 64, 1), (8, 40, 16, 4),          # four columns, a partial last group
])
def test_ternary_accumulate_verilator(lanes, k, rows_per_block, columns):
    from mmfree.sim.runner import simulate

    result = simulate(TernaryAccumulate(lanes=lanes, k=k, rows_per_block=rows_per_block, columns=columns),
                      toplevel="ternary_accumulate", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent,
                      params={"lanes": lanes, "k": k, "rows_per_block": rows_per_block, "columns": columns,
                              "seed": 1000 + lanes + k + rows_per_block + 100 * columns})
    assert result.tests == 3 and result.failed == 0
