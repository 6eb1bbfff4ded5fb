"""RsqrtFixed against ``numerics.rsqrt_fixed`` (exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mmfree.hw.rms_quantize import v_bits_for
from mmfree.hw.rsqrt import INV_BITS, ROOT_BITS, RsqrtFixed, rsqrt_out_layout
from mmfree.models import numerics as nx

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

#: The widest V the BitLinear input stage gives its RsqrtFixed (max_k = 2816, the 370M model's I).
WIDE_V_BITS = v_bits_for(2816)

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None


def stimulus(v_bits: int, seed: int) -> list[int]:
    """Every bit length, both ends of each binade, the normalised range's edges, squares and
    their neighbours (isqrt carries), random values, and zero."""
    rng = random.Random(seed)
    top = (1 << v_bits) - 1
    vals = [0, 1, 2, 3, top, top - 1]
    for b in range(1, v_bits + 1):
        lo = 1 << (b - 1)
        vals += [lo, (lo << 1) - 1, lo | rng.randrange(lo)]
    for e in (nx.RSQRT_NORM_BITS - 2, nx.RSQRT_NORM_BITS - 1, nx.RSQRT_NORM_BITS):
        vals += [(1 << e) - 1, 1 << e, (1 << e) + 1]
    for r in ((1 << 30), (1 << 31) - 1, rng.randrange(1 << 30, 1 << 31), 3, 12345):
        vals += [r * r - 1, r * r, r * r + 1, r * r + 2 * r]
    vals += [rng.getrandbits(v_bits) >> rng.randrange(v_bits) for _ in range(60)]
    return [v & top for v in vals]


def reference(v: int) -> tuple[int, int]:
    """``numerics.rsqrt_fixed``, with v = 0 giving (0, 0) as the golden model's zero case."""
    return (0, 0) if v == 0 else nx.rsqrt_fixed(v)


async def _run(dut, idle, backpressure):
    from mmfree.sim.bench import run_stream_unit
    from mmfree.sim.runner import bench_params

    p = bench_params()
    values = stimulus(p["v_bits"], p["seed"])
    layout = rsqrt_out_layout(RsqrtFixed(v_bits=p["v_bits"]).z_bits)
    out = await run_stream_unit(dut, values, idle=idle, backpressure=backpressure, seed=p["seed"],
                                cycles_per_item=4 * RsqrtFixed(v_bits=p["v_bits"]).latency)
    got = [(int(layout.from_bits(w).inv), int(layout.from_bits(w).z)) for w in out]
    bad = [(v, g, reference(v)) for v, g in zip(values, got) if g != reference(v)]
    assert not bad, f"{len(bad)} mismatches (v, got, want) as (inv, z): {bad[:4]}"


if cocotb is not None:
    @cocotb.test()
    async def bench_latency(dut):
        """One value at a time: o.valid exactly `latency_of(v)` cycles after its transfer."""
        from mmfree.sim.runner import bench_params
        from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

        p = bench_params()
        unit = RsqrtFixed(v_bits=p["v_bits"])
        await start_clock_and_reset(dut)
        src = StreamDriver(dut, "i")
        sink = StreamMonitor(dut, "o")
        values = [0, 1, (1 << 61), (1 << p["v_bits"]) - 1, 3 << 40]
        for n, v in enumerate(values):
            src.send([v & ((1 << p["v_bits"]) - 1)])
            await sink.wait_for(n + 1, timeout_cycles=2 * unit.latency)
            lat = sink.transfer_cycles[-1] - src.transfer_cycles[-1]
            assert lat == unit.latency_of(v & ((1 << p["v_bits"]) - 1)), (v, lat)
        assert max(RsqrtFixed.latency_of(1 << b) for b in range(p["v_bits"])) == unit.latency

    @cocotb.test()
    async def bench_exact(dut):
        """Back-to-back values, output always ready: exact (inv, z)."""
        await _run(dut, 0.0, 0.0)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random input gaps and output backpressure: exact results, protocol kept."""
        await _run(dut, 0.3, 0.5)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(v_bits=0), ValueError, "v_bits must be in 1..1024, not 0"),
    (dict(v_bits=2000), ValueError, "v_bits must be in 1..1024, not 2000"),
    (dict(v_bits=64.0), TypeError, "v_bits must be an integer, not 64.0"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        RsqrtFixed(**kwargs)
    assert str(info.value) == msg


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        RsqrtFixed(64)


def test_widths_cover_the_range():
    """inv reaches 2**31 (root 2**30); z's width holds both ends for a wide v."""
    assert nx.rsqrt_fixed(1 << 60)[0] == 1 << (INV_BITS - 1)
    assert math.isqrt((1 << 62) - 1) < 1 << ROOT_BITS
    unit = RsqrtFixed(v_bits=WIDE_V_BITS)
    for v in (1, (1 << WIDE_V_BITS) - 1):
        z = nx.rsqrt_fixed(v)[1]
        assert -(1 << (unit.z_bits - 1)) <= z < 1 << (unit.z_bits - 1)


def test_stimulus_reaches_every_normaliser_step():
    """The bench's values make the normaliser take right and left steps of every size."""
    from mmfree.hw.rsqrt import _normalise_cycles
    cycles = {_normalise_cycles(v) for v in stimulus(WIDE_V_BITS, 3)}
    assert max(cycles) >= 5 and 0 in cycles


@pytest.mark.sim
@pytest.mark.parametrize("v_bits", [48, WIDE_V_BITS])
def test_rsqrt_verilator(v_bits):
    from mmfree.sim.runner import simulate

    result = simulate(RsqrtFixed(v_bits=v_bits), toplevel="rsqrt_fixed",
                      test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"v_bits": v_bits, "seed": 5 + v_bits})
    assert result.tests == 3 and result.failed == 0
