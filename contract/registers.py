"""The accelerator's AXI4-Lite register map, defined once.

The gateware (``hw/control_registers.py``), the host driver (``host/driver.py``)
and the documentation (``docs/registers.md``, written by :func:`markdown`) all
read this table. It is plain Python: the board-side driver imports it on a
PYNQ image that has neither amaranth nor cocotb.

Every register is 32 bits wide at a byte offset that is a multiple of 4.
64-bit addresses are two registers, ``*_LO`` then ``*_HI``. Access kinds:

* ``RO``: read only (status, results, counters, build identity);
* ``RW``: read/write, holds its value;
* ``W1S``: write 1 to a bit to trigger an action; reads as 0 (self-clearing);
* ``W1C``: sticky status bits set by hardware, cleared by writing 1.
"""
from __future__ import annotations

import dataclasses
import enum

__all__ = ["Field", "Register", "REGISTERS", "BY_NAME", "ID_MAGIC", "INTERFACE_VERSION", "MAX_COLUMNS", "ErrorCode",
           "STATE_WORD_BYTES",
           "Phase", "logit_positions", "token_register", "argmax_register",
           "REGISTER_SPACE_BYTES", "LOGIT_WORD_BYTES", "ACCELERATOR_IP_NAME", "design_hash_from_digest", "markdown"]

#: Value of the ``ID`` register: "MMF1" in ASCII.
ID_MAGIC = 0x4D4D4631
#: Hardware/driver interface version in ``VERSION`` bits [15:0]; bump on any change to this table.
#: Version 2 (numerics version 2, 48-bit ACT): logits are written as int64 words and the
#: argmax value is a 64-bit pair (ARGMAX_VALUE_LO/HI).
#: Version 3: BUILD_CONFIG.addr_bits (the masters' address width), so the driver refuses a
#: buffer the build cannot reach (UltraScale+ maps its upper DDR above 4 GB).
#: Version 4: columns. A build runs up to BUILD_CONFIG.columns tokens per weight pass (decode of that
#: many sequences, or a prefill of that many tokens of one): PASS, SLOTS, TOKEN1..7, ARGMAX1..7;
#: the logits buffer holds every column's logits in the engine's order (:func:`logit_positions`).
#: Version 5: the recurrent state lives in memory (STATE_ADDR, STATE_SLOT_BYTES): each pass reads every
#: layer's state of its sequences before the layer's records (LAYER_BYTES says where a layer ends) and
#: writes it back; CONTROL.clear_state zeroes a slot there.
INTERFACE_VERSION = 5
#: The most columns (tokens per weight pass) the register map serves.
MAX_COLUMNS = 8
#: Bytes per logit in the LOGITS_ADDR buffer: the ACT logit (48 bits) sign-extended to a
#: little-endian int64 (the logits writer's word; the driver reads the buffer with it).
LOGIT_WORD_BYTES = 8
#: Bytes per recurrent-state value in the STATE_ADDR buffer (and in the weight stream that carries
#: it to the core): the ACT value sign-extended to a little-endian int64.
STATE_WORD_BYTES = 8

#: Name of the accelerator's instance in the block design (a hierarchy path may prefix it):
#: the Vivado flow names the cell so, and the PYNQ transport finds the IP in the overlay by it.
ACCELERATOR_IP_NAME = "mmfree_accelerator"


def design_hash_from_digest(sha256_hex: str) -> int:
    """The ``DESIGN_HASH`` register's value for a build whose content hash is ``sha256_hex``:
    its first 32 bits (the first 8 hex digits). Board builds, the simulated builds and the
    manifests all use this one rule."""
    return int(sha256_hex[:8], 16)
#: Size of the AXI4-Lite address window (the block decodes the low 8 bits).
REGISTER_SPACE_BYTES = 0x100


class ErrorCode(enum.IntEnum):
    """``STATUS.error`` values: why the last token stopped (0: it did not)."""

    NONE = 0
    TOKEN_RANGE = 1        # TOKEN >= VOCAB: nothing was read from memory
    BAD_RECORD = 2         # a STREAM record's magic or kind is not what the sequence expects
    SHAPE = 3              # a record's sizes exceed what this build holds (see CAPACITY_*)
    AXI_READ = 4           # a read response was SLVERR/DECERR
    AXI_WRITE = 5          # a write response was SLVERR/DECERR
    STREAM_SHORT = 6       # the datapath still wanted weight bytes long after EMBED_STRIDE + STREAM_BYTES
    COLUMNS = 7            # PASS.last_column, PASS.clear_slot or a used SLOTS entry beyond BUILD_CONFIG.columns


