"""Sigmoid of an ACT value by table and quadratic interpolation (``numerics.sigmoid_act``)."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from mmfree.models import numerics as nx

__all__ = ["SigmoidLookup", "GATE_SHAPE", "ACT_SHAPE", "SILU_PRODUCT_BITS", "sigmoid_rom",
           "silu_product"]

#: ACT values: signed 48-bit.
ACT_SHAPE = signed(nx.ACT_BITS)
#: Sigmoid results: GATE in 0 .. 2**32 inclusive (33 bits).
GATE_SHAPE = unsigned(nx.GATE_FRAC + 1)
#: Signed width of the x that SiLU multiplies: |x| < 2**37 (|x| < 32 in ACT), where sigma is interpolated.
SILU_PRODUCT_BITS = nx.ACT_FRAC + nx.SIGMOID_RANGE_LOG2 + 1


def silu_product(x, gate):
    """``numerics.silu_act(x) = mul_gate(x, gate)`` given ``gate = sigmoid_act(x)``, with a 38-bit multiply.

    Beyond the table (|x| >= 32, i.e. x outside 38-bit two's complement)
    the gate is exactly 2**32 (x > 0) or 0 (x < 0), so the product is x or 0:
    only x in [-2**37, 2**37) needs the multiplier, a 38 x 33-bit product
    (4 DSP48E1 instead of 6 for 48 x 33 in yosys' mapping), whose rounded
    result (|.| <= 2**37) never saturates ACT.
    """
    n = SILU_PRODUCT_BITS
    fits = (x[n - 1:] == 0) | (x[n - 1:] == (1 << (nx.ACT_BITS - n + 1)) - 1)    # sign extension of bit n-1
    # mul_gate: rshift_round(x * g, 32); |x * g| <= 2**69
    product = (x[:n].as_signed() * gate + (1 << (nx.GATE_FRAC - 1))) >> nx.GATE_FRAC
    return Mux(fits, product, Mux(x < 0, 0, x))


def sigmoid_rom() -> tuple[list[int], int, int, int]:
    """ROM words ``T[j] | d1 << base_bits | d2 << (base_bits + d1_bits)`` for j < SIGMOID_SEGMENTS,
    and the three field widths.

    ``d1 = T[j+1] - T[j]`` (unsigned), ``d2 = T[j+2] - 2 T[j+1] + T[j]``
    (two's complement in ``d2_bits``): one word holds everything segment j
    interpolates with.
    """
    t = [int(v) for v in nx.SIGMOID_TABLE]
    segments = range(nx.SIGMOID_SEGMENTS)
    d1 = [t[j + 1] - t[j] for j in segments]
    d2 = [t[j + 2] - 2 * t[j + 1] + t[j] for j in segments]
    if min(d1) < 0:
        raise ValueError("SIGMOID_TABLE is not monotonic")
    base_bits = max(t[: nx.SIGMOID_SEGMENTS]).bit_length()
    d1_bits = max(d1).bit_length()
    d2_bits = max(v.bit_length() for v in d2) + 1
    words = [t[j] | d1[j] << base_bits | (d2[j] & ((1 << d2_bits) - 1)) << (base_bits + d1_bits) for j in segments]
    return words, base_bits, d1_bits, d2_bits


class SigmoidLookup:
    """The table half of ``sigmoid_act`` for use inside a unit's pipeline (not a component).

    ``SigmoidLookup(m, x, advance, name)`` adds a table ``Memory`` to ``m``,
    addresses it with segment ``j`` of ``|x|`` and registers the fraction, the
    in-range flag and the sign when ``advance`` is high. One cycle later
    :attr:`gate` is ``sigmoid_act(x)`` (combinational from those registers
    and the read data: two multiplies in series), held while ``advance`` is low.
    """

    def __init__(self, m: Module, x, advance, name: str):
        words, base_bits, d1_bits, d2_bits = sigmoid_rom()
        shift = nx.SIGMOID_SEGMENT_SHIFT
        table = Memory(shape=unsigned(base_bits + d1_bits + d2_bits), depth=nx.SIGMOID_SEGMENTS, init=words)
        m.submodules[name] = table
        rd = table.read_port(domain="sync")
        # a = |x|, j = a >> 26, r = a mod 2**26
        mag = Signal(unsigned(nx.ACT_BITS), name=f"{name}_mag")
        m.d.comb += mag.eq(Mux(x < 0, -x, x))
        seg = mag[shift:]
        m.d.comb += [rd.addr.eq(seg[:nx.SIGMOID_SEGMENTS_LOG2]), rd.en.eq(advance)]
        frac = Signal(shift, name=f"{name}_frac")
        inside = Signal(name=f"{name}_inside")
        negative = Signal(name=f"{name}_negative")
        with m.If(advance):
            m.d.sync += [frac.eq(mag[:shift]), inside.eq(seg < nx.SIGMOID_SEGMENTS), negative.eq(x < 0)]
        # t = rshift_round(d2 * (r - 2**26), 26); s = T[j] + rshift_round(r * (2 d1 + t), 27),
        # or 2**32 outside; 2**32 - s for x < 0
        base = rd.data[:base_bits]
        d1 = rd.data[base_bits: base_bits + d1_bits]
        d2 = rd.data[base_bits + d1_bits:].as_signed()
        t = Signal(signed(d2_bits + 1), name=f"{name}_t")
        m.d.comb += t.eq((d2 * (frac - (1 << shift)) + (1 << (shift - 1))) >> shift)
        interp = Signal(unsigned(base_bits + 1), name=f"{name}_interp")
        m.d.comb += interp.eq(base + ((frac * ((d1 << 1) + t) + (1 << shift)) >> (shift + 1)))
        s = Mux(inside, interp, nx.GATE_ONE)
        self.gate = Signal(GATE_SHAPE, name=f"{name}_gate")
        m.d.comb += self.gate.eq(Mux(negative, nx.GATE_ONE - s, s))
