"""``mmfree``: convert checkpoints, inspect images, generate text, compare arithmetic.

Every user error (missing or damaged file, token id out of range, empty
prompt, unknown backend) ends with a one-line ``Error: ...`` and exit code 1
(2 for usage errors, as click does); no traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from mmfree.contract.configs import CONFIGS as HW_CONFIGS
from mmfree.contract.configs import DEFAULT_SIM_CONFIG
from mmfree.models import checkpoint as ckpt
from mmfree.models.weight_image import DEFAULT_ROWS_PER_BLOCK, ImageError, WeightImage

from .backends import BACKENDS, BackendError, open_backend
from .generate import generate as generate_ids

#: The bundled model every --model option defaults to.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = BUNDLED_MODELS / "kjv" / "kjv.img"


def _load_image(path) -> WeightImage:
    try:
        return WeightImage.load(path)
    except ImageError as e:
        raise click.ClickException(str(e)) from None


def _tokenizer(image: WeightImage):
    from tokenizers import Tokenizer

    raw = image.tokenizer_json()
    if raw is None:
        raise click.ClickException("the image carries no tokenizer.json; convert a checkpoint that has one")
    return Tokenizer.from_str(raw.decode())


def _check_ids(ids, vocab: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise click.ClickException(f"token id {bad[0]} out of range (vocabulary has {vocab} ids: 0..{vocab - 1})")


model_option = click.option("--model", "model", type=click.Path(dir_okay=False, path_type=Path),
                            default=DEFAULT_MODEL, show_default=True, help="weight image (.img)")


@click.group()
@click.version_option(package_name="mmfree")
def main():
    """FPGA accelerator for the MatMul-free LM: golden models, simulation and board host."""


def _open_prompt(model, prompt, backend, hw_config, bitstream):
    """(image, tokenizer, prompt ids with bos, opened backend) for generate and bench; one-line errors."""
    image = _load_image(model)
    tok = _tokenizer(image)
    if not prompt.strip():
        raise click.ClickException("empty prompt")
    ids = [image.config.bos_token_id] + tok.encode(prompt, add_special_tokens=False).ids
    _check_ids(ids, image.config.V)
    try:
        engine = open_backend(backend, image, hw_config=hw_config, bitstream=bitstream)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    return image, tok, ids, engine


@main.command()
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rows-per-block", default=DEFAULT_ROWS_PER_BLOCK, show_default=True,
              help="rows per packed block (a multiple of the accelerator's bytes per beat)")
def convert(checkpoint_dir, out, rows_per_block):
    """Convert a HuggingFace MMfreeLM checkpoint directory to a weight image."""
    from tqdm import tqdm

    bar = tqdm(desc="convert", unit="record", file=sys.stderr, leave=False)
    try:
        data = ckpt.convert(checkpoint_dir, rows_per_block=rows_per_block,
                            progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    except (ckpt.CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        bar.close()
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)  # never leave a half-written image under the final name
    image = WeightImage.from_bytes(data, name=str(out))
    stats = image.matrix_stats()
    click.echo(f"wrote {out}: {stats['ternary_weights']:,} ternary weights, {stats['file_bytes']:,} bytes, "
               f"{stats['bits_per_weight']:.3f} bit/weight")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
def info(image):
    """Print an image's configuration, sizes, bits per weight and checksum status."""
    try:
        img = WeightImage.load(image, verify_checksum=False)
    except ImageError as e:
        raise click.ClickException(str(e)) from None
    ok = img.verify()
    c = img.config
    s = img.matrix_stats()
    click.echo(f"image            {image}")
    click.echo(f"format           version {img.meta['format_version']}, numerics {img.meta['numerics_version']}")
    click.echo(f"config           vocab {c.V}, hidden {c.D}, layers {c.L}, intermediate {c.I}, eps {c.rms_norm_eps:g}")
    click.echo(f"ternary weights  {s['ternary_weights']:,} in {s['packed_bytes']:,} bytes "
               f"({s['bits_per_weight']:.3f} bit/weight), {img.rows_per_block} rows per block")
    click.echo(f"stream           {s['stream_bytes']:,} bytes per token")
    click.echo(f"embedding        {s['embedding_bytes']:,} bytes (bf16)")
    click.echo(f"file             {s['file_bytes']:,} bytes, tokenizer {'yes' if img.tokenizer_json() else 'no'}")
    click.echo(f"checksum         {'ok' if ok else 'MISMATCH (file corrupted)'}")
    if not ok:
        sys.exit(1)


