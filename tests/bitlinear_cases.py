"""BitLinear record cases and their golden results, shared by the RmsQuantize and BitLinearEngine benches.

A case is the record's scalars (the keys of ``hw.rms_quantize.rms_params_layout``),
its gains and an input vector; the expected values come from
``golden_int`` (``norm_stats``, ``quantize_vector``, ``consumer_scale``
and ``IntegerModel.bitlinear``) exactly as the integer model calls them.
"""
from __future__ import annotations

import functools

import numpy as np

from mmfree.hw.rms_quantize import ROW_LANES
from mmfree.models import numerics as nx
from mmfree.models.golden_int import IntegerModel, consumer_scale, norm_stats, quantize_vector
from mmfree.models.config import ModelConfig
from mmfree.models.synthetic import random_tensors
from mmfree.models.weight_image import MAX_CONSUMERS, NormSource, WeightImage, build_image

from helpers import KJV_IMAGE

KJV = KJV_IMAGE
GAIN_MAX = (1 << (nx.GAIN_BITS - 1)) - 1
#: A random model whose every size is awkward: K = 44 and 72 (not multiples of 5 or of a
#: beat's gains), N = 44, 144, 100 (not multiples of R), gains parts that need padding.
ODD = ModelConfig(vocab_size=100, hidden_size=44, num_hidden_layers=2, intermediate_size=72)


@functools.lru_cache(maxsize=None)
def load_image(key) -> WeightImage:
    """The bundled model (``KJV`` or its path), or ``"odd<R>"``: :data:`ODD` built with rows_per_block R."""
    if isinstance(key, str) and key.startswith("odd"):
        raw = build_image(ODD, random_tensors(ODD, seed=3), rows_per_block=int(key[3:]))
        return WeightImage.from_bytes(raw)
    return WeightImage.load(key)


def params_from_record(rec: dict) -> dict:
    """The RmsQuantize params of a BITLINEAR record (weight-image metadata)."""
    cons = rec["consumers"] + [{"frac_g": 0, "cm": 0, "ec": 0}] * (MAX_CONSUMERS - len(rec["consumers"]))
    return {"k": rec["k"], "consumers": len(rec["consumers"]), "frac_a": rec["frac_a"],
            "source": int(NormSource[rec["norm_source"]]), "eps_mant": rec["eps_mant"],
            "eps_shift": rec["eps_shift"], "x_frac": rec["x_frac"],
            "frac_g": [c["frac_g"] for c in cons], "cm": [c["cm"] for c in cons], "ec": [c["ec"] for c in cons]}


