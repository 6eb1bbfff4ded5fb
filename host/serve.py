"""``mmfree serve``: an OpenAI-compatible HTTP server with continuous batching over a backend's sequences.

Three layers, as the rest of the host:

* :func:`parse_completion` turns a request body into :class:`CompletionParams`
  or raises :class:`ApiError` (an OpenAI-style error object and its HTTP status);
* :class:`Engine` owns the backend in one scheduler thread and runs the policy
  of :func:`mmfree.host.generate.generate_many` without end: between weight
  passes, requests join free sequences and finished or abandoned ones leave;
  each pass is a prefill chunk (up to ``prefill_tokens``) of the earliest
  request still in its prompt, else one decode step of every generating request;
* :func:`create_app` is the Starlette application: ``POST /v1/completions``
  (JSON or server-sent events), ``GET /v1/models``, ``GET /health``,
  ``GET /metrics`` (Prometheus text), and ``POST /v1/chat/completions``, which
  says that the model carries no chat template.

Each request keeps its own sampler (``numpy.random.default_rng(seed)``) and
reads only the argmax when greedy, so a completion is the same whatever runs
beside it, as in ``mmfree generate``. A backend error fails the requests of
the pass that raised it (5xx), reopens the backend and replays every other
request's tokens into the fresh sequences, so they go on unchanged.

Needs the ``serve`` extra (starlette, uvicorn); the engine and the parser
import neither, so they can be tested without a socket. ``docs/serve.md``
states the API, the limits and the errors.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from .backends import BackendError
from .driver import Read
from .generate import sample

#: Defaults of the server's limits (``mmfree serve --max-tokens-limit/--max-prompt-tokens/--queue``).
DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_PROMPT_TOKENS = 1024
DEFAULT_QUEUE = 64
#: OpenAI's default ``max_tokens`` for /v1/completions.
DEFAULT_COMPLETION_TOKENS = 16
#: At most this many stop strings (OpenAI allows 4).
MAX_STOP_STRINGS = 4
#: tokens/s in /metrics is the count of the last this many seconds.
RATE_WINDOW_S = 10.0


# --------------------------------------------------------------------------------------------
# Errors and requests
# --------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as OpenAI does: HTTP ``status`` and ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _invalid(param: str, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask: ``max_tokens`` up to ``max_tokens``, a prompt of up to
    ``max_prompt_tokens`` ids (with <s>), and ``queue`` requests waiting beyond the backend's sequences."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    queue: int = DEFAULT_QUEUE

    def __post_init__(self):
        for name in ("max_tokens", "max_prompt_tokens", "queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclasses.dataclass(frozen=True)
class CompletionParams:
    """One validated completion request: the prompt's ids (text prompts start with <s>, as in
    ``mmfree generate``), at most ``max_tokens`` new tokens, the sampler and the stop strings."""

    prompt: tuple[int, ...]
    max_tokens: int = DEFAULT_COMPLETION_TOKENS
    temperature: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _take_int(body: dict, name: str, default, low: int, high: int | None = None, what: str = "") -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if not _is_int(value):
        raise _invalid(name, f"{name} must be an integer, not {json.dumps(value)}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise _invalid(name, f"{name} {value} is out of range ({bound}{what})")
    return value


# Fields OpenAI defines that this server does not implement: accepted only at their neutral value.
_NEUTRAL = {"n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (), "suffix": (), "top_p": (1, 1.0),
            "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},)}


def parse_completion(body, *, model_id: str, tokenizer, vocab: int, bos_id: int, limits: Limits) -> CompletionParams:
    """The :class:`CompletionParams` of a /v1/completions body; :class:`ApiError` (400, 404 for
    another model) naming the first bad field."""
    if not isinstance(body, dict):
        raise _invalid(None, "the request body must be a JSON object")
    model = body.get("model", model_id)
    if not isinstance(model, str):
        raise _invalid("model", f"model must be a string, not {json.dumps(model)}")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist (this server has {model_id!r})", param="model",
                       code="model_not_found")
    for name, neutral in _NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise _invalid(name, f"{name} {json.dumps(body[name])} is not supported by this server"
                                 + (f" (only {json.dumps(neutral[0])})" if neutral else ""))
    prompt = _prompt_ids(body.get("prompt"), tokenizer, vocab, bos_id, limits)
    max_tokens = _take_int(body, "max_tokens", DEFAULT_COMPLETION_TOKENS, 1, limits.max_tokens, ": this server's limit")
    temperature = body.get("temperature", 1.0)
    temperature = 1.0 if temperature is None else temperature
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise _invalid("temperature", f"temperature must be a finite number >= 0, not {json.dumps(temperature)}")
    top_k = body.get("top_k")
    top_k = 0 if top_k is None or (_is_int(top_k) and top_k == -1) else _take_int(body, "top_k", 0, 0)  # -1: vLLM's
    seed = _take_int(body, "seed", None, 0, 2**63 - 1)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", f"stream must be true or false, not {json.dumps(stream)}")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)
                                or not isinstance(options.get("include_usage", False), bool)):
        raise _invalid("stream_options", "stream_options must be an object {\"include_usage\": bool} "
                                         "and needs stream: true")
    return CompletionParams(prompt=prompt, max_tokens=max_tokens, temperature=float(temperature), top_k=top_k,
                            seed=seed, stop=_stop_strings(body.get("stop")), stream=stream,
                            include_usage=bool(options and options.get("include_usage")))


def _prompt_ids(prompt, tokenizer, vocab: int, bos_id: int, limits: Limits) -> tuple[int, ...]:
    """A text prompt (or a list of one) as <s> + its ids, or a list of token ids as given."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = [bos_id] + tokenizer.encode(prompt, add_special_tokens=False).ids
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise _invalid("prompt", f"token id {bad} out of range (vocabulary has {vocab} ids: 0..{vocab - 1})",
                           code="token_out_of_range")
        ids = list(prompt)
    elif prompt is None:
        raise _invalid("prompt", "prompt is required")
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
        raise _invalid("prompt", f"one prompt per request, not {len(prompt)}")
    else:
        raise _invalid("prompt", "prompt must be a string or a non-empty list of token ids")
    if len(ids) > limits.max_prompt_tokens:
        raise _invalid("prompt", f"the prompt is {len(ids)} tokens; this server takes at most "
                                 f"{limits.max_prompt_tokens}", code="context_length_exceeded")
    return tuple(ids)


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _invalid("stop", "stop must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise _invalid("stop", f"at most {MAX_STOP_STRINGS} stop strings, not {len(stops)}")
    return tuple(stops)


# --------------------------------------------------------------------------------------------
# Text of a completion
# --------------------------------------------------------------------------------------------
class CompletionText:
    """The text of a completion, told as it grows: :meth:`add` decodes all ids so far and returns
    what is new and safe to send; :meth:`rest` what was held back.

    Held back: a trailing U+FFFD (a byte-level piece that ends mid-character) and the longest end
    that begins some stop string. When a stop string appears, the text ends before it and
    ``stopped`` is set. Without stop strings, the pieces add up to ``tokenizer.decode(ids)``,
    the text ``mmfree generate`` prints.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0              # characters of self.text already returned
        self.stopped = False

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        self.text = self.tokenizer.decode(self.ids)
        found = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if found:
            self.text, self.stopped = self.text[:min(found)], True
            return self.rest()
        end = len(self.text.rstrip("\ufffd"))
        end -= max((n for s in self.stop for n in range(1, min(len(s) - 1, end - self.sent) + 1)
                    if self.text.endswith(s[:n], 0, end)), default=0)
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece

    def rest(self) -> str:
        piece, self.sent = self.text[self.sent:], len(self.text)
        return piece


# --------------------------------------------------------------------------------------------
# The engine: continuous batching in one thread that owns the backend
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Event:
    """What a request hears from the engine: a piece of text per sampled token; the last one has
    ``finish_reason`` ("stop", "length") and ``usage``; or an ``error`` (nothing follows it)."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict | None = None
    error: ApiError | None = None


class Job:
    """One request inside the engine. The engine's thread owns every field but ``cancelled``."""

    def __init__(self, params: CompletionParams, tokenizer, deliver: Callable[[Event], None]):
        self.params, self.deliver = params, deliver
        self.rng = np.random.default_rng(params.seed)
        self.text = CompletionText(tokenizer, params.stop)
        self.ids = list(params.prompt)      # the prompt, then every sampled token
        self.fed = 0                        # ids already in the sequence's state
        self.generated = 0
        self.seq: int | None = None
        self.cancelled = False
        self.done = False
        self.submitted = time.perf_counter()

    @property
    def target(self) -> int:
        """Ids that must be in the state before the next decode: the prompt, or after a replay every
        id but the last sampled one (which the next decode feeds)."""
        return len(self.params.prompt) if self.generated == 0 else len(self.ids) - 1

    @property
    def read(self) -> Read:
        return Read.ARGMAX if self.params.temperature == 0 else Read.LOGITS


class Engine:
    """Continuous batching of :class:`Job` s over ``backend``'s sequences (see the module docstring).

    ``reopen`` makes a fresh backend after an error (the old one is closed first). ``tokenizer``
    decodes each job's text; ``eos_id`` ends a job ("stop"). :meth:`submit` and :meth:`cancel`
    may be called from any thread; events reach each job through its ``deliver`` callable,
    called from the engine's thread.
    """

    def __init__(self, backend, *, reopen: Callable[[], object], tokenizer, eos_id: int | None,
                 limits: Limits = Limits()):
        self.backend, self.reopen, self.tokenizer, self.eos_id, self.limits = backend, reopen, tokenizer, eos_id, limits
        self.streams = backend.streams
        self.prefill_tokens = backend.prefill_tokens
        self.metrics = Metrics(backend)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._free = list(range(self.streams))
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- any thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mmfree-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fail what is left (503), stop the thread and close the backend."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            for job in [*self._active, *self._waiting]:
                self._fail(job, ApiError(503, "the server is shutting down"))
            self._active.clear()
            self._waiting.clear()
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def submit(self, params: CompletionParams, deliver: Callable[[Event], None]) -> Job:
        """Queue a request; :class:`ApiError` 429 when ``limits.queue`` requests already wait for a sequence."""
        job = Job(params, self.tokenizer, deliver)
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down")
            if len(self._waiting) - len(self._free) >= self.limits.queue:
                raise ApiError(429, f"the queue is full ({self.limits.queue} requests wait for one of "
                                    f"{self.streams} sequences); try again later", type="rate_limit_error",
                               code="queue_full")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Forget ``job`` (its client left): it leaves its sequence before the next weight pass."""
        with self._cond:
            if not job.done:
                job.cancelled = True
                self._cond.notify()

    def load(self) -> tuple[int, int]:
        """(requests waiting for a sequence, sequences in use)."""
        with self._cond:
            return max(0, len(self._waiting) - len(self._free)), len(self._active)

    # -- the engine's thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.wait()
                if self._stopping:
                    return
                self._drop_cancelled()
                admitted = []
                while self._waiting and self._free and self.backend is not None:
                    job = self._waiting.popleft()
                    job.seq = self._free.pop(0)
                    self._active.append(job)
                    admitted.append(job)
                if not self._active and not (self._waiting and self.backend is None):
                    continue
            touched: list[Job] = []
            try:
                if self.backend is None:
                    self._reset(None)
                    continue
                for job in admitted:
                    touched = [job]
                    self.backend.clear(job.seq)
                touched = self._next_pass()
                self._run_pass(touched)
            except Exception as e:                     # a device, transport or engine fault
                if not isinstance(e, BackendError):
                    traceback.print_exc(file=sys.stderr)
                self._reset(touched, e)

    def _drop_cancelled(self) -> None:
        """(lock held) Abandoned requests leave the queue, and their sequences, now."""
        for job in [j for j in (*self._waiting, *self._active) if j.cancelled]:
            self._release(job, "499")

    def _release(self, job: Job, status: str) -> None:
        """(lock held) ``job`` ends, and leaves its sequence or the queue; counted by ``status``
        (HTTP), or 499 when its client has left."""
        if job.done:
            return
        job.done = True
        self.metrics.count("499" if job.cancelled else status)
        if job in self._active:
            self._active.remove(job)
            self._free.append(job.seq)
        elif job in self._waiting:
            self._waiting.remove(job)

    def _next_pass(self) -> list[Job]:
        """The jobs of the next weight pass: the earliest one still short of its target (a prefill),
        else every active job (a decode step)."""
        prefilling = next((j for j in self._active if j.fed < j.target), None)
        return [prefilling] if prefilling is not None else list(self._active)

    def _run_pass(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        if jobs[0].fed < jobs[0].target:
            job = jobs[0]
            chunk = job.ids[job.fed:job.fed + self.prefill_tokens]
            wants = job.fed + len(chunk) == job.target and job.generated == 0
            out = self.backend.prefill(job.seq, chunk, job.read if wants else Read.NONE)
            job.fed += len(chunk)
            self.metrics.passed(self.backend, "prefill", len(chunk), time.perf_counter() - start)
            if wants:
                self._took(job, out)
            return
        read = Read.LOGITS if any(j.read == Read.LOGITS for j in jobs) else Read.ARGMAX
        outs = self.backend.decode({j.seq: j.ids[-1] for j in jobs}, read)
        self.metrics.passed(self.backend, "decode", len(jobs), time.perf_counter() - start)
        for job in jobs:
            job.fed += 1
            self._took(job, outs[job.seq])

    def _took(self, job: Job, out) -> None:
        """A job's next token from its pass's output: sampled as :func:`~mmfree.host.generate.generate_many` does."""
        p = job.params
        token = int(out) if isinstance(out, (int, np.integer)) else sample(out, p.temperature, p.top_k, job.rng)
        job.ids.append(token)
        job.generated += 1
        self.metrics.token(time.perf_counter() - job.submitted if job.generated == 1 else None)
        finish = None
        if token == self.eos_id:
            text, finish = job.text.rest(), "stop"
        else:
            text = job.text.add(token)
            if job.text.stopped:
                finish = "stop"
            elif job.generated >= p.max_tokens:
                text, finish = text + job.text.rest(), "length"
        if finish is None:
            job.deliver(Event(text))
            return
        usage = {"prompt_tokens": len(p.prompt), "completion_tokens": job.generated,
                 "total_tokens": len(p.prompt) + job.generated}
        with self._cond:
            self._release(job, "200")
        job.deliver(Event(text, finish, usage))

    def _fail(self, job: Job, error: ApiError) -> None:
        """(lock held) End ``job`` with ``error`` (unless it has ended already)."""
        if job.done:
            return
        self._release(job, str(error.status))
        if not job.cancelled:
            job.deliver(Event(error=error))

    def _reset(self, touched: list[Job] | None, error: Exception | None = None) -> None:
        """After ``error``, fail the ``touched`` jobs (500), reopen the backend and replay every other
        active job into its fresh sequence; if the backend cannot be reopened, fail them all (503)."""
        with self._cond:
            for job in touched or ():
                message = error if isinstance(error, BackendError) else f"{type(error).__name__}: {error}"
                self._fail(job, ApiError(500, f"device error: {message}", code="device_error"))
            if error is not None:
                self.metrics.device_errors += 1
        try:
            if self.backend is not None:
                with contextlib.suppress(Exception):
                    self.backend.close()
                self.backend = None
            backend = self.reopen()
        except Exception as e:
            reason = e if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
            with self._cond:
                for job in [*self._active, *self._waiting]:
                    self._fail(job, ApiError(503, f"the backend could not be reopened: {reason}",
                                             code="backend_unavailable"))
                self._waiting.clear()
            self.metrics.healthy = False
            return
        self.metrics.adopt(backend)
        with self._cond:
            self.backend = backend
            self.metrics.resets += 1
            self.metrics.healthy = True
            for job in self._active:
                job.fed = 0        # a fresh sequence: the next passes replay the job's ids


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
class Metrics:
    """Counters for ``GET /metrics``, updated by the engine's thread (plain integers and floats)."""

    def __init__(self, backend):
        self.started = time.time()
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.tokens = 0
        self.passes: collections.Counter[str] = collections.Counter()
        self.pass_tokens: collections.Counter[str] = collections.Counter()    # prefill: prompt ids; decode: columns
        self.pass_seconds: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[float] = collections.deque()   # perf_counter of each sampled token
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.device_errors = 0
        self.resets = 0
        self.healthy = True
        self.device_cycles: collections.Counter[str] = collections.Counter()
        self.device_bytes_read = 0
        self.last_counters: dict[str, int] = {}
        self.clock_hz: float | None = None
        self.adopt(backend)

    def adopt(self, backend) -> None:
        """Read the accelerator's counters on every pass (9 register reads) of a backend that has them."""
        driver = getattr(backend, "driver", None)
        self.driver = driver
        if driver is not None:
            backend.read_counters = True
            self.clock_hz = driver.transport.clock_hz

    def count(self, status: str) -> None:
        with self._lock:                      # the engine's thread and the server's both count
            self.requests[status] += 1

    def token(self, ttft_s: float | None) -> None:
        self.tokens += 1
        self.recent.append(time.perf_counter())
        if ttft_s is not None:
            self.ttft_sum += ttft_s
            self.ttft_count += 1

    def passed(self, backend, kind: str, tokens: int, seconds: float) -> None:
        self.passes[kind] += 1
        self.pass_tokens[kind] += tokens
        self.pass_seconds[kind] += seconds
        last = getattr(backend, "last", None)
        if self.driver is not None and last is not None and last.counters is not None:
            self.last_counters = dict(last.counters)
            self.device_cycles[kind] += last.counters.get("cycles_total", 0)
            self.device_bytes_read += last.counters.get("bytes_read", 0)

    def tokens_per_second(self) -> float:
        cutoff = time.perf_counter() - RATE_WINDOW_S
        while self.recent and self.recent[0] < cutoff:
            self.recent.popleft()
        span = min(RATE_WINDOW_S, time.time() - self.started)
        return len(self.recent) / span if span > 0 else 0.0

    def exposition(self, queued: int, active: int, streams: int) -> str:
        """The Prometheus text format (version 0.0.4)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}"])
            for labels, value in samples:
                label = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{label}}} {value:g}" if label else f"{name} {value:g}")

        metric("mmfree_requests_total", "counter", "completion requests answered, by HTTP status "
               "(499: the client left first)", [({"status": s}, n) for s, n in sorted(self.requests.items())])
        metric("mmfree_tokens_generated_total", "counter", "tokens sampled", [({}, self.tokens)])
        metric("mmfree_tokens_per_second", "gauge", f"tokens sampled per second over the last {RATE_WINDOW_S:g} s",
               [({}, round(self.tokens_per_second(), 3))])
        metric("mmfree_queue_length", "gauge", "requests waiting for a sequence", [({}, queued)])
        metric("mmfree_active_sequences", "gauge", "sequences holding a request", [({}, active)])
        metric("mmfree_sequences", "gauge", "sequences the backend holds (B)", [({}, streams)])
        metric("mmfree_passes_total", "counter", "weight passes, by kind",
               [({"kind": k}, n) for k, n in sorted(self.passes.items())])
        metric("mmfree_pass_tokens_total", "counter", "tokens through the model in weight passes, by kind "
               "(prefill: prompt tokens, replays included; decode: one per sequence)",
               [({"kind": k}, n) for k, n in sorted(self.pass_tokens.items())])
        metric("mmfree_pass_seconds_total", "counter", "host wall time in weight passes, by kind",
               [({"kind": k}, round(s, 6)) for k, s in sorted(self.pass_seconds.items())])
        lines.extend(["# HELP mmfree_time_to_first_token_seconds from submission to the first sampled token",
                      "# TYPE mmfree_time_to_first_token_seconds summary",
                      f"mmfree_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                      f"mmfree_time_to_first_token_seconds_count {self.ttft_count}"])
        metric("mmfree_device_errors_total", "counter", "backend errors (each fails its pass's requests)",
               [({}, self.device_errors)])
        metric("mmfree_device_resets_total", "counter", "backend reopenings after an error", [({}, self.resets)])
        metric("mmfree_up", "gauge", "1 when the backend is open", [({}, int(self.healthy))])
        if self.driver is not None:
            self._device_lines(metric)
        return "\n".join(lines) + "\n"

    def _device_lines(self, metric) -> None:
        host = self.driver.host_counts
        metric("mmfree_device_clock_hz", "gauge", "the accelerator's clock", [({}, self.clock_hz)])
        metric("mmfree_device_cycles_total", "counter", "CYCLES_TOTAL summed over the passes, by kind",
               [({"kind": k}, n) for k, n in sorted(self.device_cycles.items())])
        metric("mmfree_device_bytes_read_total", "counter", "BYTES_READ summed over every pass",
               [({}, self.device_bytes_read)])
        metric("mmfree_device_last_pass", "gauge", "the hardware counters of the last pass",
               [({"counter": k}, v) for k, v in sorted(self.last_counters.items())])
        metric("mmfree_host_register_accesses_total", "counter", "register reads and writes by the host",
               [({"kind": "read"}, host.register_reads), ({"kind": "write"}, host.register_writes)])
        metric("mmfree_host_buffer_bytes_read_total", "counter", "bytes the host copied out of device buffers",
               [({}, host.buffer_bytes_read)])


# --------------------------------------------------------------------------------------------
# The HTTP application (starlette) and its server (uvicorn)
# --------------------------------------------------------------------------------------------
class _Client:
    """Events of one job as they arrive, or ``None`` once the client has disconnected.

    Watches the ASGI ``receive`` channel for ``http.disconnect`` (the body has been read, so
    nothing else comes) while waiting for the engine; :meth:`close` stops watching, before a
    streaming response takes the channel over."""

    def __init__(self, receive, events: asyncio.Queue):
        self.events = events
        self.gone = asyncio.ensure_future(self._watch(receive))

    @staticmethod
    async def _watch(receive) -> None:
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()

    async def next(self) -> Event | None:
        if not self.events.empty():
            return self.events.get_nowait()
        get = asyncio.ensure_future(self.events.get())
        await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            return get.result()
        get.cancel()
        return None

    def close(self) -> bool:
        """Stop watching; True when the client had already gone."""
        if self.gone.done():
            return not self.gone.cancelled()
        self.gone.cancel()
        return False


def _deliverer(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[Event], None]:
    """A callable for the engine's thread that puts an event on ``events`` in ``loop``."""
    def deliver(event: Event) -> None:
        with contextlib.suppress(RuntimeError):          # the loop has closed: nobody listens
            loop.call_soon_threadsafe(events.put_nowait, event)
    return deliver


class _Routes:
    """The HTTP side of one :class:`Engine`: each method answers one route (Starlette requests)."""

    def __init__(self, engine: Engine, *, model_id: str, vocab: int, bos_id: int, backend_name: str, created: int):
        from starlette import responses

        self.engine, self.model_id, self.vocab, self.bos_id = engine, model_id, vocab, bos_id
        self.backend_name, self.created, self.http = backend_name, created, responses

    def error(self, error: ApiError):
        return self.http.JSONResponse(error.body(), status_code=error.status)

    def _object(self, job_id: str, now: int, choices: list, **more) -> dict:
        return {"id": job_id, "object": "text_completion", "created": now, "model": self.model_id,
                "choices": choices, **more}

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    async def _submit(self, request) -> tuple[Job, asyncio.Queue]:
        """Parse and queue a completion request; :class:`ApiError` when it is refused."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise _invalid(None, f"the request body is not valid JSON ({e})") from None
        params = parse_completion(body, model_id=self.model_id, tokenizer=self.engine.tokenizer, vocab=self.vocab,
                                  bos_id=self.bos_id, limits=self.engine.limits)
        events: asyncio.Queue = asyncio.Queue()
        return self.engine.submit(params, _deliverer(asyncio.get_running_loop(), events)), events

    async def completions(self, request):
        try:
            job, events = await self._submit(request)
        except ApiError as e:
            self.engine.metrics.count(str(e.status))
            return self.error(e)
        client = _Client(request.receive, events)
        job_id, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        pieces, event = [], None
        while event is None or event.finish_reason is None:
            # The status line waits for the first token: an error before it is a real 5xx.
            event = await client.next()
            if event is None or event.error is not None:
                client.close()
                self.engine.cancel(job)
                return self.error(event.error) if event is not None else self.http.Response(status_code=499)
            if job.params.stream:
                if client.close():
                    self.engine.cancel(job)
                    return self.http.Response(status_code=499)
                return self.http.StreamingResponse(
                    self._events(job, event, events, job_id, now), media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            pieces.append(event.text)
        client.close()
        return self.http.JSONResponse(self._object(job_id, now, [self._choice("".join(pieces), event.finish_reason)],
                                                   usage=event.usage))

    async def _events(self, job: Job, event: Event, events: asyncio.Queue, job_id: str, now: int):
        """Server-sent events from ``event`` on: a chunk per token, then [DONE], or an error event."""
        try:
            while event.error is None:
                chunk = self._object(job_id, now, [self._choice(event.text, event.finish_reason)])
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                if event.finish_reason is not None:
                    if job.params.include_usage:       # OpenAI's stream_options: a last chunk with no choices
                        yield f"data: {json.dumps(self._object(job_id, now, [], usage=event.usage))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                event = await events.get()
            yield f"data: {json.dumps(event.error.body())}\n\n"     # the status line has gone: say it here
        finally:
            self.engine.cancel(job)                  # a client that left frees its sequence now

    async def chat_completions(self, request):
        self.engine.metrics.count("400")
        return self.error(ApiError(400, f"the model {self.model_id!r} carries no chat template (a weight image "
                                        "holds only tokenizer.json), so this server offers no chat API: use "
                                        "/v1/completions", code="chat_template_missing"))

    async def models(self, request):
        return self.http.JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "mmfree"}]})

    async def health(self, request):
        queued, active = self.engine.load()
        up = self.engine.metrics.healthy
        return self.http.JSONResponse({"status": "ok" if up else "unavailable", "model": self.model_id,
                                       "backend": self.backend_name, "sequences": self.engine.streams,
                                       "active": active, "queued": queued}, status_code=200 if up else 503)

    async def metrics(self, request):
        queued, active = self.engine.load()
        return self.http.PlainTextResponse(self.engine.metrics.exposition(queued, active, self.engine.streams),
                                           media_type="text/plain; version=0.0.4")

    async def http_error(self, request, exc):
        return self.error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code="not_found" if exc.status_code == 404 else None))


def create_app(engine: Engine, *, model_id: str, vocab: int, bos_id: int, backend_name: str,
               created: int | None = None):
    """The Starlette application over ``engine`` (started and stopped with the application's
    lifespan; the engine closes its backend). ``model_id`` is the one model it serves."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    api = _Routes(engine, model_id=model_id, vocab=vocab, bos_id=bos_id, backend_name=backend_name,
                  created=int(time.time()) if created is None else created)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    routes = [Route("/v1/completions", api.completions, methods=["POST"]),
              Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
              Route("/v1/models", api.models, methods=["GET"]),
              Route("/health", api.health, methods=["GET"]),
              Route("/metrics", api.metrics, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: api.http_error})
    app.state.engine = engine
    return app


