"""The token datapath: every layer and the head for one token, fed by the weight stream."""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from mmfree.contract import registers as regs
from .argmax import Argmax
from .bitlinear_engine import BitLinearEngine, gates_layout
from .embedding import Bf16ToAct
from .rms_quantize import ROW_LANES, column_shape
from .fixed_point import saturate
from .glu import GLU
from .mlgru import MLGRU
from .stream_fifo import StreamFifo, check_ram_style, ram_style_attrs

__all__ = ["TokenCore", "LOGIT_LAYOUT", "RecordStep"]

ACT = signed(nx.ACT_BITS)
#: One logit on the output stream (ACT) or, when ``pair``, two of one column's consecutive rows
#: (``value``, then ``value1``); ``last`` on the beat with the final one of its column.
LOGIT_LAYOUT = data.StructLayout({"value": ACT, "value1": ACT, "pair": 1, "last": 1})


def _mlgru_side(columns: int, lanes: int) -> data.StructLayout:
    """What travels with one or two elements through the MLGRUs: their gates g (the next record's
    norm vector), the first's row, the column, whether the second is there, whether the beat ends
    the column."""
    return data.StructLayout({"g": data.ArrayLayout(ACT, lanes), "row": 16, "column": column_shape(columns),
                              "pair": 1, "last": 1})


def _glu_side(columns: int) -> data.StructLayout:
    """What travels with one or two elements through the GLUs: column, whether the second is
    there, whether the beat ends the column."""
    return data.StructLayout({"column": column_shape(columns), "pair": 1, "last": 1})


class RecordStep(enum.Enum, shape=3):
    """Which STREAM record of a layer the engine's outputs belong to (weight_image.stream_plan order)."""

    ATTN_IN = 0       # i, f kept in on-chip buffers; each g completes an MLGRU element
    ATTN_OUT = 1      # o: first residual add
    MLP_IN = 2        # a then b (2I rows): a kept, b completes a GLU element
    MLP_OUT = 3       # d: second residual add
    HEAD = 4          # logits


class _State(enum.Enum, shape=2):
    IDLE = 0
    EMBED = 1
    RUN = 2


