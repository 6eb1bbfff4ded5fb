"""Bf16ToAct against ``numerics.bf16_to_act`` (bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.models import numerics as nx

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None


def bf16_patterns(seed: int) -> np.ndarray:
    """Every exponent with both signs and edge mantissas, then random patterns."""
    exps = np.arange(256, dtype=np.uint16)
    edges = np.array([0, 1, 0x3F, 0x40, 0x7F], np.uint16)
    grid = (exps[:, None, None] << 7) | edges[None, :, None] | (np.array([0, 0x8000], np.uint16)[None, None, :])
    rng = np.random.default_rng(seed)
    return np.concatenate([grid.reshape(-1), rng.integers(0, 1 << 16, 2000, dtype=np.uint16)])


async def _run(dut, idle, backpressure, latency=None):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    p = bench_params()
    bits = bf16_patterns(p["seed"])
    if latency is not None:
        bits = bits[:64]
    want = nx.bf16_to_act(bits)
    out = await run_stream_unit(dut, [int(b) for b in bits], idle=idle, backpressure=backpressure,
                                seed=p["seed"], latency=latency)
    sign = 1 << (nx.ACT_BITS - 1)
    got = np.array([((w & ((1 << nx.ACT_BITS) - 1)) ^ sign) - sign for w in out], np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} mismatches, first: bits {bits[bad[:4]]} got {got[bad[:4]]} want {want[bad[:4]]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_latency(dut):
        """Back to back, no backpressure: one value per cycle, published latency."""
        from mmfree.hw.embedding import Bf16ToAct

        await _run(dut, 0.0, 0.0, latency=Bf16ToAct.latency)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Every exponent, both signs, random patterns, with gaps and backpressure."""
        await _run(dut, 0.3, 0.4)


def test_patterns_cover_every_branch():
    bits = bf16_patterns(1)
    exp = (bits >> 7) & 0xFF
    shift = exp.astype(int) - (nx.BF16_EXP_BIAS + nx.BF16_MANT_BITS - nx.ACT_FRAC)
    act = nx.bf16_to_act(bits)
    assert (exp == 0).any() and (exp == 255).any() and (shift < 0).any() and (shift > 24).any()
    assert (np.abs(act) == nx.ACT_MAX).any() and (act == 0).any()
    # values that need all 48 bits (beyond int32) and values below 2**-25 that round
    assert ((np.abs(act) > (1 << 40)) & (np.abs(act) < nx.ACT_MAX)).any()
    assert ((act != 0) & (np.abs(act) < 1 << 7)).any()


@pytest.mark.sim
def test_embedding_verilator():
    from mmfree.hw.embedding import Bf16ToAct
    from mmfree.sim.runner import simulate

    result = simulate(Bf16ToAct(), toplevel="bf16_to_act", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"seed": 5})
    assert result.tests == 2 and result.failed == 0
