"""Every bad input to an ``mmfree`` command is one ``Error:`` line (issue 11.7).

Each case runs one command on a hostile file or option value and asserts:
a non-zero exit, exactly one non-empty output line, which starts with
``Error:`` and names the offending file, tensor or option, no traceback, and
nothing left in the output folder (neither the output nor a temporary file).
Cases marked "was a traceback" ended in one before issue 11.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmfree.host.cli import main
from mmfree.models.synthetic import byte_level_tokenizer, write_checkpoint
from mmfree.models.weight_image import CHECKSUM_BYTES, FIXED_HEADER

from helpers import SMALL

TINY = Path(__file__).resolve().parent.parent / "models" / "tiny-random" / "tiny-random.img"
EMBEDDING = "model.embeddings.weight"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder holding a good checkpoint ``ckpt/`` that the cases copy and damage."""
    root = tmp_path_factory.mktemp("inputs")
    tok = byte_level_tokenizer(["In the beginning God created the heaven and the earth. " * 20], SMALL.V)
    write_checkpoint(root / "ckpt", SMALL, seed=3, tokenizer_json=tok)
    return root


def checkpoint(root: Path, name: str, damage) -> Path:
    """A copy of the good checkpoint, damaged by ``damage(folder)``."""
    folder = root / name
    if not folder.exists():
        shutil.copytree(root / "ckpt", folder)
        damage(folder)
    return folder


