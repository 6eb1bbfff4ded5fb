"""Shared test fixtures' builders (small synthetic models and paths)."""
from pathlib import Path

from mmfree.models.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "spec" / "vectors"
SMALL = ModelConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, intermediate_size=256)
