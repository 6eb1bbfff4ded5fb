"""Sigmoid and SiLU against ``numerics.sigmoid_act`` / ``silu_act`` (bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.sigmoid import Sigmoid, sigmoid_rom
from mmfree.hw.silu import SiLU
from mmfree.models import numerics as nx

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

UNITS = {"sigmoid": Sigmoid, "silu": SiLU}


def stimulus(seed: int) -> np.ndarray:
    """ACT inputs: edges (0, +-1 LSB, segment boundaries, |x| >= 32, ACT_MIN/MAX) and random values."""
    rng = np.random.default_rng(seed)
    seg = 1 << nx.SIGMOID_SEGMENT_SHIFT
    top = nx.SIGMOID_SEGMENTS * seg                      # |x| = 32.0
    edges = [0, 1, -1, 2, -2, seg - 1, seg, seg + 1, top - 1, top, top + 1,
             nx.ACT_MIN, nx.ACT_MIN + 1, nx.ACT_MAX, -nx.ACT_MAX, 1 << nx.ACT_FRAC, -(1 << nx.ACT_FRAC)]
    boundaries = np.arange(0, nx.SIGMOID_SEGMENTS + 1) * seg
    around = np.concatenate([boundaries - 1, boundaries, boundaries + 1, boundaries + seg // 2])
    around = np.concatenate([around, -around])
    inside = rng.integers(-top, top + 1, size=1500)
    anywhere = rng.integers(nx.ACT_MIN, nx.ACT_MAX + 1, size=300, dtype=np.int64)
    x = np.concatenate([np.array(edges, np.int64), around, inside, anywhere])
    return np.clip(x, nx.ACT_MIN, nx.ACT_MAX).astype(np.int64)


def expected(unit: str, x: np.ndarray) -> list[int]:
    return [int(v) for v in (nx.sigmoid_act(x) if unit == "sigmoid" else nx.silu_act(x))]


# --------------------------------------------------------------------------
# cocotb bench
# --------------------------------------------------------------------------
async def _run_bench(dut, idle: float, backpressure: float):
    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    unit, seed = p["unit"], p["seed"]
    cls = UNITS[unit]
    x = stimulus(seed)
    want = expected(unit, x)
    out_layout = cls().o.payload.shape()

    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=seed + 1)
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=seed + 2)
    src.send(int(v) & ((1 << nx.ACT_BITS) - 1) for v in x)
    await sink.wait_for(len(want), timeout_cycles=20 * len(want) + 100)
    for _ in range(5):
        await cocotb.triggers.RisingEdge(dut.clk)

    assert not sink.protocol_errors, sink.protocol_errors[:5]
    assert len(sink.items) == len(want)
    if unit == "sigmoid":
        got = [int(out_layout.from_bits(w).gate) for w in sink.items]
        passed = [int(out_layout.from_bits(w).x) for w in sink.items]
        assert passed == [int(v) for v in x], "x not passed along in order"
    else:
        got = [w - (1 << nx.ACT_BITS) if w >> (nx.ACT_BITS - 1) else w for w in sink.items]
    bad = [(int(x[n]), g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} mismatches (x, got, want): {bad[:5]}"
    return src, sink, cls


if cocotb is not None:
    @cocotb.test()
    async def bench_full_rate(dut):
        """Exact results, one element per cycle, latency as published."""
        src, sink, cls = await _run_bench(dut, 0.0, 0.0)
        ins = src.transfer_cycles
        assert ins[-1] - ins[0] == len(ins) - 1, "input did not run at one element per cycle"
        assert [o - i for o, i in zip(sink.transfer_cycles, ins)] == [cls.latency] * len(ins)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run_bench(dut, 0.3, 0.4)


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------
def test_rom_is_the_numerics_table():
    words, base_bits, d1_bits, d2_bits = sigmoid_rom()
    assert len(words) == nx.SIGMOID_SEGMENTS
    base = [w & ((1 << base_bits) - 1) for w in words]
    d1 = [(w >> base_bits) & ((1 << d1_bits) - 1) for w in words]
    d2 = [w >> (base_bits + d1_bits) for w in words]
    d2 = [v - (1 << d2_bits) if v >> (d2_bits - 1) else v for v in d2]
    t = [int(v) for v in nx.SIGMOID_TABLE]
    assert base == t[:-2]
    assert [b + s for b, s in zip(base, d1)] == t[1:-1]
    assert [b + 2 * s + c for b, s, c in zip(base, d1, d2)] == t[2:]


def test_latencies():
    assert Sigmoid.latency == 2 and SiLU.latency == 3


@pytest.mark.sim
@pytest.mark.parametrize("unit", ["sigmoid", "silu"])
def test_sigmoid_verilator(unit):
    from mmfree.sim.runner import simulate

    result = simulate(UNITS[unit](), toplevel=unit, test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"unit": unit, "seed": 7})
    assert result.tests == 2 and result.failed == 0
