"""The typed accelerator driver: the accelerator in model terms, over any transport.

Running a model is a sentence of named stages::

    driver = AcceleratorDriver(transport)
    driver.check_identity()        # ID, VERSION, build configuration, capacity
    driver.load_image(image)       # copy STREAM + EMBEDDING once, point the registers at them
    driver.reset_state()           # zero every layer's recurrent state (start of a sequence)
    result = driver.step(token)    # one token: logits, argmax, cycle counters
    token = driver.step(token, read=Read.ARGMAX).argmax   # greedy: one STATUS and one ARGMAX read
    result = driver.run_pass([t0, t1], slots=[0, 1])      # a build of columns: two sequences, one pass
    result = driver.run_pass(prompt[:2], slots=[0, 0], prefill=True)   # two prompt tokens, one pass

What a step reads is chosen per call (:class:`Read`): the V logits (a buffer of
V int64 words), ARGMAX, ARGMAX_VALUE_LO/HI, the counters; a prompt token needs
none of them. Every register access and buffer byte goes through a
:class:`~mmfree.contract.transport.CountingTransport`: :attr:`AcceleratorDriver.host_counts`
is the running total, :attr:`StepResult.host` one step's share (``HostCounts``),
which ``mmfree bench`` reports and :mod:`mmfree.contract.host_costs` prices.

Every register offset and field comes from :mod:`mmfree.contract.registers`; the
logits' format from :mod:`mmfree.models.numerics`. The same code runs on a
PYNQ board (:mod:`mmfree.host.pynq_transport`) and in the Verilator
simulation (:mod:`mmfree.sim.transport`). Only numpy and plain-Python
project modules are imported: no amaranth, no cocotb.

Errors are one line: :class:`IdentityMismatch` (wrong device, build or
model), :class:`DeviceTimeout` (no ``STATUS.done`` in time),
:class:`DeviceError` (``STATUS.error`` set; names the
:class:`~mmfree.contract.registers.ErrorCode`), ``ValueError`` for a token id out
of range (refused before the device is touched).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mmfree.contract import registers as regs
from mmfree.models import numerics as nx
from mmfree.models.weight_image import STREAM_ALIGN, WeightImage

from mmfree.contract.transport import CountingTransport, HostCounts, Transport, TransportError

__all__ = ["DriverError", "IdentityMismatch", "DeviceTimeout", "DeviceError", "BuildIdentity", "StepResult",
           "AcceleratorDriver", "BufferLayout", "COUNTERS", "BUFFER_ALIGN", "LOGIT_WORD", "STATE_WORD", "timeout_cycles", "Read", "HostCounts",
           "EMBEDDING_PLACES"]

#: Where :meth:`AcceleratorDriver.load_image` may keep the embedding table.
EMBEDDING_PLACES = ("auto", "device", "host")

#: Registers reported by :meth:`AcceleratorDriver.counters`, in map order.
COUNTERS: tuple[regs.Register, ...] = tuple(
    r for r in regs.REGISTERS if r.name.startswith("CYCLES_") or r.name in ("BYTES_READ", "TOKENS"))
#: Alignment of the regions inside the weight buffer (the image's own region alignment).
BUFFER_ALIGN = 4096
#: One logit in the LOGITS_ADDR buffer: ACT (``numerics.ACT_BITS``, Q15.32) sign-extended to a
#: little-endian integer of ``registers.LOGIT_WORD_BYTES`` (int64).
LOGIT_WORD = np.dtype(f"<i{regs.LOGIT_WORD_BYTES}")
#: One recurrent-state value in the state buffer: ACT sign-extended (``registers.STATE_WORD_BYTES``).
STATE_WORD = np.dtype(f"<i{regs.STATE_WORD_BYTES}")
#: Slack of the completion bounds: a token must finish within this many times the
#: cycles the bus needs just to carry its bytes, plus a fixed allowance.
TIMEOUT_FACTOR = 16
TIMEOUT_SLACK_CYCLES = 100_000


class Read(enum.Flag):
    """What :meth:`AcceleratorDriver.step` reads back after STATUS.done (STATUS itself always)."""

    NONE = 0
    ARGMAX = enum.auto()          # ARGMAX: the greedy next token (1 register)
    ARGMAX_VALUE = enum.auto()    # ARGMAX_VALUE_LO/HI (2 registers)
    COUNTERS = enum.auto()        # CYCLES_*, BYTES_READ, TOKENS (9 registers)
    LOGITS = enum.auto()          # the logits buffer: V x LOGIT_WORD bytes, after an invalidate
    ALL = ARGMAX | ARGMAX_VALUE | COUNTERS | LOGITS


class DriverError(RuntimeError):
    """The accelerator cannot run this request (one-line message)."""


class IdentityMismatch(DriverError):
    """The device, its build or the model does not match what the driver expects."""


class DeviceTimeout(DriverError):
    """The accelerator did not finish within its time bound."""


class DeviceError(DriverError):
    """The accelerator finished with ``STATUS.error`` set; ``code`` is the ErrorCode."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _error_name(code: int) -> str:
    try:
        return regs.ErrorCode(code).name
    except ValueError:
        return f"unknown error code {code}"


