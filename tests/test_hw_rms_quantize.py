"""RmsQuantize against ``golden_int.norm_stats`` / ``quantize_vector`` / ``numerics.output_scale``
(bit exact), in Verilator.

This file is both the pytest module and the cocotb bench module (``bench_*``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitlinear_cases import (GAIN_MAX, KJV, golden_input, interleave, load_image, params_from_record, x_beats,
                             random_gain, random_params, random_vector, record_gains, record_inputs)
from mmfree.hw.rms_quantize import (CODES_LAYOUT, EPS_SHIFT_MIN, FRAC_MAX, X_FRAC_MAX, RmsQuantize,
                                    rms_params_layout)
from mmfree.models import numerics as nx
from mmfree.models.weight_image import MAX_CONSUMERS, NormSource

# Units built only to read their attributes are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

#: Real records of the bundled model (inputs from the integer model's run over these tokens).
KJV_RECORDS = ("model.layers.0.attn.in", "model.layers.1.attn.out", "model.layers.2.mlp.in",
               "model.layers.3.mlp.out", "head")
KJV_TOKENS = (1, 263, 90)


def cases(max_k: int, seed: int) -> list[tuple]:
    """(label, params, A, [G_c], x, n): real records, random records anywhere in the supported
    ranges, and the edges (zero vector, one-LSB vector, the largest |x * G|, V = 0, eps = 0)."""
    rng = np.random.default_rng(seed)
    out = []
    if max_k >= 768:
        image = load_image(KJV)
        inputs = record_inputs(KJV, KJV_TOKENS)
        for name in KJV_RECORDS:
            rec = image.record(name)
            a, g = record_gains(image, rec)
            x, n = inputs[name]
            if n is None:  # the norm field is unused: noise there must not matter
                n = random_vector(rng, len(x), nx.ACT_BITS - 1)
            out.append((name, params_from_record(rec), a, g, x, n))

    def add(label, params, a=None, g=None, x=None, n=None, x_bits=None):
        k = params["k"]
        a = random_gain(rng, k) if a is None else a
        g = [random_gain(rng, k) for _ in range(params["consumers"])] if g is None else g
        if x is None:
            x = random_vector(rng, k, x_bits or int(rng.integers(1, nx.ACT_BITS)))
        n = random_vector(rng, k, int(rng.integers(1, nx.ACT_BITS))) if n is None else n
        out.append((label, params, np.asarray(a), [np.asarray(v) for v in g], np.asarray(x), np.asarray(n)))

    for i in range(10):
        k = int(rng.integers(1, max_k + 1))
        add(f"random{i}", random_params(rng, k))
    k = max_k
    add("max_k_gate", random_params(rng, k, consumers=3, source=NormSource.GATE, x_frac=nx.ACT_FRAC),
        x_bits=nx.ACT_BITS - 1)
    add("k1", random_params(rng, 1))
    add("k5", random_params(rng, min(5, max_k)))
    add("zero_x", random_params(rng, k), x=np.zeros(k, np.int64))
    add("one_lsb", random_params(rng, k, source=NormSource.NONE, x_frac=nx.ACT_FRAC),
        x=np.where(np.arange(k) == k // 2, 1, 0))
    top = -(1 << (nx.ACT_BITS - 1))
    add("largest_product", random_params(rng, k, consumers=3, source=NormSource.INPUT, x_frac=nx.ACT_FRAC),
        a=np.full(k, -GAIN_MAX - 1), g=[np.full(k, -GAIN_MAX - 1)] * 3,
        x=np.resize(np.array([top, -top - 1, 0, 1]), k))
    # 127 |p| / M = j + 1/2 exactly for G = 3: the codes round away from zero (numerics.quantize_codes)
    ties = np.resize(np.array([254, 1, 3, 63, 127, 253, -1, -253], np.int64) << 20, k)
    add("exact_ties", random_params(rng, k, consumers=2), g=[np.full(k, 3), np.full(k, -3)], x=ties)
    # A = 0 and n = 0: s = 0 and S_n = 0, so V = 0 (all-zero outputs, inv = z = 0)
    add("v_zero", random_params(rng, k, source=NormSource.GATE), a=np.zeros(k, np.int64), n=np.zeros(k, np.int64))
    # A = 0 without a pre-norm: V = K * eps alone
    add("eps_only", random_params(rng, k, source=NormSource.NONE), a=np.zeros(k, np.int64))
    # Large sa, eps_shift 63: the eps term shifts right to zero
    p = random_params(rng, k, source=NormSource.NONE, x_frac=0)
    p.update(frac_a=0, eps_shift=63)
    add("eps_underflow", p, x_bits=47)
    # A tiny x with the largest fractions: the eps term shifts left as far as it can
    p = random_params(rng, k, source=NormSource.NONE, x_frac=X_FRAC_MAX)
    p.update(frac_a=FRAC_MAX, eps_shift=EPS_SHIFT_MIN)
    add("eps_left_max", p, x=np.where(np.arange(k) == 0, 1, 0),
        a=np.where(np.arange(k) == 0, 1, 1 << nx.GAIN_TOP_BIT))
    # The pre-norm's largest sum of squares S_n (n = x at full scale) with A = 0 (sa at its
    # lowest) and the largest fractions: the widest V of all (what v_bits is sized for)
    p = random_params(rng, k, source=NormSource.INPUT)
    p.update(frac_a=FRAC_MAX, eps_shift=EPS_SHIFT_MIN, eps_mant=(1 << nx.EPS_MANT_BITS) - 1)
    add("eps_norm_max", p, x=np.full(k, nx.ACT_MIN), a=np.zeros(k, np.int64))
    return out


def gain_beats(lanes: int, k: int, vectors, rng) -> list[list[int]]:
    """Each vector as ceil(k / lanes) beats; lanes beyond K carry random values (must be ignored)."""
    beats = []
    per = -(-k // lanes)
    for v in vectors:
        padded = rng.integers(-GAIN_MAX - 1, GAIN_MAX + 1, size=per * lanes)
        padded[:k] = v
        beats += [[int(e) for e in padded[b * lanes:(b + 1) * lanes]] for b in range(per)]
    return beats


def column_vectors(rng, case, columns: int):
    """The case's (x, n) as column 0; further columns random vectors of the same length (the third
    all zero), so a column that borrowed another's statistics or codes would show."""
    _, prm, _, _, x, n = case
    k = prm["k"]
    out = [(x, n)]
    for c in range(1, columns):
        if c == 2:
            out.append((np.zeros(k, np.int64), np.zeros(k, np.int64)))
        else:
            out.append((random_vector(rng, k, int(rng.integers(1, nx.ACT_BITS))),
                        random_vector(rng, k, int(rng.integers(1, nx.ACT_BITS)))))
    return out


