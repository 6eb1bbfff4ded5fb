"""The accelerator's arithmetic: every number format, rounding rule, saturation
rule and table, defined once.

The integer golden model (:mod:`mmfree.models.golden_int`), the RTL
generators (:mod:`mmfree.hw`) and the host driver import these definitions;
none of them re-derives a constant. ``docs/numerics.md`` explains the range
reasoning behind each choice.

Conventions
-----------
* A fixed-point value ``v`` with ``frac`` fractional bits stands for the real
  number ``v * 2**-frac``.
* ``rshift_round(v, n)`` is the one rounding right shift used by every
  fixed-point product: add half an LSB, then floor (ties go towards +inf).
  In hardware it is an adder and a wire shift.
* Saturation clamps to the format's range; it never wraps.
* Scalars computed once per vector (reciprocal, square root, scale
  exponents) use exact Python integers; element-wise work uses numpy int64
  and stays within the bounds stated next to each function.

Only numpy is imported: the board-side host can use this module as is.
"""
from __future__ import annotations

import math

import numpy as np

#: Bumped whenever any definition below changes the integer results; the
#: weight image records it and the reader refuses a mismatch.
NUMERICS_VERSION = 1

# --------------------------------------------------------------------------
# Ternary weights and their packing
# --------------------------------------------------------------------------
#: Five ternary weights per byte: 3**5 = 243 <= 256 (1.6 bit per weight).
TRITS_PER_BYTE = 5
#: Largest packed byte value (all five weights +1).
PACKED_MAX = 3**TRITS_PER_BYTE - 1

#: Weight-scale floor of the reference implementation (``clamp(min=1e-5)``).
WEIGHT_SCALE_FLOOR = 1e-5


def weight_scale_float64(latent: np.ndarray) -> float:
    """``max(mean(|W|), 1e-5)`` over the whole tensor, in float64.

    The float64 forward's weight scale (its ternary codes are the same as
    float32's unless some |W|/m lies within an ulp of 1/2); the float32 scale
    of :func:`ternarize` is this value rounded to float32.
    """
    return float(max(np.abs(np.asarray(latent, dtype=np.float32), dtype=np.float64).mean(), WEIGHT_SCALE_FLOOR))


def ternarize(latent: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Run-time weight quantization of the reference implementation.

    ``m = max(mean(|W|) over the whole tensor, 1e-5)``;
    ``T = clamp(round_half_to_even(W * (1/m)), -1, 1)``, all in float32 as
    the reference computes it (``(w * scale).round()`` with
    ``scale = 1 / w.abs().mean()``).

    Parameters
    ----------
    latent : float array (any shape), the checkpoint's latent weights (bf16
        values widened to float32).

    Returns
    -------
    (codes, m) : int8 array of the same shape with values in {-1, 0, +1}, and
        the float32 per-tensor scale m.
    """
    w = np.asarray(latent, dtype=np.float32)
    # Mean in float64, rounded once to float32: the correctly rounded value of
    # the mean the reference computes in float32 (they agree to an ulp).
    m = np.float32(weight_scale_float64(w))
    inv = np.float32(1.0) / m
    codes = np.clip(np.round(w * inv), -1, 1).astype(np.int8)
    return codes, m


#: Row i holds the five weights (digit order: least significant first) of
#: the packed byte value i; rows 243..255 are invalid bytes and decode to 0.
TRIT_DECODE_TABLE = np.zeros((256, TRITS_PER_BYTE), dtype=np.int8)
for _value in range(PACKED_MAX + 1):
    _rest = _value
    for _digit in range(TRITS_PER_BYTE):
        TRIT_DECODE_TABLE[_value, _digit] = _rest % 3 - 1
        _rest //= 3
del _value, _rest, _digit

_TRIT_PLACE = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.int32)


def pack_trits(codes: np.ndarray) -> np.ndarray:
    """Pack ternary codes five to a byte along the last axis.

    ``byte = sum_j (t_j + 1) * 3**j`` for the five consecutive codes
    ``t_0..t_4`` (t_0 is the lowest-index weight). The last axis must be a
    multiple of 5. Raises ``ValueError`` on a code outside {-1, 0, +1}.
    """
    c = np.asarray(codes)
    if c.shape[-1] % TRITS_PER_BYTE:
        raise ValueError(f"last axis {c.shape[-1]} is not a multiple of {TRITS_PER_BYTE}")
    if c.size and (c.min() < -1 or c.max() > 1):
        raise ValueError("ternary codes must be in {-1, 0, +1}")
    digits = (c.astype(np.int32) + 1).reshape(*c.shape[:-1], -1, TRITS_PER_BYTE)
    return (digits @ _TRIT_PLACE).astype(np.uint8)


def unpack_trits(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_trits`: int8 codes, five per byte, last axis x5."""
    p = np.asarray(packed, dtype=np.uint8)
    return TRIT_DECODE_TABLE[p].reshape(*p.shape[:-1], p.shape[-1] * TRITS_PER_BYTE)


