"""Fidelity of the integer arithmetic on the bundled model's held-out text (issue 3's figures).

Runs the float32, float64 and integer golden models (:mod:`mmfree.models.fidelity`)
over the held-out text fed as one sequence from ``<s>`` and prints, for the
first ``--slice`` positions (the slice ``tests/test_bundled_model.py``
asserts) and for all positions: the perplexities, the greedy agreement of
every pair, and the spread of the integer/float64 disagreements over
blocks of 2,048 positions. ``--json`` writes the figures;
``--update-evaluation`` also stores them in the model's ``evaluation.json``
under ``golden_fidelity`` (``train/evaluate.py`` keeps that key).

    python -m mmfree.bench.fidelity [--positions 0 (= all)] [--slice 2048] [--json OUT] [--update-evaluation]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mmfree.models import numerics as nx
from mmfree.models.fidelity import Fidelity, evaluate
from mmfree.models.weight_image import WeightImage

REPO = Path(__file__).resolve().parents[1]


def heldout_ids(image: WeightImage, path: Path) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(image.tokenizer_json().decode())
    return [image.config.bos_token_id] + tok.encode(path.read_text(), add_special_tokens=False).ids


def figures(r: Fidelity, positions: int) -> dict:
    cut = Fidelity({a: v[:positions] for a, v in r.argmax.items()}, {a: v[:positions] for a, v in r.nll.items()})
    out = cut.summary()
    blocks = cut.block_disagreements("integer", "float64")
    if len(blocks):
        out["integer_float64_disagreements_per_2048"] = {"min": int(blocks.min()), "mean": float(blocks.mean()),
                                                         "max": int(blocks.max()), "blocks": len(blocks)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models/kjv/kjv.img")
    ap.add_argument("--text", type=Path, default=REPO / "models/kjv/heldout.txt")
    ap.add_argument("--positions", type=int, default=0, help="predicted positions (0 = the whole text)")
    ap.add_argument("--slice", type=int, default=2048, help="also report the first N positions")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--update-evaluation", action="store_true",
                    help="store the figures in evaluation.json next to the model")
    args = ap.parse_args(argv)
    image = WeightImage.load(args.model)
    ids = heldout_ids(image, args.text)
    if args.positions:
        ids = ids[: args.positions + 1]
    t0 = time.time()
    r = evaluate(image, ids, progress=lambda n: print(f"\r{n}/{len(ids) - 1}", end="", file=sys.stderr)
                 if n % 256 == 0 else None)
    print(file=sys.stderr)
    res = {"model": args.model.name, "numerics_version": nx.NUMERICS_VERSION,
           "reference": "float64 golden model with exact ties (models/fidelity.py)",
           "seconds": round(time.time() - t0, 1),
           f"first_{args.slice}": figures(r, args.slice), "all": figures(r, r.positions)}
    for name in (f"first_{args.slice}", "all"):
        f = res[name]
        print(f"{name}: {f['positions']} positions")
        print("  perplexity  " + "  ".join(f"{a} {f[f'perplexity_{a}']:.4f}" for a in ("float32", "float64", "integer")))
        print("  agreement   " + "  ".join(f"{k[10:]} {100 * v:.3f} %" for k, v in f.items() if k.startswith("agreement_")))
        if "integer_float64_disagreements_per_2048" in f:
            b = f["integer_float64_disagreements_per_2048"]
            print(f"  integer/float64 disagreements per 2,048 positions: min {b['min']}, mean {b['mean']:.1f}, "
                  f"max {b['max']} ({b['blocks']} blocks)")
    print(f"{res['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    if args.update_evaluation:
        path = args.model.parent / "evaluation.json"
        evaluation = json.loads(path.read_text())
        evaluation["golden_fidelity"] = res
        path.write_text(json.dumps(evaluation, indent=1) + "\n")
        print(f"updated {path}")


if __name__ == "__main__":
    main()
