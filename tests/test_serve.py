"""``mmfree serve`` (issue 15) against real clients on loopback.

Each completion must be what the same prompt gets alone through ``mmfree
generate`` (greedy, and sampled with a seed), whatever runs beside it: 16
concurrent streams and 64 concurrent requests on the golden backend, 4 on the
sim backend (``-m sim``). A client that leaves frees its sequence before the
next weight pass; bad requests are 4xx with an OpenAI error object; a backend
error fails the requests of its pass (5xx) and the others go on unchanged.
The servers run in this process (:func:`mmfree.host.serve.running`) on a free
port; the clients are httpx and the ``openai`` package.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from mmfree.host.backends import BackendError, open_backend
from mmfree.host.cli import image_tokenizer, main
from mmfree.host.generate import generate_many
from mmfree.host.serve import CompletionText, Limits, open_app, running

from helpers import KJV_IMAGE, REPO

HELDOUT = REPO / "models" / "kjv" / "heldout.txt"

PROMPTS = ["And God said", "In the beginning", "And the LORD spake unto Moses, saying,", "Blessed are the",
           "The LORD is my shepherd", "Thus saith the LORD of hosts", "And it came to pass in those days, that",
           "For God so loved the world", "Now the serpent was more subtil than any beast of the field",
           "Let there be light", "And Jesus answered and said unto them,", "O give thanks unto the LORD; for he is",
           "Hear, O Israel:", "And he said unto them, Go ye into all the world, and preach", "Praise ye the LORD.",
           "Wherefore"]
#: Generous: the 2-core machine may be busy with other builds.
CLIENT_TIMEOUT = httpx.Timeout(300.0)


@pytest.fixture(scope="module")
def tokenizer(kjv):
    return image_tokenizer(kjv, KJV_IMAGE)


def serve_golden(image, tokenizer, *, streams=8, opener=None, **limits):
    """An application on the golden backend (or ``opener``'s backend) with ``limits``."""
    opener = opener or (lambda: open_backend("golden", image, streams=streams))
    limits = Limits(**{"max_tokens": 64, "max_prompt_tokens": 256, **limits})
    return open_app(image, tokenizer, opener, model_id="kjv", backend_name="golden", limits=limits)


@pytest.fixture(scope="module")
def golden_url(kjv, tokenizer):
    with running(serve_golden(kjv, tokenizer)) as url:
        yield url


def generate_alone(prompts, tokens, *extra):
    """``mmfree generate --json --streams 1``: each prompt alone on one sequence of a golden backend
    (one after another); {prompt: text}."""
    args = ["generate", "--max-new-tokens", str(tokens), "--json", "--streams", "1", *extra]
    for p in prompts:
        args += ["--prompt", p]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return {o["prompt"]: o["text"] for o in map(json.loads, r.output.splitlines())}


async def stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One streaming completion: its text pieces, finish reason, usage and whether [DONE] came."""
    out = {"pieces": [], "finish": None, "usage": None, "done": False, "error": None}
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            if data == "[DONE]":
                out["done"] = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                out["error"] = chunk["error"]
                continue
            if chunk["choices"]:
                assert chunk["object"] == "text_completion" and chunk["model"] == "kjv"
                out["pieces"].append(chunk["choices"][0]["text"])
                out["finish"] = chunk["choices"][0]["finish_reason"] or out["finish"]
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
    out["text"] = "".join(out["pieces"])
    return out


async def complete(client: httpx.AsyncClient, url: str, body: dict) -> httpx.Response:
    return await client.post(f"{url}/v1/completions", json=body)


def gather(*coroutine_factories):
    """Run the coroutines (made in the loop) concurrently; their results in order."""
    async def main_():
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(make(client) for make in coroutine_factories))
    return asyncio.run(main_())


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# Determinism under concurrency
# --------------------------------------------------------------------------------------------
def test_16_concurrent_streams_equal_mmfree_generate_alone(golden_url):
    tokens = 12
    want = generate_alone(PROMPTS, tokens)
    start_tokens = metric(golden_url, "mmfree_tokens_generated_total")
    got = gather(*(lambda c, p=p: stream(c, golden_url, {"model": "kjv", "prompt": p, "max_tokens": tokens,
                                                          "temperature": 0, "stream_options": {"include_usage": True}})
                   for p in PROMPTS))
    for p, out in zip(PROMPTS, got):
        assert out["text"] == want[p], p
        assert out["done"] and out["error"] is None
        assert len(out["pieces"]) == out["usage"]["completion_tokens"] <= tokens     # one event per token
        assert out["finish"] == ("length" if out["usage"]["completion_tokens"] == tokens else "stop")
    assert metric(golden_url, "mmfree_tokens_generated_total") - start_tokens == sum(
        o["usage"]["completion_tokens"] for o in got)
    assert metric(golden_url, "mmfree_active_sequences") == 0


def test_sampling_with_a_seed_is_the_same_alone_and_beside_others(golden_url):
    """Sampled and greedy requests share decode passes; each keeps its own generator."""
    tokens, cases = 10, [(p, 0.8, 40, seed) for seed, p in enumerate(PROMPTS[:6])] + [(PROMPTS[6], 0.0, 0, 0)]
    want = {}
    for p, t, k, seed in cases:
        want[p] = generate_alone([p], tokens, "--temperature", str(t), "--top-k", str(k), "--seed", str(seed))[p]
    got = gather(*(lambda c, p=p, t=t, k=k, s=s: complete(c, golden_url, {"prompt": p, "max_tokens": tokens,
                                                                          "temperature": t, "top_k": k, "seed": s})
                   for p, t, k, s in cases))
    for (p, *_), r in zip(cases, got):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert body["choices"][0]["text"] == want[p], p
        assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] == body["usage"]["total_tokens"]


def test_64_concurrent_requests_all_complete(kjv, tokenizer):
    """64 different one-word prompts (short: the test's time goes to the golden model's passes)."""
    words = dict.fromkeys(w.strip(".,;:?!") for w in HELDOUT.read_text().split()[:2000])
    prompts = [w for w in words if w.isalpha()][:64]
    ids = [[kjv.config.bos_token_id] + tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    tokens = 3
    outs = {n: [] for n in range(64)}
    for n, t in generate_many(open_backend("golden", kjv), ids, tokens, eos_id=kjv.config.eos_token_id):
        if t != kjv.config.eos_token_id:
            outs[n].append(t)
    with running(serve_golden(kjv, tokenizer)) as url:
        got = gather(*(lambda c, p=p: stream(c, url, {"prompt": p, "max_tokens": tokens, "temperature": 0})
                       for p in prompts))
        assert metric(url, "mmfree_requests_total", '{status="200"}') == 64
        assert metric(url, "mmfree_queue_length") == 0 and metric(url, "mmfree_active_sequences") == 0
    for n, out in enumerate(got):
        assert out["done"] and out["error"] is None and out["text"] == tokenizer.decode(outs[n]), prompts[n]


def test_openai_client_streams_and_completes(golden_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{golden_url}/v1", api_key="none", timeout=300)
    want = generate_alone(["And God said"], 8)["And God said"]
    assert [m.id for m in client.models.list().data] == ["kjv"]
    done = client.completions.create(model="kjv", prompt="And God said", max_tokens=8, temperature=0)
    assert done.choices[0].text == want and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 8
    pieces = [c.choices[0].text for c in client.completions.create(model="kjv", prompt="And God said", max_tokens=8,
                                                                    temperature=0, stream=True)]
    assert "".join(pieces) == want and len(pieces) == 8
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="kjv", messages=[{"role": "user", "content": "hello"}])


# --------------------------------------------------------------------------------------------
# Stop strings and end of sequence
# --------------------------------------------------------------------------------------------
def test_stop_strings_end_the_text_before_them(golden_url):
    full = generate_alone(["And God said"], 12)["And God said"]     # " unto him, Arise, get thee down, ..."
    stop = full.split()[2]                                         # a word in the middle
    want = full[:full.index(stop)]
    r = httpx.post(f"{golden_url}/v1/completions", timeout=CLIENT_TIMEOUT,
                   json={"prompt": "And God said", "max_tokens": 12, "temperature": 0, "stop": ["zzz", stop]})
    assert r.json()["choices"][0] == {"index": 0, "text": want, "logprobs": None, "finish_reason": "stop"}
    out = gather(lambda c: stream(c, golden_url, {"prompt": "And God said", "max_tokens": 12, "temperature": 0,
                                                  "stop": stop}))[0]
    assert out["text"] == want and out["finish"] == "stop" and out["done"]


class _Chars:
    """A tokenizer whose ids are characters (``decode`` of a list is their string)."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_completion_text_holds_back_what_may_begin_a_stop_string():
    text = CompletionText(_Chars(), ("END", "XY"))
    pieces = [text.add(ord(c)) for c in "abEN"]
    assert pieces == ["a", "b", "", ""] and not text.stopped
    assert text.add(ord("d")) == "ENd"                             # "ENd" begins no stop string
    assert [text.add(ord(c)) for c in "XEND"] == ["", "X", "", ""] and text.stopped
    assert text.text == "abENdX" and text.rest() == ""
    spans = CompletionText(_Chars(), ("\n\n",))
    assert "".join(spans.add(ord(c)) for c in "a\nb\n") + spans.rest() == "a\nb\n" and not spans.stopped


# --------------------------------------------------------------------------------------------
# Clients that leave, a full queue
# --------------------------------------------------------------------------------------------
def test_a_client_that_leaves_frees_its_sequence_at_once(kjv, tokenizer):
    with running(serve_golden(kjv, tokenizer, streams=1, max_tokens=500)) as url:
        async def leave_after_two(client):
            async with client.stream("POST", f"{url}/v1/completions",
                                     json={"prompt": "And God said", "max_tokens": 500, "stream": True}) as r:
                lines = 0
                async for line in r.aiter_lines():
                    lines += line.startswith("data: ")
                    if lines == 2:
                        break                                   # closes the connection mid-stream
        gather(leave_after_two)
        wait_until(lambda: metric(url, "mmfree_active_sequences") == 0)
        assert metric(url, "mmfree_tokens_generated_total") < 50        # it stopped long before 500
        assert metric(url, "mmfree_requests_total", '{status="499"}') == 1
        # The one sequence serves the next request.
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "And God said", "max_tokens": 3, "temperature": 0},
                       timeout=CLIENT_TIMEOUT)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_full_queue_answers_429_and_a_queued_client_that_leaves_is_dropped(kjv, tokenizer):
    with running(serve_golden(kjv, tokenizer, streams=1, queue=1, max_tokens=500)) as url:
        async def scenario(client):
            long = {"prompt": "And God said", "max_tokens": 500, "temperature": 0}
            holder = asyncio.ensure_future(complete(client, url, long))          # takes the one sequence
            await asyncio.to_thread(wait_until, lambda: metric(url, "mmfree_active_sequences") == 1)
            waiter = asyncio.ensure_future(complete(client, url, long))          # waits in the queue
            await asyncio.to_thread(wait_until, lambda: metric(url, "mmfree_queue_length") == 1)
            full = await complete(client, url, long)
            waiter.cancel()                                                     # the queued client leaves
            await asyncio.to_thread(wait_until, lambda: metric(url, "mmfree_queue_length") == 0)
            holder.cancel()
            await asyncio.to_thread(wait_until, lambda: metric(url, "mmfree_active_sequences") == 0)
            return full
        full = gather(scenario)[0]
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full" and "queue is full" in full.json()["error"]["message"]
        assert metric(url, "mmfree_requests_total", '{status="499"}') == 2
        assert metric(url, "mmfree_tokens_generated_total") < 400


