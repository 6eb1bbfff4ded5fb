"""The GLU's element-wise part (``golden_int.glu``), one element per beat."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .fixed_point import delay, pipeline_stages, pipelined_product, product_latency, rshift_round, saturate_sign_extension
from .sigmoid import ACT_SHAPE, SILU_LATENCY, SigmoidLookup, pipelined_silu_product

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
    latency : 20 cycles from an input transfer to ``o.valid``: ``sigma(a)``
        (:attr:`SigmoidLookup.latency <.sigmoid.SigmoidLookup.latency>`, 10),
        ``silu(a)`` (:data:`~.sigmoid.SILU_LATENCY`, 4), the 48 x 48-bit
        product (:func:`~.fixed_point.pipelined_product`, 4), the rounding
        shift (1), saturation into the output register (1). Every stage holds
        at most one DSP48 multiply or one carry chain.
    Throughput: one element per cycle; output backpressure stalls the pipeline.
    """

    latency = SigmoidLookup.latency + SILU_LATENCY + 6

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
        x = self.i.payload

        # 1 .. 10: sigma(a)
        sig_a = SigmoidLookup(m, x.a, advance, "sigmoid_a")
        a = delay(stage, "a", x.a, SigmoidLookup.latency)
        # 11 .. 14: silu(a) = a * sigma(a)
        silu = pipelined_silu_product(stage, "silu_a", a, sig_a.gate)
        # 15 .. 18: silu(a) * b (a 96-bit product)
        b = delay(stage, "b", x.b, SigmoidLookup.latency + SILU_LATENCY)
        lat = product_latency(silu, b)
        product = pipelined_product(stage, "w", silu, b)
        # 19: rshift_round(silu(a) * b, 32)
        rounded = stage("w_rounded", signed(2 * nx.ACT_BITS - nx.ACT_FRAC + 1), rshift_round(product, nx.ACT_FRAC))
        valid = delay(stage, "valid", self.i.valid, SigmoidLookup.latency + SILU_LATENCY + lat + 1,
                      reset_less=False)
        assert SigmoidLookup.latency + SILU_LATENCY + lat + 2 == self.latency
        # 20: saturated to ACT, the output register
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid), self.o.payload.eq(saturate_sign_extension(rounded))]
        return m
