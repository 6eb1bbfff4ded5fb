"""The MLGRU's element-wise part (``golden_int.mlgru_step``), one element per beat."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .fixed_point import mul_act, mul_gate, rshift_round, saturate, pipeline_stages
from .sigmoid import ACT_SHAPE, GATE_SHAPE, SigmoidLookup, silu_product

__all__ = ["MLGRU", "MLGRU_IN", "MLGRU_OUT"]

#: Input beat: the three BitLinear outputs, the previous state, the layer's lower-bound gate.
MLGRU_IN = data.StructLayout({
    "i": ACT_SHAPE, "f": ACT_SHAPE, "g": ACT_SHAPE, "h": ACT_SHAPE,
    "lb": unsigned(nx.GATE_FRAC),          # float_to_gate: < 1, fits 32 bits
})
#: Output beat: w = g * silu(h_new) and the new state h_new, both ACT.
MLGRU_OUT = data.StructLayout({"w": ACT_SHAPE, "h": ACT_SHAPE})


class MLGRU(wiring.Component):
    """Stream unit, bit exact with ``golden_int.mlgru_step`` per element::

        f = lb + rshift_round((2**32 - lb) * sigmoid_act(f_pre), 32)
        c = mul_gate(silu_act(i), 2**32 - f)
        h = saturate(mul_gate(h_prev, f) + c)
        w = mul_act(g, silu_act(h))

    Ports
    -----
    i : stream of :data:`MLGRU_IN` (``i``, ``f`` = f_pre, ``g``, ``h`` = previous state, ``lb``).
    o : stream of :data:`MLGRU_OUT` (``w`` and ``h``, the new state, in ACT).

    Attributes
    ----------
    latency : 7 cycles from an input transfer to ``o.valid``.
    Throughput: one element per cycle (three sigmoid tables, eight multipliers);
    output backpressure stalls the whole pipeline.
    """

    latency = 7

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(MLGRU_IN)),
            "o": Out(stream.Signature(MLGRU_OUT)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        stage = pipeline_stages(m, advance)

        def valid_chain(valid, n):
            for k in range(n):
                valid = stage(f"valid{k + 1}", 1, valid)
            return valid

        x = self.i.payload
        # 1: table reads for sigma(f_pre) and sigma(i)
        sig_f = SigmoidLookup(m, x.f, advance, "sigmoid_f")
        sig_i = SigmoidLookup(m, x.i, advance, "sigmoid_i")
        i1, g1, h1, lb1 = (stage(f"{n}1", s, v) for n, s, v in
                           (("i", ACT_SHAPE, x.i), ("g", ACT_SHAPE, x.g), ("hprev", ACT_SHAPE, x.h),
                            ("lb", unsigned(nx.GATE_FRAC), x.lb)))
        # 2: f = lb + (1 - lb) * sigma(f_pre); silu(i) = i * sigma(i)
        f2 = stage("f2", GATE_SHAPE,
                   lb1 + rshift_round((nx.GATE_ONE - lb1) * sig_f.gate, nx.GATE_FRAC))
        silu_i2 = stage("silu_i2", ACT_SHAPE, silu_product(i1, sig_i.gate))
        g2, h2 = stage("g2", ACT_SHAPE, g1), stage("hprev2", ACT_SHAPE, h1)
        # 3: h = saturate(f * h_prev + silu(i) * (1 - f))
        keep = mul_gate(h2, f2)
        new = mul_gate(silu_i2, nx.GATE_ONE - f2)
        h3 = stage("h3", ACT_SHAPE, saturate(keep + new))
        g3 = stage("g3", ACT_SHAPE, g2)
        # 4: table read for sigma(h)
        sig_h = SigmoidLookup(m, h3, advance, "sigmoid_h")
        h4, g4 = stage("h4", ACT_SHAPE, h3), stage("g4", ACT_SHAPE, g3)
        # 5: silu(h) = h * sigma(h)
        silu_h5 = stage("silu_h5", ACT_SHAPE, silu_product(h4, sig_h.gate))
        h5, g5 = stage("h5", ACT_SHAPE, h4), stage("g5", ACT_SHAPE, g4)
        # 6: w = g * silu(h) (a 96-bit product), rounded to ACT
        h6 = stage("h6", ACT_SHAPE, h5)
        w6 = stage("w6", ACT_SHAPE, mul_act(g5, silu_h5))
        valid6 = valid_chain(self.i.valid, 6)
        # 7: output register
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid6), self.o.payload.w.eq(w6), self.o.payload.h.eq(h6)]
        return m