# --------------------------------------------------------------------------------------------
# Bad requests
# --------------------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("malformed JSON", b'{"prompt": "x", ', 400, None, "not valid JSON"),
    ("not an object", b'["x"]', 400, None, "JSON object"),
    ("no prompt", {"max_tokens": 2}, 400, "prompt", "required"),
    ("prompt of the wrong type", {"prompt": 5}, 400, "prompt", "string or a non-empty list"),
    ("several prompts", {"prompt": ["a", "b"]}, 400, "prompt", "one prompt per request"),
    ("max_tokens a string", {"prompt": "x", "max_tokens": "8"}, 400, "max_tokens", "must be an integer"),
    ("max_tokens a float", {"prompt": "x", "max_tokens": 8.5}, 400, "max_tokens", "must be an integer"),
    ("max_tokens 0", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "out of range (1..64"),
    ("max_tokens negative", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens", "out of range"),
    ("max_tokens above the limit", {"prompt": "x", "max_tokens": 65}, 400, "max_tokens", "this server's limit"),
    ("temperature a string", {"prompt": "x", "temperature": "hot"}, 400, "temperature", "finite number"),
    ("temperature negative", {"prompt": "x", "temperature": -1}, 400, "temperature", "finite number"),
    ("top_k a float", {"prompt": "x", "top_k": 1.5}, 400, "top_k", "must be an integer"),
    ("seed negative", {"prompt": "x", "seed": -1}, 400, "seed", "out of range"),
    ("stream a string", {"prompt": "x", "stream": "yes"}, 400, "stream", "true or false"),
    ("stop a number", {"prompt": "x", "stop": 3}, 400, "stop", "non-empty string"),
    ("stop empty", {"prompt": "x", "stop": [""]}, 400, "stop", "non-empty string"),
    ("n 2", {"prompt": "x", "n": 2}, 400, "n", "not supported"),
    ("unknown model", {"model": "gpt-4", "prompt": "x"}, 404, "model", "does not exist"),
    ("model a number", {"model": 7, "prompt": "x"}, 400, "model", "must be a string"),
    ("prompt over the limit", {"prompt": "and " * 300}, 400, "prompt", "at most 256"),
    ("token id above the vocabulary", {"prompt": [1, 4096]}, 400, "prompt", "token id 4096 out of range"),
    ("negative token id", {"prompt": [1, -2]}, 400, "prompt", "token id -2 out of range"),
    ("empty token list", {"prompt": []}, 400, "prompt", "non-empty list"),
]


