"""A test-only stand-in for ``TokenCore``: consumes the weight bytes, emits checksum logits.

Not gateware: it exists so the accelerator's plumbing (registers, reader,
weight FIFO, writer, DDR model) can be tested, and the host side developed,
without the datapath. It has ``TokenCore``'s ports (``hw.accelerator.CORE_PORTS``).

Per START it takes ``embed_stride / E`` beats (the embedding row), then the
STREAM region, whose first 16 bytes are a header of four little-endian u32:

====  =====================================================================
0     beats of the STREAM region to take, header beat included (>= 1)
1     n: number of logits to emit
2     error code to finish with instead of the logits (0: none)
3     idle cycles after each STREAM beat (a slow datapath)
====  =====================================================================

Every 32-bit word taken (row and STREAM, in order) goes through
``h = rotl(h, 5) ^ word`` from ``h = 0``; logit i is ``h ^ i`` (as int32),
``argmax``/``argmax_value`` the largest (lowest index on ties), done
:data:`CLEAR_CYCLES` cycles after the last logit; from the first logit to
done it holds ``weight_wait`` high as TokenCore's idle engine does (it
wants the next record header). ``clear_state`` keeps it busy for
:data:`CLEAR_CYCLES` cycles. :func:`expected` is the Python model.
"""
from __future__ import annotations

import struct

import numpy as np
from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.contract import registers as regs

__all__ = ["ChecksumCore", "expected", "stream_header", "CLEAR_CYCLES"]

CLEAR_CYCLES = 12
LOGIT = data.StructLayout({"value": signed(32), "last": 1})


def stream_header(beats: int, logits: int, error: int = 0, stall: int = 0) -> bytes:
    return struct.pack("<4I", beats, logits, error, stall)


def _rotl(h: int, n: int) -> int:
    return ((h << n) | (h >> (32 - n))) & 0xFFFFFFFF


def expected(row: bytes, stream_bytes: bytes, engine_bytes: int):
    """(logits int32 array, argmax, argmax_value, error, beats taken) for one token."""
    beats, n, error, _ = struct.unpack_from("<4I", stream_bytes)
    taken = row + stream_bytes[:beats * engine_bytes]
    h = 0
    for (w,) in struct.iter_unpack("<I", taken):
        h = _rotl(h, 5) ^ w
    logits = (np.uint32(h) ^ np.arange(n, dtype=np.uint32)).view(np.int32)
    if error or n == 0:
        return logits[:0], 0, int(np.iinfo(np.int32).min), error, beats
    arg = int(np.argmax(logits))
    return logits, arg, int(logits[arg]), error, beats


class ChecksumCore(wiring.Component):
    """Test stand-in for TokenCore (see the module docstring); ``engine_bytes`` >= 16."""

    def __init__(self, *, engine_bytes: int):
        if engine_bytes < 16 or engine_bytes & (engine_bytes - 1):
            raise ValueError(f"engine_bytes must be a power of two >= 16, not {engine_bytes}")
        self.engine_bytes = engine_bytes
        super().__init__({
            "weights": In(stream.Signature(unsigned(8 * engine_bytes))),
            "logits": Out(stream.Signature(LOGIT)),
            "start": In(1), "clear_state": In(1),
            "hidden": In(16), "layers": In(16), "intermediate": In(16), "embed_stride": In(16),
            "busy": Out(1), "done": Out(1), "error": Out(8),
            "argmax": Out(32), "argmax_value": Out(32),
            "phase": Out(3), "weight_wait": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        E = self.engine_bytes
        h = Signal(32)
        left = Signal(32)
        n_logits = Signal(32)
        err = Signal(8)
        stall = Signal(32)
        wait = Signal(32)
        index = Signal(32)
        clear = Signal(range(CLEAR_CYCLES + 1))
        best = Signal(signed(32))
        best_i = Signal(32)
        m.d.comb += [self.argmax.eq(best_i), self.argmax_value.eq(best)]
        m.d.sync += self.done.eq(0)

        # h after folding the whole beat, word by word
        folded = h
        for k in range(E // 4):
            word = self.weights.payload[32 * k:32 * k + 32]
            folded = Cat(folded[27:], folded[:27]) ^ word
        header = self.weights.payload
        take = Signal()
        m.d.comb += take.eq(self.weights.valid & self.weights.ready)
        with m.If(take):
            m.d.sync += h.eq(folded)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [h.eq(0), left.eq(self.embed_stride // E), err.eq(0),
                                 best.eq(-(1 << 31)), best_i.eq(0), index.eq(0), wait.eq(0)]
                    m.next = "EMBED"
                with m.Elif(self.clear_state):
                    m.d.sync += clear.eq(CLEAR_CYCLES)
                    m.next = "CLEAR"
            with m.State("CLEAR"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += clear.eq(clear - 1)
                with m.If(clear == 1):
                    m.next = "IDLE"
            with m.State("EMBED"):
                m.d.comb += [self.busy.eq(1), self.phase.eq(regs.Phase.EMBED),
                             self.weights.ready.eq(left != 0), self.weight_wait.eq((left != 0) & ~self.weights.valid)]
                with m.If(take):
                    m.d.sync += left.eq(left - 1)
                with m.If(left == 0):
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.busy.eq(1), self.phase.eq(regs.Phase.PREP), self.weights.ready.eq(1),
                             self.weight_wait.eq(~self.weights.valid)]
                with m.If(take):
                    m.d.sync += [left.eq(header[:32] - 1), n_logits.eq(header[32:64]), err.eq(header[64:72]),
                                 stall.eq(header[96:128]), wait.eq(header[96:128])]
                    m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [self.busy.eq(1), self.phase.eq(regs.Phase.MATVEC)]
                with m.If(left == 0):
                    with m.If((err != 0) | (n_logits == 0)):
                        m.d.sync += [self.done.eq(1), self.error.eq(err)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "LOGITS"
                with m.Elif(wait != 0):
                    m.d.comb += self.phase.eq(regs.Phase.ELEMENTWISE)
                    m.d.sync += wait.eq(wait - 1)
                with m.Else():
                    m.d.comb += [self.weights.ready.eq(1), self.weight_wait.eq(~self.weights.valid)]
                    with m.If(take):
                        m.d.sync += [left.eq(left - 1), wait.eq(stall)]
            with m.State("LOGITS"):
                # Like TokenCore's idle engine, it "wants" the next record header meanwhile.
                value = Signal(signed(32))
                m.d.comb += [self.busy.eq(1), self.phase.eq(regs.Phase.HEAD), value.eq(h ^ index),
                             self.weight_wait.eq(~self.weights.valid),
                             self.logits.valid.eq(1), self.logits.payload.value.eq(value),
                             self.logits.payload.last.eq(index == n_logits - 1)]
                with m.If(self.logits.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(value > best):
                        m.d.sync += [best.eq(value), best_i.eq(index)]
                    with m.If(index == n_logits - 1):
                        m.d.sync += clear.eq(CLEAR_CYCLES)
                        m.next = "TAIL"
            with m.State("TAIL"):
                # A few cycles of finishing work after the last logit, weight_wait still high.
                m.d.comb += [self.busy.eq(1), self.phase.eq(regs.Phase.HEAD), self.weight_wait.eq(~self.weights.valid)]
                m.d.sync += clear.eq(clear - 1)
                with m.If(clear == 1):
                    m.d.sync += [self.done.eq(1), self.error.eq(0)]
                    m.next = "IDLE"
        return m
