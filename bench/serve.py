"""A bounded load test of ``mmfree serve`` on loopback.

Starts the server in this process (:func:`mmfree.host.serve.running`) on a
free port and drives ``--clients`` concurrent streaming clients (httpx) until
``--requests`` greedy completions of ``--max-tokens`` tokens have been
answered. Each prompt is the first ``--prompt-words`` words of a different
line of the bundled model's held-out text. Prints requests/s, p50/p99 time to
the first token and between tokens, and aggregate tokens/s in host wall time;
the same for the decode passes alone (from ``/metrics``: a prompt's prefill
passes cost the same with one client as with B, so the decode passes say how
well B sequences share a pass); on an accelerator backend also the device
time (CYCLES_TOTAL of every pass at the build's clock).

``--compare`` (the default for ``--backend sim``) first runs one client, then
B clients (B = the backend's sequences), each sending ``--requests`` /
``--clients`` requests, and says how the aggregate rate under B clients
compares with B times the one-client rate.

    python -m mmfree.bench.serve --backend golden|float|sim [--clients 16 --requests 64 --max-tokens 16]
"""
from __future__ import annotations

import asyncio
import json
import time

import click
import numpy as np

from mmfree.host.backends import BackendError, open_backend
from mmfree.host.cli import image_tokenizer, load_image
from mmfree.host.options import HELDOUT_TEXT, backend_options, json_option, model_option, write_output


def load_prompts(count: int, words: int) -> list[str]:
    """The first ``words`` words of ``count`` different held-out lines."""
    lines = [line.split() for line in HELDOUT_TEXT.read_text().splitlines() if len(line.split()) >= words]
    return [" ".join(lines[n % len(lines)][:words]) for n in range(count)]


async def _one(client, url: str, prompt: str, max_tokens: int) -> dict:
    """One streaming request: submission time, each event's arrival time, tokens."""
    start, arrivals = time.perf_counter(), []
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise click.ClickException(f"the server answered {r.status_code}: {(await r.aread()).decode()}")
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if "error" in json.loads(line[len("data: "):]):
                    raise click.ClickException(f"the server failed a request: {line}")
                arrivals.append(time.perf_counter())
    return {"start": start, "arrivals": arrivals}


async def _load(url: str, prompts: list[str], clients: int, max_tokens: int) -> tuple[list[dict], float]:
    import httpx

    todo = iter(prompts)
    results: list[dict] = []

    async def client_loop(client):
        for prompt in todo:                   # shared: each client takes the next prompt when it is free
            results.append(await _one(client, url, prompt, max_tokens))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(clients)))
    return results, time.perf_counter() - start


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value}."""
    import httpx

    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in httpx.get(f"{url}/metrics").text.splitlines() if not line.startswith("#"))}


def run_load(url: str, prompts: list[str], clients: int, max_tokens: int, clock_hz: float | None) -> dict:
    """Figures of one load: end to end in host wall time, and the decode passes alone (host wall time;
    device time where the backend counts cycles: CYCLES_TOTAL at the build's clock)."""
    before = scrape(url)
    results, wall = asyncio.run(_load(url, prompts, clients, max_tokens))
    after = scrape(url)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    ttft = [r["arrivals"][0] - r["start"] for r in results]
    itl = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    tokens = sum(len(r["arrivals"]) for r in results)
    ms = lambda xs, q: round(1e3 * float(np.percentile(xs, q)), 2) if xs else None  # noqa: E731
    figures = {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 3),
               "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(tokens / wall, 3),
               "ttft_ms_p50": ms(ttft, 50), "ttft_ms_p99": ms(ttft, 99),
               "itl_ms_p50": ms(itl, 50), "itl_ms_p99": ms(itl, 99)}
    decoded = delta.get('mmfree_pass_tokens_total{kind="decode"}', 0)
    seconds = delta.get('mmfree_pass_seconds_total{kind="decode"}', 0)
    if decoded and seconds:
        figures["decode_tokens_per_s"] = round(decoded / seconds, 3)
    cycles = {kind: delta.get(f'mmfree_device_cycles_total{{kind="{kind}"}}', 0) for kind in ("prefill", "decode")}
    if clock_hz and cycles["decode"]:
        figures.update(device_s=round(sum(cycles.values()) / clock_hz, 6),
                       device_tokens_per_s=round(tokens * clock_hz / sum(cycles.values()), 1),
                       device_decode_tokens_per_s=round(decoded * clock_hz / cycles["decode"], 1))
    return figures


