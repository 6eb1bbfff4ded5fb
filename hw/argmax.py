"""Index and value of the largest ACT element of a vector (greedy decoding over the logits)."""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["Argmax", "ARGMAX_IN", "argmax_out_layout"]

#: Input beat: one ACT element and the end-of-vector flag.
ARGMAX_IN = data.StructLayout({"value": signed(nx.ACT_BITS), "last": 1})


def argmax_out_layout(max_length: int) -> data.StructLayout:
    """Output beat: the index (``0 .. max_length - 1``) and the value of the maximum."""
    return data.StructLayout({"index": unsigned(max(1, (max_length - 1).bit_length())),
                              "value": signed(nx.ACT_BITS)})


class Argmax(wiring.Component):
    """Stream unit: ``(numpy.argmax(x), max(x))`` of each vector, one element per cycle.

    The running maximum is replaced only by a strictly larger element, so the
    lowest index wins a tie, as ``numpy.argmax``. The first element of each
    vector always starts a new maximum.

    Ports
    -----
    i : stream of :data:`ARGMAX_IN`, ``last`` on each vector's final element.
    o : stream of :func:`argmax_out_layout` (``max_length``): one beat per vector.

    Parameters
    ----------
    max_length : int, the longest vector (e.g. the vocabulary size), >= 1;
        sets the index width. Longer vectors wrap the index.

    Attributes
    ----------
    latency : cycles from the transfer of a ``last`` element to ``o.valid``: 1.
    Throughput: one element per cycle; the input stalls only while a result
    waits at the output under backpressure.

    Raises
    ------
    TypeError / ValueError on a non-integer or out-of-range ``max_length``.
    """

    latency = 1

    def __init__(self, *, max_length: int):
        if not isinstance(max_length, int) or isinstance(max_length, bool):
            raise TypeError(f"max_length must be an integer, not {max_length!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        self.max_length = max_length
        super().__init__({
            "i": In(stream.Signature(ARGMAX_IN)),
            "o": Out(stream.Signature(argmax_out_layout(max_length))),
        })

    def elaborate(self, platform):
        m = Module()
        index_shape = self.o.payload.index.shape()
        count = Signal(index_shape)              # index of the incoming element
        best = Signal(signed(nx.ACT_BITS))
        best_index = Signal(index_shape)
        fresh = Signal(init=1)                   # the incoming element starts a vector

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        x = self.i.payload.value
        take = fresh | (x > best)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [count.eq(count + 1), fresh.eq(self.i.payload.last)]
            with m.If(take):
                m.d.sync += [best.eq(x), best_index.eq(count)]
            with m.If(self.i.payload.last):
                m.d.sync += [self.o.valid.eq(1), count.eq(0),
                             self.o.payload.index.eq(best_index), self.o.payload.value.eq(best)]
                with m.If(take):
                    m.d.sync += [self.o.payload.index.eq(count), self.o.payload.value.eq(x)]
        return m
