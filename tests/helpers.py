"""Shared test fixtures' builders (small synthetic models and paths)."""
from pathlib import Path

from mmfree.models.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "spec" / "vectors"
SMALL = ModelConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, intermediate_size=256)


class Recording:
    """A backend that keeps every step's logits."""

    def __init__(self, backend):
        self.backend, self.logits = backend, []

    def reset(self):
        self.backend.reset()

    def step(self, token):
        self.logits.append(self.backend.step(token))
        return self.logits[-1]
