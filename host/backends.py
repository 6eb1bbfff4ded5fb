"""Backends that compute next-token outputs: the same interface for the golden
models, and for the simulated and the real accelerator.

A backend holds ``streams`` independent sequences (0 .. streams-1), each
with its own recurrent state, and runs weight passes over them:

* ``clear(seq)``: that sequence back to the zero state (the others keep theirs);
* ``decode({seq: token, ...}, read)``: one token of each named sequence in
  one weight pass; returns ``{seq: output}``;
* ``prefill(seq, tokens, read)``: up to ``prefill_tokens`` consecutive tokens
  of one sequence in one weight pass; returns the last token's output.

``read`` (:class:`~mmfree.host.driver.Read`) says what the caller needs, and
the accelerator backends read from the device only that: ``Read.LOGITS``, the
next-token logits as float64 (V,); ``Read.ARGMAX``, the greedy next token (an
int, the lowest id on ties); ``Read.NONE``, nothing (None: only the state moves).

Sequence 0 also has the one-sequence calls the decode loop of one prompt and
the tests use: ``reset()``, ``step(token)`` (logits), ``step_argmax(token)``,
``advance(token)``. ``close`` releases what the backend holds. Backends are
chosen by name with :func:`open_backend`:

* ``golden``: the integer golden model (what the accelerator computes), B
  sequences per :meth:`~mmfree.models.golden_int.IntegerModel.step_batch`;
* ``float``: the float32 golden model (one sequence at a time inside a pass);
* ``sim``: the accelerator's RTL in Verilator (the ``sim`` transport that
  :mod:`mmfree.sim.transport` registers), through the same driver as the board;
* ``pynq``: the accelerator on a PYNQ board (:mod:`mmfree.host.pynq_transport`).

Every failure to open or run a backend is a :class:`BackendError` with a
one-line message.
"""
from __future__ import annotations

import sys

import contextlib
from pathlib import Path

import numpy as np

from mmfree.contract.boards import BOARDS
from mmfree.models import numerics as nx
from mmfree.models.weight_image import WeightImage

from .driver import Read

#: Sequences a golden backend holds unless told otherwise (``--streams``).
DEFAULT_CPU_STREAMS = 8
#: The most a golden backend may be asked to hold.
MAX_CPU_STREAMS = 256


class BackendError(RuntimeError):
    """A backend that cannot run (one-line message)."""


class _Sequences:
    """The one-sequence calls on sequence 0, and the checks every backend makes of a request."""

    streams = 1
    prefill_tokens = 1
    vocab = 0

    def reset(self) -> None:
        self.clear(0)

    def step(self, token: int) -> np.ndarray:
        return self.decode({0: token}, Read.LOGITS)[0]

    def step_argmax(self, token: int) -> int:
        return self.decode({0: token}, Read.ARGMAX)[0]

    def advance(self, token: int) -> None:
        self.decode({0: token}, Read.NONE)

    def _check_seq(self, seq) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq < self.streams:
            raise BackendError(f"sequence {seq!r} out of range (this backend holds {self.streams}: "
                               f"0..{self.streams - 1})")
        return int(seq)

    def _check_tokens(self, tokens) -> list[int]:
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.vocab:
                raise BackendError(f"token id {t!r} out of range (vocabulary has {self.vocab} ids: 0..{self.vocab - 1})")
        return [int(t) for t in tokens]

    def _check_prefill(self, seq, tokens) -> tuple[int, list[int]]:
        seq = self._check_seq(seq)
        if not 1 <= len(tokens) <= self.prefill_tokens:
            raise BackendError(f"a prefill takes 1..{self.prefill_tokens} tokens, not {len(tokens)}")
        return seq, self._check_tokens(tokens)


class _GoldenModelBackend(_Sequences):
    """A backend over one of the golden models (which one: the subclass's ``make_model``), holding
    ``streams`` sequences; a prefill takes up to ``streams`` tokens, as the accelerator's columns do."""

    name = ""

    def __init__(self, image: WeightImage, streams: int = DEFAULT_CPU_STREAMS):
        if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= MAX_CPU_STREAMS:
            raise BackendError(f"streams must be in 1..{MAX_CPU_STREAMS}, not {streams!r}")
        self.model = self.make_model(image)
        self.streams = self.prefill_tokens = streams
        self.vocab = image.config.V
        self.states = [self.model.initial_state() for _ in range(streams)]

    def clear(self, seq: int) -> None:
        self.states[self._check_seq(seq)] = self.model.initial_state()

    def decode(self, tokens, read: Read) -> dict:
        seqs = [self._check_seq(s) for s in tokens]
        ids = self._check_tokens([tokens[s] for s in seqs])
        logits, states = self.step_columns(ids, [self.states[s] for s in seqs])
        for s, state in zip(seqs, states):
            self.states[s] = state
        return {s: self._output(row, read) for s, row in zip(seqs, logits)}

    def prefill(self, seq: int, tokens, read: Read):
        seq, ids = self._check_prefill(seq, tokens)
        logits, self.states[seq] = self.prefill_columns(ids, self.states[seq], read != Read.NONE)
        return self._output(logits, read)

    def _output(self, logits, read: Read):
        if Read.LOGITS in read:
            return self.to_float(logits)
        if Read.ARGMAX in read:
            return int(np.argmax(logits))        # numpy: the lowest index on ties, as ARGMAX
        return None

    def close(self) -> None:
        pass


