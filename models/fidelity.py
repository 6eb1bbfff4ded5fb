"""How far the integer arithmetic moves a model's predictions: perplexity and greedy agreement.

Three golden models read the same weight image and the same token ids:

* ``float32``: :class:`~mmfree.models.golden_float.FloatModel` in float32, the
  reference implementation's arithmetic;
* ``float64``: the same in float64 with the int8 codes rounded from their
  exact value (``exact_ties=True``): the model's math with no rounding of
  its own worth speaking of. It is the reference of the fidelity target
  (docs/numerics.md, "Measured fidelity", says why float32 cannot be);
* ``integer``: :class:`~mmfree.models.golden_int.IntegerModel`, the
  accelerator's arithmetic.

Each model carries its own recurrent state over the whole sequence (fed in
chunks; the result does not depend on the chunk size). For every predicted
position the argmax and the negative log-likelihood of the next id are kept.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import numerics as nx
from .golden_float import FloatModel
from .golden_int import IntegerModel
from .weight_image import WeightImage

#: The models compared, in the order they are run.
ARITHMETICS = ("float32", "float64", "integer")
#: The reference of the fidelity target.
REFERENCE = "float64"


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(len(targets)), targets]


@dataclasses.dataclass
class Fidelity:
    """Per-position argmax and next-token NLL of each arithmetic over one id sequence."""

    argmax: dict[str, np.ndarray]
    nll: dict[str, np.ndarray]

    @property
    def positions(self) -> int:
        return len(next(iter(self.nll.values())))

    def perplexity(self, arith: str) -> float:
        return float(np.exp(self.nll[arith].mean()))

    def agreement(self, a: str, b: str = REFERENCE) -> float:
        """Fraction of positions where the two arithmetics predict the same next id."""
        return float(np.mean(self.argmax[a] == self.argmax[b]))

    def block_disagreements(self, a: str, b: str = REFERENCE, block: int = 2048) -> np.ndarray:
        """Disagreement counts in consecutive blocks of ``block`` positions (a partial last block dropped)."""
        dis = self.argmax[a] != self.argmax[b]
        n = len(dis) // block * block
        return dis[:n].reshape(-1, block).sum(axis=1)

    def summary(self) -> dict:
        out = {"positions": self.positions}
        out.update({f"perplexity_{a}": self.perplexity(a) for a in self.nll})
        names = list(self.argmax)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                out[f"agreement_{a}_{b}"] = self.agreement(a, b)
        return out


def evaluate(image: WeightImage, ids, *, arithmetics=ARITHMETICS, chunk: int = 2048, progress=None) -> Fidelity:
    """Run each arithmetic over ``ids`` (predicting ids[1:]); ``progress(n)`` after each integer step."""
    unknown = [a for a in arithmetics if a not in ARITHMETICS]
    if unknown:
        raise ValueError(f"unknown arithmetic {unknown[0]!r}; known: {', '.join(ARITHMETICS)}")
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError("need at least two token ids")
    inputs, targets = ids[:-1], ids[1:]
    argmax = {a: np.empty(len(targets), np.int64) for a in arithmetics}
    nll = {a: np.empty(len(targets)) for a in arithmetics}
    floats = {a: FloatModel(image, dtype=np.float32) if a == "float32"
              else FloatModel(image, dtype=np.float64, exact_ties=True)
              for a in arithmetics if a != "integer"}
    states = {a: m.initial_state() for a, m in floats.items()}
    integer = IntegerModel(image) if "integer" in arithmetics else None
    int_state = integer.initial_state() if integer else None
    done = 0
    for start in range(0, len(inputs), chunk):
        x, y = inputs[start: start + chunk], targets[start: start + chunk]
        rows = slice(start, start + len(x))
        for a, model in floats.items():
            logits, states[a] = model.forward(x, states[a], return_state=True)
            logits = logits.astype(np.float64)
            argmax[a][rows], nll[a][rows] = logits.argmax(axis=1), _nll(logits, y)
        if integer:
            out = []
            for t in x:
                lg, int_state = integer.step(int(t), int_state)
                out.append(lg)
                done += 1
                if progress:
                    progress(done)
            logits = nx.act_to_float(np.stack(out))
            argmax["integer"][rows], nll["integer"][rows] = logits.argmax(axis=1), _nll(logits, y)
    return Fidelity(argmax, nll)
