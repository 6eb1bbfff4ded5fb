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
  exponents) use exact Python integers; element-wise work uses numpy int64.
  Products wider than 63 bits (ACT x ACT, ACT x GATE, ACT x gain) go
  through :func:`mul_rshift`, which computes them exactly from 24-bit
  halves; every other intermediate stays within the bound stated next to it.

Only numpy is imported: the board-side host can use this module as is.
"""
from __future__ import annotations

import math

import numpy as np

#: Bumped whenever any definition below changes the integer results; the
#: weight image records it and the reader refuses a mismatch. Version 2
#: (fidelity, issue 3): ACT Q15.32 in 48 bits (no separate WIDE format),
#: GATE Q0.32, quadratic sigmoid over |x| < 32, 24-bit gain mantissas,
#: 24-bit sum-of-squares magnitudes, 31-bit quantizer normalisation with
#: exact rounding at ties (docs/numerics.md gives the error budget).
NUMERICS_VERSION = 2

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
    """Round to nearest, ties away from zero (the GPU kernel's ``round``), in x's float type.

    Decided on the exact fraction ``|x| - floor(|x|)``: ``floor(|x| + 0.5)``
    would round the largest float below 0.5 up to 1 (the sum rounds to 1.0).
    """
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + (a - whole >= 0.5))


def accumulator_bits(k: int) -> int:
    """Signed width holding any sum of ``k`` products q*t (|q| <= 127, t in {-1,0,1})."""
    return (ACT_CODE_MAX * k).bit_length() + 1


# --------------------------------------------------------------------------
# Exact wide products
# --------------------------------------------------------------------------
#: Operands of :func:`mul_rshift` are below 2**47 in magnitude (48-bit signed).
MUL_OPERAND_BITS = 48
_HALF = 24
_HALF_MASK = (1 << _HALF) - 1
#: Results of :func:`mul_rshift` are clamped to +-2**62 (far beyond every format's saturation).
_MUL_CLAMP = 1 << 62


def mul_rshift(a, b, n: int, round_half: bool = True):
    """Exact ``floor((a * b + 2**(n-1)) / 2**n)`` (``round_half=False``: ``floor(a * b / 2**n)``).

    ``a`` and ``b`` are int64 arrays (or ints) with ``|a|, |b| < 2**47``;
    ``0 <= n <= 62``. The product may need 94 bits: it is assembled from
    24-bit halves (``a = ah * 2**24 + al``, ``al`` in [0, 2**24)), every
    partial sum below 2**62. Results beyond +-2**62 are clamped there (every
    caller saturates to a narrower format). With ``round_half`` this is
    :func:`rshift_round` of the exact product: in hardware one multiplier,
    an adder and a wire shift.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ah, al = a >> _HALF, a & _HALF_MASK
    bh, bl = b >> _HALF, b & _HALF_MASK
    low = al * bl + ((1 << (n - 1)) if round_half and n > 0 else 0)      # < 2**48 + 2**61
    mid = ah * bl + al * bh + (low >> _HALF)                              # |.| < 2**49
    low = low & _HALF_MASK
    high = ah * bh + (mid >> _HALF)                                       # |.| < 2**47
    mid = mid & _HALF_MASK
    # a*b (+ round) = high * 2**48 + mid * 2**24 + low, with 0 <= mid, low < 2**24
    if n >= 2 * _HALF:
        return np.clip(high >> (n - 2 * _HALF), -_MUL_CLAMP, _MUL_CLAMP)
    rest = ((mid << _HALF) | low) >> n
    lim = 1 << (_MUL_CLAMP.bit_length() - 1 - 2 * _HALF + n)   # |high| <= lim: high * 2**(48-n) <= 2**62
    value = (np.clip(high, -lim, lim) << (2 * _HALF - n)) + rest
    return np.clip(np.where(np.abs(high) > lim, np.sign(high) * _MUL_CLAMP, value), -_MUL_CLAMP, _MUL_CLAMP)


def mul_floor_magnitude(a, b, n: int):
    """``floor(|a * b| / 2**n)`` exactly for any integer n (n < 0: an exact left shift).

    Same operand bounds as :func:`mul_rshift`; for n < 0 the caller
    guarantees ``|a * b| < 2**(62 + n)`` (true whenever n comes from
    :func:`normalize_shift` of the peak).
    """
    a = np.abs(np.asarray(a, np.int64))
    b = np.abs(np.asarray(b, np.int64))
    if n >= 0:
        return mul_rshift(a, b, n, round_half=False)
    return (a * b) << (-n)


def product_bit_length(a, b) -> int:
    """``max(|a * b|).bit_length()`` over arrays a, b (same bounds as :func:`mul_rshift`)."""
    top = mul_floor_magnitude(a, b, _HALF)                 # floor(|a*b| / 2**24) < 2**46
    peak_top = int(np.max(top)) if top.size else 0
    if peak_top:
        return peak_top.bit_length() + _HALF
    small = np.abs(np.asarray(a, np.int64)) * np.abs(np.asarray(b, np.int64))    # < 2**24 here
    return int(np.max(small)).bit_length() if small.size else 0


# --------------------------------------------------------------------------
# The datapath value format ("ACT"): residual stream, BitLinear inputs and
# outputs, recurrent state, element-wise intermediates, logits.
# --------------------------------------------------------------------------
#: Q15.32: the range of version 1 (+-32768), 2**-32 resolution. 32 fractional
#: bits keep the rounding of the recurrent state and of the element-wise
#: products well below what flips an int8 code (docs/numerics.md).
ACT_BITS = 48
ACT_FRAC = 32
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


# Version 1 had a separate 48-bit WIDE format (exact products with 32
# fractional bits) for the inputs of o_proj and down_proj; version 2's ACT is
# that format, so every BitLinear input is ACT.


def mul_act(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ACT x times ACT y, in ACT: ``saturate(rshift_round(x * y, 32))`` (exact product)."""
    return saturate(mul_rshift(x, y, ACT_FRAC))


# Embeddings stay bf16 in the image (exactly the checkpoint's values); the
# embedding row fetch widens them to ACT.
BF16_EXP_BIAS = 127
BF16_MANT_BITS = 7


def bf16_to_act(bits: np.ndarray) -> np.ndarray:
    """Convert raw bf16 bit patterns (uint16) to ACT.

    ``value = (1.mant) * 2**(exp - 127)``; ACT = value * 2**32, i.e.
    ``(128 + mant) << (exp - 102)`` when that shift is >= 0, else a
    :func:`rshift_round` by ``102 - exp``; then saturate. Exact for
    |value| >= 2**-25. Zero and subnormal inputs (exp = 0) give 0; inf/NaN
    (exp = 255) saturate.
    """
    b = np.asarray(bits, dtype=np.uint16).astype(np.int64)
    sign = (b >> 15) & 1
    exp = (b >> BF16_MANT_BITS) & 0xFF
    mant = (b & 0x7F) | (1 << BF16_MANT_BITS)
    shift = exp - (BF16_EXP_BIAS + BF16_MANT_BITS - ACT_FRAC)  # exp - 102
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
#: Q0.32: 1.0 = 2**32 (33 bits with 1.0 itself).
GATE_FRAC = 32
GATE_ONE = 1 << GATE_FRAC


def float_to_gate(x: np.ndarray) -> np.ndarray:
    """Float in [0, 1) to GATE, rounded to nearest and clamped to [0, 2**32 - 1].

    Used for the per-layer lower bounds (< 1 by construction), so uint32 holds
    them.
    """
    v = np.floor(np.asarray(x, dtype=np.float64) * GATE_ONE + 0.5)
    return np.clip(v, 0, GATE_ONE - 1).astype(np.int64)


# Sigmoid by table and quadratic interpolation over |x| in [0, 32), symmetric:
# sigma(-x) = 1 - sigma(x); sigma(x >= 32) = 1 (1 - sigma(32) = 1.3e-14 < 1/2 LSB).
SIGMOID_RANGE_LOG2 = 5                       # |x| < 32
SIGMOID_SEGMENTS_LOG2 = 11                   # 2048 segments of 1/64
SIGMOID_SEGMENT_SHIFT = ACT_FRAC + SIGMOID_RANGE_LOG2 - SIGMOID_SEGMENTS_LOG2  # 26 bits of fraction
SIGMOID_SEGMENTS = 1 << SIGMOID_SEGMENTS_LOG2
#: SIGMOID_TABLE[j] = round(sigma(j / 64) * 2**32), j = 0..2049 (2050 entries:
#: segment j interpolates through T[j], T[j+1], T[j+2]).
SIGMOID_TABLE = np.array(
    [math.floor(GATE_ONE / (1.0 + math.exp(-j / (1 << (SIGMOID_SEGMENTS_LOG2 - SIGMOID_RANGE_LOG2)))) + 0.5)
     for j in range(SIGMOID_SEGMENTS + 2)],
    dtype=np.int64,
)


def sigmoid_act(x: np.ndarray) -> np.ndarray:
    """sigma(x) for ACT x, as GATE (0 .. 2**32).

    ``a = |x|``, ``j = a >> 26``, ``r = a & (2**26 - 1)``; with
    ``d1 = T[j+1] - T[j]`` and ``d2 = T[j+2] - 2 T[j+1] + T[j]`` (Newton's
    quadratic through three table points, u = r / 2**26:
    ``T[j] + u d1 + u (u - 1) / 2 d2``)::

        t = rshift_round(d2 * (r - 2**26), 26)
        s = T[j] + rshift_round(r * (2 d1 + t), 27)

    for j < 2048, else 2**32; result ``s`` for x >= 0, ``2**32 - s`` for
    x < 0. |d1| < 2**25, |d2| < 2**17, so every product is below 2**52. Max
    error 3.2e-8 (0.14 of an LSB of version 1's table; measured against
    float64 in tests/test_numerics.py).
    """
    x = np.asarray(x, dtype=np.int64)
    a = np.abs(x)
    j = a >> SIGMOID_SEGMENT_SHIFT
    inside = j < SIGMOID_SEGMENTS
    jc = np.minimum(j, SIGMOID_SEGMENTS - 1)
    r = a & ((1 << SIGMOID_SEGMENT_SHIFT) - 1)
    t0, t1, t2 = SIGMOID_TABLE[jc], SIGMOID_TABLE[jc + 1], SIGMOID_TABLE[jc + 2]
    d1, d2 = t1 - t0, t2 - 2 * t1 + t0
    t = rshift_round(d2 * (r - (1 << SIGMOID_SEGMENT_SHIFT)), SIGMOID_SEGMENT_SHIFT)
    s = t0 + rshift_round(r * (2 * d1 + t), SIGMOID_SEGMENT_SHIFT + 1)
    s = np.where(inside, s, GATE_ONE)
    return np.where(x < 0, GATE_ONE - s, s)


def mul_gate(x: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """ACT x times GATE g: ``saturate(rshift_round(x * g, 32))`` (exact product)."""
    return saturate(mul_rshift(x, gate, GATE_FRAC))


def silu_act(x: np.ndarray) -> np.ndarray:
    """silu(x) = x * sigma(x) for ACT x, in ACT (one table read, one multiply)."""
    return mul_gate(x, sigmoid_act(x))


# --------------------------------------------------------------------------
# Norm gains: 24-bit mantissa with one exponent per vector (int32 words in the image)
# --------------------------------------------------------------------------
GAIN_BITS = 24
#: The largest |mantissa| of a gain vector lies in [2**22, 2**23).
GAIN_TOP_BIT = GAIN_BITS - 2
#: The unit gain (a BitLinear without a preceding RMSNorm): mantissa 2**22, frac 22.
UNIT_GAIN_MANT = 1 << GAIN_TOP_BIT
UNIT_GAIN_FRAC = GAIN_TOP_BIT


def gain_to_fixed(gain: np.ndarray) -> tuple[np.ndarray, int]:
    """Float gain vector to (24-bit mantissas as int32, frac) with value = mant * 2**-frac.

    ``frac = 22 - floor(log2(max|g|))`` so the largest |mantissa| is in
    [2**22, 2**23); mantissas round to nearest (half up) and saturate to 24
    bits. A product of two bf16 gains (16 significant bits) is exact when
    the vector spans at most 7 binades. An all-zero vector gives mantissas 0
    and frac 0.
    """
    g = np.asarray(gain, dtype=np.float64)
    peak = float(np.max(np.abs(g))) if g.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        if not math.isfinite(peak):
            raise ValueError("gain vector holds inf or NaN")
        return np.zeros(g.shape, dtype=np.int32), 0
    frac = GAIN_TOP_BIT - math.floor(math.log2(peak))
    mant = np.floor(g * 2.0**frac + 0.5)
    mant = np.clip(mant, -(1 << (GAIN_BITS - 1)), (1 << (GAIN_BITS - 1)) - 1)
    return mant.astype(np.int32), frac


# --------------------------------------------------------------------------
# Fused RMSNorm + absmax quantizer (one reciprocal per vector)
# --------------------------------------------------------------------------
#: |x * G| is normalised so its maximum M' lies in [2**30, 2**31).
QUANT_NORM_BITS = 31
#: Reciprocal R = floor(127 * 2**48 / M'), 25 bits.
QUANT_RECIP_SHIFT = 48


def normalize_shift(peak: int, bits: int) -> int:
    """Right-shift amount (negative: left shift) that brings ``peak`` into [2**(bits-1), 2**bits)."""
    return peak.bit_length() - bits


def shift_magnitude(mag, sh: int):
    """``mag >> sh`` (floor) for sh >= 0, ``mag << -sh`` otherwise."""
    return mag >> sh if sh >= 0 else mag << (-sh)


def quant_reciprocal(peak_norm: int) -> int:
    """The quantizer's one reciprocal per vector: ``floor(127 * 2**48 / M')``."""
    return (ACT_CODE_MAX << QUANT_RECIP_SHIFT) // peak_norm


def quantize_codes(mag_norm: np.ndarray, negative: np.ndarray, recip: int, peak_norm: int) -> np.ndarray:
    """int8 codes ``sign * round_half_up(127 |p'| / M')`` from normalised magnitudes, exactly.

    ``q0 = (|p'| * R + 2**47) >> 48`` is the exact rounding or one less (R
    is floored); one compare decides:
    ``q = q0 + [|p'| > 0 and (2 q0 + 1) M' <= 254 |p'|]`` (the |p'| > 0 term
    only matters for M' = 0, an all-zero vector, whose codes stay 0).
    So a value exactly on a tie rounds away from zero, as the reference's
    activation quantizer does (version 1 rounded such ties towards zero).
    ``|p'| <= M'`` bounds the code by 127; |p'| * R < 2**56.
    """
    m = np.asarray(mag_norm, np.int64)
    q = rshift_round(m * recip, QUANT_RECIP_SHIFT)
    q = q + ((m > 0) & ((2 * q + 1) * peak_norm <= 2 * ACT_CODE_MAX * m))
    return np.where(negative, -q, q).astype(np.int8)


# --------------------------------------------------------------------------
# Sum of squares and the reciprocal square root (one per vector)
# --------------------------------------------------------------------------
#: |x * A| is rounded to 24-bit magnitudes t' before squaring: sum < 2**(48+log2 K) <= 2**61.
SUMSQ_BITS = 24
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
    """24-bit magnitudes for the sum of squares: ``rshift_round(|t|, sa)``."""
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
#: The per-matrix constant's mantissa has 31 bits: [2**30, 2**31) (an int32 header word).
SCALE_BITS = 31
#: F = M' * inv (in [2**60, 2**62]) is cut to F' = F >> 32 (29..30 bits) before it meets C.
RATIO_DROP_BITS = 32


def weight_scale_to_fixed(m: float, k: int) -> tuple[int, int]:
    """Per-matrix constant ``C = (m / 127) * sqrt(k)`` as (mantissa, exponent).

    ``C ~= Cm * 2**ec`` with Cm in [2**30, 2**31), rounded to nearest. The
    sqrt(k) turns the vector's sum of squares into its mean square, so the
    hardware never divides by k. ``k`` is the BitLinear's true input length;
    ``m`` the weight scale in float64 (:func:`weight_scale_float64`: a float32
    m would cost 3e-8 of relative error, which flips int8 codes downstream).
    """
    c = float(m) / ACT_CODE_MAX * math.sqrt(k)
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

        y_act = acc * Cm * M' * inv * 2**(ec + sh + frac_a - frac_g - sa + z - 61 + 32)

    computed as ``F' = (M' * inv) >> 32``, ``scale = (Cm * F') >> 31``:
    ``y_act = acc * scale * 2**exp``. Returns (scale, exp); scale < 2**30.
    """
    f = (peak_norm * inv) >> RATIO_DROP_BITS
    scale = (cm * f) >> SCALE_BITS
    exp = (ec + sh + frac_a - frac_g - sa + z - RSQRT_RECIP_SHIFT + ACT_FRAC
           + RATIO_DROP_BITS + SCALE_BITS)
    return scale, exp


def rescale(acc: np.ndarray, scale: int, exp: int) -> np.ndarray:
    """ACT outputs from accumulators: ``saturate(rshift_round(acc * scale, -exp))``.

    |acc| < 2**21 and scale < 2**30 keep the product under 2**51. A
    non-negative exp (never seen for sane scales) is a saturating left shift.
    """
    prod = np.asarray(acc, np.int64) * scale
    if exp >= 0:
        limit = (ACT_MAX >> exp) + 1
        return saturate(np.clip(prod, -limit, limit) << exp) if exp < ACT_BITS else saturate(np.sign(prod) << 62)
    return saturate(rshift_round(prod, -exp))
