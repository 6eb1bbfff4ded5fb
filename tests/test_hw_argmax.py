"""Argmax against ``numpy.argmax`` (lowest index on ties), in Verilator.

The elements go in one or two a beat in a random mix (the engine's two-row logits), so ties fall
inside a pair and across pairs.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.argmax import ARGMAX_IN, Argmax, argmax_out_layout
from mmfree.models import numerics as nx

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None


def vectors(max_length: int, seed: int) -> list[np.ndarray]:
    """ACT vectors: random lengths and scales up to the full 48 bits, ties (first, middle, last), extremes,
    values that differ only above bit 32, length 1 and max."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in (1 << 4, 1 << 20, 1 << 31, 1 << (nx.ACT_BITS - 1)):
        for _ in range(3):
            n = int(rng.integers(1, max_length + 1))
            out.append(rng.integers(-scale, scale, size=n).clip(nx.ACT_MIN, nx.ACT_MAX))
    out.append(np.full(max_length, nx.ACT_MIN))                      # all equal, all minimal: index 0
    out.append(np.full(3, 7))                                        # all equal
    tie = rng.integers(-100, 100, size=max_length)
    tie[[max_length // 3, max_length - 1]] = 1000                    # tie: the first copy wins
    out.append(tie)
    ends = np.zeros(max_length, np.int64)
    ends[-1] = nx.ACT_MAX                                            # maximum at the end
    out.append(ends)
    out.append(np.array([nx.ACT_MIN]))                               # length 1
    out.append(np.array([-5, -5]))
    out.append(rng.integers(-3, 3, size=max_length))                 # many ties
    high = rng.integers(-4, 4, size=max_length) << 40                # the high bits decide ...
    high += rng.integers(0, 1 << 32, size=max_length)                # ... whatever the low 32 say
    out.append(high)
    return [v[:max_length].astype(np.int64) for v in out]


def beats(v: np.ndarray, rng) -> list[int]:
    """``v`` as ARGMAX_IN beats: one or two elements each, in a random mix."""
    out, n = [], 0
    while n < len(v):
        pair = n + 1 < len(v) and bool(rng.integers(0, 3))
        values = [int(v[n]), int(v[n + 1]) if pair else 0]
        n += 1 + pair
        out.append(ARGMAX_IN.const({"value": values, "pair": int(pair), "last": int(n == len(v))}).as_value().value)
    return out


def words_and_expected(max_length: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    words, want = [], []
    for v in vectors(max_length, seed):
        words += beats(v, rng)
        want.append((int(np.argmax(v)), int(v.max())))
    return words, want


async def _run(dut, idle, backpressure):
    from cocotb.triggers import RisingEdge

    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    words, want = words_and_expected(p["max_length"], p["seed"])
    layout = argmax_out_layout(p["max_length"])
    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=p["seed"])
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=p["seed"] + 1)
    src.send(words)
    await sink.wait_for(len(want), timeout_cycles=4 * len(words) + 100)
    for _ in range(5):  # nothing extra may come out
        await RisingEdge(dut.clk)
    assert not sink.protocol_errors, sink.protocol_errors[:5]
    got = [(int(layout.from_bits(w).index), int(layout.from_bits(w).value)) for w in sink.items]
    assert len(got) == len(want)
    bad = [(n, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} mismatches (vector, got, want): {bad[:4]}"
    return src, sink


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """No gaps, no backpressure: exact results, one beat per cycle, latency as published."""
        from mmfree.sim.runner import bench_params

        src, sink = await _run(dut, 0.0, 0.0)
        ins = src.transfer_cycles
        assert ins[-1] - ins[0] == len(ins) - 1, "input did not run at one beat per cycle"
        words, _ = words_and_expected(bench_params()["max_length"], bench_params()["seed"])
        lasts = [c for c, w in zip(ins, words) if ARGMAX_IN.from_bits(w).last]
        assert [o - i for o, i in zip(sink.transfer_cycles, lasts)] == [Argmax.latency] * len(lasts)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run(dut, 0.3, 0.5)

    @cocotb.test()
    async def bench_heavy_backpressure(dut):
        """Output mostly stalled: results wait, nothing lost or duplicated."""
        await _run(dut, 0.0, 0.9)


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(max_length=0), ValueError, "max_length must be at least 1, not 0"),
    (dict(max_length=4.0), TypeError, "max_length must be an integer, not 4.0"),
    (dict(max_length=True), TypeError, "max_length must be an integer, not True"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        Argmax(**kwargs)
    assert str(info.value) == msg


def test_index_width():
    assert argmax_out_layout(32000).size == 15 + nx.ACT_BITS
    assert argmax_out_layout(1).size == 1 + nx.ACT_BITS
    assert Argmax(max_length=4096).latency == 1


def test_stimulus_needs_all_48_bits():
    """Comparing only the low 32 bits would pick another index in some vector."""
    vs = vectors(64, 3)
    low = [np.argmax(((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) for v in vs]
    assert any(lo != np.argmax(v) for lo, v in zip(low, vs))
    assert any(np.abs(v).max() > 1 << 46 for v in vs)


def test_stimulus_mixes_pairs_and_ties_inside_pairs():
    """Beats of one and of two elements both occur, and some pair holds two equal elements."""
    rng = np.random.default_rng(4)
    pairs, singles, tied = 0, 0, 0
    for v in vectors(64, 3):
        for word in beats(v, rng):
            beat = ARGMAX_IN.from_bits(word)
            pairs += beat.pair
            singles += 1 - beat.pair
            tied += beat.pair and int(beat.value[0]) == int(beat.value[1])
    assert pairs and singles and tied


def test_stimulus_has_ties_off_index_zero():
    """At least one vector's maximum appears twice with the first copy past index 0."""
    vs = vectors(64, 3)
    assert any((v == v.max()).sum() > 1 and np.argmax(v) > 0 for v in vs)


@pytest.mark.sim
@pytest.mark.parametrize("max_length", [1, 37, 1000])
def test_argmax_verilator(max_length):
    from mmfree.sim.runner import simulate

    result = simulate(Argmax(max_length=max_length), toplevel="argmax", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"max_length": max_length, "seed": 60 + max_length})
    assert result.tests == 3 and result.failed == 0
