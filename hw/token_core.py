"""The token datapath: every layer and the head for one token, fed by the weight stream."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from mmfree.contract import registers as regs
from .argmax import Argmax
from .bitlinear_engine import BitLinearEngine
from .embedding import Bf16ToAct
from .fixed_point import saturate
from .glu import GLU
from .mlgru import MLGRU
from .stream_fifo import check_ram_style, ram_style_attrs

__all__ = ["TokenCore", "LOGIT_LAYOUT", "RecordStep"]

ACT = signed(nx.ACT_BITS)
#: One logit on the output stream (ACT), ``last`` on the final one of the token.
LOGIT_LAYOUT = data.StructLayout({"value": ACT, "last": 1})
#: What travels with an element through the MLGRU: the gate g (the next
#: record's norm vector), the row and whether it is the last one.
_MLGRU_SIDE = data.StructLayout({"g": ACT, "row": 16, "last": 1})


class RecordStep(enum.Enum, shape=3):
    """Which STREAM record of a layer the engine's outputs belong to (weight_image.stream_plan order)."""

    ATTN_IN = 0       # i, f, g: kept in on-chip buffers
    LOWER_BOUND = 1   # the layer's gates: each one completes an MLGRU element
    ATTN_OUT = 2      # o: first residual add
    MLP_IN = 3        # a then b (2I rows): a kept, b completes a GLU element
    MLP_OUT = 4       # d: second residual add
    HEAD = 5          # logits


class _State(enum.Enum, shape=3):
    IDLE = 0
    CLEAR = 1
    EMBED = 2
    RUN = 3


