"""QuantReciprocal against ``numerics.quant_reciprocal`` (exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.reciprocal import RECIP_BITS, QuantReciprocal
from mmfree.models import numerics as nx

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

LO, HI = 1 << (nx.QUANT_NORM_BITS - 1), (1 << nx.QUANT_NORM_BITS) - 1


def stimulus(seed: int) -> list[int]:
    """Normalised peaks: both ends of [2**30, 2**31), near exact divisors, random."""
    rng = np.random.default_rng(seed)
    num = nx.ACT_CODE_MAX << nx.QUANT_RECIP_SHIFT
    exact = [num // r for r in range(num // HI + 1, num // LO, 997)]   # M' that divide almost evenly
    edges = [LO, LO + 1, HI, HI - 1, 3 << (nx.QUANT_NORM_BITS - 2)]
    near = [d + e for d in exact for e in (-1, 0, 1) if LO <= d + e <= HI]
    rand = rng.integers(LO, HI + 1, size=100).tolist()
    return edges + near[:60] + rand


async def _run(dut, idle, backpressure):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    seed = bench_params()["seed"]
    peaks = stimulus(seed)
    out = await run_stream_unit(dut, peaks, idle=idle, backpressure=backpressure, seed=seed,
                                cycles_per_item=4 * QuantReciprocal.latency)
    want = [nx.quant_reciprocal(p) for p in peaks]
    bad = [(p, g, w) for p, g, w in zip(peaks, out, want) if g != w]
    assert not bad, f"{len(bad)} mismatches (M', got, want): {bad[:4]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_latency(dut):
        """One division: o.valid exactly `latency` cycles after the input transfer."""
        from mmfree.sim.bench import run_stream_unit

        out = await run_stream_unit(dut, [LO], idle=0.0, backpressure=0.0, seed=0,
                                    latency=QuantReciprocal.latency)
        assert out == [nx.quant_reciprocal(LO)]

    @cocotb.test()
    async def bench_exact(dut):
        """Back-to-back divisions, output always ready: exact quotients."""
        await _run(dut, 0.0, 0.0)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact quotients, protocol kept."""
        await _run(dut, 0.3, 0.5)


def test_quotient_width_covers_the_range():
    assert nx.quant_reciprocal(LO).bit_length() == RECIP_BITS
    assert (nx.ACT_CODE_MAX << nx.QUANT_RECIP_SHIFT) >> RECIP_BITS < LO   # initial remainder < any M'
    assert QuantReciprocal.latency == RECIP_BITS + 1


@pytest.mark.sim
def test_reciprocal_verilator():
    from mmfree.sim.runner import simulate

    result = simulate(QuantReciprocal(), toplevel="quant_reciprocal", test_module=Path(__file__).stem,
                      module_dir=Path(__file__).parent, params={"seed": 3})
    assert result.tests == 3 and result.failed == 0