def stimulus(max_k: int, lanes: int, seed: int, columns: int = 1):
    """Payload ints for params, gains, x (a list per case); and the expected codes beats and scales per
    case and column."""
    rng = np.random.default_rng(seed + 1)
    params_l = rms_params_layout(max_k)
    unit = RmsQuantize(max_k=max_k, gain_lanes=lanes, columns=columns)
    gains_l, x_l = unit.gains.payload.shape(), unit.x.payload.shape()
    params, gains, xs, want_codes, want_scales = [], [], [], [], []
    for case in cases(max_k, seed):
        label, prm, a, g, _, _ = case
        k = prm["k"]
        params.append(params_l.const(prm).as_value().value)
        gains += [gains_l.const(b).as_value().value for b in gain_beats(lanes, k, [a] + g[:prm["consumers"]], rng)]
        vectors = column_vectors(rng, case, columns)
        xs.append(x_beats(x_l, rng, interleave(rng, [len(x) for x, _ in vectors]), vectors))
        for c, (x, n) in enumerate(vectors):
            ref = golden_input(prm, a, g, x, n)
            groups = -(-k // nx.TRITS_PER_BYTE)
            padded = [np.concatenate([cv, np.zeros(groups * 5 - k, np.int64)]) for cv in ref["codes"]]
            where = f"{label} column {c}"
            for gi in range(groups):
                want_codes.append((where, gi, [[int(cv[5 * gi + j]) for j in range(5)] for cv in padded],
                                   int(gi == groups - 1)))
            want_scales.append((where, prm["consumers"], ref))
    return params, gains, xs, want_codes, want_scales


def check(codes_items, scales_items, want_codes, want_scales, scales_layout):
    assert len(codes_items) == len(want_codes), f"{len(codes_items)} codes beats, want {len(want_codes)}"
    for word, (label, gi, want, last) in zip(codes_items, want_codes):
        beat = CODES_LAYOUT.from_bits(word)
        got = [[int(beat.codes[c][j]) for j in range(5)] for c in range(MAX_CONSUMERS)]
        assert (got, int(beat.last)) == (want, last), f"{label} group {gi}: codes {got}, want {want}"
    assert len(scales_items) == len(want_scales)
    for word, (label, consumers, ref) in zip(scales_items, want_scales):
        s = scales_layout.from_bits(word)
        got = {"sumsq": int(s.sumsq), "sa": int(s.sa), "inv": int(s.inv), "z": int(s.z)}
        assert got == {key: ref[key] for key in got}, f"{label}: stats {got}, want {[ref[k] for k in got]}"
        for c in range(consumers):
            got = (int(s.scale[c]), int(s.peak_norm[c]), int(s.shift[c]))
            want = (ref["scale"][c], ref["peak_norm"][c], ref["shift"][c])
            assert got == want, f"{label} consumer {c}: (scale, M', sh) {got}, want {want}"
            if ref["exp"][c] is not None:
                assert int(s.exp[c]) == ref["exp"][c], f"{label} consumer {c}: exp {int(s.exp[c])}, want {ref['exp'][c]}"


async def _run(dut, idle, backpressure):
    from cocotb.triggers import RisingEdge

    from mmfree.sim.runner import bench_params
    from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

    p = bench_params()
    columns = p.get("columns", 1)
    unit = RmsQuantize(max_k=p["max_k"], gain_lanes=p["lanes"], elements_per_cycle=p["P"], columns=columns)
    params, gains, xs, want_codes, want_scales = stimulus(p["max_k"], p["lanes"], p["seed"], columns)
    xs = [word for case in xs for word in case]
    await start_clock_and_reset(dut)
    dut.last_column.value = columns - 1
    drivers = [StreamDriver(dut, name, idle=idle, seed=p["seed"] + i) for i, name in enumerate(("params", "gains", "x"))]
    codes = StreamMonitor(dut, "codes", backpressure=backpressure, seed=p["seed"] + 5)
    scales = StreamMonitor(dut, "scales", backpressure=backpressure, seed=p["seed"] + 6)
    for drv, words in zip(drivers, (params, gains, xs)):
        drv.send(words)
    budget = columns * (sum(3 * w[1]["k"] for w in cases(p["max_k"], p["seed"])) + 2000 * len(params))
    await scales.wait_for(columns * len(params), timeout_cycles=int(budget * (1 + 4 * (idle + backpressure))))
    for _ in range(20):
        await RisingEdge(dut.clk)
    assert not codes.protocol_errors and not scales.protocol_errors, codes.protocol_errors + scales.protocol_errors
    check(codes.items, scales.items, want_codes, want_scales, unit.scales.payload.shape())
    if not idle and not backpressure:
        hidden, shadowed = _check_column_spacing(unit, cases(p["max_k"], p["seed"]), codes.transfer_cycles)
        if columns > 1 and p["max_k"] >= 768:      # the long records hide the scalars, some with no replay
            assert hidden > 0 and shadowed > 0, (hidden, shadowed)


def _check_column_spacing(unit, records, transfer_cycles):
    """Back to back, each further column's last codes beat leaves ``column_cycles(K, consumers)``
    after the column before's when that is at least ``scalars_cycles_max`` (the column before's
    scalars are computed beside it), and never sooner. Returns how many columns met it exactly, and
    how many of those had their max pass beside the code pass before (a shadow replay)."""
    end, hidden, shadowed = 0, 0, 0
    for label, prm, *_ in records:
        k, consumers = prm["k"], prm["consumers"]
        groups = -(-k // nx.TRITS_PER_BYTE)
        lasts = [transfer_cycles[end + (c + 1) * groups - 1] for c in range(unit.columns)]
        end += unit.columns * groups
        want = unit.column_cycles(k, consumers)
        shadow = unit.shadow_replay and consumers == 1
        for c, (a, b) in enumerate(zip(lasts, lasts[1:]), start=1):
            assert b - a >= want, f"{label} column {c}: {b - a} cycles after the column before, want >= {want}"
            if want >= unit.scalars_cycles_max:
                assert b - a == want, f"{label} column {c}: {b - a} cycles after the column before, want {want}"
                hidden += 1
                shadowed += shadow
    return hidden, shadowed


if cocotb is not None:
    @cocotb.test()
    async def bench_exact(dut):
        """Every case back to back, no gaps: exact codes and scalars."""
        await _run(dut, 0.0, 0.0)

    @cocotb.test()
    async def bench_gaps_backpressure(dut):
        """Random gaps on all three inputs, backpressure on both outputs: exact, protocol kept."""
        await _run(dut, 0.3, 0.5)

    @cocotb.test()
    async def bench_latency(dut):
        """x first, then the gains: column 0's first and last codes beats leave exactly
        ``first_codes_cycles`` and ``codes_cycles(K)`` cycles after the last gains beat (the max
        pass rides on the gain load); the next record's x is taken from the end of the last
        column's code pass, before that column's scales are out."""
        from mmfree.sim.runner import bench_params
        from mmfree.sim.stream import StreamDriver, StreamMonitor, start_clock_and_reset

        p = bench_params()
        N = p.get("columns", 1)
        unit = RmsQuantize(max_k=p["max_k"], gain_lanes=p["lanes"], elements_per_cycle=p["P"], columns=N)
        params, gains, xs, want_codes, want_scales = stimulus(p["max_k"], p["lanes"], p["seed"], N)
        cs = cases(p["max_k"], p["seed"])
        k0 = cs[0][1]["k"]
        n_gain0 = (1 + cs[0][1]["consumers"]) * -(-k0 // p["lanes"])
        await start_clock_and_reset(dut)
        dut.last_column.value = N - 1
        pd, gd, xd = (StreamDriver(dut, name) for name in ("params", "gains", "x"))
        codes = StreamMonitor(dut, "codes")
        scales = StreamMonitor(dut, "scales")
        pd.send(params[:2])
        xd.send(xs[0] + xs[1])
        x0 = len(xs[0])                     # the first record's x beats (of one or two elements)
        while len(xd.transfer_cycles) < x0:
            await cocotb.triggers.RisingEdge(dut.clk)
        gd.send(gains[:n_gain0])
        groups0 = -(-k0 // 5)
        await codes.wait_for(groups0, timeout_cycles=n_gain0 + unit.codes_cycles(k0) + 100)
        last_gain = gd.transfer_cycles[n_gain0 - 1]
        if k0 >= 5:
            assert codes.transfer_cycles[0] - last_gain == unit.first_codes_cycles
        assert codes.transfer_cycles[groups0 - 1] - last_gain == unit.codes_cycles(k0)
        await scales.wait_for(N, timeout_cycles=N * (n_gain0 + unit.codes_cycles(k0) + 2000))
        # The second record's x started going in while the last column was still computing its scales,
        # and not before that column's code pass (column N - 2's codes all out).
        assert len(xd.transfer_cycles) > x0 and xd.transfer_cycles[x0] < scales.transfer_cycles[N - 1]
        assert N == 1 or xd.transfer_cycles[x0] > codes.transfer_cycles[(N - 1) * groups0 - 1]
        check(codes.items[:N * groups0], scales.items, want_codes[:N * groups0], want_scales[:N],
              unit.scales.payload.shape())


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(max_k=0, gain_lanes=8), ValueError, "max_k must be in 1..65535, not 0"),
    (dict(max_k=70000, gain_lanes=8), ValueError, "max_k must be in 1..65535, not 70000"),
    (dict(max_k=64.0, gain_lanes=8), TypeError, "max_k must be an integer, not 64.0"),
    (dict(max_k=64, gain_lanes=3), ValueError, "gain_lanes must be a power of two in 2..32, not 3"),
    (dict(max_k=64, gain_lanes=64), ValueError, "gain_lanes must be a power of two in 2..32, not 64"),
    (dict(max_k=64, gain_lanes=8, elements_per_cycle=3), ValueError,
     "elements_per_cycle must be 1, 2 or 4 and at most gain_lanes (8), not 3"),
    (dict(max_k=64, gain_lanes=2, elements_per_cycle=4), ValueError,
     "elements_per_cycle must be 1, 2 or 4 and at most gain_lanes (2), not 4"),
    (dict(max_k=64, gain_lanes=2, columns=0), ValueError, "columns must be in 1..16, not 0"),
    (dict(max_k=64, gain_lanes=2, columns=17), ValueError, "columns must be in 1..16, not 17"),
])
def test_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        RmsQuantize(**kwargs)
    assert str(info.value) == msg


def test_widths_cover_the_stimulus():
    """Every case's eps exponent, V and scale exponent fit the unit's widths; the stimulus reaches
    both ends of the eps shifter, V = 0, and both shift directions of the quantizer."""
    unit = RmsQuantize(max_k=768, gain_lanes=4)
    exps, shifts, vs, codes = [], [], [], {}
    for label, prm, a, g, x, n in cases(768, 3):
        ref = golden_input(prm, a, g, x, n)
        vs.append(ref["sumsq"])
        shifts += ref["shift"]
        exps += [e for e in ref["exp"] if e is not None]
        codes[label] = ref["codes"]
    assert max(vs).bit_length() <= unit.v_bits and 0 in vs
    assert unit.exp_range[0] <= min(exps) and max(exps) <= unit.exp_range[1]
    assert min(shifts) < 0 < max(shifts)
    # eps_norm_max: v_bits is at most a few bits wider than needed (the bound takes sn and
    # max t' = 2**24 at their largest together, which no vector reaches)
    assert unit.v_bits - 4 <= max(vs).bit_length() < unit.v_bits
    assert sorted(vs)[-2].bit_length() > 190           # eps_left_max: a long left shift of K * eps
    # exact ties round away from zero (a floored reciprocal alone would give 0, 1, 31, 63, 126)
    assert codes["exact_ties"][0][:8].tolist() == [127, 1, 2, 32, 64, 127, -1, -127]
    assert codes["exact_ties"][1][:8].tolist() == [-127, -1, -2, -32, -64, -127, 1, 127]


def test_codes_cycles_formula():
    """ceil(K / P) issues plus the fixed overhead; one more when the final issue completes two groups."""
    assert RmsQuantize(max_k=256, gain_lanes=8).codes_cycles(256) == 256 + RmsQuantize.CODES_OVERHEAD
    four = RmsQuantize(max_k=256, gain_lanes=8, elements_per_cycle=4)
    # K = 256: 252 codes leave 2 waiting, the last 4 make 6: one group, then a flush
    assert four.codes_cycles(256) == 64 + RmsQuantize.CODES_OVERHEAD + 1
    # K = 19: 16 codes leave 1 waiting, the last 3 make a padded final group
    assert four.codes_cycles(19) == 5 + RmsQuantize.CODES_OVERHEAD
    assert four.codes_cycles(24) == 6 + RmsQuantize.CODES_OVERHEAD


@pytest.mark.sim
# P = 1, 4, 2 with gain_lanes 4 (E = 16, PYNQ-Z2), 16 (E = 64, KV260), 2 (E = 8); every build also
# runs the edge cases.
# Columns: two on the E = 16 and E = 64 builds (shadow replays; the long records show the
# scalars hidden), three (one all zero) on the E = 8 build.
@pytest.mark.parametrize("max_k, lanes, P, columns", [(768, 4, 1, 2), (96, 16, 4, 2), (37, 2, 2, 1), (37, 2, 2, 3)])
def test_rms_quantize_verilator(max_k, lanes, P, columns):
    from mmfree.sim.runner import simulate

    result = simulate(RmsQuantize(max_k=max_k, gain_lanes=lanes, elements_per_cycle=P, columns=columns),
                      toplevel="rms_quantize", test_module=Path(__file__).stem, module_dir=Path(__file__).parent,
                      params={"max_k": max_k, "lanes": lanes, "P": P, "columns": columns,
                              "seed": 7 + max_k + P + 10 * columns})
    assert result.tests == 3 and result.failed == 0