class TokenCore(wiring.Component):
    """One token through the whole model, bit exact with ``IntegerModel.step``.

    Per START the ``weights`` stream delivers the token's embedding row
    (``embed_stride`` bytes: ``hidden`` bf16 values, then padding) and then
    the image's STREAM region (``weight_image.stream_plan`` order). The row is
    widened to ACT (:class:`~mmfree.hw.embedding.Bf16ToAct`) into the residual
    buffer; every STREAM record then goes to the
    :class:`~mmfree.hw.bitlinear_engine.BitLinearEngine`, whose outputs this
    core routes (``RecordStep``):

    * ``attn.in``: i, f, g into three D-buffers;
    * the lower-bound record: gate j (a uint32 word of the stream, GATE
      Q0.32), i_j, f_j, g_j and the layer's state h_j enter the
      :class:`~mmfree.hw.mlgru.MLGRU`; the new state is written back and
      ``w_j = g_j * silu(h_j)`` with ``g_j`` is ``attn.out``'s input;
    * ``attn.out``: ``r_j = saturate(h_j + o_j)`` into the residual buffer and
      into ``mlp.in``;
    * ``mlp.in``: a is buffered, each b_j completes ``silu(a_j) * b_j``
      (:class:`~mmfree.hw.glu.GLU`), ``mlp.out``'s input;
    * ``mlp.out``: ``h_j = saturate(r_j + d_j)``: residual buffer and the
      next record's input (the next layer's ``attn.in`` or the head);
    * the head: logits out on ``logits`` and a running argmax.

    So every element-wise step rides on the stream of a matrix's outputs:
    none of them is a pass of its own, and the next record's input is ready
    when its matrix is. Every vector (residual, i/f/g, a, the recurrent
    state), every BitLinear input and every logit is ACT (``numerics.ACT_BITS``
    = 48, Q15.32); residual adds saturate in ACT.

    Ports
    -----
    weights : stream of ``8 * engine_bytes``-bit beats (byte i at bits 8i).
    logits : stream of :data:`LOGIT_LAYOUT`, the V logits (ACT) in order.
    start, clear_state : one-cycle pulses, accepted when not ``busy``.
    hidden, layers, intermediate, embed_stride : the model's D, L, I and the
        embedding row stride in bytes (a multiple of ``engine_bytes``);
        held stable during a token.
    busy : a token or a state clear is running.
    done : one-cycle pulse at the end of a token (argmax valid, every
        logit transferred) or of an aborted one (``error`` nonzero).
    error : :class:`~mmfree.contract.registers.ErrorCode` of the last token.
    argmax, argmax_value : index (lowest on ties) and value (ACT) of the largest logit.
    phase : :class:`~mmfree.contract.registers.Phase` of this cycle.
    weight_wait : the datapath wanted a weight beat and had none.

    Parameters
    ----------
    engine_bytes, rows_per_block : the engine's beat width and the image's rows_per_block.
    max_hidden, max_layers, max_intermediate, max_vocab : on-chip capacity.
    elements_per_cycle : the engine's input-stage elements per cycle (1, 2 or 4;
        see :class:`~mmfree.hw.bitlinear_engine.BitLinearEngine`).
    state_ram_style : None or ``"ultra"``/``"block"``: synthesis ``ram_style`` of the
        recurrent-state memory (L x D ACT words, the largest on chip: 1.2 Mbit for
        the 370M shape, which fits six UltraRAMs instead of ~36 block RAMs).
    """

    def __init__(self, *, engine_bytes: int, rows_per_block: int, max_hidden: int, max_layers: int,
                 max_intermediate: int, max_vocab: int, elements_per_cycle: int = 1,
                 state_ram_style: str | None = None):
        self.state_ram_style = check_ram_style(state_ram_style)
        for name, value in (("max_hidden", max_hidden), ("max_layers", max_layers),
                            ("max_intermediate", max_intermediate), ("max_vocab", max_vocab)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if not 1 <= value < (1 << 16) and name != "max_vocab":
                raise ValueError(f"{name} must be in [1, 65535], not {value}")
        if not isinstance(max_vocab, int) or not 1 <= max_vocab <= (1 << 24):
            raise ValueError(f"max_vocab must be in [1, 2**24], not {max_vocab}")
        self.engine_bytes, self.rows_per_block = engine_bytes, rows_per_block
        self.max_hidden, self.max_layers = max_hidden, max_layers
        self.max_intermediate, self.max_vocab = max_intermediate, max_vocab
        # Built here so a bad engine_bytes / rows_per_block raises at construction.
        self._engine = BitLinearEngine(engine_bytes=engine_bytes, rows_per_block=rows_per_block,
                                       max_k=max(max_hidden, max_intermediate),
                                       max_rows=max(2 * max_intermediate, max_vocab, max_hidden),
                                       elements_per_cycle=elements_per_cycle)
        super().__init__({
            "weights": In(stream.Signature(unsigned(8 * engine_bytes))),
            "logits": Out(stream.Signature(LOGIT_LAYOUT)),
            "start": In(1), "clear_state": In(1),
            "hidden": In(16), "layers": In(16), "intermediate": In(16), "embed_stride": In(16),
            "busy": Out(1), "done": Out(1), "error": Out(8),
            "argmax": Out(32), "argmax_value": Out(ACT),
            "phase": Out(3), "weight_wait": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        E = self.engine_bytes
        D, L, I = self.hidden, self.layers, self.intermediate

        # Everything that holds per-token pipeline state restarts at START,
        # so a token aborted by an error leaves nothing behind.
        flush = Signal()
        m.submodules.engine = engine = ResetInserter(flush)(self._engine)
        m.submodules.mlgru = mlgru = ResetInserter(flush)(MLGRU())
        m.submodules.glu = glu = ResetInserter(flush)(GLU())
        m.submodules.embed = embed = ResetInserter(flush)(Bf16ToAct())
        m.submodules.argmax = argmax = ResetInserter(flush)(Argmax(max_length=self.max_vocab))
        m.submodules.mlgru_side = side = ResetInserter(flush)(
            SyncFIFOBuffered(width=_MLGRU_SIDE.size, depth=MLGRU.latency + 4))

        # ---- on-chip vectors -------------------------------------------------
        def vector(name, depth, shape=ACT, ram_style=None):
            mem = Memory(shape=shape, depth=depth, init=[], attrs=ram_style_attrs(ram_style))
            m.submodules[name] = mem
            return mem.write_port(), mem.read_port(domain="sync")

        resid_w, resid_r = vector("residual", self.max_hidden)
        ibuf_w, ibuf_r = vector("i_buffer", self.max_hidden)
        fbuf_w, fbuf_r = vector("f_buffer", self.max_hidden)
        gbuf_w, gbuf_r = vector("g_buffer", self.max_hidden)
        abuf_w, abuf_r = vector("a_buffer", self.max_intermediate)
        state_w, state_r = vector("state", self.max_layers * self.max_hidden, ram_style=self.state_ram_style)

        fsm_state = Signal(_State)
        step = Signal(RecordStep)
        layer = Signal(16)
        state_base = Signal(range(self.max_layers * self.max_hidden + 1))
        row = Signal(range(max(2 * self.max_intermediate, self.max_vocab, self.max_hidden) + 1))
        error = Signal(8)
        best_value, best_index = Signal(ACT), Signal(32)
        finish = Signal()

        m.d.comb += [self.busy.eq(fsm_state != _State.IDLE), self.error.eq(error),
                     self.argmax.eq(best_index), self.argmax_value.eq(best_value)]
        m.d.sync += self.done.eq(0)

        # ---- control -----------------------------------------------------------
        clear_addr = Signal.like(state_base)
        embed_beats = Signal(16)
        too_big = ((D > self.max_hidden) | (L > self.max_layers) | (I > self.max_intermediate)
                   | (D == 0) | (L == 0) | (I == 0))
        with m.Switch(fsm_state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.comb += flush.eq(1)
                    m.d.sync += [step.eq(RecordStep.ATTN_IN), layer.eq(0), state_base.eq(0), row.eq(0),
                                 embed_beats.eq(self.embed_stride // E)]
                    with m.If(too_big):
                        m.d.sync += [error.eq(regs.ErrorCode.SHAPE), self.done.eq(1)]
                    with m.Else():
                        m.d.sync += [error.eq(0), fsm_state.eq(_State.EMBED)]
                with m.Elif(self.clear_state):
                    m.d.sync += [clear_addr.eq(0), fsm_state.eq(_State.CLEAR)]
            with m.Case(_State.CLEAR):
                # Zero the recurrent state of every layer, one word per cycle.
                m.d.comb += [state_w.addr.eq(clear_addr), state_w.data.eq(0), state_w.en.eq(1)]
                m.d.sync += clear_addr.eq(clear_addr + 1)
                with m.If(clear_addr == self.max_layers * self.max_hidden - 1):
                    m.d.sync += fsm_state.eq(_State.IDLE)
            with m.Case(_State.EMBED, _State.RUN):
                with m.If(engine.error):
                    m.d.sync += [error.eq(regs.ErrorCode.BAD_RECORD), self.done.eq(1),
                                 fsm_state.eq(_State.IDLE)]
                with m.Elif(finish):
                    m.d.sync += [self.done.eq(1), fsm_state.eq(_State.IDLE)]

        # ---- embedding row: E/2 bf16 values per beat, one per cycle ---------------
        beat = Signal(8 * E)
        beat_full = Signal()
        half = Signal(range(E // 2))
        element = Signal(16)           # index of the value under `half` within the row
        beats_taken = Signal(16)
        with m.If(fsm_state == _State.EMBED):
            m.d.comb += self.weights.ready.eq(~beat_full & (beats_taken != embed_beats))
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
                    with m.If(beats_taken == embed_beats):
                        m.d.sync += fsm_state.eq(_State.RUN)
        with m.Else():
            m.d.sync += [beats_taken.eq(0), element.eq(0), beat_full.eq(0)]
        with m.If(fsm_state == _State.RUN):
            wiring.connect(m, wiring.flipped(self.weights), engine.weights)
        # After the head's matrix the idle engine still asks for a next header;
        # the stream is over, so that is not waiting for weights.
        head_streamed = Signal()
        with m.If(flush):
            m.d.sync += head_streamed.eq(0)
        with m.Elif((step == RecordStep.HEAD) & (engine.phase == 2)):
            m.d.sync += head_streamed.eq(1)
        m.d.comb += self.weight_wait.eq((engine.weight_wait & ~(head_streamed & (engine.phase != 2)))
                                        | ((fsm_state == _State.EMBED) & self.weights.ready
                                           & ~self.weights.valid))

        # ---- the next record's input: one of four producers at a time -------------
        # Their outputs never overlap in time (each needs the previous record's
        # whole input consumed), so the engine's x port is their OR.
        producers = []

        def producer(name):
            s = stream.Signature(engine.x.payload.shape()).create(path=(name,))
            producers.append(s)
            m.d.comb += s.ready.eq(engine.x.ready)
            return s

        embed_x, mlgru_x, resid_x, glu_x = (producer(n) for n in ("embed_x", "mlgru_x", "resid_x", "glu_x"))
        m.d.comb += engine.x.valid.eq(sum(p.valid for p in producers) != 0)
        for p in producers:
            with m.If(p.valid):
                m.d.comb += engine.x.payload.eq(p.payload)

        # Embedding values: into the residual buffer and into attn.in.
        embed_row = Signal(16)
        m.d.comb += [embed_x.valid.eq(embed.o.valid), embed.o.ready.eq(embed_x.ready),
                     embed_x.payload.value.eq(embed.o.payload), embed_x.payload.norm.eq(embed.o.payload),
                     embed_x.payload.last.eq(embed_row == D - 1)]
        with m.If(embed.o.valid & embed.o.ready):
            m.d.comb += [resid_w.addr.eq(embed_row), resid_w.data.eq(embed.o.payload), resid_w.en.eq(1)]
            m.d.sync += embed_row.eq(Mux(embed_row == D - 1, 0, embed_row + 1))

        # ---- engine outputs: stage 0 reads the buffers, stage 1 routes ----------
        y = engine.y
        s1_valid, s1_ready = Signal(), Signal()
        s1_step = Signal(RecordStep)
        s1_consumer, s1_value, s1_last = Signal(2), Signal(ACT), Signal()
        s1_row, s1_bhalf = Signal.like(row), Signal()
        advance = ~s1_valid | s1_ready
        m.d.comb += y.ready.eq(advance & (fsm_state == _State.RUN))

        bhalf = (step == RecordStep.MLP_IN) & (row >= I)
        for port in (resid_r, ibuf_r, fbuf_r, gbuf_r, abuf_r, state_r):
            m.d.comb += port.en.eq(advance)
        m.d.comb += [resid_r.addr.eq(row), ibuf_r.addr.eq(row), fbuf_r.addr.eq(row), gbuf_r.addr.eq(row),
                     abuf_r.addr.eq(row - I), state_r.addr.eq(state_base + row)]

        with m.If(advance):
            m.d.sync += s1_valid.eq(y.valid & y.ready)
        with m.If(y.valid & y.ready):
            m.d.sync += [s1_step.eq(step), s1_consumer.eq(y.payload.consumer), s1_value.eq(y.payload.value),
                         s1_last.eq(y.payload.last), s1_row.eq(row), s1_bhalf.eq(bhalf)]
            m.d.sync += row.eq(Mux(y.payload.last, 0, row + 1))
            with m.If(y.payload.last):
                # The record (or its last consumer) is complete: move to the next one.
                with m.Switch(step):
                    with m.Case(RecordStep.ATTN_IN):
                        with m.If(y.payload.consumer == 2):
                            m.d.sync += step.eq(RecordStep.LOWER_BOUND)
                    with m.Case(RecordStep.LOWER_BOUND):
                        m.d.sync += step.eq(RecordStep.ATTN_OUT)
                    with m.Case(RecordStep.ATTN_OUT):
                        m.d.sync += step.eq(RecordStep.MLP_IN)
                    with m.Case(RecordStep.MLP_IN):
                        m.d.sync += step.eq(RecordStep.MLP_OUT)
                    with m.Case(RecordStep.MLP_OUT):
                        m.d.sync += [layer.eq(layer + 1), state_base.eq(state_base + D),
                                     step.eq(Mux(layer + 1 == L, RecordStep.HEAD, RecordStep.ATTN_IN))]

        residual_sum = Signal(ACT)
        m.d.comb += residual_sum.eq(saturate(resid_r.data + s1_value))
        side_in = Signal(_MLGRU_SIDE)
        m.d.comb += [side_in.g.eq(gbuf_r.data), side_in.row.eq(s1_row), side_in.last.eq(s1_last),
                     side.w_data.eq(side_in)]
        with m.Switch(s1_step):
            with m.Case(RecordStep.ATTN_IN):
                m.d.comb += s1_ready.eq(1)
                for index, port in enumerate((ibuf_w, fbuf_w, gbuf_w)):
                    m.d.comb += [port.addr.eq(s1_row), port.data.eq(s1_value),
                                 port.en.eq(s1_valid & (s1_consumer == index))]
            with m.Case(RecordStep.LOWER_BOUND):
                # h_new = f*h + silu(i)*(1-f) with f from the gate; w = g*silu(h_new)
                m.d.comb += [mlgru.i.payload.i.eq(ibuf_r.data), mlgru.i.payload.f.eq(fbuf_r.data),
                             mlgru.i.payload.g.eq(gbuf_r.data), mlgru.i.payload.h.eq(state_r.data),
                             mlgru.i.payload.lb.eq(s1_value[:nx.GATE_FRAC]),
                             mlgru.i.valid.eq(s1_valid & side.w_rdy),
                             side.w_en.eq(s1_valid & mlgru.i.ready),
                             s1_ready.eq(mlgru.i.ready & side.w_rdy)]
            with m.Case(RecordStep.ATTN_OUT, RecordStep.MLP_OUT):
                # r = saturate(h + o); h = saturate(r + d)
                # (norm is ignored by the engine here; driving it keeps no field constant,
                # which Verilator would flag as an empty always block)
                m.d.comb += [resid_x.valid.eq(s1_valid), resid_x.payload.value.eq(residual_sum),
                             resid_x.payload.norm.eq(residual_sum),
                             resid_x.payload.last.eq(s1_last), s1_ready.eq(resid_x.ready),
                             resid_w.addr.eq(s1_row), resid_w.data.eq(residual_sum),
                             resid_w.en.eq(s1_valid & resid_x.ready)]
            with m.Case(RecordStep.MLP_IN):
                with m.If(s1_bhalf):
                    m.d.comb += [glu.i.payload.a.eq(abuf_r.data), glu.i.payload.b.eq(s1_value),
                                 glu.i.valid.eq(s1_valid), s1_ready.eq(glu.i.ready)]
                with m.Else():
                    m.d.comb += [abuf_w.addr.eq(s1_row), abuf_w.data.eq(s1_value), abuf_w.en.eq(s1_valid),
                                 s1_ready.eq(1)]
            with m.Case(RecordStep.HEAD):
                # Every logit goes out and through the argmax in the same transfer.
                m.d.comb += [self.logits.valid.eq(s1_valid & argmax.i.ready),
                             self.logits.payload.value.eq(s1_value), self.logits.payload.last.eq(s1_last),
                             argmax.i.valid.eq(s1_valid & self.logits.ready),
                             argmax.i.payload.value.eq(s1_value), argmax.i.payload.last.eq(s1_last),
                             s1_ready.eq(self.logits.ready & argmax.i.ready)]

        # MLGRU results: the new state back to the layer's slot, w and g to attn.out.
        side_out = data.View(_MLGRU_SIDE, side.r_data)
        m.d.comb += [mlgru_x.valid.eq(mlgru.o.valid), mlgru.o.ready.eq(mlgru_x.ready),
                     side.r_en.eq(mlgru.o.valid & mlgru_x.ready),
                     mlgru_x.payload.value.eq(mlgru.o.payload.w), mlgru_x.payload.norm.eq(side_out.g),
                     mlgru_x.payload.last.eq(side_out.last)]
        with m.If(mlgru.o.valid & mlgru_x.ready):
            m.d.comb += [state_w.addr.eq(state_base + side_out.row), state_w.data.eq(mlgru.o.payload.h),
                         state_w.en.eq(1)]

        # The token ends when the argmax of its logits is known.
        m.d.comb += [argmax.o.ready.eq(1), finish.eq(argmax.o.valid)]
        with m.If(argmax.o.valid):
            m.d.sync += [best_value.eq(argmax.o.payload.value), best_index.eq(argmax.o.payload.index)]

        # GLU results: mlp.out's input, the last one when I have come out.
        glu_row = Signal(16)
        m.d.comb += [glu_x.valid.eq(glu.o.valid), glu.o.ready.eq(glu_x.ready),
                     glu_x.payload.value.eq(glu.o.payload), glu_x.payload.norm.eq(glu.o.payload),
                     glu_x.payload.last.eq(glu_row == I - 1)]
        with m.If(glu.o.valid & glu.o.ready):
            m.d.sync += glu_row.eq(Mux(glu_row == I - 1, 0, glu_row + 1))
        with m.If(flush):
            m.d.sync += [glu_row.eq(0), embed_row.eq(0)]

        # ---- phase for the counters ----------------------------------------------
        with m.If(fsm_state == _State.EMBED):
            m.d.comb += self.phase.eq(regs.Phase.EMBED)
        with m.Elif(fsm_state == _State.RUN):
            with m.If(engine.phase == 2):
                m.d.comb += self.phase.eq(regs.Phase.MATVEC)
            with m.Elif(engine.phase == 1):
                m.d.comb += self.phase.eq(regs.Phase.PREP)
            with m.Elif(step == RecordStep.HEAD):
                m.d.comb += self.phase.eq(regs.Phase.HEAD)
            with m.Else():
                m.d.comb += self.phase.eq(regs.Phase.ELEMENTWISE)
        with m.Else():
            m.d.comb += self.phase.eq(regs.Phase.IDLE)
        m.d.comb += engine.clear_error.eq(flush)
        return m
