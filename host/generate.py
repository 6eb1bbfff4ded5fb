"""Token generation: sampling and the decode loop over one or many sequences, independent of the backend."""
from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from .driver import Read


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


class OneSequence:
    """The sequence interface (:mod:`mmfree.host.backends`: ``streams``, ``clear``, ``decode``,
    ``prefill``) over an object that has only the one-sequence calls ``reset`` and ``step``, and
    optionally ``step_argmax`` and ``advance`` (a wrapper that records or counts them).
    One sequence, fed one token per call."""

    streams = 1
    prefill_tokens = 1

    def __init__(self, backend):
        self.backend = backend

    def clear(self, seq: int) -> None:
        self.backend.reset()

    def _feed(self, token: int, read: Read):
        if Read.LOGITS in read:
            return self.backend.step(token)
        if Read.ARGMAX in read and hasattr(self.backend, "step_argmax"):
            return int(self.backend.step_argmax(token))
        if Read.ARGMAX in read:
            return int(np.argmax(self.backend.step(token)))
        (getattr(self.backend, "advance", None) or self.backend.step)(token)
        return None

    def decode(self, tokens, read: Read) -> dict:
        return {seq: self._feed(int(t), read) for seq, t in tokens.items()}

    def prefill(self, seq: int, tokens, read: Read):
        for t in tokens[:-1]:
            self._feed(int(t), Read.NONE)
        return self._feed(int(tokens[-1]), read)


def sequences_of(backend):
    """``backend`` if it has the sequence interface, else :class:`OneSequence` around it."""
    return backend if hasattr(backend, "decode") else OneSequence(backend)


@dataclasses.dataclass
class _Request:
    index: int
    prompt: list[int]
    rng: np.random.Generator
    fed: int = 0                 # prompt tokens already in the state
    token: int | None = None     # the last sampled token, to be fed next
    produced: int = 0
    seq: int | None = None


def generate_many(backend, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                  top_k: int = 0, seed: int = 0, eos_id: int | None = None) -> Iterator[tuple[int, int]]:
    """Generate for every prompt at once; yields ``(prompt index, token id)`` as tokens are sampled.

    The backend holds ``streams`` sequences; prompts beyond that wait, in
    order, for a sequence to finish. Each weight pass is either a prefill
    (up to ``prefill_tokens`` prompt tokens of the earliest sequence still in
    its prompt; prompts go first, so the first token comes soonest) or one
    decode step of every sequence that is generating. A prompt's first new
    token comes from the prefill of its last prompt token; each later one
    from feeding the one before (the last is not fed back: nothing would
    read its output). Greedy (temperature 0) reads only the argmax, sampling
    the logits, each prompt with its own ``numpy`` generator seeded with
    ``seed``: so every prompt's tokens are those it gets alone.
    A sequence stops after ``max_new_tokens`` or after ``eos_id``.
    """
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty" if len(prompts) > 1 else "empty prompt")
    be = sequences_of(backend)
    read = Read.ARGMAX if temperature == 0 else Read.LOGITS
    waiting = deque(_Request(i, [int(t) for t in p], np.random.default_rng(seed)) for i, p in enumerate(prompts))
    free = list(range(be.streams))
    active: list[_Request] = []

    def took(req: _Request, out) -> Iterator[tuple[int, int]]:
        req.token = int(out) if read == Read.ARGMAX else sample(out, temperature, top_k, req.rng)
        req.produced += 1
        yield req.index, req.token
        if req.produced >= max_new_tokens or (eos_id is not None and req.token == eos_id):
            active.remove(req)
            free.append(req.seq)

    while waiting or active:
        while waiting and free:
            req = waiting.popleft()
            req.seq = free.pop(0)
            be.clear(req.seq)
            active.append(req)
        prefilling = next((r for r in active if r.fed < len(r.prompt)), None)
        if prefilling is not None:
            req = prefilling
            chunk = req.prompt[req.fed:req.fed + be.prefill_tokens]
            req.fed += len(chunk)
            last = req.fed == len(req.prompt)
            if last and max_new_tokens <= 0:
                be.prefill(req.seq, chunk, Read.NONE)
                active.remove(req)
                free.append(req.seq)
                continue
            out = be.prefill(req.seq, chunk, read if last else Read.NONE)
            if last:
                yield from took(req, out)
            continue
        outs = be.decode({r.seq: r.token for r in active}, read)
        for req in list(active):
            yield from took(req, outs[req.seq])


def generate(backend, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, eos_id: int | None = None) -> Iterator[int]:
    """:func:`generate_many` of one prompt: yields up to ``max_new_tokens`` sampled ids (stops after eos)."""
    for _, token in generate_many(backend, [prompt_ids], max_new_tokens, temperature=temperature, top_k=top_k,
                                  seed=seed, eos_id=eos_id):
        yield token
