"""The GLU's element-wise part (``golden_int.glu``), one element per beat."""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fixed_point import mul_act, pipeline_stages
from .sigmoid import ACT_SHAPE, SigmoidLookup, silu_product

__all__ = ["GLU", "GLU_IN"]

#: Input beat: element n of the gate half ``a = ab[:I]`` and of the up half ``b = ab[I:]``.
GLU_IN = data.StructLayout({"a": ACT_SHAPE, "b": ACT_SHAPE})


class GLU(wiring.Component):
    """Stream unit: ``w = mul_act(silu_act(a), b)``, bit exact with ``golden_int.glu``.

    Ports
    -----
    i : stream of :data:`GLU_IN` (``a`` and ``b`` in ACT).
    o : stream of ``w`` in ACT (the product rounded half up to 32 fractional bits, saturated).

    Attributes
    ----------
    latency : 3 cycles from an input transfer to ``o.valid`` (table read,
        ``silu(a)``, product into the output register).
    Throughput: one element per cycle; output backpressure stalls the pipeline.
    """

    latency = 3

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(GLU_IN)),
            "o": Out(stream.Signature(ACT_SHAPE)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        stage = pipeline_stages(m, advance)

        # 1: table read for sigma(a)
        sig_a = SigmoidLookup(m, self.i.payload.a, advance, "sigmoid_a")
        a1 = stage("a1", ACT_SHAPE, self.i.payload.a)
        b1 = stage("b1", ACT_SHAPE, self.i.payload.b)
        valid1 = stage("valid1", 1, self.i.valid)
        # 2: silu(a) = a * sigma(a)
        silu2 = stage("silu2", ACT_SHAPE, silu_product(a1, sig_a.gate))
        b2 = stage("b2", ACT_SHAPE, b1)
        valid2 = stage("valid2", 1, valid1)
        # 3: w = silu(a) * b (a 96-bit product), rounded to ACT
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid2), self.o.payload.eq(mul_act(silu2, b2))]
        return m
