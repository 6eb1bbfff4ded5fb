"""Random MMfreeLM checkpoints with the released names, shapes and dtype.

Used by tests, benchmarks and the numerics study. The distributions follow
the reference vectors' checkpoints (spec/vectors): embeddings N(0, 0.02),
latent weights N(0, 0.05), gains N(1, 0.19) kept positive, lower-bound
parameters N(0, 1). Values are rounded to bf16 like a real checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import numerics as nx
from .config import ModelConfig
from .weight_image import expected_tensors

#: The released MMfreeLM-370M shape (spec/model.md §5).
SHAPE_370M = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816)


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 tensors (bf16-representable) for every checkpoint name of ``cfg``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(cfg).items():
        if name == "model.embeddings.weight":
            t = rng.normal(0.0, 0.02, shape)
        elif name == "model.lower_bounds":
            t = rng.normal(0.0, 1.0, shape)
        elif name.endswith("norm.weight"):
            t = np.clip(rng.normal(1.0, 0.19, shape), 0.05, None)
        else:
            t = rng.normal(0.0, 0.05, shape)
        out[name] = nx.bf16_to_float32(nx.float32_to_bf16(t.astype(np.float32)))
    return out


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


def write_checkpoint(directory, cfg: ModelConfig, tensors: dict[str, np.ndarray] | None = None,
                     seed: int = 0, tokenizer_json: bytes | None = None) -> Path:
    """Write config.json + bf16 model.safetensors (+ tokenizer.json) in the released format."""
    from .checkpoint import write_safetensors

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    write_safetensors(d / "model.safetensors", tensors if tensors is not None else random_tensors(cfg, seed))
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


if __name__ == "__main__":
    import sys

    print(build_tiny_random(sys.argv[1] if len(sys.argv) > 1 else "models/tiny-random"))