class Phase(enum.IntEnum):
    """What the datapath is doing; each phase has a cycle counter (``CYCLES_<phase>``)."""

    IDLE = 0
    EMBED = 1              # fetching and converting the token's embedding row
    PREP = 2               # record headers, gains, max/sum-of-squares and code passes
    MATVEC = 3             # consuming packed ternary weights
    ELEMENTWISE = 4        # MLGRU, GLU, residual adds outside the matrix streams
    HEAD = 5               # argmax and the logits write after the last matrix


@dataclasses.dataclass(frozen=True)
class Field:
    """A bit field ``[lsb, lsb + width)`` of a register."""

    name: str
    lsb: int
    width: int
    doc: str
    #: The field's own access kind where the register mixes kinds (``RO/W1C``); "" means the register's.
    access: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, word: int) -> int:
        return (word >> self.lsb) & ((1 << self.width) - 1)

    def put(self, value: int) -> int:
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"field {self.name} holds {self.width} bits, not {value}")
        return value << self.lsb


@dataclasses.dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str            # RO, RW, W1S, W1C (a register may mix W1S/W1C fields: see fields)
    doc: str
    fields: tuple[Field, ...] = ()

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}")


def _counter(name: str, offset: int, doc: str) -> Register:
    return Register(name, offset, "RO", doc + " Cleared at each START; wraps at 2**32.")


