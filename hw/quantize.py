"""The absmax quantizer of one vector (``golden_int.quantize_vector``): max pass, one reciprocal, code pass."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .reciprocal import RECIP_BITS, QuantReciprocal
from .ternary_accumulate import CODE_BITS

__all__ = ["QuantizeVector", "quantize_in_layout", "QUANTIZE_OUT"]


def quantize_in_layout(x_bits: int) -> data.StructLayout:
    """Input beat: one element x (``x_bits`` signed), its gain mantissa G (int16), end of vector."""
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
    2. Normalise (one cycle): ``sh = bitlen(M) - 23``; ``M' = M >> sh`` (or
       ``<< -sh``), in ``[2**22, 2**23)``.
    3. Reciprocal: ``R = 127 * 2**40 // M'`` by :class:`QuantReciprocal`
       (skipped for an all-zero vector: codes 0, ``M' = 0``, ``sh = 0``).
    4. Code pass (one element per cycle): ``q = sign * ((|p'| * R + 2**39) >> 40)``
       with ``|p'| = |p| >> sh`` (or ``<< -sh``).

    Ports
    -----
    i : stream of :func:`quantize_in_layout` (``x_bits``): elements in order,
        ``last`` on the final one; at most ``k`` elements per vector.
    o : stream of :data:`QUANTIZE_OUT`: the codes in the same order, ``last``
        on the final one, ``peak_norm`` = M' and ``shift`` = sh on every beat.

    Parameters
    ----------
    k : int, the longest vector (the element memory's depth), >= 1.
    x_bits : int, ``numerics.ACT_BITS`` (ACT inputs) or ``numerics.WIDE_BITS``
        (the WIDE products that feed o_proj and down_proj).

    Attributes
    ----------
    latency : cycles from the transfer of the ``last`` input to ``o.valid``
        of the first code: ``3 + QuantReciprocal.latency + 3`` (= 32: normalise,
        hand to the divider, divide, take the quotient, then the three-stage
        code pipeline); 5 for an all-zero vector, which skips the divider.
    Throughput: one element per cycle in each pass; the unit takes one vector
    at a time, so a vector of n elements occupies it for about
    ``2 n + latency`` cycles.
    """

    def __init__(self, *, k: int, x_bits: int):
        if not isinstance(k, int) or isinstance(k, bool):
            raise TypeError(f"k must be an integer, not {k!r}")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if x_bits not in (nx.ACT_BITS, nx.WIDE_BITS):
            raise ValueError(f"x_bits must be {nx.ACT_BITS} or {nx.WIDE_BITS}, not {x_bits!r}")
        self.k = k
        self.x_bits = x_bits
        self.latency = 3 + QuantReciprocal.latency + 3
        super().__init__({
            "i": In(stream.Signature(quantize_in_layout(x_bits))),
            "o": Out(stream.Signature(QUANTIZE_OUT)),
        })

    def elaborate(self, platform):
        m = Module()
        mag_bits = self.x_bits + nx.GAIN_BITS - 1          # |x * G| <= 2**(x_bits-1) * 2**15
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

        # 2. bitlen(M) by a priority encoder
        bitlen = Signal(range(mag_bits + 1))
        for b in range(mag_bits):
            with m.If(peak[b]):
                m.d.comb += bitlen.eq(b + 1)
        excess = Signal(range(mag_bits + 1))       # bitlen - 23 when >= 0
        deficit = Signal(range(norm + 1))          # 23 - bitlen when > 0
        m.d.comb += [excess.eq(bitlen - norm), deficit.eq(norm - bitlen)]

        # 4. code pass: a three-stage pipeline that stalls as a whole on o.ready
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        read_ptr = Signal(range(self.k + 1))
        issue = Signal()
        valid1, last1 = Signal(), Signal()
        valid2, last2, neg2 = Signal(), Signal(), Signal()
        mag2 = Signal(norm + 1)
        m.d.comb += [rd.addr.eq(read_ptr), rd.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [valid1.eq(issue), last1.eq(read_ptr == count - 1)]
            with m.If(issue):
                m.d.sync += read_ptr.eq(read_ptr + 1)
            # |p'| = |p| >> sh or |p| << -sh (<= M' < 2**23)
            m.d.sync += [valid2.eq(valid1), last2.eq(last1), neg2.eq(rd.data.neg),
                         mag2.eq(Mux(shift_left != 0, rd.data.mag << shift_left, rd.data.mag >> shift_right))]
            # q = sign * ((|p'| * R + 2**39) >> 40)
            code = ((mag2 * recip_value + (1 << (nx.QUANT_RECIP_SHIFT - 1))) >> nx.QUANT_RECIP_SHIFT)
            m.d.sync += [self.o.valid.eq(valid2), self.o.payload.last.eq(last2),
                         self.o.payload.code.eq(Mux(neg2, -code, code)),
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
                # sh = bitlen(M) - 23; M' = shift_magnitude(M, sh); zero vector: all 0
                with m.If(peak == 0):
                    m.d.sync += [peak_norm.eq(0), shift.eq(0), shift_left.eq(0), shift_right.eq(0),
                                 recip_value.eq(0)]
                    m.next = "EMIT"
                with m.Elif(bitlen >= norm):
                    m.d.sync += [peak_norm.eq(peak >> excess), shift.eq(excess),
                                 shift_right.eq(excess), shift_left.eq(0)]
                    m.next = "DIVIDE"
                with m.Else():
                    m.d.sync += [peak_norm.eq(peak << deficit), shift.eq(-deficit),
                                 shift_left.eq(deficit), shift_right.eq(0)]
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
                with m.If(advance & (read_ptr == count) & ~valid1 & ~valid2 & (self.o.ready | ~self.o.valid)):
                    m.d.sync += [count.eq(0), read_ptr.eq(0), peak.eq(0)]
                    m.next = "LOAD"
        return m