def open_app(image, tokenizer, opener: Callable[[], object], *, model_id: str, backend_name: str,
             limits: Limits = Limits()):
    """The application serving ``image`` on the backend ``opener()`` opens (again after an error);
    a backend that cannot open raises here (:class:`~mmfree.host.backends.BackendError`)."""
    engine = Engine(opener(), reopen=opener, tokenizer=tokenizer, eos_id=image.config.eos_token_id, limits=limits)
    return create_app(engine, model_id=model_id, vocab=image.config.V, bos_id=image.config.bos_token_id,
                      backend_name=backend_name)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ``OSError`` when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)              # connections made before the server runs wait in the backlog
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until interrupted (uvicorn, HTTP/1.1 through h11); Ctrl-C
    (SIGINT) stops it after a graceful shutdown and returns."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", http="h11", loop="asyncio",
                            timeout_graceful_shutdown=5)
    with contextlib.suppress(KeyboardInterrupt):      # uvicorn raises the signal again once it has stopped
        uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def running(app, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` from a thread of this process while the block runs; yields its base URL
    (the tests and ``bench/serve.py``)."""
    import uvicorn

    sock = bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", http="h11", loop="asyncio",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mmfree-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped while starting")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


__all__ = ["ApiError", "Limits", "CompletionParams", "parse_completion", "CompletionText", "Event", "Job",
           "Engine", "Metrics", "create_app", "open_app", "bind", "url_of", "run", "running"]
