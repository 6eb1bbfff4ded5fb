"""The ``mmfree`` commands' shared options and output files, declared once.

The host's commands (:mod:`mmfree.host.cli`) and the benchmarks'
(:mod:`mmfree.bench.cli`) take their model, backend, accelerator
configuration, bitstream and output options from here, so each option has one
name, one default and one help text. The build commands (:mod:`mmfree.hw.flow.cli`)
may not import the host and declare their ``--board`` themselves.

Output files are checked when the options are parsed (their folder must
exist, they must not be a folder), before any long work starts, and written
through :func:`atomic_output`: a temporary name in the same folder, renamed
over the final name only when the whole file is written.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import click

from mmfree.contract.configs import CONFIGS as HW_CONFIGS
from mmfree.contract.configs import DEFAULT_SIM_CONFIG

from .backends import BACKENDS, DEFAULT_CPU_STREAMS, MAX_CPU_STREAMS

#: The bundled models; every --model option defaults to the KJV one.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = BUNDLED_MODELS / "kjv" / "kjv.img"
#: The bundled model's held-out text (the fidelity figures' input).
HELDOUT_TEXT = BUNDLED_MODELS / "kjv" / "heldout.txt"


class FiniteFloat(click.ParamType):
    """A finite float, optionally at least ``min`` (click's FloatRange lets ``nan`` through)."""

    name = "float"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and x < self.min:
            self.fail(f"{value!r} is below {self.min:g}", param, ctx)
        return x


class InputFile(click.Path):
    """An existing, readable, non-empty file (the message names the path)."""

    def __init__(self, *, allow_empty: bool = False):
        super().__init__(exists=True, dir_okay=False, readable=True, path_type=Path)
        self.allow_empty = allow_empty

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if not self.allow_empty and path.stat().st_size == 0:
            self.fail(f"{str(path)!r} is empty", param, ctx)
        return path


class OutputFile(click.Path):
    """A file to write: its folder exists and it is not itself a folder."""

    def __init__(self):
        super().__init__(dir_okay=False, writable=True, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if path.is_dir():
            self.fail(f"{str(path)!r} is a folder", param, ctx)
        folder = path.parent
        if not folder.is_dir():
            self.fail(f"folder {str(folder)!r} of {str(path)!r} does not exist", param, ctx)
        if not os.access(folder, os.W_OK):
            self.fail(f"folder {str(folder)!r} of {str(path)!r} is not writable", param, ctx)
        return path


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text(path: Path) -> str:
    """A text file's contents; binary data, invalid UTF-8 or no text at all is a one-line error naming it."""
    raw = Path(path).read_bytes()
    if b"\0" in raw:
        raise click.ClickException(f"{path}: binary data, not text (NUL byte at {raw.index(0)})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise click.ClickException(f"{path}: no text (only white space)")
    return text


def write_output(path: Path, data: bytes | str) -> None:
    """Write a whole output file atomically (:func:`atomic_output`)."""
    with atomic_output(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


# --model and --bitstream leave a missing file to the image reader and the backend, whose messages say more.
model_option = click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_MODEL, show_default=True,
                            help="weight image (.img)")
backend_option = click.option("--backend", default="golden", show_default=True, type=click.Choice(sorted(BACKENDS)),
                              help="golden/float: the golden models; sim: the RTL in Verilator; pynq: a PYNQ board")
hw_config_option = click.option(
    "--hw-config", default=None, type=click.Choice(sorted(HW_CONFIGS)),
    help=f"accelerator configuration of --backend sim/pynq [default: {DEFAULT_SIM_CONFIG} for sim; "
         "for pynq the board $BOARD names, else pynq-z2]")
bitstream_option = click.option("--bitstream", default=None, type=click.Path(dir_okay=False, path_type=Path),
                                help="--backend pynq: the overlay .bit (default bitstreams/<hw-config>/mmfree.bit)")
json_option = click.option("--json", "json_out", default=None, type=OutputFile(),
                           help="also write the figures to this JSON file")
text_option = click.option("--text-file", "text_file", default=HELDOUT_TEXT, show_default=True, type=InputFile(),
                           help="text to evaluate (UTF-8)")
streams_option = click.option(
    "--streams", default=None, type=click.IntRange(1, MAX_CPU_STREAMS),
    help=f"sequences decoded at once, one token each per weight pass [default: {DEFAULT_CPU_STREAMS} for the "
         "golden backends; for sim/pynq what the build holds]")


def backend_options(f):
    """--backend, --hw-config and --bitstream: which machine computes the logits."""
    return backend_option(hw_config_option(bitstream_option(f)))


__all__ = ["DEFAULT_MODEL", "HELDOUT_TEXT", "BUNDLED_MODELS", "FiniteFloat", "InputFile",
           "OutputFile", "atomic_output", "read_text", "write_output", "model_option", "backend_options", "json_option", "streams_option",
           "text_option"]