@main.command()
@model_option
@click.option("--prompt", required=True, help="prompt text")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=0))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="0 = greedy")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="0 = whole vocabulary")
@click.option("--seed", default=0, show_default=True)
@click.option("--backend", default="golden", show_default=True, type=click.Choice(sorted(BACKENDS)),
              help="golden/float: the golden models; sim: the RTL in Verilator; pynq: a PYNQ board")
@click.option("--hw-config", default=None, type=click.Choice(sorted(HW_CONFIGS)),
              help=f"accelerator configuration of --backend sim/pynq [default: {DEFAULT_SIM_CONFIG} for sim; "
                   "for pynq the board $BOARD names, else pynq-z2]")
@click.option("--bitstream", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="--backend pynq: the overlay .bit (default bitstreams/<hw-config>/mmfree.bit)")
def generate(model, prompt, max_new_tokens, temperature, top_k, seed, backend, hw_config, bitstream):
    """Generate text, printing it as it is produced."""
    image, tok, ids, engine = _open_prompt(model, prompt, backend, hw_config, bitstream)
    try:
        click.echo(prompt, nl=False)
        out: list[int] = []
        shown = ""
        for t in generate_ids(engine, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                              eos_id=image.config.eos_token_id):
            if t == image.config.eos_token_id:
                break
            out.append(t)
            text = tok.decode(out)
            # Byte-level pieces can end mid-character: print only once complete.
            if not text.endswith("\ufffd"):
                click.echo(text[len(shown):], nl=False)
                shown = text
        click.echo(tok.decode(out)[len(shown):])
    except BackendError as e:
        click.echo()  # end the partial line so the error stands on its own
        raise click.ClickException(str(e)) from None
    finally:
        engine.close()


class _CountingBackend:
    """A backend that keeps each step's hardware counters (accelerator backends hold them in ``last``)."""

    def __init__(self, backend):
        self.backend, self.counters = backend, []

    def reset(self):
        self.backend.reset()

    def step(self, token):
        logits = self.backend.step(token)
        last = getattr(self.backend, "last", None)
        self.counters.append(dict(last.counters) if last is not None else None)
        return logits


@main.command()
@model_option
@click.option("--prompt", default="And God said", show_default=True, help="prompt text")
@click.option("--tokens", default=32, show_default=True, type=click.IntRange(min=1), help="tokens to generate")
@click.option("--backend", default="golden", show_default=True, type=click.Choice(sorted(BACKENDS)),
              help="golden/float: the golden models; sim: the RTL in Verilator; pynq: a PYNQ board")
@click.option("--hw-config", default=None, type=click.Choice(sorted(HW_CONFIGS)),
              help="as for generate (pynq: default the board $BOARD names, else pynq-z2)")
@click.option("--bitstream", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="--backend pynq: the overlay .bit (default bitstreams/<hw-config>/mmfree.bit)")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="also write the figures to this file")
def bench(model, prompt, tokens, backend, hw_config, bitstream, json_out):
    """Tokens per second of greedy generation, and the accelerator's counters per token.

    The host figure is wall time of whole steps (driver, transfers, host
    code). Accelerator backends also report the hardware counters (CYCLES_*,
    BYTES_READ) averaged over the steps, and the device time they mean at the
    accelerator's clock (for --backend sim: the simulated build's clock).
    """
    import json
    import time

    image, tok, ids, engine = _open_prompt(model, prompt, backend, hw_config, bitstream)
    counting = _CountingBackend(engine)
    try:
        start = time.perf_counter()
        out = list(generate_ids(counting, ids, tokens))
        wall = time.perf_counter() - start
        clock = engine.driver.transport.clock_hz if hasattr(engine, "driver") else None
        # The simulator's own speed (the sim transport measures it; a board's transport has none).
        sim_speed = getattr(engine.driver.transport, "simulated_cycles_per_s", None) if hasattr(engine, "driver") else None
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    finally:
        engine.close()
    steps = len(counting.counters)
    figures = {"backend": backend, "model": str(model), "prompt_tokens": len(ids), "generated": len(out),
               "steps": steps, "wall_s": round(wall, 4), "host_tokens_per_s": round(steps / wall, 3)}
    manifest = getattr(engine, "manifest", None)
    if manifest:
        figures["bitstream"] = {k: manifest.get(k) for k in ("board", "design_hash", "clock_hz", "tool_version")}
    click.echo(f"backend          {backend}" + (f": {manifest.get('board')} bitstream, DESIGN_HASH "
                                                f"{manifest.get('design_hash')}" if manifest else ""))
    click.echo(f"model            {model.name}: D {image.config.D}, L {image.config.L}, V {image.config.V}")
    click.echo(f"steps            {len(ids)} prompt + {len(out)} generated = {steps} tokens through the model")
    click.echo(f"host             {wall:.3f} s wall: {figures['host_tokens_per_s']:,.2f} tokens/s "
               f"({1e3 * wall / steps:.2f} ms per token)")
    counters = [c for c in counting.counters if c]
    if counters and clock:
        mean = {k: sum(c[k] for c in counters) / len(counters) for k in counters[0]}
        device_s = mean["cycles_total"] / clock
        figures.update(clock_hz=clock, counters_mean={k: round(v, 1) for k, v in mean.items()},
                       device_s_per_token=device_s, device_tokens_per_s=round(1 / device_s, 3),
                       read_bytes_per_s=round(mean["bytes_read"] / device_s))
        click.echo(f"device           {mean['cycles_total']:,.0f} cycles per token at {clock / 1e6:g} MHz = "
                   f"{1e3 * device_s:.3f} ms: {1 / device_s:,.1f} tokens/s (hardware counters)")
        phases = ", ".join(f"{k[len('cycles_'):]} {mean[k]:,.0f}" for k in mean
                           if k.startswith("cycles_") and k not in ("cycles_total", "cycles_weight_wait"))
        click.echo(f"phases           {phases} cycles")
        click.echo(f"weight wait      {mean['cycles_weight_wait']:,.0f} cycles "
                   f"({100 * mean['cycles_weight_wait'] / mean['cycles_total']:.1f} % of the token)")
        click.echo(f"memory           {mean['bytes_read']:,.0f} bytes read per token: "
                   f"{mean['bytes_read'] / device_s / 1e9:.3f} GB/s")
    if sim_speed:
        figures["simulated_cycles_per_s"] = round(sim_speed)
        click.echo(f"simulator        {sim_speed:,.0f} simulated cycles per second")
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=1) + "\n")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise click.ClickException(f"--ids must be integers separated by spaces, got {text!r}") from None
    if not ids:
        raise click.ClickException("--ids is empty")
    return ids


