"""SiLU of an ACT value: ``numerics.silu_act(x) = mul_gate(x, sigmoid_act(x))``."""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


from .fixed_point import mul_gate
from .sigmoid import ACT_SHAPE, Sigmoid

__all__ = ["SiLU"]


class SiLU(wiring.Component):
    """Stream unit: ``y = saturate(rshift_round(x * sigmoid_act(x), 16))`` bit for bit.

    A :class:`~mmfree.hw.sigmoid.Sigmoid` followed by one multiply stage
    (ACT x GATE, a 32 x 17 product < 2**48, rounded half up by 16 bits and
    saturated to ACT).

    Ports
    -----
    i : stream of ACT ``x`` (signed 32).
    o : stream of ACT ``silu(x)`` (signed 32).

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

        # silu(x) = mul_gate(x, sigma(x)): x * g, + 2**15, >> 16, clamp to ACT
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(sigmoid.o.valid),
                         self.o.payload.eq(mul_gate(sigmoid.o.payload.x, sigmoid.o.payload.gate))]
        return m
