"""Ternary accumulate unit: a block of rows of a packed ternary matrix times int8 codes."""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

__all__ = ["TernaryAccumulate", "weight_beat_layout", "accumulators_layout", "decode_words", "DECODE_BITS"]

#: Bits of one packed byte of five trits.
PACKED_BITS = nx.PACKED_MAX.bit_length()
#: Signed width of one activation code (|q| <= ACT_CODE_MAX).
CODE_BITS = nx.ACT_CODE_MAX.bit_length() + 1
#: Signed width of the decode ROM's offset ``-count(t = +1) - 1`` (-6 .. -1).
OFFSET_BITS = 4
#: Bits of one decode ROM word: (nonzero, positive) per trit, then the offset.
DECODE_BITS = 2 * nx.TRITS_PER_BYTE + OFFSET_BITS


def _signed_bits(lo: int, hi: int) -> int:
    """Two's complement width holding every integer in [lo, hi]."""
    return max(hi.bit_length(), (-lo - 1).bit_length()) + 1


def weight_beat_layout(lanes: int, columns: int = 1) -> data.StructLayout:
    """One input beat: ``lanes`` packed bytes (row r in element r), each column's five codes
    (``codes[c][j]``), end of block."""
    return data.StructLayout({
        "weights": data.ArrayLayout(unsigned(PACKED_BITS), lanes),
        "codes": data.ArrayLayout(data.ArrayLayout(signed(CODE_BITS), nx.TRITS_PER_BYTE), columns),
        "last": 1,
    })


def accumulators_layout(lanes: int, columns: int, acc_bits: int) -> data.ArrayLayout:
    """One output beat: each column's ``lanes`` accumulators (``acc[c][r]``)."""
    return data.ArrayLayout(data.ArrayLayout(signed(acc_bits), lanes), columns)


def decode_words() -> list[int]:
    """The decode ROM, one word per byte value, from ``numerics.TRIT_DECODE_TABLE``.

    Trit j of the byte sits at bits 2j (nonzero) and 2j+1 (positive); bits
    10..13 hold ``-count(t = +1) - 1`` (4-bit two's complement): the +1s of
    the one's-complement negations ``-q = (q XOR ~0) + 1``, and the -1 that
    lets the accumulator add with a subtraction (see :class:`TernaryAccumulate`).
    Bytes 243..255 decode to zero weights, as the table says.
    """
    words = []
    for trits in nx.TRIT_DECODE_TABLE:
        word = 0
        for j, t in enumerate(trits):
            word |= (int(t != 0) | int(t == 1) << 1) << (2 * j)
        offset = -int((trits == 1).sum()) - 1
        word |= (offset & ((1 << OFFSET_BITS) - 1)) << (2 * nx.TRITS_PER_BYTE)
        words.append(word)
    return words


