"""Numerics at scale: the integer arithmetic against float64 at the released models' widths (issue 13).

Another open implementation of this model saw its 2.7B output collapse into
"the the the" because its 16-bit fixed point was too coarse at hidden 2560.
This study runs the integer golden model (:class:`~mmfree.models.golden_int.IntegerModel`,
the accelerator's arithmetic) and the float golden model in float64 with
exactly rounded int8 codes (:class:`~mmfree.models.golden_float.FloatModel`,
``exact_ties=True``: the reference of ``models/fidelity.py``) over the same
random token ids on a random model (:func:`~mmfree.models.synthetic.random_tensors`)
of one released shape, with a reduced layer count, and reports per position:

* ``hidden``: ``||h_int - h_f64|| / ||h_f64||`` after every layer (the residual stream);
* ``logits_rel_l2``: ``||l_int - l_f64|| / ||l_f64||``;
* ``logits_max_rel_range``: ``max|l_int - l_f64| / (max l_f64 - min l_f64)``;
* ``argmax`` agreement, and the float64 top-2 ``margin`` (relative to the
  logit range). The argmax cannot differ where the margin exceeds twice the
  largest logit error, so agreement is also reported on those "decisive"
  positions and the rest are counted: on a random model near ties, not the
  arithmetic, decide the plain agreement.

The float golden model in float32 (the reference implementation's arithmetic)
is measured against float64 the same way, for scale.

``--state free`` lets each model carry its own recurrent state, as decoding
does: the float models run the whole sequence batched
(:meth:`FloatModel.forward`), the integer model one token at a time (the two
agree, tests/test_golden_integer.py). An int8 code that lands on the other
side of a rounding boundary is then carried on, and a random model amplifies
it from token to token, so after some dozens of tokens the figures measure
that divergence. ``--state forced`` starts every model's token from the
float64 model's state (rounded to ACT for the integer model): the errors of
one token's arithmetic, at every position.

    python -m mmfree.bench.numerics_scale --shape 2.7B --layers 4 --tokens 32 [--state free|forced] [--vocab 32000]
        [--seed 0] [--json OUT]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from mmfree.models import numerics as nx
from mmfree.models.config import ModelConfig
from mmfree.models.golden_float import FloatModel
from mmfree.models.golden_int import IntegerModel
from mmfree.models.synthetic import RELEASED_SHAPES, random_tensors, released_config
from mmfree.models.weight_image import WeightImage, build_image


def shape_config(shape: str, layers: int, vocab: int | None = None) -> ModelConfig:
    """The widths of released shape ``shape`` (:data:`~mmfree.models.synthetic.RELEASED_SHAPES`) with
    ``layers`` layers (and ``vocab`` tokens if given)."""
    sizes = {**released_config(shape).to_dict(), "num_hidden_layers": layers}
    if vocab is not None:
        sizes["vocab_size"] = vocab
    return ModelConfig.from_dict(sizes)


def _rel_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``||a - b|| / ||b||``."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def _logit_figures(got: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position logit errors of ``got`` against ``ref`` (T x V each, float64)."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    span = ref.max(axis=1) - ref.min(axis=1)
    err = np.abs(got - ref).max(axis=1)
    return {"rel_l2": _rel_rows(got, ref), "max_rel_range": err / span,
            "agree": got.argmax(axis=1) == ref.argmax(axis=1),
            "margin": (top2[:, 1] - top2[:, 0]) / span,
            "decisive": top2[:, 1] - top2[:, 0] > 2 * err}


def _free_running(image: WeightImage, ids: np.ndarray, keys: list[str], progress):
    """Each model carries its own state: float64 and float32 batched, the integer model token by token."""
    ref_trace, f32_trace = {}, {}
    ref = FloatModel(image, dtype=np.float64, exact_ties=True).forward(ids, trace=ref_trace)
    f32 = FloatModel(image, dtype=np.float32).forward(ids, trace=f32_trace)
    integer = IntegerModel(image)
    state = integer.initial_state()
    int_hidden, int_logits = [], []
    for n, tok in enumerate(ids, 1):
        trace = {}
        logits, state = integer.step(int(tok), state, trace)
        int_hidden.append([nx.act_to_float(trace[k]) for k in keys])
        int_logits.append(nx.act_to_float(logits))
        if progress:
            progress(n)
    ref_hidden = np.stack([ref_trace[k] for k in keys], axis=1)
    return ref_hidden, ref, {"integer": (np.asarray(int_hidden), np.stack(int_logits)),
                             "float32": (np.stack([f32_trace[k] for k in keys], axis=1), f32)}


def _state_forced(image: WeightImage, ids: np.ndarray, keys: list[str], progress):
    """Every model starts each token from the float64 model's state (rounded to ACT / float32)."""
    ref, f32 = FloatModel(image, dtype=np.float64, exact_ties=True), FloatModel(image, dtype=np.float32)
    integer = IntegerModel(image)
    state = ref.initial_state()
    rows = {name: ([], []) for name in ("float64", "integer", "float32")}
    for n, tok in enumerate(ids, 1):
        traces = {name: {} for name in rows}
        logits = {}
        logits["integer"], _ = integer.step(int(tok), [nx.float_to_act(s) for s in state], traces["integer"])
        logits["float32"], _ = f32.step(int(tok), [s.astype(np.float32) for s in state], traces["float32"])
        logits["float64"], state = ref.step(int(tok), state, traces["float64"])
        for name, (hidden, out) in rows.items():
            if name == "integer":
                hidden.append([nx.act_to_float(traces[name][k]) for k in keys])
                out.append(nx.act_to_float(logits[name]))
            else:
                hidden.append([traces[name][k] for k in keys])
                out.append(logits[name])
        if progress:
            progress(n)
    ref_hidden, ref_logits = (np.asarray(v, np.float64) for v in rows.pop("float64"))
    return ref_hidden, ref_logits, {name: (np.asarray(h), np.stack(o)) for name, (h, o) in rows.items()}


