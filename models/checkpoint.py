"""Reading released MMfreeLM checkpoints and converting them to weight images.

A checkpoint directory holds ``config.json``, ``model.safetensors`` (or shards
listed in ``model.safetensors.index.json``) with bf16 tensors, and usually
``tokenizer.json``.

Why a safetensors reader here: the ``safetensors`` package's numpy API
rejects bf16 (numpy has no bfloat16 dtype). The file format is a documented
8-byte length, a JSON table and raw little-endian data; we use the package
for every dtype numpy knows and read bf16 tensors as their raw uint16 bit
patterns from the same table.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from . import numerics as nx
from .config import ConfigError, ModelConfig
from .weight_image import DEFAULT_ROWS_PER_BLOCK, ImageError, build_image, expected_tensors, is_size


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; one-line message."""


_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8", "I8": "i1", "I32": "<i4", "I64": "<i8"}


def read_safetensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """All tensors of one safetensors file as (dtype tag, array); bf16 as raw uint16.

    Raises :class:`CheckpointError` naming the file and tensor when the header is not a table of
    tensors, or a tensor's dtype, shape and byte range disagree with each other or the file."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (too short)")
    (hlen,) = struct.unpack_from("<Q", raw)
    if hlen > len(raw) - 8:
        raise CheckpointError(f"{path}: not a safetensors file (header length {hlen} beyond the file)")
    try:
        header = json.loads(raw[8: 8 + hlen])
    except ValueError:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (the header is not a JSON object)")
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: tensor {name}: entry is not an object")
        tag = info.get("dtype")
        if tag not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {tag}")
        offsets, shape = info.get("data_offsets"), info.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_size(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name}: data_offsets {offsets!r} is not [start, end]")
        if not (isinstance(shape, list) and all(is_size(n) for n in shape)):
            raise CheckpointError(f"{path}: tensor {name}: shape {shape!r} is not a list of sizes")
        start, end = offsets
        itemsize = np.dtype(_DTYPES[tag]).itemsize
        if end - start != itemsize * math.prod(shape):
            raise CheckpointError(f"{path}: tensor {name}: shape {shape} of {tag} needs "
                                  f"{itemsize * math.prod(shape)} bytes, data_offsets hold {end - start}")
        if base + end > len(raw):
            raise CheckpointError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        arr = np.frombuffer(raw, dtype=_DTYPES[tag], count=(end - start) // itemsize, offset=base + start)
        out[name] = (tag, arr.reshape(shape))
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: bool = True) -> None:
    """Write float tensors in the released format (bf16 by default). For tests and training export."""
    write_safetensors_stream(path, {n: tuple(np.shape(a)) for n, a in tensors.items()}, tensors.values(), bf16)


def write_safetensors_stream(path: Path, shapes: dict[str, tuple[int, ...]], arrays: Iterable[np.ndarray],
                             bf16: bool = True) -> int:
    """Write one safetensors file whose tensors come one at a time, so only one is ever held.

    ``shapes`` gives every tensor's name and shape in file order (the header is written first);
    ``arrays`` yields the float tensors in that order. Returns the data bytes written. Raises
    ``ValueError`` when an array's shape differs from ``shapes`` or ``arrays`` ends early."""
    itemsize = 2 if bf16 else 4
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = itemsize * math.prod(shape)
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    arrays = iter(arrays)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in shapes.items():
            arr = next(arrays, None)
            if arr is None:
                raise ValueError(f"{path}: no array for tensor {name}")
            if tuple(np.shape(arr)) != tuple(shape):
                raise ValueError(f"{path}: tensor {name} has shape {tuple(np.shape(arr))}, expected {tuple(shape)}")
            if bf16:
                f.write(nx.float32_to_bf16(np.asarray(arr, np.float32)).astype("<u2").tobytes())
            else:
                f.write(np.asarray(arr, "<f4").tobytes())
    return offset


