"""The accelerator's top level: registers, DDR reader, weight FIFO, token datapath, logits writer."""
from __future__ import annotations

import math

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from mmfree.contract import registers as regs
from .axi import AXI4LiteSignature, AXI4ReadSignature, AXI4Signature, AXI4WriteSignature, FlatInterface, flat_ports
from .axi_reader import ALIGN_BYTES, AxiReader
from .axi_writer import AxiWriter
from .control_registers import ADDR_WIDTH as REG_ADDR_WIDTH, ControlRegisters
from .stream_fifo import check_ram_style
from .weight_fifo import WeightFifo

__all__ = ["Accelerator", "CORE_PORTS", "build_constants"]

#: Ports the token datapath must have (``hw.token_core.TokenCore`` or a stand-in): name -> (direction, width);
#: ``weights`` and ``logits`` are streams. ``intermediate`` is optional. ``argmax_value`` and the logits'
#: ``value`` are signed, at most 64 bits (TokenCore: ACT, 48), and sign-extended to 64 on the way out.
#: A core with a ``state_out`` stream (and ``layer_bytes``) keeps its recurrent state in memory (the
#: reads and writes below); a core without one may have a ``clear_state`` pulse instead.
CORE_PORTS = {"start": (In, 1), "hidden": (In, 16), "layers": (In, 16),
              "embed_stride": (In, 16), "busy": (Out, 1), "done": (Out, 1), "error": (Out, 8),
              "argmax": (Out, 32), "argmax_value": (Out, 48), "phase": (Out, 3), "weight_wait": (Out, 1)}

_PHASE_COUNTERS = {regs.Phase.EMBED: "cycles_embed", regs.Phase.PREP: "cycles_prep",
                   regs.Phase.MATVEC: "cycles_matvec", regs.Phase.ELEMENTWISE: "cycles_elementwise",
                   regs.Phase.HEAD: "cycles_head"}


class _State(enum.Enum, shape=3):
    IDLE = 0
    CLEAR = 1        # zeros over one slot of recurrent state (or the core's clear_state)
    PREPARE = 2      # a column's embedding row address: EMBED_ADDR + token * EMBED_STRIDE
    LAUNCH = 3       # hand the reads (and the logits write) to the masters
    RUN = 4          # the core computes; reads run ahead into the weight FIFO
    DRAIN = 5        # the core is done: discard unread data, wait for every response
    ABORT = 6        # an AXI error or a starved core: core held in reset, drain as above
    FINISH = 7


def _log2_exact(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value!r}")
    return value.bit_length() - 1


