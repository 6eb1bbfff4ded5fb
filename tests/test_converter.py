"""Converting released-format checkpoints (synthetic, with the real names, shapes and bf16 dtype)."""
import dataclasses
import json
import math

import numpy as np
import pytest

from mmfree.models import checkpoint as ckpt
from mmfree.models.config import ModelConfig
from mmfree.models.synthetic import (RELEASED_SHAPES, hf_config, iter_random_tensors, parse_size, random_tensors,
                                     released_config, write_checkpoint)
from mmfree.models.weight_image import WeightImage, expected_tensors

from helpers import SMALL, VECTORS, reference_ternary


def test_convert_reproduces_runtime_quantization(tmp_path):
    """Codes and scales as the reference computes them at run time (helpers.reference_ternary: the
    exact mean, the float32 product, ties to even), from the checkpoint's bf16 latent weights."""
    tensors = random_tensors(SMALL, 11)
    write_checkpoint(tmp_path, SMALL, tensors)
    img = WeightImage.from_bytes(ckpt.convert(tmp_path))
    for name in ["model.layers.1.attn.o_proj", "model.layers.0.mlp.gate_proj", "lm_head"]:
        codes, m = reference_ternary(tensors[f"{name}.weight"])
        assert img.host_tensor(f"{name}.weight_scale")[0] == m            # scale over the whole tensor
        assert np.array_equal(img.codes(name), codes)


def test_gate_proj_halves_share_one_scale(tmp_path):
    tensors = random_tensors(SMALL, 2)
    tensors["model.layers.0.mlp.gate_proj.weight"][: SMALL.I] *= 4     # gate half larger than up half
    write_checkpoint(tmp_path, SMALL, tensors)
    img = WeightImage.from_bytes(ckpt.convert(tmp_path))
    w = tensors["model.layers.0.mlp.gate_proj.weight"]
    codes, m = reference_ternary(w)
    assert img.host_tensor("model.layers.0.mlp.gate_proj.weight_scale")[0] == m
    assert np.array_equal(img.codes("model.layers.0.mlp.gate_proj"), codes)
    # one scale per half would differ by about 4x
    halves = [reference_ternary(w[: SMALL.I])[1], reference_ternary(w[SMALL.I:])[1]]
    assert halves[0] > 3 * m / 2 and halves[1] < 2 * m / 3


def test_embedding_kept_bit_exact(tmp_path):
    write_checkpoint(tmp_path, SMALL, seed=3)
    _, raw, _ = ckpt.load_checkpoint(tmp_path)
    img = WeightImage.from_bytes(ckpt.convert(tmp_path))
    assert np.array_equal(img.embedding_bf16(), raw["model.embeddings.weight"][1])


