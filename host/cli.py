"""``mmfree``: every command a user runs.

The host's own commands (convert, info, generate, serve, bench, logits, eval) are
defined here. The build and benchmark commands live with what they build or
measure (:mod:`mmfree.hw.flow.cli`, :mod:`mmfree.bench.cli`) and are found
through the entry-point group :data:`COMMAND_ENTRY_POINTS` (pyproject.toml),
never imported by name: ``mmfree --help`` lists them without loading
amaranth, and one whose extra is not installed says so in one line.

Every user error (missing or damaged file, token id out of range, empty
prompt, unknown backend, bad option value) ends with one ``Error: ...`` line
and a non-zero exit code (2 for option values, as click does); no traceback.
Output files are checked before any long work and written atomically
(:func:`mmfree.host.options.atomic_output`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from mmfree.contract.transport import first_line
from mmfree.models import checkpoint as ckpt
from mmfree.models.weight_image import (DEFAULT_ROWS_PER_BLOCK, MAX_ROWS_PER_BLOCK, ROWS_PER_BLOCK_STEP, ImageError,
                                        WeightImage, rows_per_block_problem)

from .backends import BackendError, open_backend
from .generate import generate as generate_ids
from .generate import generate_many
from .options import (DEFAULT_MODEL, FiniteFloat, InputFile, OutputFile, atomic_output, backend_options,
                      json_option, model_option, read_text, streams_option, text_option, write_output)

#: Entry-point group through which other folders offer ``mmfree`` sub-commands (click commands).
COMMAND_ENTRY_POINTS = "mmfree.commands"


def load_image(path) -> WeightImage:
    """The weight image at ``path``; a damaged or missing one is a one-line :class:`click.ClickException`."""
    try:
        return WeightImage.load(path)
    except ImageError as e:
        raise click.ClickException(str(e)) from None


def image_tokenizer(image: WeightImage, name):
    """The tokenizer an image carries; none or an unreadable one is a one-line error naming ``name``."""
    from tokenizers import Tokenizer

    raw = image.tokenizer_json()
    if raw is None:
        raise click.ClickException(f"{name}: the image carries no tokenizer.json; convert a checkpoint that has one")
    try:
        return Tokenizer.from_str(raw.decode())
    except Exception as e:  # tokenizers raises its own exception types (and UnicodeDecodeError)
        raise click.ClickException(f"{name}: the image's tokenizer.json is unreadable ({first_line(e)})") from None


def check_ids(ids, vocab: int, source: str = "") -> None:
    """Refuse a token id outside the model's vocabulary (``source``: what the ids came from, for the message)."""
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise click.ClickException(f"{source}token id {bad[0]} out of range "
                                   f"(vocabulary has {vocab} ids: 0..{vocab - 1})")


def text_ids(image: WeightImage, model, text_file) -> list[int]:
    """<s> and the ids of a UTF-8 text file through the image's tokenizer, at least one after <s>;
    one-line errors naming the file."""
    tok = image_tokenizer(image, model)
    ids = [image.config.bos_token_id] + tok.encode(read_text(text_file), add_special_tokens=False).ids
    if len(ids) < 2:
        raise click.ClickException(f"{text_file}: too little text to evaluate (no token after <s>)")
    check_ids(ids, image.config.V, f"{text_file} through {model}'s tokenizer: ")
    return ids


def _needs_extra(name: str, entry_point, error: BaseException) -> str:
    extras = list(entry_point.extras) or ["sim"]
    return (f"mmfree {name} needs the {' and '.join(extras)} extra{'s' if len(extras) > 1 else ''} "
            f"(pip install 'mmfree[{','.join(extras)}]'): {first_line(error)}")


