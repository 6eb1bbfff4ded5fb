"""The norm's one reciprocal square root per vector: ``numerics.rsqrt_fixed`` by digit recurrences."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["RsqrtFixed", "rsqrt_out_layout", "rsqrt_z_bits", "INV_BITS", "ROOT_BITS"]

#: Bits of the integer square root of the normalised value V' in [2**60, 2**62).
ROOT_BITS = nx.RSQRT_NORM_BITS // 2
#: Bits of ``inv = 2**61 // isqrt(V')``: the root is at least 2**30, so inv <= 2**31.
INV_BITS = ((1 << nx.RSQRT_RECIP_SHIFT) >> (ROOT_BITS - 1)).bit_length()

# The normaliser moves V by one of these even amounts per cycle (largest that
# keeps it on the right side of the target range), so a wide V settles in a
# few cycles without a barrel shifter.
_NORM_STEPS = (32, 8, 2)


def rsqrt_out_layout(z_bits: int) -> data.StructLayout:
    """Output beat: ``inv`` (unsigned :data:`INV_BITS`) and the exponent ``z`` (signed ``z_bits``)."""
    return data.StructLayout({"inv": unsigned(INV_BITS), "z": signed(z_bits)})


def rsqrt_z_bits(v_bits: int) -> int:
    """Signed width of ``z`` for a ``v_bits``-bit input: z lies in ``[(62 - v_bits) // 2, 30]``."""
    z_min = (nx.RSQRT_NORM_BITS - v_bits) // 2
    z_max = (nx.RSQRT_NORM_BITS - 1) // 2
    return max(z_min.bit_length(), (-z_min).bit_length(), z_max.bit_length()) + 1


def _normalise_cycles(v: int) -> int:
    """Cycles the serial normaliser spends on ``v`` (see :class:`RsqrtFixed`)."""
    n, bl = 0, v.bit_length()
    while bl > nx.RSQRT_NORM_BITS:
        bl -= next(s for s in _NORM_STEPS if bl - s >= nx.RSQRT_NORM_BITS or s == _NORM_STEPS[-1])
        n += 1
    while 0 < bl < nx.RSQRT_NORM_BITS - 1:
        bl += next(s for s in _NORM_STEPS if bl + s <= nx.RSQRT_NORM_BITS or s == _NORM_STEPS[-1])
        n += 1
    return n


class RsqrtFixed(wiring.Component):
    """Stream unit: ``(inv, z) = numerics.rsqrt_fixed(v)``, i.e. ``1/sqrt(v) ~= inv * 2**(z - 61)``.

    1. Normalise (serial, one step per cycle): ``V`` moves by an even amount
       (32, 8 or 2 bits, the largest that does not overshoot) until
       ``V' in [2**60, 2**62)``; right steps are floor shifts, which compose
       exactly, so ``V' = floor(v * 4**z)`` as in the golden model.
    2. ``r = isqrt(V')`` digit by digit: :data:`ROOT_BITS` (31) cycles, one
       root bit per cycle (``rem = 4 rem + next two bits``; subtract
       ``4 root + 1`` when it fits).
    3. ``inv = 2**61 // r`` by a restoring divider: :data:`INV_BITS` (32)
       cycles, one quotient bit per cycle.

    ``v = 0`` (the golden model's ``V == 0`` case) gives ``inv = 0, z = 0``.

    Ports
    -----
    i : stream of ``v`` (unsigned ``v_bits``).
    o : stream of :func:`rsqrt_out_layout` (``z_bits``).

    Parameters
    ----------
    v_bits : int, width of ``v``, 1..1024.

    Attributes
    ----------
    z_bits : signed width of ``z``: ``z`` lies in ``[(62 - v_bits) // 2, 30]``.
    latency : the largest number of cycles from an input transfer to
        ``o.valid`` (``latency_of(v)`` gives the exact count for one ``v``:
        ``2 + normalise steps + 31 + 32``; 1 for ``v = 0``).
    Throughput: one value at a time; the next input is accepted in the cycle
    the result leaves.
    """

    def __init__(self, *, v_bits: int):
        if not isinstance(v_bits, int) or isinstance(v_bits, bool):
            raise TypeError(f"v_bits must be an integer, not {v_bits!r}")
        if not 1 <= v_bits <= 1024:
            raise ValueError(f"v_bits must be in 1..1024, not {v_bits}")
        self.v_bits = v_bits
        self.z_bits = rsqrt_z_bits(v_bits)
        # The normaliser's step count depends only on bitlen(v).
        self.latency = max(self.latency_of(1 << b) for b in range(v_bits))
        super().__init__({
            "i": In(stream.Signature(unsigned(v_bits))),
            "o": Out(stream.Signature(rsqrt_out_layout(self.z_bits))),
        })

    @staticmethod
    def latency_of(v: int) -> int:
        """Cycles from the transfer of ``v`` to ``o.valid`` of its result."""
        if v == 0:
            return 1
        return 2 + _normalise_cycles(v) + ROOT_BITS + INV_BITS

    def elaborate(self, platform):
        m = Module()
        norm = nx.RSQRT_NORM_BITS
        width = max(self.v_bits, norm)
        value = Signal(width)                       # V, then V' (shifted out two bits per root step)
        z = Signal(signed(self.z_bits))
        root = Signal(ROOT_BITS)
        rem = Signal(ROOT_BITS + 3)                 # isqrt remainder <= 2 root < 2**32
        quotient = Signal(INV_BITS)
        div_rem = Signal(ROOT_BITS + 1)             # divider remainder < root
        count = Signal(range(max(ROOT_BITS, INV_BITS) + 1))

        m.d.comb += [self.o.payload.inv.eq(quotient), self.o.payload.z.eq(z)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += [value.eq(self.i.payload), z.eq(0)]
                    with m.If(self.i.payload == 0):
                        m.d.sync += [quotient.eq(0), self.o.valid.eq(1)]
                    with m.Else():
                        m.next = "NORMALISE"
            with m.State("NORMALISE"):
                # bitlen(V) > 62: shift right by the largest step leaving bitlen >= 62;
                # bitlen(V) < 61: shift left by the largest step leaving bitlen <= 62.
                # A right step s fits when bitlen(V) >= 62 + s; a left step s when bitlen(V) <= 62 - s.
                above = [value[norm - 1 + s:] != 0 if norm - 1 + s < width else 0 for s in _NORM_STEPS[:2]]
                below = [value[norm - s:] == 0 for s in _NORM_STEPS]
                with m.If(value[norm:] != 0 if norm < width else 0):
                    with m.If(above[0]):
                        m.d.sync += [value.eq(value >> _NORM_STEPS[0]), z.eq(z - _NORM_STEPS[0] // 2)]
                    with m.Elif(above[1]):
                        m.d.sync += [value.eq(value >> _NORM_STEPS[1]), z.eq(z - _NORM_STEPS[1] // 2)]
                    with m.Else():
                        m.d.sync += [value.eq(value >> _NORM_STEPS[2]), z.eq(z - _NORM_STEPS[2] // 2)]
                with m.Elif(below[-1]):
                    with m.If(below[0]):
                        m.d.sync += [value.eq(value << _NORM_STEPS[0]), z.eq(z + _NORM_STEPS[0] // 2)]
                    with m.Elif(below[1]):
                        m.d.sync += [value.eq(value << _NORM_STEPS[1]), z.eq(z + _NORM_STEPS[1] // 2)]
                    with m.Else():
                        m.d.sync += [value.eq(value << _NORM_STEPS[2]), z.eq(z + _NORM_STEPS[2] // 2)]
                with m.Else():
                    m.d.sync += [root.eq(0), rem.eq(0), count.eq(ROOT_BITS - 1)]
                    m.next = "ROOT"
            with m.State("ROOT"):
                # rem = 4 rem + next two bits of V'; root bit = (rem >= 4 root + 1)
                shifted = Signal(ROOT_BITS + 3)
                trial = Signal(ROOT_BITS + 3)
                m.d.comb += [shifted.eq((rem << 2) | value[norm - 2:norm]), trial.eq((root << 2) | 1)]
                fits = shifted >= trial
                m.d.sync += [rem.eq(Mux(fits, shifted - trial, shifted)), root.eq((root << 1) | fits),
                             value.eq(value << 2), count.eq(count - 1)]
                with m.If(count == 0):
                    # The dividend 2**61 splits into 2**61 >> INV_BITS (< root) and zero low bits.
                    m.d.sync += [div_rem.eq((1 << nx.RSQRT_RECIP_SHIFT) >> INV_BITS), quotient.eq(0),
                                 count.eq(INV_BITS - 1)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                shifted = Signal(ROOT_BITS + 2)
                m.d.comb += shifted.eq(div_rem << 1)
                fits = shifted >= root
                m.d.sync += [div_rem.eq(Mux(fits, shifted - root, shifted)), quotient.eq((quotient << 1) | fits),
                             count.eq(count - 1)]
                with m.If(count == 0):
                    m.d.sync += self.o.valid.eq(1)
                    m.next = "IDLE"
        return m
