"""The BitLinear engine: one STREAM record of the weight image per run, bit exact with ``golden_int``."""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx
from mmfree.models.weight_image import (CONSUMER_WORD, GAIN_WORD, GATE_WORD, MAX_CONSUMERS, RECORD_HEADER_BYTES,
                                        RECORD_MAGIC, STREAM_ALIGN, NormSource, RecordKind)

from .rescale import EXP_SHAPE, SCALE_OUT_BITS, Rescale
from .rms_quantize import (CODES_LAYOUT, EC_BITS, EPS_SHIFT_MAX, EPS_SHIFT_MIN, FRAC_MAX, X_FRAC_MAX, X_LAYOUT,
                           RmsQuantize)
from .stream_fifo import StreamFifo
from .ternary_accumulate import TernaryAccumulate

__all__ = ["BitLinearEngine", "Y_LAYOUT", "X_LAYOUT"]

#: One output: the consumer (matrix) it belongs to, its ACT value, end of that consumer's rows.
Y_LAYOUT = data.StructLayout({"consumer": unsigned(2), "value": signed(nx.ACT_BITS), "last": 1})

_WORD = 32
#: Bytes of one gain word (a 24-bit mantissa, sign-extended) and of one lower-bound gate (GATE, uint32).
_GAIN_WORD_BYTES = np.dtype(GAIN_WORD).itemsize
_GATE_WORD_BYTES = np.dtype(GATE_WORD).itemsize
assert _GAIN_WORD_BYTES == _GATE_WORD_BYTES, "gains and gates share the engine's word lanes"
# Header word order (weight_image's module docstring; it exports only CONSUMER_WORD):
# [RECORD_MAGIC | kind, K, n, frac_a, norm source, eps mantissa, eps shift, x_frac, (N, frac_g, Cm, ec) x 3].
_W_K, _W_CONSUMERS, _W_FRAC_A, _W_SOURCE, _W_EPS_MANT, _W_EPS_SHIFT, _W_X_FRAC = range(1, CONSUMER_WORD)
# ceil(K / 5) without a divider: floor(n * 52429 / 2**18) = n // 5 for every n < 2**16 + 8.
_DIV5_MUL, _DIV5_SHIFT = 52429, 18


def _tag_layout(rows_per_block: int) -> data.StructLayout:
    """What travels with each block from the matrix stream to the output serializer."""
    return data.StructLayout({
        "consumer": unsigned(2),
        "rows": unsigned(rows_per_block.bit_length()),      # rows of the block that exist (< R in the last)
        "last": 1,                                          # the consumer's last block
        "first": 1,                                         # the record's first block: take its scales
    })


#: What travels beside each element through the rescale: its consumer and last flag.
_SIDE_LAYOUT = data.StructLayout({"consumer": unsigned(2), "last": 1})