def safetensors_header(folder: Path, edit) -> None:
    """Rewrite model.safetensors with its JSON header edited by ``edit(header)`` (data unchanged)."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8: 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def image(root: Path, name: str, edit) -> Path:
    """The tiny image with its JSON header edited by ``edit(meta)`` and the checksum redone (a hostile file)."""
    raw = TINY.read_bytes()
    magic, version, numerics, json_len, _, data_offset, total = FIXED_HEADER.unpack_from(raw)
    meta = json.loads(raw[FIXED_HEADER.size: FIXED_HEADER.size + json_len])
    edit(meta)
    text = json.dumps(meta).encode()
    head = FIXED_HEADER.pack(magic, version, numerics, len(text), 0, data_offset, total)
    body = head + text + bytes(data_offset - len(head) - len(text)) + raw[data_offset:-CHECKSUM_BYTES]
    path = root / name
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def text(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def config_json(value):
    return lambda d: (d / "config.json").write_text(json.dumps(value))


def tensor_field(key, value):
    return lambda d: safetensors_header(d, lambda h: h[EMBEDDING].__setitem__(key, value))


def generate(model, *more):
    return ["generate", "--model", model, "--prompt", "In the", "--max-new-tokens", 2, *more]


# name -> (arguments from (inputs folder, output folder), text the line must name)
CASES = {
    # convert: the checkpoint directory
    "config.json not an object (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "cfg-list", config_json([1, 2])), o / "m.img"], "config.json"),
    "config.json not JSON":
        (lambda i, o: ["convert", checkpoint(i, "cfg-json", lambda d: (d / "config.json").write_text("{")),
                       o / "m.img"], "config.json"),
    "config.json negative size":
        (lambda i, o: ["convert", checkpoint(i, "cfg-neg", lambda d: config_json(
            {**json.loads((d / "config.json").read_text()), "hidden_size": -4})(d)), o / "m.img"], "hidden_size"),
    "config.json size not a number":
        (lambda i, o: ["convert", checkpoint(i, "cfg-str", lambda d: config_json(
            {**json.loads((d / "config.json").read_text()), "hidden_size": "x"})(d)), o / "m.img"], "hidden_size"),
    "config.json negative epsilon":
        (lambda i, o: ["convert", checkpoint(i, "cfg-eps", lambda d: config_json(
            {**json.loads((d / "config.json").read_text()), "rms_norm_eps": -1})(d)), o / "m.img"], "rms_norm_eps"),
    "safetensors header a list (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "st-list", lambda d: (d / "model.safetensors").write_bytes(
            struct.pack("<Q", 2) + b"[]")), o / "m.img"], "model.safetensors"),
    "safetensors entry not an object (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "st-entry", lambda d: safetensors_header(
            d, lambda h: h.__setitem__(EMBEDDING, 5))), o / "m.img"], EMBEDDING),
    "safetensors tensor without data_offsets (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "st-offsets", lambda d: safetensors_header(
            d, lambda h: h[EMBEDDING].pop("data_offsets"))), o / "m.img"], EMBEDDING),
    "safetensors shape disagrees with the data":
        (lambda i, o: ["convert", checkpoint(i, "st-shape", tensor_field("shape", [3, 3])), o / "m.img"], EMBEDDING),
    "safetensors negative offset":
        (lambda i, o: ["convert", checkpoint(i, "st-negative", tensor_field("data_offsets", [-8, 0])),
                       o / "m.img"], EMBEDDING),
    "safetensors shape not a list (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "st-shape-str", tensor_field("shape", "ab")), o / "m.img"],
         EMBEDDING),
    "safetensors empty file":
        (lambda i, o: ["convert", checkpoint(i, "st-empty", lambda d: (d / "model.safetensors").write_bytes(b"")),
                       o / "m.img"], "model.safetensors"),
    "index.json without weight_map (was a traceback)":
        (lambda i, o: ["convert", checkpoint(i, "index", lambda d: (d / "model.safetensors.index.json")
                                             .write_text("[]")), o / "m.img"], "model.safetensors.index.json"),
    "tokenizer.json not a tokenizer (was written into the image)":
        (lambda i, o: ["convert", checkpoint(i, "tok", lambda d: (d / "tokenizer.json").write_text("not json")),
                       o / "m.img"], "tokenizer.json"),
    "checkpoint is a file":
        (lambda i, o: ["convert", TINY, o / "m.img"], "CHECKPOINT_DIR"),
    "convert into a missing folder":
        (lambda i, o: ["convert", i / "ckpt", o / "missing" / "m.img"], "missing"),
    "convert onto a folder":
        (lambda i, o: ["convert", i / "ckpt", o], "OUT"),
    "rows per block not a multiple of 8":
        (lambda i, o: ["convert", i / "ckpt", o / "m.img", "--rows-per-block", 12], "--rows-per-block"),
    # info / --model: the weight image
    "image header lost a key (was a traceback)":
        (lambda i, o: ["info", image(i, "lost.img", lambda m: m.pop("regions"))], "regions"),
    "image header lost format_version (was a traceback after 1 line)":
        (lambda i, o: ["info", image(i, "lost-version.img", lambda m: m.pop("format_version"))], "format_version"),
    "image record past the stream (was a traceback)":
        (lambda i, o: generate(image(i, "offset.img", lambda m: m["records"][1].__setitem__("offset", 10**9))),
         "model.layers.0.attn.in"),
    "image record without its matrices (was a traceback)":
        (lambda i, o: generate(image(i, "consumers.img", lambda m: m["records"][1].__setitem__(
            "consumers", [{"name": 1}]))), "model.layers.0.attn.in"),
    "image tokenizer cut short (was a traceback)":
        (lambda i, o: generate(image(i, "tok.img", lambda m: m["tokenizer"].__setitem__("size", 3))),
         "tokenizer.json"),
    "image bos token outside the vocabulary":
        (lambda i, o: generate(image(i, "bos.img", lambda m: m["config"].__setitem__("bos_token_id", 10**6))),
         "bos_token_id"),
    "image empty":
        (lambda i, o: ["info", text(i, "empty.img", b"")], "empty.img"),
    "image is a folder":
        (lambda i, o: generate(i), "--model"),
    # option values
    "temperature nan (was a traceback)":
        (lambda i, o: generate(TINY, "--temperature", "nan"), "--temperature"),
    "temperature negative":
        (lambda i, o: generate(TINY, "--temperature", -1), "--temperature"),
    "seed negative (was a traceback)":
        (lambda i, o: generate(TINY, "--seed", -1, "--temperature", 1), "--seed"),
    "max-new-tokens negative":
        (lambda i, o: generate(TINY, "--max-new-tokens", -1), "--max-new-tokens"),
    "empty prompt":
        (lambda i, o: ["generate", "--model", TINY, "--prompt", "  "], "--prompt"),
    "bitstream with the golden backend":
        (lambda i, o: generate(TINY, "--bitstream", "x.bit"), "--bitstream"),
    "token id out of range":
        (lambda i, o: ["logits", "--model", TINY, "--ids", "1 -2", "--out", o / "l.npy"], "token id -2"),
    "token ids not integers":
        (lambda i, o: ["logits", "--model", TINY, "--ids", "1 2.5", "--out", o / "l.npy"], "--ids"),
    # outputs
    "logits into a missing folder (was a traceback)":
        (lambda i, o: ["logits", "--model", TINY, "--ids", "1 2", "--out", o / "missing" / "l.npy"], "--out"),
    "logits onto a folder":
        (lambda i, o: ["logits", "--model", TINY, "--ids", "1 2", "--out", o], "--out"),
    "bench --json into a missing folder (was a traceback after the run)":
        (lambda i, o: ["bench", "--model", TINY, "--tokens", 2, "--json", o / "missing" / "b.json"], "--json"),
    "fidelity --json into a missing folder":
        (lambda i, o: ["fidelity", "--model", TINY, "--json", o / "missing" / "f.json"], "--json"),
    "synth-units --json onto a folder":
        (lambda i, o: ["synth-units", "rsqrt", "--json", o], "--json"),
    # texts
    "eval text empty":
        (lambda i, o: ["eval", "--model", TINY, "--text-file", text(i, "empty.txt", b"")], "--text-file"),
    "eval text binary":
        (lambda i, o: ["eval", "--model", TINY, "--text-file", text(i, "binary.txt", b"\x00\x01\xff")],
         "binary.txt"),
    "eval text not UTF-8":
        (lambda i, o: ["eval", "--model", TINY, "--text-file", text(i, "latin1.txt", "caf\xe9".encode("latin-1"))],
         "latin1.txt"),
    "eval text white space only":
        (lambda i, o: ["eval", "--model", TINY, "--text-file", text(i, "space.txt", b" \n\t\n")], "space.txt"),
    "eval text is a folder":
        (lambda i, o: ["eval", "--model", TINY, "--text-file", i], "--text-file"),
    "fidelity-budget text empty":
        (lambda i, o: ["fidelity-budget", "--model", TINY, "--text-file", text(i, "empty.txt", b"")], "--text-file"),
    "fidelity --update-evaluation without evaluation.json":
        (lambda i, o: ["fidelity", "--model", TINY, "--update-evaluation"], "evaluation.json"),
    # build and benchmark options
    "synth unknown board":
        (lambda i, o: ["synth", "--board", "zcu104"], "--board"),
    "synth-units unknown unit":
        (lambda i, o: ["synth-units", "no_such_unit"], "no_such_unit"),
    "bench-accel unknown configuration":
        (lambda i, o: ["bench-accel", "--configs", "pynq-z2,zcu104", "--out", o], "--configs"),
    "bench-golden no layers":
        (lambda i, o: ["bench-golden", "--layers", 0], "--layers"),
    "unknown command":
        (lambda i, o: ["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, inputs, tmp_path, monkeypatch):
    build, named = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    args = [str(a) for a in build(inputs, out)]
    r = CliRunner().invoke(main, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    assert named in lines[0], lines[0]
    assert sorted(p.name for p in out.rglob("*")) == [], "left behind"
