"""The numerics module: packing, weight quantization, tables and fixed-point primitives."""
import math
from fractions import Fraction

import numpy as np
import pytest

from mmfree.models import numerics as nx

from helpers import exact_sum_abs, reference_ternary


def test_pack_unpack_roundtrip_all_byte_values():
    codes = nx.TRIT_DECODE_TABLE[: nx.PACKED_MAX + 1]          # every valid byte's five weights
    packed = nx.pack_trits(codes)
    assert packed.shape == (nx.PACKED_MAX + 1, 1)
    assert np.array_equal(packed[:, 0], np.arange(nx.PACKED_MAX + 1))
    assert np.array_equal(nx.unpack_trits(packed), codes)


def test_pack_digit_order_lowest_weight_first():
    assert nx.pack_trits(np.array([1, -1, -1, -1, -1]))[0] == 2       # (t0 + 1) * 3**0
    assert nx.pack_trits(np.array([-1, -1, -1, -1, 1]))[0] == 2 * 81  # (t4 + 1) * 3**4


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 5"):
        nx.pack_trits(np.zeros(7, np.int8))
    with pytest.raises(ValueError, match="ternary codes"):
        nx.pack_trits(np.array([0, 0, 2, 0, 0]))


# --------------------------------------------------------------------------
# Weight ternarisation, against an independent statement of the reference:
# m = max(mean|W|, 1e-5) (float32), T = clamp(round_half_to_even(W * (1/m)), -1, 1)
# with the product and the reciprocal rounded to float32 (``(w * scale).round()``).
# --------------------------------------------------------------------------
def bf16_values(x):
    return nx.bf16_to_float32(nx.float32_to_bf16(np.asarray(x, np.float32)))


def test_ternarize_ties_go_to_even():
    # mean |w| = 1: W * (1/m) is exact, +-0.5 ties round to 0 (half away from zero would give +-1),
    # +-1.5 to +-2, clamped to +-1
    w = np.array([0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.5, 1.5], np.float32)
    for scale in (1.0, 2.0**-7, 2.0**40):                       # powers of two: the same ties, other binades
        codes, m = nx.ternarize(w * np.float32(scale))
        assert m == np.float32(scale)
        assert codes.tolist() == [0, 0, 1, -1, 1, -1, 0, 1]


def test_ternarize_rounds_the_float32_product_not_the_quotient():
    """w / m is just above 1/2, but the reference multiplies by float32(1/m): the product rounds to
    exactly 0.5, a tie, so the code is 0 (a quotient would give 1)."""
    m, w = np.float32(0.011487486772239208), np.float32(0.005743743851780891)
    assert Fraction(float(w)) / Fraction(float(m)) > Fraction(1, 2)
    other = np.float32(2 * m - w)                               # exact: mean(|w|, |other|) == m
    codes, got_m = nx.ternarize(np.array([w, other, -w, -other], np.float32))
    assert got_m == m
    assert codes.tolist() == [0, 1, 0, -1]


def _one_nonzero(value, n=1000, at=17):
    w = np.zeros(n, np.float32)
    w[at] = value
    return w


_rng = np.random.default_rng(3)
WEIGHT_TENSORS = {
    "zeros": np.zeros((4, 5), np.float32),
    "one non-zero": _one_nonzero(0.3),
    "one non-zero, mean below the floor": _one_nonzero(1e-3),
    "subnormal magnitudes": bf16_values(_rng.normal(0, 1e-39, 256)),
    "mean just above the floor": np.full(64, np.nextafter(np.float32(1e-5), np.float32(1)), np.float32),
    "huge": bf16_values(_rng.normal(0, 1e30, (16, 40))),
    "huge and tiny": bf16_values(np.where(_rng.random(640) < 0.05, 1e30, 1e-30) * _rng.choice([-1, 1], 640)),
    # exact mean 1 + 2**-24: halfway between 1 and the next float32; the tie goes to 1.0 (even)
    "mean on a float32 midpoint": np.array([1.0, 1.0 + 2.0**-23, -1.0, -(1.0 + 2.0**-23)], np.float32),
    "values at the boundary +-m/2": np.array([0.5, -0.5] * 6 + [2.5, 2.5, -2.5, 2.5], np.float32) * np.float32(2.0**-5),
    "bf16 latent weights": bf16_values(_rng.normal(0, 0.05, (64, 80))),
    "bf16, 256 x 1024": bf16_values(_rng.normal(0, 0.02, (256, 1024))),
}
# Not in the list: a tensor whose float32 sum |W| overflows (> 3.4e38). The reference's float32
# reduction then gives m = inf (outputs NaN) where ternarize's float64 mean stays finite; no
# trained checkpoint comes within 30 binades of it.


