"""Burst write master: a stream of 32- or 64-bit words to consecutive memory addresses."""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4WriteSignature, AxiBurst, BOUNDARY_BYTES, CACHE_NORMAL, MAX_BURST_BEATS, check_widths
from .stream_fifo import StreamFifo

__all__ = ["AxiWriter", "write_command_layout", "word_pair_layout"]


def write_command_layout(addr_width: int) -> data.StructLayout:
    """A write command: ``words`` words to bus address ``addr`` (a multiple of the word size)."""
    return data.StructLayout({"addr": unsigned(addr_width), "words": unsigned(32)})


def word_pair_layout(word_bytes: int) -> data.StructLayout:
    """A ``data`` beat of a two-lane writer: ``words[0]`` and, when ``pair``, ``words[1]`` after it."""
    return data.StructLayout({"words": data.ArrayLayout(unsigned(8 * word_bytes), 2), "pair": 1})


class AxiWriter(wiring.Component):
    """Write ``words`` words of ``word_bytes`` from ``data`` to memory at ``addr`` with AXI4 INCR bursts.

    A command is cut into bursts at every ``burst_bytes`` address boundary
    (the largest power of two of at most ``max_burst_beats`` beats and 4 KiB, so no burst
    crosses 4 KiB); AW of a burst is issued as soon as the command is
    known, up to ``outstanding`` bursts ahead of their write responses. Words
    are packed little-endian into bus beats at their address lanes; WSTRB
    marks the lanes written, so ``addr`` need only be aligned to the word
    size and partial first and last beats leave their other bytes untouched.

    Ports
    -----
    cmd : stream of :func:`write_command_layout` (the low ``log2(word_bytes)``
        bits of ``addr`` ignored). Accepted once the previous command's bursts
        are all issued.
    data : stream of ``unsigned(8 * word_bytes)`` (``data_lanes`` = 1) or of
        :func:`word_pair_layout` (2: one or two words a beat), the words in address order
        (each stored little-endian), exactly ``words`` per command (a pair's two words
        belong to one command).
    bus : AXI4 write master (``AXI4WriteSignature``): one ID (0), ARCACHE 0b0011.
    cancel : while high, no burst is issued, ``data`` is not taken, and every
        burst already issued is completed with beats whose WSTRB is 0 (they
        write nothing), as AXI requires a burst's every beat. Hold it until
        ``idle``.
    idle : every issued burst has its write response; no command in progress.
    write_error : one-cycle pulse for each write response SLVERR or DECERR.

    Parameters
    ----------
    bus_bytes : int, AXI data width in bytes (power of two, 4..128).
    word_bytes : int, 4 or 8 (default 4), bytes per ``data`` word; at most ``bus_bytes``.
    addr_width : int, address bits (12..64).
    outstanding : int, 1..16 bursts issued ahead of their write responses.
    max_burst_beats : int, longest burst in beats (power of two, 1..256; 16 for an AXI3 port
        such as a Zynq-7000 HP port).
    data_lanes : int, 1 or 2 (default 1): words a ``data`` beat may carry.

    Attributes
    ----------
    latency : cycles from a command transfer to AWVALID (2).
    Throughput: one beat per cycle. A pair takes one cycle when both words land in one bus beat
    of one burst (``bus_bytes`` >= 2 words, the pair at an even word lane: the accelerator's
    logits, two rows of the engine a beat); otherwise its second word waits a cycle in a carry
    register, and ``data`` waits with it.
    """

    latency = 2

    def __init__(self, *, bus_bytes: int, word_bytes: int = 4, addr_width: int = 32, outstanding: int = 4,
                 max_burst_beats: int = MAX_BURST_BEATS, data_lanes: int = 1):
        check_widths(addr_width=addr_width, data_bytes=bus_bytes, data_name="bus_bytes")
        if not isinstance(word_bytes, int) or isinstance(word_bytes, bool):
            raise TypeError(f"word_bytes must be an integer, not {word_bytes!r}")
        if word_bytes not in (4, 8):
            raise ValueError(f"word_bytes must be 4 or 8, not {word_bytes}")
        if word_bytes > bus_bytes:
            raise ValueError(f"word_bytes ({word_bytes}) must not exceed bus_bytes ({bus_bytes})")
        if not isinstance(outstanding, int) or isinstance(outstanding, bool):
            raise TypeError(f"outstanding must be an integer, not {outstanding!r}")
        if not 1 <= outstanding <= 16:
            raise ValueError(f"outstanding must be in [1, 16], not {outstanding}")
        self.bus_bytes, self.word_bytes = bus_bytes, word_bytes
        self.addr_width, self.outstanding = addr_width, outstanding
        if (not isinstance(max_burst_beats, int) or isinstance(max_burst_beats, bool)
                or not 1 <= max_burst_beats <= MAX_BURST_BEATS or max_burst_beats & (max_burst_beats - 1)):
            raise ValueError(f"max_burst_beats must be a power of two in [1, {MAX_BURST_BEATS}], "
                             f"not {max_burst_beats!r}")
        if data_lanes not in (1, 2) or isinstance(data_lanes, bool):
            raise ValueError(f"data_lanes must be 1 or 2, not {data_lanes!r}")
        self.data_lanes = data_lanes
        self.burst_bytes = min(BOUNDARY_BYTES, max_burst_beats * bus_bytes)
        word = unsigned(8 * word_bytes) if data_lanes == 1 else word_pair_layout(word_bytes)
        super().__init__({
            "cmd": In(stream.Signature(write_command_layout(addr_width))),
            "data": In(stream.Signature(word)),
            "bus": Out(AXI4WriteSignature(addr_width=addr_width, data_bytes=bus_bytes)),
            "cancel": In(1),
            "idle": Out(1),
            "write_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        B, W = self.bus_bytes, self.word_bytes
        L = B // W                                          # word lanes per beat
        lane_bits = max(1, (L - 1).bit_length())
        size_log2 = (B - 1).bit_length()
        word_log2 = (W - 1).bit_length()
        burst_words = self.burst_bytes // W
        max_beats = self.burst_bytes // B
        bus = self.bus

        # ---- AW: cut the command into bursts ------------------------------------------------
        addr = Signal(self.addr_width)
        left = Signal(32)                                   # words not yet given a burst
        m.d.comb += self.cmd.ready.eq((left == 0) & ~self.cancel)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [addr.eq(self.cmd.payload.addr & ~(W - 1)), left.eq(self.cmd.payload.words)]

        # words = min(left, (burst_bytes - addr % burst_bytes) / W); beats = ceil((lane0 + words) / L)
        room = Signal(range(burst_words + 1))
        nwords = Signal(range(burst_words + 1))
        lane0 = Signal(range(max(L, 2)))
        nbeats = Signal(range(max_beats + 1))
        m.d.comb += [room.eq((self.burst_bytes - addr[:(self.burst_bytes - 1).bit_length()]) >> word_log2),
                     nwords.eq(Mux(left < room, left, room)),
                     lane0.eq(addr[word_log2:size_log2] if L > 1 else 0),
                     nbeats.eq((lane0 + nwords + L - 1) >> (lane_bits if L > 1 else 0))]

        info_layout = data.StructLayout({"beats": range(max_beats + 1), "words": range(burst_words + 1),
                                         "lane": range(max(L, 2))})
        m.submodules.bursts = bursts = StreamFifo(shape=info_layout, depth=max(2, self.outstanding))
        in_flight = Signal(range(self.outstanding + 1))     # bursts issued without a write response
        aw_valid = Signal()
        issue = Signal()
        m.d.comb += [issue.eq((left != 0) & ~self.cancel & ~aw_valid & (in_flight < self.outstanding) &
                              bursts.i.ready),
                     bursts.i.valid.eq(issue),
                     bursts.i.payload.beats.eq(nbeats), bursts.i.payload.words.eq(nwords),
                     bursts.i.payload.lane.eq(lane0)]
        with m.If(issue):
            m.d.sync += [addr.eq(addr + (nwords << word_log2)), left.eq(left - nwords), aw_valid.eq(1),
                         bus.awaddr.eq(addr & ~(B - 1)), bus.awlen.eq(nbeats - 1)]
        with m.Elif(bus.awready):
            m.d.sync += aw_valid.eq(0)
        with m.If(self.cancel):
            m.d.sync += left.eq(0)
        m.d.comb += [bus.awid.eq(0), bus.awsize.eq(size_log2), bus.awburst.eq(AxiBurst.INCR),
                     bus.awcache.eq(CACHE_NORMAL), bus.awprot.eq(0), bus.awvalid.eq(aw_valid)]

        # ---- W: pack words into beats at their lanes ----------------------------------------
        beats_left = Signal(range(max_beats + 1))           # beats of the current burst still to send
        words_left = Signal(range(burst_words + 1))
        lane = Signal(range(max(L, 2)))
        part_data = Signal(8 * B)                           # the beat being assembled
        part_strb = Signal(B)
        out_free = Signal()
        m.d.comb += [out_free.eq(~bus.wvalid | bus.wready),
                     bursts.o.ready.eq(beats_left == 0)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += bus.wvalid.eq(0)
        with m.If(bursts.o.valid & bursts.o.ready):
            m.d.sync += [beats_left.eq(bursts.o.payload.beats), words_left.eq(bursts.o.payload.words),
                         lane.eq(bursts.o.payload.lane)]

        place = self._words_offered(m, burst_room=words_left, lane=lane, L=L)
        completes = Signal()
        one_completes = (lane == L - 1) | (words_left == 1)
        if L > 1:
            m.d.comb += completes.eq(Mux(place.two, (lane == L - 2) | (words_left == 2), one_completes))
        else:
            m.d.comb += completes.eq(one_completes)
        # ready from the burst state only: it holds for either size of beat (the larger completes earlier)
        ends_soon = (lane >= L - self.data_lanes) | (words_left <= self.data_lanes) if L > 1 else Const(1)
        can_place = Signal()
        m.d.comb += [can_place.eq((beats_left != 0) & (words_left != 0) & ~self.cancel & (~ends_soon | out_free)),
                     self.data.ready.eq(can_place & ~place.carrying)]
        word_strb = Signal(B)
        lane_mask = Signal(8 * B)
        word_data = Signal(8 * B)
        first = [lane == j for j in range(L)]
        second = [place.two & (lane == j - 1) for j in range(L)]
        m.d.comb += [word_strb.eq(Cat(*[Mux(f | s_, (1 << W) - 1, 0) for f, s_ in zip(first, second)])),
                     lane_mask.eq(Cat(*[Mux(f | s_, (1 << (8 * W)) - 1, 0) for f, s_ in zip(first, second)])),
                     word_data.eq(Cat(*[Mux(s_, place.word1, place.word0) for s_ in second]))]
        new_data = (part_data & ~lane_mask) | (word_data & lane_mask)
        with m.If(place.offered & can_place):
            m.d.comb += place.taken.eq(1)
            m.d.sync += words_left.eq(words_left - 1 - place.two)
            with m.If(completes):
                m.d.sync += [bus.wdata.eq(new_data), bus.wstrb.eq(part_strb | word_strb),
                             bus.wlast.eq(beats_left == 1), bus.wvalid.eq(1),
                             beats_left.eq(beats_left - 1), lane.eq(0), part_strb.eq(0)]
            with m.Else():
                m.d.sync += [part_data.eq(new_data), part_strb.eq(part_strb | word_strb), lane.eq(lane + 1 + place.two)]
        with m.Elif(self.cancel & (beats_left != 0) & out_free):
            # Complete the issued burst: what was assembled is sent, the rest writes nothing.
            m.d.sync += [bus.wdata.eq(part_data), bus.wstrb.eq(part_strb), bus.wlast.eq(beats_left == 1),
                         bus.wvalid.eq(1), beats_left.eq(beats_left - 1), lane.eq(0), part_strb.eq(0)]

        # ---- B: responses ------------------------------------------------------------------
        got_b = Signal()
        m.d.comb += [bus.bready.eq(1), got_b.eq(bus.bvalid & bus.bready),
                     self.write_error.eq(got_b & bus.bresp[1])]
        m.d.sync += in_flight.eq(in_flight + issue - got_b)
        m.d.comb += self.idle.eq((left == 0) & ~aw_valid & (in_flight == 0))
        return m

    def _words_offered(self, m, *, burst_room, lane, L):
        """The word (or two) the packer is offered: a carried second word first, else the ``data``
        beat's. A pair goes in whole when its two words fit the current bus beat and burst;
        otherwise its first goes now and its second into the carry register, placed next.
        ``taken`` (driven by the packer) says the offer is placed this cycle."""
        W = self.word_bytes
        o = SimpleNamespace(offered=Signal(), two=Signal(), carrying=Signal(), taken=Signal(),
                            word0=Signal(8 * W), word1=Signal(8 * W))
        if self.data_lanes == 1:
            m.d.comb += [o.offered.eq(self.data.valid), o.word0.eq(self.data.payload)]
            return o
        carry = Signal(8 * W)
        beat = self.data.payload
        fits = (lane < L - 1) & (burst_room >= 2) if L > 1 else Const(0)
        m.d.comb += [o.offered.eq(o.carrying | self.data.valid),
                     o.two.eq(~o.carrying & beat.pair & fits),
                     o.word0.eq(Mux(o.carrying, carry, beat.words[0])), o.word1.eq(beat.words[1])]
        with m.If(o.taken):
            m.d.sync += [o.carrying.eq(~o.carrying & beat.pair & ~fits), carry.eq(beat.words[1])]
        with m.If(self.cancel):
            m.d.sync += o.carrying.eq(0)
        return o
