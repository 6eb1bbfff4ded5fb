"""Burst read master over one to four AXI4 read ports, data merged back into address order."""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import (AXI4ReadSignature, AxiBurst, BOUNDARY_BYTES, CACHE_NORMAL, MAX_BURST_BEATS, check_widths)
from .stream_fifo import StreamFifo
from .width_converter import WidthConverter

__all__ = ["AxiReader", "read_command_layout", "ALIGN_BYTES"]

#: Command addresses and lengths are in units of this many bytes (the weight image's alignment).
ALIGN_BYTES = 64


def read_command_layout(addr_width: int) -> data.StructLayout:
    """A read command: ``length`` bytes from bus address ``addr`` (both multiples of 64)."""
    return data.StructLayout({"addr": unsigned(addr_width), "length": unsigned(32)})


def _int_param(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")


class AxiReader(wiring.Component):
    """Read byte ranges of memory through ``ports`` AXI4 read ports; deliver them in order.

    Each command is cut into bursts at every ``burst_bytes`` boundary of the
    address (``burst_bytes`` divides 4 KiB, so no burst crosses a 4 KiB
    boundary; an aligned burst is ``burst_bytes / bus_bytes`` beats, at most
    256). Successive bursts go to successive ports, round robin, so P ports
    share every command and each sees long INCR bursts; a port that cannot
    take a burst (its bursts in flight or its reorder FIFO full, e.g. because
    the memory serves it slower) is skipped for the next one that can.

    Every port owns a reorder FIFO (``lib.memory``) of ``outstanding`` full
    bursts, widened to the merged word on entry. A burst is issued only when
    its port has fewer than ``outstanding`` bursts in flight *and* room
    reserved for all of its data, so R is never back-pressured by this
    master: a port's data never waits on another port. The merger reads the
    FIFOs in burst order and emits the bytes in address order, one merged
    word per cycle. Reads run ahead of the consumer as far as the reorder
    FIFOs allow (with a deeper FIFO downstream, as far as that one allows).

    The merged word is ``bus_bytes * 2**ceil(log2(ports))`` bytes: P beats per
    cycle fit (for 3 ports, 4 bus words, the next power of two, so that it
    divides 64 and every burst is a whole number of merged words).

    Ports
    -----
    cmd : stream of :func:`read_command_layout`; ``addr`` and ``length`` are
        taken in units of 64 bytes (their low six bits are ignored). A
        command is accepted when the previous one has been fully issued.
    data : stream of ``unsigned(8 * word_bytes)``, the bytes of each command
        in address order (byte j of a word at bits ``[8j+7:8j]``).
    bus : ``ports`` AXI4 read master interfaces (``AXI4ReadSignature``),
        ``bus[p]``. One ID (0), INCR bursts of ``bus_bytes`` beats, ARCACHE 0b0011.
    cancel : while high, no burst is issued, the command being issued is
        dropped, and every beat still arriving (and every word buffered) is
        discarded instead of delivered. Hold it until ``idle``.
    idle : no command in progress, no burst in flight, nothing buffered.
    read_error : one-cycle pulse for every R beat with RRESP SLVERR or DECERR
        (its data is delivered like any other).
    beats : number of R beats transferred this cycle (over all ports).

    Parameters
    ----------
    bus_bytes : int, AXI data width in bytes (power of two, 4..128).
    ports : int, 1..4 AXI read ports.
    addr_width : int, address bits (12..64).
    outstanding : int, 1..16 bursts in flight per port.
    burst_bytes : int or None, the burst size: a power of two, at least 64 and
        ``bus_bytes``, at most 4096 and 256 beats; default the largest allowed.

    Attributes
    ----------
    word_bytes : bytes per ``data`` word.
    reorder_words : depth of each port's reorder FIFO in ``data`` words.
    latency : cycles from the command transfer to ARVALID (3); the memory's
        latency follows, then 2 + 1 (widening) cycles to ``data.valid``.
    """

    latency = 3

    def __init__(self, *, bus_bytes: int, ports: int, addr_width: int = 32, outstanding: int = 4,
                 burst_bytes: int | None = None):
        check_widths(addr_width=addr_width, data_bytes=bus_bytes, data_name="bus_bytes")
        _int_param("ports", ports, 1, 4)
        _int_param("outstanding", outstanding, 1, 16)
        largest = min(BOUNDARY_BYTES, MAX_BURST_BEATS * bus_bytes)
        if burst_bytes is None:
            burst_bytes = largest
        smallest = max(ALIGN_BYTES, bus_bytes)
        if (not isinstance(burst_bytes, int) or isinstance(burst_bytes, bool) or burst_bytes & (burst_bytes - 1)
                or not smallest <= burst_bytes <= largest):
            raise ValueError(f"burst_bytes must be a power of two in [{smallest}, {largest}], not {burst_bytes!r}")
        self.bus_bytes, self.ports, self.addr_width = bus_bytes, ports, addr_width
        self.outstanding, self.burst_bytes = outstanding, burst_bytes
        self.word_bytes = bus_bytes * (1 << (ports - 1).bit_length())
        self.burst_words = burst_bytes // self.word_bytes
        self.reorder_words = max(2, outstanding * self.burst_words)
        super().__init__({
            "cmd": In(stream.Signature(read_command_layout(addr_width))),
            "data": Out(stream.Signature(unsigned(8 * self.word_bytes))),
            "bus": Out(AXI4ReadSignature(addr_width=addr_width, data_bytes=bus_bytes)).array(ports),
            "cancel": In(1),
            "idle": Out(1),
            "read_error": Out(1),
            "beats": Out(range(ports + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        P, B, W = self.ports, self.bus_bytes, self.word_bytes
        depth = self.reorder_words
        size_log2 = (B - 1).bit_length()
        beat_log2 = size_log2
        word_log2 = (W - 1).bit_length()
        burst_words = self.burst_words

        # ---- issue: cut the command into bursts, one port after the other -----------------
        addr = Signal(self.addr_width)
        left = Signal(32)                                   # bytes of the command not yet issued
        rr = Signal(range(max(P, 2)))                       # port of the next burst
        m.d.comb += self.cmd.ready.eq((left == 0) & ~self.cancel)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [addr.eq(self.cmd.payload.addr & ~(ALIGN_BYTES - 1)),
                         left.eq(self.cmd.payload.length & ~(ALIGN_BYTES - 1))]

        # nbytes = min(left, burst_bytes - addr % burst_bytes): the burst ends at the next boundary.
        # Registered (a cycle after addr/left change) to keep the 32-bit compare off the issue path;
        # a burst is at least one beat per port per cycle, so issuing every other cycle is enough.
        room = Signal(range(self.burst_bytes + 1))
        next_bytes = Signal(range(self.burst_bytes + 1))
        m.d.comb += [room.eq(self.burst_bytes - addr[:(self.burst_bytes - 1).bit_length()]),
                     next_bytes.eq(Mux(left < room, left, room))]
        nbytes = Signal(range(self.burst_bytes + 1))
        nwords = Signal(range(burst_words + 1))
        size_valid = Signal()                               # nbytes/nwords describe addr/left
        m.d.sync += [nbytes.eq(next_bytes), nwords.eq(next_bytes >> word_log2), size_valid.eq(1)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += size_valid.eq(0)

        # Burst order for the merger: port and word count of every issued burst.
        order_depth = 1 << max(2, (2 * P * self.outstanding - 1).bit_length())
        order_layout = data.StructLayout({"port": range(max(P, 2)), "words": range(burst_words + 1)})
        m.submodules.order = order = StreamFifo(shape=order_layout, depth=order_depth)

        ar_valid = [Signal(name=f"ar_valid{p}") for p in range(P)]
        ar_addr = [Signal(self.addr_width, name=f"ar_addr{p}") for p in range(P)]
        ar_len = [Signal(8, name=f"ar_len{p}") for p in range(P)]
        in_flight = [Signal(range(self.outstanding + 1), name=f"in_flight{p}") for p in range(P)]
        reserved = [Signal(range(depth + 1), name=f"reserved{p}") for p in range(P)]  # words in flight or held
        can = Signal(P)
        for p in range(P):
            m.d.comb += can[p].eq(~ar_valid[p] & (in_flight[p] < self.outstanding) &
                                  (reserved[p] + nwords <= depth))
        # The burst goes to the first port from rr on that can take it: round robin while the
        # ports keep pace, and a port the memory serves slower (its data waiting to be merged
        # in order) is skipped instead of stalling the others.
        chosen = Signal(range(max(P, 2)))
        found = Signal()
        with m.Switch(rr):
            for r in range(P):
                with m.Case(r):
                    for k in reversed(range(P)):    # the last assignment in this list wins: lowest k
                        with m.If(can[(r + k) % P]):
                            m.d.comb += [chosen.eq((r + k) % P), found.eq(1)]
        issue = Signal()
        m.d.comb += [issue.eq((left != 0) & size_valid & ~self.cancel & found & order.i.ready),
                     order.i.valid.eq(issue), order.i.payload.port.eq(chosen), order.i.payload.words.eq(nwords)]
        with m.If(issue):
            m.d.sync += [addr.eq(addr + nbytes), left.eq(left - nbytes), size_valid.eq(0),
                         rr.eq(Mux(chosen == P - 1, 0, chosen + 1))]
        with m.If(self.cancel):
            m.d.sync += [left.eq(0), rr.eq(0)]

        # ---- per port: AR register, R beats widened into the reorder FIFO -------------------
        fifos = []
        beat_flags = []
        errors = []
        words_out = []
        for p in range(P):
            bus = self.bus[p]
            m.d.comb += [bus.arid.eq(0), bus.araddr.eq(ar_addr[p]), bus.arlen.eq(ar_len[p]),
                         bus.arsize.eq(size_log2), bus.arburst.eq(AxiBurst.INCR), bus.arcache.eq(CACHE_NORMAL),
                         bus.arprot.eq(0), bus.arvalid.eq(ar_valid[p])]
            mine = Signal(name=f"issue{p}")
            m.d.comb += mine.eq(issue & (chosen == p))
            with m.If(mine):
                m.d.sync += [ar_valid[p].eq(1), ar_addr[p].eq(addr), ar_len[p].eq((nbytes >> beat_log2) - 1)]
            with m.Elif(bus.arready):
                m.d.sync += ar_valid[p].eq(0)

            widen = WidthConverter(in_bytes=B, out_bytes=W)
            fifo = StreamFifo(shape=unsigned(8 * W), depth=depth)
            m.submodules[f"widen{p}"] = widen
            m.submodules[f"reorder{p}"] = fifo
            wiring.connect(m, widen.o, fifo.i)
            beat = Signal(name=f"beat{p}")
            m.d.comb += [widen.i.payload.eq(bus.rdata), widen.i.valid.eq(bus.rvalid),
                         bus.rready.eq(widen.i.ready), beat.eq(bus.rvalid & bus.rready)]
            done_burst = beat & bus.rlast
            m.d.sync += in_flight[p].eq(in_flight[p] + mine - done_burst)
            popped = Signal(name=f"popped{p}")
            m.d.comb += popped.eq(fifo.o.valid & fifo.o.ready)
            m.d.sync += reserved[p].eq(reserved[p] + Mux(mine, nwords, 0) - popped)
            fifos.append(fifo)
            beat_flags.append(beat)
            errors.append(beat & bus.rresp[1])
            words_out.append(popped)

        # ---- merge: the bursts' words in issue order ------------------------------------------
        cur_left = Signal(range(burst_words + 1))           # words of the current burst still to emit
        mport = Signal(range(max(P, 2)))                    # port of the current burst
        head_valid = Signal()
        head_payload = Signal(unsigned(8 * W))
        with m.Switch(mport):
            for p in range(P):
                with m.Case(p):
                    m.d.comb += [head_valid.eq(fifos[p].o.valid), head_payload.eq(fifos[p].o.payload)]
        m.d.comb += [self.data.valid.eq((cur_left != 0) & head_valid & ~self.cancel),
                     self.data.payload.eq(head_payload)]
        take = Signal()
        m.d.comb += take.eq(self.data.valid & self.data.ready)
        for p in range(P):
            m.d.comb += fifos[p].o.ready.eq(self.cancel | (take & (mport == p)))
        load = Signal()
        m.d.comb += [load.eq(((cur_left == 0) | ((cur_left == 1) & take)) & order.o.valid & ~self.cancel),
                     order.o.ready.eq(load | self.cancel)]
        with m.If(load):
            m.d.sync += [cur_left.eq(order.o.payload.words), mport.eq(order.o.payload.port)]
        with m.Elif(take):
            m.d.sync += cur_left.eq(cur_left - 1)
        with m.If(self.cancel):
            m.d.sync += [cur_left.eq(0), mport.eq(0)]

        busy = left != 0
        for p in range(P):
            busy = busy | ar_valid[p] | (reserved[p] != 0)
        m.d.comb += [self.idle.eq(~busy),
                     self.read_error.eq(Cat(*errors).any()),
                     self.beats.eq(sum(beat_flags))]
        return m
