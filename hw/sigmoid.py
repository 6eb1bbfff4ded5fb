"""Sigmoid of an ACT value by table and quadratic interpolation (``numerics.sigmoid_act``)."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from mmfree.models import numerics as nx

from .fixed_point import delay, pipeline_stages, pipelined_product, product_latency, rshift_round

__all__ = ["SigmoidLookup", "GATE_SHAPE", "ACT_SHAPE", "SILU_PRODUCT_BITS", "sigmoid_rom",
           "silu_product", "pipelined_silu_product", "SILU_LATENCY"]

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
    addresses it with segment ``j`` of ``|x|`` and, on every cycle where
    ``advance`` is high, moves these stages one step (stall-together):

    1. table read (address ``j``); fraction ``r``, in-range flag, sign registered;
    2. read data registered (the block RAM's output register);
    3. .. 4. ``d2 * (r - 2**26)`` (:func:`~.fixed_point.pipelined_product`);
    5. ``k = 2 d1 + rshift_round(d2 * (r - 2**26), 26)``;
    6. .. 8. ``r * k``;
    9. ``s = T[j] + rshift_round(r * k, 27)``;
    10. :attr:`gate`: ``s``, or 2**32 outside the table, mirrored (``2**32 - s``) for x < 0.

    :attr:`gate` is ``sigmoid_act(x)`` :attr:`latency` advancing cycles after ``x``.
    """

    #: Advancing cycles from ``x`` to :attr:`gate` (a register).
    latency = 10

    def __init__(self, m: Module, x, advance, name: str):
        words, base_bits, d1_bits, d2_bits = sigmoid_rom()
        shift = nx.SIGMOID_SEGMENT_SHIFT
        stage = pipeline_stages(m, advance)
        table = Memory(shape=unsigned(base_bits + d1_bits + d2_bits), depth=nx.SIGMOID_SEGMENTS, init=words)
        m.submodules[name] = table
        rd = table.read_port(domain="sync")
        # a = |x|, j = a >> 26, r = a mod 2**26
        mag = Signal(unsigned(nx.ACT_BITS), name=f"{name}_mag")
        m.d.comb += mag.eq(Mux(x < 0, -x, x))
        seg = mag[shift:]
        m.d.comb += [rd.addr.eq(seg[:nx.SIGMOID_SEGMENTS_LOG2]), rd.en.eq(advance)]
        frac1 = stage(f"{name}_frac1", shift, mag[:shift])
        inside1 = stage(f"{name}_inside1", 1, seg < nx.SIGMOID_SEGMENTS)
        negative1 = stage(f"{name}_negative1", 1, x < 0)
        # 2: read data registered before any logic
        word2 = stage(f"{name}_word2", len(rd.data), rd.data)
        base2 = word2[:base_bits]
        d1_2 = word2[base_bits: base_bits + d1_bits]
        d2_2 = word2[base_bits + d1_bits:].as_signed()
        frac2 = stage(f"{name}_frac2", shift, frac1)
        # 3 .. 4: d2 * (r - 2**26); r - 2**26 in [-2**26, 0) is r with a sign bit set
        frac_minus_one = Cat(frac2, 1).as_signed()
        lat_t = product_latency(d2_2, frac_minus_one)
        t_product = pipelined_product(stage, f"{name}_t", d2_2, frac_minus_one)
        d1_t, frac_t = delay(stage, f"{name}_d1_", d1_2, lat_t), delay(stage, f"{name}_frac_", frac2, lat_t)
        # 5: k = 2 d1 + t, t = rshift_round(d2 * (r - 2**26), 26)
        k = stage(f"{name}_k", signed(d1_bits + 3), (d1_t << 1) + rshift_round(t_product, shift))
        frac_k = stage(f"{name}_frac_k", shift, frac_t)
        # 6 .. 8: r * k
        lat_i = product_latency(frac_k, k)
        interp_product = pipelined_product(stage, f"{name}_interp", frac_k, k)
        # 9: s = T[j] + rshift_round(r * k, 27)
        lat = 2 + lat_t + 1 + lat_i
        base_i = delay(stage, f"{name}_base_", base2, lat - 2)
        interp = stage(f"{name}_interp", unsigned(base_bits + 1), base_i + rshift_round(interp_product, shift + 1))
        inside = delay(stage, f"{name}_inside_", inside1, lat)
        negative = delay(stage, f"{name}_negative_", negative1, lat)
        # 10: 2**32 outside the table; 2**32 - s for x < 0
        s = Mux(inside, interp, nx.GATE_ONE)
        self.gate = stage(f"{name}_gate", GATE_SHAPE, Mux(negative, nx.GATE_ONE - s, s))
        assert lat + 2 == self.latency, lat


#: Advancing cycles of :func:`pipelined_silu_product`: the 38 x 33-bit product, then rounding and the range mux.
SILU_LATENCY = 4


def pipelined_silu_product(stage, name: str, x, gate):
    """:func:`silu_product` of ``x`` and ``gate``, :data:`SILU_LATENCY` stages later (``stage`` of
    :func:`~.fixed_point.pipeline_stages`): the product's partial products and their sums, then one
    stage with the rounding shift and the choice of product, x or 0."""
    n = SILU_PRODUCT_BITS
    fits = (x[n - 1:] == 0) | (x[n - 1:] == (1 << (nx.ACT_BITS - n + 1)) - 1)    # sign extension of bit n-1
    lat = product_latency(x[:n].as_signed(), gate)
    product = pipelined_product(stage, f"{name}_product", x[:n].as_signed(), gate)
    outside = delay(stage, f"{name}_outside", Mux(x < 0, 0, x), lat)
    fits = delay(stage, f"{name}_fits", fits, lat)
    # mul_gate: rshift_round(x * g, 32); |x * g| <= 2**69, never saturates
    assert lat + 1 == SILU_LATENCY, lat
    return stage(f"{name}_silu", ACT_SHAPE, Mux(fits, rshift_round(product, nx.GATE_FRAC), outside))
