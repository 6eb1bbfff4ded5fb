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

__all__ = ["Field", "Register", "REGISTERS", "BY_NAME", "ID_MAGIC", "INTERFACE_VERSION", "ErrorCode", "Phase",
           "REGISTER_SPACE_BYTES", "LOGIT_WORD_BYTES", "ACCELERATOR_IP_NAME", "design_hash_from_digest", "markdown"]

#: Value of the ``ID`` register: "MMF1" in ASCII.
ID_MAGIC = 0x4D4D4631
#: Hardware/driver interface version in ``VERSION`` bits [15:0]; bump on any change to this table.
#: Version 2 (numerics version 2, 48-bit ACT): logits are written as int64 words and the
#: argmax value is a 64-bit pair (ARGMAX_VALUE_LO/HI).
#: Version 3: BUILD_CONFIG.addr_bits (the masters' address width), so the driver refuses a
#: buffer the build cannot reach (UltraScale+ maps its upper DDR above 4 GB).
INTERFACE_VERSION = 3
#: Bytes per logit in the LOGITS_ADDR buffer: the ACT logit (48 bits) sign-extended to a
#: little-endian int64 (the logits writer's word; the driver reads the buffer with it).
LOGIT_WORD_BYTES = 8

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
    )),
    Register("CAPACITY_DIMS", 0x10, "RO", "Largest model this build holds on chip.", (
        Field("max_hidden", 0, 16, "largest D"),
        Field("max_layers", 16, 16, "largest L (recurrent state memory)"),
    )),
    Register("CAPACITY_INNER", 0x14, "RO", "Largest inner and vocabulary sizes.", (
        Field("max_intermediate", 0, 16, "largest I"),
        Field("max_vocab_log2", 16, 8, "log2 of the largest V (the logits counter width)"),
    )),
    Register("CONTROL", 0x18, "W1S", "Actions; each bit reads back as 0.", (
        Field("start", 0, 1, "run one token: embedding row of TOKEN, every layer, the head"),
        Field("clear_state", 1, 1, "zero the recurrent state of every layer (start of a sequence)"),
    )),
    Register("STATUS", 0x1C, "RO/W1C", "State of the accelerator.", (
        Field("busy", 0, 1, "a token or a state clear is running (RO)", "RO"),
        Field("done", 1, 1, "a token finished since this bit was last cleared (W1C)", "W1C"),
        Field("error", 8, 8, "ErrorCode of the last token (RO; cleared by the next START)", "RO"),
    )),
    Register("TOKEN", 0x20, "RW", "Token id to run at the next START (must be < VOCAB)."),
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
             "Bus address (8-byte aligned) of a V x int64 buffer for the logits: ACT (Q15.32, 48 bits) "
             "sign-extended, little-endian; 0 disables the write."),
    Register("LOGITS_ADDR_HI", 0x48, "RW", "High half of LOGITS_ADDR."),
    Register("ARGMAX", 0x4C, "RO", "Index of the largest logit of the last token (lowest index on ties)."),
    Register("ARGMAX_VALUE_LO", 0x50, "RO", "That logit, ACT (Q15.32) sign-extended to 64 bits: bits [31:0]."),
    _counter("CYCLES_TOTAL", 0x54, "Cycles from START to done."),
    _counter("CYCLES_WEIGHT_WAIT", 0x58, "Cycles the datapath wanted weight-stream data and had none."),
    _counter("CYCLES_EMBED", 0x5C, "Cycles in phase EMBED."),
    _counter("CYCLES_PREP", 0x60, "Cycles in phase PREP."),
    _counter("CYCLES_MATVEC", 0x64, "Cycles in phase MATVEC."),
    _counter("CYCLES_ELEMENTWISE", 0x68, "Cycles in phase ELEMENTWISE."),
    _counter("CYCLES_HEAD", 0x6C, "Cycles in phase HEAD."),
    _counter("BYTES_READ", 0x70, "Bytes received from the AXI4 read port(s)."),
    Register("TOKENS", 0x74, "RO", "Tokens run since the last clear_state."),
    Register("MODEL_INNER", 0x78, "RW", "Shape of the loaded model, continued.", (
        Field("intermediate", 0, 16, "I (the GLU's inner size)"),
    )),
    Register("ARGMAX_VALUE_HI", 0x7C, "RO", "Bits [63:32] of ARGMAX_VALUE (the sign-extended ACT logit)."),
)

BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}


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