@pytest.mark.parametrize("name", list(WEIGHT_TENSORS))
def test_weight_scale_is_the_reference_mean(name):
    w = WEIGHT_TENSORS[name]
    codes, m = nx.ternarize(w)
    want_codes, want_m = reference_ternary(w)
    assert m.dtype == np.float32 and m == want_m, (m, want_m)
    assert codes.dtype == np.int8 and np.array_equal(codes, want_codes)
    # the reference's own float32 reduction (a pairwise sum, then / n) lands within an ulp of it
    mean32 = max(np.mean(np.abs(w), dtype=np.float32), np.float32(nx.WEIGHT_SCALE_FLOOR))
    assert abs(float(m) - float(mean32)) <= float(np.spacing(m)), (m, mean32)
    # weight_scale_float64 is the same mean before its rounding to float32
    assert np.float32(nx.weight_scale_float64(w)) == m
    assert abs(Fraction(nx.weight_scale_float64(w)) - max(exact_sum_abs(w) / w.size, Fraction(1e-5))) \
        <= Fraction(float(np.spacing(np.float64(nx.weight_scale_float64(w)))))


def test_weight_scale_cases_land_where_intended():
    """The adversarial tensors above hit what they are named after."""
    assert nx.ternarize(WEIGHT_TENSORS["zeros"])[1] == np.float32(1e-5)
    assert nx.ternarize(WEIGHT_TENSORS["one non-zero, mean below the floor"])[1] == np.float32(1e-5)
    codes, m = nx.ternarize(WEIGHT_TENSORS["one non-zero"])
    assert np.flatnonzero(codes).tolist() == [17] and m == np.float32(Fraction(float(np.float32(0.3))) / 1000)
    assert nx.ternarize(WEIGHT_TENSORS["mean just above the floor"])[1] > np.float32(1e-5)
    assert nx.ternarize(WEIGHT_TENSORS["mean on a float32 midpoint"])[1] == np.float32(1.0)
    codes, _ = nx.ternarize(WEIGHT_TENSORS["values at the boundary +-m/2"])
    assert codes.tolist() == [0] * 12 + [1, 1, -1, 1]
    assert not nx.ternarize(WEIGHT_TENSORS["subnormal magnitudes"])[0].any()


def test_activation_codes_round_half_away_from_zero():
    """The activation quantizer's rule (spec: ties away from zero, unlike the weights'): values that
    are exact ties after the scale 127 / max|x| (max|x| = 127 here, so the scale is exactly 1)."""
    x = np.array([127.0, 0.5, -0.5, 1.5, -2.5, 63.5, -126.5, 0.49999997], np.float32)
    scale = np.float32(nx.ACT_CODE_MAX) / np.abs(x).max()
    assert scale == 1
    assert nx.round_half_away(x * scale).tolist() == [127, 1, -1, 2, -3, 64, -127, 0]
    # a power-of-two max keeps the ties exact in another binade: max|x| = 127 * 2**-9
    y = x * np.float32(2.0**-9)
    assert nx.round_half_away(y * (np.float32(nx.ACT_CODE_MAX) / np.abs(y).max())).tolist() == \
        [127, 1, -1, 2, -3, 64, -127, 0]


