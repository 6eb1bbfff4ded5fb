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

from mmfree.hw.configs import CONFIGS as HW_CONFIGS
from mmfree.hw.configs import DEFAULT_SIM_CONFIG
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
              help=f"accelerator configuration of --backend sim/pynq [default: {DEFAULT_SIM_CONFIG} for sim, "
                   "pynq-z2 for pynq]")
@click.option("--bitstream", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="--backend pynq: the overlay .bit (default bitstreams/<hw-config>/mmfree.bit)")
def generate(model, prompt, max_new_tokens, temperature, top_k, seed, backend, hw_config, bitstream):
    """Generate text, printing it as it is produced."""
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


def perplexities(image: WeightImage, ids: list[int], progress: bool = True) -> dict:
    """Float and integer perplexity over ``ids`` (predicting ids[1:]) and greedy agreement."""
    from tqdm import tqdm

    from mmfree.models.golden_float import FloatModel
    from mmfree.models.golden_int import IntegerModel

    def nll(logits_rows, targets):
        z = logits_rows - logits_rows.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(targets)), targets]

    ids = np.asarray(ids, np.int64)
    fl = FloatModel(image).forward(ids[:-1]).astype(np.float64)
    im = IntegerModel(image)
    state = im.initial_state()
    rows = []
    for t in tqdm(ids[:-1], desc="integer model", unit="tok", file=sys.stderr, disable=not progress, leave=False):
        lg, state = im.step(int(t), state)
        rows.append(lg)
    from mmfree.models import numerics as nx

    il = nx.act_to_float(np.stack(rows))
    targets = ids[1:]
    return {"tokens": len(targets), "ppl_float": float(np.exp(nll(fl, targets).mean())),
            "ppl_integer": float(np.exp(nll(il, targets).mean())),
            "greedy_agreement": float(np.mean(fl.argmax(1) == il.argmax(1)))}


@main.command("eval")
@model_option
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2))
def eval_(model, text_file, max_tokens):
    """Perplexity of a text under float and integer arithmetic, and their greedy agreement."""
    image = _load_image(model)
    tok = _tokenizer(image)
    text = text_file.read_text(errors="replace")
    ids = ([image.config.bos_token_id] + tok.encode(text, add_special_tokens=False).ids)[:max_tokens]
    if len(ids) < 2:
        raise click.ClickException(f"{text_file}: too little text to evaluate")
    r = perplexities(image, ids)
    click.echo(f"tokens            {r['tokens']}")
    click.echo(f"perplexity float  {r['ppl_float']:.4f}")
    click.echo(f"perplexity int    {r['ppl_integer']:.4f}  ({100 * (r['ppl_integer'] / r['ppl_float'] - 1):+.3f} %)")
    click.echo(f"greedy agreement  {100 * r['greedy_agreement']:.2f} %")


if __name__ == "__main__":
    main()
