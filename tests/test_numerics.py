"""The numerics module: packing, weight quantization, tables and fixed-point primitives."""
import math

import numpy as np
import pytest

from mmfree.models import numerics as nx


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


def test_ternarize_matches_reference_formula():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, (64, 80)).astype(np.float32)
    codes, m = nx.ternarize(w)
    m_ref = np.float32(np.abs(w.astype(np.float64)).mean())
    assert m == m_ref
    assert np.array_equal(codes, np.clip(np.round(w * (np.float32(1) / m_ref)), -1, 1))
    # ties go to even: exactly +-0.5 * m rounds to 0, 1.5 * m to 2 -> clamped 1
    w2 = np.array([0.5, -0.5, 1.5, 1.0], np.float32)
    c2, m2 = nx.ternarize(w2)
    assert m2 == np.float32(0.875)
    assert list(nx.ternarize(np.array([2.0, -2.0, 1.0, -1.0], np.float32) * 0.25)[0]) == [1, -1, 1, -1]


def test_ternarize_floor_on_zero_tensor():
    codes, m = nx.ternarize(np.zeros((4, 5), np.float32))
    assert m == np.float32(1e-5) and not codes.any()


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