def test_sigmoid_table_error_bound():
    one = float(1 << nx.ACT_FRAC)
    x = np.arange(-40 * (1 << nx.ACT_FRAC), 40 * (1 << nx.ACT_FRAC), 1234567891, dtype=np.int64)
    x = np.concatenate([x, np.arange(-(1 << 20), 1 << 20, 997)])      # around 0, finely
    exact = 1 / (1 + np.exp(-x / one))
    err = np.abs(nx.sigmoid_act(x) / nx.GATE_ONE - exact)
    assert err.max() < 3.5e-8          # measured 2.8e-8: quadratic interpolation over segments of 1/64
    assert nx.sigmoid_act(np.array([0]))[0] == nx.GATE_ONE // 2
    assert nx.sigmoid_act(np.array([nx.ACT_MAX]))[0] == nx.GATE_ONE
    assert nx.sigmoid_act(np.array([nx.ACT_MIN]))[0] == 0


def test_sigmoid_is_symmetric_and_monotonic():
    x = np.random.default_rng(0).integers(-(40 << nx.ACT_FRAC), 40 << nx.ACT_FRAC, 5000)
    assert np.array_equal(nx.sigmoid_act(x) + nx.sigmoid_act(-x), np.full(x.shape, nx.GATE_ONE))
    xs = np.sort(x)
    assert np.all(np.diff(nx.sigmoid_act(xs)) >= 0)
    # the interpolation's products stay inside int64 with room: |d1| < 2**25, |d2| < 2**17
    d1, d2 = np.diff(nx.SIGMOID_TABLE), np.diff(nx.SIGMOID_TABLE, 2)
    assert d1.max() < 2**25 and np.abs(d2).max() < 2**17


def test_mul_rshift_is_exact():
    rng = np.random.default_rng(7)
    for n in (0, 1, 23, 24, 25, 32, 47, 48, 49, 62):
        for bits in (8, 24, 33, 47):
            a = rng.integers(-(1 << bits) + 1, 1 << bits, 300)
            b = rng.integers(-(1 << 47) + 1, 1 << 47, 300) >> int(rng.integers(0, 40))
            for round_half in (True, False):
                got = nx.mul_rshift(a, b, n, round_half)
                half = (1 << (n - 1)) if round_half and n else 0
                want = [max(min((int(u) * int(v) + half) >> n, 1 << 62), -(1 << 62)) for u, v in zip(a, b)]
                assert [int(g) for g in got] == want


def test_product_bit_length_and_floor_magnitude():
    rng = np.random.default_rng(8)
    for _ in range(50):
        a = rng.integers(-(1 << 47) + 1, 1 << 47, 64) >> int(rng.integers(0, 47))
        g = rng.integers(-(1 << 23) + 1, 1 << 23, 64) >> int(rng.integers(0, 23))
        bits = nx.product_bit_length(a, g)
        assert bits == max(abs(int(u) * int(v)) for u, v in zip(a, g)).bit_length()
        sh = bits - nx.QUANT_NORM_BITS
        want = [abs(int(u) * int(v)) >> sh if sh >= 0 else abs(int(u) * int(v)) << -sh for u, v in zip(a, g)]
        assert [int(m) for m in nx.mul_floor_magnitude(a, g, sh)] == want


def test_bf16_to_act_exact_when_representable():
    vals = np.array([0.0, 1.0, -1.0, 0.5, 3.25, -1000.0, 2.0**-32, 2.0**-25 * 1.5, 0.0234375], np.float32)
    bits = nx.float32_to_bf16(vals)
    assert np.array_equal(nx.bf16_to_act(bits), (vals.astype(np.float64) * 2.0**nx.ACT_FRAC).astype(np.int64))
    # below half an LSB rounds to 0; beyond the range saturates
    assert nx.bf16_to_act(nx.float32_to_bf16(np.array([2.0**-34], np.float32)))[0] == 0
    assert nx.bf16_to_act(nx.float32_to_bf16(np.array([1e6, -1e6], np.float32))).tolist() == [nx.ACT_MAX, -nx.ACT_MAX]


def test_float32_to_bf16_rounds_to_nearest_even():
    x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], np.float32)
    back = nx.bf16_to_float32(nx.float32_to_bf16(x))
    assert back.tolist() == [1.0, 1.0 + 2**-6, 1.0 + 2**-7]


