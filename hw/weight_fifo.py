"""The weight FIFO between the DDR reader and the datapath, with its width conversion."""
from __future__ import annotations

from amaranth.hdl import Module, ResetInserter, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .stream_fifo import StreamFifo, check_ram_style
from .width_converter import WidthConverter

__all__ = ["WeightFifo"]


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


class WeightFifo(wiring.Component):
    """Buffer ``depth_bytes`` of the weight stream and re-slice it to the datapath's width.

    The storage is one ``lib.memory`` block ``max(in_bytes, out_bytes)`` bytes
    wide: when the datapath is wider than the reader, words are widened before
    they are stored, so a full FIFO can feed the datapath at its own width;
    when it is narrower, stored words are narrowed on the way out. The
    upstream reader stalls when the FIFO is full, which is what limits how far
    it reads ahead.

    Ports
    -----
    i : stream of ``unsigned(8 * in_bytes)``, the reader's merged words.
    o : stream of ``unsigned(8 * out_bytes)``, the same bytes in order.
    flush : one-cycle pulse (or level): empty the FIFO; what it held is lost.
    empty : no byte held (memory, output register and width converter).

    Parameters
    ----------
    in_bytes, out_bytes : int, powers of two (the reader's word, the datapath's beat).
    depth_bytes : int, capacity in bytes: a power of two, at least
        ``2 * max(in_bytes, out_bytes)`` (e.g. 16-64 KiB).
    ram_style : None or ``"ultra"``/``"block"``, the storage's synthesis ``ram_style``
        (:class:`StreamFifo`).

    Attributes
    ----------
    latency : cycles from an input transfer into an empty FIFO to ``o.valid``:
        ``StreamFifo.latency`` plus 1 when the widths differ.
    """

    def __init__(self, *, in_bytes: int, out_bytes: int, depth_bytes: int, ram_style: str | None = None):
        self.ram_style = check_ram_style(ram_style)
        for name, value in (("in_bytes", in_bytes), ("out_bytes", out_bytes)):
            if not _is_pow2(value):
                raise ValueError(f"{name} must be a power of two, not {value!r}")
        width = max(in_bytes, out_bytes)
        if not _is_pow2(depth_bytes) or depth_bytes < 2 * width:
            raise ValueError(f"depth_bytes must be a power of two of at least {2 * width}, not {depth_bytes!r}")
        self.in_bytes, self.out_bytes, self.depth_bytes = in_bytes, out_bytes, depth_bytes
        self.storage_bytes = width
        self.latency = StreamFifo.latency + (0 if in_bytes == out_bytes else 1)
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * in_bytes))),
            "o": Out(stream.Signature(unsigned(8 * out_bytes))),
            "flush": In(1),
            "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.storage_bytes
        fifo = StreamFifo(shape=unsigned(8 * width), depth=self.depth_bytes // width, ram_style=self.ram_style)
        convert = WidthConverter(in_bytes=self.in_bytes, out_bytes=self.out_bytes)
        m.submodules.fifo = ResetInserter(self.flush)(fifo)
        m.submodules.convert = ResetInserter(self.flush)(convert)
        if self.out_bytes > self.in_bytes:          # widen, then store
            wiring.connect(m, wiring.flipped(self.i), convert.i)
            wiring.connect(m, convert.o, fifo.i)
            wiring.connect(m, fifo.o, wiring.flipped(self.o))
        else:                                       # store, then narrow (or pass)
            wiring.connect(m, wiring.flipped(self.i), fifo.i)
            wiring.connect(m, fifo.o, convert.i)
            wiring.connect(m, convert.o, wiring.flipped(self.o))
        m.d.comb += self.empty.eq((fifo.level == 0) & convert.empty)
        return m