# --------------------------------------------------------------------------
# Activation codes (int8) and the accumulator
# --------------------------------------------------------------------------
#: Activation codes are symmetric int8: q in [-127, 127].
ACT_CODE_MAX = 127
#: Float quantizer floor of the reference (``clamp(min=1e-5)`` on max|x|).
ACT_ABSMAX_FLOOR = 1e-5


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (the GPU kernel's ``round``)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def accumulator_bits(k: int) -> int:
    """Signed width holding any sum of ``k`` products q*t (|q| <= 127, t in {-1,0,1})."""
    return (ACT_CODE_MAX * k).bit_length() + 1


# --------------------------------------------------------------------------
# The datapath value format ("ACT"): residual stream, BitLinear outputs,
# recurrent state, element-wise intermediates, logits.
# --------------------------------------------------------------------------
ACT_BITS = 32
ACT_FRAC = 16
ACT_MIN = -(1 << (ACT_BITS - 1))
ACT_MAX = (1 << (ACT_BITS - 1)) - 1


def saturate(v, bits: int = ACT_BITS):
    """Clamp a signed integer (array or scalar) to ``bits`` two's complement."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if isinstance(v, np.ndarray):
        return np.clip(v, lo, hi)
    return min(max(v, lo), hi)


def rshift_round(v, n: int):
    """``round(v / 2**n)`` with ties towards +inf: ``(v + 2**(n-1)) >> n``.

    ``n <= 0`` is an exact left shift by ``-n``. Works on Python ints and on
    numpy int64 arrays (arithmetic shift = floor).
    """
    if n <= 0:
        return v << (-n)
    return (v + (1 << (n - 1))) >> n


def float_to_act(x: np.ndarray) -> np.ndarray:
    """Float to ACT: round to nearest (half up), saturate. Used for tests and inputs."""
    v = np.floor(np.asarray(x, dtype=np.float64) * (1 << ACT_FRAC) + 0.5)
    return np.clip(v, ACT_MIN, ACT_MAX).astype(np.int64)


def act_to_float(v: np.ndarray) -> np.ndarray:
    """ACT to float64."""
    return np.asarray(v, dtype=np.float64) / (1 << ACT_FRAC)


# Embeddings stay bf16 in the image (exactly the checkpoint's values); the
# embedding row fetch widens them to ACT.
BF16_EXP_BIAS = 127
BF16_MANT_BITS = 7


def bf16_to_act(bits: np.ndarray) -> np.ndarray:
    """Convert raw bf16 bit patterns (uint16) to ACT.

    ``value = (1.mant) * 2**(exp - 127)``; ACT = value * 2**16, i.e.
    ``(128 + mant) << (exp - 118)`` when that shift is >= 0, else a
    :func:`rshift_round` by ``118 - exp``; then saturate. Zero and subnormal
    inputs (exp = 0) give 0; inf/NaN (exp = 255) saturate.
    """
    b = np.asarray(bits, dtype=np.uint16).astype(np.int64)
    sign = (b >> 15) & 1
    exp = (b >> BF16_MANT_BITS) & 0xFF
    mant = (b & 0x7F) | (1 << BF16_MANT_BITS)
    shift = exp - (BF16_EXP_BIAS + BF16_MANT_BITS - ACT_FRAC)  # exp - 118
    mag = np.zeros_like(b)
    right = np.clip(-shift, 1, 62)
    mag = np.where(shift < 0, (mant + (np.int64(1) << (right - 1))) >> right, mag)
    # Left shifts beyond the ACT range saturate; clip the shift first so the
    # int64 never overflows.
    left = np.clip(shift, 0, ACT_BITS)
    mag = np.where(shift >= 0, np.minimum(mant << left, ACT_MAX), mag)
    mag = np.where(exp == 0, 0, mag)
    mag = np.where(exp == 0xFF, ACT_MAX, mag)
    return np.where(sign == 1, -mag, mag)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bf16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 bit patterns (round to nearest even), as torch does."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


# --------------------------------------------------------------------------
# Gates: sigmoid outputs and lower bounds, unsigned values in [0, 1]
# --------------------------------------------------------------------------
GATE_FRAC = 16
GATE_ONE = 1 << GATE_FRAC


def float_to_gate(x: np.ndarray) -> np.ndarray:
    """Float in [0, 1) to GATE, rounded to nearest and clamped to [0, 2**16 - 1].

    Used for the per-layer lower bounds (< 1 by construction), so uint16 holds
    them.
    """
    v = np.floor(np.asarray(x, dtype=np.float64) * GATE_ONE + 0.5)
    return np.clip(v, 0, GATE_ONE - 1).astype(np.int64)


# Sigmoid by table and linear interpolation over |x| in [0, 16), symmetric:
# sigma(-x) = 1 - sigma(x); sigma(x >= 16) = 1 (1 - sigma(16) = 1.1e-7 < 1/2 LSB).
SIGMOID_RANGE_LOG2 = 4                       # |x| < 16
SIGMOID_SEGMENTS_LOG2 = 9                    # 512 segments of 1/32
SIGMOID_SEGMENT_SHIFT = ACT_FRAC + SIGMOID_RANGE_LOG2 - SIGMOID_SEGMENTS_LOG2  # 11 bits of fraction
SIGMOID_SEGMENTS = 1 << SIGMOID_SEGMENTS_LOG2
#: SIGMOID_TABLE[j] = round(sigma(j / 32) * 2**16), j = 0..512 (513 entries).
SIGMOID_TABLE = np.array(
    [math.floor(GATE_ONE / (1.0 + math.exp(-j / (1 << (SIGMOID_SEGMENTS_LOG2 - SIGMOID_RANGE_LOG2)))) + 0.5)
     for j in range(SIGMOID_SEGMENTS + 1)],
    dtype=np.int64,
)


def sigmoid_act(x: np.ndarray) -> np.ndarray:
    """sigma(x) for ACT x, as GATE (0 .. 2**16).

    ``a = |x|``, ``j = a >> 11``, ``r = a & 0x7ff``;
    ``s = T[j] + rshift_round((T[j+1] - T[j]) * r, 11)`` for j < 512 else 2**16;
    result ``s`` for x >= 0, ``2**16 - s`` for x < 0. Max error 2.3e-5 = 1.5 LSB
    (measured against float64 in tests/test_numerics.py).
    """
    x = np.asarray(x, dtype=np.int64)
    a = np.abs(x)
    j = a >> SIGMOID_SEGMENT_SHIFT
    inside = j < SIGMOID_SEGMENTS
    jc = np.minimum(j, SIGMOID_SEGMENTS - 1)
    r = a & ((1 << SIGMOID_SEGMENT_SHIFT) - 1)
    lo = SIGMOID_TABLE[jc]
    s = lo + rshift_round((SIGMOID_TABLE[jc + 1] - lo) * r, SIGMOID_SEGMENT_SHIFT)
    s = np.where(inside, s, GATE_ONE)
    return np.where(x < 0, GATE_ONE - s, s)


def mul_gate(x: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """ACT x times GATE g: ``saturate(rshift_round(x * g, 16))``. |x*g| < 2**48."""
    return saturate(rshift_round(np.asarray(x, np.int64) * np.asarray(gate, np.int64), GATE_FRAC))


# The products that feed a BitLinear directly (the MLGRU's g * silu(h), the
# GLU's silu(a) * b) are kept exact: 48 bits with 32 fractional bits. Small
# values keep their precision up to the quantizer, which normalises by the
# vector's maximum anyway.
WIDE_BITS = 48
WIDE_FRAC = 2 * ACT_FRAC


def mul_wide(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ACT x times ACT y as an exact WIDE product (saturated to 48 bits). |x*y| < 2**62."""
    return saturate(np.asarray(x, np.int64) * np.asarray(y, np.int64), WIDE_BITS)


def silu_act(x: np.ndarray) -> np.ndarray:
    """silu(x) = x * sigma(x) for ACT x, in ACT (one table read, one multiply)."""
    return mul_gate(x, sigmoid_act(x))


# --------------------------------------------------------------------------
# Norm gains: int16 mantissa with one exponent per vector
# --------------------------------------------------------------------------
GAIN_BITS = 16
#: The largest |mantissa| of a gain vector lies in [2**14, 2**15).
GAIN_TOP_BIT = GAIN_BITS - 2
#: The unit gain (a BitLinear without a preceding RMSNorm): mantissa 2**14, frac 14.
UNIT_GAIN_MANT = 1 << GAIN_TOP_BIT
UNIT_GAIN_FRAC = GAIN_TOP_BIT


def gain_to_fixed(gain: np.ndarray) -> tuple[np.ndarray, int]:
    """Float gain vector to (int16 mantissas, frac) with value = mant * 2**-frac.

    ``frac = 14 - floor(log2(max|g|))`` so the largest |mantissa| is in
    [2**14, 2**15); mantissas round to nearest (half up) and saturate to int16.
    An all-zero vector gives mantissas 0 and frac 0.
    """
    g = np.asarray(gain, dtype=np.float64)
    peak = float(np.max(np.abs(g))) if g.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        if not math.isfinite(peak):
            raise ValueError("gain vector holds inf or NaN")
        return np.zeros(g.shape, dtype=np.int16), 0
    frac = GAIN_TOP_BIT - math.floor(math.log2(peak))
    mant = np.floor(g * 2.0**frac + 0.5)
    mant = np.clip(mant, -(1 << (GAIN_BITS - 1)), (1 << (GAIN_BITS - 1)) - 1)
    return mant.astype(np.int16), frac


# --------------------------------------------------------------------------
# Fused RMSNorm + absmax quantizer (one reciprocal per vector)
# --------------------------------------------------------------------------
#: |x * G| is normalised so its maximum M' lies in [2**22, 2**23).
QUANT_NORM_BITS = 23
#: Reciprocal R = floor(127 * 2**40 / M'), 25-26 bits.
QUANT_RECIP_SHIFT = 40


def normalize_shift(peak: int, bits: int) -> int:
    """Right-shift amount (negative: left shift) that brings ``peak`` into [2**(bits-1), 2**bits)."""
    return peak.bit_length() - bits


def shift_magnitude(mag, sh: int):
    """``mag >> sh`` (floor) for sh >= 0, ``mag << -sh`` otherwise."""
    return mag >> sh if sh >= 0 else mag << (-sh)


def quant_reciprocal(peak_norm: int) -> int:
    """The quantizer's one reciprocal per vector: ``floor(127 * 2**40 / M')``."""
    return (ACT_CODE_MAX << QUANT_RECIP_SHIFT) // peak_norm


def quantize_codes(mag_norm: np.ndarray, negative: np.ndarray, recip: int) -> np.ndarray:
    """int8 codes from normalised magnitudes: ``sign * ((|p'| * R + 2**39) >> 40)``.

    Rounding is half away from zero, as the reference's activation quantizer.
    ``|p'| <= M'`` bounds the code by 127.
    """
    q = rshift_round(np.asarray(mag_norm, np.int64) * recip, QUANT_RECIP_SHIFT)
    return np.where(negative, -q, q).astype(np.int8)


# --------------------------------------------------------------------------
# Sum of squares and the reciprocal square root (one per vector)
# --------------------------------------------------------------------------
#: |x * A| is rounded to 16-bit magnitudes t' before squaring: sum < 2**(32+log2 K).
SUMSQ_BITS = 16
#: The RMSNorm epsilon is a 24-bit mantissa and a shift: eps ~= EPS_MANT * 2**-EPS_SHIFT.
EPS_MANT_BITS = 24


def eps_to_fixed(eps: float) -> tuple[int, int]:
    """(mantissa in [2**23, 2**24), shift) with eps ~= mantissa * 2**-shift (1e-6: 8796093, 43)."""
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"rms_norm_eps must be positive, got {eps}")
    shift = (EPS_MANT_BITS - 1) - math.floor(math.log2(eps))
    mant = math.floor(eps * 2.0**shift + 0.5)
    if mant >= 1 << EPS_MANT_BITS:
        mant >>= 1
        shift -= 1
    return mant, shift


