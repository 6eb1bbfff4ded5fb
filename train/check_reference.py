"""Check the torch model against the reference vectors (spec §7).

For each case in ``spec/vectors``: load the bf16 checkpoint into float32,
run the whole-sequence forward on ``ids.npy`` and compare with
``logits.npy``: at ≥ 90 % of positions max|Δlogit| ≤ 1e-4·max|logit|, at
every position ≤ 2e-2·max|logit|, identical argmax everywhere; then greedy
decoding from ``greedy_prompt.npy`` must reproduce ``greedy_tokens.npy``.
Also checks that feeding ``ids`` one token at a time with the state carried
gives the same logits as the whole-sequence forward (spec §6).

Run: ``python -m mmfree.train.check_reference [--vectors DIR]``; exits 1 on failure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .model import load_checkpoint

DEFAULT_VECTORS = Path("/work/shared/spec/vectors")


def compare_logits(got: np.ndarray, want: np.ndarray) -> dict:
    """Spec §7 rule; the scale is max|logit| of the reference row."""
    scale = np.abs(want).max(axis=-1)
    err = np.abs(got - want).max(axis=-1) / scale
    return {
        "positions": int(len(err)),
        "frac_within_1e-4": float((err <= 1e-4).mean()),
        "max_rel_err": float(err.max()),
        "median_rel_err": float(np.median(err)),
        "argmax_equal": bool((got.argmax(-1) == want.argmax(-1)).all()),
        "pass": bool((err <= 1e-4).mean() >= 0.9 and err.max() <= 2e-2
                     and (got.argmax(-1) == want.argmax(-1)).all()),
    }


def check_case(case: Path) -> bool:
    model = load_checkpoint(case / "checkpoint")
    ids = torch.from_numpy(np.load(case / "ids.npy")).long()
    want = np.load(case / "logits.npy")
    with torch.no_grad():
        got, _ = model(ids[None])
        got = got[0].numpy()
        # token-by-token with the state carried
        states, steps = None, []
        for t in range(ids.shape[0]):
            lg, states = model(ids[None, t:t + 1], states)
            steps.append(lg[0, 0].numpy())
    res = compare_logits(got, want)
    step_res = compare_logits(np.stack(steps), want)
    prompt = np.load(case / "greedy_prompt.npy").tolist()
    want_greedy = np.load(case / "greedy_tokens.npy").tolist()
    got_greedy = model.generate(prompt, len(want_greedy))
    ok_greedy = got_greedy == want_greedy
    ok = res["pass"] and step_res["pass"] and ok_greedy
    print(f"{case.name}: {'PASS' if ok else 'FAIL'}")
    print(f"  whole-sequence logits: {res}")
    print(f"  token-by-token logits: {step_res}")
    print(f"  greedy: {'identical' if ok_greedy else 'DIFFERENT'} got={got_greedy} want={want_greedy}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cases = sorted(p for p in args.vectors.iterdir() if (p / "checkpoint").is_dir())
    if not cases:
        print(f"no cases under {args.vectors}")
        return 1
    results = [check_case(c) for c in cases]
    print(f"{sum(results)}/{len(results)} cases pass")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
