"""The benchmark commands of ``mmfree``: ``bench-accel``, ``bench-golden``, ``fidelity``, ``fidelity-budget``.

Registered in the ``mmfree.commands`` entry-point group (pyproject.toml); the
host's CLI finds them by name. Options the host's commands also take
(``--model``, ``--text-file``, ``--json``) come from :mod:`mmfree.host.options`.
Every benchmark module is imported when its command runs.

    mmfree bench-accel [--configs pynq-z2,kv260] [--models bundled,370m,1.3b,2.7b] [--tokens 3] [--out bench/results]
    mmfree bench-golden [--shape 370M] [--layers L] [--tokens 16]
    mmfree fidelity [--model IMG] [--text-file TXT] [--positions 0] [--slice 2048] [--json OUT] [--update-evaluation]
    mmfree fidelity-budget [--model IMG] [--text-file TXT] [--positions 8192] [--mode both] [--no-check] [--json OUT]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mmfree.contract.configs import CONFIGS
from mmfree.host.cli import load_image, text_ids
from mmfree.host.options import json_option, model_option, text_option, write_output
from mmfree.models.synthetic import RELEASED_SHAPES

REPO = Path(__file__).resolve().parent.parent


def _names(allowed):
    """A click callback: a comma-separated list whose every name is one of ``allowed``."""
    def check(ctx, param, value):
        names = [n for n in value.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise click.BadParameter(f"{bad[0] if bad else value!r} is not one of {', '.join(allowed)}", ctx, param)
        return names
    return check


@click.command("bench-accel")
@click.option("--configs", default="pynq-z2,kv260", show_default=True, callback=_names(sorted(CONFIGS)),
              help="comma-separated accelerator configurations (contract/configs.py)")
@click.option("--models", default="bundled,370m,1.3b,2.7b", show_default=True,
              callback=_names(("bundled", "370m", "1.3b", "2.7b")),
              help="bundled (the KJV model) and/or released shapes (370m, 1.3b, 2.7b: projected from 1 and 2 "
                   "layers, on the configurations that hold them)")
@click.option("--tokens", default=3, show_default=True, type=click.IntRange(min=2),
              help="tokens per run (the first is reported apart)")
@click.option("--out", default=REPO / "bench" / "results", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="folder for accelerator.json and .png")
def bench_accel(configs, models, tokens, out):
    """Accelerator RTL cycles per token vs the DDR roofline, per configuration (Verilator).

    Writes OUT/accelerator.json and accelerator.png; exits 2 when a run is not bit exact with the
    integer golden model.
    """
    from . import accelerator

    if not accelerator.bench(configs, models, tokens, out):
        click.get_current_context().exit(2)


@click.command("bench-golden")
@click.option("--shape", type=click.Choice(list(RELEASED_SHAPES)), default="370M", show_default=True,
              help="released model shape")
@click.option("--layers", type=click.IntRange(min=1), help="layers  [default: the shape's own, 24 or 32]")
@click.option("--tokens", default=16, show_default=True, type=click.IntRange(min=1), help="timed steps")
def bench_golden(shape, layers, tokens):
    """Tokens/s of the integer and float golden models on a random model of a released MMfreeLM shape."""
    from . import golden_speed

    golden_speed.bench(layers, tokens, shape)


def _text_ids(image, model, text_file, positions: int) -> list[int]:
    """:func:`~mmfree.host.cli.text_ids` cut to ``positions`` predicted positions (0: all)."""
    ids = text_ids(image, model, text_file)
    return ids[: positions + 1] if positions else ids


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pos", file=sys.stderr, leave=False)


@click.command()
@model_option
@text_option
@click.option("--positions", default=0, show_default=True, type=click.IntRange(min=0),
              help="predicted positions (0 = the whole text)")
@click.option("--slice", "slice_", default=2048, show_default=True, type=click.IntRange(min=1),
              help="also report the first N positions")
@json_option
@click.option("--update-evaluation", is_flag=True, help="store the figures in evaluation.json next to the model")
def fidelity(model, text_file, positions, slice_, json_out, update_evaluation):
    """Integer vs float32/float64 golden models on a text: perplexity, greedy agreement (docs/numerics.md)."""
    from . import fidelity as fid

    image = load_image(model)
    ids = _text_ids(image, model, text_file, positions)
    evaluation_path = model.parent / "evaluation.json"
    evaluation = None
    if update_evaluation:
        try:
            evaluation = json.loads(evaluation_path.read_text())
            if not isinstance(evaluation, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise click.ClickException(f"{evaluation_path}: cannot update ({e})") from None
    with _progress_bar(len(ids) - 1, "fidelity") as bar:
        res = fid.measure(image, model, ids, slice_, progress=lambda n: bar.update(n - bar.n))
    fid.report(res, slice_)
    if json_out is not None:
        write_output(json_out, json.dumps(res, indent=1) + "\n")
    if evaluation is not None:
        evaluation["golden_fidelity"] = res
        write_output(evaluation_path, json.dumps(evaluation, indent=1) + "\n")
        click.echo(f"updated {evaluation_path}")


@click.command("fidelity-budget")
@model_option
@text_option
@click.option("--positions", default=8192, show_default=True, type=click.IntRange(min=0),
              help="predicted positions (0 = the whole text)")
@click.option("--mode", type=click.Choice(["only", "all-but", "both"]), default="both", show_default=True,
              help="variants: each approximation alone, all but one, or both sets")
@click.option("--no-check", is_flag=True, help="skip checking the all-on/all-off models against the golden ones")
@json_option
def fidelity_budget(model, text_file, positions, mode, no_check, json_out):
    """Error budget of the integer arithmetic: which approximation costs how much fidelity."""
    import numpy as np

    from . import fidelity_budget as fb

    image = load_image(model)
    ids = np.asarray(_text_ids(image, model, text_file, positions))
    with _progress_bar(len(ids) - 1, "fidelity budget") as bar:
        res = fb.budget(image, ids, mode, check_first=not no_check, progress=lambda k: bar.update(k - bar.n))
    fb.report(res)
    if json_out is not None:
        write_output(json_out, json.dumps(res, indent=1) + "\n")


__all__ = ["bench_accel", "bench_golden", "fidelity", "fidelity_budget"]
