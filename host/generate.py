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
    """Feed the prompt, then yield up to ``max_new_tokens`` sampled ids (stops after eos).

    Each token is fed with the backend call that returns only what is needed
    (:mod:`mmfree.host.backends`): prompt tokens but the last with ``advance``
    (no output); then, greedy (temperature 0), ``step_argmax``; sampling,
    ``step`` (the logits). The last generated token is not fed back: nothing
    would read its output. A backend without ``advance``/``step_argmax``
    (a wrapper that records logits) is fed with ``step``.
    """
    if not prompt_ids:
        raise ValueError("empty prompt")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    rng = np.random.default_rng(seed)
    backend.reset()
    advance = getattr(backend, "advance", None) or backend.step
    for t in prompt_ids[:-1]:
        advance(int(t))
    token = int(prompt_ids[-1])
    if max_new_tokens <= 0:
        advance(token)
        return
    step_argmax = getattr(backend, "step_argmax", None)
    for _ in range(max_new_tokens):
        if temperature == 0 and step_argmax is not None:
            nxt = int(step_argmax(token))
        else:
            nxt = sample(backend.step(token), temperature, top_k, rng)
        yield nxt
        if eos_id is not None and nxt == eos_id:
            return
        token = nxt