def test_gain_to_fixed_range():
    g = np.array([0.3, -1.7, 0.001, 1.0])
    mant, frac = nx.gain_to_fixed(g)
    assert 2**22 <= np.abs(mant).max() < 2**23
    assert np.allclose(mant / 2.0**frac, g, atol=2.0**-frac)
    # a product of two bf16 values (16 significant bits) within 7 binades is held exactly
    a = nx.bf16_to_float32(nx.float32_to_bf16(np.array([1.0390625, 0.02, 0.7, -1.3], np.float32)))
    b = nx.bf16_to_float32(nx.float32_to_bf16(np.array([0.96484375, 1.5, 0.011, 0.9], np.float32)))
    prod = a.astype(np.float64) * b.astype(np.float64)
    mant, frac = nx.gain_to_fixed(prod)
    assert np.array_equal(mant / 2.0**frac, prod)
    assert nx.gain_to_fixed(np.zeros(3))[0].tolist() == [0, 0, 0]


def test_rsqrt_fixed_accuracy():
    for v in [1, 2, 3, 10**6, 2**45 + 12345, 7 * 2**61]:
        inv, z = nx.rsqrt_fixed(v)
        assert inv * 2.0 ** (z - 61) == pytest.approx(1 / math.sqrt(v), rel=2e-9)
    with pytest.raises(ValueError):
        nx.rsqrt_fixed(0)


def _codes(p, peak):
    sh = nx.normalize_shift(peak, nx.QUANT_NORM_BITS)
    peak_norm = nx.shift_magnitude(peak, sh)
    return nx.quantize_codes(nx.shift_magnitude(np.abs(p), sh), p < 0, nx.quant_reciprocal(peak_norm), peak_norm)


def test_quantize_codes_round_exactly():
    """Codes are round_half_away(127 |p'| / M') exactly, ties included."""
    from fractions import Fraction

    rng = np.random.default_rng(1)
    p = rng.integers(-(1 << 30), 1 << 30, 4096)
    peak = int(np.abs(p).max())
    q = _codes(p, peak)
    ref = [int(np.sign(v)) * int(Fraction(127 * abs(int(v)), peak) + Fraction(1, 2)) for v in p]
    assert q.tolist() == ref
    assert np.abs(q).max() == 127
    # values exactly on a tie (127 |p| / M = k + 1/2) round away from zero
    peak = 254 << 20
    ties = np.array([1, 3, 63, 127, 253, -1, -253]) << 20        # 127 * p / M = p / 2**21: 0.5, 1.5, ...
    assert _codes(np.append(ties, peak), peak)[:-1].tolist() == [1, 2, 32, 64, 127, -1, -127]


def test_weight_scale_mantissa_range_and_value():
    cm, ec = nx.weight_scale_to_fixed(0.0371, 1024)
    assert 2**30 <= cm < 2**31
    assert cm * 2.0**ec == pytest.approx(0.0371 / 127 * 32, rel=2**-31)


def test_eps_to_fixed():
    mant, shift = nx.eps_to_fixed(1e-6)
    assert 2**23 <= mant < 2**24 and mant * 2.0**-shift == pytest.approx(1e-6, rel=1e-7)


def test_accumulator_bits_bound():
    assert nx.accumulator_bits(6912) == 21      # |acc| <= 127 * 6912 < 2**20
    assert nx.accumulator_bits(1) == 8        # one code: int8


def test_rescale_rounds_and_saturates():
    assert nx.rescale(np.array([3, -3]), 1, -1).tolist() == [2, -1]      # ties towards +inf
    big = nx.rescale(np.array([1 << 20]), 1 << 29, -1)
    assert big[0] == nx.ACT_MAX


def test_gate_products_round_half_up():
    half = nx.GATE_ONE // 2
    assert nx.mul_gate(np.array([3, -3, nx.ACT_MAX]), np.array([half, half, nx.GATE_ONE])).tolist() == \
        [2, -1, nx.ACT_MAX]
    assert nx.mul_act(np.array([1 << nx.ACT_FRAC, 3]), np.array([-(5 << nx.ACT_FRAC), 1 << (nx.ACT_FRAC - 1)])).tolist() == \
        [-(5 << nx.ACT_FRAC), 2]
