"""Shared test builders and paths (small synthetic models, the bundled images, golden runs).

Plain functions and constants that test modules import (``from helpers import REPO``);
the pytest fixtures built from them live in ``tests/conftest.py``.
"""
from pathlib import Path

import numpy as np

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