class _MissingExtra(click.Command):
    """Stands in for a registered command whose module cannot be imported; running it says why."""

    def __init__(self, name: str, message: str):
        super().__init__(name, help=message, short_help="(not installed)", add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        self.message = message

    def invoke(self, ctx):
        raise click.ClickException(self.message)


class CommandGroup(click.Group):
    """The host's commands plus those registered in :data:`COMMAND_ENTRY_POINTS`, loaded by name.

    Usage errors are one line (the usage block is left out), and an entry-point
    command that fails to import a module says which extra to install.
    """

    @staticmethod
    def _registered() -> dict:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=COMMAND_ENTRY_POINTS)}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._registered()})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        entry_point = self._registered().get(name)
        if entry_point is None:
            return None
        try:
            return entry_point.load()
        except ImportError as e:
            return _MissingExtra(name, _needs_extra(name, entry_point, e))

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None
        except ImportError as e:
            entry_point = self._registered().get(ctx.invoked_subcommand or "")
            if entry_point is None or super().get_command(ctx, ctx.invoked_subcommand) is not None:
                raise
            raise click.ClickException(_needs_extra(ctx.invoked_subcommand, entry_point, e)) from None


def _one_line(e: click.UsageError) -> click.UsageError:
    """The same usage error without its usage block and help hint (``Error: ...`` only)."""
    if type(e).__name__ != "NoArgsIsHelpError":     # a bare group or command prints its help
        e.ctx = None
    return e


@click.group(cls=CommandGroup)
@click.version_option(package_name="mmfree")
def main():
    """FPGA accelerator for the MatMul-free LM: golden models, simulation, builds and board host."""


def _open_prompts(model, prompts, backend, hw_config, bitstream, streams=None):
    """(image, tokenizer, each prompt's ids with bos, opened backend) for generate and bench; one-line errors."""
    image = load_image(model)
    tok = image_tokenizer(image, model)
    ids = []
    for n, prompt in enumerate(prompts):
        where = f"prompt {n + 1}" if len(prompts) > 1 else "--prompt"
        if not prompt.strip():
            raise click.ClickException(f"{where} is empty")
        ids.append([image.config.bos_token_id] + tok.encode(prompt, add_special_tokens=False).ids)
        check_ids(ids[-1], image.config.V, f"{model}: {where}'s ")
    try:
        engine = open_backend(backend, image, hw_config=hw_config, bitstream=bitstream, streams=streams)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    return image, tok, ids, engine


def _read_prompts(prompts, prompt_file) -> list[str]:
    """The --prompt values, then --prompt-file's non-empty lines; at least one."""
    found = list(prompts)
    if prompt_file is not None:
        lines = [line.rstrip("\r") for line in read_text(prompt_file).split("\n")]
        found += [line for line in lines if line.strip()]
    if not found:
        raise click.UsageError("give a prompt: --prompt TEXT (repeatable) or --prompt-file FILE (one per line)")
    return found


def _rows_per_block(ctx, param, value):
    problem = rows_per_block_problem(value)
    if problem:
        raise click.BadParameter(problem, ctx, param)
    return value


@main.command()
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=OutputFile())
@click.option("--rows-per-block", default=DEFAULT_ROWS_PER_BLOCK, show_default=True,
              type=int, callback=_rows_per_block,
              help=f"rows per packed block (a multiple of {ROWS_PER_BLOCK_STEP}, at most {MAX_ROWS_PER_BLOCK}; "
                   "the build's bytes per beat must divide it)")
def convert(checkpoint_dir, out, rows_per_block):
    """Convert a HuggingFace MMfreeLM checkpoint directory to a weight image."""
    from tqdm import tqdm

    bar = None

    def progress(name):
        nonlocal bar
        if bar is None:      # only once the checkpoint has been read and checked: a bad one stays one line
            bar = tqdm(desc="convert", unit="record", file=sys.stderr, leave=False)
        bar.set_postfix_str(name)
        bar.update()

    try:
        data = ckpt.convert(checkpoint_dir, rows_per_block=rows_per_block, progress=progress)
    except (ckpt.CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    image = WeightImage.from_bytes(data, name=str(out))
    write_output(out, data)  # never a half-written image under the final name
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
@click.option("--prompt", "prompts", multiple=True, help="prompt text; repeat it for several prompts")
@click.option("--prompt-file", default=None, type=InputFile(), help="a UTF-8 file of prompts, one per line")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=0))
@click.option("--temperature", default=0.0, show_default=True, type=FiniteFloat(min=0.0), help="0 = greedy")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="0 = whole vocabulary")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True,
              help='print one JSON object per prompt: {"prompt": ..., "text": ..., "tokens": [ids]}')
