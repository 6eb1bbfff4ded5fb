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
    x = np.arange(-20 * 65536, 20 * 65536, 37, dtype=np.int64)
    exact = 1 / (1 + np.exp(-x / 65536.0))
    err = np.abs(nx.sigmoid_act(x) / 65536.0 - exact)
    assert err.max() < 2.5e-5          # measured 2.3e-5 (1.5 LSB): interpolation + table rounding
    assert nx.sigmoid_act(np.array([0]))[0] == 32768
    assert nx.sigmoid_act(np.array([nx.ACT_MAX]))[0] == nx.GATE_ONE
    assert nx.sigmoid_act(np.array([nx.ACT_MIN]))[0] == 0


def test_sigmoid_is_symmetric():
    x = np.random.default_rng(0).integers(-(1 << 21), 1 << 21, 5000)
    assert np.array_equal(nx.sigmoid_act(x) + nx.sigmoid_act(-x), np.full(x.shape, nx.GATE_ONE))


def test_bf16_to_act_exact_when_representable():
    vals = np.array([0.0, 1.0, -1.0, 0.5, 3.25, -1000.0, 2.0**-16, 0.0234375], np.float32)
    bits = nx.float32_to_bf16(vals)
    assert np.array_equal(nx.bf16_to_act(bits), (vals * 65536).astype(np.int64))
    # below half an LSB rounds to 0; beyond the range saturates
    assert nx.bf16_to_act(nx.float32_to_bf16(np.array([2.0**-18], np.float32)))[0] == 0
    assert nx.bf16_to_act(nx.float32_to_bf16(np.array([1e6, -1e6], np.float32))).tolist() == [nx.ACT_MAX, -nx.ACT_MAX]


def test_float32_to_bf16_rounds_to_nearest_even():
    x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], np.float32)
    back = nx.bf16_to_float32(nx.float32_to_bf16(x))
    assert back.tolist() == [1.0, 1.0 + 2**-6, 1.0 + 2**-7]


def test_gain_to_fixed_range():
    g = np.array([0.3, -1.7, 0.001, 1.0])
    mant, frac = nx.gain_to_fixed(g)
    assert 2**14 <= np.abs(mant).max() < 2**15
    assert np.allclose(mant / 2.0**frac, g, atol=2.0**-frac)
    assert nx.gain_to_fixed(np.zeros(3))[0].tolist() == [0, 0, 0]


def test_rsqrt_fixed_accuracy():
    for v in [1, 2, 3, 10**6, 2**45 + 12345, 7 * 2**61]:
        inv, z = nx.rsqrt_fixed(v)
        assert inv * 2.0 ** (z - 61) == pytest.approx(1 / math.sqrt(v), rel=2e-9)
    with pytest.raises(ValueError):
        nx.rsqrt_fixed(0)


def test_quantize_codes_match_float_quantizer():
    rng = np.random.default_rng(1)
    p = rng.integers(-(1 << 40), 1 << 40, 4096)
    peak = int(np.abs(p).max())
    sh = nx.normalize_shift(peak, nx.QUANT_NORM_BITS)
    q = nx.quantize_codes(nx.shift_magnitude(np.abs(p), sh), p < 0, nx.quant_reciprocal(nx.shift_magnitude(peak, sh)))
    ref = nx.round_half_away(127 * p / peak)
    assert np.abs(q.astype(int) - ref).max() <= 1
    assert np.mean(q == ref) > 0.999
    assert np.abs(q).max() == 127


def test_weight_scale_mantissa_range_and_value():
    cm, ec = nx.weight_scale_to_fixed(0.0371, 1024)
    assert 2**23 <= cm < 2**24
    assert cm * 2.0**ec == pytest.approx(float(np.float32(0.0371)) / 127 * 32, rel=1e-7)


def test_eps_to_fixed():
    mant, shift = nx.eps_to_fixed(1e-6)
    assert 2**23 <= mant < 2**24 and mant * 2.0**-shift == pytest.approx(1e-6, rel=1e-7)


def test_accumulator_bits_bound():
    assert nx.accumulator_bits(6912) == 21      # |acc| <= 127 * 6912 < 2**20
    assert nx.accumulator_bits(1) == 8        # one code: int8


def test_rescale_rounds_and_saturates():
    assert nx.rescale(np.array([3, -3]), 1, -1).tolist() == [2, -1]      # ties towards +inf
    big = nx.rescale(np.array([1 << 20]), 1 << 24, -8)
    assert big[0] == nx.ACT_MAX
