"""Sigmoid of an ACT value by table and linear interpolation (``numerics.sigmoid_act``)."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["Sigmoid", "SigmoidLookup", "GATE_SHAPE", "ACT_SHAPE", "sigmoid_rom"]

#: ACT values: signed 32-bit.
ACT_SHAPE = signed(nx.ACT_BITS)
#: Sigmoid results: GATE in 0 .. 2**16 inclusive (17 bits).
GATE_SHAPE = unsigned(nx.GATE_FRAC + 1)


def sigmoid_rom() -> tuple[list[int], int, int]:
    """ROM words ``T[j] | (T[j+1] - T[j]) << base_bits`` for j < SIGMOID_SEGMENTS, and the two widths."""
    table = [int(v) for v in nx.SIGMOID_TABLE]
    slopes = [b - a for a, b in zip(table, table[1:])]
    if min(slopes) < 0:
        raise ValueError("SIGMOID_TABLE is not monotonic")
    base_bits = max(table[:-1]).bit_length()
    slope_bits = max(slopes).bit_length()
    words = [base | slope << base_bits for base, slope in zip(table[:-1], slopes)]
    return words, base_bits, slope_bits


class SigmoidLookup:
    """The table half of ``sigmoid_act`` for use inside a unit's pipeline (not a component).

    ``SigmoidLookup(m, x, advance, name)`` adds a table ``Memory`` to ``m``,
    addresses it with segment ``j`` of ``|x|`` and registers the fraction, the
    in-range flag and the sign when ``advance`` is high. One cycle later
    :attr:`gate` is ``sigmoid_act(x)`` (combinational from those registers
    and the read data), held while ``advance`` is low.
    """

    def __init__(self, m: Module, x, advance, name: str):
        words, base_bits, slope_bits = sigmoid_rom()
        shift = nx.SIGMOID_SEGMENT_SHIFT
        table = Memory(shape=unsigned(base_bits + slope_bits), depth=nx.SIGMOID_SEGMENTS, init=words)
        m.submodules[name] = table
        rd = table.read_port(domain="sync")
        # a = |x|, j = a >> 11, r = a mod 2**11
        mag = Signal(unsigned(nx.ACT_BITS), name=f"{name}_mag")
        m.d.comb += mag.eq(Mux(x < 0, -x, x))
        seg = mag[shift:]
        m.d.comb += [rd.addr.eq(seg[:nx.SIGMOID_SEGMENTS_LOG2]), rd.en.eq(advance)]
        frac = Signal(shift, name=f"{name}_frac")
        inside = Signal(name=f"{name}_inside")
        negative = Signal(name=f"{name}_negative")
        with m.If(advance):
            m.d.sync += [frac.eq(mag[:shift]), inside.eq(seg < nx.SIGMOID_SEGMENTS), negative.eq(x < 0)]
        # s = T[j] + rshift_round(dT * r, 11), or 2**16 outside; 2**16 - s for x < 0
        base = rd.data[:base_bits]
        slope = rd.data[base_bits:]
        interp = Signal(unsigned(base_bits + 1), name=f"{name}_interp")
        m.d.comb += interp.eq(base + ((slope * frac + (1 << (shift - 1))) >> shift))
        s = Mux(inside, interp, nx.GATE_ONE)
        self.gate = Signal(GATE_SHAPE, name=f"{name}_gate")
        m.d.comb += self.gate.eq(Mux(negative, nx.GATE_ONE - s, s))


class Sigmoid(wiring.Component):
    """Stream unit: ``gate = numerics.sigmoid_act(x)`` bit for bit, with ``x`` passed along.

    ``a = |x|``, segment ``j = a >> 11``, fraction ``r = a & 0x7ff``;
    ``s = T[j] + rshift_round((T[j+1] - T[j]) * r, 11)`` for ``j < 512``
    else ``2**16``; ``gate = s`` for ``x >= 0``, ``2**16 - s`` otherwise.
    ``T`` is ``numerics.SIGMOID_TABLE`` held as (T[j], T[j+1] - T[j]) pairs in
    one 512-word ``Memory`` (one synchronous read per element).

    Ports
    -----
    i : stream of ACT ``x`` (signed 32).
    o : stream of ``{"gate": GATE (unsigned 17, 0 .. 2**16), "x": the input}``;
        consumers such as SiLU need ``x`` next to its sigmoid.

    Attributes
    ----------
    latency : 2 cycles from an input transfer to ``o.valid`` (table read, then
        interpolate-and-reflect into the output register).
    Throughput: one element per cycle; output backpressure stalls the whole
    pipeline (``i.ready = ~o.valid | o.ready``).
    """

    latency = 2

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(ACT_SHAPE)),
            "o": Out(stream.Signature(data.StructLayout({"gate": GATE_SHAPE, "x": ACT_SHAPE}))),
        })

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        # Stage 1: table read (SigmoidLookup registers), x and valid alongside.
        lookup = SigmoidLookup(m, self.i.payload, advance, "table")
        valid1 = Signal()
        x1 = Signal(ACT_SHAPE)
        with m.If(advance):
            m.d.sync += [valid1.eq(self.i.valid), x1.eq(self.i.payload)]

        # Stage 2: interpolate and reflect into the output register.
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(valid1),
                self.o.payload.gate.eq(lookup.gate),
                self.o.payload.x.eq(x1),
            ]
        return m