@streams_option
@backend_options
def generate(model, prompts, prompt_file, max_new_tokens, temperature, top_k, seed, as_json, streams, backend,
             hw_config, bitstream):
    """Generate text for one or several prompts, decoded together (up to --streams at once).

    One prompt is printed as it is produced; several are printed each when it
    is complete, in the order given. Every prompt gets the tokens it would get
    alone (its own sampler, seeded with --seed).
    """
    texts = _read_prompts(prompts, prompt_file)
    image, tok, ids, engine = _open_prompts(model, texts, backend, hw_config, bitstream, streams)
    eos = image.config.eos_token_id
    outs: list[list[int]] = [[] for _ in texts]
    finished = [False] * len(texts)
    printed = 0
    shown = ""
    stream_one = len(texts) == 1 and not as_json

    def emit(n):
        if as_json:
            click.echo(json.dumps({"prompt": texts[n], "text": tok.decode(outs[n]), "tokens": outs[n]},
                                  ensure_ascii=False))
        else:
            click.echo(texts[n] + tok.decode(outs[n]) + ("\n" if n + 1 < len(texts) else ""))

    try:
        if stream_one:
            click.echo(texts[0], nl=False)
        for n, t in generate_many(engine, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                                  eos_id=eos):
            if t == eos:
                finished[n] = True
            else:
                outs[n].append(t)
                finished[n] = len(outs[n]) >= max_new_tokens
            if stream_one:
                text = tok.decode(outs[0])
                # Byte-level pieces can end mid-character: print only once complete.
                if not text.endswith("\ufffd"):
                    click.echo(text[len(shown):], nl=False)
                    shown = text
            while printed < len(texts) and finished[printed] and not stream_one:
                emit(printed)
                printed += 1
        if stream_one:
            click.echo(tok.decode(outs[0])[len(shown):])
        for n in range(printed if not stream_one else len(texts), len(texts)):
            emit(n)                       # max_new_tokens 0, or a prompt that never finished by count
    except BackendError as e:
        click.echo()  # end the partial line so the error stands on its own
        raise click.ClickException(str(e)) from None
    finally:
        engine.close()


@main.command()
@model_option
@backend_options
@streams_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: a free port")
@click.option("--max-tokens-limit", default=512, show_default=True, type=click.IntRange(min=1),
              help="the most max_tokens a request may ask")
@click.option("--max-prompt-tokens", default=1024, show_default=True, type=click.IntRange(min=1),
              help="the longest prompt in tokens, <s> included")