class TokenCore(wiring.Component):
    """One weight pass through the whole model for up to ``columns`` tokens, bit exact with
    ``IntegerModel.step_batch`` (decode) and ``IntegerModel.prefill``.

    A pass has ``last_column + 1`` columns (N). Per START the ``weights``
    stream delivers the N tokens' embedding rows (``embed_stride`` bytes each:
    ``hidden`` bf16 values, then padding), then for each layer the recurrent
    state of the pass's sequences (S = N in decode, 1 in prefill; ``hidden``
    words of 64 bits each, the ACT value sign-extended, little-endian) followed
    by the layer's ``layer_bytes`` of the image's STREAM region
    (``weight_image.stream_plan`` order), then the rest of STREAM (the head).
    Each row is widened to ACT
    (:class:`~mmfree.hw.embedding.Bf16ToAct`) into its column's residual
    buffer; every STREAM record then goes to the
    :class:`~mmfree.hw.bitlinear_engine.BitLinearEngine`, which runs it for
    all N columns in one pass over its weights and whose outputs (tagged with
    their column, each column's rows in order) this core routes (``RecordStep``):

    * the layer's lower-bound record (its first): the D gates (GATE Q0.32)
      into the gate memory, ``engine_bytes / 4`` per beat as the engine takes
      them; they serve every column;
    * ``attn.in``: i and f into two buffers (one D-vector per column); each
      g_j, with i_j, f_j, gate j and the state h_j of its column's sequence,
      enters an :class:`~mmfree.hw.mlgru.MLGRU` as it arrives. The new state
      goes back to the state buffer (whence it leaves on ``state_out``) and
      ``w_j = g_j * silu(h_j)`` with ``g_j`` is ``attn.out``'s input;
    * ``attn.out``: ``r_j = saturate(h_j + o_j)`` into the residual buffer and
      into ``mlp.in``;
    * ``mlp.in``: a is buffered, each b_j completes ``silu(a_j) * b_j``
      (a :class:`~mmfree.hw.glu.GLU`), ``mlp.out``'s input;
    * ``mlp.out``: ``h_j = saturate(r_j + d_j)``: residual buffer and the
      next record's input (the next layer's ``attn.in`` or the head);
    * the head: logits out on ``logits`` and a running argmax per column.

    **Sequences.** The recurrent state lives in memory; the core holds one
    layer of it per column (the state buffer), loaded from the stream before
    the layer's records. In a decode pass the columns are N independent
    sequences, column c's state the c-th of the layer's S = N state vectors.
    In a prefill pass (``prefill``) they are N consecutive tokens of one
    sequence (S = 1): column c's MLGRU starts from the state column c-1 left,
    element by element (column c's g_j waits until column c-1's h_j is
    written back); only the last column's logits and new state go out, and
    its argmax is ``argmax``.

    **Two rows a cycle.** The engine's outputs come two rows of a column to a
    beat. A beat whose rows only go into a buffer (i, f, a) moves as one;
    so does the head's (each column's argmax takes two logits a beat, and
    ``logits`` carries them together); with ``elementwise_lanes`` = 2 so does
    every other beat: two MLGRUs, two GLUs and two residual adds work in
    lockstep and the next record's input goes to the engine two elements a
    beat. A pair across ``mlp.in``'s a/b boundary (odd I) moves one row a
    cycle. The vectors with two rows per cycle (residual, i, f, a) are two
    banks each, even rows and odd rows.

    Every vector (residual, i/f, a, the state buffer), every BitLinear
    input and every logit is ACT (``numerics.ACT_BITS`` = 48, Q15.32);
    residual adds saturate in ACT.

    Ports
    -----
    weights : stream of ``8 * engine_bytes``-bit beats (byte i at bits 8i).
    logits : stream of :data:`LOGIT_LAYOUT`: V logits (ACT) of each column whose logits go out
        (decode: every column; prefill: the last), in the engine's order (for each block of
        ``rows_per_block`` rows, each ``engine_bytes``-row beat column by column), two
        consecutive rows a beat (one where a column's rows are odd in number), ``last`` on
        the beat with each column's final one.
    state_out : stream of ACT: each layer's new state, D values per sequence in the order the
        state came in (decode: columns 0 .. N-1; prefill: the last column's only).
    start : one-cycle pulse, accepted when not ``busy``.
    hidden, layers, intermediate, embed_stride, layer_bytes : the model's D, L, I, the
        embedding row stride in bytes and one layer's STREAM bytes (both multiples of
        ``engine_bytes``; ``8 * hidden`` too); held stable during a pass.
    last_column : N - 1; ``prefill``: held stable during a pass.
    busy : a pass is running.
    done : one-cycle pulse at the end of a pass (every argmax valid, every
        logit transferred) or of an aborted one (``error`` nonzero).
    error : :class:`~mmfree.contract.registers.ErrorCode` of the last pass.
    argmax, argmax_value : index (lowest on ties) and value (ACT) of the largest logit of
        column 0 (decode) or of the last column (prefill).
    column_argmax : every column's argmax index (decode).
    phase : :class:`~mmfree.contract.registers.Phase` of this cycle.
    weight_wait : the datapath wanted a weight beat and had none.

    Parameters
    ----------
    engine_bytes, rows_per_block : the engine's beat width and the image's rows_per_block.
    max_hidden, max_layers, max_intermediate, max_vocab : on-chip capacity.
    elements_per_cycle : the engine's input-stage elements per cycle (1, 2 or 4;
        see :class:`~mmfree.hw.bitlinear_engine.BitLinearEngine`).
    engine_bytes : at least ``registers.STATE_WORD_BYTES`` (one state word per beat).
    columns : tokens per weight pass, 1..8 (default 1).
    elementwise_lanes : MLGRUs and GLUs, 1 or 2 (default 1; 2 needs ``engine_bytes`` >= 16, so
        that a pair's two states share a state-buffer word).
    buffer_ram_style : None or ``"ultra"``/``"block"``: synthesis ``ram_style`` of the deep
        per-column vectors (residual, i/f, a) and the engine's x banks (``"ultra"`` on
        UltraScale+: a column of the 2.7B shape is 30 k ACT words there). The state buffer
        (wide, shallow) keeps the tool's choice.
    """

    #: The most columns a build may have (the register map has eight per-column registers).
    MAX_COLUMNS = 8

    def __init__(self, *, engine_bytes: int, rows_per_block: int, max_hidden: int, max_layers: int,
                 max_intermediate: int, max_vocab: int, elements_per_cycle: int = 1, columns: int = 1,
                 elementwise_lanes: int = 1, buffer_ram_style: str | None = None):
        self.buffer_ram_style = check_ram_style(buffer_ram_style)

        for name, value in (("max_hidden", max_hidden), ("max_layers", max_layers),
                            ("max_intermediate", max_intermediate), ("max_vocab", max_vocab), ("columns", columns)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if not 1 <= value < (1 << 16) and name not in ("max_vocab", "columns"):
                raise ValueError(f"{name} must be in [1, 65535], not {value}")
        if not isinstance(max_vocab, int) or not 1 <= max_vocab <= (1 << 24):
            raise ValueError(f"max_vocab must be in [1, 2**24], not {max_vocab}")
        if not 1 <= columns <= self.MAX_COLUMNS:
            raise ValueError(f"columns must be in 1..{self.MAX_COLUMNS}, not {columns}")
        if not isinstance(engine_bytes, int) or engine_bytes < regs.STATE_WORD_BYTES:
            raise ValueError(f"engine_bytes must be at least {regs.STATE_WORD_BYTES} (a state word per beat), "
                             f"not {engine_bytes!r}")
        if elementwise_lanes not in (1, ROW_LANES):
            raise ValueError(f"elementwise_lanes must be 1 or {ROW_LANES}, not {elementwise_lanes!r}")
        if elementwise_lanes > 1 and engine_bytes < ROW_LANES * regs.STATE_WORD_BYTES:
            raise ValueError(f"elementwise_lanes {elementwise_lanes} needs engine_bytes of at least "
                             f"{ROW_LANES * regs.STATE_WORD_BYTES} (both states of a pair in one word), not {engine_bytes}")
        self.lanes = elementwise_lanes
        self.engine_bytes, self.rows_per_block = engine_bytes, rows_per_block
        self.max_hidden, self.max_layers = max_hidden, max_layers
        self.max_intermediate, self.max_vocab = max_intermediate, max_vocab
        self.columns = columns
        # Built here so a bad engine_bytes / rows_per_block raises at construction.
        self._engine = BitLinearEngine(engine_bytes=engine_bytes, rows_per_block=rows_per_block,
                                       max_k=max(max_hidden, max_intermediate),
                                       max_rows=max(2 * max_intermediate, max_vocab, max_hidden),
                                       elements_per_cycle=elements_per_cycle, columns=columns,
                                       x_ram_style=buffer_ram_style)
        col = column_shape(columns)
        super().__init__({
            "weights": In(stream.Signature(unsigned(8 * engine_bytes))),
            "logits": Out(stream.Signature(LOGIT_LAYOUT)),
            "state_out": Out(stream.Signature(ACT)),
            "start": In(1),
            "hidden": In(16), "layers": In(16), "intermediate": In(16), "embed_stride": In(16),
            "layer_bytes": In(32), "last_column": In(col), "prefill": In(1),
            "busy": Out(1), "done": Out(1), "error": Out(8),
            "argmax": Out(32), "argmax_value": Out(ACT), "column_argmax": Out(data.ArrayLayout(32, columns)),
            "phase": Out(3), "weight_wait": Out(1),
        })

    @property
    def state_lanes(self) -> int:
        """State values per weight beat, and per word of the state buffer: ``engine_bytes /
        registers.STATE_WORD_BYTES``."""
        return self.engine_bytes // regs.STATE_WORD_BYTES

    @property
    def state_lanes_log2(self) -> int:
        return self.state_lanes.bit_length() - 1

    @property
    def gate_lanes(self) -> int:
        """Gates per weight beat, and per word of the gate memory: ``engine_bytes / 4``."""
        return gates_layout(self.engine_bytes).members["gates"].length

    @property
    def gate_lanes_log2(self) -> int:
        return self.gate_lanes.bit_length() - 1

    @staticmethod
    def _half(n: int) -> int:
        """Words of one column's ``n``-vector in each bank of a two-bank buffer."""
        return -(-n // ROW_LANES)

    @property
    def state_rows(self) -> int:
        """State-buffer words of one column: ``max_hidden`` values, :attr:`state_lanes` to a word."""
        return -(-self.max_hidden // self.state_lanes)

    def elaborate(self, platform):
        m = Module()
        # Everything that holds per-pass pipeline state restarts at START,
        # so a pass aborted by an error leaves nothing behind.
        flush = Signal()
        u = self._units(m, flush)
        N = self.columns
        t = SimpleNamespace(
            flush=flush, fsm_state=Signal(_State), step=Signal(RecordStep), layer=Signal(16),
            loading=Signal(), drain_pending=Signal(), drain_idle=Signal(),
            rows=Array(Signal(range(max(2 * self.max_intermediate, self.max_vocab, self.max_hidden) + 1),
                              name=f"row{c}") for c in range(N)),
            error=Signal(8), finish=Signal(), embed_beats=Signal(16),
            # MLGRU elements written back per column this layer (a prefill's column waits on the one before)
            mlgru_rows=Array(Signal(range(self.max_hidden + 1), name=f"mlgru_rows{c}") for c in range(N)),
            mlgru_done=Signal(N),
            best_value=Array(Signal(ACT, name=f"best_value{c}") for c in range(N)),
            best_index=Array(Signal(32, name=f"best_index{c}") for c in range(N)),
            argmax_done=Signal(N))
        m.d.comb += [self.busy.eq(t.fsm_state != _State.IDLE), self.error.eq(t.error)]
        m.d.sync += self.done.eq(0)
        self._control(m, u, t)
        self._stage_embed_row(m, u, t)
        self._stage_load_state(m, u, t)
        self._stage_gates(m, u, t)
        self._weight_wait(m, u, t)
        x = self._engine_inputs(m, u)
        embed_pos = self._embed_results(m, u, x)
        routed = self._stage_read_buffers(m, u, t)
        self._stage_route(m, u, t, x, routed)
        self._stage_drain_state(m, u, t, routed)
        self._mlgru_results(m, u, t, x)
        self._argmax_results(m, u, t)
        self._glu_results(m, u, x)
        with m.If(flush):
            m.d.sync += [embed_pos.row.eq(0), embed_pos.column.eq(0), t.mlgru_done.eq(0)]
            m.d.sync += [rows.eq(0) for rows in t.mlgru_rows]
        self._phase(m, u, t)
        m.d.comb += [u.engine.clear_error.eq(flush), u.engine.last_column.eq(self.last_column)]
        return m

    def _units(self, m, flush):
        """The engine, the element-wise units and the on-chip vectors (ACT, one read port each,
        reads take one cycle; one vector per column, the state buffer :attr:`state_lanes` values to
        a word); every unit restarts on ``flush``."""
        N = self.columns
        u = SimpleNamespace()
        m.submodules.engine = u.engine = ResetInserter(flush)(self._engine)
        # The engine's outputs pass a small FIFO: the routing stage's ready (which depends on the
        # record step, the column and every consumer) then never reaches into the engine's output
        # side combinationally, which would make one long path of both.
        m.submodules.y_fifo = u.y = ResetInserter(flush)(StreamFifo(shape=self._engine.y.payload.shape(), depth=2))
        wiring.connect(m, u.engine.y, u.y.i)
        u.mlgru = [ResetInserter(flush)(MLGRU()) for _ in range(self.lanes)]
        u.glu = [ResetInserter(flush)(GLU()) for _ in range(self.lanes)]
        for lane in range(self.lanes):            # a second lane's units work in lockstep with the first's
            m.submodules[f"mlgru{lane or ''}"] = u.mlgru[lane]
            m.submodules[f"glu{lane or ''}"] = u.glu[lane]
        # The state buffer's words on their way out (_stage_drain_state)
        m.submodules.drain_fifo = u.drain_fifo = ResetInserter(flush)(
            StreamFifo(shape=data.ArrayLayout(ACT, self.state_lanes), depth=4))
        m.submodules.embed = u.embed = ResetInserter(flush)(Bf16ToAct())
        u.argmax = []
        for c in range(N):
            unit = ResetInserter(flush)(Argmax(max_length=self.max_vocab))
            m.submodules["argmax" if N == 1 else f"argmax{c}"] = unit
            u.argmax.append(unit)
        u.side_layout = _mlgru_side(N, self.lanes)
        m.submodules.mlgru_side = u.side = ResetInserter(flush)(
            SyncFIFOBuffered(width=u.side_layout.size, depth=MLGRU.latency + 4))
        u.glu_side_layout = _glu_side(N)
        m.submodules.glu_side = u.glu_side = ResetInserter(flush)(
            SyncFIFOBuffered(width=u.glu_side_layout.size, depth=GLU.latency + 4))

        def vector(name, depth, shape=ACT, ram_style=self.buffer_ram_style):
            mem = Memory(shape=shape, depth=depth, init=[], attrs=ram_style_attrs(ram_style))
            m.submodules[name] = mem
            return mem.write_port(), mem.read_port(domain="sync")

        D, I = self.max_hidden, self.max_intermediate
        # Each vector takes both rows of an engine beat at once: even rows in bank 0, odd in bank 1
        # (word ``column * ceil(n / 2) + row // 2``).
        for name, n in (("resid", D), ("ibuf", D), ("fbuf", D), ("abuf", I)):
            banks = [vector(f"{name}{bank}", N * self._half(n)) for bank in range(ROW_LANES)]
            setattr(u, f"{name}_w", [w for w, _ in banks])
            setattr(u, f"{name}_r", [r for _, r in banks])
        # The layer's gates, a stream beat's worth to a word (shallow: the tool's choice).
        u.gate_w, u.gate_r = vector("gates", -(-D // self.gate_lanes),
                                    shape=gates_layout(self.engine_bytes).members["gates"], ram_style=None)
        state = Memory(shape=data.ArrayLayout(ACT, self.state_lanes), depth=N * self.state_rows, init=[])
        m.submodules.state = state
        u.state_w, u.state_r = state.write_port(granularity=1), state.read_port(domain="sync")
        return u

    def _control(self, m, u, t):
        """IDLE / EMBED / RUN: START (shape check, flush), the end of a pass or an engine error."""
        E, D, L, I = self.engine_bytes, self.hidden, self.layers, self.intermediate
        lanes_log2 = self.state_lanes_log2
        too_big = ((D > self.max_hidden) | (L > self.max_layers) | (I > self.max_intermediate)
                   | (D == 0) | (L == 0) | (I == 0) | (self.last_column >= self.columns)
                   | (self.layer_bytes == 0) | (self.layer_bytes[:E.bit_length() - 1] != 0))
        if lanes_log2:    # a layer's state is whole beats
            too_big |= D[:lanes_log2] != 0
        with m.Switch(t.fsm_state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.comb += t.flush.eq(1)
                    m.d.sync += [t.step.eq(RecordStep.ATTN_IN), t.layer.eq(0),
                                 t.embed_beats.eq(self.embed_stride // E), t.argmax_done.eq(0)]
                    m.d.sync += [row.eq(0) for row in t.rows]
                    with m.If(too_big):
                        m.d.sync += [t.error.eq(regs.ErrorCode.SHAPE), self.done.eq(1)]
                    with m.Else():
                        m.d.sync += [t.error.eq(0), t.fsm_state.eq(_State.EMBED)]
            with m.Case(_State.EMBED, _State.RUN):
                with m.If(u.engine.error):
                    m.d.sync += [t.error.eq(regs.ErrorCode.BAD_RECORD), self.done.eq(1),
                                 t.fsm_state.eq(_State.IDLE)]
                with m.Elif(t.finish):
                    m.d.sync += [self.done.eq(1), t.fsm_state.eq(_State.IDLE)]

    def _stage_embed_row(self, m, u, t):
        """EMBED: N rows of ``embed_stride / E`` beats, E/2 bf16 values per beat, one value per
        cycle into :class:`Bf16ToAct` (values beyond D dropped); then RUN hands ``weights`` to the engine."""
        E, D = self.engine_bytes, self.hidden
        embed = u.embed
        beat = Signal(8 * E)
        beat_full = Signal()
        half = Signal(range(E // 2))
        element = Signal(16)           # index of the value under `half` within the row
        beats_taken = Signal(16)
        rows_left = Signal(column_shape(self.columns))   # rows after the current one
        with m.If(t.fsm_state == _State.EMBED):
            m.d.comb += self.weights.ready.eq(~beat_full & (beats_taken != t.embed_beats))
            with m.If(self.weights.valid & self.weights.ready):
                m.d.sync += [beat.eq(self.weights.payload), beat_full.eq(1), half.eq(0),
                             beats_taken.eq(beats_taken + 1)]
            value_needed = element < D
            m.d.comb += [embed.i.payload.eq(beat.word_select(half, 16)),
                         embed.i.valid.eq(beat_full & value_needed)]
            with m.If(beat_full & (embed.i.ready | ~value_needed)):
                m.d.sync += [half.eq(half + 1), element.eq(element + 1)]
                with m.If(half == E // 2 - 1):
                    m.d.sync += beat_full.eq(0)
                    with m.If(beats_taken == t.embed_beats):
                        m.d.sync += [beats_taken.eq(0), element.eq(0), rows_left.eq(rows_left - 1)]
                        with m.If(rows_left == 0):
                            m.d.sync += [t.fsm_state.eq(_State.RUN), t.loading.eq(1)]
        with m.Else():
            m.d.sync += [beats_taken.eq(0), element.eq(0), beat_full.eq(0), rows_left.eq(self.last_column)]

    def _stage_load_state(self, m, u, t):
        """RUN: before each layer's records, the layer's state of the pass's S sequences from
        ``weights`` into the state buffer (one beat, :attr:`state_lanes` words, per cycle); then
        ``layer_bytes / E`` beats to the engine; after the last layer the rest (the head)."""
        E, D, L, N, W = self.engine_bytes, self.hidden, self.layers, self.columns, self.state_lanes
        lanes_log2, word_bits = self.state_lanes_log2, 8 * regs.STATE_WORD_BYTES
        engine = u.engine
        buffer_column = Signal(column_shape(N))       # the sequence whose state arrives
        word = Signal(16)                             # its state-buffer word
        layers_loaded = Signal(16)
        beats_left = Signal(32)                       # of the layer's records, to the engine
        m.d.comb += [engine.weights.payload.eq(self.weights.payload)]
        with m.If(t.fsm_state == _State.RUN):
            with m.If(t.loading):
                # (the previous layer's state must be out of the buffer first)
                take = self.weights.valid & t.drain_idle
                m.d.comb += self.weights.ready.eq(t.drain_idle)
                m.d.comb += [u.state_w.addr.eq(buffer_column * self.state_rows + word),
                             u.state_w.en.eq(take.replicate(W))]
                m.d.comb += [u.state_w.data[w].eq(self.weights.payload[word_bits * w:word_bits * w + nx.ACT_BITS])
                             for w in range(W)]
                with m.If(take):
                    m.d.sync += word.eq(word + 1)
                    with m.If(word == (D >> lanes_log2) - 1):
                        m.d.sync += [word.eq(0), buffer_column.eq(buffer_column + 1)]
                        with m.If(self._last_sequence() == buffer_column):
                            m.d.sync += [t.loading.eq(0), buffer_column.eq(0), layers_loaded.eq(layers_loaded + 1),
                                         beats_left.eq(self.layer_bytes >> (E.bit_length() - 1))]
            with m.Else():
                counting = layers_loaded <= L             # in a layer's records, not the head's
                m.d.comb += [engine.weights.valid.eq(self.weights.valid), self.weights.ready.eq(engine.weights.ready)]
                with m.If(self.weights.valid & engine.weights.ready & counting):
                    m.d.sync += beats_left.eq(beats_left - 1)
                    with m.If(beats_left == 1):
                        with m.If(layers_loaded == L):
                            m.d.sync += layers_loaded.eq(L + 1)
                        with m.Else():
                            m.d.sync += t.loading.eq(1)
        with m.If(t.flush):
            m.d.sync += [t.loading.eq(0), buffer_column.eq(0), word.eq(0), layers_loaded.eq(0)]

    def _weight_wait(self, m, u, t):
        """``weight_wait``: the engine's, or the embedding rows' wait. After the head's matrix the
        idle engine still asks for a next header; the stream is over, so that is not waiting."""
        engine = u.engine
        head_streamed = Signal()
        with m.If(t.flush):
            m.d.sync += head_streamed.eq(0)
        with m.Elif((t.step == RecordStep.HEAD) & (engine.phase == 2)):
            m.d.sync += head_streamed.eq(1)
        m.d.comb += self.weight_wait.eq((engine.weight_wait & ~(head_streamed & (engine.phase != 2)))
                                        | (((t.fsm_state == _State.EMBED) | t.loading) & self.weights.ready
                                           & ~self.weights.valid))

    def _engine_inputs(self, m, u):
        """The next record's input: one of four producers at a time (embedding, MLGRU, residual,
        GLU). Their outputs never overlap in time (each needs the previous record's whole input
        consumed), so the engine's x port is their OR."""
        engine = u.engine
        producers = []

        def producer(name):
            s = stream.Signature(engine.x.payload.shape()).create(path=(name,))
            producers.append(s)
            m.d.comb += s.ready.eq(engine.x.ready)
            return s

        x = SimpleNamespace(embed=producer("embed_x"), mlgru=producer("mlgru_x"), resid=producer("resid_x"),
                            glu=producer("glu_x"))
        m.d.comb += engine.x.valid.eq(sum(p.valid for p in producers) != 0)
        for p in producers:
            with m.If(p.valid):
                m.d.comb += engine.x.payload.eq(p.payload)
        return x

    def _embed_results(self, m, u, x):
        """Embedding values (ACT), row by row: into their column's residual buffer and into
        ``attn.in``. Returns the (column, row) counters."""
        D, embed = self.hidden, u.embed
        pos = SimpleNamespace(row=Signal(16), column=Signal(column_shape(self.columns)))
        m.d.comb += [x.embed.valid.eq(embed.o.valid), embed.o.ready.eq(x.embed.ready),
                     x.embed.payload.value[0].eq(embed.o.payload), x.embed.payload.norm[0].eq(embed.o.payload),
                     x.embed.payload.column.eq(pos.column), x.embed.payload.last.eq(pos.row == D - 1)]
        with m.If(embed.o.valid & embed.o.ready):
            self._write_pair(m, u.resid_w, pos.column * self._half(self.max_hidden) + (pos.row >> 1),
                             embed.o.payload, embed.o.payload, 0, pos.row, 1)
            m.d.sync += pos.row.eq(pos.row + 1)
            with m.If(pos.row == D - 1):
                m.d.sync += [pos.row.eq(0), pos.column.eq(pos.column + 1)]
        return pos

    def _stage_read_buffers(self, m, u, t):
        """Engine outputs, stage 0: an output is taken from ``y`` and the buffers are read at its
        column and row (latency 1; the routing stage's ``ready`` stalls it). A ``y`` beat of two
        rows moves as one (:meth:`_moves_whole`); any other moves one row per cycle. In a prefill
        pass a g (``attn.in``'s third consumer) of column c > 0 waits here until column c-1's
        MLGRU results for its rows are written back: the state it reads is that one. Advances the
        record step on each record's (or last consumer's) last column's ``last``. Returns the
        routing stage's registers."""
        I, L, N = self.intermediate, self.layers, self.columns
        y, step = u.y.o, t.step
        s = SimpleNamespace(valid=Signal(), ready=Signal(), step=Signal(RecordStep), consumer=Signal(2),
                            column=Signal(column_shape(N)), value=Signal(ACT), value1=Signal(ACT), pair=Signal(),
                            last=Signal(), row=Signal.like(t.rows[0]), bhalf=Signal())
        advance = ~s.valid | s.ready
        row = Signal.like(t.rows[0])                  # the row of the beat's next element
        second = Signal()                             # the beat's first row has gone on alone
        m.d.comb += row.eq(t.rows[y.payload.column])
        whole = Signal()                              # both rows go on together
        m.d.comb += whole.eq(y.payload.pair & ~second & self._moves_whole(step, y.payload.consumer, row))
        final = whole | ~y.payload.pair | second     # this element (or pair) ends the beat
        last = y.payload.last & final
        hold = Signal()                               # a prefill's g whose state is not yet written
        both = y.payload.pair & ~second               # (a g pair always moves whole with two lanes)
        if N > 1:
            before = Signal(column_shape(N))
            m.d.comb += before.eq(y.payload.column - 1)
            m.d.comb += hold.eq(self.prefill & (step == RecordStep.ATTN_IN) & (y.payload.consumer == 2)
                                & (y.payload.column != 0) & ~t.mlgru_done.bit_select(before, 1)
                                & (t.mlgru_rows[before] <= (row + both if self.lanes > 1 else row)))
        running = t.fsm_state == _State.RUN
        take = y.valid & running & ~hold & advance
        m.d.comb += y.ready.eq(advance & running & ~hold & final)
        bhalf = (step == RecordStep.MLP_IN) & (row >= I)
        for port in (*u.resid_r, *u.ibuf_r, *u.fbuf_r, *u.abuf_r, u.state_r, u.gate_r):
            m.d.comb += port.en.eq(advance)
        m.d.comb += [u.state_r.addr.eq(self._state_word(y.payload.column, row)),
                     u.gate_r.addr.eq(row >> self.gate_lanes_log2)]
        # Element j of a two-bank vector is in bank j % 2: the rows j, j + 1 of a pair are at
        # words (j + 1) // 2 (bank 0) and j // 2 (bank 1), whichever is even.
        for banks, n, j in ((u.resid_r, self.max_hidden, row), (u.ibuf_r, self.max_hidden, row),
                            (u.fbuf_r, self.max_hidden, row), (u.abuf_r, self.max_intermediate, row - I)):
            base = y.payload.column * self._half(n)
            m.d.comb += [banks[0].addr.eq(base + ((j + 1) >> 1)), banks[1].addr.eq(base + (j >> 1))]
        with m.If(advance):
            m.d.sync += s.valid.eq(take)
        with m.If(take):
            m.d.sync += [s.step.eq(step), s.consumer.eq(y.payload.consumer), s.column.eq(y.payload.column),
                         s.value.eq(Mux(second, y.payload.value[1], y.payload.value[0])),
                         s.value1.eq(y.payload.value[1]), s.pair.eq(whole), s.last.eq(last), s.row.eq(row),
                         s.bhalf.eq(bhalf), second.eq(~final),
                         t.rows[y.payload.column].eq(Mux(last, 0, Mux(whole, row + 2, row + 1)))]
        with m.If(take & last & (y.payload.column == self.last_column)):
            # The record (or its last consumer) is complete for every column: move to the next one.
            with m.Switch(step):
                with m.Case(RecordStep.ATTN_IN):
                    with m.If(y.payload.consumer == 2):
                        m.d.sync += [step.eq(RecordStep.ATTN_OUT), t.drain_pending.eq(1)]
                with m.Case(RecordStep.ATTN_OUT):
                    m.d.sync += step.eq(RecordStep.MLP_IN)
                with m.Case(RecordStep.MLP_IN):
                    m.d.sync += step.eq(RecordStep.MLP_OUT)
                with m.Case(RecordStep.MLP_OUT):
                    m.d.sync += [t.layer.eq(t.layer + 1),
                                 step.eq(Mux(t.layer + 1 == L, RecordStep.HEAD, RecordStep.ATTN_IN)),
                                 t.mlgru_done.eq(0)]
                    m.d.sync += [rows.eq(0) for rows in t.mlgru_rows]
        with m.If(t.flush):
            m.d.sync += second.eq(0)
        return s

    def _moves_whole(self, step, consumer, row):
        """Whether a two-row beat at ``row`` of ``step``'s ``consumer`` moves as one: when both rows
        only go into a buffer (``attn.in``'s i and f, ``mlp.in``'s a), and with two element-wise
        lanes also through the MLGRUs, the residual adds and the GLUs; the head's (two logits to
        its argmax and ``logits``) always; never a pair across ``mlp.in``'s a/b boundary."""
        I = self.intermediate
        a_only = (step == RecordStep.MLP_IN) & (row < I - 1)     # row + 1 < I (I >= 1): no adder before the compare
        if self.lanes == 1:
            return ((step == RecordStep.ATTN_IN) & (consumer != 2)) | a_only | (step == RecordStep.HEAD)
        return (step != RecordStep.MLP_IN) | a_only | (row >= I)

    def _stage_gates(self, m, u, t):
        """A layer's gates, as the engine takes its lower-bound record (the layer's first, before
        any g that needs them): a beat of :attr:`gate_lanes` into each word of the gate memory."""
        gates = u.engine.gates
        word = Signal(range(-(-self.max_hidden // self.gate_lanes) + 1))
        m.d.comb += [gates.ready.eq(1), u.gate_w.addr.eq(word), u.gate_w.data.eq(gates.payload.gates),
                     u.gate_w.en.eq(gates.valid)]
        with m.If(gates.valid):
            m.d.sync += word.eq(Mux(gates.payload.last, 0, word + 1))
        with m.If(t.flush):
            m.d.sync += word.eq(0)

    def _stage_route(self, m, u, t, x, s):
        """Engine outputs, stage 1: each output (ACT), or pair of outputs, with the buffers read for
        its column and rows goes where its record step sends it (buffers, MLGRUs, residual adds,
        GLUs, logits); ``s.ready`` is that consumer's ready."""
        side = u.side
        d_word = s.column * self._half(self.max_hidden) + (s.row >> 1)
        resid, ibuf, fbuf = (self._pair_read(banks, s.row) for banks in (u.resid_r, u.ibuf_r, u.fbuf_r))
        abuf = self._pair_read(u.abuf_r, s.row - self.intermediate)
        values = [s.value, s.value1]
        sums = [Signal(ACT, name=f"residual_sum{k}") for k in range(ROW_LANES)]
        m.d.comb += [sums[k].eq(saturate(resid[k] + values[k])) for k in range(ROW_LANES)]
        side_in = Signal(u.side_layout)
        m.d.comb += [side_in.row.eq(s.row), side_in.column.eq(s.column), side_in.pair.eq(s.pair),
                     side_in.last.eq(s.last), side.w_data.eq(side_in)]
        m.d.comb += [side_in.g[k].eq(values[k]) for k in range(self.lanes)]
        state_lane = s.row[:self.state_lanes_log2] if self.state_lanes > 1 else 0
        gate_lane = s.row[:self.gate_lanes_log2]
        with m.Switch(s.step):
            with m.Case(RecordStep.ATTN_IN):
                with m.If(s.consumer == 2):
                    # h_new = f*h + silu(i)*(1-f) with f from the gate; w = g*silu(h_new)
                    for k, mlgru in enumerate(u.mlgru):
                        p = mlgru.i.payload
                        m.d.comb += [p.i.eq(ibuf[k]), p.f.eq(fbuf[k]), p.g.eq(values[k]),
                                     p.h.eq(u.state_r.data[state_lane + k]), p.lb.eq(u.gate_r.data[gate_lane + k]),
                                     mlgru.i.valid.eq(s.valid & side.w_rdy)]
                    m.d.comb += [side.w_en.eq(s.valid & u.mlgru[0].i.ready), s.ready.eq(u.mlgru[0].i.ready & side.w_rdy)]
                with m.Else():
                    m.d.comb += s.ready.eq(1)
                    for index, banks in enumerate((u.ibuf_w, u.fbuf_w)):
                        self._write_pair(m, banks, d_word, s.value, s.value1, s.pair, s.row,
                                         s.valid & (s.consumer == index))
            with m.Case(RecordStep.ATTN_OUT, RecordStep.MLP_OUT):
                # r = saturate(h + o); h = saturate(r + d)
                # (norm is ignored by the engine here; driving it keeps no field constant,
                # which Verilator would flag as an empty always block)
                m.d.comb += [x.resid.valid.eq(s.valid), x.resid.payload.column.eq(s.column),
                             x.resid.payload.pair.eq(s.pair), x.resid.payload.last.eq(s.last), s.ready.eq(x.resid.ready)]
                m.d.comb += [x.resid.payload.value[k].eq(sums[k]) for k in range(ROW_LANES)]
                m.d.comb += [x.resid.payload.norm[k].eq(sums[k]) for k in range(ROW_LANES)]
                self._write_pair(m, u.resid_w, d_word, sums[0], sums[1], s.pair, s.row, s.valid & x.resid.ready)
            with m.Case(RecordStep.MLP_IN):
                with m.If(s.bhalf):
                    glu_side = Signal(u.glu_side_layout)
                    m.d.comb += [glu_side.column.eq(s.column), glu_side.pair.eq(s.pair), glu_side.last.eq(s.last),
                                 u.glu_side.w_data.eq(glu_side),
                                 u.glu_side.w_en.eq(s.valid & u.glu[0].i.ready),
                                 s.ready.eq(u.glu[0].i.ready & u.glu_side.w_rdy)]
                    for k, glu in enumerate(u.glu):
                        m.d.comb += [glu.i.payload.a.eq(abuf[k]), glu.i.payload.b.eq(values[k]),
                                     glu.i.valid.eq(s.valid & u.glu_side.w_rdy)]
                with m.Else():
                    m.d.comb += s.ready.eq(1)
                    self._write_pair(m, u.abuf_w, s.column * self._half(self.max_intermediate) + (s.row >> 1),
                                     s.value, s.value1, s.pair, s.row, s.valid)
            with m.Case(RecordStep.HEAD):
                with m.If(t.drain_idle):
                    self._route_logits(m, u, s)

    @staticmethod
    def _pair_read(banks, j):
        """Elements j and j + 1 of a two-bank vector read at :meth:`_stage_read_buffers`'s words."""
        odd = j[0]
        return Mux(odd, banks[1].data, banks[0].data), Mux(odd, banks[0].data, banks[1].data)

    @staticmethod
    def _write_pair(m, banks, word, value0, value1, pair, row, enable):
        """A two-bank vector write at ``word``: a pair (rows ``row``, ``row + 1``, ``row`` even) into
        both banks, a lone element (``value0``) into its row's bank."""
        even, odd = banks
        m.d.comb += [even.addr.eq(word), even.data.eq(value0), even.en.eq(enable & (pair | ~row[0])),
                     odd.addr.eq(word), odd.data.eq(Mux(pair, value1, value0)), odd.en.eq(enable & (pair | row[0]))]

    def _route_logits(self, m, u, s):
        """The head's outputs, one or two logits a beat: each column's through its argmax and, for
        the columns whose logits go out (a prefill keeps only its last column's), onto ``logits``,
        after the last layer's state (which leaves on the same writer first)."""
        wanted = ~self.prefill | (s.column == self.last_column)
        argmax_ready = Signal()
        for c, unit in enumerate(u.argmax):
            p = unit.i.payload
            m.d.comb += [p.value[0].eq(s.value), p.value[1].eq(s.value1), p.pair.eq(s.pair), p.last.eq(s.last)]
            with m.If(s.column == c):
                m.d.comb += [unit.i.valid.eq(s.valid & wanted & self.logits.ready), argmax_ready.eq(unit.i.ready)]
        out = self.logits.payload
        m.d.comb += [self.logits.valid.eq(s.valid & wanted & argmax_ready),
                     out.value.eq(s.value), out.value1.eq(s.value1), out.pair.eq(s.pair), out.last.eq(s.last),
                     s.ready.eq(~wanted | (self.logits.ready & argmax_ready))]

    def _last_sequence(self):
        """S - 1: the last of the pass's sequences (their state vectors): the last column in a
        decode pass, 0 in a prefill (whose columns are one sequence)."""
        return Mux(self.prefill, 0, self.last_column)

    def _state_word(self, column, row):
        """The state-buffer word of element ``row`` of ``column``'s state (a prefill's columns share
        one state, the first vector's)."""
        return Mux(self.prefill, 0, column) * self.state_rows + (row >> self.state_lanes_log2)

    def _stage_drain_state(self, m, u, t, s):
        """After each layer's ``attn.in`` record, once the MLGRU has written its last element back:
        the layer's new state of the pass's S sequences (decode: every column's; prefill: the one,
        whose last column's it is) from the state buffer to ``state_out``, D values each, one per
        cycle, while the layer's other records run. Words are read ahead into a small FIFO (the
        read port is free after the record). The next layer's state loads, and the head's logits
        leave, once it is all out."""
        D, W, N = self.hidden, self.state_lanes, self.columns
        lanes_log2 = self.state_lanes_log2
        fifo = u.drain_fifo
        d = SimpleNamespace(on=Signal(), column=Signal(column_shape(N)), word=Signal(16), got=Signal(),
                            lane=Signal(range(max(W, 2))))
        mlgru_empty = ~(s.valid & (s.step == RecordStep.ATTN_IN) & (s.consumer == 2)) & (u.side.level == 0)
        m.d.comb += t.drain_idle.eq(~t.drain_pending & ~d.on & ~d.got & (fifo.level == 0))
        with m.If(t.drain_pending & mlgru_empty & ~d.on):
            m.d.sync += [t.drain_pending.eq(0), d.on.eq(1), d.column.eq(0), d.word.eq(0)]
        issue = d.on & (fifo.level + d.got < 3)        # the FIFO has room for it and the one in flight
        m.d.sync += d.got.eq(issue)
        with m.If(issue):
            m.d.comb += [u.state_r.addr.eq(d.column * self.state_rows + d.word), u.state_r.en.eq(1)]
            m.d.sync += d.word.eq(d.word + 1)
            with m.If(d.word == (D >> lanes_log2) - 1):
                m.d.sync += [d.word.eq(0), d.column.eq(d.column + 1)]
                with m.If(d.column == self._last_sequence()):
                    m.d.sync += d.on.eq(0)
        m.d.comb += [fifo.i.valid.eq(d.got), fifo.i.payload.eq(u.state_r.data),
                     self.state_out.valid.eq(fifo.o.valid), self.state_out.payload.eq(fifo.o.payload[d.lane])]
        with m.If(self.state_out.valid & self.state_out.ready):
            m.d.sync += d.lane.eq(d.lane + 1)
            with m.If(d.lane == W - 1):
                m.d.comb += fifo.o.ready.eq(1)
                m.d.sync += d.lane.eq(0)
        with m.If(t.flush):
            m.d.sync += [t.drain_pending.eq(0), d.on.eq(0), d.got.eq(0), d.lane.eq(0)]

    def _argmax_results(self, m, u, t):
        """Each column's argmax as its logits end; the pass ends when every wanted column's is known
        (decode: columns 0 .. N-1; prefill: the last)."""
        N = self.columns
        for c, unit in enumerate(u.argmax):
            m.d.comb += [unit.o.ready.eq(1), self.column_argmax[c].eq(t.best_index[c])]
            with m.If(unit.o.valid):
                m.d.sync += [t.best_value[c].eq(unit.o.payload.value), t.best_index[c].eq(unit.o.payload.index),
                             t.argmax_done[c].eq(1)]
        done_now = Signal(N)
        m.d.comb += done_now.eq(t.argmax_done | Cat(*[unit.o.valid for unit in u.argmax]))
        wanted = Signal(N)
        all_columns = (Const(2, N + 1) << self.last_column) - 1
        m.d.comb += wanted.eq(Mux(self.prefill, Const(1, N) << self.last_column, all_columns))
        m.d.comb += t.finish.eq(((done_now & wanted) == wanted) & t.drain_idle)
        result = Mux(self.prefill, self.last_column, 0)
        m.d.comb += [self.argmax.eq(t.best_index[result]), self.argmax_value.eq(t.best_value[result])]

    def _mlgru_results(self, m, u, t, x):
        """MLGRU results (one or two rows, the lanes in lockstep): the new states h back to the
        state buffer (whence they leave, and a prefill's next column starts from them), w (ACT)
        and g to ``attn.out``."""
        side, W = u.side, self.state_lanes
        side_out = data.View(u.side_layout, side.r_data)
        lead = u.mlgru[0]
        move = lead.o.valid & x.mlgru.ready
        m.d.comb += [x.mlgru.valid.eq(lead.o.valid), side.r_en.eq(move), x.mlgru.payload.pair.eq(side_out.pair),
                     x.mlgru.payload.column.eq(side_out.column), x.mlgru.payload.last.eq(side_out.last)]
        for k, mlgru in enumerate(u.mlgru):
            m.d.comb += [mlgru.o.ready.eq(x.mlgru.ready), x.mlgru.payload.value[k].eq(mlgru.o.payload.w),
                         x.mlgru.payload.norm[k].eq(side_out.g[k])]
        lanes_log2 = self.state_lanes_log2
        first = side_out.row[:lanes_log2] if lanes_log2 else 0
        with m.If(move):
            # a pair's rows (the first even) share a word: lanes first and first + 1
            m.d.comb += [u.state_w.addr.eq(self._state_word(side_out.column, side_out.row)),
                         u.state_w.en.eq((Mux(side_out.pair, 0b11, 0b01) if self.lanes > 1 else 1) << first)]
            h = [mlgru.o.payload.h for mlgru in u.mlgru]
            m.d.comb += [u.state_w.data[w].eq(Mux(side_out.pair, h[-1], h[0]) if w % 2 else h[0]) for w in range(W)]
            if self.columns > 1:
                m.d.sync += t.mlgru_rows[side_out.column].eq(t.mlgru_rows[side_out.column] + 1 + side_out.pair)
                with m.If(side_out.last):
                    m.d.sync += t.mlgru_done.eq(t.mlgru_done | (Const(1, self.columns) << side_out.column))

    def _glu_results(self, m, u, x):
        """GLU results (ACT; one or two rows, the lanes in lockstep) with their column, pair and last
        from the GLUs' side FIFO: ``mlp.out``'s input."""
        side, lead = u.glu_side, u.glu[0]
        side_out = data.View(u.glu_side_layout, side.r_data)
        m.d.comb += [x.glu.valid.eq(lead.o.valid), side.r_en.eq(lead.o.valid & x.glu.ready),
                     x.glu.payload.column.eq(side_out.column), x.glu.payload.pair.eq(side_out.pair),
                     x.glu.payload.last.eq(side_out.last)]
        for k, glu in enumerate(u.glu):
            m.d.comb += [glu.o.ready.eq(x.glu.ready), x.glu.payload.value[k].eq(glu.o.payload),
                         x.glu.payload.norm[k].eq(glu.o.payload)]

    def _phase(self, m, u, t):
        """``phase`` for the counters (``registers.Phase``)."""
        engine = u.engine
        with m.If((t.fsm_state == _State.EMBED) | t.loading):
            m.d.comb += self.phase.eq(regs.Phase.EMBED)
        with m.Elif(t.fsm_state == _State.RUN):
            with m.If(engine.phase == 2):
                m.d.comb += self.phase.eq(regs.Phase.MATVEC)
            with m.Elif(engine.phase == 1):
                m.d.comb += self.phase.eq(regs.Phase.PREP)
            with m.Elif(t.step == RecordStep.HEAD):
                m.d.comb += self.phase.eq(regs.Phase.HEAD)
            with m.Else():
                m.d.comb += self.phase.eq(regs.Phase.ELEMENTWISE)
        with m.Else():
            m.d.comb += self.phase.eq(regs.Phase.IDLE)