REGISTERS: tuple[Register, ...] = (
    Register("ID", 0x00, "RO", f"Constant 0x{ID_MAGIC:08X} (\"MMF1\"): this is the MatMul-free accelerator."),
    Register("VERSION", 0x04, "RO", "Interface and numerics versions of this build.", (
        Field("interface", 0, 16, "INTERFACE_VERSION of this register map"),
        Field("numerics", 16, 16, "numerics.NUMERICS_VERSION the datapath implements"),
    )),
    Register("DESIGN_HASH", 0x08, "RO",
             "First 32 bits (the first 8 hex digits) of the build's SHA-256 content hash; bitstreams/<board>/manifest.json holds the same value."),
    Register("BUILD_CONFIG", 0x0C, "RO", "How this build reads memory.", (
        Field("bus_bytes_log2", 0, 4, "log2 of the AXI data width in bytes (3: 64-bit, 4: 128-bit)"),
        Field("ports", 4, 4, "number of AXI4 read ports"),
        Field("engine_bytes_log2", 8, 4, "log2 of the packed weight bytes the matrix engine takes per cycle"),
        Field("rows_per_block_log2", 12, 4, "log2 of the weight image's rows_per_block this build expects"),
        Field("addr_bits", 16, 8, "address bits of the AXI4 masters: every buffer must end below 2**addr_bits"),
        Field("columns", 24, 4, "tokens per weight pass (columns) and sequence slots of the recurrent state; "
                                "0 reads as a build before columns (one)"),
    )),
    Register("CAPACITY_DIMS", 0x10, "RO", "Largest model this build runs (its on-chip vectors).", (
        Field("max_hidden", 0, 16, "largest D"),
        Field("max_layers", 16, 16, "largest L"),
    )),
    Register("CAPACITY_INNER", 0x14, "RO", "Largest inner and vocabulary sizes.", (
        Field("max_intermediate", 0, 16, "largest I"),
        Field("max_vocab_log2", 16, 8, "log2 of the largest V (the logits counter width)"),
    )),
    Register("CONTROL", 0x18, "W1S", "Actions; each bit reads back as 0.", (
        Field("start", 0, 1, "run one weight pass (PASS): the columns' embedding rows, every layer, the head"),
        Field("clear_state", 1, 1, "zero the recurrent state of sequence slot PASS.clear_slot in memory, "
                                   "every layer (start of a sequence): MODEL_DIMS.layers x hidden int64 words "
                                   "at STATE_ADDR + clear_slot x STATE_SLOT_BYTES"),
    )),
    Register("STATUS", 0x1C, "RO/W1C", "State of the accelerator.", (
        Field("busy", 0, 1, "a token or a state clear is running (RO)", "RO"),
        Field("done", 1, 1, "a token finished since this bit was last cleared (W1C)", "W1C"),
        Field("error", 8, 8, "ErrorCode of the last token (RO; cleared by the next START)", "RO"),
    )),
    Register("TOKEN", 0x20, "RW", "Token id of column 0 at the next START (must be < VOCAB)."),
    Register("MODEL_DIMS", 0x24, "RW", "Shape of the loaded model.", (
        Field("hidden", 0, 16, "D"),
        Field("layers", 16, 16, "L"),
    )),
    Register("VOCAB", 0x28, "RW", "V: number of logits, and the bound on TOKEN."),
    Register("STREAM_ADDR_LO", 0x2C, "RW", "Bus address of the weight image's STREAM region (64-byte aligned)."),
    Register("STREAM_ADDR_HI", 0x30, "RW", "High half of STREAM_ADDR."),
    Register("STREAM_BYTES", 0x34, "RW", "Length of the STREAM region in bytes."),
    Register("EMBED_ADDR_LO", 0x38, "RW", "Bus address of the EMBEDDING region (64-byte aligned)."),
    Register("EMBED_ADDR_HI", 0x3C, "RW", "High half of EMBED_ADDR."),
    Register("EMBED_STRIDE", 0x40, "RW", "Bytes between embedding rows (a multiple of 64)."),
    Register("LOGITS_ADDR_LO", 0x44, "RW",
             "Bus address (8-byte aligned) of a buffer of int64 logits: ACT (Q15.32, 48 bits) sign-extended, "
             "little-endian; V per column whose logits go out (every column of a decode pass, the last of a "
             "prefill), in the order logit_positions gives; 0 disables the write."),
    Register("LOGITS_ADDR_HI", 0x48, "RW", "High half of LOGITS_ADDR."),
    Register("ARGMAX", 0x4C, "RO", "Index of the largest logit (lowest index on ties) of column 0, or of the last "
                                   "column of a prefill."),
    Register("ARGMAX_VALUE_LO", 0x50, "RO", "That logit, ACT (Q15.32) sign-extended to 64 bits: bits [31:0]."),
    _counter("CYCLES_TOTAL", 0x54, "Cycles from START to done."),
    _counter("CYCLES_WEIGHT_WAIT", 0x58, "Cycles the datapath wanted weight-stream data and had none."),
    _counter("CYCLES_EMBED", 0x5C, "Cycles in phase EMBED."),
    _counter("CYCLES_PREP", 0x60, "Cycles in phase PREP."),
    _counter("CYCLES_MATVEC", 0x64, "Cycles in phase MATVEC."),
    _counter("CYCLES_ELEMENTWISE", 0x68, "Cycles in phase ELEMENTWISE."),
    _counter("CYCLES_HEAD", 0x6C, "Cycles in phase HEAD."),
    _counter("BYTES_READ", 0x70, "Bytes received from the AXI4 read port(s)."),
    Register("TOKENS", 0x74, "RO", "Tokens run (columns of every pass) since the last clear_state."),
    Register("MODEL_INNER", 0x78, "RW", "Shape of the loaded model, continued.", (
        Field("intermediate", 0, 16, "I (the GLU's inner size)"),
    )),
    Register("ARGMAX_VALUE_HI", 0x7C, "RO", "Bits [63:32] of ARGMAX_VALUE (the sign-extended ACT logit)."),
    Register("PASS", 0x80, "RW", "What the next START runs.", (
        Field("last_column", 0, 4, "columns 0..last_column (below BUILD_CONFIG.columns; 0: one token)"),
        Field("prefill", 8, 1, "0: each column is its own sequence (slot SLOTS.slot<c>); 1: the columns are "
                               "consecutive tokens of one sequence (slot SLOTS.slot0), only the last "
                               "column's logits go out"),
        Field("clear_slot", 16, 4, "the sequence slot CONTROL.clear_state zeroes"),
    )),
    Register("SLOTS", 0x84, "RW", "Each column's sequence slot (whose recurrent state it reads and writes; "
                                  "a prefill uses slot0).",
             tuple(Field(f"slot{c}", 4 * c, 4, f"slot of column {c}") for c in range(MAX_COLUMNS))),
    *(Register(f"TOKEN{c}", 0x84 + 4 * c, "RW", f"Token id of column {c} at the next START (must be < VOCAB).")
      for c in range(1, MAX_COLUMNS)),
    *(Register(f"ARGMAX{c}", 0xA0 + 4 * c, "RO", f"Index of the largest logit of column {c} (lowest on ties).")
      for c in range(1, MAX_COLUMNS)),
    Register("STATE_ADDR_LO", 0xC0, "RW",
             "Bus address (64-byte aligned) of the recurrent state: BUILD_CONFIG.columns slots, STATE_SLOT_BYTES "
             "apart; slot s's layer l is hidden int64 words (ACT sign-extended, little-endian) at "
             "STATE_ADDR + s x STATE_SLOT_BYTES + l x 8 x hidden. Every pass reads and rewrites its slots'."),
    Register("STATE_ADDR_HI", 0xC4, "RW", "High half of STATE_ADDR."),
    Register("STATE_SLOT_BYTES", 0xC8, "RW", "Bytes between sequence slots (a multiple of 64, at least "
                                             "8 x hidden x layers)."),
    Register("LAYER_BYTES", 0xCC, "RW", "STREAM bytes of one layer (every layer's records have the same size; "
                                        "the head's follow the last): where the next layer's state is read."),
)

BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}


def token_register(column: int) -> str:
    """The register holding column ``column``'s token id (TOKEN, TOKEN1, ...)."""
    return "TOKEN" if column == 0 else f"TOKEN{column}"


def argmax_register(column: int) -> str:
    """The register holding column ``column``'s argmax (ARGMAX, ARGMAX1, ...)."""
    return "ARGMAX" if column == 0 else f"ARGMAX{column}"


def logit_positions(vocab: int, columns: int, engine_bytes: int, rows_per_block: int):
    """Where each column's logits lie in the logits buffer: an int array ``[columns, vocab]`` of
    word indices. The engine emits a matrix block by block (``rows_per_block`` rows), each block
    as beats of ``engine_bytes`` rows, each beat column by column (``hw.bitlinear_engine``)."""
    import numpy as np

    rows = np.arange(vocab)
    beat = rows // engine_bytes                    # beats are whole within a block (R is a multiple of E)
    keys = (beat[None, :] * columns + np.arange(columns)[:, None]) * engine_bytes + rows[None, :] % engine_bytes
    order = np.argsort(keys, axis=None, kind="stable")
    positions = np.empty(order.size, np.int64)
    positions[order] = np.arange(order.size)
    return positions.reshape(columns, vocab)


def _check() -> None:
    offsets = [r.offset for r in REGISTERS]
    if len(set(offsets)) != len(offsets) or any(o % 4 or o >= REGISTER_SPACE_BYTES for o in offsets):
        raise AssertionError("register offsets must be unique, word aligned and inside the window")
    for r in REGISTERS:
        used = 0
        kinds = set(r.access.split("/"))
        for f in r.fields:
            if (f.access or r.access) not in kinds or (len(kinds) > 1 and not f.access):
                raise AssertionError(f"field {r.name}.{f.name} needs an access kind out of {r.access}")
            if f.mask & used or f.lsb + f.width > 32:
                raise AssertionError(f"fields of {r.name} overlap or exceed 32 bits")
            used |= f.mask


_check()


def markdown() -> str:
    """The register map as a markdown table (docs/registers.md is this text)."""
    lines = ["# Register map", "",
             "Generated from `contract/registers.py` by `python -m mmfree.contract.registers`; do not edit by hand.", "",
             f"AXI4-Lite, 32-bit registers, {REGISTER_SPACE_BYTES:#x}-byte window. "
             f"Interface version {INTERFACE_VERSION}.", "",
             "| offset | name | access | description |", "|---|---|---|---|"]
    for r in REGISTERS:
        desc = r.doc + "".join(f"<br>`[{f.lsb + f.width - 1}:{f.lsb}]` **{f.name}**: {f.doc}" for f in r.fields)
        lines.append(f"| 0x{r.offset:02X} | {r.name} | {r.access} | {desc} |")
    lines += ["", "## Error codes", "", "| value | name |", "|---|---|"]
    lines += [f"| {e.value} | {e.name} |" for e in ErrorCode]
    lines += ["", "## Phases", "", "| value | name |", "|---|---|"]
    lines += [f"| {p.value} | {p.name} |" for p in Phase]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