def sumsq_magnitudes(mag: np.ndarray, sa: int) -> np.ndarray:
    """16-bit magnitudes for the sum of squares: ``rshift_round(|t|, sa)``."""
    return rshift_round(np.asarray(mag, np.int64), sa)


def eps_term(base: int, exponent: int, eps_mant: int) -> int:
    """``floor(base * eps_mant * 2**exponent)``: the epsilon in sum-of-squares units.

    For a BitLinear without pre-norm, ``base = K`` and
    ``exponent = 2*(x_frac + frac_a - sa) - eps_shift`` (K*eps in units of t'**2).
    With a pre-norm over a vector n (its sum of squares S_n taken on
    magnitudes shifted by ``sn``), the pre-norm's own eps cancels and what
    remains is eps * mean(n**2): ``base = S_n``,
    ``exponent = 2*(sn - n_frac + x_frac + frac_a - sa) - eps_shift``.
    """
    v = base * eps_mant
    return v << exponent if exponent >= 0 else v >> (-exponent)


#: V is normalised by an even shift into [2**60, 2**62) before the square root.
RSQRT_NORM_BITS = 62
#: inv = floor(2**61 / isqrt(V')), in (2**30, 2**31].
RSQRT_RECIP_SHIFT = 61


def rsqrt_fixed(v: int) -> tuple[int, int]:
    """One reciprocal square root: ``1/sqrt(v) ~= inv * 2**(z - 61)``.

    ``z = (62 - bitlen(v)) // 2``; ``V' = v * 4**z`` in [2**60, 2**62) (a floor
    right shift when z < 0); ``inv = floor(2**61 / isqrt(V'))``. Hardware: a
    digit-by-digit square root (31 steps) and a divider (31 steps).
    Returns (inv, z). ``v`` must be > 0.
    """
    if v <= 0:
        raise ValueError("rsqrt of a non-positive value")
    z = (RSQRT_NORM_BITS - v.bit_length()) // 2
    vn = v << (2 * z) if z >= 0 else v >> (-2 * z)
    return (1 << RSQRT_RECIP_SHIFT) // math.isqrt(vn), z


