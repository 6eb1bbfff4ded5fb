"""Backends that compute one token's logits: the same interface for the golden
models now, and for the simulated and the real accelerator.

A backend is reset to the zero state, then fed one token id per ``step``;
each step returns the next-token logits as float64 (V,). Backends are chosen
by name with :func:`open_backend`.
"""
from __future__ import annotations

import numpy as np

from mmfree.models import numerics as nx
from mmfree.models.weight_image import WeightImage


class BackendError(RuntimeError):
    """A backend that cannot run (one-line message)."""


class _GoldenModelBackend:
    """A backend over one of the golden models (which one: the subclass's ``model``)."""

    name = ""

    def __init__(self, image: WeightImage):
        self.model = self.make_model(image)
        self.reset()

    def reset(self) -> None:
        self.state = self.model.initial_state()

    def step(self, token: int) -> np.ndarray:
        logits, self.state = self.model.step(token, self.state)
        return self.to_float(logits)


class GoldenBackend(_GoldenModelBackend):
    """The integer golden model: the accelerator's arithmetic, bit for bit."""

    name = "golden"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_int import IntegerModel

        return IntegerModel(image)

    @staticmethod
    def to_float(logits):
        return nx.act_to_float(logits)


class FloatBackend(_GoldenModelBackend):
    """The float32 golden model (the reference's arithmetic)."""

    name = "float"

    @staticmethod
    def make_model(image):
        from mmfree.models.golden_float import FloatModel

        return FloatModel(image)

    @staticmethod
    def to_float(logits):
        return logits.astype(np.float64)


BACKENDS = {"golden": GoldenBackend, "float": FloatBackend}


def open_backend(name: str, image: WeightImage):
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[name](image)
