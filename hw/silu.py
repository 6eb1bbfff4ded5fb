"""SiLU of an ACT value: ``numerics.silu_act(x) = mul_gate(x, sigmoid_act(x))``."""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


from .sigmoid import ACT_SHAPE, Sigmoid, silu_product

__all__ = ["SiLU"]


class SiLU(wiring.Component):
    """Stream unit: ``y = saturate(rshift_round(x * sigmoid_act(x), 32))`` bit for bit.

    A :class:`~mmfree.hw.sigmoid.Sigmoid` followed by one multiply stage
    (:func:`~mmfree.hw.sigmoid.silu_product`: x times GATE rounded half up
    by 32 bits, a 38 x 33-bit product where sigma is interpolated, x or 0
    beyond it).

    Ports
    -----
    i : stream of ACT ``x`` (signed 48).
    o : stream of ACT ``silu(x)`` (signed 48).

    Attributes
    ----------
    latency : ``Sigmoid.latency + 1`` = 3 cycles from input transfer to ``o.valid``.
    Throughput: one element per cycle.
    """

    latency = Sigmoid.latency + 1

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(ACT_SHAPE)),
            "o": Out(stream.Signature(ACT_SHAPE)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sigmoid = sigmoid = Sigmoid()
        wiring.connect(m, wiring.flipped(self.i), sigmoid.i)

        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), sigmoid.o.ready.eq(advance)]

        # silu(x) = mul_gate(x, sigma(x)): x * g, + 2**31, >> 32
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(sigmoid.o.valid),
                         self.o.payload.eq(silu_product(sigmoid.o.payload.x, sigmoid.o.payload.gate))]
        return m
