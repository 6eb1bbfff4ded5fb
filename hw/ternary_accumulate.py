"""Ternary accumulate unit: ``lanes`` rows of a packed ternary matrix times int8 codes."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["TernaryAccumulate", "weight_beat_layout", "decode_words"]

#: Bits of one packed byte of five trits.
PACKED_BITS = nx.PACKED_MAX.bit_length()
#: Signed width of one activation code (|q| <= ACT_CODE_MAX).
CODE_BITS = nx.ACT_CODE_MAX.bit_length() + 1


def weight_beat_layout(lanes: int) -> data.StructLayout:
    """One input beat: ``lanes`` packed bytes (row r in element r), the five codes, end of block."""
    return data.StructLayout({
        "weights": data.ArrayLayout(unsigned(PACKED_BITS), lanes),
        "codes": data.ArrayLayout(signed(CODE_BITS), nx.TRITS_PER_BYTE),
        "last": 1,
    })


def decode_words() -> list[int]:
    """The decode ROM, one word per byte value: trit j of ``TRIT_DECODE_TABLE[v]`` as bits (plus, minus) at 2j."""
    words = []
    for trits in nx.TRIT_DECODE_TABLE:
        word = 0
        for j, t in enumerate(trits):
            word |= (int(t == 1) | int(t == -1) << 1) << (2 * j)
        words.append(word)
    return words


class TernaryAccumulate(wiring.Component):
    """``acc[r] = sum_k q[k] * T[r, k]`` for ``lanes`` rows at once, five inputs per beat.

    Each input beat carries, for one group of five consecutive inputs
    ``k = 5g .. 5g+4``, one packed byte per row (``numerics.pack_trits``
    digit order: ``byte = sum_j (t_j + 1) * 3**j``), which is the weight
    image's block layout (``weight_image.pack_matrix`` with ``lanes`` rows per
    block, or a bus slice of one), and the five int8 activation codes of
    those inputs (|q| <= 127). ``last`` marks the final group of a row block:
    the beat after it starts a new block from zero.

    Per lane and beat: the byte is decoded through ``numerics.TRIT_DECODE_TABLE``
    (256-word ROM ``Memory``s, one synchronous read port per lane, two lanes
    per ROM as on a block RAM; bytes 243..255 decode to zeros), each trit selects
    ``+q_j``, ``-q_j`` or 0 (no multiplier), the five terms are added and the
    sum is accumulated. When the ``last`` beat has been added the ``lanes``
    accumulators are emitted as one output beat (row r in element r).

    Parameters
    ----------
    lanes : int, rows computed in parallel (bytes per input beat), >= 1.
    k : int, the longest input vector a block may have, >= 1; sets the
        accumulator width ``numerics.accumulator_bits(k)``. A block of more
        than ``ceil(k / 5)`` beats, or codes of -128, may overflow it.

    Attributes
    ----------
    acc_bits : signed width of each output accumulator.
    latency : cycles from the transfer of a ``last`` beat to ``o.valid``
        (3: ROM read, select-and-add register, accumulate register).
    Throughput: one input beat (``lanes`` x 5 weights) per cycle. Output
    backpressure stalls the input only when a ``last`` beat reaches the
    accumulator while the previous result is still waiting.

    Raises
    ------
    TypeError / ValueError on a non-integer or out-of-range parameter.
    """

    latency = 3

    def __init__(self, *, lanes: int, k: int):
        for name, value in (("lanes", lanes), ("k", k)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.lanes = lanes
        self.k = k
        self.acc_bits = nx.accumulator_bits(k)
        super().__init__({
            "i": In(stream.Signature(weight_beat_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(self.acc_bits), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        n = nx.TRITS_PER_BYTE
        # |sum of five terms| <= 5 * 127
        term_bits = (n * nx.ACT_CODE_MAX).bit_length() + 1

        # Stage 0: the decode ROM, one synchronous read port per lane; one ROM
        # per two lanes (the two ports of a block RAM), codes and flags
        # registered alongside.
        ports = []
        for pair in range(0, self.lanes, 2):
            rom = Memory(shape=unsigned(2 * n), depth=len(nx.TRIT_DECODE_TABLE), init=decode_words())
            m.submodules[f"decode{pair // 2}"] = rom
            ports += [rom.read_port(domain="sync") for _ in range(min(2, self.lanes - pair))]
        codes0 = Signal(data.ArrayLayout(signed(CODE_BITS), n))
        valid0, last0 = Signal(), Signal()
        # Stage 1: per-lane sum of the five selected terms.
        partial = [Signal(signed(term_bits), name=f"partial{r}") for r in range(self.lanes)]
        valid1, last1 = Signal(), Signal()
        # Stage 2: accumulators; the result waits in o.payload.
        acc = [Signal(signed(self.acc_bits), name=f"acc{r}") for r in range(self.lanes)]

        # A last beat in stage 1 needs the output register free; nothing else stalls.
        stall = self.o.valid & ~self.o.ready & valid1 & last1
        m.d.comb += self.i.ready.eq(~stall)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        for r, port in enumerate(ports):
            m.d.comb += [port.addr.eq(self.i.payload.weights[r]), port.en.eq(~stall)]
        # -q_j once per beat, shared by every lane
        negated = [Signal(signed(CODE_BITS + 1), name=f"negated{j}") for j in range(n)]
        m.d.comb += [negated[j].eq(-codes0[j]) for j in range(n)]

        with m.If(~stall):
            m.d.sync += [valid0.eq(self.i.valid), last0.eq(self.i.payload.last),
                         codes0.eq(self.i.payload.codes),
                         valid1.eq(valid0), last1.eq(last0)]
            for r, port in enumerate(ports):
                trits = port.data
                terms = []
                for j in range(n):
                    plus, minus = trits[2 * j], trits[2 * j + 1]
                    # t * q as a select: +q, -q or 0
                    terms.append(Mux(plus, codes0[j], Mux(minus, negated[j], 0)))
                m.d.sync += partial[r].eq(sum(terms[1:], terms[0]))

            with m.If(valid1):
                for r in range(self.lanes):
                    total = acc[r] + partial[r]   # acc += sum_j t_j * q_j
                    with m.If(last1):
                        m.d.sync += [self.o.payload[r].eq(total), acc[r].eq(0)]
                    with m.Else():
                        m.d.sync += acc[r].eq(total)
                with m.If(last1):
                    m.d.sync += self.o.valid.eq(1)

        return m