@main.command()
@model_option
@click.option("--ids", required=True, help='token ids, e.g. "1 2 3"')
@click.option("--arith", type=click.Choice(["float", "float64", "integer"]), default="integer", show_default=True,
              help="float: the float golden model in float32 (the reference's arithmetic); float64: the same "
                   "in float64; integer: the accelerator's arithmetic")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="output .npy (T x V; float64 for --arith float64, else float32)")
def logits(model, ids, arith, out):
    """Write the logits of every position (.npy, one row per position)."""
    image = _load_image(model)
    token_ids = _parse_ids(ids)
    _check_ids(token_ids, image.config.V)
    if arith in ("float", "float64"):
        from mmfree.models.golden_float import FloatModel

        try:
            fm = FloatModel(image, dtype=np.float64 if arith == "float64" else np.float32)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        result = fm.forward(token_ids)
    else:
        from mmfree.models.golden_int import IntegerModel

        result = IntegerModel(image).forward(token_ids)
    np.save(out, np.asarray(result, np.float64 if arith == "float64" else np.float32))
    click.echo(f"wrote {out}: {len(token_ids)} x {image.config.V} logits ({arith} arithmetic)")


@main.command("eval")
@model_option
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2))
def eval_(model, text_file, max_tokens):
    """Perplexity of a text under float32, float64 and integer arithmetic, and their greedy agreement.

    The fidelity target (docs/numerics.md) compares integer with float64.
    """
    from tqdm import tqdm

    from mmfree.models.fidelity import evaluate

    image = _load_image(model)
    tok = _tokenizer(image)
    text = text_file.read_text(errors="replace")
    ids = ([image.config.bos_token_id] + tok.encode(text, add_special_tokens=False).ids)[:max_tokens]
    if len(ids) < 2:
        raise click.ClickException(f"{text_file}: too little text to evaluate")
    with tqdm(total=len(ids) - 1, desc="integer model", unit="tok", file=sys.stderr, leave=False) as bar:
        r = evaluate(image, ids, progress=lambda n: bar.update(n - bar.n))
    ref = r.perplexity("float64")
    click.echo(f"tokens                      {r.positions}")
    for arith in ("float32", "float64", "integer"):
        click.echo(f"perplexity {arith:8s}         {r.perplexity(arith):.4f}  "
                   f"({100 * (r.perplexity(arith) / ref - 1):+.3f} % vs float64)")
    for a, b in (("integer", "float64"), ("integer", "float32"), ("float32", "float64")):
        click.echo(f"greedy agreement {a}/{b}  {100 * r.agreement(a, b):.2f} %")


if __name__ == "__main__":
    main()