class GoldenBackend(_GoldenModelBackend):
    """The integer golden model: the accelerator's arithmetic, bit for bit; the sequences of a
    pass go through one :meth:`~mmfree.models.golden_int.IntegerModel.step_batch`."""

    name = "golden"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_int import IntegerModel

        return IntegerModel(image)

    @staticmethod
    def to_float(logits):
        return nx.act_to_float(logits)

    def step_columns(self, tokens, states):
        return self.model.step_batch(tokens, states)

    def prefill_columns(self, tokens, state, want_logits: bool):
        return self.model.prefill(tokens, state, logits="last" if want_logits else "none")


class FloatBackend(_GoldenModelBackend):
    """The float32 golden model (the reference's arithmetic), one sequence and one token after another."""

    name = "float"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_float import FloatModel

        return FloatModel(image)

    @staticmethod
    def to_float(logits):
        return logits.astype(np.float64)

    def step_columns(self, tokens, states):
        out = [self.model.step(t, s) for t, s in zip(tokens, states)]
        return [o[0] for o in out], [o[1] for o in out]

    def prefill_columns(self, tokens, state, want_logits: bool):
        # Token by token, not forward()'s product over positions: float32 sums taken in another
        # order could round differently, and a prompt's tokens must not depend on its chunking.
        for t in tokens:
            logits, state = self.model.step(t, state)
        return logits, state


class _AcceleratorBackend(_Sequences):
    """A backend over :class:`~mmfree.host.driver.AcceleratorDriver` on some transport.

    The build's columns (BUILD_CONFIG.columns) are its ``streams``: sequence s
    lives in slot s, a decode pass runs one column per named sequence, and a
    prefill runs up to ``columns`` tokens of one sequence per pass.

    ``last`` holds the last step's :class:`~mmfree.host.driver.StepResult`
    (what that call read, and its host traffic in ``last.host``). With
    ``read_counters`` set, every call also reads the hardware counters
    (``last.counters``, and ``device_cycles`` sums their CYCLES_TOTAL); by
    default none does (9 register reads a token).
    """

    name = ""
    manifest = None  # a bitstream's manifest.json to check DESIGN_HASH against
    read_counters = False
    device_cycles = 0  # CYCLES_TOTAL summed over the passes that read the counters

    def __init__(self, image: WeightImage, transport):
        from .driver import AcceleratorDriver

        self.driver = AcceleratorDriver(transport)
        try:
            with _one_line_errors():
                self.driver.check_identity(self.manifest)
                self.driver.load_image(image)
        except BackendError:
            self.driver.close()
            raise
        self.vocab = image.config.V
        self.streams = self.prefill_tokens = self.driver.columns
        if self.driver.embedding_place == "host":
            print(f"{self.name}: the device memory cannot also hold the embedding table: it stays in host memory "
                  "and one row is copied per token (docs/capacity.md)", file=sys.stderr)
        self.last = None

    def clear(self, seq: int) -> None:
        seq = self._check_seq(seq)
        with _one_line_errors():
            self.driver.reset_state(slot=seq)

    def _pass(self, tokens, slots, prefill: bool, read: Read):
        with _one_line_errors():
            self.last = self.driver.run_pass(tokens, slots=slots, prefill=prefill,
                                             read=read | (Read.COUNTERS if self.read_counters else Read.NONE))
        if self.last.counters is not None:
            self.device_cycles += self.last.counters["cycles_total"]
        return self.last

    def decode(self, tokens, read: Read) -> dict:
        seqs = [self._check_seq(s) for s in tokens]
        ids = self._check_tokens([tokens[s] for s in seqs])
        result = self._pass(ids, seqs, False, read)
        if Read.LOGITS in read:
            return dict(zip(seqs, result.column_logits))
        if Read.ARGMAX in read:
            return dict(zip(seqs, result.argmaxes))
        return dict.fromkeys(seqs)

    def prefill(self, seq: int, tokens, read: Read):
        seq, tokens = self._check_prefill(seq, tokens)
        result = self._pass(tokens, [seq], True, read)
        if Read.LOGITS in read:
            return result.logits
        if Read.ARGMAX in read:
            return result.argmax
        return None

    def close(self) -> None:
        self.driver.close()


@contextlib.contextmanager
def _one_line_errors():
    """Turn driver, transport and range errors into :class:`BackendError` (one line)."""
    from .driver import DriverError
    from mmfree.contract.transport import TransportError, first_line

    try:
        yield
    except (DriverError, TransportError, ValueError) as e:
        raise BackendError(first_line(e)) from None


#: Entry-point group through which a package offers a :class:`~mmfree.contract.transport.Transport`:
#: the simulation registers ``sim`` (pyproject.toml), so the host names no simulation module.
TRANSPORT_ENTRY_POINTS = "mmfree.transports"


