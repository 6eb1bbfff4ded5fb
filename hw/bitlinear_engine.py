"""The BitLinear engine: one STREAM record of the weight image per run, bit exact with ``golden_int``."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx
from mmfree.models.weight_image import (CM_OFFSET, CONSUMER_WORD, CONSUMER_WORDS, EC_OFFSET, EPS_MANT_WORD,
                                        EPS_SHIFT_WORD, FRAC_A_WORD, FRAC_G_OFFSET, GAIN_WORD, GATE_WORD, K_WORD,
                                        MAX_CONSUMERS, MAX_ROWS_PER_BLOCK, N_CONSUMERS_WORD, NORM_SOURCE_WORD, RECORD_HEADER_BYTES,
                                        RECORD_KIND_BITS, RECORD_MAGIC, ROWS_OFFSET, STREAM_ALIGN, X_FRAC_WORD, NormSource,
                                        RecordKind)

from .rescale import EXP_SHAPE, SCALE_OUT_BITS, Rescale
from .rms_quantize import (CODES_LAYOUT, EC_BITS, EPS_SHIFT_MAX, EPS_SHIFT_MIN, FRAC_MAX, ROW_LANES, X_FRAC_MAX,
                           X_LAYOUT, RmsQuantize, column_shape, x_layout)
from .stream_fifo import StreamFifo
from .ternary_accumulate import TernaryAccumulate

__all__ = ["BitLinearEngine", "Y_LAYOUT", "X_LAYOUT", "y_layout", "x_layout", "gates_layout"]


def y_layout(columns: int = 1) -> data.StructLayout:
    """One ``y`` beat: the consumer (matrix) it belongs to, the column (input vector; always 0 for
    one), the ACT values of rows ``2i`` (``value[0]``) and ``2i + 1`` (``value[1]``, present when
    ``pair``), end of that consumer's rows of that column (on the beat's final row)."""
    return data.StructLayout({"consumer": unsigned(2), "column": column_shape(columns),
                              "value": data.ArrayLayout(signed(nx.ACT_BITS), ROW_LANES), "pair": 1, "last": 1})


#: One output beat of a single-column engine (:func:`y_layout` of one column).
Y_LAYOUT = y_layout(1)

_WORD = 32
#: Bytes of one gain word (a 24-bit mantissa, sign-extended) and of one lower-bound gate (GATE, uint32).
_GAIN_WORD_BYTES = np.dtype(GAIN_WORD).itemsize
_GATE_WORD_BYTES = np.dtype(GATE_WORD).itemsize
assert _GAIN_WORD_BYTES == _GATE_WORD_BYTES, "gains and gates share the engine's word lanes"
# ceil(K / 5) without a divider: floor(n * 52429 / 2**18) = n // 5 for every n < 2**16 + 8.
_DIV5_MUL, _DIV5_SHIFT = 52429, 18


def gates_layout(engine_bytes: int) -> data.StructLayout:
    """One beat of a LOWER_BOUND record's gates: ``engine_bytes / 4`` GATE words (Q0.32), end of the record."""
    return data.StructLayout({"gates": data.ArrayLayout(unsigned(8 * _GATE_WORD_BYTES), engine_bytes // _GATE_WORD_BYTES),
                              "last": 1})


def _tag_layout(rows_per_block: int) -> data.StructLayout:
    """What travels with each block from the matrix stream to the output serializer."""
    return data.StructLayout({
        "consumer": unsigned(2),
        "rows": unsigned(rows_per_block.bit_length()),      # rows of the block that exist (< R in the last)
        "last": 1,                                          # the consumer's last block
        "first": 1,                                         # the record's first block: take its scales
    })


def _side_layout(columns: int) -> data.StructLayout:
    """What travels beside each pair of elements through the rescales: consumer, column, whether
    the second row exists, last flag."""
    return data.StructLayout({"consumer": unsigned(2), "column": column_shape(columns), "pair": 1, "last": 1})


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
      buffered and rescaled two rows per cycle (a pair of
      :class:`~mmfree.hw.rescale.Rescale`) onto ``y``. Rows padded up to a
      multiple of R are dropped.
    * ``LOWER_BOUND``: the K gates (uint32 words, GATE Q0.32) go out on
      ``gates``, a beat of ``E/4`` per cycle as they arrive (the padding
      beats are dropped), independently of the outputs still owed on ``y``.

    **Columns.** With ``columns`` = N > 1 every record has N input vectors
    (N sequences decoded, or N prompt tokens prefilled, in one weight pass):
    the input stage takes them tagged with their column and runs once per
    column; every matrix beat meets all N columns' codes in the accumulator;
    and each block's outputs leave column by column per accumulator beat
    (beat s: column 0's rows ``s*E ..``, then column 1's, ...), each column's
    rows in order, two to a ``y`` beat, with its own ``last``. The gates of a LOWER_BOUND record go
    out once: they serve every column.

    The output side (buffer, rescale, ``y``) runs on its own: the next
    record's header, gains and codes proceed while the previous record's last
    results wait for ``y.ready``; and ``x`` for the next record is taken as
    soon as this record's code pass has read its own.

    Ports
    -----
    weights : stream of ``8 E``-bit beats, byte i at bits ``[8i, 8i+8)``.
    x : stream of :func:`~mmfree.hw.rms_quantize.x_layout`: a BITLINEAR
        record's K inputs per column, one or two consecutive ones a beat in any mix
        (``value[0]``, and ``value[1]`` when ``pair``; signed 48: ACT, the record's ``x_frac``
        being 32), ``last`` on the beat with each column's final one; ``norm`` (signed 48, ACT) is the
        pre-norm's input n for ``NormSource.GATE`` records (ignored otherwise).
        LOWER_BOUND records take none.
    y : stream of :func:`y_layout`: two ``value`` lanes, signed 48 (ACT): rows 2i and 2i + 1 of
        a consumer (``pair`` low when 2i is its last, odd row count); consumer 0's rows, then
        consumer 1's, ..., ``last`` on the beat with each consumer's final row.
    gates : stream of :func:`gates_layout`: a LOWER_BOUND record's gates, ``E/4`` per beat (gate j
        in beat ``j // (E/4)``, lane ``j % (E/4)``; lanes beyond K are padding), ``last`` on the
        record's final beat.
    last_column : the columns in use are 0 .. ``last_column`` (below ``columns``); held stable
        while a record is in progress or owes outputs.
    busy : a record is in progress or outputs are still owed.
    phase : 1 while a header, gains, gates or the input stage run (prep), 2 while
        matrix beats are consumed (matvec), 0 otherwise (idle).
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
    rows_per_block : int, R, the image's rows_per_block: a positive multiple of E, at most
        ``weight_image.MAX_ROWS_PER_BLOCK``.
    max_k : int, the longest input vector (max(D, I)), 1..65535.
    max_rows : int, the most rows of a consumer (max(2I, V)), 1..2**24 - 1.
    elements_per_cycle : int, P, elements per cycle of the input stage's code
        pass: 1, 2 or 4, at most ``E/4`` (default 1; see ``RmsQuantize`` for
        what it costs).
    columns : int, N, input vectors per weight pass, 1..16 (default 1). The
        cycle figures below are those of one column.
    x_ram_style : the input stage's x banks' synthesis ``ram_style`` (:class:`RmsQuantize`).

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
        beat, the output side keeping up (``K / 5 >= E / 2``; with ``R = E`` also
        ``K / 5 >= input_stage.scalars_cycles_max``, as the first block's results wait
        for the record's scales): the matrix beats (``matvec_beats``) plus the cycles
        the first block waits for codes (none when ``R / E >= 5 / P``).
    input_stage : the :class:`RmsQuantize` inside (its cycle figures).
    """

    def __init__(self, *, engine_bytes: int, rows_per_block: int, max_k: int, max_rows: int,
                 elements_per_cycle: int = 1, columns: int = 1, x_ram_style: str | None = None):
        for name, value in (("engine_bytes", engine_bytes), ("rows_per_block", rows_per_block),
                            ("max_k", max_k), ("max_rows", max_rows), ("elements_per_cycle", elements_per_cycle),
                            ("columns", columns)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if engine_bytes not in (8, 16, 32, 64):
            raise ValueError(f"engine_bytes must be a power of two in 8..64, not {engine_bytes}")
        if not 1 <= rows_per_block <= MAX_ROWS_PER_BLOCK or rows_per_block % engine_bytes:
            raise ValueError(f"rows_per_block must be a positive multiple of engine_bytes ({engine_bytes}), "
                             f"at most {MAX_ROWS_PER_BLOCK}, not {rows_per_block}")
        if not 1 <= max_k <= 65535:
            raise ValueError(f"max_k must be in 1..65535, not {max_k}")
        if not 1 <= max_rows < (1 << 24):
            raise ValueError(f"max_rows must be in 1..16777215, not {max_rows}")
        if elements_per_cycle not in (1, 2, 4) or elements_per_cycle > engine_bytes // _GAIN_WORD_BYTES:
            raise ValueError(f"elements_per_cycle must be 1, 2 or 4 and at most engine_bytes / "
                             f"{_GAIN_WORD_BYTES} ({engine_bytes // _GAIN_WORD_BYTES}), not {elements_per_cycle}")
        if not 1 <= columns <= 16:
            raise ValueError(f"columns must be in 1..16, not {columns}")
        self.elements_per_cycle = elements_per_cycle
        self.columns = columns
        self.engine_bytes, self.rows_per_block = engine_bytes, rows_per_block
        self.max_k, self.max_rows = max_k, max_rows
        self.header_beats = RECORD_HEADER_BYTES // engine_bytes
        self.acc_bits = nx.accumulator_bits(max_k)
        # The input stage, built here: its cycle figures serve prep_cycles.
        self.input_stage = RmsQuantize(max_k=max_k, gain_lanes=engine_bytes // _GAIN_WORD_BYTES,
                                  elements_per_cycle=elements_per_cycle, columns=columns, x_ram_style=x_ram_style)
        super().__init__({
            "weights": In(stream.Signature(unsigned(8 * engine_bytes))),
            "x": In(stream.Signature(x_layout(columns))),
            "y": Out(stream.Signature(y_layout(columns))),
            "gates": Out(stream.Signature(gates_layout(engine_bytes))),
            "last_column": In(column_shape(columns)),
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
        return (self.header_beats + self.gain_beats(k, consumers) - last_padding + self.input_stage.first_codes_cycles
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
        u = self._units(m)
        header = Signal(8 * RECORD_HEADER_BYTES)
        fields = self._header_fields(m, header, u.rms)
        codes = self._codes_sink(m, u)
        r = self._parser_registers(m, fields)
        self._stage_accumulate_input(m, u, r)
        with m.FSM() as fsm:
            self._parse_header_states(m, u, r, header, fields)
            self._parse_gains_state(m, u, r, fields)
            self._parse_matvec_state(m, u, r, fields, codes)
            self._parse_gates_state(m, r)
            with m.State("ERROR"):
                with m.If(self.clear_error):
                    m.d.sync += [r.error.eq(0), r.count.eq(0), r.padding.eq(0), r.align.eq(0)]
                    m.next = "HEADER"
        with m.If(self.clear_error & ~fsm.ongoing("ERROR")):
            m.d.sync += r.error.eq(0)
        self._stage_serialize(m, u)
        self._stage_output(m, u, r)
        return m

    def _units(self, m):
        """The input stage, accumulator, rescale, code memory and the FIFOs between them (the
        accumulator's results through a FIFO only when a block has more than one beat of them)."""
        E, R, C, N = self.engine_bytes, self.rows_per_block, MAX_CONSUMERS, self.columns
        D = R // E
        u = SimpleNamespace(groups_max=-(-self.max_k // nx.TRITS_PER_BYTE))
        m.submodules.input = u.rms = self.input_stage
        m.submodules.accumulate = u.acc = TernaryAccumulate(lanes=E, k=self.max_k, rows_per_block=R, columns=N)
        if D > 1:
            # A block's D result beats wait here so the next block's first group may overwrite them
            # in the accumulator. With D = 1 a block's one beat is out of the accumulator's way as it
            # ends (its output register), and a FIFO of N x E accumulators would be the largest LUT
            # memory of the design (KV260: 3.8 k LUT): the serializer reads that register.
            m.submodules.acc_fifo = u.acc_fifo = StreamFifo(shape=u.acc.o.payload.shape(), depth=2 * D)
            wiring.connect(m, u.acc.o, u.acc_fifo.i)
            u.results = u.acc_fifo.o
        else:
            u.results = u.acc.o
        u.tag_layout = _tag_layout(R)
        m.submodules.tag_fifo = u.tag_fifo = StreamFifo(shape=u.tag_layout, depth=8)
        # A record's scales: per column, each consumer's scale and exponent.
        u.column_scales = data.StructLayout({"scale": data.ArrayLayout(unsigned(SCALE_OUT_BITS), C),
                                             "exp": data.ArrayLayout(signed(u.rms.exp_bits), C)})
        u.scales_layout = data.ArrayLayout(u.column_scales, N)
        m.submodules.scale_fifo = u.scale_fifo = StreamFifo(shape=u.scales_layout, depth=2)
        # One rescale per y lane, in lockstep (same valid and ready every cycle).
        u.rescales = [Rescale(acc_bits=self.acc_bits) for _ in range(ROW_LANES)]
        for lane, unit in enumerate(u.rescales):
            m.submodules[f"rescale{lane}"] = unit
        m.submodules.side_fifo = u.side_fifo = StreamFifo(shape=_side_layout(N), depth=Rescale.latency + 1)
        u.code_wr, u.code_rd = [], []
        for column in range(N):       # one code memory per column: a matrix beat reads all of them
            code_mem = Memory(shape=CODES_LAYOUT.members["codes"], depth=u.groups_max, init=[])
            m.submodules["codes" if N == 1 else f"codes{column}"] = code_mem
            u.code_wr.append(code_mem.write_port())
            u.code_rd.append(code_mem.read_port(domain="sync"))
        wiring.connect(m, wiring.flipped(self.x), u.rms.x)
        m.d.comb += u.rms.last_column.eq(self.last_column)
        return u

    def _header_fields(self, m, header, rms):
        """The record header's fields (``weight_image`` word indices), the range check, and the
        input stage's params driven from them (combinational)."""
        C = MAX_CONSUMERS

        def word(i):
            return header.word_select(i, _WORD).as_signed()

        def consumer_word(c, offset):
            return word(CONSUMER_WORD + CONSUMER_WORDS * c + offset)

        def within(v, lo, hi):
            return (v >= lo) & (v <= hi)

        f = SimpleNamespace(kind=header[:RECORD_KIND_BITS], k=word(K_WORD), consumers=word(N_CONSUMERS_WORD),
                            rows=[consumer_word(c, ROWS_OFFSET) for c in range(C)])
        magic_ok = header[RECORD_KIND_BITS:_WORD] == (RECORD_MAGIC >> RECORD_KIND_BITS)
        frac_g = [consumer_word(c, FRAC_G_OFFSET) for c in range(C)]
        cm = [consumer_word(c, CM_OFFSET) for c in range(C)]
        ec = [consumer_word(c, EC_OFFSET) for c in range(C)]
        bitlinear_ok = (within(f.consumers, 1, C) & within(word(FRAC_A_WORD), 0, FRAC_MAX)
                        & within(word(NORM_SOURCE_WORD), 0, max(NormSource))
                        & within(word(EPS_MANT_WORD), 0, (1 << nx.EPS_MANT_BITS) - 1)
                        & within(word(EPS_SHIFT_WORD), EPS_SHIFT_MIN, EPS_SHIFT_MAX)
                        & within(word(X_FRAC_WORD), 0, X_FRAC_MAX))
        for c in range(C):
            bitlinear_ok &= (c >= f.consumers) | (within(f.rows[c], 1, self.max_rows)
                                                  & within(frac_g[c], 0, FRAC_MAX)
                                                  & within(cm[c], 0, (1 << nx.SCALE_BITS) - 1)
                                                  & within(ec[c], -(1 << (EC_BITS - 1)), (1 << (EC_BITS - 1)) - 1))
        f.ok = magic_ok & within(f.k, 1, self.max_k) & (
            (f.kind == RecordKind.LOWER_BOUND) | ((f.kind == RecordKind.BITLINEAR) & bitlinear_ok))
        p = rms.params.payload
        m.d.comb += [p.k.eq(f.k), p.consumers.eq(f.consumers), p.frac_a.eq(word(FRAC_A_WORD)),
                     p.source.eq(word(NORM_SOURCE_WORD)), p.eps_mant.eq(word(EPS_MANT_WORD)),
                     p.eps_shift.eq(word(EPS_SHIFT_WORD)), p.x_frac.eq(word(X_FRAC_WORD))]
        for c in range(C):
            m.d.comb += [p.frac_g[c].eq(frac_g[c]), p.cm[c].eq(cm[c]), p.ec[c].eq(ec[c])]
        return f

    def _codes_sink(self, m, u):
        """The input stage's codes into the code memory (one group per cycle, never stalls) and its
        scales into the scale FIFO. Returns ``codes_done`` (the record's last group written; cleared
        by the parser) and ``code_addr`` (groups written so far)."""
        rms, N = u.rms, self.columns
        codes = SimpleNamespace(addr=Signal(range(u.groups_max + 1)), done=Signal(), col=Signal(column_shape(N)))
        m.d.comb += rms.codes.ready.eq(1)
        for column, port in enumerate(u.code_wr):
            m.d.comb += [port.addr.eq(codes.addr), port.data.eq(rms.codes.payload.codes),
                         port.en.eq(rms.codes.valid & (codes.col == column))]
        with m.If(rms.codes.valid):
            m.d.sync += codes.addr.eq(codes.addr + 1)
            with m.If(rms.codes.payload.last):
                m.d.sync += [codes.addr.eq(0), codes.col.eq(codes.col + 1)]
                with m.If(codes.col == self.last_column):
                    m.d.sync += [codes.done.eq(1), codes.col.eq(0)]
        # The scales of every column are gathered, then wait in a FIFO for the record's first output block.
        gathered = Signal(u.scales_layout)
        scale_col = Signal(column_shape(N))
        final = scale_col == self.last_column
        incoming = Signal(u.column_scales)
        for c in range(MAX_CONSUMERS):
            m.d.comb += [incoming.scale[c].eq(rms.scales.payload.scale[c]), incoming.exp[c].eq(rms.scales.payload.exp[c])]
        m.d.comb += [u.scale_fifo.i.valid.eq(rms.scales.valid & final),
                     rms.scales.ready.eq(u.scale_fifo.i.ready | ~final),
                     u.scale_fifo.i.payload.eq(gathered), u.scale_fifo.i.payload[scale_col].eq(incoming)]
        with m.If(rms.scales.valid & rms.scales.ready):
            m.d.sync += [gathered[scale_col].eq(incoming), scale_col.eq(Mux(final, 0, scale_col + 1))]
        return codes

    def _parser_registers(self, m, fields):
        """The record parser's counters, the matrix walk, the owed-outputs count and the status ports."""
        E, R, C = self.engine_bytes, self.rows_per_block, MAX_CONSUMERS
        D, gl = R // E, E // _GAIN_WORD_BYTES
        align_beats = STREAM_ALIGN // E              # parts end on 64-byte boundaries
        groups_max = -(-self.max_k // nx.TRITS_PER_BYTE)
        r = SimpleNamespace(
            want=Signal(), take=Signal(),            # the engine takes a beat this cycle if one is there
            count=Signal(range(max(self.header_beats, -(-self.max_k // gl), 2) + 1)),   # beats of the part
            align=Signal(range(max(align_beats, 2))),  # beats of the part modulo 64 bytes
            part=Signal(range(C + 2)),
            data_beats=Signal(range(-(-self.max_k // gl) + 1)),   # ceil(K / (E/4))
            padding=Signal(),                        # consuming a part's padding beats
            error=Signal(),
            groups=Signal(range(groups_max + 1)),    # ceil(K / 5) of the current record
            # matrix walk: consumer, group, beat within the group, rows of this consumer from the block on
            cons=Signal(range(C)), grp=Signal(range(groups_max + 1)), sub=Signal(range(max(D, 2))),
            rows_left=Signal(range(self.max_rows + 1)), matvec_started=Signal(),
            # stage B: the beat presented to TernaryAccumulate
            b_valid=Signal(), b_last=Signal(), b_cons=Signal(range(C)), b_bytes=Signal(8 * E),
            # outputs owed on y by the output side (rows of blocks already started)
            owed=Signal(range((self.max_rows * C + R) * self.columns + 1)),
            owed_add=Signal(range(R * self.columns + 1)), owed_sub=Signal(range(ROW_LANES + 1)),
            phase=Signal(2), busy_record=Signal())
        r.beat = self.weights.payload
        r.next_align = Signal.like(r.align)
        r.block_first = (r.grp == 0) & (r.sub == 0) & ~r.padding
        r.block_last_beat = (r.grp == r.groups - 1) & (r.sub == D - 1)
        r.consumer_last_block = r.rows_left <= R
        m.d.comb += [self.weights.ready.eq(r.want), r.take.eq(r.want & self.weights.valid),
                     self.weight_wait.eq(r.want & ~self.weights.valid), self.error.eq(r.error),
                     r.next_align.eq(Mux(r.align == align_beats - 1, 0, r.align + 1)),
                     self.phase.eq(r.phase), self.busy.eq(r.busy_record | (r.owed != 0) | r.b_valid)]
        with m.If(r.take):
            m.d.sync += r.align.eq(r.next_align)
        m.d.sync += r.owed.eq(r.owed + r.owed_add - r.owed_sub)
        return r

    def _stage_accumulate_input(self, m, u, r):
        """Stage B: a matrix beat and its group's code words, one per column (read in the same
        cycle), to :class:`TernaryAccumulate`; held until it is taken."""
        m.d.comb += [u.acc.i.valid.eq(r.b_valid), u.acc.i.payload.last.eq(r.b_last)]
        for column, port in enumerate(u.code_rd):
            m.d.comb += [port.addr.eq(r.grp), u.acc.i.payload.codes[column].eq(port.data[r.b_cons])]
        for byte in range(self.engine_bytes):
            m.d.comb += u.acc.i.payload.weights[byte].eq(r.b_bytes[8 * byte: 8 * byte + 8])
        with m.If(u.acc.i.ready):
            m.d.sync += r.b_valid.eq(0)

    def _parse_header_states(self, m, u, r, header, fields):
        """HEADER (``header_beats`` beats), CHECK (1 cycle) and PARAMS (until the input stage takes them)."""
        E, gl = self.engine_bytes, self.engine_bytes // _GAIN_WORD_BYTES
        gl_log2 = gl.bit_length() - 1
        k = fields.k
        with m.State("HEADER"):
            m.d.comb += [r.want.eq(1), r.phase.eq(Mux(r.count == 0, 0, 1)), r.busy_record.eq(r.count != 0)]
            with m.If(r.take):
                m.d.sync += [header.word_select(r.count, 8 * E).eq(r.beat), r.count.eq(r.count + 1)]
                with m.If(r.count == self.header_beats - 1):
                    m.d.sync += r.count.eq(0)
                    m.next = "CHECK"
        with m.State("CHECK"):
            m.d.comb += [r.phase.eq(1), r.busy_record.eq(1)]
            # ceil(K / 5) = floor((K + 4) * 52429 / 2**18), exact for K < 2**16
            m.d.sync += [r.data_beats.eq((k + gl - 1) >> gl_log2), r.part.eq(0), r.padding.eq(0), r.count.eq(0),
                         r.groups.eq(((k[:17] + 4) * _DIV5_MUL) >> _DIV5_SHIFT)]
            with m.If(~fields.ok):
                m.d.sync += r.error.eq(1)
                m.next = "ERROR"
            with m.Elif(fields.kind == RecordKind.LOWER_BOUND):
                m.next = "GATES"
            with m.Else():
                m.next = "PARAMS"
        with m.State("PARAMS"):
            m.d.comb += [r.phase.eq(1), r.busy_record.eq(1), u.rms.params.valid.eq(1)]
            with m.If(u.rms.params.ready):
                m.next = "GAINS"

    def _parse_gains_state(self, m, u, r, fields):
        """GAINS: A, then G_0 .. G_{n-1}: ceil(K / (E/4)) beats each to the input stage, then padding."""
        rms, gl = u.rms, self.engine_bytes // _GAIN_WORD_BYTES
        with m.State("GAINS"):
            # Each int32 word holds a sign-extended 24-bit mantissa: its low 24 bits are it.
            m.d.comb += [r.phase.eq(1), r.busy_record.eq(1), rms.gains.valid.eq(self.weights.valid & ~r.padding),
                         r.want.eq(r.padding | rms.gains.ready)]
            m.d.comb += [rms.gains.payload[i].eq(r.beat.word_select(i, 8 * _GAIN_WORD_BYTES)[:nx.GAIN_BITS])
                         for i in range(gl)]
            with m.If(r.take):
                m.d.sync += r.count.eq(r.count + 1)
                part_done = Signal()
                with m.If(~r.padding & (r.count == r.data_beats - 1)):
                    m.d.sync += [r.padding.eq(1)]
                    m.d.comb += part_done.eq(r.next_align == 0)
                with m.If(r.padding):
                    m.d.comb += part_done.eq(r.next_align == 0)
                with m.If(part_done):
                    m.d.sync += [r.padding.eq(0), r.count.eq(0), r.part.eq(r.part + 1)]
                    with m.If(r.part == fields.consumers):
                        m.d.sync += [r.cons.eq(0), r.grp.eq(0), r.sub.eq(0), r.rows_left.eq(fields.rows[0]),
                                     r.matvec_started.eq(0)]
                        m.next = "MATVEC"

    def _parse_matvec_state(self, m, u, r, fields, codes):
        """MATVEC: every consumer's matrix, one beat per cycle into stage B, a tag per block.

        The matrices follow the code pass group by group: a beat needs its
        group's codes written (the first block runs behind the code pass).
        """
        R, C = self.rows_per_block, MAX_CONSUMERS
        D = R // self.engine_bytes
        tag_fifo = u.tag_fifo
        with m.State("MATVEC"):
            m.d.comb += [r.phase.eq(Mux(r.matvec_started, 2, 1)), r.busy_record.eq(1)]
            # A beat moves into stage B when it is free (or frees this cycle), and a
            # block's first beat also needs room for its tag.
            stage_free = ~r.b_valid | u.acc.i.ready
            # The columns' codes come column by column: group g is there for all once the last has it.
            codes_there = codes.done | ((codes.col == self.last_column) & (r.grp < codes.addr))
            m.d.comb += r.want.eq(r.padding | (stage_free & codes_there & (~r.block_first | tag_fifo.i.ready)))
            with m.If(r.take):
                m.d.sync += r.matvec_started.eq(1)
            tag = tag_fifo.i.payload
            m.d.comb += [tag.consumer.eq(r.cons), tag.rows.eq(Mux(r.consumer_last_block, r.rows_left, R)),
                         tag.last.eq(r.consumer_last_block),
                         tag.first.eq((r.cons == 0) & (r.rows_left == fields.rows[0])),
                         *[port.en.eq(r.take & ~r.padding) for port in u.code_rd]]
            next_consumer = Signal()
            with m.If(r.take & ~r.padding):
                m.d.sync += [r.b_valid.eq(1), r.b_bytes.eq(r.beat), r.b_cons.eq(r.cons),
                             r.b_last.eq(r.block_last_beat)]
                with m.If(r.block_first):
                    m.d.comb += [tag_fifo.i.valid.eq(1), r.owed_add.eq(tag.rows * (self.last_column + 1))]
                m.d.sync += r.sub.eq(r.sub + 1)
                with m.If(r.sub == D - 1):
                    m.d.sync += [r.sub.eq(0), r.grp.eq(r.grp + 1)]
                    with m.If(r.grp == r.groups - 1):
                        m.d.sync += [r.grp.eq(0), r.rows_left.eq(r.rows_left - R)]
                        with m.If(r.consumer_last_block):
                            with m.If(r.next_align != 0):
                                m.d.sync += r.padding.eq(1)
                            with m.Else():
                                m.d.comb += next_consumer.eq(1)
            with m.If(r.take & r.padding & (r.next_align == 0)):
                m.d.sync += r.padding.eq(0)
                m.d.comb += next_consumer.eq(1)
            with m.If(next_consumer):
                m.d.sync += r.cons.eq(r.cons + 1)
                with m.Switch(r.cons):
                    for c in range(C - 1):
                        with m.Case(c):
                            m.d.sync += r.rows_left.eq(fields.rows[c + 1])
                with m.If(r.cons == fields.consumers - 1):
                    m.d.sync += codes.done.eq(0)
                    m.next = "HEADER"

    def _parse_gates_state(self, m, r):
        """GATES: ``ceil(K / (E/4))`` beats onto ``gates`` as they arrive, then the padding beats."""
        with m.State("GATES"):
            m.d.comb += [r.phase.eq(1), r.busy_record.eq(1),
                         self.gates.valid.eq(self.weights.valid & ~r.padding),
                         self.gates.payload.last.eq(r.count == r.data_beats - 1),
                         r.want.eq(r.padding | self.gates.ready)]
            m.d.comb += [self.gates.payload.gates[i].eq(r.beat.word_select(i, 8 * _GATE_WORD_BYTES))
                         for i in range(self.engine_bytes // _GATE_WORD_BYTES)]
            with m.If(r.take):
                m.d.sync += r.count.eq(r.count + 1)
                done = Signal()
                with m.If(~r.padding & (r.count == r.data_beats - 1)):
                    m.d.sync += r.padding.eq(1)
                    m.d.comb += done.eq(r.next_align == 0)
                with m.If(r.padding):
                    m.d.comb += done.eq(r.next_align == 0)
                with m.If(done):
                    m.d.sync += [r.padding.eq(0), r.count.eq(0)]
                    m.next = "HEADER"

    def _stage_serialize(self, m, u):
        """The output side: accumulator beats (``E`` accumulators per column) -> two adjacent rows
        per cycle, column 0's of the beat first, with its column's scale and exponent, into the
        :class:`Rescale` pair and its consumer/column/pair/last into the side FIFO.

        Rows beyond the block's tag ``rows`` are dropped. The next block's tag (and, for a
        record's first block, its scales) is taken in the cycle the previous block ends: no
        bubble between blocks.
        """
        E, R, C, N = self.engine_bytes, self.rows_per_block, MAX_CONSUMERS, self.columns
        D = R // E
        results, tag_fifo, scale_fifo, side_fifo = u.results, u.tag_fifo, u.scale_fifo, u.side_fifo
        ser_active = Signal()
        ser_col = Signal(column_shape(N))
        ser_tag = Signal(u.tag_layout)
        ser_beat = Signal(range(max(D, 2)))
        ser_pair = Signal(range(E // ROW_LANES))          # rows 2 ser_pair, 2 ser_pair + 1 of the beat
        ser_row = Signal(range(R + E + 1))
        cur = Signal(u.scales_layout)
        row_exists = ser_row < ser_tag.rows
        pair = ser_row + 1 < ser_tag.rows
        beat_end = (ser_pair == E // ROW_LANES - 1) | (ser_row + ROW_LANES >= ser_tag.rows)
        column_end = Signal()
        block_end = Signal()
        element_go = Signal()
        beat_pop = Signal()
        lead = u.rescales[0]
        col_scales = cur[ser_col]
        accs = results.payload[ser_col]
        m.d.comb += [side_fifo.i.payload.consumer.eq(ser_tag.consumer), side_fifo.i.payload.column.eq(ser_col),
                     side_fifo.i.payload.pair.eq(pair),
                     side_fifo.i.payload.last.eq(ser_tag.last & (ser_row + ROW_LANES >= ser_tag.rows))]
        scale, exp = Signal(SCALE_OUT_BITS), Signal(EXP_SHAPE)
        exp_lo, exp_hi = -(1 << (EXP_SHAPE.width - 1)), (1 << (EXP_SHAPE.width - 1)) - 1
        with m.Switch(ser_tag.consumer):
            for c in range(C):
                with m.Case(c):
                    # Clamping exp to the rescale's port range is exact: |acc * scale| < 2**50
                    # rounds to 0 for any right shift of 51 or more, and any exp >= 48 saturates.
                    e = col_scales.exp[c]
                    m.d.comb += [scale.eq(col_scales.scale[c]), exp.eq(Mux(e < exp_lo, exp_lo, Mux(e > exp_hi, exp_hi, e)))]
        rescale_valid = Signal()
        for lane, unit in enumerate(u.rescales):
            lanes = [accs[ROW_LANES * i + lane] for i in range(E // ROW_LANES)]
            m.d.comb += [unit.i.payload.acc.eq(Array(lanes)[ser_pair]), unit.i.payload.scale.eq(scale),
                         unit.i.payload.exp.eq(exp), unit.i.valid.eq(rescale_valid)]
        with m.If(ser_active & results.valid):
            with m.If(row_exists):
                fire = lead.i.ready & side_fifo.i.ready
                m.d.comb += [rescale_valid.eq(side_fifo.i.ready), side_fifo.i.valid.eq(lead.i.ready),
                             element_go.eq(fire), column_end.eq(fire & beat_end),
                             beat_pop.eq(fire & beat_end & (ser_col == self.last_column))]
            with m.Else():
                # rows beyond N (only ever from a beat's first row on: every column's): drop the beat
                m.d.comb += beat_pop.eq(1)
        m.d.comb += [results.ready.eq(beat_pop), block_end.eq(beat_pop & (ser_beat == D - 1))]
        with m.If(element_go & ~column_end):
            m.d.sync += [ser_pair.eq(ser_pair + 1), ser_row.eq(ser_row + ROW_LANES)]
        with m.If(column_end & ~beat_pop):
            m.d.sync += [ser_col.eq(ser_col + 1), ser_pair.eq(0), ser_row.eq(ser_beat * E)]
        with m.If(beat_pop):
            m.d.sync += [ser_col.eq(0), ser_pair.eq(0), ser_beat.eq(ser_beat + 1), ser_row.eq((ser_beat + 1) * E)]
        take_tag = tag_fifo.o.valid & (~ser_active | block_end) & (~tag_fifo.o.payload.first | scale_fifo.o.valid)
        m.d.comb += [tag_fifo.o.ready.eq(take_tag), scale_fifo.o.ready.eq(take_tag & tag_fifo.o.payload.first)]
        with m.If(block_end):
            m.d.sync += ser_active.eq(0)
        with m.If(take_tag):
            m.d.sync += [ser_active.eq(1), ser_tag.eq(tag_fifo.o.payload), ser_beat.eq(0), ser_pair.eq(0),
                         ser_row.eq(0), ser_col.eq(0)]
            with m.If(tag_fifo.o.payload.first):
                m.d.sync += cur.eq(scale_fifo.o.payload)

    def _stage_output(self, m, u, r):
        """``y``: the rescaled pairs with their side FIFO's consumer/column/pair/last."""
        side_fifo, lead = u.side_fifo, u.rescales[0]
        out = lead.o.valid & side_fifo.o.valid
        m.d.comb += [self.y.valid.eq(out), self.y.payload.consumer.eq(side_fifo.o.payload.consumer),
                     self.y.payload.column.eq(side_fifo.o.payload.column),
                     self.y.payload.pair.eq(side_fifo.o.payload.pair),
                     self.y.payload.last.eq(side_fifo.o.payload.last),
                     side_fifo.o.ready.eq(self.y.ready & lead.o.valid)]
        for lane, unit in enumerate(u.rescales):
            m.d.comb += [self.y.payload.value[lane].eq(unit.o.payload), unit.o.ready.eq(self.y.ready & side_fifo.o.valid)]
        with m.If(out & self.y.ready):
            m.d.comb += r.owed_sub.eq(Mux(side_fifo.o.payload.pair, 2, 1))
