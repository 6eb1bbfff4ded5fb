"""Token generation: sampling and the decode loop, independent of the backend."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Greedy (argmax, lowest id on ties) when temperature is 0, else softmax(logits/T) over the top k."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, np.float64) / temperature
    if 0 < top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(z.size, p=p))


def generate(backend, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, eos_id: int | None = None) -> Iterator[int]:
    """Feed the prompt, then yield up to ``max_new_tokens`` sampled ids (stops after eos)."""
    if not prompt_ids:
        raise ValueError("empty prompt")
    rng = np.random.default_rng(seed)
    backend.reset()
    logits = None
    for t in prompt_ids:
        logits = backend.step(int(t))
    for _ in range(max_new_tokens):
        nxt = sample(logits, temperature, top_k, rng)
        yield nxt
        if eos_id is not None and nxt == eos_id:
            return
        logits = backend.step(nxt)
