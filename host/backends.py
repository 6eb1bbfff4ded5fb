"""Backends that compute one token's logits: the same interface for the golden
models now, and for the simulated and the real accelerator.

A backend is reset to the zero state, then fed one token id per call;
``close`` releases what it holds. Three calls feed a token, each returning
only what its caller needs (the decode loop, :func:`mmfree.host.generate.generate`,
picks the cheapest):

* ``step(token)``: the next-token logits as float64 (V,) (sampling, ``logits``, ``eval``);
* ``step_argmax(token)``: the greedy next token (lowest id on ties), an int;
* ``advance(token)``: nothing (a prompt token: only the state moves).

The golden backends compute the logits either way; the accelerator backends
read from the device only what the call returns: ``advance`` reads STATUS,
``step_argmax`` STATUS and ARGMAX, ``step`` STATUS and the logits buffer
(:class:`~mmfree.host.driver.Read`). Backends are chosen by name with :func:`open_backend`:

* ``golden``: the integer golden model (what the accelerator computes);
* ``float``: the float32 golden model;
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


class BackendError(RuntimeError):
    """A backend that cannot run (one-line message)."""


class _GoldenModelBackend:
    """A backend over one of the golden models (which one: the subclass's ``model``)."""

    name = ""

    def __init__(self, image: WeightImage):
        self.model = self.make_model(image)
        self.reset()

    def reset(self) -> None:
        self.state = self.model.initial_state()

    def step(self, token: int) -> np.ndarray:
        logits, self.state = self.model.step(token, self.state)
        return self.to_float(logits)

    def step_argmax(self, token: int) -> int:
        return int(np.argmax(self.step(token)))        # numpy: the lowest index on ties, as ARGMAX

    def advance(self, token: int) -> None:
        self.step(token)

    def close(self) -> None:
        pass


class GoldenBackend(_GoldenModelBackend):
    """The integer golden model: the accelerator's arithmetic, bit for bit."""

    name = "golden"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_int import IntegerModel

        return IntegerModel(image)

    @staticmethod
    def to_float(logits):
        return nx.act_to_float(logits)


class FloatBackend(_GoldenModelBackend):
    """The float32 golden model (the reference's arithmetic)."""

    name = "float"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_float import FloatModel

        return FloatModel(image)

    @staticmethod
    def to_float(logits):
        return logits.astype(np.float64)


class _AcceleratorBackend:
    """A backend over :class:`~mmfree.host.driver.AcceleratorDriver` on some transport.

    ``last`` holds the last step's :class:`~mmfree.host.driver.StepResult`
    (what that call read, and its host traffic in ``last.host``). With
    ``read_counters`` set, every call also reads the hardware counters
    (``last.counters``); by default none does (9 register reads a token).
    """

    name = ""
    manifest = None  # a bitstream's manifest.json to check DESIGN_HASH against
    read_counters = False

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
        if self.driver.embedding_place == "host":
            print(f"{self.name}: the device memory cannot also hold the embedding table: it stays in host memory "
                  "and one row is copied per token (docs/capacity.md)", file=sys.stderr)
        self.last = None

    def reset(self) -> None:
        with _one_line_errors():
            self.driver.reset_state()

    def _step(self, token: int, read):
        from .driver import Read

        with _one_line_errors():
            self.last = self.driver.step(token, read=read | (Read.COUNTERS if self.read_counters else Read.NONE))
        return self.last

    def step(self, token: int) -> np.ndarray:
        from .driver import Read

        return self._step(token, Read.LOGITS).logits

    def step_argmax(self, token: int) -> int:
        from .driver import Read

        return self._step(token, Read.ARGMAX).argmax

    def advance(self, token: int) -> None:
        from .driver import Read

        self._step(token, Read.NONE)

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


def open_backend(name: str, image: WeightImage, **options):
    """The backend called ``name`` on ``image``; ``options`` (hw_config, bitstream) go to accelerator backends."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name not in ACCELERATOR_BACKENDS:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise BackendError(f"--{given[0].replace('_', '-')} applies to the sim and pynq backends only")
        return BACKENDS[name](image)
    return BACKENDS[name](image, **options)
