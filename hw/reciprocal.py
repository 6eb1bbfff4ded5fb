"""The quantizer's one reciprocal per vector: ``numerics.quant_reciprocal`` by a sequential divider."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["QuantReciprocal", "RECIP_NUMERATOR", "RECIP_BITS"]

#: The dividend 127 * 2**48.
RECIP_NUMERATOR = nx.ACT_CODE_MAX << nx.QUANT_RECIP_SHIFT
#: Quotient bits: the quotient for the smallest normalised peak 2**30 is the largest.
RECIP_BITS = (RECIP_NUMERATOR // (1 << (nx.QUANT_NORM_BITS - 1))).bit_length()


class QuantReciprocal(wiring.Component):
    """Stream unit: ``R = floor(127 * 2**48 / M')`` for a normalised peak ``M' in [2**30, 2**31)``.

    A restoring divider producing one quotient bit per cycle. The remainder
    starts at ``127 * 2**48 >> RECIP_BITS`` (smaller than any valid ``M'``, so
    the quotient fits ``RECIP_BITS`` bits); each step shifts in the next
    dividend bit and subtracts ``M'`` when it fits. ``M'`` outside
    ``[2**30, 2**31)`` (e.g. 0 for an all-zero vector, which the golden model
    handles before dividing) gives an unspecified result.

    Ports
    -----
    i : stream of ``M'`` (unsigned ``QUANT_NORM_BITS``).
    o : stream of ``R`` (unsigned ``RECIP_BITS``).

    Attributes
    ----------
    latency : ``RECIP_BITS + 1`` (26) cycles from an input transfer to
        ``o.valid`` (the load, then one cycle per quotient bit).
    Throughput: one division per ``RECIP_BITS + 1`` cycles when the output is
    taken at once (the next input is accepted in the cycle the result leaves).
    """

    latency = RECIP_BITS + 1

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(unsigned(nx.QUANT_NORM_BITS))),
            "o": Out(stream.Signature(unsigned(RECIP_BITS))),
        })

    def elaborate(self, platform):
        m = Module()
        divisor = Signal(nx.QUANT_NORM_BITS)
        remainder = Signal(nx.QUANT_NORM_BITS + 1)
        quotient = Signal(RECIP_BITS)
        step = Signal(range(RECIP_BITS))   # dividend bit shifted in next
        busy = Signal()

        m.d.comb += self.i.ready.eq(~busy & (~self.o.valid | self.o.ready))
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                divisor.eq(self.i.payload),
                remainder.eq(RECIP_NUMERATOR >> RECIP_BITS),
                step.eq(RECIP_BITS - 1),
                busy.eq(1),
            ]
        with m.Elif(busy):
            # rem' = 2*rem + next dividend bit; quotient bit = (rem' >= M'); rem' -= M' if so
            bits = Signal(RECIP_BITS)
            m.d.comb += bits.eq(RECIP_NUMERATOR & ((1 << RECIP_BITS) - 1))
            shifted = Signal(nx.QUANT_NORM_BITS + 2)
            m.d.comb += shifted.eq((remainder << 1) | bits.bit_select(step, 1))
            fits = shifted >= divisor
            m.d.sync += [
                remainder.eq(Mux(fits, shifted - divisor, shifted)),
                quotient.eq((quotient << 1) | fits),
                step.eq(step - 1),
            ]
            with m.If(step == 0):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        m.d.comb += self.o.payload.eq(quotient)
        return m