#: How the models' recurrent states are carried (:func:`compare`).
STATES = {"free": _free_running, "forced": _state_forced}


def compare(image: WeightImage, ids, progress=None, state: str = "free") -> dict:
    """Per-position, per-layer errors of the integer and float32 models against float64 on ``ids``.

    ``state="free"``: each model carries its own recurrent state over the
    sequence (what decoding does; a code that lands on the other side of a
    rounding boundary is carried on, and a random model amplifies it).
    ``state="forced"``: each token starts from the float64 model's state, so
    the errors are one token's arithmetic alone.

    Returns ``{"integer": ..., "float32": ...}``, each with ``hidden`` (T x L
    relative errors) and the arrays of :func:`_logit_figures`;
    ``progress(n)`` is called after each integer step.
    """
    ids = np.asarray(ids, np.int64)
    keys = [f"model.layers.{layer}.hidden" for layer in range(image.config.L)]
    ref_hidden, ref_logits, models = STATES[state](image, ids, keys, progress)
    ref_logits = np.asarray(ref_logits, np.float64)
    out = {}
    for name, (hidden, logits) in models.items():
        h = np.stack([_rel_rows(hidden[:, k].astype(np.float64), ref_hidden[:, k]) for k in range(len(keys))],
                     axis=1)
        out[name] = {"hidden": h, **_logit_figures(np.asarray(logits, np.float64), ref_logits)}
    return out


def summarize(r: dict) -> dict:
    """Means, medians and maxima over positions of one model's :func:`compare` arrays."""
    h = r["hidden"]
    dec = r["decisive"]
    late = (h > 1e-6).any(axis=1)
    return {
        "hidden_rel_per_layer": [{"mean": float(h[:, k].mean()), "median": float(np.median(h[:, k])),
                                  "max": float(h[:, k].max())} for k in range(h.shape[1])],
        "hidden_rel_mean": float(h.mean()), "hidden_rel_max": float(h.max()),
        "logits_rel_l2_mean": float(r["rel_l2"].mean()), "logits_rel_l2_median": float(np.median(r["rel_l2"])),
        "logits_rel_l2_max": float(r["rel_l2"].max()),
        "logits_max_rel_range_mean": float(r["max_rel_range"].mean()),
        "logits_max_rel_range_max": float(r["max_rel_range"].max()),
        "argmax_agreement": float(r["agree"].mean()), "argmax_agree": int(r["agree"].sum()),
        "positions": int(len(r["agree"])),
        "margin_rel_range_min": float(r["margin"].min()), "margin_rel_range_median": float(np.median(r["margin"])),
        "decisive_positions": int(dec.sum()),
        "argmax_agreement_decisive": float(r["agree"][dec].mean()) if dec.any() else None,
        # a hidden error above 1e-6 means an int8 code landed on the other side of a rounding boundary
        "positions_hidden_above_1e-6": int(late.sum()),
        "first_position_hidden_above_1e-6": int(np.argmax(late)) if late.any() else None,
    }


