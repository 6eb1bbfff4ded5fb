"""bf16 embedding values to ACT (``numerics.bf16_to_act``), one value per cycle."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
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
    latency : 3 cycles from an input transfer to ``o.valid`` (decode, magnitude, sign).
    Throughput: one value per cycle; output backpressure stalls the pipeline.
    """

    latency = 3

    i: In(stream.Signature(unsigned(16)))
    o: Out(stream.Signature(signed(nx.ACT_BITS)))

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        stage = pipeline_stages(m, advance)

        bits = self.i.payload
        sign, exp, mant = bits[15], bits[nx.BF16_MANT_BITS:15], bits[:nx.BF16_MANT_BITS]
        sig_width = nx.BF16_MANT_BITS + 1
        # 1: decode the exponent (functions of its 8 bits): the shifts, saturation and zero
        s = Signal(signed(10))
        m.d.comb += s.eq(exp - _UNSHIFTED_EXP)
        # sig << s > ACT_MAX  <=>  s + bitlen(sig) > ACT_BITS - 1 (sig's top bit is set)
        saturate = (exp == 0xFF) | (s > nx.ACT_BITS - 1 - sig_width)
        valid1 = stage("valid1", 1, self.i.valid)
        sign1 = stage("sign1", 1, sign)
        sig1 = stage("sig1", unsigned(sig_width), mant | (1 << nx.BF16_MANT_BITS))
        zero1 = stage("zero1", 1, exp == 0)
        saturate1 = stage("saturate1", 1, saturate)
        up1 = stage("up1", 1, s >= 0)
        left1 = stage("left1", range(nx.ACT_BITS - sig_width + 1), Mux(s < 0, 0, s))   # saturates beyond
        # rshift_round(sig, -s) = ((sig >> (-s - 1)) + 1) >> 1, 0 once -s - 1 >= sig_width
        right1 = stage("right1", range(sig_width + 1), Mux(-s - 1 > sig_width, sig_width, -s - 1))
        # 2: magnitude
        rounded = ((sig1 >> right1) + 1) >> 1
        magnitude = Mux(zero1, 0, Mux(saturate1, nx.ACT_MAX, Mux(up1, sig1 << left1, rounded)))
        mag2 = stage("magnitude2", unsigned(nx.ACT_BITS - 1), magnitude)
        sign2 = stage("sign2", 1, sign1)
        valid2 = stage("valid2", 1, valid1)
        # 3: sign
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid2), self.o.payload.eq(Mux(sign2, -mag2, mag2))]
        return m