def test_sharded_checkpoint(tmp_path):
    tensors = random_tensors(SMALL, 4)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for f, ns in halves.items():
        ckpt.write_safetensors(tmp_path / f, {n: tensors[n] for n in ns})
        weight_map.update({n: f for n in ns})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_checkpoint(tmp_path / "single", SMALL, tensors)
    (tmp_path / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    a = WeightImage.from_bytes(ckpt.convert(tmp_path))
    b = WeightImage.from_bytes(ckpt.convert(tmp_path / "single"))
    assert bytes(a.stream) == bytes(b.stream)


def test_wrong_shape(tmp_path):
    tensors = random_tensors(SMALL, 1)
    tensors["model.layers.1.attn.g_proj.weight"] = tensors["model.layers.1.attn.g_proj.weight"][:, :32]
    write_checkpoint(tmp_path, SMALL, tensors)
    with pytest.raises(ckpt.CheckpointError, match=r"model.layers.1.attn.g_proj.weight has shape \(64, 32\)"):
        ckpt.convert(tmp_path)


def test_missing_tensor(tmp_path):
    tensors = random_tensors(SMALL, 1)
    del tensors["lm_head.norm.weight"]
    write_checkpoint(tmp_path, SMALL, tensors)
    with pytest.raises(ckpt.CheckpointError, match="lacks tensor lm_head.norm.weight"):
        ckpt.convert(tmp_path)


def test_unknown_architecture(tmp_path):
    write_checkpoint(tmp_path, SMALL, seed=1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="unknown architecture: model_type 'llama'"):
        ckpt.convert(tmp_path)


def test_unsupported_option(tmp_path):
    write_checkpoint(tmp_path, SMALL, seed=1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["use_short_conv"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="use_short_conv=True is not supported"):
        ckpt.convert(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no config.json"):
        ckpt.convert(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="unknown architecture"):
        ckpt.convert(tmp_path)


def test_truncated_safetensors(tmp_path):
    write_checkpoint(tmp_path, SMALL, seed=1)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ckpt.CheckpointError, match="runs past the end"):
        ckpt.convert(tmp_path)


def test_intermediate_size_derived_from_hidden():
    cfg, _, _ = ckpt.load_checkpoint(VECTORS / "small-d128-l3" / "checkpoint")
    assert cfg.I == 256 * -(-int(128 * 4 * 2 / 3) // 256)


@pytest.mark.parametrize("name", list(RELEASED_SHAPES))
def test_released_shapes_derive_intermediate_size(name):
    """The released config.json files leave intermediate_size null (hidden_ratio 4); from_hf's
    derivation gives the table's 2816 / 5632 / 6912 (spec/model.md §5)."""
    cfg = RELEASED_SHAPES[name]
    hf = {**hf_config(cfg), "intermediate_size": None}
    assert ModelConfig.from_hf(hf) == cfg
    assert released_config(name, layers=2) == dataclasses.replace(cfg, num_hidden_layers=2)
    assert (cfg.L, cfg.D, cfg.I) == {"370M": (24, 1024, 2816), "1.3B": (24, 2048, 5632),
                                     "2.7B": (32, 2560, 6912)}[name]


def test_unknown_released_shape():
    with pytest.raises(KeyError, match="unknown shape '7B'; released shapes: 370M, 1.3B, 2.7B"):
        released_config("7B")


@pytest.mark.parametrize("size, n", [(1000, 1000), ("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("500MB", 5 * 10**8),
                                     ("1.5kb", 1500), ("64", 64)])
def test_parse_size(size, n):
    assert parse_size(size) == n


@pytest.mark.parametrize("size", ["2 parsecs", "", 0, "-1GB"])
def test_parse_size_rejects(size):
    with pytest.raises(ValueError):
        parse_size(size)


def test_sharded_synthetic_checkpoint_converts_like_one_file(tmp_path):
    """write_checkpoint's shards (HF names, index with total_size) convert to the same image bytes."""
    write_checkpoint(tmp_path / "one" / "ckpt", SMALL, seed=6)
    d = write_checkpoint(tmp_path / "sharded" / "ckpt", SMALL, seed=6, max_shard_size="70KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in d.glob("*.safetensors")) == files
    assert list(index["weight_map"]) == list(expected_tensors(SMALL))
    assert index["metadata"]["total_size"] == sum(2 * math.prod(s) for s in expected_tensors(SMALL).values())
    sizes = {n: 2 * math.prod(s) for n, s in expected_tensors(SMALL).items()}
    for f in files:   # every shard within the limit (no single tensor of SMALL is larger)
        assert sum(sizes[n] for n, g in index["weight_map"].items() if g == f) <= 70_000
    assert ckpt.convert(d) == ckpt.convert(tmp_path / "one" / "ckpt")
    assert not (d / "model.safetensors").exists()


def test_checkpoint_within_one_shard_stays_one_file(tmp_path):
    write_checkpoint(tmp_path, SMALL, seed=6, max_shard_size="1GB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_random_tensors_come_one_at_a_time_with_the_same_values():
    whole = random_tensors(SMALL, 8)
    for name, t in iter_random_tensors(SMALL, 8):
        assert np.array_equal(t, whole[name])


def test_synthetic_command_writes_a_sharded_checkpoint(tmp_path, monkeypatch):
    """``python -m mmfree.models.synthetic --shape S [--layers N] [--max-shard-size B] OUT`` (a tiny shape
    stands in for the released ones, which take minutes)."""
    from mmfree.models import synthetic

    monkeypatch.setitem(synthetic.RELEASED_SHAPES, "tiny", SMALL)
    d = synthetic.main(["--shape", "tiny", "--layers", "1", "--max-shard-size", "50KB", str(tmp_path)])
    assert len(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    cfg, _, _ = ckpt.load_checkpoint(d)
    assert cfg == dataclasses.replace(SMALL, num_hidden_layers=1)
    WeightImage.from_bytes(ckpt.convert(d))
    with pytest.raises(SystemExit):
        synthetic.main(["--layers", "1", str(tmp_path)])        # --layers needs --shape


def test_convert_widening_tensor_by_tensor_gives_the_eager_bytes(tmp_path):
    """convert hands build_image a mapping that widens one bf16 tensor at a time; the image is the one
    an all-float32 dict gives."""
    from mmfree.models.weight_image import build_image

    tensors = random_tensors(SMALL, 12)
    d = write_checkpoint(tmp_path / "ckpt", SMALL, tensors, max_shard_size="100KB")
    _, raw, _ = ckpt.load_checkpoint(d)
    eager = build_image(SMALL, tensors, embedding_bf16=raw["model.embeddings.weight"][1], source={"checkpoint": "ckpt"})
    assert ckpt.convert(d) == eager