def measure(shape: str, layers: int, tokens: int, *, vocab: int | None = None, seed: int = 0,
            state: str = "free", progress=None) -> dict:
    """Build a random model of ``shape`` with ``layers`` layers and compare the arithmetics over
    ``tokens`` random ids (seeded by ``seed``) with ``state`` carried as :func:`compare` says;
    returns the figures of :func:`summarize` per model."""
    cfg = shape_config(shape, layers, vocab)
    t0 = time.time()
    image = WeightImage.from_bytes(build_image(cfg, random_tensors(cfg, seed)))
    t_build = time.time() - t0
    ids = np.random.default_rng(seed).integers(0, cfg.V, tokens)
    t0 = time.time()
    r = compare(image, ids, progress, state)
    return {"shape": shape, "config": cfg.to_dict(), "layers": layers, "tokens": tokens, "seed": seed,
            "state": state,
            "numerics_version": nx.NUMERICS_VERSION,
            "reference": "float64 golden model with exact ties (FloatModel(dtype=float64, exact_ties=True))",
            "seconds_build": round(t_build, 1), "seconds_compare": round(time.time() - t0, 1),
            **{name: summarize(v) for name, v in r.items()}}


def report(res: dict) -> None:
    """Print the figures :func:`measure` returned as a table."""
    cfg = res["config"]
    print(f"{res['shape']}: {res['layers']} layers, hidden {cfg['hidden_size']}, intermediate "
          f"{cfg['intermediate_size']}, vocab {cfg['vocab_size']}; {res['tokens']} random ids (seed {res['seed']}); "
          f"state {res['state']}; against float64 with exact ties")
    i, f = res["integer"], res["float32"]
    print(f"{'hidden relative L2':24}{'integer median':>15}{'mean':>10}{'max':>10}{'float32 median':>16}{'mean':>10}"
          f"{'max':>10}")
    for k, (a, b) in enumerate(zip(i["hidden_rel_per_layer"], f["hidden_rel_per_layer"])):
        print(f"{'  after layer ' + str(k):24}{a['median']:15.2e}{a['mean']:10.2e}{a['max']:10.2e}"
              f"{b['median']:16.2e}{b['mean']:10.2e}{b['max']:10.2e}")
    print(f"{'logits relative L2':24}" + "".join(f"{r['logits_rel_l2_' + s]:{w}.2e}" for r in (i, f)
                                              for s, w in (("median", 15 if r is i else 16), ("mean", 10), ("max", 10))))
    print(f"{'logits max|err|/range':24}{'':15}{i['logits_max_rel_range_mean']:10.2e}{i['logits_max_rel_range_max']:10.2e}"
          f"{'':16}{f['logits_max_rel_range_mean']:10.2e}{f['logits_max_rel_range_max']:10.2e}")
    for name, r in (("integer", i), ("float32", f)):
        dec = r["argmax_agreement_decisive"]
        print(f"argmax agreement {name}: {r['argmax_agree']}/{r['positions']} ({100 * r['argmax_agreement']:.1f} %); "
              f"decisive positions (top-2 margin > 2 max|err|) {r['decisive_positions']}/{r['positions']}, "
              f"agreement there {'-' if dec is None else f'{100 * dec:.1f} %'}")
    print(f"float64 top-2 margin / logit range: min {i['margin_rel_range_min']:.2e}, "
          f"median {i['margin_rel_range_median']:.2e}")
    first = i["first_position_hidden_above_1e-6"]
    print(f"positions with an integer hidden error above 1e-6 (a code flip): {i['positions_hidden_above_1e-6']}, "
          f"the first: {'none' if first is None else first}")
    print(f"build {res['seconds_build']} s, compare {res['seconds_compare']} s")


@click.command("numerics-scale")
@click.option("--shape", type=click.Choice(list(RELEASED_SHAPES)), default="2.7B", show_default=True,
              help="released shape whose widths the random model takes")
@click.option("--layers", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--tokens", default=32, show_default=True, type=click.IntRange(min=1), help="random ids fed in turn")
@click.option("--vocab", type=click.IntRange(min=3), help="vocabulary (default: the shape's 32000)")
@click.option("--seed", default=0, show_default=True, type=int, help="weights' and ids' seed")
@click.option("--state", type=click.Choice(list(STATES)), default="free", show_default=True,
              help="free: each model carries its own state; forced: each token starts from float64's state")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="write the figures")
def numerics_scale(shape, layers, tokens, vocab, seed, state, json_out):
    """Integer vs float64 golden model on a random model of a released shape (docs/numerics.md)."""
    from tqdm import tqdm

    with tqdm(total=tokens, desc="integer", unit="tok", file=sys.stderr, leave=False) as bar:
        res = measure(shape, layers, tokens, vocab=vocab, seed=seed, state=state,
                      progress=lambda n: bar.update(n - bar.n))
    res["command"] = " ".join(["python -m mmfree.bench.numerics_scale", *sys.argv[1:]])
    report(res)
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    numerics_scale()
