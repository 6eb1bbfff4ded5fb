"""Fidelity of the integer arithmetic on the bundled model's held-out text (issue 3's figures).

Runs the float32, float64 and integer golden models (:mod:`mmfree.models.fidelity`)
over the held-out text fed as one sequence from ``<s>`` and prints, for the
first ``--slice`` positions (the slice ``tests/test_bundled_model.py``
asserts) and for all positions: the perplexities, the greedy agreement of
every pair, and the spread of the integer/float64 disagreements over
blocks of 2,048 positions. ``--json`` writes the figures;
``--update-evaluation`` also stores them in the model's ``evaluation.json``
under ``golden_fidelity`` (``train/evaluate.py`` keeps that key).

    mmfree fidelity [--positions 0 (= all)] [--slice 2048] [--json OUT] [--update-evaluation]
"""
from __future__ import annotations

import time
from pathlib import Path

from mmfree.models import numerics as nx
from mmfree.models.fidelity import Fidelity, evaluate
from mmfree.models.weight_image import WeightImage


def figures(r: Fidelity, positions: int) -> dict:
    cut = Fidelity({a: v[:positions] for a, v in r.argmax.items()}, {a: v[:positions] for a, v in r.nll.items()})
    out = cut.summary()
    blocks = cut.block_disagreements("integer", "float64")
    if len(blocks):
        out["integer_float64_disagreements_per_2048"] = {"min": int(blocks.min()), "mean": float(blocks.mean()),
                                                         "max": int(blocks.max()), "blocks": len(blocks)}
    return out


def measure(image: WeightImage, model: Path, ids: list[int], slice_: int, progress=None) -> dict:
    """The figures of :func:`figures` for the first ``slice_`` positions and for all, with the run's time."""
    t0 = time.time()
    r = evaluate(image, ids, progress=progress)
    return {"model": model.name, "numerics_version": nx.NUMERICS_VERSION,
            "reference": "float64 golden model with exact ties (models/fidelity.py)",
            "seconds": round(time.time() - t0, 1),
            f"first_{slice_}": figures(r, slice_), "all": figures(r, r.positions)}


def report(res: dict, slice_: int) -> None:
    """Print the figures :func:`measure` returned."""
    for name in (f"first_{slice_}", "all"):
        f = res[name]
        print(f"{name}: {f['positions']} positions")
        print("  perplexity  " + "  ".join(f"{a} {f[f'perplexity_{a}']:.4f}" for a in ("float32", "float64", "integer")))
        print("  agreement   " + "  ".join(f"{k[10:]} {100 * v:.3f} %" for k, v in f.items() if k.startswith("agreement_")))
        if "integer_float64_disagreements_per_2048" in f:
            b = f["integer_float64_disagreements_per_2048"]
            print(f"  integer/float64 disagreements per 2,048 positions: min {b['min']}, mean {b['mean']:.1f}, "
                  f"max {b['max']} ({b['blocks']} blocks)")
    print(f"{res['seconds']} s")
