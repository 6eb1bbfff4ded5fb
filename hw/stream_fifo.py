"""A synchronous stream FIFO in one ``lib.memory`` block (block RAM on an FPGA)."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["StreamFifo", "RAM_STYLES", "check_ram_style", "ram_style_attrs"]

#: Synthesis ``ram_style`` values a large memory may ask for (yosys and Vivado both read the attribute).
RAM_STYLES = ("block", "ultra")


def check_ram_style(ram_style: str | None) -> str | None:
    """``ram_style`` itself when it is None or one of :data:`RAM_STYLES`; ValueError otherwise."""
    if ram_style is not None and ram_style not in RAM_STYLES:
        raise ValueError(f"ram_style must be None or one of {', '.join(RAM_STYLES)}, not {ram_style!r}")
    return ram_style


def ram_style_attrs(ram_style: str | None) -> dict:
    """Memory attributes for ``ram_style`` (none when it is None, so the Verilog stays as before)."""
    return {} if ram_style is None else {"ram_style": ram_style}


class StreamFifo(wiring.Component):
    """First-in first-out buffer between two streams.

    The entries live in a ``lib.memory.Memory`` of ``depth`` words with a
    synchronous read port (so it maps to block RAM); the word at the head is
    read one cycle ahead into the read port's output register, which is the
    ``o`` payload. Neither ``i.ready`` nor ``o.valid`` depends combinationally
    on the other side.

    Ports
    -----
    i : input stream of ``shape``.
    o : output stream of ``shape``, in input order.
    level : entries held (memory plus the output register), 0 .. ``depth + 1``.

    Parameters
    ----------
    shape : the payload shape (any shape-castable, e.g. ``unsigned(128)`` or a layout).
    depth : int >= 2, entries in the memory; the FIFO holds ``depth + 1`` in all.
    ram_style : None or a synthesis ``ram_style`` for the memory (``"ultra"``: UltraRAM on
        UltraScale+, where a deep, wide FIFO would otherwise take many block RAMs).

    Attributes
    ----------
    latency : 2, cycles from an input transfer to ``o.valid`` when the FIFO was empty.
    Throughput: one transfer per cycle on each side.
    """

    latency = 2

    def __init__(self, *, shape, depth: int, ram_style: str | None = None):
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise TypeError(f"depth must be an integer, not {depth!r}")
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth}")
        self.shape, self.depth = shape, depth
        self.ram_style = check_ram_style(ram_style)
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 2)),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        m.submodules.storage = mem = Memory(shape=self.shape, depth=depth, init=[],
                                            attrs=ram_style_attrs(self.ram_style))
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")

        stored = Signal(range(depth + 1))          # entries in the memory (not yet read out)
        wptr = Signal(range(depth))
        rptr = Signal(range(depth))
        push = Signal()
        load = Signal()                            # read the head into the output register
        m.d.comb += [
            self.i.ready.eq(stored < depth),
            push.eq(self.i.valid & self.i.ready),
            load.eq((stored != 0) & (~self.o.valid | self.o.ready)),
            wr.en.eq(push), wr.addr.eq(wptr), wr.data.eq(self.i.payload),
            rd.en.eq(load), rd.addr.eq(rptr),
            # The read port's register holds its word while rd.en is low: it is the output stage.
            self.o.payload.eq(rd.data),
            self.level.eq(stored + self.o.valid),
        ]
        with m.If(push):
            m.d.sync += wptr.eq(Mux(wptr == depth - 1, 0, wptr + 1))
        with m.If(load):
            m.d.sync += [rptr.eq(Mux(rptr == depth - 1, 0, rptr + 1)), self.o.valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += stored.eq(stored + push - load)
        return m
