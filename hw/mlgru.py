"""The MLGRU's element-wise part (``golden_int.mlgru_step``), one element per beat."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .fixed_point import (delay, pipeline_stages, pipelined_product, product_latency, rshift_round,
                          saturate_sign_extension)
from .sigmoid import ACT_SHAPE, GATE_SHAPE, SILU_LATENCY, SigmoidLookup, pipelined_silu_product

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
    latency : 42 cycles from an input transfer to ``o.valid``:
        ``sigma(f_pre)``, ``sigma(i)`` (10), ``f`` and ``silu(i)`` (4), ``1 - f`` (1),
        the two gate products (3), rounding (1), saturation (1), their sum (1),
        saturation into ``h`` (1), ``sigma(h)`` (10), ``silu(h)`` (4), ``g * silu(h)`` (4),
        rounding (1), saturation into the output register (1). Every stage
        holds at most one DSP48 multiply or one carry chain.
    Throughput: one element per cycle (three sigmoid tables, DSP48 limb products);
    output backpressure stalls the whole pipeline.
    """

    latency = 2 * SigmoidLookup.latency + 2 * SILU_LATENCY + 14

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
        x = self.i.payload
        sig_lat = SigmoidLookup.latency

        def mul_gate_stages(name, v, gate):
            """``mul_gate(v, gate)``: the product, rounding, saturation in their own stages."""
            product = pipelined_product(stage, name, v, gate)
            rounded = stage(f"{name}_rounded", signed(len(product) - nx.GATE_FRAC + 1),
                            rshift_round(product, nx.GATE_FRAC))
            return stage(f"{name}_saturated", ACT_SHAPE, saturate_sign_extension(rounded))

        # 1 .. 10: sigma(f_pre), sigma(i)
        sig_f = SigmoidLookup(m, x.f, advance, "sigmoid_f")
        sig_i = SigmoidLookup(m, x.i, advance, "sigmoid_i")
        one_minus_lb = delay(stage, "one_minus_lb", stage("one_minus_lb", GATE_SHAPE, nx.GATE_ONE - x.lb),
                             sig_lat - 1)
        # 11 .. 14: f = lb + rshift_round((1 - lb) * sigma(f_pre), 32); silu(i) = i * sigma(i)
        lat_f = product_latency(one_minus_lb, sig_f.gate)
        f_product = pipelined_product(stage, "f_product", one_minus_lb, sig_f.gate)
        lb = delay(stage, "lb", x.lb, sig_lat + lat_f)
        f = stage("f", GATE_SHAPE, lb + rshift_round(f_product, nx.GATE_FRAC))
        silu_i = pipelined_silu_product(stage, "silu_i", delay(stage, "i", x.i, sig_lat), sig_i.gate)
        assert lat_f + 1 == SILU_LATENCY
        # 15: 1 - f
        one_minus_f = stage("one_minus_f", GATE_SHAPE, nx.GATE_ONE - f)
        f, silu_i = stage("f_gate", GATE_SHAPE, f), stage("silu_i_gate", ACT_SHAPE, silu_i)
        h_prev = delay(stage, "hprev", x.h, sig_lat + SILU_LATENCY + 1)
        # 16 .. 20: mul_gate(h_prev, f), mul_gate(silu(i), 1 - f)
        keep = mul_gate_stages("keep", h_prev, f)
        new = mul_gate_stages("new", silu_i, one_minus_f)
        # 21 .. 22: h = saturate(keep + new)
        total = stage("h_sum", signed(nx.ACT_BITS + 1), keep + new)
        h = stage("h", ACT_SHAPE, saturate_sign_extension(total))
        lat_h = sig_lat + SILU_LATENCY + 1 + product_latency(h_prev, f) + 4
        # 23 .. 32: sigma(h); 33 .. 36: silu(h)
        sig_h = SigmoidLookup(m, h, advance, "sigmoid_h")
        silu_h = pipelined_silu_product(stage, "silu_h", delay(stage, "h_silu", h, sig_lat), sig_h.gate)
        # 37 .. 40: g * silu(h) (a 96-bit product); 41: rounded
        lat_w = lat_h + sig_lat + SILU_LATENCY
        g = delay(stage, "g", x.g, lat_w)
        w_product = pipelined_product(stage, "w_product", g, silu_h)
        lat_w += product_latency(g, silu_h)
        w = stage("w_rounded", signed(2 * nx.ACT_BITS - nx.ACT_FRAC + 1), rshift_round(w_product, nx.ACT_FRAC))
        h_out = delay(stage, "h_out", h, lat_w + 1 - lat_h)
        valid = delay(stage, "valid", self.i.valid, lat_w + 1, reset_less=False)
        assert lat_w + 2 == self.latency, lat_w
        # 42: w saturated to ACT, the output register
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid), self.o.payload.w.eq(saturate_sign_extension(w)),
                         self.o.payload.h.eq(h_out)]
        return m
