"""Random MMfreeLM checkpoints with the released names, shapes and dtype.

Used by tests, benchmarks and the numerics study. The distributions follow
the reference vectors' checkpoints (spec/vectors): embeddings N(0, 0.02),
latent weights N(0, 0.05), gains N(1, 0.19) kept positive, lower-bound
parameters N(0, 1). Values are rounded to bf16 like a real checkpoint.

    python -m mmfree.models.synthetic OUT_DIR                      # the bundled tiny-random image
    python -m mmfree.models.synthetic --shape 2.7B [--layers N] [--seed S] [--max-shard-size 2GB] OUT_DIR
                                                                   # a released-shape checkpoint directory
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from . import numerics as nx
from .config import ModelConfig
from .weight_image import expected_tensors

#: The released MMfreeLM shapes (spec/model.md §5; vocab 32000, eps 1e-6, bos 1, eos 2). The released
#: config.json files leave intermediate_size null with hidden_ratio 4; these are the derived sizes
#: 256 * ceil(floor(D * 4 * 2/3) / 256) that :meth:`ModelConfig.from_hf` computes (tests/test_converter.py).
RELEASED_SHAPES: dict[str, ModelConfig] = {
    "370M": ModelConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, intermediate_size=2816),
    "1.3B": ModelConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, intermediate_size=5632),
    "2.7B": ModelConfig(vocab_size=32000, hidden_size=2560, num_hidden_layers=32, intermediate_size=6912),
}

#: The 370M shape's sizes without the layer count, for ``ModelConfig(num_hidden_layers=L, **SHAPE_370M)``.
SHAPE_370M = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816)


def released_config(name: str, layers: int | None = None) -> ModelConfig:
    """The released shape ``name`` (a key of :data:`RELEASED_SHAPES`), with ``layers`` layers if given.

    Raises ``KeyError`` naming the known shapes for an unknown name."""
    if name not in RELEASED_SHAPES:
        raise KeyError(f"unknown shape {name!r}; released shapes: {', '.join(RELEASED_SHAPES)}")
    cfg = RELEASED_SHAPES[name]
    return cfg if layers is None else ModelConfig.from_dict({**cfg.to_dict(), "num_hidden_layers": layers})


def iter_random_tensors(cfg: ModelConfig, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 tensor) for every checkpoint name of ``cfg``, one at a time, in
    :func:`expected_tensors` order; the same values as :func:`random_tensors` (one generator stream)."""
    rng = np.random.default_rng(seed)
    for name, shape in expected_tensors(cfg).items():
        if name == "model.embeddings.weight":
            t = rng.normal(0.0, 0.02, shape)
        elif name == "model.lower_bounds":
            t = rng.normal(0.0, 1.0, shape)
        elif name.endswith("norm.weight"):
            t = np.clip(rng.normal(1.0, 0.19, shape), 0.05, None)
        else:
            t = rng.normal(0.0, 0.05, shape)
        yield name, nx.bf16_to_float32(nx.float32_to_bf16(t.astype(np.float32)))


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 tensors (bf16-representable) for every checkpoint name of ``cfg``."""
    return dict(iter_random_tensors(cfg, seed))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes of a shard size: an int, or a HuggingFace-style string (``"2GB"`` = 2e9, ``"2GiB"`` = 2**31,
    ``"500MB"``, ``"1000"``). Raises ``ValueError`` for anything else or a size below 1."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise ValueError(f"not a size: {size!r} (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)")
        unit = (m.group(2) or "B").upper()
        base = 1024 if "I" in unit else 1000
        n = int(float(m.group(1)) * base ** "BKMGT".index(unit[0]))
    if n < 1:
        raise ValueError(f"shard size must be at least 1 byte, got {size!r}")
    return n


def hf_config(cfg: ModelConfig) -> dict:
    """A released-style config.json for ``cfg``."""
    return {
        "model_type": "hgrn_bit", "architectures": ["HGRNBitForCausalLM"],
        "vocab_size": cfg.V, "hidden_size": cfg.D, "num_hidden_layers": cfg.L,
        "intermediate_size": cfg.I, "hidden_ratio": 4, "num_heads": 1, "expand_ratio": 1,
        "rms_norm_eps": cfg.rms_norm_eps, "use_lower_bound": True, "use_short_conv": False,
        "attn_mode": "fused_recurrent", "tie_word_embeddings": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "torch_dtype": "bfloat16",
    }


def shard_plan(shapes: dict[str, tuple[int, ...]], max_shard_bytes: int, itemsize: int = 2) -> list[list[str]]:
    """Tensor names per shard, in order, as HuggingFace's ``save_pretrained`` splits them: a tensor
    starts a new shard when it would take a non-empty one past ``max_shard_bytes`` (a tensor larger
    than the limit gets a shard of its own)."""
    shards, size = [[]], 0
    for name, shape in shapes.items():
        n = itemsize * math.prod(shape)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def write_checkpoint(directory, cfg: ModelConfig, tensors: dict[str, np.ndarray] | None = None,
                     seed: int = 0, tokenizer_json: bytes | None = None,
                     max_shard_size: int | str | None = None) -> Path:
    """Write config.json + bf16 safetensors (+ tokenizer.json) in the released format.

    Without ``max_shard_size`` the tensors go to one ``model.safetensors``. With it (bytes, or
    ``"2GB"``-style, :func:`parse_size`) they go to ``model-0000i-of-0000N.safetensors`` shards of at
    most that size plus ``model.safetensors.index.json`` ({"metadata": {"total_size"}, "weight_map"}),
    as the released checkpoints are stored; a checkpoint that fits one shard stays one
    ``model.safetensors``. Random tensors (``tensors`` None) are generated one at a time while the
    files are written, so a full-size checkpoint never needs all of them in memory.
    """
    from .checkpoint import write_safetensors_stream

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    if tensors is None:
        shapes = expected_tensors(cfg)
        arrays: Iterable[np.ndarray] = (t for _, t in iter_random_tensors(cfg, seed))
    else:
        shapes = {n: tuple(np.shape(t)) for n, t in tensors.items()}
        arrays = tensors.values()
    arrays = iter(arrays)
    shards = [list(shapes)] if max_shard_size is None else shard_plan(shapes, parse_size(max_shard_size))
    if len(shards) == 1:
        write_safetensors_stream(d / "model.safetensors", shapes, arrays)
    else:
        weight_map, total = {}, 0
        for i, names in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            total += write_safetensors_stream(d / file, {n: shapes[n] for n in names}, arrays)
            weight_map.update(dict.fromkeys(names, file))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer_json is not None:
        (d / "tokenizer.json").write_bytes(tokenizer_json)
    return d


def byte_level_tokenizer(texts: list[str], vocab_size: int) -> bytes:
    """A byte-level BPE tokenizer.json trained on ``texts`` (ids 0, 1, 2 = <unk>, <s>, </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok.to_str().encode()


TINY_RANDOM = ModelConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, intermediate_size=256)