@click.option("--queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="requests that may wait for a sequence; one more is answered 429")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level")
def serve(model, backend, hw_config, bitstream, streams, host, port, max_tokens_limit, max_prompt_tokens, queue,
          log_level):
    """Serve the model over an OpenAI-compatible HTTP API (docs/serve.md).

    POST /v1/completions (with "stream": true, server-sent events), GET
    /v1/models, /health and /metrics (Prometheus). Requests share the
    backend's sequences (continuous batching); beyond them up to --queue wait.
    Needs the serve extra (starlette, uvicorn).
    """
    try:
        from . import serve as server
    except ImportError as e:
        raise click.ClickException(f"mmfree serve needs the serve extra (pip install 'mmfree[serve]'): "
                                   f"{first_line(e)}") from None
    image = load_image(model)
    tok = image_tokenizer(image, model)
    try:
        sock = server.bind(host, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    def opener():
        return open_backend(backend, image, hw_config=hw_config, bitstream=bitstream, streams=streams)

    limits = server.Limits(max_tokens=max_tokens_limit, max_prompt_tokens=max_prompt_tokens, queue=queue)
    try:
        app = server.open_app(image, tok, opener, model_id=Path(model).stem, backend_name=backend, limits=limits)
    except BackendError as e:
        sock.close()
        raise click.ClickException(str(e)) from None
    engine = app.state.engine
    click.echo(f"serving {Path(model).stem} on {server.url_of(sock)} (backend {backend}, {engine.streams} "
               f"sequence{'s' if engine.streams > 1 else ''})")
    server.run(app, sock, log_level=log_level)


class _CountingBackend:
    """A backend that keeps, per fed token, what kind of call fed it, the hardware counters and the
    host traffic of the driver's step (accelerator backends; ``None`` for the golden ones).

    The counters are read after each step with ``driver.counters()``: their 9 register reads are
    the benchmark's own, outside the step's host traffic (``StepResult.host``), which is what
    ``mmfree generate`` costs.
    """

    def __init__(self, backend):
        self.backend, self.steps = backend, []

    def reset(self):
        self.backend.reset()

    def _record(self, kind: str, value):
        driver = getattr(self.backend, "driver", None)
        if driver is None:
            self.steps.append((kind, None, None))
        else:
            self.steps.append((kind, driver.counters(), self.backend.last.host))
        return value

    def step(self, token):
        return self._record("generated", self.backend.step(token))

    def step_argmax(self, token):
        return self._record("generated", self.backend.step_argmax(token))

    def advance(self, token):
        return self._record("prompt", self.backend.advance(token))


def _host_figures(steps) -> dict:
    """Mean host traffic per generated-token step (from the driver's counting transport), and what
    it costs on each board by :mod:`mmfree.contract.host_costs`."""
    from mmfree.contract.host_costs import HOST_COSTS, host_us_per_token

    hosts = [h for kind, _, h in steps if kind == "generated" and h is not None]
    if not hosts:
        return {}
    def mean(name):
        return sum(getattr(h, name) for h in hosts) / len(hosts)
    reads, writes, nbytes = mean("register_reads"), mean("register_writes"), mean("buffer_bytes_read")
    invalidates, waits = mean("invalidates"), mean("waits")
    return {"host_register_reads_per_token": reads, "host_register_writes_per_token": writes,
            "host_register_accesses_per_token": reads + writes,
            "host_register_bytes_per_token": 4 * (reads + writes),
            "host_bytes_read_per_token": nbytes, "host_invalidates_per_token": invalidates,
            "host_waits_per_token": waits,
            "host_us_per_token_modelled": {
                board: round(host_us_per_token(board, reads, writes, nbytes, invalidates=invalidates, waits=waits), 1)
                for board in HOST_COSTS}}


@main.command()
@model_option
@click.option("--prompt", default="And God said", show_default=True, help="prompt text")
@click.option("--tokens", default=32, show_default=True, type=click.IntRange(min=1), help="tokens to generate")
@streams_option
@click.option("--prompt-tokens", default=None, type=click.IntRange(1, 1 << 16),
              help="with --streams: each sequence's prompt length (cut from the held-out text) [default: 128]")
@backend_options
@json_option
def bench(model, prompt, tokens, streams, prompt_tokens, backend, hw_config, bitstream, json_out):
    """Tokens per second of greedy generation, and the accelerator's counters per token.

    The host figure is wall time of whole steps (driver, transfers, host
    code). Accelerator backends also report the hardware counters (CYCLES_*,
    BYTES_READ) averaged over the steps, and the device time they mean at the
    accelerator's clock (for --backend sim: the simulated build's clock), and
    the host traffic of a generated token as the driver counted it (register
    reads and writes, bytes read from device buffers; the counter readout
    for this report is not part of it) with the host time it means on each
    board (contract/host_costs.py).

    With --streams B (or --prompt-tokens P) it measures many sequences
    instead (:func:`_bench_streams`): B prompts of P tokens prefilled, then
    --tokens decode passes of all B; prefill and aggregate decode tokens/s
    and the time to the first token.
    """
    import time

    if streams is not None or prompt_tokens is not None:
        return _bench_streams(model, streams, prompt_tokens or 128, tokens, backend, hw_config, bitstream, json_out)
    image, tok, (ids,), engine = _open_prompts(model, [prompt], backend, hw_config, bitstream)
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
    steps = len(counting.steps)
    figures = {"backend": backend, "model": str(model), "prompt_tokens": len(ids), "generated": len(out),
               "steps": steps, "wall_s": round(wall, 4), "host_tokens_per_s": round(steps / wall, 3)}
    manifest = getattr(engine, "manifest", None)
    if manifest:
        figures["bitstream"] = {k: manifest.get(k) for k in ("board", "design_hash", "clock_hz", "tool_version")}
    click.echo(f"backend          {backend}" + (f": {manifest.get('board')} bitstream, DESIGN_HASH "
                                                f"{manifest.get('design_hash')}" if manifest else ""))
    click.echo(f"model            {model.name}: D {image.config.D}, L {image.config.L}, V {image.config.V}")
    click.echo(f"steps            {len(ids)} prompt + {len(out)} generated: {steps} tokens through the model "
               "(the last generated one is not fed back)")
    click.echo(f"host             {wall:.3f} s wall: {figures['host_tokens_per_s']:,.2f} tokens/s "
               f"({1e3 * wall / steps:.2f} ms per token)")
    counters = [c for _, c, _ in counting.steps if c]
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
    host = _host_figures(counting.steps)
    if host:
        figures.update(host)
        modelled = ", ".join(f"{board} {us:,.0f} us" for board, us in host["host_us_per_token_modelled"].items())
        click.echo(f"host I/O         {host['host_register_reads_per_token']:.2f} register reads + "
                   f"{host['host_register_writes_per_token']:.2f} writes, "
                   f"{host['host_bytes_read_per_token']:,.0f} buffer bytes per generated token "
                   f"(modelled host time: {modelled})")
    if sim_speed:
        figures["simulated_cycles_per_s"] = round(sim_speed)
        click.echo(f"simulator        {sim_speed:,.0f} simulated cycles per second")
    if json_out is not None:
        write_output(json_out, json.dumps(figures, indent=1) + "\n")


def _bench_streams(model, streams, prompt_tokens, tokens, backend, hw_config, bitstream, json_out):
    """``mmfree bench --streams B --prompt-tokens P``: B sequences, each a different P-token piece of the
    held-out text, prefilled one after another (``prefill_tokens`` per pass), then ``tokens`` greedy
    decode passes of all B. Host wall time throughout; accelerator backends also give the device
    time of every pass (CYCLES_TOTAL at the build's clock)."""
    import time

    from .driver import Read
    from .options import HELDOUT_TEXT

    image = load_image(model)
    text = image_tokenizer(image, model).encode(read_text(HELDOUT_TEXT), add_special_tokens=False).ids
    try:
        engine = open_backend(backend, image, hw_config=hw_config, bitstream=bitstream, streams=streams)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    B = engine.streams if streams is None else streams
    prompts = [[image.config.bos_token_id] + [text[(b * prompt_tokens + i) % len(text)] for i in range(prompt_tokens - 1)]
               for b in range(B)]
    driver = getattr(engine, "driver", None)
    if driver is not None:
        engine.read_counters = True
    timeline = []                                   # (kind, tokens, wall s, device cycles or None)

    def timed(kind, n, call):
        start = time.perf_counter()
        cycles0 = engine.device_cycles if driver is not None else 0
        out = call()
        timeline.append((kind, n, time.perf_counter() - start,
                         engine.device_cycles - cycles0 if driver is not None else None))
        return out

    try:
        nxt = {}
        for b, ids in enumerate(prompts):
            engine.clear(b)
            for i in range(0, len(ids), engine.prefill_tokens):
                chunk = ids[i:i + engine.prefill_tokens]
                last = i + len(chunk) == len(ids)
                out = timed("prefill", len(chunk), lambda: engine.prefill(b, chunk, Read.ARGMAX if last else Read.NONE))
            nxt[b] = out
        for _ in range(tokens):
            nxt = timed("decode", B, lambda: engine.decode(nxt, Read.ARGMAX))
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    finally:
        engine.close()
    figures = {"backend": backend, "model": str(model), "streams": B, "prompt_tokens": prompt_tokens,
               "prefill_tokens_per_pass": engine.prefill_tokens, "decode_passes": tokens}
    click.echo(f"streams          {B} sequences, {prompt_tokens}-token prompts, {engine.prefill_tokens} prompt tokens "
               f"per prefill pass, {tokens} decode passes")
    clock = driver.transport.clock_hz if driver is not None else None
    for label, index, scale in (("host", 2, 1.0), ("device", 3, clock)):
        if scale is None:
            continue
        pre = [t for t in timeline if t[0] == "prefill"]
        dec = [t for t in timeline if t[0] == "decode"]
        first = sum(t[index] for t in pre[:-(-prompt_tokens // engine.prefill_tokens)]) / scale
        pre_s, dec_s = sum(t[index] for t in pre) / scale, sum(t[index] for t in dec) / scale
        fig = {"prefill_tokens_per_s": round(B * prompt_tokens / pre_s, 3), "ttft_ms": round(1e3 * first, 3),
               "aggregate_tokens_per_s": round(B * tokens / dec_s, 3),
               "per_sequence_tokens_per_s": round(tokens / dec_s, 3)}
        figures[label] = fig
        click.echo(f"{label:<16} prefill {fig['prefill_tokens_per_s']:,.2f} tokens/s, first token after "
                   f"{prompt_tokens} prompt tokens {fig['ttft_ms']:,.2f} ms; decode {fig['aggregate_tokens_per_s']:,.2f} "
                   f"tokens/s aggregate, {fig['per_sequence_tokens_per_s']:,.2f} per sequence"
                   + (f" (at {clock / 1e6:g} MHz)" if label == "device" else ""))
    if json_out is not None:
        write_output(json_out, json.dumps(figures, indent=1) + "\n")


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
@click.option("--out", type=OutputFile(), required=True,
              help="output .npy (T x V; float64 for --arith float64, else float32), written under this exact name")
def logits(model, ids, arith, out):
    """Write the logits of every position (.npy, one row per position)."""
    token_ids = _parse_ids(ids)
    image = load_image(model)
    check_ids(token_ids, image.config.V, "--ids: ")
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
    with atomic_output(out) as f:
        np.save(f, np.asarray(result, np.float64 if arith == "float64" else np.float32))
    click.echo(f"wrote {out}: {len(token_ids)} x {image.config.V} logits ({arith} arithmetic)")


@main.command("eval")
@model_option
@text_option
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2))
def eval_(model, text_file, max_tokens):
    """Perplexity of a text under float32, float64 and integer arithmetic, and their greedy agreement.

    The fidelity target (docs/numerics.md) compares integer with float64.
    """
    from tqdm import tqdm

    from mmfree.models.fidelity import evaluate

    image = load_image(model)
    ids = text_ids(image, model, text_file)[:max_tokens]
    with tqdm(total=len(ids) - 1, desc="integer model", unit="tok", file=sys.stderr, leave=False) as bar:
        r = evaluate(image, ids, progress=lambda n: bar.update(n - bar.n))
    ref = r.perplexity("float64")
    click.echo(f"tokens                      {r.positions}")
    for arith in ("float32", "float64", "integer"):
        click.echo(f"perplexity {arith:8s}         {r.perplexity(arith):.4f}  "
                   f"({100 * (r.perplexity(arith) / ref - 1):+.3f} % vs float64)")
    for a, b in (("integer", "float64"), ("integer", "float32"), ("float32", "float64")):
        click.echo(f"greedy agreement {a}/{b}  {100 * r.agreement(a, b):.2f} %")


__all__ = ["main", "CommandGroup", "COMMAND_ENTRY_POINTS", "DEFAULT_MODEL", "load_image", "image_tokenizer", "check_ids", "text_ids"]

if __name__ == "__main__":   # python -m mmfree.host.cli, where the mmfree script is not on PATH
    main()
