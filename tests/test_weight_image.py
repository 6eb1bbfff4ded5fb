"""The weight image: round trip, layout, and refusal of damaged files."""
import struct

import numpy as np
import pytest

from mmfree.models import numerics as nx
from mmfree.models.synthetic import random_tensors
from mmfree.models.weight_image import (FIXED_HEADER, ImageError, WeightImage, build_image, pack_matrix,
                                        stream_plan, unpack_matrix)

from helpers import SMALL


@pytest.fixture(scope="module")
def image_bytes():
    return build_image(SMALL, random_tensors(SMALL, 5), tokenizer_json=b'{"fake": true}', rows_per_block=16)


def test_roundtrip_codes_scales_gains(image_bytes):
    tensors = random_tensors(SMALL, 5)
    img = WeightImage.from_bytes(image_bytes)
    assert img.checksum_ok and img.config == SMALL and img.rows_per_block == 16
    for name in ["model.layers.0.attn.f_proj", "model.layers.1.mlp.down_proj", "lm_head"]:
        codes, m = nx.ternarize(tensors[f"{name}.weight"])
        assert np.array_equal(img.codes(name), codes)
        assert img.host_tensor(f"{name}.weight_scale")[0] == m
        assert np.array_equal(img.host_tensor(f"{name}.norm.weight"), tensors[f"{name}.norm.weight"])
    g, frac = img.folded_gain("model.layers.0.attn.g_proj")
    want = tensors["model.layers.0.attn_norm.weight"].astype(np.float64) * tensors["model.layers.0.attn.g_proj.norm.weight"]
    assert np.abs(g / 2.0**frac - want).max() <= 2.0**-(frac + 1)     # rounded to nearest
    assert np.array_equal(img.embedding_bf16(7), nx.float32_to_bf16(tensors["model.embeddings.weight"][7]))
    assert img.tokenizer_json() == b'{"fake": true}'


def test_stream_order_is_the_plan(image_bytes):
    img = WeightImage.from_bytes(image_bytes)
    names = [r["name"] for r in img.records()]
    assert names == [s.name for s in stream_plan(SMALL)]
    offsets = [r["offset"] for r in img.records()]
    assert offsets == sorted(offsets) and all(o % 64 == 0 for o in offsets)
    assert offsets[-1] + img.records()[-1]["size"] == img.meta["regions"]["stream"]["size"]
    hdr = img.record_header("model.layers.0.attn.in")
    assert hdr[1] == SMALL.D and hdr[2] == 3


@pytest.mark.parametrize("n,k,r", [(64, 64, 64), (70, 33, 16), (5, 5, 8), (128, 256, 32)])
def test_pack_matrix_roundtrip_and_block_order(n, k, r):
    codes = np.random.default_rng(n + k).integers(-1, 2, (n, k)).astype(np.int8)
    data = pack_matrix(codes, r)
    assert data.size == -(-n // r) * r * -(-k // 5)
    assert np.array_equal(unpack_matrix(data, n, k, r), codes)
    # byte j of the first beat group is row j's inputs 0..4
    first = nx.unpack_trits(data[:r, None])
    assert np.array_equal(first[: min(r, n), : min(5, k)], codes[:r, :5])


def test_bits_per_weight_close_to_1_6(image_bytes):
    stats = WeightImage.from_bytes(image_bytes).matrix_stats()
    assert 1.6 <= stats["bits_per_weight"] < 1.63    # K = 64 pads to 65


def test_refuses_bad_magic(image_bytes):
    with pytest.raises(ImageError, match="not an mmfree weight image"):
        WeightImage.from_bytes(b"NOTMAGIC" + image_bytes[8:])


def test_refuses_wrong_version(image_bytes):
    bad = image_bytes[:8] + struct.pack("<I", 99) + image_bytes[12:]
    with pytest.raises(ImageError, match="format version 99"):
        WeightImage.from_bytes(bad)


def test_refuses_wrong_numerics_version(image_bytes):
    bad = image_bytes[:12] + struct.pack("<I", nx.NUMERICS_VERSION + 1) + image_bytes[16:]
    with pytest.raises(ImageError, match="numerics version"):
        WeightImage.from_bytes(bad)


def test_refuses_truncated(image_bytes):
    with pytest.raises(ImageError, match="truncated"):
        WeightImage.from_bytes(image_bytes[:-100])
    with pytest.raises(ImageError, match="truncated"):
        WeightImage.from_bytes(image_bytes[:20])


def test_refuses_corrupted(image_bytes):
    bad = bytearray(image_bytes)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(ImageError, match="checksum mismatch"):
        WeightImage.from_bytes(bytes(bad))
    assert not WeightImage.from_bytes(bytes(bad), verify_checksum=False).verify()


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such weight image"):
        WeightImage.load(tmp_path / "nope.img")


def test_fixed_header_is_64_bytes():
    assert FIXED_HEADER.size == 64
