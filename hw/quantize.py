"""The absmax quantizer of one vector (``golden_int.quantize_vector``): max pass, one reciprocal, code pass."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .reciprocal import RECIP_BITS, QuantReciprocal
from .ternary_accumulate import CODE_BITS

__all__ = ["QuantizeVector", "quantize_in_layout", "QUANTIZE_OUT", "bit_length", "normalise_peak",
           "shift_magnitude", "code_estimate", "code_correct", "CODE_ESTIMATE_BITS"]


# --------------------------------------------------------------------------
# The quantizer's arithmetic as expression builders, shared with the
# BitLinear input unit (hw/rms_quantize.py), which quantizes several
# consumers' vectors in one pass.
# --------------------------------------------------------------------------
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


def quantize_in_layout(x_bits: int) -> data.StructLayout:
    """Input beat: one element x (``x_bits`` signed), its gain mantissa G (24-bit signed), end of vector."""
    return data.StructLayout({"x": signed(x_bits), "gain": signed(nx.GAIN_BITS), "last": 1})


#: Output beat: one int8 code, end of vector, and the vector's scalars M' and sh (repeated on every beat).
QUANTIZE_OUT = data.StructLayout({
    "code": signed(CODE_BITS),
    "last": 1,
    "peak_norm": unsigned(nx.QUANT_NORM_BITS),
    "shift": signed(8),
})


class QuantizeVector(wiring.Component):
    """Stream unit: int8 codes of ``p = x * G``, bit exact with ``golden_int.quantize_vector``.

    1. Max pass (one element per cycle): ``p = x * G``; ``|p|`` and the sign
       are stored; ``M = max |p|``.
    2. Normalise (one cycle): ``sh = bitlen(M) - 31``; ``M' = M >> sh`` (or
       ``<< -sh``), in ``[2**30, 2**31)``.
    3. Reciprocal: ``R = 127 * 2**48 // M'`` by :class:`QuantReciprocal`
       (skipped for an all-zero vector: codes 0, ``M' = 0``, ``sh = 0``).
    4. Code pass (one element per cycle): ``q0 = (|p'| * R + 2**47) >> 48``
       with ``|p'| = |p| >> sh`` (or ``<< -sh``) (:func:`code_estimate`), then
       the exact rounding ``q = q0 + [(2 q0 + 1) M' <= 254 |p'|]``
       (:func:`code_correct`, ties away from zero) and the sign.

    Ports
    -----
    i : stream of :func:`quantize_in_layout` (``x_bits``): elements in order,
        ``last`` on the final one; at most ``k`` elements per vector.
    o : stream of :data:`QUANTIZE_OUT`: the codes in the same order, ``last``
        on the final one, ``peak_norm`` = M' and ``shift`` = sh on every beat.

    Parameters
    ----------
    k : int, the longest vector (the element memory's depth), >= 1.
    x_bits : int, ``numerics.ACT_BITS`` (every BitLinear input is ACT since
        numerics version 2); anything else raises ``ValueError``.

    Attributes
    ----------
    latency : cycles from the transfer of the ``last`` input to ``o.valid``
        of the first code: ``3 + QuantReciprocal.latency + 4`` (= 33: normalise,
        hand to the divider, divide, take the quotient, then the four-stage
        code pipeline: read, shift, estimate, correct);
        ``ZERO_VECTOR_LATENCY`` (6) for an all-zero vector, which skips the divider.
    Throughput: one element per cycle in each pass; the unit takes one vector
    at a time, so a vector of n elements occupies it for about
    ``2 n + latency`` cycles.
    """

    #: Latency of an all-zero vector: normalise, then the four-stage code pipeline.
    ZERO_VECTOR_LATENCY = 2 + 4

    def __init__(self, *, k: int, x_bits: int):
        if not isinstance(k, int) or isinstance(k, bool):
            raise TypeError(f"k must be an integer, not {k!r}")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if x_bits != nx.ACT_BITS:
            raise ValueError(f"x_bits must be {nx.ACT_BITS}, not {x_bits!r}")
        self.k = k
        self.x_bits = x_bits
        self.latency = 3 + QuantReciprocal.latency + 4
        super().__init__({
            "i": In(stream.Signature(quantize_in_layout(x_bits))),
            "o": Out(stream.Signature(QUANTIZE_OUT)),
        })

    def elaborate(self, platform):
        m = Module()
        mag_bits = self.x_bits + nx.GAIN_BITS - 1          # |x * G| <= 2**(x_bits-1) * 2**23
        norm = nx.QUANT_NORM_BITS
        m.submodules.elements = mem = Memory(shape=data.StructLayout({"mag": unsigned(mag_bits), "neg": 1}),
                                             depth=self.k, init=[])
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")
        m.submodules.reciprocal = recip = QuantReciprocal()

        count = Signal(range(self.k + 1))        # elements stored
        peak = Signal(mag_bits)
        peak_norm = Signal(norm)
        shift = Signal(signed(8))
        shift_right = Signal(range(mag_bits + 1))  # sh when sh >= 0
        shift_left = Signal(range(norm + 1))       # -sh when sh < 0
        recip_value = Signal(RECIP_BITS)

        # 1. p = x * G, |p|, running max
        product = Signal(signed(self.x_bits + nx.GAIN_BITS))
        m.d.comb += product.eq(self.i.payload.x * self.i.payload.gain)
        mag = Signal(mag_bits)
        m.d.comb += [mag.eq(Mux(product < 0, -product, product)),
                     wr.addr.eq(count), wr.data.mag.eq(mag), wr.data.neg.eq(product < 0)]

        # 2. sh = bitlen(M) - 31 and M' (zero for a zero vector)
        new_norm, new_shift, new_right, new_left = normalise_peak(m, peak, norm)

        # 4. code pass: a four-stage pipeline that stalls as a whole on o.ready
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        read_ptr = Signal(range(self.k + 1))
        issue = Signal()
        valid1, last1 = Signal(), Signal()
        valid2, last2, neg2 = Signal(), Signal(), Signal()
        mag2 = Signal(norm)
        valid3, last3, neg3 = Signal(), Signal(), Signal()
        mag3 = Signal(norm)
        q0 = Signal(CODE_ESTIMATE_BITS)
        m.d.comb += [rd.addr.eq(read_ptr), rd.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [valid1.eq(issue), last1.eq(read_ptr == count - 1)]
            with m.If(issue):
                m.d.sync += read_ptr.eq(read_ptr + 1)
            # |p'| = |p| >> sh or |p| << -sh (<= M' < 2**31)
            m.d.sync += [valid2.eq(valid1), last2.eq(last1), neg2.eq(rd.data.neg),
                         mag2.eq(shift_magnitude(rd.data.mag, shift_right, shift_left))]
            # q0 = (|p'| * R + 2**47) >> 48
            m.d.sync += [valid3.eq(valid2), last3.eq(last2), neg3.eq(neg2), mag3.eq(mag2),
                         q0.eq(code_estimate(mag2, recip_value))]
            # q = sign * (q0 + [(2 q0 + 1) M' <= 254 |p'|]) = sign * round(127 |p'| / M'), exactly
            code = code_correct(q0, mag3, peak_norm)
            m.d.sync += [self.o.valid.eq(valid3), self.o.payload.last.eq(last3),
                         self.o.payload.code.eq(Mux(neg3, -code, code)),
                         self.o.payload.peak_norm.eq(peak_norm), self.o.payload.shift.eq(shift)]

        m.d.comb += recip.i.payload.eq(peak_norm)
        m.d.comb += recip.o.ready.eq(1)

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += count.eq(count + 1)
                    with m.If(mag > peak):
                        m.d.sync += peak.eq(mag)
                    with m.If(self.i.payload.last):
                        m.next = "NORMALISE"
            with m.State("NORMALISE"):
                # sh = bitlen(M) - 31; M' = shift_magnitude(M, sh); zero vector: all 0
                m.d.sync += [peak_norm.eq(new_norm), shift.eq(new_shift), shift_right.eq(new_right),
                             shift_left.eq(new_left)]
                with m.If(peak == 0):
                    m.d.sync += recip_value.eq(0)
                    m.next = "EMIT"
                with m.Else():
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += recip.i.valid.eq(1)
                with m.If(recip.i.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(recip.o.valid):
                    m.d.sync += recip_value.eq(recip.o.payload)
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += issue.eq(read_ptr < count)
                drained = ~valid1 & ~valid2 & ~valid3 & (self.o.ready | ~self.o.valid)
                with m.If(advance & (read_ptr == count) & drained):
                    m.d.sync += [count.eq(0), read_ptr.eq(0), peak.eq(0)]
                    m.next = "LOAD"
        return m
