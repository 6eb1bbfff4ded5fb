"""bf16 embedding values to ACT (``numerics.bf16_to_act``), one value per cycle."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .fixed_point import pipeline_stages

__all__ = ["Bf16ToAct"]

#: Exponent at which the 8-bit significand (1.mant) lands unshifted in ACT: 127 + 7 - 32 = 102.
_UNSHIFTED_EXP = nx.BF16_EXP_BIAS + nx.BF16_MANT_BITS - nx.ACT_FRAC


class Bf16ToAct(wiring.Component):
    """Stream unit, bit exact with ``numerics.bf16_to_act``::

        sig = 128 + mant;  s = exp - 102
        |v| = min(sig << min(s, 48), ACT_MAX)  if s >= 0
            = (sig + 2**(-s-1)) >> -s         if s < 0   (round half up; 0 beyond 62 bits)
        v = 0 for exp == 0 (zero, subnormals); |v| = ACT_MAX for exp == 255; sign applied last.

    Ports
    -----
    i : stream of raw bf16 bits (unsigned 16).
    o : stream of ACT values (signed 48, Q15.32); exact for |value| >= 2**-25.

    Attributes
    ----------
    latency : 2 cycles from an input transfer to ``o.valid`` (shift, then sign).
    Throughput: one value per cycle; output backpressure stalls the pipeline.
    """

    latency = 2

    i: In(stream.Signature(unsigned(16)))
    o: Out(stream.Signature(signed(nx.ACT_BITS)))

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        stage = pipeline_stages(m, advance)

        bits = self.i.payload
        sign, exp, mant = bits[15], bits[nx.BF16_MANT_BITS:15], bits[:nx.BF16_MANT_BITS]
        sig = Signal(unsigned(nx.BF16_MANT_BITS + 1))
        m.d.comb += sig.eq(mant | (1 << nx.BF16_MANT_BITS))
        left = Signal(range(nx.ACT_BITS + 1))       # clip(s, 0, 48), as numerics clips before shifting
        right = Signal(range(63))                   # clip(-s, 1, 62)
        s = Signal(signed(10))
        m.d.comb += [s.eq(exp - _UNSHIFTED_EXP),
                     left.eq(Mux(s > nx.ACT_BITS, nx.ACT_BITS, Mux(s < 0, 0, s))),
                     right.eq(Mux(-s > 62, 62, Mux(-s < 1, 1, -s)))]
        # 1: magnitude
        shifted_up = Signal(unsigned(nx.BF16_MANT_BITS + 1 + nx.ACT_BITS))
        m.d.comb += shifted_up.eq(sig << left)
        half_ulp = Signal(unsigned(62))
        m.d.comb += half_ulp.eq(Const(1, 62) << (right - 1)[:6])
        rounded = (sig + half_ulp) >> right
        magnitude = Mux(exp == 0, 0,
                        Mux(exp == 0xFF, nx.ACT_MAX,
                            Mux(s >= 0, Mux(shifted_up > nx.ACT_MAX, nx.ACT_MAX, shifted_up), rounded)))
        mag1 = stage("magnitude1", unsigned(nx.ACT_BITS - 1), magnitude)
        sign1 = stage("sign1", 1, sign)
        valid1 = stage("valid1", 1, self.i.valid)
        # 2: sign
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid1), self.o.payload.eq(Mux(sign1, -mag1, mag1))]
        return m