def record_gains(image: WeightImage, rec: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    a, _ = image.norm_gain(rec["name"])
    return np.asarray(a, np.int64), [np.asarray(image.folded_gain(c["name"])[0], np.int64) for c in rec["consumers"]]


def golden_input(params: dict, a: np.ndarray, gains: list[np.ndarray], x: np.ndarray, n: np.ndarray | None) -> dict:
    """What RmsQuantize must produce: codes per consumer, the norm statistics and the scales.

    ``scale`` is 0 where the golden model outputs all zeros (V == 0 or M' == 0);
    ``exp`` is then None (not compared).
    """
    source = NormSource(params["source"])
    norm_vector = x if source == NormSource.INPUT else (n if source == NormSource.GATE else None)
    norm_frac = params["x_frac"] if source == NormSource.INPUT else nx.ACT_FRAC
    stats = norm_stats(x, params["x_frac"], a, params["frac_a"], params["eps_mant"], params["eps_shift"],
                       norm_vector, norm_frac)
    out = {"codes": [], "scale": [], "exp": [], "peak_norm": [], "shift": [], "sumsq": stats.sumsq,
           "sa": stats.shift, "inv": stats.inv, "z": stats.z}
    for c in range(MAX_CONSUMERS):
        if c >= params["consumers"]:
            out["codes"].append(np.zeros(len(x), np.int64))
            continue
        qv = quantize_vector(x, gains[c])
        out["codes"].append(qv.codes.astype(np.int64))
        out["peak_norm"].append(qv.peak_norm)
        out["shift"].append(qv.shift)
        scaling = consumer_scale(qv, stats, params["cm"][c], params["ec"][c], params["frac_g"][c],
                                 params["frac_a"])
        scale, exp = (0, None) if scaling is None else scaling
        out["scale"].append(scale)
        out["exp"].append(exp)
    return out


class _Recorder(IntegerModel):
    """The integer model, keeping every BITLINEAR record's input (x, norm vector) of the last step."""

    def __init__(self, image):
        super().__init__(image)
        self.inputs: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def bitlinear_columns(self, x, record, trace=None, norm_vector=None):
        # One sequence is stepped: column 0 is its input.
        self.inputs[record] = (np.array(x[0], np.int64),
                               None if norm_vector is None else np.array(norm_vector[0], np.int64))
        return super().bitlinear_columns(x, record, trace, norm_vector)


@functools.lru_cache(maxsize=None)
def record_inputs(key, tokens: tuple[int, ...]) -> dict:
    """{record: (x, n)} of the last of ``tokens`` fed in order from the zero state (real activations)."""
    model = _Recorder(load_image(key))
    state = model.initial_state()
    for t in tokens:
        _, state = model.step(t, state)
    return model.inputs


def golden_outputs(key, record: str, x: np.ndarray, n: np.ndarray | None) -> list[np.ndarray]:
    """``IntegerModel.bitlinear`` of one record: every consumer's ACT outputs."""
    model = _model(key)
    return [np.asarray(y, np.int64) for y in model.bitlinear(x, record, norm_vector=n)]


@functools.lru_cache(maxsize=None)
def _model(key) -> IntegerModel:
    return IntegerModel(load_image(key))


def random_params(rng, k: int, *, consumers=None, source=None, x_frac=None) -> dict:
    """Record scalars anywhere in the supported ranges (hw.rms_quantize's FRAC_MAX etc.)."""
    from mmfree.hw.rms_quantize import EPS_SHIFT_MAX, EPS_SHIFT_MIN, FRAC_MAX, X_FRAC_MAX

    return {"k": k, "consumers": int(consumers or rng.integers(1, MAX_CONSUMERS + 1)),
            "frac_a": int(rng.integers(0, FRAC_MAX + 1)),
            "source": int(rng.integers(0, 3) if source is None else source),
            "eps_mant": int(rng.integers(1 << 23, 1 << 24)),
            "eps_shift": int(rng.integers(EPS_SHIFT_MIN, EPS_SHIFT_MAX + 1)),
            "x_frac": int(rng.integers(0, X_FRAC_MAX + 1) if x_frac is None else x_frac),
            "frac_g": [int(v) for v in rng.integers(0, FRAC_MAX + 1, size=MAX_CONSUMERS)],
            "cm": [int(v) for v in rng.integers(1 << (nx.SCALE_BITS - 1), 1 << nx.SCALE_BITS, size=MAX_CONSUMERS)],
            "ec": [int(v) for v in rng.integers(-60, 10, size=MAX_CONSUMERS)]}


def random_gain(rng, k: int) -> np.ndarray:
    """24-bit mantissas whose peak lies in [2**22, 2**23), as numerics.gain_to_fixed makes them."""
    g = rng.integers(-GAIN_MAX - 1, GAIN_MAX + 1, size=k)
    peak = int(rng.integers(1 << nx.GAIN_TOP_BIT, 1 << (nx.GAIN_TOP_BIT + 1)))
    g[int(rng.integers(0, k))] = int(rng.choice([-1, 1])) * peak
    return g


def random_vector(rng, k: int, bits: int) -> np.ndarray:
    """Signed values of magnitude below 2**bits (at least one of that size)."""
    x = rng.integers(-(1 << bits) + 1, 1 << bits, size=k)
    return x


def interleave(rng, lengths, longest_run: int = 40) -> list[tuple[int, int]]:
    """(column, index) of every element of columns of the given lengths: each column's in order,
    the columns interleaved in random runs of 1 .. ``longest_run - 1`` (how a build of columns
    takes its input vectors)."""
    left = [list(range(n)) for n in lengths]
    order = []
    while any(left):
        c = int(rng.choice([i for i, v in enumerate(left) if v]))
        run = int(rng.integers(1, longest_run))
        order += [(c, i) for i in left[c][:run]]
        left[c] = left[c][run:]
    return order


def x_beats(layout, rng, order, vectors) -> list[int]:
    """``x`` payloads (:func:`~mmfree.hw.rms_quantize.x_layout` bits) carrying the elements ``order``
    ((column, index), each column's in order) of ``vectors`` (per column: values, norms): two
    consecutive elements of a column share a beat at random, and the rest go alone (the two kinds
    of producer a build has: the elementwise units give pairs, the embedding single values)."""
    beats, i = [], 0
    while i < len(order):
        c, j = order[i]
        last = j == len(vectors[c][0]) - 1
        pair = not last and i + 1 < len(order) and order[i + 1] == (c, j + 1) and rng.random() < 0.6
        count = ROW_LANES if pair else 1
        values = [int(vectors[c][0][j + d]) for d in range(count)] + [0] * (ROW_LANES - count)
        norms = [int(vectors[c][1][j + d]) for d in range(count)] + [0] * (ROW_LANES - count)
        beats.append(layout.const({"value": values, "norm": norms, "column": c, "pair": int(pair),
                                   "last": int(j + count == len(vectors[c][0]))}).as_value().value)
        i += count
    return beats