def registered_transport(name: str):
    """The transport class registered as ``name`` in :data:`TRANSPORT_ENTRY_POINTS`.

    Raises :class:`BackendError` (one line) when none is registered or it cannot be imported
    (the simulation extra is missing)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=TRANSPORT_ENTRY_POINTS) if ep.name == name]
    if not found:
        raise BackendError(f"no {name!r} transport is installed (entry point group {TRANSPORT_ENTRY_POINTS}; "
                           f"reinstall with pip install -e '.[sim]')")
    try:
        return found[0].load()
    except ImportError as e:
        raise BackendError(f"the {name} backend needs the simulation extra (pip install 'mmfree[sim]'): {e}") from None


class SimBackend(_AcceleratorBackend):
    """The accelerator's RTL in a Verilator simulation (``hw_config``: a :mod:`mmfree.contract.configs` name)."""

    name = "sim"

    def __init__(self, image: WeightImage, *, hw_config: str | None = None, bitstream=None):
        if bitstream is not None:
            raise BackendError("--bitstream applies to the pynq backend only")
        from mmfree.contract.configs import DEFAULT_SIM_CONFIG

        sim_transport = registered_transport("sim")
        with _one_line_errors():
            transport = sim_transport(hw_config or DEFAULT_SIM_CONFIG)
        super().__init__(image, transport)


class PynqBackend(_AcceleratorBackend):
    """The accelerator on a PYNQ board.

    ``bitstream`` (default ``bitstreams/<hw_config>/mmfree.bit``, ``hw_config``
    defaulting to the board PYNQ names in ``$BOARD``, else ``pynq-z2``) is
    loaded with the ``manifest.json`` beside it, which must exist: the
    DESIGN_HASH register must equal the manifest's ``design_hash`` (and the
    build parameters its ``config``), or the backend refuses the pair before
    touching the model. The accelerator's clock is the manifest's
    ``clock_hz``. The weight image is copied to the board once, here.
    """

    name = "pynq"

    def __init__(self, image: WeightImage, *, hw_config: str | None = None, bitstream=None):
        import json

        from .pynq_transport import PynqTransport, import_pynq

        board = hw_config or _pynq_board()
        with _one_line_errors():
            import_pynq()                  # a missing pynq is the first thing to say
        if bitstream is None and board not in BOARDS:
            raise BackendError(f"configuration {board!r} is not a board build (boards: {', '.join(BOARDS)})")
        path = Path(bitstream) if bitstream is not None else BITSTREAMS / board / "mmfree.bit"
        if not path.is_file():
            hint = "" if bitstream is not None else (
                f" (build it with `make bitstream BOARD={board}` on a machine with Vivado and copy "
                f"bitstreams/{board}/ here: docs/board.md)")
            raise BackendError(f"{path}: no such bitstream{hint}")
        manifest_path = path.with_name("manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text())
            clock_hz = float(manifest["clock_hz"])
        except FileNotFoundError:
            raise BackendError(f"{manifest_path}: no manifest beside the bitstream; the pynq backend refuses a "
                               "bitstream it cannot identify (copy the manifest.json of its build)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendError(f"{manifest_path}: not a build manifest ({type(e).__name__}: {e})") from None
        self.manifest = manifest
        with _one_line_errors():
            transport = PynqTransport(path, clock_hz=clock_hz)
        super().__init__(image, transport)


def _pynq_board() -> str:
    """The board a PYNQ image says it is (``$BOARD``: ``Pynq-Z2``, ``KV260``), else pynq-z2."""
    import os

    name = os.environ.get("BOARD", "").lower()
    return name if name in BOARDS else "pynq-z2"


#: The repository's bitstream folder (bitstreams/<board>/mmfree.bit + manifest.json).
BITSTREAMS = Path(__file__).resolve().parent.parent / "bitstreams"

BACKENDS = {"golden": GoldenBackend, "float": FloatBackend, "sim": SimBackend, "pynq": PynqBackend}
#: Backends that run the accelerator (they take ``hw_config`` and ``bitstream``).
ACCELERATOR_BACKENDS = ("sim", "pynq")


def open_backend(name: str, image: WeightImage, *, streams: int | None = None, **options):
    """The backend called ``name`` on ``image``, holding ``streams`` sequences (golden backends: default
    :data:`DEFAULT_CPU_STREAMS`; an accelerator holds what its build holds, and refuses more);
    ``options`` (hw_config, bitstream) go to accelerator backends."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name not in ACCELERATOR_BACKENDS:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise BackendError(f"--{given[0].replace('_', '-')} applies to the sim and pynq backends only")
        return BACKENDS[name](image, **({} if streams is None else {"streams": streams}))
    backend = BACKENDS[name](image, **options)
    if streams is not None and streams > backend.streams:
        backend.close()
        raise BackendError(f"--streams {streams}: this {name} build holds {backend.streams} sequence"
                           f"{'s' if backend.streams > 1 else ''} at once")
    return backend