def _int_in(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")


def build_constants(*, bus_bytes, ports, engine_bytes, rows_per_block, max_hidden, max_layers,
                    max_intermediate, max_vocab, design_hash, addr_width=32, columns=1) -> dict[str, int]:
    """The build-identity registers (DESIGN_HASH, BUILD_CONFIG, CAPACITY_*) of a build."""
    b = regs.BY_NAME
    return {
        "DESIGN_HASH": design_hash,
        "BUILD_CONFIG": (b["BUILD_CONFIG"].field("bus_bytes_log2").put(_log2_exact("bus_bytes", bus_bytes)) |
                         b["BUILD_CONFIG"].field("ports").put(ports) |
                         b["BUILD_CONFIG"].field("engine_bytes_log2").put(_log2_exact("engine_bytes", engine_bytes)) |
                         b["BUILD_CONFIG"].field("rows_per_block_log2").put(
                             _log2_exact("rows_per_block", rows_per_block)) |
                         b["BUILD_CONFIG"].field("addr_bits").put(addr_width) |
                         b["BUILD_CONFIG"].field("columns").put(columns)),
        "CAPACITY_DIMS": (b["CAPACITY_DIMS"].field("max_hidden").put(max_hidden) |
                          b["CAPACITY_DIMS"].field("max_layers").put(max_layers)),
        "CAPACITY_INNER": (b["CAPACITY_INNER"].field("max_intermediate").put(max_intermediate) |
                           b["CAPACITY_INNER"].field("max_vocab_log2").put(max(1, math.ceil(math.log2(max_vocab))))),
    }


class Accelerator(wiring.Component):
    """One weight pass per START (one token, or one per column): the MatMul-free LM accelerator with AXI4
    memory ports and AXI4-Lite registers.

    On ``CONTROL.start`` (register map: ``contract/registers.py``):

    1. if a column's token (TOKEN, TOKEN1, .. of columns 0 .. ``PASS.last_column``)
       is ``>= VOCAB``: ``STATUS.error = TOKEN_RANGE`` and done, with no
       memory access;
    2. otherwise the reads are queued on the :class:`AxiReader`: each column's
       embedding row (``EMBED_STRIDE`` bytes at ``EMBED_ADDR + token *
       EMBED_STRIDE``), then for each layer l the state of the pass's sequences
       (S = columns in decode, 1 in prefill: ``8 * hidden`` bytes at
       ``STATE_ADDR + slot * STATE_SLOT_BYTES + l * 8 * hidden``) and the
       layer's ``LAYER_BYTES`` of STREAM, then the rest of STREAM (the head);
       the data passes through the :class:`WeightFifo` to the core's
       ``weights``, and ``core.start`` is pulsed. The reader issues a burst
       whenever there is room downstream for it, so DDR keeps streaming while
       the core computes. (A core without ``state_out``: the rows, then the
       whole STREAM region.)
    3. the core's ``state_out`` (each layer's new state, written back where it was read; a prefill
       writes its last column's) and ``logits`` (V per column whose logits go out), each
       sign-extended to an int64 word (``registers.LOGIT_WORD_BYTES``), are written by the
       :class:`AxiWriter`, the logits to ``LOGITS_ADDR`` (if nonzero; else discarded);
       ARGMAX_VALUE_LO/HI hold the largest, sign-extended the same way;
    4. done (``STATUS.done`` set, ``irq`` high until it is cleared) when the
       core is done, every write is acknowledged and every read has drained
       (data the core did not take is discarded).

    Errors never hang it: a read or write response SLVERR/DECERR
    (``AXI_READ``/``AXI_WRITE``), or a core that still wants weight bytes
    ``starve_cycles`` cycles after the requested ones were all delivered,
    with no weight beat, logit or done meanwhile (``STREAM_SHORT``), abort the
    token: no more bursts are issued, the core is held in reset (its state
    memories keep their contents, partly updated: clear the state before the
    next sequence), outstanding bursts complete (writes with empty strobes)
    and are discarded, then done with the error code. A core error (done
    with ``error`` nonzero) drains the same way with the core's code.

    ``CONTROL.clear_state`` (when no token runs) writes zeros over slot
    ``PASS.clear_slot``'s state in memory (layers x hidden words; a core without
    ``state_out`` gets the pulse instead); a START written together with it, or
    while the clear runs, runs after it. A START while a token runs is ignored.

    Counters (cleared at START): CYCLES_TOTAL (START to done),
    CYCLES_WEIGHT_WAIT (``core.weight_wait``), CYCLES_<phase> (``core.phase``),
    BYTES_READ (R beats x bus width); TOKENS counts the columns of error-free passes
    since the last clear_state.

    Ports (flat, with the names Vivado's IP packager infers)
    -----
    m_axi_p0_* : AXI4 master, read and write channels (the logits writes use it).
    m_axi_p1_* .. m_axi_p<ports-1>_* : AXI4 read-only masters.
    s_axil_* : AXI4-Lite slave, 8 address bits (the register window).
    irq : level interrupt, ``STATUS.done``.

    Parameters
    ----------
    bus_bytes : 8 (Zynq-7000 HP, 64-bit) or 16 (Zynq UltraScale+ HP, 128-bit).
    ports : 1..4 AXI read ports.
    engine_bytes : weight bytes per ``core.weights`` beat (power of two, 4..256).
    rows_per_block : the weight image's rows_per_block (power of two, multiple of engine_bytes).
    fifo_bytes : weight FIFO depth (power of two).
    max_hidden, max_layers, max_intermediate, max_vocab : the core's capacity.
    columns : tokens per weight pass and sequence slots (``TokenCore``), 1..8.
    design_hash : the build's content hash, its first 32 bits (DESIGN_HASH register).
    outstanding : read (and write) bursts in flight per port, 1..16.
    max_burst_beats : longest AXI burst, read or write (power of two, 256 for AXI4; 16 for the
        Zynq-7000's AXI3 HP ports, so no interconnect has to split bursts).
    addr_width : AXI address bits (32).
    starve_cycles : how long a starved core (see above) waits before STREAM_SHORT (65536).
    large_ram_style : None, or the synthesis ``ram_style`` of the weight FIFO and the core's
        deep per-column vectors (``"ultra"`` on UltraScale+: UltraRAM instead of block RAM).
    core : the token datapath (default ``TokenCore`` with these parameters);
        any component with the ``CORE_PORTS`` and the ``weights``/``logits`` streams.

    Attributes
    ----------
    reader, writer, weight_fifo, registers : the units, for inspection.
    constants : the build-identity register values.
    """

    def __init__(self, *, bus_bytes: int, ports: int, engine_bytes: int, rows_per_block: int, fifo_bytes: int,
                 max_hidden: int, max_layers: int, max_intermediate: int, max_vocab: int, design_hash: int = 0,
                 outstanding: int = 4, max_burst_beats: int = 256, addr_width: int = 32,
                 starve_cycles: int = 1 << 16,
                 elements_per_cycle: int = 1, large_ram_style: str | None = None, columns: int = 1,
                 elementwise_lanes: int = 1, core=None):
        if bus_bytes not in (8, 16):
            raise ValueError(f"bus_bytes must be 8 or 16, not {bus_bytes!r}")
        _int_in("ports", ports, 1, 4)
        _log2_exact("engine_bytes", engine_bytes)
        _int_in("engine_bytes", engine_bytes, 4, 256)
        _log2_exact("rows_per_block", rows_per_block)
        if rows_per_block % engine_bytes or rows_per_block >= (1 << 16):
            raise ValueError(f"rows_per_block must be a multiple of engine_bytes ({engine_bytes}) "
                             f"below 65536, not {rows_per_block}")
        _int_in("max_hidden", max_hidden, 1, 65535)
        _int_in("max_layers", max_layers, 1, 65535)
        _int_in("max_intermediate", max_intermediate, 1, 65535)
        _int_in("max_vocab", max_vocab, 1, 1 << 24)
        _int_in("design_hash", design_hash, 0, (1 << 32) - 1)
        _int_in("outstanding", outstanding, 1, 16)
        _int_in("starve_cycles", starve_cycles, 1, 1 << 24)
        _int_in("columns", columns, 1, regs.MAX_COLUMNS)
        self.starve_cycles = starve_cycles
        self.params = dict(bus_bytes=bus_bytes, ports=ports, engine_bytes=engine_bytes,
                           rows_per_block=rows_per_block, fifo_bytes=fifo_bytes, max_hidden=max_hidden,
                           max_layers=max_layers, max_intermediate=max_intermediate, max_vocab=max_vocab,
                           design_hash=design_hash, outstanding=outstanding, max_burst_beats=max_burst_beats,
                           addr_width=addr_width,
                           elements_per_cycle=elements_per_cycle, large_ram_style=large_ram_style, columns=columns,
                           elementwise_lanes=elementwise_lanes)
        check_ram_style(large_ram_style)
        width = max(engine_bytes, bus_bytes * (1 << (ports - 1).bit_length()))
        if (not isinstance(fifo_bytes, int) or isinstance(fifo_bytes, bool) or fifo_bytes < 2 * width
                or fifo_bytes & (fifo_bytes - 1)):
            raise ValueError(f"fifo_bytes must be a power of two of at least {2 * width}, not {fifo_bytes!r}")
        if core is not None:  # checked before any unit is built, so a refusal leaves nothing unused
            self._check_core(core, engine_bytes)
        # A core whose logits beats may carry two (TokenCore's) gets a writer taking word pairs.
        logit_pairs = core is None or "pair" in dict(core.signature.members["logits"].signature.members["payload"].shape)
        self.writer = AxiWriter(bus_bytes=bus_bytes, word_bytes=regs.LOGIT_WORD_BYTES, addr_width=addr_width,
                                outstanding=outstanding, max_burst_beats=max_burst_beats,
                                data_lanes=2 if logit_pairs else 1)
        self.reader = AxiReader(bus_bytes=bus_bytes, ports=ports, addr_width=addr_width, outstanding=outstanding,
                                burst_bytes=max(self.writer.burst_bytes, ALIGN_BYTES))
        self.weight_fifo = WeightFifo(in_bytes=self.reader.word_bytes, out_bytes=engine_bytes,
                                      depth_bytes=fifo_bytes, ram_style=large_ram_style)
        self.constants = build_constants(bus_bytes=bus_bytes, ports=ports, engine_bytes=engine_bytes,
                                         rows_per_block=rows_per_block, max_hidden=max_hidden,
                                         max_layers=max_layers, max_intermediate=max_intermediate,
                                         max_vocab=max_vocab, design_hash=design_hash, addr_width=addr_width,
                                         columns=columns)
        self.registers = ControlRegisters(constants=self.constants)
        if core is None:
            from .token_core import TokenCore
            core = TokenCore(engine_bytes=engine_bytes, rows_per_block=rows_per_block, max_hidden=max_hidden,
                             max_layers=max_layers, max_intermediate=max_intermediate, max_vocab=max_vocab,
                             elements_per_cycle=elements_per_cycle, columns=columns,
                             elementwise_lanes=elementwise_lanes, buffer_ram_style=large_ram_style)
            self._check_core(core, engine_bytes)
        self.core = core

        self._read_sig = AXI4ReadSignature(addr_width=addr_width, data_bytes=bus_bytes)
        self._write_sig = AXI4WriteSignature(addr_width=addr_width, data_bytes=bus_bytes)
        members = flat_ports("m_axi_p0", AXI4Signature(addr_width=addr_width, data_bytes=bus_bytes))
        for p in range(1, ports):
            members.update(flat_ports(f"m_axi_p{p}", self._read_sig))
        members.update(flat_ports("s_axil", AXI4LiteSignature(addr_width=REG_ADDR_WIDTH).flip()))
        members["irq"] = Out(1)
        super().__init__(members)

    @staticmethod
    def _check_core(core, engine_bytes):
        members = getattr(getattr(core, "signature", None), "members", None)
        if members is None:
            raise TypeError(f"core must be a wiring.Component, not {core!r}")
        for name, (flow, width) in CORE_PORTS.items():
            if name not in members or not members[name].is_port or members[name].flow != flow:
                raise ValueError(f"core has no {flow.name.lower()}put port {name!r}")
        for name in ("weights", "logits"):
            if name not in members or members[name].is_port:
                raise ValueError(f"core has no stream port {name!r}")
        width = members["weights"].signature.members["payload"].shape
        if getattr(width, "width", None) != 8 * engine_bytes:
            raise ValueError(f"core.weights must carry {8 * engine_bytes}-bit beats (engine_bytes), not {width!r}")

    def elaborate(self, platform):
        m = Module()
        P = self.params["ports"]
        m.submodules.registers = rg = self.registers
        m.submodules.reader = reader = self.reader
        m.submodules.writer = writer = self.writer
        m.submodules.weight_fifo = fifo = self.weight_fifo
        core_reset = Signal()
        m.submodules.core = ResetInserter(core_reset)(self.core)
        core = self.core

        # ---- the flat top-level ports ----------------------------------------------------
        wiring.connect(m, wiring.flipped(FlatInterface(self, "s_axil", AXI4LiteSignature(
            addr_width=REG_ADDR_WIDTH).flip())), rg.axil)
        for p in range(P):
            wiring.connect(m, wiring.flipped(FlatInterface(self, f"m_axi_p{p}", self._read_sig)), reader.bus[p])
        wiring.connect(m, wiring.flipped(FlatInterface(self, "m_axi_p0", self._write_sig)), writer.bus)
        m.d.comb += self.irq.eq(rg.status_done)

        # ---- data path: reader -> weight FIFO -> core -> (writer) ------------------------------
        wiring.connect(m, reader.data, fifo.i)
        wiring.connect(m, fifo.o, core.weights)
        columns_bad, tokens_in, token_bad = self._connect_core(m, core)
        has_state = "state_out" in core.signature.members

        a = self._pass_registers()
        state, error = a.state, a.error
        with m.If(rg.control_start & ((state == _State.IDLE) | (state == _State.CLEAR))):
            m.d.sync += a.start_pending.eq(1)
        with m.If(rg.control_clear_state & (state == _State.IDLE)):
            m.d.sync += a.clear_pending.eq(1)
        traffic = self._traffic_registers() if has_state else None
        self._writer_data(m, a, has_state)
        starved = self._starvation(m, a)

        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(a.clear_pending & ~core.busy):
                    if "clear_state" in core.signature.members:
                        # A slot beyond the build clears nothing (the driver never asks for one).
                        m.d.comb += core.clear_state.eq(rg.pass_clear_slot < self.params["columns"])
                    m.d.sync += [a.clear_pending.eq(0), a.tokens.eq(0), a.settle.eq(1), state.eq(_State.CLEAR)]
                with m.Elif(a.start_pending & ~a.clear_pending & ~core.busy):
                    m.d.sync += [a.start_pending.eq(0), error.eq(0)]
                    with m.If(columns_bad):
                        m.d.sync += [error.eq(regs.ErrorCode.COLUMNS), state.eq(_State.FINISH)]
                    with m.Elif(token_bad):
                        m.d.sync += [error.eq(regs.ErrorCode.TOKEN_RANGE), state.eq(_State.FINISH)]
                    with m.Else():
                        m.d.sync += [a.embed_col.eq(0), state.eq(_State.PREPARE),
                                     a.embed_sent.eq(0), a.stream_sent.eq(0), a.write_sent.eq(0),
                                     a.logits_on.eq(Cat(rg.logits_addr_lo, rg.logits_addr_hi) != 0)]
                        m.d.comb += fifo.flush.eq(1)
            with m.Case(_State.CLEAR):
                m.d.sync += a.settle.eq(0)
                if has_state:
                    self._clear_slot(m, state=state, settle=a.settle, error=error)
                else:
                    with m.If(~a.settle & ~core.busy):
                        m.d.sync += state.eq(_State.IDLE)
            with m.Case(_State.PREPARE):
                self._prepare(m, a, tokens_in)
            with m.Case(_State.LAUNCH):
                self._launch(m, a, traffic)
            with m.Case(_State.RUN):
                if has_state:
                    self._state_traffic(m, traffic, a)
                with m.If(reader.read_error):
                    m.d.sync += [error.eq(regs.ErrorCode.AXI_READ), state.eq(_State.ABORT)]
                with m.Elif(writer.write_error):
                    m.d.sync += [error.eq(regs.ErrorCode.AXI_WRITE), state.eq(_State.ABORT)]
                with m.Elif(core.done):
                    m.d.sync += [error.eq(core.error), state.eq(_State.DRAIN)]
                with m.Elif(starved == self.starve_cycles):
                    m.d.sync += [error.eq(regs.ErrorCode.STREAM_SHORT), state.eq(_State.ABORT)]
            with m.Case(_State.DRAIN, _State.ABORT):
                m.d.comb += [reader.cancel.eq(1), writer.cancel.eq(1), fifo.flush.eq(1),
                             core_reset.eq(state == _State.ABORT)]
                # A write error found while the last responses come back still counts.
                with m.If(writer.write_error & (error == 0)):
                    m.d.sync += error.eq(regs.ErrorCode.AXI_WRITE)
                with m.If(reader.idle & writer.idle):
                    m.d.sync += state.eq(_State.FINISH)
            with m.Case(_State.FINISH):
                m.d.comb += rg.status_done_set.eq(1)
                m.d.sync += state.eq(_State.IDLE)
                with m.If(error == 0):
                    m.d.sync += a.tokens.eq(a.tokens + rg.pass_last_column + 1)

        self._status_counters(m, state=state, error=error, tokens=a.tokens, start_pending=a.start_pending,
                              clear_pending=a.clear_pending)
        return m

    def _pass_registers(self):
        """The top level's own state: the FSM, the pending actions, where the pass's reads and
        writes stand."""
        N = self.params["columns"]
        return SimpleNamespace(
            state=Signal(_State), error=Signal(8), start_pending=Signal(), clear_pending=Signal(),
            settle=Signal(),                                 # the core's busy follows its pulse a cycle later
            embed_row=Signal(48),                            # the column's token * EMBED_STRIDE
            embed_col=Signal(range(max(N, 2))),              # the column whose row is read next
            embed_last=Signal(),                             # embed_col is the pass's last column
            embed_sent=Signal(), stream_sent=Signal(), write_sent=Signal(),
            logits_on=Signal(),                              # LOGITS_ADDR != 0 for this token
            logits_left=Signal(32), logits_words=Signal(32),  # left to take; the pass's (write command)
            tokens=Signal(32),
            # Each column's state slot: its offset (PREPARE) and address (LAUNCH), in two steps so
            # that neither the product nor the sum is a long path.
            slot_offset=Signal(40),
            state_base=Array(Signal(self.params["addr_width"], name=f"state_base{c}") for c in range(N)))

    def _writer_data(self, m, a, has_state):
        """What the writer takes: state words (every one is written), then logits while it
        expects them, otherwise dropped so the core never stalls; a logits beat of two (a core
        whose beats have ``pair``) goes to the writer as a word pair. A signed value assigned to
        the 64-bit word is sign-extended. The two never overlap (a layer's state leaves before
        its records end)."""
        core, writer, running = self.core, self.writer, a.state == _State.RUN
        logit, pairs = core.logits.payload, self.writer.data_lanes == 2
        words = writer.data.payload.words if pairs else [writer.data.payload]
        with m.If(a.logits_on & (a.logits_left != 0) & running):
            m.d.comb += [words[0].eq(logit.value.as_signed()), writer.data.valid.eq(core.logits.valid),
                         core.logits.ready.eq(writer.data.ready)]
            if pairs:
                m.d.comb += [words[1].eq(logit.value1.as_signed()), writer.data.payload.pair.eq(logit.pair)]
        with m.Else():
            m.d.comb += core.logits.ready.eq(1)
        with m.If(core.logits.valid & core.logits.ready & (a.logits_left != 0)):
            m.d.sync += a.logits_left.eq(a.logits_left - 1 - (logit.pair if pairs else 0))
        if has_state:
            m.d.comb += core.state_out.ready.eq(writer.data.ready & running)
            with m.If(core.state_out.valid & running):
                m.d.comb += [words[0].eq(core.state_out.payload.as_signed()), writer.data.valid.eq(1)]

    def _starvation(self, m, a):
        """Cycles starved: every requested byte delivered, the core wants more, and nothing moves.
        An idle engine also "wants" the next record header while the core finishes the head, so
        only a long stretch without a weight beat, a logit or done counts (a hung core gives none)."""
        core = self.core
        reads_delivered = a.embed_sent & a.stream_sent & self.reader.idle & self.weight_fifo.empty
        starved = Signal(range(self.starve_cycles + 1))
        progress = (core.weights.valid & core.weights.ready) | (core.logits.valid & core.logits.ready) | core.done
        with m.If((a.state == _State.RUN) & reads_delivered & core.weight_wait & ~progress):
            m.d.sync += starved.eq(starved + 1)
        with m.Else():
            m.d.sync += starved.eq(0)
        return starved

    def _prepare(self, m, a, tokens_in):
        """PREPARE, once per column: its embedding row's offset and its state slot's, the
        pass's logits count."""
        rg, N = self.registers, self.params["columns"]
        slots = Array(self._slot_registers())
        m.d.sync += [a.embed_row.eq(tokens_in[a.embed_col] * rg.embed_stride[:16]), a.state.eq(_State.LAUNCH),
                     a.embed_last.eq(a.embed_col == rg.pass_last_column),
                     a.slot_offset.eq(slots[a.embed_col] * rg.state_slot_bytes)]
        # V logits per column that sends them: every column, or a prefill's last
        words = rg.vocab if N == 1 else rg.vocab * Mux(rg.pass_prefill, 1, rg.pass_last_column + 1)
        m.d.sync += [a.logits_left.eq(words), a.logits_words.eq(words)]

    def _launch(self, m, a, traffic):
        """LAUNCH: the column's embedding row read (then PREPARE for the next column), then the core
        starts. A core with its state in memory gets its layers' reads and every write while it
        runs (:meth:`_state_traffic`); one without: the STREAM read and the logits write first."""
        rg, reader, writer, core = self.registers, self.reader, self.writer, self.core
        addr_mask = (1 << self.params["addr_width"]) - 1
        m.d.sync += a.state_base[a.embed_col].eq((Cat(rg.state_addr_lo, rg.state_addr_hi) + a.slot_offset)
                                                 & addr_mask)
        m.d.comb += [reader.cmd.valid.eq(~a.stream_sent),
                     reader.cmd.payload.addr.eq((Cat(rg.embed_addr_lo, rg.embed_addr_hi) + a.embed_row) & addr_mask),
                     reader.cmd.payload.length.eq(rg.embed_stride)]
        with m.If(a.embed_sent):
            m.d.comb += [reader.cmd.payload.addr.eq(Cat(rg.stream_addr_lo, rg.stream_addr_hi) & addr_mask),
                         reader.cmd.payload.length.eq(rg.stream_bytes)]
        with m.If(reader.cmd.valid & reader.cmd.ready & ~a.stream_sent):
            m.d.sync += a.stream_sent.eq(a.embed_sent)
            with m.If(~a.embed_sent & ~a.embed_last):
                # the next column's row: its address takes a cycle in PREPARE
                m.d.sync += [a.embed_col.eq(a.embed_col + 1), a.state.eq(_State.PREPARE)]
            with m.Else():
                m.d.sync += a.embed_sent.eq(1)
        if traffic is not None:
            m.d.comb += reader.cmd.valid.eq(~a.embed_sent)
            with m.If(a.embed_sent):
                m.d.comb += core.start.eq(1)
                m.d.sync += [a.state.eq(_State.RUN), *traffic.restart]
            return
        m.d.comb += [writer.cmd.valid.eq(a.logits_on & ~a.write_sent),
                     writer.cmd.payload.addr.eq(Cat(rg.logits_addr_lo, rg.logits_addr_hi) & addr_mask),
                     writer.cmd.payload.words.eq(a.logits_left)]
        with m.If(writer.cmd.ready & writer.cmd.valid):
            m.d.sync += a.write_sent.eq(1)
        with m.If(a.stream_sent & (a.write_sent | ~a.logits_on)):
            m.d.comb += core.start.eq(1)
            m.d.sync += a.state.eq(_State.RUN)

    def _slot_registers(self) -> list:
        """SLOTS.slot<c> of the build's columns."""
        return [getattr(self.registers, f"slots_slot{c}") for c in range(self.params["columns"])]

    def _traffic_registers(self):
        """Where the read queue (``rd``) and the write queue (``wr``) of :meth:`_state_traffic`
        are; ``restart``: the statements that put both at a pass's beginning."""
        N = self.params["columns"]
        rd = SimpleNamespace(k=Signal(range(max(N, 2))), layer=Signal(16), on_state=Signal(), head=Signal(),
                             stream_off=Signal(32), state_off=Signal(32))
        wr = SimpleNamespace(k=Signal(range(max(N, 2))), layer=Signal(16), logits=Signal(), done=Signal(),
                             state_off=Signal(32))
        restart = [rd.k.eq(0), rd.layer.eq(0), rd.on_state.eq(1), rd.head.eq(0), rd.stream_off.eq(0),
                   rd.state_off.eq(0), wr.k.eq(0), wr.layer.eq(0), wr.logits.eq(0), wr.done.eq(0),
                   wr.state_off.eq(0)]
        return SimpleNamespace(rd=rd, wr=wr, restart=restart)

    def _state_traffic(self, m, traffic, a):
        """RUN, a core whose state lives in memory: the reads after the embedding rows (per layer,
        the S state vectors then the layer's records; then the head), and the writes (per layer,
        the S new state vectors; then the logits), each queue in its own order. ``stream_sent``
        rises with the last read."""
        rg, reader, writer = self.registers, self.reader, self.writer
        addr_mask = (1 << self.params["addr_width"]) - 1
        L, D = rg.model_dims_layers, rg.model_dims_hidden
        state_bytes = D << (regs.STATE_WORD_BYTES.bit_length() - 1)      # one layer of one sequence
        last_k = Mux(rg.pass_prefill, 0, rg.pass_last_column)      # S - 1
        stream_addr = Cat(rg.stream_addr_lo, rg.stream_addr_hi)
        rd, wr = traffic.rd, traffic.wr
        state_base, stream_sent, logits_on, logits_words = a.state_base, a.stream_sent, a.logits_on, a.logits_words
        m.d.comb += reader.cmd.valid.eq(~stream_sent)
        with m.If(rd.on_state):
            m.d.comb += [reader.cmd.payload.addr.eq((state_base[rd.k] + rd.state_off) & addr_mask),
                         reader.cmd.payload.length.eq(state_bytes)]
        with m.Else():
            m.d.comb += [reader.cmd.payload.addr.eq((stream_addr + rd.stream_off) & addr_mask),
                         reader.cmd.payload.length.eq(Mux(rd.head, rg.stream_bytes - rd.stream_off,
                                                          rg.layer_bytes))]
        with m.If(reader.cmd.valid & reader.cmd.ready):
            with m.If(rd.on_state):
                m.d.sync += rd.k.eq(rd.k + 1)
                with m.If(rd.k == last_k):
                    m.d.sync += [rd.k.eq(0), rd.on_state.eq(0)]
            with m.Elif(rd.head):
                m.d.sync += stream_sent.eq(1)
            with m.Else():
                m.d.sync += [rd.stream_off.eq(rd.stream_off + rg.layer_bytes), rd.state_off.eq(rd.state_off + state_bytes),
                             rd.layer.eq(rd.layer + 1), rd.on_state.eq(rd.layer + 1 != L), rd.head.eq(rd.layer + 1 == L)]
        m.d.comb += writer.cmd.valid.eq(~wr.done & (~wr.logits | logits_on))
        with m.If(wr.logits):
            m.d.comb += [writer.cmd.payload.addr.eq(Cat(rg.logits_addr_lo, rg.logits_addr_hi) & addr_mask),
                         writer.cmd.payload.words.eq(logits_words)]
        with m.Else():
            m.d.comb += [writer.cmd.payload.addr.eq((state_base[wr.k] + wr.state_off) & addr_mask),
                         writer.cmd.payload.words.eq(D)]
        with m.If(writer.cmd.valid & writer.cmd.ready):
            with m.If(wr.logits):
                m.d.sync += wr.done.eq(1)
            with m.Else():
                m.d.sync += wr.k.eq(wr.k + 1)
                with m.If(wr.k == last_k):
                    m.d.sync += [wr.k.eq(0), wr.state_off.eq(wr.state_off + state_bytes), wr.layer.eq(wr.layer + 1),
                                 wr.logits.eq(wr.layer + 1 == L)]

    def _clear_slot(self, m, *, state, settle, error):
        """CLEAR, a core whose state lives in memory: zeros over slot PASS.clear_slot (layers x
        hidden words at STATE_ADDR + clear_slot * STATE_SLOT_BYTES) through the writer; back to
        IDLE once every write is answered (a write error is STATUS.error's AXI_WRITE)."""
        rg, writer = self.registers, self.writer
        addr_mask = (1 << self.params["addr_width"]) - 1
        offset, words, cmd_sent = Signal(40), Signal(32), Signal()
        with m.If(settle):      # the first CLEAR cycle: what to write
            m.d.sync += [offset.eq(rg.pass_clear_slot * rg.state_slot_bytes),
                         words.eq(rg.model_dims_hidden * rg.model_dims_layers), cmd_sent.eq(0)]
        with m.Elif(words == 0):   # nothing (left) to write: no model loaded, or every zero sent
            with m.If(writer.idle):
                m.d.sync += state.eq(_State.IDLE)
        with m.Elif(~cmd_sent):
            m.d.comb += [writer.cmd.valid.eq(1),
                         writer.cmd.payload.addr.eq((Cat(rg.state_addr_lo, rg.state_addr_hi) + offset) & addr_mask),
                         writer.cmd.payload.words.eq(words)]
            with m.If(writer.cmd.ready):
                m.d.sync += cmd_sent.eq(1)
        with m.Else():
            m.d.comb += [writer.data.payload.eq(0), writer.data.valid.eq(1)]
            with m.If(writer.data.ready):
                m.d.sync += words.eq(words - 1)
        with m.If(writer.write_error):
            m.d.sync += error.eq(regs.ErrorCode.AXI_WRITE)

    def _connect_core(self, m, core):
        """The model's shape and PASS to the core (a core without columns takes neither: one
        column). Returns ``columns_bad`` (PASS.last_column, a used SLOTS entry or
        PASS.clear_slot beyond the build), each column's token register, and ``token_bad`` (a
        column of the pass has a token >= VOCAB; a column beyond the pass never counts)."""
        rg, N = self.registers, self.params["columns"]
        m.d.comb += [core.hidden.eq(rg.model_dims_hidden), core.layers.eq(rg.model_dims_layers),
                     core.embed_stride.eq(rg.embed_stride[:16])]
        if "intermediate" in core.signature.members:
            m.d.comb += core.intermediate.eq(rg.model_inner_intermediate)
        if "layer_bytes" in core.signature.members:
            m.d.comb += core.layer_bytes.eq(rg.layer_bytes)
        tokens_in = Array(getattr(rg, regs.token_register(c).lower()) for c in range(N))
        token_bad = Signal()
        m.d.comb += token_bad.eq(Cat(*[(tokens_in[c] >= rg.vocab) & (c <= rg.pass_last_column)
                                       for c in range(N)]).any())
        slots = self._slot_registers()
        bad = (rg.pass_last_column >= N) | (rg.pass_clear_slot >= N)
        for c, slot in enumerate(slots):
            bad |= (slot >= N) & (c <= rg.pass_last_column)
        if "last_column" in core.signature.members:
            m.d.comb += [core.last_column.eq(rg.pass_last_column), core.prefill.eq(rg.pass_prefill)]
        elif N > 1:
            raise ValueError("a core without columns (no last_column port) serves one column only")
        columns_bad = Signal()
        m.d.comb += columns_bad.eq(bad)
        return columns_bad, tokens_in, token_bad

    def _status_counters(self, m, *, state, error, tokens, start_pending, clear_pending):
        """STATUS, TOKENS, ARGMAX and the cycle/byte counters (``_PHASE_COUNTERS``): zeroed as a
        token starts, counting every cycle of it up to FINISH."""
        rg, core, reader, B = self.registers, self.core, self.reader, self.params["bus_bytes"]
        running = Signal()                                  # a token is in progress (counters run)
        m.d.comb += [running.eq((state != _State.IDLE) & (state != _State.CLEAR)),
                     rg.status_busy.eq((state != _State.IDLE) | core.busy | start_pending | clear_pending),
                     rg.status_error.eq(error), rg.tokens.eq(tokens),
                     rg.argmax.eq(core.argmax)]
        for c in range(1, regs.MAX_COLUMNS):
            port = getattr(rg, regs.argmax_register(c).lower())
            if c < self.params["columns"] and "column_argmax" in core.signature.members:
                m.d.comb += port.eq(core.column_argmax[c])
            else:
                m.d.comb += port.eq(0)
        argmax_value = Signal(signed(64))                   # sign-extended ACT
        m.d.comb += [argmax_value.eq(core.argmax_value.as_signed()),
                     rg.argmax_value_lo.eq(argmax_value[:32]), rg.argmax_value_hi.eq(argmax_value[32:])]
        starting = (state == _State.IDLE) & start_pending & ~clear_pending & ~core.busy
        counters = {"cycles_total": 1, "cycles_weight_wait": core.weight_wait,
                    "bytes_read": reader.beats * B}
        for phase, name in _PHASE_COUNTERS.items():
            counters[name] = core.phase == phase
        for name, increment in counters.items():
            port = getattr(rg, name)
            count = Signal(32, name=f"count_{name}")
            m.d.comb += port.eq(count)
            with m.If(starting):
                m.d.sync += count.eq(0)
            with m.Elif(running & (state != _State.FINISH)):
                m.d.sync += count.eq(count + increment)
