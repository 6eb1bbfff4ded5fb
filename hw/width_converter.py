"""Stream width conversion by a power-of-two ratio, little-endian (first byte at bits [7:0])."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WidthConverter"]


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


class WidthConverter(wiring.Component):
    """Re-slice a byte stream from ``in_bytes``-wide words to ``out_bytes``-wide words.

    The byte order is kept: the stream is a sequence of bytes, byte ``j`` of a
    word at bits ``[8j+7:8j]``, earlier words holding earlier bytes. Widening
    collects ``out_bytes / in_bytes`` input words into one output word (the
    first in the low bits); narrowing emits ``in_bytes / out_bytes`` output
    words per input word, low slice first. A partial output word is held
    until completed: the byte count must be a multiple of ``out_bytes``.

    Ports
    -----
    i : stream of ``unsigned(8 * in_bytes)``.
    o : stream of ``unsigned(8 * out_bytes)``.
    empty : no input byte is held inside (no partial word, no word waiting).

    Parameters
    ----------
    in_bytes, out_bytes : int, powers of two; either may be the larger.

    Attributes
    ----------
    latency : 1 cycle from the input transfer that completes (or, narrowing,
        supplies) an output word to its ``o.valid``; 0 when the widths are equal
        (a wire). Throughput: one input word per cycle when widening, one
        output word per cycle when narrowing.
    """

    def __init__(self, *, in_bytes: int, out_bytes: int):
        for name, value in (("in_bytes", in_bytes), ("out_bytes", out_bytes)):
            if not _is_pow2(value):
                raise ValueError(f"{name} must be a power of two, not {value!r}")
        self.in_bytes, self.out_bytes = in_bytes, out_bytes
        self.latency = 0 if in_bytes == out_bytes else 1
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * in_bytes))),
            "o": Out(stream.Signature(unsigned(8 * out_bytes))),
            "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        iw, ow = 8 * self.in_bytes, 8 * self.out_bytes
        if iw == ow:
            m.d.comb += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid),
                         self.i.ready.eq(self.o.ready), self.empty.eq(~self.i.valid)]
        elif ow > iw:
            k = ow // iw
            parts = Signal(unsigned(ow - iw))       # the first k-1 words of the word being built
            n = Signal(range(k))                    # input words collected so far
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += self.o.valid.eq(0)
            # Only the word that completes an output must wait for the output register.
            m.d.comb += [self.i.ready.eq((n != k - 1) | ~self.o.valid | self.o.ready),
                         self.empty.eq((n == 0) & ~self.o.valid)]
            with m.If(self.i.valid & self.i.ready):
                with m.If(n == k - 1):
                    m.d.sync += [self.o.payload.eq(Cat(parts, self.i.payload)), self.o.valid.eq(1), n.eq(0)]
                with m.Else():
                    m.d.sync += [parts.word_select(n, iw).eq(self.i.payload), n.eq(n + 1)]
        else:
            k = iw // ow
            word = Signal(unsigned(iw))
            n = Signal(range(k))                    # next slice to emit
            m.d.comb += [self.o.payload.eq(word.word_select(n, ow)),
                         self.i.ready.eq(~self.o.valid | (self.o.ready & (n == k - 1))),
                         self.empty.eq(~self.o.valid)]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += n.eq(n + 1)
                with m.If(n == k - 1):
                    m.d.sync += [self.o.valid.eq(0), n.eq(0)]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [word.eq(self.i.payload), self.o.valid.eq(1), n.eq(0)]
        return m