def build_tiny_random(out_dir, seed: int = 0) -> Path:
    """The bundled test model: random weights of a tiny shape with a byte-level tokenizer.

    ``python -m mmfree.models.synthetic OUT_DIR`` writes ``OUT_DIR/tiny-random.img``.
    """
    from .weight_image import build_image

    corpus = [Path(__file__).read_text()] * 4
    tok = byte_level_tokenizer(corpus, TINY_RANDOM.V)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = build_image(TINY_RANDOM, random_tensors(TINY_RANDOM, seed), tokenizer_json=tok,
                        source={"checkpoint": f"synthetic tiny-random seed {seed}"})
    path = out / "tiny-random.img"
    path.write_bytes(image)
    return path


def main(argv: list[str] | None = None) -> Path:
    """``python -m mmfree.models.synthetic``: the tiny-random image, or with ``--shape`` a checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmfree.models.synthetic", description=main.__doc__)
    parser.add_argument("out_dir", nargs="?", default="models/tiny-random",
                        help="where tiny-random.img, or with --shape the checkpoint's files, go")
    parser.add_argument("--shape", choices=list(RELEASED_SHAPES),
                        help="write a random checkpoint directory of this released shape instead")
    parser.add_argument("--layers", type=int, help="layers (default: the released count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", "--shard-bytes", default="2GB",
                        help="largest shard, bytes or HuggingFace-style (2GB, 500MB, 1GiB) [2GB]")
    args = parser.parse_args(argv)
    if args.shape is None:
        if args.layers is not None:
            parser.error("--layers needs --shape")
        return build_tiny_random(args.out_dir, args.seed)
    try:
        cfg = released_config(args.shape, args.layers)
        parse_size(args.max_shard_size)
    except ValueError as e:  # ConfigError (layers < 1) and a bad size
        parser.error(str(e))
    return write_checkpoint(args.out_dir, cfg, seed=args.seed, max_shard_size=args.max_shard_size)


if __name__ == "__main__":
    print(main())