class TernaryAccumulate(wiring.Component):
    """``acc[r] = sum_k q[k] * T[r, k]`` for a block of ``rows_per_block`` rows, ``lanes`` rows per beat.

    Input: the weight image's block layout (``weight_image.pack_matrix`` with
    ``rows_per_block`` = R rows per block): for each group of five
    consecutive inputs ``k = 5g .. 5g+4``, R packed bytes, row r at byte r
    (``numerics.pack_trits`` digit order: ``byte = sum_j (t_j + 1) * 3**j``).
    With ``lanes`` = B bytes per beat, one group arrives as ``D = R / B``
    consecutive beats (rows 0..B-1, B..2B-1, ...), each carrying the group's
    five int8 activation codes of each of ``columns`` input vectors; then the
    next group. Every weight byte meets every column: the columns share the
    weight stream (B sequences decoded, or B tokens prefilled, per weight pass). ``last`` marks the final
    beat of the block (the last beat of its last group); the beat after it
    starts a new block from zero.

    Output: per block, D beats of ``columns`` x B accumulators (rows in order:
    beat s holds rows ``s*B .. s*B+B-1``, row ``s*B + r`` of column c in ``[c][r]``).

    Datapath per lane (one byte, five weights, per cycle), with no
    multiplier, no three-way select, and one LUT per adder bit:

    1. The byte addresses a 256-word decode ROM (:func:`decode_words`) in
       block RAM, two lanes per ROM (the two ports of a RAMB18); the decoded
       flags serve every column.
    2. ``-t q = (q XOR ~0) + 1`` for t = +1, ``q`` for t = -1, 0 for t = 0,
       so ``S - 1 = offset - sum_j g_j`` with ``g_j = nonzero_j ? q_j XOR
       (positive_j ? ~0 : 0) : 0`` and the ROM's ``offset = -count(+1) - 1``.
       Five pipelined subtractions ``x_j = x_(j-1) - g_j``: the running sum is
       the minuend, so it drives the carry chain's generate input directly
       and ``g_j``'s gating folds into the propagate LUT of its bit. One
       register per subtraction keeps yosys from merging the chain into one
       multi-operand adder (a compressor tree of about twice the LUTs).
    3. ``acc' = (S - 1) - ~acc = acc + S`` (``~acc = -acc - 1``); the
       accumulator is again the subtrahend, so its first-group mask
       (``~(acc & ~first)``) folds into the propagate LUT too.

    Each lane keeps D accumulators (rows ``s*B + lane``) in a D-word memory
    (LUT RAM; a register when D = 1) addressed by the beat's position s in
    its group: read, add, write back in one cycle. The first group of a
    block adds to zero instead of reading, which frees the read port to
    drain the previous block's results, word by word, into the output
    register.

    Parameters
    ----------
    lanes : int, bytes per input beat (rows per beat; 5 weights each), >= 1.
    columns : int, input vectors per weight beat, >= 1 (default 1): the
        subtractions and accumulators are per column, the ROMs shared.
    k : int, the longest input vector a block may have, >= 1; sets the
        accumulator width ``numerics.accumulator_bits(k)``. A block of more
        than ``ceil(k / 5)`` groups, or codes of -128, may overflow it.
    rows_per_block : int, rows R of one block of the weight image, a positive
        multiple of ``lanes`` (default ``lanes``).

    Attributes
    ----------
    acc_bits : signed width of each output accumulator.
    depth : ``rows_per_block // lanes``, beats per group and output beats per block.
    latency : cycles from the transfer of a ``last`` beat to ``o.valid`` of the
        block's first output beat, the output being ready: 8 = ROM read (1),
        the five subtractions (5), accumulate into the memory (1), drain into
        the output register (1). The other D-1 output beats follow one per cycle.
    Throughput: one input beat (``lanes`` x 5 weights) per cycle. The input
    stalls only while a beat of a block's first group would overwrite a
    result of the previous block that output backpressure has kept from
    leaving; a block of G groups takes ``G * D`` cycles and its results
    leave while the next block's first group goes in.

    Raises
    ------
    TypeError / ValueError on a non-integer or out-of-range parameter.
    """

    latency = 3 + nx.TRITS_PER_BYTE

    def __init__(self, *, lanes: int, k: int, rows_per_block: int | None = None, columns: int = 1):
        for name, value in (("lanes", lanes), ("k", k), ("columns", columns)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if rows_per_block is None:
            rows_per_block = lanes
        if not isinstance(rows_per_block, int) or isinstance(rows_per_block, bool):
            raise TypeError(f"rows_per_block must be an integer, not {rows_per_block!r}")
        if rows_per_block < 1 or rows_per_block % lanes:
            raise ValueError(f"rows_per_block must be a positive multiple of lanes ({lanes}), "
                             f"not {rows_per_block}")
        self.lanes = lanes
        self.columns = columns
        self.k = k
        self.rows_per_block = rows_per_block
        self.depth = rows_per_block // lanes
        self.acc_bits = nx.accumulator_bits(k)
        super().__init__({
            "i": In(stream.Signature(weight_beat_layout(lanes, columns))),
            "o": Out(stream.Signature(accumulators_layout(lanes, columns, self.acc_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        n = nx.TRITS_PER_BYTE
        depth = self.depth
        code_min = -(1 << (CODE_BITS - 1))

        # --- control: the pipeline advances as a whole; only the accumulate
        # stage can hold it (see ``stall`` below).
        advance = Signal()

        def stage(name, shape, value, **kwargs):
            reg = Signal(shape, name=name, **kwargs)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        # valid / last of the beat in each stage: 0 = ROM output, 1..5 = x_0..x_4
        valid = [stage("valid0", 1, self.i.valid)]
        last = [stage("last0", 1, self.i.payload.last)]
        for s in range(1, n + 1):
            valid.append(stage(f"valid{s}", 1, valid[-1]))
            last.append(stage(f"last{s}", 1, last[-1]))
        # Codes: code j of column c is used by column c's subtraction j, one stage later per j
        # (shared by all lanes): codes[c][s][j].
        codes = []
        for c in range(self.columns):
            col = [[stage(f"code{c}_{j}_0", signed(CODE_BITS), self.i.payload.codes[c][j]) for j in range(n)]]
            for s in range(1, n):
                col.append([stage(f"code{c}_{j}_{s}", signed(CODE_BITS), col[-1][j]) if j >= s else None
                            for j in range(n)])
            codes.append(col)

        # --- stage 0: the decode ROMs in block RAM, two lanes per ROM.
        ports = []
        for pair in range(0, self.lanes, 2):
            rom = Memory(shape=unsigned(DECODE_BITS), depth=len(nx.TRIT_DECODE_TABLE), init=decode_words(),
                         attrs={"ram_style": "block"})
            m.submodules[f"decode{pair // 2}"] = rom
            ports += [rom.read_port(domain="sync") for _ in range(min(2, self.lanes - pair))]
        for r, port in enumerate(ports):
            m.d.comb += [port.addr.eq(self.i.payload.weights[r]), port.en.eq(advance)]

        # --- stages 1..5: x_j = x_(j-1) - g_j, x_(-1) = offset; x_4 = S - 1 (per column).
        partial = [[None] * self.lanes for _ in range(self.columns)]
        for r, port in enumerate(ports):
            word = port.data
            flags = word[:2 * n]
            totals = [word[2 * n:].as_signed()] * self.columns
            for j in range(n):
                if j:
                    # The flags wait beside the running sums. Kept as flip-flops:
                    # yosys would otherwise pack the longer delays into SRLs (LUTs).
                    flags = stage(f"flags{r}_{j}", 2 * (n - j), flags[2:],
                                  attrs={"keep": 1, "shreg_extract": "no"})
                nonzero, positive = flags[0], flags[1]
                # g in [-128, 127], offset in [-6, -1]: -6 - 127 (j+1) <= x_j <= 128 (j+1) - 1
                x_shape = signed(_signed_bits(-(n + 1) - (-code_min - 1) * (j + 1), -code_min * (j + 1) - 1))
                for c in range(self.columns):
                    g = Mux(nonzero, codes[c][j][j] ^ positive.replicate(CODE_BITS).as_signed(), 0)
                    totals[c] = stage(f"x{c}_{r}_{j}" if self.columns > 1 else f"x{r}_{j}", x_shape, totals[c] - g)
            for c in range(self.columns):
                partial[c][r] = totals[c]

        # --- stage 6: the accumulator memory, D words of ``lanes`` accumulators;
        # asynchronous read (LUT RAM), read-modify-write in one cycle.
        acc_shape = accumulators_layout(self.lanes, self.columns, self.acc_bits)
        acc_read = Signal(acc_shape)            # word ``acc_addr``, as an asynchronous read
        acc_addr = Signal(range(max(depth, 2)))
        acc_write = Signal(acc_shape)           # written to word ``sub`` when ``acc_we``
        acc_we = Signal()
        sub = Signal(range(max(depth, 2)))      # position s of the stage-6 beat in its group
        if depth == 1:  # one word: a register (a zero-width address would upset Verilator)
            acc_reg = Signal(acc_shape)
            m.d.comb += acc_read.eq(acc_reg)
            with m.If(acc_we):
                m.d.sync += acc_reg.eq(acc_write)
        else:
            m.submodules.accumulators = accs = Memory(shape=acc_shape, depth=depth, init=[])
            acc_rd = accs.read_port(domain="comb")
            acc_wr = accs.write_port()
            m.d.comb += [acc_rd.addr.eq(acc_addr), acc_read.eq(acc_rd.data),
                         acc_wr.addr.eq(sub), acc_wr.data.eq(acc_write), acc_wr.en.eq(acc_we)]
        first = Signal(init=1)                  # the stage-6 beat belongs to a block's first group
        drain = Signal(range(depth + 1), init=depth)  # next result word to emit; depth: none pending

        in_valid, in_last = valid[n], last[n]
        pending = drain != depth
        out_free = ~self.o.valid | self.o.ready
        drain_go = pending & out_free
        # A first-group beat overwrites word s, which must have left already
        # (s < drain) or leave in this very cycle (s == drain).
        # advance = ~(in_valid & first & pending & (sub == drain) & ~out_free), written
        # as an OR: yosys 0.23 gives every flip-flop its own LUT for an inverted enable.
        m.d.comb += [advance.eq(~in_valid | ~first | ~pending | (sub != drain) | out_free),
                     self.i.ready.eq(advance)]

        # The read port serves the drain while one is pending (only first-group
        # beats, which add to zero, can be in stage 6 then), else the accumulation.
        m.d.comb += [acc_addr.eq(Mux(pending, drain, sub)), acc_we.eq(in_valid & advance)]
        for c in range(self.columns):
            for r in range(self.lanes):
                # acc + S = (S - 1) - ~acc, with acc = 0 in a block's first group
                masked = acc_read[c][r] & ~first.replicate(self.acc_bits)
                m.d.comb += acc_write[c][r].eq(partial[c][r] - ~masked)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(drain_go):
            m.d.sync += [self.o.payload.eq(acc_read), self.o.valid.eq(1), drain.eq(drain + 1)]
        with m.If(in_valid & advance):
            m.d.sync += sub.eq(Mux(sub == depth - 1, 0, sub + 1))
            with m.If(sub == depth - 1):
                m.d.sync += first.eq(0)
            # A ``last`` off the group's final beat still restarts cleanly (its
            # results are then meaningless, but nothing hangs).
            with m.If(in_last):
                m.d.sync += [sub.eq(0), first.eq(1), drain.eq(0)]

        return m
