"""The bundled trained model: its three-level fidelity on the held-out text.

1. float golden vs the training framework's own float32 forward (PyTorch,
   logits stored in models/kjv/reference_logits.npz by train/);
2. integer golden vs float golden: perplexity within 1 %, greedy next-token
   agreement over 2,048 held-out positions.

Measured (2026-11-23): (1) identical argmax at all 128 positions, max error
1.6e-2 of max|logit|, <= 1e-4 only over the first ~20 positions, then a drift
to a median of 7.5e-3 that is not yet explained (issue 3 stays open on it);
(2) perplexity 30.108 float vs 30.099 integer (-0.03 %), greedy agreement
98.93 %: the 99 % target is not met yet. The assertions below guard these
measured values against regressions; they are not the issue's targets.
"""
import numpy as np
import pytest

from mmfree.host.cli import DEFAULT_MODEL, perplexities
from mmfree.models.golden_float import FloatModel
from mmfree.models.weight_image import WeightImage

from helpers import REPO

KJV = REPO / "models" / "kjv"
POSITIONS = 2048


@pytest.fixture(scope="module")
def image():
    return WeightImage.load(KJV / "kjv.img")


def test_bundled_model_is_the_default():
    assert DEFAULT_MODEL == KJV / "kjv.img"


def test_float_golden_matches_pytorch(image):
    ref = np.load(KJV / "reference_logits.npz")
    got = FloatModel(image).forward(ref["ids"])
    rel = np.abs(got - ref["logits"]).max(axis=1) / np.abs(ref["logits"]).max(axis=1)
    assert np.all(rel[:16] <= 1e-4)
    assert rel.max() <= 2e-2
    assert np.array_equal(got.argmax(axis=1), ref["logits"].argmax(axis=1))


@pytest.fixture(scope="module")
def heldout_figures(image):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(image.tokenizer_json().decode())
    text = (KJV / "heldout.txt").read_text()
    ids = [image.config.bos_token_id] + tok.encode(text, add_special_tokens=False).ids
    return perplexities(image, ids[: POSITIONS + 1], progress=False)


def test_integer_perplexity_within_one_percent(heldout_figures):
    r = heldout_figures
    assert r["tokens"] == POSITIONS
    assert abs(r["ppl_integer"] / r["ppl_float"] - 1) <= 0.01


def test_integer_greedy_agreement(heldout_figures):
    assert heldout_figures["greedy_agreement"] >= 0.985     # measured 0.9893; target 0.99 not yet met
