"""Index and value of the largest ACT element of a vector (greedy decoding over the logits)."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from .rms_quantize import ROW_LANES

__all__ = ["Argmax", "ARGMAX_IN", "argmax_out_layout"]

#: Input beat: one element (``value[0]``) or, when ``pair``, two consecutive ones (``value[0]``, then
#: ``value[1]``), ACT; ``last`` on the beat with the vector's final element.
ARGMAX_IN = data.StructLayout({"value": data.ArrayLayout(signed(nx.ACT_BITS), ROW_LANES), "pair": 1, "last": 1})


def argmax_out_layout(max_length: int) -> data.StructLayout:
    """Output beat: the index (``0 .. max_length - 1``) and the value of the maximum."""
    return data.StructLayout({"index": unsigned(max(1, (max_length - 1).bit_length())),
                              "value": signed(nx.ACT_BITS)})


class Argmax(wiring.Component):
    """Stream unit: ``(numpy.argmax(x), max(x))`` of each vector, one or two elements per cycle.

    A beat's larger element is its second only when strictly larger, and the
    running maximum is replaced only by a strictly larger one, so the lowest
    index wins a tie, as ``numpy.argmax``. The first beat of each vector
    always starts a new maximum.

    Ports
    -----
    i : stream of :data:`ARGMAX_IN`: each vector's elements in order, one or two a beat in any mix
        (the logits of the BitLinear engine's two-row output beats), ``last`` on the beat with its
        final element.
    o : stream of :func:`argmax_out_layout` (``max_length``): one beat per vector.

    Parameters
    ----------
    max_length : int, the longest vector (e.g. the vocabulary size), >= 1;
        sets the index width. Longer vectors wrap the index.

    Attributes
    ----------
    latency : cycles from the transfer of a ``last`` beat to ``o.valid``: 1.
    Throughput: one beat per cycle; the input stalls only while a result
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
        count = Signal(index_shape)              # index of the beat's first element
        best = Signal(signed(nx.ACT_BITS))
        best_index = Signal(index_shape)
        fresh = Signal(init=1)                   # the incoming beat starts a vector

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        beat = self.i.payload
        second = Signal()                        # the beat's larger element is its second
        x = Signal(signed(nx.ACT_BITS))
        x_index = Signal(index_shape)
        m.d.comb += [second.eq(beat.pair & (beat.value[1] > beat.value[0])),
                     x.eq(Mux(second, beat.value[1], beat.value[0])), x_index.eq(count + second)]
        take = fresh | (x > best)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [count.eq(count + 1 + beat.pair), fresh.eq(beat.last)]
            with m.If(take):
                m.d.sync += [best.eq(x), best_index.eq(x_index)]
            with m.If(beat.last):
                m.d.sync += [self.o.valid.eq(1), count.eq(0),
                             self.o.payload.index.eq(best_index), self.o.payload.value.eq(best)]
                with m.If(take):
                    m.d.sync += [self.o.payload.index.eq(x_index), self.o.payload.value.eq(x)]
        return m