@pytest.mark.parametrize("body,status,param,message", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_error_object_and_the_server_keeps_serving(golden_url, body, status, param, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{golden_url}/v1/completions", content=content, headers={"Content-Type": "application/json"},
                   timeout=CLIENT_TIMEOUT)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]
    ok = httpx.post(f"{golden_url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=CLIENT_TIMEOUT)
    assert ok.status_code == 200


def test_models_health_metrics_chat_and_unknown_paths(golden_url):
    assert httpx.get(f"{golden_url}/v1/models").json()["data"][0]["id"] == "kjv"
    assert httpx.get(f"{golden_url}/health").json() == {"status": "ok", "model": "kjv", "backend": "golden",
                                                        "sequences": 8, "active": 0, "queued": 0}
    chat = httpx.post(f"{golden_url}/v1/chat/completions", json={"model": "kjv", "messages": []})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "chat_template_missing"
    missing = httpx.get(f"{golden_url}/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{golden_url}/v1/completions").status_code == 405
    text = httpx.get(f"{golden_url}/metrics").text
    for name in ("mmfree_tokens_generated_total", "mmfree_requests_total", "mmfree_queue_length",
                 "mmfree_active_sequences", "mmfree_tokens_per_second", "mmfree_passes_total"):
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"\})? [-0-9.e+]+', line), line


# --------------------------------------------------------------------------------------------
# Device errors
# --------------------------------------------------------------------------------------------
class FaultyBackend:
    """A golden backend whose passes raise :class:`BackendError` when ``fault(kind, tokens)`` says so."""

    def __init__(self, inner, fault):
        self.inner, self.fault = inner, fault
        self.streams, self.prefill_tokens = inner.streams, inner.prefill_tokens

    def clear(self, seq):
        self.inner.clear(seq)

    def prefill(self, seq, tokens, read):
        if self.fault("prefill", tokens):
            raise BackendError("token 1: no STATUS.done within 1 ms of device time (injected)")
        return self.inner.prefill(seq, tokens, read)

    def decode(self, tokens, read):
        if self.fault("decode", tokens):
            raise BackendError("token 7: the accelerator stopped with error BAD_RECORD (injected)")
        return self.inner.decode(tokens, read)

    def close(self):
        self.inner.close()


POISON = 4000   # a token id no prompt here contains: its prefill raises


def test_a_device_error_fails_its_pass_and_the_others_go_on(kjv, tokenizer):
    opened = []

    def opener():
        opened.append(FaultyBackend(open_backend("golden", kjv, streams=4),
                                    lambda kind, tokens: kind == "prefill" and POISON in tokens))
        return opened[-1]

    prompts, tokens = PROMPTS[:3], 10
    want = generate_alone(prompts, tokens)
    with running(serve_golden(kjv, tokenizer, opener=opener)) as url:
        poisoned = {"prompt": [kjv.config.bos_token_id, 100, POISON, 7], "max_tokens": tokens}
        got = gather(*(lambda c, p=p: stream(c, url, {"prompt": p, "max_tokens": tokens, "temperature": 0})
                       for p in prompts[:2]),
                     lambda c: complete(c, url, poisoned),
                     lambda c: stream(c, url, {"prompt": prompts[2], "max_tokens": tokens, "temperature": 0}))
        failed = got[2]
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "device_error"
        assert "BAD_RECORD" in failed.json()["error"]["message"] or "STATUS.done" in failed.json()["error"]["message"]
        for p, out in zip(prompts, [got[0], got[1], got[3]]):
            assert out["text"] == want[p] and out["done"], p        # replayed into the reopened backend
        assert len(opened) == 2 and metric(url, "mmfree_device_resets_total") == 1
        assert metric(url, "mmfree_device_errors_total") == 1


def test_a_device_error_mid_stream_and_a_backend_that_will_not_reopen(kjv, tokenizer):
    passes, reopen_fails = [0], [False]

    def opener():
        if reopen_fails[0]:
            raise BackendError("the simulator exited (injected)")
        def fault(kind, tokens):
            passes[0] += kind == "decode"
            return kind == "decode" and passes[0] == 3
        return FaultyBackend(open_backend("golden", kjv, streams=2), fault)

    with running(serve_golden(kjv, tokenizer, opener=opener)) as url:
        body = {"prompt": "And God said", "max_tokens": 8, "temperature": 0}
        a, b = gather(lambda c: stream(c, url, body), lambda c: stream(c, url, body))
        for out in (a, b):           # both in the third decode pass: two tokens, then the error event
            assert out["error"]["code"] == "device_error" and out["error"]["type"] == "server_error"
            assert 1 <= len(out["pieces"]) <= 3 and not out["done"]
        again = httpx.post(f"{url}/v1/completions", json=body, timeout=CLIENT_TIMEOUT)
        assert again.status_code == 200, again.text
        passes[0], reopen_fails[0] = 0, True
        gather(lambda c: stream(c, url, body))
        down = httpx.post(f"{url}/v1/completions", json=body, timeout=CLIENT_TIMEOUT)
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable"
        assert httpx.get(f"{url}/health").status_code == 503
        reopen_fails[0] = False       # the next request opens it again
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=CLIENT_TIMEOUT).status_code == 200
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def mmfree_serve(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "mmfree")
    return subprocess.Popen([exe, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mmfree_serve_prints_its_address_and_serves():
    proc = mmfree_serve("--port", "0", "--streams", "2")
    try:
        line = proc.stdout.readline().strip()
        found = re.fullmatch(r"serving kjv on (http://127\.0\.0\.1:\d+) \(backend golden, 2 sequences\)", line)
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        r = httpx.post(f"{found.group(1)}/v1/completions", timeout=CLIENT_TIMEOUT,
                       json={"prompt": "And God said", "max_tokens": 8, "temperature": 0})
        assert r.json()["choices"][0]["text"] == generate_alone(["And God said"], 8)["And God said"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),
    (["--queue", "0"], "0 is not in the range x>=1"),
    (["--host", "203.0.113.7"], "cannot listen on 203.0.113.7:0"),
    (["--backend", "golden", "--hw-config", "pynq-z2"], "--hw-config applies to the sim and pynq backends only"),
])
def test_mmfree_serve_bad_options_are_one_line(args, message):
    r = CliRunner().invoke(main, ["serve", "--port", "0", *args])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and r.output.startswith("Error: ") and message in r.output


def test_mmfree_serve_on_a_port_in_use_is_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert r.exit_code == 1 and r.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# --------------------------------------------------------------------------------------------
# The accelerator RTL
# --------------------------------------------------------------------------------------------
@pytest.mark.sim
def test_sim_backend_serves_4_concurrent_streams_as_each_alone(kjv, tokenizer):
    prompts, tokens = PROMPTS[:4], 8
    # One command per prompt: a sim build's columns are its sequences, whatever --streams says.
    want = {p: generate_alone([p], tokens, "--backend", "sim")[p] for p in prompts}
    app = open_app(kjv, tokenizer, lambda: open_backend("sim", kjv), model_id="kjv", backend_name="sim")
    assert app.state.engine.streams >= 2
    with running(app) as url:
        got = gather(*(lambda c, p=p: stream(c, url, {"prompt": p, "max_tokens": tokens, "temperature": 0})
                       for p in prompts))
        assert metric(url, "mmfree_device_cycles_total", '{kind="decode"}') > 0
        assert metric(url, "mmfree_device_last_pass", '{counter="cycles_total"}') > 0
    for p, out in zip(prompts, got):
        assert out["text"] == want[p] and out["done"], p