# --------------------------------------------------------------------------
# Per-matrix weight scale and the output rescale
# --------------------------------------------------------------------------
#: Mantissas of scale factors have 24 bits: [2**23, 2**24).
SCALE_BITS = 24
#: F = M' * inv (<= 2**54) is cut to F' = F >> 30 (22..24 bits) before it meets C.
RATIO_DROP_BITS = 30


def weight_scale_to_fixed(m: float, k: int) -> tuple[int, int]:
    """Per-matrix constant ``C = (m / 127) * sqrt(k)`` as (mantissa, exponent).

    ``C ~= Cm * 2**ec`` with Cm in [2**23, 2**24), rounded to nearest. The
    sqrt(k) turns the vector's sum of squares into its mean square, so the
    hardware never divides by k. ``k`` is the BitLinear's true input length.
    """
    c = float(np.float32(m)) / ACT_CODE_MAX * math.sqrt(k)
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"weight scale must be positive and finite, got m={m}")
    ec = math.floor(math.log2(c)) - (SCALE_BITS - 1)
    cm = math.floor(c / 2.0**ec + 0.5)
    if cm >= 1 << SCALE_BITS:  # rounding carried into the next binade
        cm >>= 1
        ec += 1
    return cm, ec


def output_scale(peak_norm: int, inv: int, z: int, cm: int, ec: int,
                 sh: int, sa: int, frac_g: int, frac_a: int) -> tuple[int, int]:
    """The per-vector, per-matrix output scale of a BitLinear.

    The real output is ``y = acc * (m/127) * max|x^| `` with
    ``max|x^| = max|x*g| / rms(x*a)``; in integer terms (x in ACT, gains with
    ``frac_g`` / ``frac_a`` fractional bits, M ~= M' * 2**sh, the sum of squares
    taken on magnitudes shifted by ``sa``)::

        y_act = acc * Cm * M' * inv * 2**(ec + sh + frac_a - frac_g - sa + z - 61 + 16)

    computed as ``F' = (M' * inv) >> 30``, ``scale = (Cm * F') >> 24``:
    ``y_act = acc * scale * 2**exp``. Returns (scale, exp); scale < 2**25.
    """
    f = (peak_norm * inv) >> RATIO_DROP_BITS
    scale = (cm * f) >> SCALE_BITS
    exp = (ec + sh + frac_a - frac_g - sa + z - RSQRT_RECIP_SHIFT + ACT_FRAC
           + RATIO_DROP_BITS + SCALE_BITS)
    return scale, exp


def rescale(acc: np.ndarray, scale: int, exp: int) -> np.ndarray:
    """ACT outputs from accumulators: ``saturate(rshift_round(acc * scale, -exp))``.

    |acc| < 2**21 and scale < 2**25 keep the product under 2**46. A
    non-negative exp (never seen for sane scales) is a saturating left shift.
    """
    prod = np.asarray(acc, np.int64) * scale
    if exp >= 0:
        limit = (ACT_MAX >> exp) + 1
        return saturate(np.clip(prod, -limit, limit) << exp) if exp < 32 else saturate(np.sign(prod) * (1 << 62))
    return saturate(rshift_round(prod, -exp))
