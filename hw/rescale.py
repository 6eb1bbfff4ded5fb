"""Output rescale of a BitLinear: accumulator to ACT (``numerics.rescale``)."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .fixed_point import pipeline_stages, saturate
from .rsqrt import INV_BITS

__all__ = ["Rescale", "rescale_in_layout", "SCALE_SHAPE", "EXP_SHAPE", "RATIO_BITS", "SCALE_OUT_BITS"]

#: ``numerics.output_scale``'s ``F' = (M' * inv) >> 32`` at its largest (M' < 2**31, inv <= 2**31).
RATIO_BITS = ((((1 << nx.QUANT_NORM_BITS) - 1) << (INV_BITS - 1)) >> nx.RATIO_DROP_BITS).bit_length()
#: ``scale = (Cm * F') >> 31`` at its largest (Cm < 2**31): below 2**30.
SCALE_OUT_BITS = ((((1 << nx.SCALE_BITS) - 1) * ((1 << RATIO_BITS) - 1)) >> nx.SCALE_BITS).bit_length()
SCALE_SHAPE = unsigned(SCALE_OUT_BITS)
#: The per-vector exponent; sane scales give about -75 .. -20, the port takes -128 .. 127.
EXP_SHAPE = signed(8)
_ACT_OUT = signed(nx.ACT_BITS)


def rescale_in_layout(acc_bits: int) -> data.StructLayout:
    """Input beat: one accumulator (``acc_bits`` signed) and its vector's ``scale`` and ``exp``."""
    return data.StructLayout({"acc": signed(acc_bits), "scale": SCALE_SHAPE, "exp": EXP_SHAPE})


class Rescale(wiring.Component):
    """Stream unit: ``y = saturate(rshift_round(acc * scale, -exp))`` in ACT, one element per cycle.

    This is ``numerics.rescale(acc, scale, exp)`` for every exponent: a
    right shift with rounding for ``exp < 0`` (every sane output scale), a
    saturating left shift for ``exp >= 0``.

    The product ``p = acc * scale`` (``|p| < 2**(acc_bits - 1 + SCALE_OUT_BITS)``,
    2**50 for K <= 8192, on DSP blocks) is shifted as ``w = p << 48`` so that
    one arithmetic right shift by ``s = 48 - exp`` covers both signs of
    ``exp``: ``rshift_round(w, s)`` equals ``rshift_round(p, -exp)`` for
    ``exp < 0`` and ``p << exp`` for ``0 <= exp < 48`` (the rounding half
    falls on zero bits); ``exp >= 48`` takes ``s = 0`` and saturates any
    nonzero ``p``. The rounding uses
    ``rshift_round(w, s) = (floor(w / 2**(s-1)) + 1) >> 1``, so no wide
    constant is added.

    Ports
    -----
    i : stream of :func:`rescale_in_layout` (``acc_bits``): ``scale``
        (:data:`SCALE_SHAPE`, unsigned 30) and ``exp`` (:data:`EXP_SHAPE`)
        travel with every element (constant over a vector).
    o : stream of ACT (signed ``numerics.ACT_BITS``, 48).

    Parameters
    ----------
    acc_bits : int, signed width of the accumulators, 2 .. ``numerics.accumulator_bits(8192)``
        (21: ``|acc| < 2**20``); ``TernaryAccumulate.acc_bits`` for its ``k``.

    Attributes
    ----------
    latency : cycles from an input transfer to ``o.valid`` of its result, the
        output being ready: 3 (product, shift, round-and-saturate).
    Throughput: one element per cycle; output backpressure stalls the whole
    pipeline.

    Raises
    ------
    TypeError / ValueError on a non-integer or out-of-range ``acc_bits``.
    """

    latency = 3

    #: Widest accumulator the product width was planned for (K <= 8192).
    MAX_ACC_BITS = nx.accumulator_bits(8192)

    def __init__(self, *, acc_bits: int = MAX_ACC_BITS):
        if not isinstance(acc_bits, int) or isinstance(acc_bits, bool):
            raise TypeError(f"acc_bits must be an integer, not {acc_bits!r}")
        if not 2 <= acc_bits <= self.MAX_ACC_BITS:
            raise ValueError(f"acc_bits must be in 2 .. {self.MAX_ACC_BITS}, not {acc_bits}")
        self.acc_bits = acc_bits
        super().__init__({
            "i": In(stream.Signature(rescale_in_layout(acc_bits))),
            "o": Out(stream.Signature(_ACT_OUT)),
        })

    def elaborate(self, platform):
        m = Module()
        prod_bits = self.acc_bits + SCALE_SHAPE.width          # signed: |p| < 2**(prod_bits - 1)
        wide_bits = prod_bits + nx.ACT_BITS                     # w = p << 48
        # rshift_round(w, s) = 0 for every s >= wide_bits (|w| < 2**(wide_bits - 1)): clamp s there
        max_shift = wide_bits

        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        stage = pipeline_stages(m, advance)

        # 1. p = acc * scale; s = clamp(48 - exp, 0, max_shift)
        beat = self.i.payload
        valid1 = stage("valid1", 1, self.i.valid)
        prod = stage("prod", signed(prod_bits), beat.acc * beat.scale)
        shift_wide = Signal(signed(EXP_SHAPE.width + 2))
        m.d.comb += shift_wide.eq(nx.ACT_BITS - beat.exp)
        shift = stage("shift", range(max_shift + 1),
                      Mux(shift_wide < 0, 0, Mux(shift_wide > max_shift, max_shift, shift_wide)))

        # 2. t = w >> (s - 1) for s >= 1 (floor); for s = 0 keep w itself
        w = Signal(signed(wide_bits + 1))
        m.d.comb += w.eq(prod << (nx.ACT_BITS + 1))             # 2 w: then t = (2 w) >> s
        valid2 = stage("valid2", 1, valid1)
        halved = stage("halved", signed(wide_bits + 1), w >> shift)   # floor(w / 2**(s-1)), or 2 w
        exact = stage("exact", 1, shift == 0)

        # 3. y = saturate((t + 1) >> 1), or saturate(w) when s = 0
        rounded = Signal(signed(wide_bits + 1))
        m.d.comb += rounded.eq(Mux(exact, halved >> 1, (halved + 1) >> 1))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(valid2), self.o.payload.eq(saturate(rounded))]
        return m
