"""Shared test builders and paths: small synthetic models, the bundled images, golden runs, and
the reference's weight ternarisation computed on its own.

Plain functions and constants that test modules import (``from helpers import REPO``);
the pytest fixtures built from them live in ``tests/conftest.py``.
"""
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmfree.models import numerics as nx

from mmfree.models.synthetic import TINY_RANDOM

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "spec" / "vectors"
#: The bundled weight images: the test model of random weights, and the trained default.
TINY_IMAGE = REPO / "models" / "tiny-random" / "tiny-random.img"
KJV_IMAGE = REPO / "models" / "kjv" / "kjv.img"
#: The shape of the tiny test model: small synthetic checkpoints and images are built in it.
SMALL = TINY_RANDOM


class Recording:
    """A backend that keeps every step's logits."""

    def __init__(self, backend):
        self.backend, self.logits = backend, []

    def reset(self):
        self.backend.reset()

    def step(self, token):
        self.logits.append(self.backend.step(token))
        return self.logits[-1]


def golden_steps(image, ids) -> list[np.ndarray]:
    """The integer golden model's ACT logits (int64) for ``ids`` fed one at a time from the zero state."""
    from mmfree.models.golden_int import IntegerModel

    model = IntegerModel(image)
    state = model.initial_state()
    out = []
    for t in ids:
        logits, state = model.step(int(t), state)
        out.append(logits)
    return out


# --------------------------------------------------------------------------
# The reference's weight ternarisation, computed independently of models/numerics.py:
# m = max(mean|W|, 1e-5) in float32, T = clamp(round_half_to_even(W * (1/m)), -1, 1) with the
# product and the reciprocal rounded to float32 (``(w * scale).round()``).
# --------------------------------------------------------------------------
def exact_sum_abs(w) -> Fraction:
    """The exact sum of |w| over float32 values: 24-bit mantissas summed per binade in int64."""
    mant, exp = np.frexp(np.abs(np.asarray(w, np.float32)).astype(np.float64).ravel())
    mant = (mant * 2.0**24).astype(np.int64)                   # exact: a float32 has 24 significant bits
    return sum((Fraction(int(mant[exp == e].sum())) * Fraction(2) ** int(e - 24) for e in np.unique(exp)),
               Fraction(0))


def float32_nearest(q: Fraction) -> np.float32:
    """``q`` (>= 0) rounded to float32, ties to even, decided exactly."""
    f = np.float32(float(q))
    candidates = (np.nextafter(f, np.float32(0)), f, np.nextafter(f, np.float32(np.inf)))
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - q), int(c.view(np.uint32)) & 1))


def reference_ternary(w):
    """(codes, m) of the reference, computed from the exact mean; codes by the tie rule spelt out."""
    w = np.asarray(w, np.float32)
    m = max(float32_nearest(exact_sum_abs(w) / w.size), np.float32(nx.WEIGHT_SCALE_FLOOR))
    p = w * (np.float32(1) / m)                                # float32 product, as torch computes it
    # round_half_to_even then clamp to [-1, 1]: |p| > 1/2 gives +-1; |p| == 1/2 is a tie that goes to 0 (even)
    return (np.sign(p) * (np.abs(p) > 0.5)).astype(np.int8), m