def timeout_cycles(bytes_moved: int, bus_bytes_per_cycle: int) -> int:
    """A generous completion bound for work that moves ``bytes_moved`` over the bus."""
    return TIMEOUT_SLACK_CYCLES + TIMEOUT_FACTOR * math.ceil(bytes_moved / bus_bytes_per_cycle)


@dataclasses.dataclass(frozen=True)
class BuildIdentity:
    """What the ID, VERSION, DESIGN_HASH, BUILD_CONFIG and CAPACITY_* registers say about a build."""

    magic: int
    interface_version: int
    numerics_version: int
    design_hash: int
    bus_bytes: int
    ports: int
    engine_bytes: int
    rows_per_block: int
    max_hidden: int
    max_layers: int
    max_intermediate: int
    max_vocab_log2: int
    addr_width: int = 32
    columns: int = 1

    #: The registers this is decoded from.
    REGISTERS = ("ID", "VERSION", "DESIGN_HASH", "BUILD_CONFIG", "CAPACITY_DIMS", "CAPACITY_INNER")

    @classmethod
    def from_words(cls, words: Mapping[str, int]) -> "BuildIdentity":
        """Decode the raw register words (a mapping from register name to value)."""
        def field(reg: str, name: str) -> int:
            return regs.BY_NAME[reg].field(name).get(words[reg])

        return cls(magic=words["ID"], interface_version=field("VERSION", "interface"),
                   numerics_version=field("VERSION", "numerics"), design_hash=words["DESIGN_HASH"],
                   bus_bytes=1 << field("BUILD_CONFIG", "bus_bytes_log2"), ports=field("BUILD_CONFIG", "ports"),
                   engine_bytes=1 << field("BUILD_CONFIG", "engine_bytes_log2"),
                   rows_per_block=1 << field("BUILD_CONFIG", "rows_per_block_log2"),
                   max_hidden=field("CAPACITY_DIMS", "max_hidden"), max_layers=field("CAPACITY_DIMS", "max_layers"),
                   max_intermediate=field("CAPACITY_INNER", "max_intermediate"),
                   max_vocab_log2=field("CAPACITY_INNER", "max_vocab_log2"),
                   addr_width=field("BUILD_CONFIG", "addr_bits"),
                   columns=max(1, field("BUILD_CONFIG", "columns")))

    @property
    def max_vocab(self) -> int:
        return 1 << self.max_vocab_log2

    @property
    def bus_bytes_per_cycle(self) -> int:
        """Bytes the read ports together can carry per cycle (the bus's own bound)."""
        return self.bus_bytes * max(self.ports, 1)

    def check_device(self) -> None:
        """Refuse a device that is not this accelerator, or a build of another interface/numerics."""
        if self.magic != regs.ID_MAGIC:
            raise IdentityMismatch(f"no mmfree accelerator at this address: ID reads 0x{self.magic:08X}, "
                                   f"expected 0x{regs.ID_MAGIC:08X}")
        if self.interface_version != regs.INTERFACE_VERSION:
            raise IdentityMismatch(f"the accelerator implements register interface {self.interface_version}, "
                                   f"this driver speaks {regs.INTERFACE_VERSION}; use a matching bitstream")
        if self.numerics_version != nx.NUMERICS_VERSION:
            raise IdentityMismatch(f"the accelerator implements numerics version {self.numerics_version}, "
                                   f"this host's golden model is version {nx.NUMERICS_VERSION}")

    def check_manifest(self, manifest: Mapping) -> None:
        """Refuse a bitstream whose DESIGN_HASH (and build parameters, if listed) differ from its manifest."""
        if "design_hash" not in manifest:
            raise IdentityMismatch("the manifest has no design_hash")
        want = manifest["design_hash"]
        want = int(want, 16) if isinstance(want, str) else int(want)
        if want & 0xFFFF_FFFF != self.design_hash:
            raise IdentityMismatch(f"DESIGN_HASH reads 0x{self.design_hash:08X} but the manifest says "
                                   f"0x{want & 0xFFFF_FFFF:08X}: the bitstream and its manifest do not belong "
                                   "together")
        build = manifest.get("config", {})
        for key in ("bus_bytes", "ports", "engine_bytes", "rows_per_block", "max_hidden", "max_layers",
                    "max_intermediate", "addr_width", "columns"):
            if key in build and int(build[key]) != getattr(self, key):
                raise IdentityMismatch(f"the device's {key} is {getattr(self, key)} but the manifest says "
                                       f"{build[key]}")

    def check_image(self, image: WeightImage) -> None:
        """Refuse an image this build cannot run: its block size, or a dimension beyond the capacity."""
        c = image.config
        problems = []
        if image.rows_per_block != self.rows_per_block:
            problems.append(f"rows_per_block {image.rows_per_block} (this build streams {self.rows_per_block}; "
                            f"convert with --rows-per-block {self.rows_per_block})")
        for what, have, cap in (("hidden size", c.D, self.max_hidden), ("layers", c.L, self.max_layers),
                                ("intermediate size", c.I, self.max_intermediate),
                                ("vocabulary", c.V, self.max_vocab)):
            if have > cap:
                problems.append(f"{what} {have} (this build holds at most {cap})")
        if problems:
            raise IdentityMismatch("the model does not fit this accelerator build: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one token produced.

    ``logits_act`` are the raw ACT logits the accelerator wrote (int64,
    ``numerics.ACT_FRAC`` fractional bits); ``logits`` the same as float64
    (``numerics.act_to_float``); ``argmax``/``argmax_value`` what the ARGMAX
    and ARGMAX_VALUE_LO/HI registers say (lowest index on ties; the value in
    ACT); ``counters`` the cycle/byte counters of this token (lower-case
    register names); each is ``None`` unless the step's :class:`Read` asked
    for it. A pass of several columns (:meth:`AcceleratorDriver.run_pass`)
    also has ``tokens``, ``argmaxes`` (every column's argmax of a decode pass)
    and ``column_logits`` (float64, one row per column whose logits went out);
    ``logits``/``argmax`` are then the first such column's (a prefill: its last token's). ``host`` is the step's host traffic (register reads and writes,
    buffer bytes, invalidates, waits), ``wall_s`` the host's time for the step.
    """

    token: int
    argmax: int | None
    argmax_value: int | None
    logits_act: np.ndarray | None
    logits: np.ndarray | None
    counters: dict[str, int] | None
    host: HostCounts
    wall_s: float
    tokens: tuple[int, ...] = ()
    argmaxes: tuple[int, ...] | None = None
    column_logits: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class BufferLayout:
    """Where a loaded image lives in device memory (what :meth:`AcceleratorDriver.load_image` allocates)."""

    stream_offset: int
    stream_bytes: int
    embed_offset: int
    embed_stride: int
    embed_bytes: int
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    columns: int = 1
    layer_bytes: int = 0

    @classmethod
    def of(cls, image: WeightImage, columns: int = 1) -> "BufferLayout":
        regions = image.meta["regions"]
        stream_bytes = regions["stream"]["size"]
        embed_offset = -(-stream_bytes // BUFFER_ALIGN) * BUFFER_ALIGN
        return cls(0, stream_bytes, embed_offset, regions["embedding"]["row_stride"],
                   regions["embedding"]["size"], image.config.V, image.config.D, image.config.L, image.config.I,
                   columns, image.layer_bytes)

    @property
    def state_words_bytes(self) -> int:
        """One sequence's recurrent state: L x D values of :data:`STATE_WORD`."""
        return STATE_WORD.itemsize * self.hidden * self.layers

    @property
    def state_slot_bytes(self) -> int:
        """One sequence slot of the state buffer: its state, aligned as the reader's commands are."""
        return -(-self.state_words_bytes // STREAM_ALIGN) * STREAM_ALIGN

    def pass_read_bytes(self, columns: int, prefill: bool = False) -> int:
        """What one pass reads: the columns' rows, STREAM and each layer's state of its sequences
        (``columns`` of them, or a prefill's one)."""
        sequences = 1 if prefill else columns
        return columns * self.embed_stride + self.stream_bytes + sequences * self.state_words_bytes

    def pass_write_bytes(self, columns: int, prefill: bool = False) -> int:
        """What one pass writes: each layer's new state of its sequences and their logits (a
        prefill's one, its last token's)."""
        sequences = 1 if prefill else columns
        return sequences * (self.state_words_bytes + LOGIT_WORD.itemsize * self.vocab)

    @property
    def state_bytes(self) -> int:
        """The state buffer: one slot per column."""
        return self.columns * self.state_slot_bytes

    @property
    def weight_buffer_bytes(self) -> int:
        """The weight buffer with the whole embedding table after STREAM."""
        return self.embed_offset + self.embed_bytes

    @property
    def weight_buffer_bytes_host_rows(self) -> int:
        """The weight buffer when the table stays in host memory: one row per column after STREAM."""
        return self.embed_offset + self.columns * self.embed_stride

    @property
    def bytes_per_token(self) -> int:
        """Bus traffic of one pass of every column: the embedding rows, the STREAM region, each
        column's state read and written, the logits."""
        return (self.columns * self.embed_stride + self.stream_bytes + 2 * self.columns * self.state_slot_bytes
                + self.logits_bytes)

    @property
    def logits_bytes(self) -> int:
        """The logits buffer: V words of :data:`LOGIT_WORD` per column."""
        return LOGIT_WORD.itemsize * self.vocab * self.columns


class AcceleratorDriver:
    """One accelerator behind ``transport``, in model terms (see the module docstring)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self._io = CountingTransport(transport)       # every access of the driver goes through it
        self.identity: BuildIdentity | None = None
        self.image: WeightImage | None = None
        self._layout: BufferLayout | None = None
        self._weights = None
        self._logits = None
        self._state = None
        #: Where the loaded image's embedding table lives: "device" (beside the stream) or "host".
        self.embedding_place: str | None = None
        self._idle = False                            # known idle: a done was seen, or STATUS.busy clear
        self._token_cycles: dict = {}                 # CYCLES_TOTAL of the last pass of each kind (columns, prefill)
        self._written: dict[str, int] = {}            # what PASS and SLOTS hold (written by this driver)

    @property
    def host_counts(self) -> HostCounts:
        """Everything the driver has asked of its transport so far (a snapshot)."""
        return self._io.counts.copy()

    # -- registers --------------------------------------------------------
    def _read(self, name: str) -> int:
        return self._io.read(regs.BY_NAME[name].offset)

    def _write(self, name: str, value: int) -> None:
        self._io.write(regs.BY_NAME[name].offset, value)

    def _read_many(self, names) -> dict[str, int]:
        values = self._io.read_many([regs.BY_NAME[n].offset for n in names])
        return dict(zip(names, values))

    @staticmethod
    def _pack(name: str, **fields: int) -> int:
        reg = regs.BY_NAME[name]
        word = 0
        for field, value in fields.items():
            word |= reg.field(field).put(value)
        return word

    @staticmethod
    def _get(name: str, field: str, word: int) -> int:
        return regs.BY_NAME[name].field(field).get(word)

    def _write_address(self, prefix: str, address: int) -> None:
        self._write(f"{prefix}_ADDR_LO", address & 0xFFFF_FFFF)
        self._write(f"{prefix}_ADDR_HI", address >> 32)

    # -- identity ---------------------------------------------------------
    def check_identity(self, manifest: Mapping | str | Path | None = None) -> BuildIdentity:
        """Read and check the build identity (and, given a manifest dict or path, the design hash)."""
        identity = BuildIdentity.from_words(self._read_many(BuildIdentity.REGISTERS))
        identity.check_device()
        if manifest is not None:
            if not isinstance(manifest, Mapping):
                try:
                    manifest = json.loads(Path(manifest).read_text())
                except (OSError, ValueError) as e:
                    raise IdentityMismatch(f"cannot read manifest {manifest}: {e}") from None
            identity.check_manifest(manifest)
        if self.image is not None:
            identity.check_image(self.image)
        self.identity = identity
        return identity

    # -- model ------------------------------------------------------------
    def load_image(self, image: WeightImage, *, embedding: str = "auto") -> None:
        """Copy the image's STREAM and EMBEDDING regions to the device and point the registers at them.

        Registers set: STREAM_ADDR, STREAM_BYTES, LAYER_BYTES, EMBED_ADDR, EMBED_STRIDE,
        LOGITS_ADDR, STATE_ADDR, STATE_SLOT_BYTES, MODEL_DIMS (D, L), MODEL_INNER (I), VOCAB.

        One buffer holds STREAM (offset 0) and EMBEDDING (next 4 KiB
        boundary); another receives the V int64 logits; a third holds the
        recurrent state, one slot per column (:attr:`BufferLayout.state_bytes`),
        which only the device reads and writes. ``embedding``:

        * ``"device"``: the whole table in device memory, as above;
        * ``"host"``: the table stays in host memory and the buffer holds one
          row per column after STREAM, where ``EMBED_ADDR`` points. Before each
          START the driver copies column c's row to row c and writes c as its
          token, so the device's row address ``EMBED_ADDR + c * EMBED_STRIDE``
          lands on it: one row (2 D bytes) more per token and a flush per pass,
          and 32000 x 2 D bytes less contiguous memory (a stock PYNQ-Z2 image
          has about 120 MiB: docs/capacity.md);
        * ``"auto"`` (default): ``"device"``, or ``"host"`` when the transport
          cannot allocate the table (:attr:`embedding_place` says which).

        Refuses an image the build cannot run (:class:`IdentityMismatch`)
        before allocating anything, and a buffer that ends beyond the build's
        address width (``BUILD_CONFIG.addr_bits``) before writing it (both
        freed again). Ends with :meth:`reset_state`.
        """
        if embedding not in EMBEDDING_PLACES:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDING_PLACES)}, not {embedding!r}")
        identity = self.identity or self.check_identity()
        identity.check_image(image)
        layout = BufferLayout.of(image, identity.columns)
        self._release()
        place, weights = ("host" if embedding == "host" else "device"), None
        if place == "device":
            try:
                weights = self._io.allocate(layout.weight_buffer_bytes)
            except TransportError:
                if embedding == "device":
                    raise
                place = "host"
        if weights is None:
            weights = self._io.allocate(layout.weight_buffer_bytes_host_rows)
        self._weights = self._reachable("weight", weights, identity)
        # Cacheable: read back in bulk after one invalidate (docs/board.md, "Host time per token").
        self._logits = self._reachable("logits", self._io.allocate(layout.logits_bytes, cacheable=True), identity)
        self._state = self._reachable("state", self._io.allocate(layout.state_bytes), identity)
        weights, logits = self._weights, self._logits
        weights.write(bytes(image.stream), layout.stream_offset)
        if place == "device":
            weights.write(bytes(image.region("embedding")), layout.embed_offset)
        weights.sync_to_device()
        self.embedding_place = place
        base = weights.physical_address
        self._write_address("STREAM", base + layout.stream_offset)
        self._write("STREAM_BYTES", layout.stream_bytes)
        self._write_address("EMBED", base + layout.embed_offset)
        self._write("EMBED_STRIDE", layout.embed_stride)
        self._write_address("LOGITS", logits.physical_address)
        self._write("LAYER_BYTES", layout.layer_bytes)
        self._write_address("STATE", self._state.physical_address)
        self._write("STATE_SLOT_BYTES", layout.state_slot_bytes)
        self._write("MODEL_DIMS", self._pack("MODEL_DIMS", hidden=layout.hidden, layers=layout.layers))
        self._write("MODEL_INNER", self._pack("MODEL_INNER", intermediate=layout.intermediate))
        self._write("VOCAB", layout.vocab)
        for name in ("PASS", "SLOTS"):                # one column, slot 0: what every pass then changes
            self._written[name] = 0
            self._write(name, 0)
        self.image, self._layout = image, layout
        self.reset_state()

    def _reachable(self, what: str, buf, identity: BuildIdentity):
        """``buf`` if the build's masters can address all of it; else every buffer is freed and
        :class:`IdentityMismatch` says why (a CMA above 4 GB and a 32-bit build, say)."""
        if buf.physical_address + buf.nbytes > 1 << identity.addr_width:
            buf.free()
            self._release()
            raise IdentityMismatch(f"the {what} buffer at 0x{buf.physical_address:X} ends beyond this build's "
                                   f"{identity.addr_width}-bit addresses; use a build that reaches it "
                                   "(BUILD_CONFIG.addr_bits)")
        return buf

    def _host_embedding_rows(self, tokens, layout: BufferLayout) -> list[int]:
        """Put column c's row at row c of the rows buffer (EMBED_ADDR); returns the token ids to
        write, c for column c, so that the device's row address EMBED_ADDR + c * EMBED_STRIDE is it."""
        stride, table = layout.embed_stride, self.image.region("embedding")
        for c, token in enumerate(tokens):
            self._weights.write(bytes(table[token * stride:(token + 1) * stride]), layout.embed_offset + c * stride)
        self._weights.sync_to_device()
        return list(range(len(tokens)))

    def _release(self) -> None:
        for buf in (self._weights, self._logits, self._state):
            if buf is not None:
                buf.free()
        self._weights = self._logits = self._state = None
        self.image = self._layout = self.embedding_place = None
        self._token_cycles = {}

    def _require_image(self) -> BufferLayout:
        if self._layout is None:
            raise DriverError("no model loaded: call load_image first")
        return self._layout

    def step_timeout_s(self) -> float:
        """Device-time bound of one token (see :func:`timeout_cycles`)."""
        layout = self._require_image()
        return timeout_cycles(layout.bytes_per_token, self.identity.bus_bytes_per_cycle) / self.transport.clock_hz

    @property
    def columns(self) -> int:
        """Tokens per weight pass and sequence slots of the build (BUILD_CONFIG.columns)."""
        return self.identity.columns if self.identity is not None else 1

    def _write_cached(self, name: str, value: int) -> None:
        """Write a register that keeps its value (PASS, SLOTS) only when it changes."""
        if self._written.get(name) != value:
            self._write(name, value)
            self._written[name] = value

    def reset_state(self, timeout_s: float | None = None, *, slot: int = 0) -> None:
        """Zero sequence slot ``slot``'s recurrent state, every layer (PASS.clear_slot, CONTROL.clear_state),
        and wait until the device is idle. The other slots keep theirs."""
        layout = self._require_image()
        self._check_slots([slot])
        if timeout_s is None:
            timeout_s = timeout_cycles(4 * layout.hidden * layout.layers, 4) / self.transport.clock_hz
        self._wait_idle("before clear_state")
        self._write_cached("PASS", self._pack("PASS", clear_slot=slot))
        self._write("CONTROL", self._pack("CONTROL", clear_state=1))
        self._idle = False
        self._wait_idle("after clear_state", timeout_s)

    def _wait_idle(self, when: str, timeout_s: float | None = None) -> None:
        """Wait until STATUS.busy is clear: the accelerator ignores START and clear_state while
        a token runs (one may still run after a :class:`DeviceTimeout`)."""
        if timeout_s is None:
            timeout_s = self.step_timeout_s()
        if self._idle:
            return
        busy = regs.BY_NAME["STATUS"].field("busy")
        if not self._io.wait(timeout_s, lambda: not busy.get(self._read("STATUS"))):
            raise DeviceTimeout(f"the accelerator stayed busy {timeout_s * 1e3:.3g} ms of device time {when}")
        self._idle = True

    def step(self, token: int, timeout_s: float | None = None, *, read: Read = Read.ALL) -> StepResult:
        """Run one token of the sequence in slot 0; return what ``read`` asks for (default: logits,
        argmax, counters). :meth:`run_pass` of one column.

        Host traffic per token: 3 register writes (STATUS.done W1C, TOKEN,
        CONTROL.start); STATUS reads until done (one when the token takes
        the time the last one did: the wait is told the last CYCLES_TOTAL);
        then only the registers and buffer ``read`` names. STATUS.done
        implies the device is idle again, so no idle check precedes START
        after a completed token. The first token after :meth:`load_image`
        also reads CYCLES_TOTAL once, to learn the token's duration.

        Raises ``ValueError`` for a token id outside the loaded vocabulary
        (before touching the device), :class:`DeviceTimeout` when
        STATUS.done does not come within ``timeout_s`` of device time
        (default :meth:`step_timeout_s`), :class:`DeviceError` when
        STATUS.error is set.
        """
        return self.run_pass([token], timeout_s=timeout_s, read=read)

    def _check_tokens(self, tokens, layout: BufferLayout) -> list[int]:
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < layout.vocab:
                raise ValueError(f"token id {token!r} out of range (vocabulary has {layout.vocab} ids: "
                                 f"0..{layout.vocab - 1})")
        return [int(t) for t in tokens]

    def _check_slots(self, slots) -> list[int]:
        for slot in slots:
            if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.columns:
                raise ValueError(f"sequence slot {slot!r} out of range (this build holds {self.columns}: "
                                 f"0..{self.columns - 1})")
        return [int(s) for s in slots]

    def run_pass(self, tokens, *, slots=None, prefill: bool = False, timeout_s: float | None = None,
                 read: Read = Read.ALL) -> StepResult:
        """One weight pass of ``len(tokens)`` columns (at most :attr:`columns`).

        Decode (default): column c runs ``tokens[c]`` of the sequence in slot ``slots[c]`` (default
        c; distinct slots). Prefill: the tokens are consecutive tokens of the sequence in slot
        ``slots[0]``, and only the last one's logits and argmax come back. Host traffic beyond
        :meth:`step`'s: one TOKEN<c> write per further column, PASS and SLOTS when they change, and
        per column an ARGMAX<c> read (``Read.ARGMAX``, decode). Raises ``ValueError`` for a bad
        token, slot or column count before the device is touched.
        """
        layout = self._require_image()
        tokens = self._check_tokens(list(tokens), layout)
        n = len(tokens)
        if not 1 <= n <= self.columns:
            raise ValueError(f"a pass takes 1..{self.columns} tokens on this build, not {n}")
        slots = self._check_slots(list(range(n)) if slots is None else ([slots[0]] * n if prefill else list(slots)))
        if len(slots) != n:
            raise ValueError(f"{n} tokens for {len(slots)} slots")
        if not prefill and len(set(slots)) != n:
            raise ValueError(f"the columns of a decode pass need distinct slots, not {slots}")
        kind = (n, bool(prefill))
        if timeout_s is None:
            timeout_s = self.step_timeout_s()
        start, before = time.perf_counter(), self._io.counts.copy()
        self._wait_idle(f"before token {tokens[0]}")
        status_reg = regs.BY_NAME["STATUS"]
        done = status_reg.field("done")
        self._write("STATUS", done.put(1))                       # W1C: forget the previous pass's done
        sent = self._host_embedding_rows(tokens, layout) if self.embedding_place == "host" else tokens
        for c, token in enumerate(sent):
            self._write(regs.token_register(c), token)
        if self.columns > 1:
            self._write_cached("SLOTS", self._pack("SLOTS", **{f"slot{c}": s for c, s in enumerate(slots)}))
        self._write_cached("PASS", self._pack("PASS", last_column=n - 1, prefill=int(bool(prefill))))
        self._write("CONTROL", self._pack("CONTROL", start=1))
        self._idle = False
        status = 0

        def finished() -> bool:
            nonlocal status
            status = self._read("STATUS")
            return bool(done.get(status))

        expected = self._token_cycles.get(kind)
        expected_s = 0.0 if expected is None else expected / self.transport.clock_hz
        if not self._io.wait(timeout_s, finished, expected_s=min(expected_s, timeout_s)):
            raise DeviceTimeout(f"token {tokens[0]}: no STATUS.done within {timeout_s * 1e3:.3g} ms of device time "
                                f"({timeout_s * self.transport.clock_hz:,.0f} cycles)")
        self._idle = True                                         # done: the token core is idle again
        code = status_reg.field("error").get(status)
        if code:
            raise DeviceError(f"token {tokens[0]}: the accelerator stopped with error {_error_name(code)}", code)
        return self._pass_results(tokens, kind, read, before, start)

    def _pass_results(self, tokens, kind, read: Read, before, start) -> StepResult:
        """Read what ``read`` asks for after a pass (STATUS.done seen)."""
        layout = self._layout
        n, prefill = kind
        argmax_names = tuple(regs.argmax_register(c) for c in range(n)) if not prefill else ("ARGMAX",)
        names = (argmax_names if Read.ARGMAX in read else ()) \
            + (("ARGMAX_VALUE_LO", "ARGMAX_VALUE_HI") if Read.ARGMAX_VALUE in read else ()) \
            + (tuple(r.name for r in COUNTERS) if Read.COUNTERS in read
               else ("CYCLES_TOTAL",) if kind not in self._token_cycles else ())
        words = self._read_many(names) if names else {}
        if "CYCLES_TOTAL" in words:
            self._token_cycles[kind] = words["CYCLES_TOTAL"]
        argmax_value = None
        if Read.ARGMAX_VALUE in read:
            argmax_value = words["ARGMAX_VALUE_HI"] << 32 | words["ARGMAX_VALUE_LO"]
            argmax_value -= (argmax_value >> 63) << 64                # two's complement 64 bits
        logits_act = None
        if Read.LOGITS in read:
            out_columns = 1 if prefill else n
            self._logits.sync_from_device()
            raw = np.frombuffer(self._logits.read(LOGIT_WORD.itemsize * layout.vocab * out_columns),
                                dtype=LOGIT_WORD).astype(np.int64)
            logits_act = raw[regs.logit_positions(layout.vocab, out_columns, self.identity.engine_bytes,
                                                  self.identity.rows_per_block)] if out_columns > 1 else raw[None]
        column_logits = None if logits_act is None else nx.act_to_float(logits_act)
        return StepResult(token=tokens[-1] if prefill else tokens[0], argmax=words.get("ARGMAX"),
                          argmax_value=argmax_value,
                          logits_act=None if logits_act is None else logits_act[0],
                          logits=None if column_logits is None else column_logits[0],
                          counters={r.name.lower(): words[r.name] for r in COUNTERS} if Read.COUNTERS in read
                          else None,
                          host=self._io.counts - before, wall_s=time.perf_counter() - start, tokens=tuple(tokens),
                          argmaxes=tuple(words[a] for a in argmax_names) if Read.ARGMAX in read and not prefill
                          else None,
                          column_logits=column_logits)

    def counters(self) -> dict[str, int]:
        """The cycle and byte counters of the last pass (lower-case register names)."""
        words = self._read_many(tuple(r.name for r in COUNTERS))
        return {r.name.lower(): words[r.name] for r in COUNTERS}

    def close(self) -> None:
        """Release the buffers and the transport."""
        self._release()
        self.transport.close()