def load_checkpoint(directory) -> tuple[ModelConfig, dict[str, tuple[str, np.ndarray]], bytes | None]:
    """(config, raw tensors by name, tokenizer.json bytes or None) of a checkpoint directory."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a checkpoint directory")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{d}: no config.json")
    hf = _read_json(cfg_path)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    try:
        cfg = ModelConfig.from_hf(hf)
    except (ValueError, TypeError) as e:  # ConfigError, and int() of a value that is not a number
        raise CheckpointError(f"{cfg_path}: {e}") from None
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not (isinstance(weight_map, dict) and all(isinstance(f, str) and f for f in weight_map.values())):
            raise CheckpointError(f"{index}: no weight_map object of tensor names to file names")
        files = sorted(set(weight_map.values()))
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{d}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for f in files:
        if Path(f).name != f:
            raise CheckpointError(f"{index}: shard {f!r} is not a file name in {d}")
        if not (d / f).is_file():
            raise CheckpointError(f"{d}: shard {f} listed in the index is missing")
        tensors.update(read_safetensors(d / f))
    tok = d / "tokenizer.json"
    return cfg, tensors, _read_tokenizer(tok) if tok.exists() else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None


def _read_tokenizer(path: Path) -> bytes:
    """tokenizer.json's bytes, once the tokenizers library has parsed them (so no image carries a broken one)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    raw = path.read_bytes()
    try:
        Tokenizer.from_str(raw.decode())
    except Exception as e:  # tokenizers raises its own exception type; UnicodeDecodeError too
        lines = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: not a tokenizer ({lines[0] if lines else type(e).__name__})") from None
    return raw


def _to_float32(tag: str, arr: np.ndarray) -> np.ndarray:
    return nx.bf16_to_float32(arr) if tag == "BF16" else arr.astype(np.float32)


class _Float32Tensors(Mapping):
    """The checkpoint's tensors widened to float32 one at a time, on access.

    A full 2.7B checkpoint is ~5 GB of bf16 and would be ~10 GB of float32 at
    once; :func:`build_image` reads each tensor a few times in a row (shape,
    finiteness, codes, scale), so the last one widened is kept."""

    def __init__(self, raw: dict[str, tuple[str, np.ndarray]], names):
        self._raw, self._names = raw, list(names)
        self._last: tuple[str | None, np.ndarray | None] = (None, None)

    def __getitem__(self, name: str) -> np.ndarray:
        if self._last[0] != name:
            if name not in self._raw:
                raise KeyError(name)
            self._last = (None, None)             # drop the previous tensor before widening the next
            self._last = (name, _to_float32(*self._raw[name]))
        return self._last[1]

    def __contains__(self, name) -> bool:
        return name in self._raw

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def convert(directory, *, rows_per_block: int = DEFAULT_ROWS_PER_BLOCK, progress=None) -> bytes:
    """Weight-image bytes of a checkpoint directory.

    Ternary codes and scales come from the checkpoint's latent bf16 weights
    exactly as the reference's run-time quantization computes them. Raises
    :class:`CheckpointError` naming a missing tensor, a wrong shape or an
    unknown architecture.
    """
    cfg, raw, tok = load_checkpoint(directory)
    expected = expected_tensors(cfg)
    missing = [n for n in expected if n not in raw]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint lacks tensor {missing[0]}{more}")
    for name, shape in expected.items():
        if tuple(raw[name][1].shape) != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(raw[name][1].shape)}, expected {shape} "
                                  f"from config.json")
    tensors = _Float32Tensors(raw, expected)
    emb_tag, emb = raw["model.embeddings.weight"]
    try:
        return build_image(cfg, tensors, rows_per_block=rows_per_block, tokenizer_json=tok,
                           embedding_bf16=emb if emb_tag == "BF16" else None,
                           source={"checkpoint": Path(directory).name}, progress=progress)
    except ImageError as e:
        raise CheckpointError(str(e)) from None


__all__ = ["CheckpointError", "ConfigError", "convert", "load_checkpoint", "read_safetensors", "write_safetensors",
           "write_safetensors_stream"]