class BitLinearEngine(wiring.Component):
    """One STREAM record (``weight_image``) per run: a BitLinear's every consumer, or a layer's gates.

    The ``weights`` stream is the STREAM region cut into ``E``-byte beats.
    Idle, the engine takes the next beat as the first of a record header
    (``RECORD_HEADER_BYTES``); it then consumes exactly that record (every
    part, padding included) and is idle again.

    * ``BITLINEAR`` (``golden_int.IntegerModel.bitlinear``): the header's
      scalars and the gains (A, then each consumer's G; int32 words holding
      24-bit mantissas, ``E/4`` per beat, the low 24 bits of each taken) go
      to :class:`~mmfree.hw.rms_quantize.RmsQuantize`, which also takes the
      record's input vector from ``x`` (its max pass rides on the gain
      load) and returns the int8 codes (five per word, into the code memory)
      and each consumer's output scale. Every consumer's packed matrix then
      streams through :class:`~mmfree.hw.ternary_accumulate.TernaryAccumulate`
      one beat per cycle (the code word of the beat's group read alongside),
      with no bubble between blocks or consumers; the first block follows the
      code pass group by group instead of waiting for it, and the eps, rsqrt
      and scale steps run under it. The accumulators (``E`` per beat) are
      buffered and rescaled one per cycle (:class:`~mmfree.hw.rescale.Rescale`)
      onto ``y``. Rows padded up to a multiple of R are dropped.
    * ``LOWER_BOUND``: after every earlier output has left, the D gates
      (uint32 words, GATE Q0.32, zero-extended to ACT width) go out on ``y``
      with consumer 0.

    The output side (buffer, rescale, ``y``) runs on its own: the next
    record's header, gains and codes proceed while the previous record's last
    results wait for ``y.ready``; and ``x`` for the next record is taken as
    soon as this record's code pass has read its own.

    Ports
    -----
    weights : stream of ``8 E``-bit beats, byte i at bits ``[8i, 8i+8)``.
    x : stream of :data:`~mmfree.hw.rms_quantize.X_LAYOUT`: a BITLINEAR
        record's K inputs (``value``, signed 48: ACT, the record's ``x_frac``
        being 32), ``last`` on the final one; ``norm`` (signed 48, ACT) is the
        pre-norm's input n for ``NormSource.GATE`` records (ignored otherwise).
        LOWER_BOUND records take none.
    y : stream of :data:`Y_LAYOUT`: ``value`` signed 48 (ACT; a gate is
        0 .. 2**32 - 1, Q0.32); consumer 0's rows, then consumer 1's, ...,
        ``last`` on each consumer's final row; or the gates.
    busy : a record is in progress or outputs are still owed.
    phase : 1 while a header, gains or the input stage run (prep), 2 while
        matrix beats are consumed (matvec), 0 otherwise (idle, gate output).
    error : a header with a wrong magic or kind, K or N out of range (0 or above
        ``max_k`` / ``max_rows``), or a field outside the supported ranges
        (``hw.rms_quantize``: consumers 1..3, norm source 0..2, frac_a and
        frac_g 0..39, eps_shift 23..63, eps mantissa below 2**24, Cm below
        2**31, x_frac 0..32, ec a signed byte). The engine then takes no more beats;
        sticky until ``clear_error``, which also returns it to idle.
    weight_wait : the engine wants a weight beat and ``weights.valid`` is low
        (this includes waiting for the next record's header).

    Parameters
    ----------
    engine_bytes : int, E, bytes per weight beat: a power of two, 8..64.
    rows_per_block : int, R, the image's rows_per_block: a positive multiple of E, at most 4096.
    max_k : int, the longest input vector (max(D, I)), 1..65535.
    max_rows : int, the most rows of a consumer (max(2I, V)), 1..2**24 - 1.
    elements_per_cycle : int, P, elements per cycle of the input stage's code
        pass: 1, 2 or 4, at most ``E/4`` (default 1; see ``RmsQuantize`` for
        what it costs).

    Attributes
    ----------
    header_beats : ``RECORD_HEADER_BYTES / E``.
    gain_beats(k, consumers) : ``(1 + consumers) * part_beats(4 k)``.
    prep_cycles(k, consumers) : cycles from a BITLINEAR record's first header
        beat to its first matrix beat when beats are always there and x is
        complete before the gains end: the header beats, the gain beats
        (``gain_beats``: ``1 + consumers`` parts of K int32 words, each padded
        to 64 bytes, ``E/4`` words per beat) minus the last gain part's
        padding (which the input stage does not wait for),
        the input stage's ``first_codes_cycles`` (the max pass rides on the
        gain load; normalise, reciprocals, the first group of codes) and
        ``PREP_OVERHEAD``. Eps, rsqrt and the scales overlap the matrices.
    matvec_cycles(k, rows) : cycles from the first to one past the last matrix
        beat, the output side keeping up (``K / 5 >= E``): the matrix beats
        (``matvec_beats``) plus the cycles the first block waits for codes
        (none when ``R / E >= 5 / P``).
    """

    def __init__(self, *, engine_bytes: int, rows_per_block: int, max_k: int, max_rows: int,
                 elements_per_cycle: int = 1):
        for name, value in (("engine_bytes", engine_bytes), ("rows_per_block", rows_per_block),
                            ("max_k", max_k), ("max_rows", max_rows), ("elements_per_cycle", elements_per_cycle)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if engine_bytes not in (8, 16, 32, 64):
            raise ValueError(f"engine_bytes must be a power of two in 8..64, not {engine_bytes}")
        if not 1 <= rows_per_block <= 4096 or rows_per_block % engine_bytes:
            raise ValueError(f"rows_per_block must be a positive multiple of engine_bytes ({engine_bytes}), "
                             f"at most 4096, not {rows_per_block}")
        if not 1 <= max_k <= 65535:
            raise ValueError(f"max_k must be in 1..65535, not {max_k}")
        if not 1 <= max_rows < (1 << 24):
            raise ValueError(f"max_rows must be in 1..16777215, not {max_rows}")
        if elements_per_cycle not in (1, 2, 4) or elements_per_cycle > engine_bytes // _GAIN_WORD_BYTES:
            raise ValueError(f"elements_per_cycle must be 1, 2 or 4 and at most engine_bytes / "
                             f"{_GAIN_WORD_BYTES} ({engine_bytes // _GAIN_WORD_BYTES}), not {elements_per_cycle}")
        self.elements_per_cycle = elements_per_cycle
        self.engine_bytes, self.rows_per_block = engine_bytes, rows_per_block
        self.max_k, self.max_rows = max_k, max_rows
        self.header_beats = RECORD_HEADER_BYTES // engine_bytes
        self.acc_bits = nx.accumulator_bits(max_k)
        # The input stage, built here: its cycle figures serve prep_cycles.
        self._input = RmsQuantize(max_k=max_k, gain_lanes=engine_bytes // _GAIN_WORD_BYTES,
                                  elements_per_cycle=elements_per_cycle)
        super().__init__({
            "weights": In(stream.Signature(unsigned(8 * engine_bytes))),
            "x": In(stream.Signature(X_LAYOUT)),
            "y": Out(stream.Signature(Y_LAYOUT)),
            "busy": Out(1), "phase": Out(2), "error": Out(1), "clear_error": In(1), "weight_wait": Out(1),
        })

    # -- cycle model ---------------------------------------------------------
    #: Fixed cycles of :meth:`prep_cycles`: the header check and the input stage's params.
    PREP_OVERHEAD = 2

    def part_beats(self, nbytes: int) -> int:
        """Beats of one record part of ``nbytes`` bytes, padded to 64 bytes."""
        return -(-nbytes // STREAM_ALIGN) * STREAM_ALIGN // self.engine_bytes

    def gain_beats(self, k: int, consumers: int) -> int:
        """Beats of a BITLINEAR record's gain parts: A and each consumer's G, K int32 words each."""
        return (1 + consumers) * self.part_beats(_GAIN_WORD_BYTES * k)

    def prep_cycles(self, k: int, consumers: int) -> int:
        last_padding = self.part_beats(_GAIN_WORD_BYTES * k) - -(-_GAIN_WORD_BYTES * k // self.engine_bytes)
        return (self.header_beats + self.gain_beats(k, consumers) - last_padding + self._input.first_codes_cycles
                + self.PREP_OVERHEAD)

    def matvec_beats(self, k: int, rows) -> int:
        groups = -(-k // nx.TRITS_PER_BYTE)
        return sum(self.part_beats(-(-n // self.rows_per_block) * groups * self.rows_per_block) for n in rows)

    def matvec_cycles(self, k: int, rows) -> int:
        # Codes of group g leave the input stage t_g cycles after group 0's (one issue of
        # P elements per cycle; a final group completed together with another leaves a
        # cycle later); a beat of group g can follow at t_g at the earliest.
        P, D = self.elements_per_cycle, self.rows_per_block // self.engine_bytes
        groups = -(-k // nx.TRITS_PER_BYTE)
        t = [min(nx.TRITS_PER_BYTE * g + nx.TRITS_PER_BYTE - 1, k - 1) // P for g in range(groups)]
        if groups >= 2 and t[-1] == t[-2]:
            t[-1] += 1
        now = 0
        for g in range(groups):
            now = max(now, t[g] - t[0]) + D
        return self.matvec_beats(k, rows) + now - groups * D

    # -- hardware ------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        E, R = self.engine_bytes, self.rows_per_block
        D = R // E                                   # beats per group, accumulator beats per block
        C = MAX_CONSUMERS
        gl = E // _GAIN_WORD_BYTES                   # gain (or gate) words per beat
        gl_log2 = gl.bit_length() - 1
        align_beats = STREAM_ALIGN // E              # parts end on 64-byte boundaries
        groups_max = -(-self.max_k // nx.TRITS_PER_BYTE)

        m.submodules.input = rms = self._input
        m.submodules.accumulate = acc = TernaryAccumulate(lanes=E, k=self.max_k, rows_per_block=R)
        acc_beat = acc.o.payload.shape()
        m.submodules.acc_fifo = acc_fifo = StreamFifo(shape=acc_beat, depth=max(2, 2 * D))
        tag_layout = _tag_layout(R)
        m.submodules.tag_fifo = tag_fifo = StreamFifo(shape=tag_layout, depth=8)
        scales_layout = data.StructLayout({"scale": data.ArrayLayout(unsigned(SCALE_OUT_BITS), C),
                                           "exp": data.ArrayLayout(signed(rms.exp_bits), C)})
        m.submodules.scale_fifo = scale_fifo = StreamFifo(shape=scales_layout, depth=2)
        m.submodules.rescale = rescale = Rescale(acc_bits=self.acc_bits)
        m.submodules.side_fifo = side_fifo = StreamFifo(shape=_SIDE_LAYOUT, depth=Rescale.latency + 1)
        m.submodules.codes = code_mem = Memory(shape=CODES_LAYOUT.members["codes"], depth=groups_max,
                                               init=[])
        code_wr, code_rd = code_mem.write_port(), code_mem.read_port(domain="sync")
        wiring.connect(m, acc.o, acc_fifo.i)
        wiring.connect(m, wiring.flipped(self.x), rms.x)

        # ---- the record header ------------------------------------------------
        header = Signal(8 * RECORD_HEADER_BYTES)

        def word(i):
            return header.word_select(i, _WORD).as_signed()

        kind = header[:16]
        magic_ok = header[16:32] == (RECORD_MAGIC >> 16)
        k = word(_W_K)
        consumers = word(_W_CONSUMERS)
        rows = [word(CONSUMER_WORD + 4 * c) for c in range(C)]
        frac_g = [word(CONSUMER_WORD + 4 * c + 1) for c in range(C)]
        cm = [word(CONSUMER_WORD + 4 * c + 2) for c in range(C)]
        ec = [word(CONSUMER_WORD + 4 * c + 3) for c in range(C)]

        def within(v, lo, hi):
            return (v >= lo) & (v <= hi)

        bitlinear_ok = (within(consumers, 1, C) & within(word(_W_FRAC_A), 0, FRAC_MAX)
                        & within(word(_W_SOURCE), 0, max(NormSource))
                        & within(word(_W_EPS_MANT), 0, (1 << nx.EPS_MANT_BITS) - 1)
                        & within(word(_W_EPS_SHIFT), EPS_SHIFT_MIN, EPS_SHIFT_MAX)
                        & within(word(_W_X_FRAC), 0, X_FRAC_MAX))
        for c in range(C):
            bitlinear_ok &= (c >= consumers) | (within(rows[c], 1, self.max_rows) & within(frac_g[c], 0, FRAC_MAX)
                                                & within(cm[c], 0, (1 << nx.SCALE_BITS) - 1)
                                                & within(ec[c], -(1 << (EC_BITS - 1)), (1 << (EC_BITS - 1)) - 1))
        header_ok = magic_ok & within(k, 1, self.max_k) & (
            (kind == RecordKind.LOWER_BOUND) | ((kind == RecordKind.BITLINEAR) & bitlinear_ok))

        p = rms.params.payload
        m.d.comb += [p.k.eq(k), p.consumers.eq(consumers), p.frac_a.eq(word(_W_FRAC_A)),
                     p.source.eq(word(_W_SOURCE)), p.eps_mant.eq(word(_W_EPS_MANT)),
                     p.eps_shift.eq(word(_W_EPS_SHIFT)), p.x_frac.eq(word(_W_X_FRAC))]
        for c in range(C):
            m.d.comb += [p.frac_g[c].eq(frac_g[c]), p.cm[c].eq(cm[c]), p.ec[c].eq(ec[c])]

        # ---- codes from the input stage into the code memory ----------------------
        code_addr = Signal(range(groups_max + 1))
        groups = Signal(range(groups_max + 1))       # ceil(K / 5) of the current record
        codes_done = Signal()
        m.d.comb += [rms.codes.ready.eq(1), code_wr.addr.eq(code_addr), code_wr.data.eq(rms.codes.payload.codes),
                     code_wr.en.eq(rms.codes.valid)]
        with m.If(rms.codes.valid):
            m.d.sync += code_addr.eq(code_addr + 1)
            with m.If(rms.codes.payload.last):
                m.d.sync += [code_addr.eq(0), codes_done.eq(1)]
        # The scales wait in a FIFO for the record's first output block.
        m.d.comb += [scale_fifo.i.valid.eq(rms.scales.valid), rms.scales.ready.eq(scale_fifo.i.ready)]
        for c in range(C):
            m.d.comb += [scale_fifo.i.payload.scale[c].eq(rms.scales.payload.scale[c]),
                         scale_fifo.i.payload.exp[c].eq(rms.scales.payload.exp[c])]

        # ---- the record parser ------------------------------------------------------
        want = Signal()                  # the engine takes a beat this cycle if one is there
        take = Signal()
        m.d.comb += [self.weights.ready.eq(want), take.eq(want & self.weights.valid),
                     self.weight_wait.eq(want & ~self.weights.valid)]
        beat = self.weights.payload
        count = Signal(range(max(self.header_beats, -(-self.max_k // gl), 2) + 1))   # beats of the part
        align = Signal(range(max(align_beats, 2)))  # beats of the part modulo 64 bytes
        part = Signal(range(C + 2))
        data_beats = Signal(range(-(-self.max_k // gl) + 1))   # ceil(K / (E/4))
        padding = Signal()                         # consuming a part's padding beats
        error = Signal()
        m.d.comb += self.error.eq(error)
        next_align = Signal.like(align)
        m.d.comb += next_align.eq(Mux(align == align_beats - 1, 0, align + 1))
        with m.If(take):
            m.d.sync += align.eq(next_align)

        # Matrix walk: consumer, block, group, beat within the group.
        cons = Signal(range(C))
        grp = Signal(range(groups_max + 1))
        sub = Signal(range(max(D, 2)))
        rows_left = Signal(range(self.max_rows + 1))     # rows of this consumer from the current block on
        matvec_started = Signal()
        block_first = (grp == 0) & (sub == 0) & ~padding
        block_last_beat = (grp == groups - 1) & (sub == D - 1)
        consumer_last_block = rows_left <= R
        # Stage B: the beat and its group's codes, presented to TernaryAccumulate.
        b_valid, b_last, b_cons = Signal(), Signal(), Signal(range(C))
        b_bytes = Signal(8 * E)
        m.d.comb += [code_rd.addr.eq(grp), acc.i.valid.eq(b_valid), acc.i.payload.last.eq(b_last),
                     acc.i.payload.codes.eq(code_rd.data[b_cons])]
        for r in range(E):
            m.d.comb += acc.i.payload.weights[r].eq(b_bytes[8 * r: 8 * r + 8])
        with m.If(acc.i.ready):
            m.d.sync += b_valid.eq(0)

        # Outputs owed on y by the output side (rows of blocks already started).
        owed = Signal(range(self.max_rows * C + R + 1))
        owed_add = Signal(range(R + 1))
        owed_sub = Signal()
        m.d.sync += owed.eq(owed + owed_add - owed_sub)

        # Gate output of a LOWER_BOUND record.
        lb_full = Signal()
        lb_beat = Signal(8 * E)
        lb_lane = Signal(range(gl))
        lb_left = Signal(range(self.max_k + 1))
        lb_valid = Signal()

        phase = Signal(2)
        m.d.comb += self.phase.eq(phase)
        busy_record = Signal()
        m.d.comb += self.busy.eq(busy_record | (owed != 0) | b_valid)

        with m.FSM() as fsm:
            with m.State("HEADER"):
                m.d.comb += [want.eq(1), phase.eq(Mux(count == 0, 0, 1)), busy_record.eq(count != 0)]
                with m.If(take):
                    m.d.sync += [header.word_select(count, 8 * E).eq(beat), count.eq(count + 1)]
                    with m.If(count == self.header_beats - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [phase.eq(1), busy_record.eq(1)]
                # ceil(K / 5) = floor((K + 4) * 52429 / 2**18), exact for K < 2**16
                m.d.sync += [data_beats.eq((k + gl - 1) >> gl_log2), part.eq(0), padding.eq(0), count.eq(0),
                             lb_left.eq(k), groups.eq(((k[:17] + 4) * _DIV5_MUL) >> _DIV5_SHIFT)]
                with m.If(~header_ok):
                    m.d.sync += error.eq(1)
                    m.next = "ERROR"
                with m.Elif(kind == RecordKind.LOWER_BOUND):
                    m.next = "GATES"
                with m.Else():
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += [phase.eq(1), busy_record.eq(1), rms.params.valid.eq(1)]
                with m.If(rms.params.ready):
                    m.next = "GAINS"
            with m.State("GAINS"):
                # A, then G_0 .. G_{n-1}: ceil(K / (E/4)) beats to the input stage, then padding.
                # Each int32 word holds a sign-extended 24-bit mantissa: its low 24 bits are it.
                m.d.comb += [phase.eq(1), busy_record.eq(1), rms.gains.valid.eq(self.weights.valid & ~padding),
                             want.eq(padding | rms.gains.ready)]
                m.d.comb += [rms.gains.payload[i].eq(beat.word_select(i, 8 * _GAIN_WORD_BYTES)[:nx.GAIN_BITS])
                             for i in range(gl)]
                with m.If(take):
                    m.d.sync += count.eq(count + 1)
                    part_done = Signal()
                    with m.If(~padding & (count == data_beats - 1)):
                        m.d.sync += [padding.eq(1)]
                        m.d.comb += part_done.eq(next_align == 0)
                    with m.If(padding):
                        m.d.comb += part_done.eq(next_align == 0)
                    with m.If(part_done):
                        m.d.sync += [padding.eq(0), count.eq(0), part.eq(part + 1)]
                        with m.If(part == consumers):
                            m.d.sync += [cons.eq(0), grp.eq(0), sub.eq(0), rows_left.eq(rows[0]),
                                         matvec_started.eq(0)]
                            m.next = "MATVEC"
            with m.State("MATVEC"):
                # The matrices follow the code pass group by group: a beat needs its
                # group's codes written (the first block runs behind the code pass).
                m.d.comb += [phase.eq(Mux(matvec_started, 2, 1)), busy_record.eq(1)]
                # A beat moves into stage B when it is free (or frees this cycle), and a
                # block's first beat also needs room for its tag.
                stage_free = ~b_valid | acc.i.ready
                codes_there = codes_done | (grp < code_addr)
                m.d.comb += want.eq(padding | (stage_free & codes_there & (~block_first | tag_fifo.i.ready)))
                with m.If(take):
                    m.d.sync += matvec_started.eq(1)
                tag = tag_fifo.i.payload
                m.d.comb += [tag.consumer.eq(cons), tag.rows.eq(Mux(consumer_last_block, rows_left, R)),
                             tag.last.eq(consumer_last_block), tag.first.eq((cons == 0) & (rows_left == rows[0])),
                             code_rd.en.eq(take & ~padding)]
                next_consumer = Signal()
                with m.If(take & ~padding):
                    m.d.sync += [b_valid.eq(1), b_bytes.eq(beat), b_cons.eq(cons),
                                 b_last.eq(block_last_beat)]
                    with m.If(block_first):
                        m.d.comb += [tag_fifo.i.valid.eq(1), owed_add.eq(tag.rows)]
                    m.d.sync += sub.eq(sub + 1)
                    with m.If(sub == D - 1):
                        m.d.sync += [sub.eq(0), grp.eq(grp + 1)]
                        with m.If(grp == groups - 1):
                            m.d.sync += [grp.eq(0), rows_left.eq(rows_left - R)]
                            with m.If(consumer_last_block):
                                with m.If(next_align != 0):
                                    m.d.sync += padding.eq(1)
                                with m.Else():
                                    m.d.comb += next_consumer.eq(1)
                with m.If(take & padding & (next_align == 0)):
                    m.d.sync += padding.eq(0)
                    m.d.comb += next_consumer.eq(1)
                with m.If(next_consumer):
                    m.d.sync += cons.eq(cons + 1)
                    with m.Switch(cons):
                        for c in range(C - 1):
                            with m.Case(c):
                                m.d.sync += rows_left.eq(rows[c + 1])
                    with m.If(cons == consumers - 1):
                        m.d.sync += codes_done.eq(0)
                        m.next = "HEADER"
            with m.State("GATES"):
                # After every earlier output has left: K gates, E/4 per beat, then padding.
                m.d.comb += busy_record.eq(1)
                with m.If(owed == 0):
                    m.d.comb += want.eq(Mux(padding, align != 0, ~lb_full))
                    with m.If(take):
                        m.d.sync += count.eq(count + 1)
                        with m.If(~padding):
                            m.d.sync += [lb_full.eq(1), lb_beat.eq(beat), lb_lane.eq(0)]
                            with m.If(count == data_beats - 1):
                                m.d.sync += padding.eq(1)
                    m.d.comb += lb_valid.eq(lb_full)
                    with m.If(lb_full & self.y.ready):
                        m.d.sync += [lb_lane.eq(lb_lane + 1), lb_left.eq(lb_left - 1)]
                        with m.If((lb_lane == gl - 1) | (lb_left == 1)):
                            m.d.sync += lb_full.eq(0)
                    done = padding & (align == 0) & ~lb_full & (lb_left == 0)
                    with m.If(done):
                        m.d.sync += [padding.eq(0), count.eq(0)]
                        m.next = "HEADER"
            with m.State("ERROR"):
                with m.If(self.clear_error):
                    m.d.sync += [error.eq(0), count.eq(0), padding.eq(0), align.eq(0)]
                    m.next = "HEADER"
        with m.If(self.clear_error & ~fsm.ongoing("ERROR")):
            m.d.sync += error.eq(0)

        # ---- output side: accumulator beats -> one element per cycle -> rescale -> y ----
        ser_active = Signal()
        ser_tag = Signal(tag_layout)
        ser_beat = Signal(range(max(D, 2)))
        ser_lane = Signal(range(E))
        ser_row = Signal(range(R + E + 1))
        cur = Signal(scales_layout)
        row_exists = ser_row < ser_tag.rows
        beat_end = (ser_lane == E - 1) | (ser_row + 1 >= ser_tag.rows)   # the beat's last wanted element
        block_end = Signal()
        element_go = Signal()
        beat_pop = Signal()
        ri = rescale.i.payload
        m.d.comb += [ri.acc.eq(acc_fifo.o.payload[ser_lane]), side_fifo.i.payload.consumer.eq(ser_tag.consumer),
                     side_fifo.i.payload.last.eq(ser_tag.last & (ser_row + 1 == ser_tag.rows))]
        exp_lo, exp_hi = -(1 << (EXP_SHAPE.width - 1)), (1 << (EXP_SHAPE.width - 1)) - 1
        with m.Switch(ser_tag.consumer):
            for c in range(C):
                with m.Case(c):
                    # Clamping exp to the rescale's port range is exact: |acc * scale| < 2**50
                    # rounds to 0 for any right shift of 51 or more, and any exp >= 48 saturates.
                    e = cur.exp[c]
                    m.d.comb += [ri.scale.eq(cur.scale[c]),
                                 ri.exp.eq(Mux(e < exp_lo, exp_lo, Mux(e > exp_hi, exp_hi, e)))]
        with m.If(ser_active & acc_fifo.o.valid):
            with m.If(row_exists):
                fire = rescale.i.ready & side_fifo.i.ready
                m.d.comb += [rescale.i.valid.eq(side_fifo.i.ready), side_fifo.i.valid.eq(rescale.i.ready),
                             element_go.eq(fire), beat_pop.eq(fire & beat_end)]
            with m.Else():
                m.d.comb += beat_pop.eq(1)                 # rows beyond N: drop the beat
        m.d.comb += [acc_fifo.o.ready.eq(beat_pop), block_end.eq(beat_pop & (ser_beat == D - 1))]
        with m.If(element_go & ~beat_pop):
            m.d.sync += [ser_lane.eq(ser_lane + 1), ser_row.eq(ser_row + 1)]
        with m.If(beat_pop):
            m.d.sync += [ser_lane.eq(0), ser_beat.eq(ser_beat + 1), ser_row.eq((ser_beat + 1) * E)]
        # The next block's tag (and, for a record's first block, its scales) is
        # taken in the cycle the previous block ends: no bubble between blocks.
        take_tag = tag_fifo.o.valid & (~ser_active | block_end) & (~tag_fifo.o.payload.first | scale_fifo.o.valid)
        m.d.comb += [tag_fifo.o.ready.eq(take_tag), scale_fifo.o.ready.eq(take_tag & tag_fifo.o.payload.first)]
        with m.If(block_end):
            m.d.sync += ser_active.eq(0)
        with m.If(take_tag):
            m.d.sync += [ser_active.eq(1), ser_tag.eq(tag_fifo.o.payload), ser_beat.eq(0), ser_lane.eq(0),
                         ser_row.eq(0)]
            with m.If(tag_fifo.o.payload.first):
                m.d.sync += cur.eq(scale_fifo.o.payload)

        # y: the rescaled outputs, or a LOWER_BOUND record's gates (never both: the
        # gates wait until nothing is owed).
        with m.If(lb_valid):
            m.d.comb += [self.y.valid.eq(1), self.y.payload.consumer.eq(0),
                         self.y.payload.value.eq(lb_beat.word_select(lb_lane, 8 * _GATE_WORD_BYTES)),
                         self.y.payload.last.eq(lb_left == 1)]
        with m.Else():
            out = rescale.o.valid & side_fifo.o.valid
            m.d.comb += [self.y.valid.eq(out), self.y.payload.value.eq(rescale.o.payload),
                         self.y.payload.consumer.eq(side_fifo.o.payload.consumer),
                         self.y.payload.last.eq(side_fifo.o.payload.last),
                         rescale.o.ready.eq(self.y.ready & side_fifo.o.valid),
                         side_fifo.o.ready.eq(self.y.ready & rescale.o.valid),
                         owed_sub.eq(out & self.y.ready)]
        return m