def report(label: str, f: dict) -> None:
    click.echo(f"{label:<14} {f['clients']} clients, {f['requests']} requests, {f['tokens']} tokens in "
               f"{f['wall_s']:.2f} s: {f['requests_per_s']:.2f} requests/s, {f['tokens_per_s']:.2f} tokens/s aggregate")
    click.echo(f"{'':<14} time to first token p50 {f['ttft_ms_p50']} ms, p99 {f['ttft_ms_p99']} ms; "
               f"between tokens p50 {f['itl_ms_p50']} ms, p99 {f['itl_ms_p99']} ms")
    if "decode_tokens_per_s" in f:
        click.echo(f"{'':<14} decode passes alone: {f['decode_tokens_per_s']:,.2f} tokens/s")
    if "device_tokens_per_s" in f:
        click.echo(f"{'':<14} device time {1e3 * f['device_s']:.1f} ms: {f['device_tokens_per_s']:,.1f} tokens/s; "
                   f"decode passes alone {f['device_decode_tokens_per_s']:,.1f} tokens/s "
                   "(CYCLES_TOTAL at the build's clock)")


@click.command()
@model_option
@backend_options
@click.option("--streams", default=None, type=click.IntRange(1, 256), help="golden/float: sequences [default 8]")
@click.option("--clients", default=None, type=click.IntRange(min=1), help="[default: 2 x the sequences]")
@click.option("--requests", default=None, type=click.IntRange(min=1), help="[default: 4 x --clients]")
@click.option("--max-tokens", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--prompt-words", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--compare/--no-compare", default=None,
              help="also run one client and compare [default: on for sim]")
@json_option
def main(model, backend, hw_config, bitstream, streams, clients, requests, max_tokens, prompt_words, compare,
         json_out):
    """Load-test mmfree serve on loopback: requests/s, time to first token, tokens/s."""
    from mmfree.host.serve import Limits, open_app, running

    image = load_image(model)
    tok = image_tokenizer(image, model)

    def opener():
        return open_backend(backend, image, hw_config=hw_config, bitstream=bitstream, streams=streams)

    try:
        app = open_app(image, tok, opener, model_id=model.stem, backend_name=backend,
                       limits=Limits(max_tokens=512, queue=max(64, requests or 0)))
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    engine = app.state.engine
    B = engine.streams
    clients = clients or 2 * B
    requests = requests or 4 * clients
    compare = backend == "sim" if compare is None else compare
    clock = getattr(engine.metrics, "clock_hz", None)
    prompts = load_prompts(requests, prompt_words)
    figures = {"backend": backend, "model": model.name, "sequences": B, "max_tokens": max_tokens,
               "prompt_words": prompt_words}
    click.echo(f"server         {model.stem} on {backend}, {B} sequences; prompts of {prompt_words} words, "
               f"{max_tokens} greedy tokens each; host wall time on loopback")
    with running(app) as url:
        if compare:                            # each client of both runs sends `each` requests
            each = max(2, requests // clients)
            one = run_load(url, load_prompts(each, prompt_words), 1, max_tokens, clock)
            report("one client", one)
            full = run_load(url, load_prompts(each * B, prompt_words), B, max_tokens, clock)
            report(f"{B} clients", full)
            figures.update(one_client=one, b_clients=full)
            for what, key in (("host, end to end", "tokens_per_s"), ("host, decode", "decode_tokens_per_s"),
                              ("device, end to end", "device_tokens_per_s"),
                              ("device, decode", "device_decode_tokens_per_s")):
                if key in one and key in full:
                    ratio = full[key] / (B * one[key])
                    figures[f"ratio_{key}"] = round(ratio, 3)
                    click.echo(f"{'ratio':<14} {what}: {full[key]:,.2f} tokens/s under {B} clients = {ratio:.3f} x "
                               f"{B} x one client's {one[key]:,.2f} (target 0.8)")
        load = run_load(url, prompts, clients, max_tokens, clock)
        report("load", load)
        figures["load"] = load
    if json_out is not None:
        write_output(json_out, json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
