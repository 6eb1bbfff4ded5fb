"""The absmax quantizer's arithmetic (``golden_int.quantize_vector``) as expression builders (no components here).

Used by the BitLinear input stage (:class:`~mmfree.hw.rms_quantize.RmsQuantize`), which
quantizes several consumers' vectors in one code pass.
"""
from __future__ import annotations

from amaranth.hdl import Mux, Signal, signed

from mmfree.models import numerics as nx

__all__ = ["bit_length", "normalise_peak", "shift_magnitude", "code_estimate", "code_correct",
           "CODE_ESTIMATE_BITS"]


def bit_length(m, value, *, name: str = "bitlen"):
    """A combinational Signal holding ``value.bit_length()`` (a priority encoder)."""
    width = len(value)
    result = Signal(range(width + 1), name=name)
    for b in range(width):
        with m.If(value[b]):
            m.d.comb += result.eq(b + 1)
    return result


def normalise_peak(m, peak, bits: int, *, name: str = "peak"):
    """``numerics.normalize_shift`` and ``shift_magnitude`` of a peak, combinationally.

    Returns Signals ``(peak_norm, shift, shift_right, shift_left)``:
    ``shift = bitlen(peak) - bits`` (0 for a zero peak), ``peak_norm`` = the
    peak shifted into ``[2**(bits-1), 2**bits)`` (0 for a zero peak), and the
    shift split into its right (``shift >= 0``) and left (``-shift``) parts
    for :func:`shift_magnitude`.
    """
    width = len(peak)
    bitlen = bit_length(m, peak, name=f"{name}_bitlen")
    peak_norm = Signal(bits, name=f"{name}_norm")
    shift = Signal(signed(max(width, bits).bit_length() + 1), name=f"{name}_shift")
    shift_right = Signal(range(width + 1), name=f"{name}_shift_right")
    shift_left = Signal(range(bits + 1), name=f"{name}_shift_left")
    with m.If(peak == 0):
        pass                                        # all zero
    with m.Elif(bitlen >= bits):
        m.d.comb += [shift_right.eq(bitlen - bits), shift.eq(bitlen - bits),
                     peak_norm.eq(peak >> shift_right)]
    with m.Else():
        m.d.comb += [shift_left.eq(bits - bitlen), shift.eq(bitlen - bits),
                     peak_norm.eq(peak << shift_left)]
    return peak_norm, shift, shift_right, shift_left


def shift_magnitude(mag, shift_right, shift_left):
    """``numerics.shift_magnitude``: ``mag >> sh`` (floor) or ``mag << -sh``, from the split shift."""
    return Mux(shift_left != 0, mag << shift_left, mag >> shift_right)


#: Bits of the first code estimate q0: |p'| <= M' and R <= 127 * 2**48 / M' keep it <= 127.
CODE_ESTIMATE_BITS = nx.ACT_CODE_MAX.bit_length()


def code_estimate(mag_norm, recip):
    """``numerics.quantize_codes``, first step: ``q0 = (|p'| * R + 2**47) >> 48``, the exact
    rounding of ``127 |p'| / M'`` or one less (R is floored)."""
    return (mag_norm * recip + (1 << (nx.QUANT_RECIP_SHIFT - 1))) >> nx.QUANT_RECIP_SHIFT


def code_correct(q0, mag_norm, peak_norm):
    """``numerics.quantize_codes``, second step (before the sign):
    ``q0 + [|p'| > 0 and (2 q0 + 1) M' <= 254 |p'|]``, the exact rounding with ties away from
    zero (the |p'| > 0 term keeps an all-zero vector, M' = 0, at code 0). A separate pipeline
    stage from :func:`code_estimate`: two multiplies in a row would limit the clock."""
    return q0 + ((mag_norm != 0) & (((q0 << 1) + 1) * peak_norm <= mag_norm * (2 * nx.ACT_CODE_MAX)))
