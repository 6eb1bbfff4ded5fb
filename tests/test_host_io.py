"""What the host asks of the accelerator per token: counted, and no more than the decode needs.

Pure-Python tests check the counting transport against a transport that logs
its calls, and which backend call the decode loop makes for each token. The
tests marked ``sim`` run greedy and sampled generation on the ``sim-default``
accelerator (Verilator) and assert the per-token traffic exactly: greedy reads
STATUS and ARGMAX and no logits byte, and gives the golden tokens; sampling
reads the logits buffer once per generated token and nothing for the prompt.
"""
from __future__ import annotations

import numpy as np
import pytest

from mmfree.contract.transport import CountingTransport, DeviceBuffer, HostCounts, Transport
from mmfree.host.backends import BackendError, FloatBackend, GoldenBackend
from mmfree.host.driver import Read
from mmfree.host.generate import generate, generate_many

from helpers import Recording


class _LogBuffer(DeviceBuffer):
    def __init__(self, log, nbytes):
        super().__init__(0x1000, nbytes)
        self.log, self.data = log, bytearray(nbytes)

    def write(self, data, offset=0):
        self.log.append(("buf_write", len(data)))
        self.data[offset: offset + len(data)] = data

    def read(self, nbytes, offset=0):
        self.log.append(("buf_read", nbytes))
        return bytes(self.data[offset: offset + nbytes])

    def sync_to_device(self):
        self.log.append(("flush",))

    def sync_from_device(self):
        self.log.append(("invalidate",))


class LogTransport(Transport):
    """A transport that answers 0 to every read and logs every call."""

    clock_hz = 100e6
    register_window = 256

    def __init__(self):
        self.log = []

    def read(self, offset):
        self.log.append(("read", offset))
        return 0

    def read_many(self, offsets):
        self.log.append(("read_many", len(offsets)))
        return [0] * len(offsets)

    def write(self, offset, value):
        self.log.append(("write", offset))

    def allocate(self, nbytes, *, cacheable=False):
        self.log.append(("allocate", nbytes, cacheable))
        return _LogBuffer(self.log, nbytes)

    def wait(self, timeout_s, predicate, *, expected_s=0.0):
        self.log.append(("wait", expected_s))
        return predicate()

    def close(self):
        self.log.append(("close",))


def counts_from_log(log) -> HostCounts:
    """What the calls in ``log`` add up to, counted independently of CountingTransport."""
    c = HostCounts()
    for call in log:
        kind = call[0]
        if kind == "read":
            c.register_reads += 1
        elif kind == "read_many":
            c.register_reads += call[1]
        elif kind == "write":
            c.register_writes += 1
        elif kind == "buf_read":
            c.buffer_bytes_read += call[1]
        elif kind == "buf_write":
            c.buffer_bytes_written += call[1]
        elif kind == "invalidate":
            c.invalidates += 1
        elif kind == "flush":
            c.flushes += 1
        elif kind == "wait":
            c.waits += 1
    return c


def test_counting_transport_counts_the_calls_made():
    inner = LogTransport()
    io = CountingTransport(inner)
    rng = np.random.default_rng(1)
    buf = io.allocate(4096, cacheable=True)
    assert inner.log == [("allocate", 4096, True)] and (io.clock_hz, io.register_window) == (100e6, 256)
    for _ in range(200):
        op = rng.integers(7)
        if op == 0:
            io.read(4 * int(rng.integers(64)))
        elif op == 1:
            io.read_many([0] * int(rng.integers(0, 13)))
        elif op == 2:
            io.write(0x18, 1)
        elif op == 3:
            buf.read(int(rng.integers(0, 4096)))
        elif op == 4:
            buf.write(b"\1" * int(rng.integers(0, 100)), 8)
        elif op == 5:
            buf.sync_from_device() if rng.integers(2) else buf.sync_to_device()
        else:
            io.wait(1.0, lambda: True, expected_s=0.5)
    assert io.counts == counts_from_log(inner.log)
    assert io.counts.register_accesses == io.counts.register_reads + io.counts.register_writes
    snapshot = io.counts.copy()
    io.read(0)
    io.write(0, 0)
    assert io.counts - snapshot == HostCounts(register_reads=1, register_writes=1)
    before = io.counts.copy()
    io.close()
    assert inner.log[-1] == ("close",) and io.counts == before       # closing reaches the device, costs nothing


class CallLog:
    """A backend that records which call fed each token (the golden model underneath)."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def reset(self):
        self.backend.reset()

    def step(self, token):
        self.calls.append(("step", token))
        return self.backend.step(token)

    def step_argmax(self, token):
        self.calls.append(("step_argmax", token))
        return self.backend.step_argmax(token)

    def advance(self, token):
        self.calls.append(("advance", token))
        return self.backend.advance(token)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_decode_loop_asks_only_for_what_it_uses(tiny, temperature):
    """Prompt tokens but the last: advance; then step_argmax (greedy) or step (sampling); the last
    generated token is not fed back. The tokens equal those of a backend fed with step only."""
    prompt = [tiny.config.bos_token_id, 17, 300, 5]
    backend = CallLog(GoldenBackend(tiny))
    got = list(generate(backend, prompt, 5, temperature=temperature, top_k=20, seed=3))
    want = list(generate(Recording(GoldenBackend(tiny)), prompt, 5, temperature=temperature, top_k=20, seed=3))
    assert got == want
    feed = "step_argmax" if temperature == 0 else "step"
    assert backend.calls == [("advance", t) for t in prompt[:-1]] + [(feed, t) for t in [prompt[-1]] + got[:-1]]


def test_decode_loop_with_no_new_tokens_feeds_the_prompt(tiny):
    backend = CallLog(GoldenBackend(tiny))
    assert list(generate(backend, [1, 2, 3], 0)) == []
    assert backend.calls == [("advance", 1), ("advance", 2), ("advance", 3)]


class PassLog:
    """Keeps every weight pass a backend runs: ("decode", sequences) or ("prefill", sequence, tokens)."""

    def __init__(self, backend):
        self.backend, self.passes = backend, []
        self.streams, self.prefill_tokens = backend.streams, backend.prefill_tokens

    def clear(self, seq):
        self.backend.clear(seq)

    def decode(self, tokens, read):
        self.passes.append(("decode", sorted(tokens)))
        return self.backend.decode(tokens, read)

    def prefill(self, seq, tokens, read):
        self.passes.append(("prefill", seq, len(tokens)))
        return self.backend.prefill(seq, tokens, read)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_many_prompts_through_few_sequences_give_each_alone(tiny, temperature):
    """Five prompts of different lengths through 3 sequences: a prompt waits for a free sequence,
    is prefilled 3 tokens per pass, then decoded beside the others; eos ends one early. Each
    prompt's tokens equal generate() of it alone on a one-sequence backend."""
    prompts = [[1, 17, 300, 5], [1], [1, 2, 3, 4, 5, 6, 7, 8], [1, 250, 250], [1, 9, 9, 9, 9, 9, 9]]
    eos = 2
    backend = PassLog(GoldenBackend(tiny, streams=3))
    got = [[] for _ in prompts]
    for n, t in generate_many(backend, prompts, 6, temperature=temperature, top_k=30, seed=11, eos_id=eos):
        got[n].append(t)
    for prompt, tokens in zip(prompts, got):
        assert tokens == list(generate(Recording(GoldenBackend(tiny, streams=1)), prompt, 6, temperature=temperature,
                                       top_k=30, seed=11, eos_id=eos))
    decodes = [p for p in backend.passes if p[0] == "decode"]
    prefills = [p for p in backend.passes if p[0] == "prefill"]
    assert max(len(p[1]) for p in decodes) == 3                       # three sequences per pass
    assert all(n <= 3 for _, _, n in prefills) and any(n == 3 for _, _, n in prefills)
    assert sum(n for _, _, n in prefills) == sum(map(len, prompts))   # every prompt token fed once
    assert len(backend.passes) < sum(map(len, prompts)) + sum(map(len, got))


def test_clearing_one_sequence_leaves_the_others(tiny):
    backend = GoldenBackend(tiny, streams=3)
    backend.prefill(0, [1, 5, 7], Read.NONE)
    backend.prefill(1, [1, 5, 7], Read.NONE)
    backend.clear(0)
    both = backend.decode({0: 9, 1: 9}, Read.LOGITS)
    fresh, kept = GoldenBackend(tiny, streams=1), GoldenBackend(tiny, streams=3)   # a prefill takes <= streams tokens
    kept.prefill(0, [1, 5, 7], Read.NONE)
    assert np.array_equal(both[0], fresh.step(9)) and np.array_equal(both[1], kept.step(9))


def test_float_backend_sequences_equal_one_at_a_time(tiny):
    backend = FloatBackend(tiny, streams=2)
    alone = FloatBackend(tiny, streams=1)
    alone.advance(1)
    assert backend.prefill(0, [1, 4], Read.ARGMAX) == alone.step_argmax(4)
    one = FloatBackend(tiny, streams=1)
    one.advance(1)
    assert np.array_equal(backend.decode({1: 1, 0: 3}, Read.LOGITS)[0], (one.step(4), one.step(3))[1])


@pytest.mark.parametrize("call, message", [
    (lambda b: b.decode({2: 1}, Read.NONE), "sequence 2 out of range"),
    (lambda b: b.clear(-1), "sequence -1 out of range"),
    (lambda b: b.decode({0: 320}, Read.NONE), "token id 320 out of range"),
    (lambda b: b.prefill(0, [1, 2, 3], Read.NONE), "a prefill takes 1..2 tokens, not 3"),
    (lambda b: b.prefill(1, [], Read.NONE), "a prefill takes 1..2 tokens, not 0"),
])
def test_backend_refuses_bad_requests(tiny, call, message):
    with pytest.raises(BackendError, match=message):
        call(GoldenBackend(tiny, streams=2))


def test_backend_refuses_a_bad_stream_count(tiny):
    with pytest.raises(BackendError, match="streams must be in 1..256"):
        GoldenBackend(tiny, streams=0)


# --------------------------------------------------------------------------
# On the simulated accelerator (Verilator)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_backend(tiny):
    from mmfree.host.backends import SimBackend

    backend = SimBackend(tiny)
    yield backend
    backend.close()


class HostLog:
    """Keeps the driver's per-step host counts, by the call that fed the token."""

    def __init__(self, backend):
        self.backend, self.steps = backend, []

    def reset(self):
        self.backend.reset()

    def _keep(self, kind, value):
        self.steps.append((kind, self.backend.last.host))
        return value

    def step(self, token):
        return self._keep("step", self.backend.step(token))

    def step_argmax(self, token):
        return self._keep("step_argmax", self.backend.step_argmax(token))

    def advance(self, token):
        return self._keep("advance", self.backend.advance(token))


@pytest.mark.sim
def test_greedy_reads_no_logits_and_gives_the_golden_tokens(sim_backend, tiny):
    prompt, n = [tiny.config.bos_token_id, 17, 300, 5], 6
    want = list(generate(GoldenBackend(tiny), prompt, n))
    log = HostLog(sim_backend)
    before = sim_backend.driver.host_counts
    assert list(generate(log, prompt, n)) == want
    total = sim_backend.driver.host_counts - before
    assert [k for k, _ in log.steps] == ["advance"] * 3 + ["step_argmax"] * n
    generated = [h for k, h in log.steps if k == "step_argmax"]
    # Every token: STATUS.done W1C, TOKEN, CONTROL.start; one STATUS read (the wait is told the
    # token's cycles); ARGMAX. No logits, no counters, no invalidate.
    for h in generated:
        assert h == HostCounts(register_reads=2, register_writes=3, waits=1), h
    for k, h in log.steps:
        if k == "advance":
            assert h.buffer_bytes_read == 0 and h.invalidates == 0 and h.register_writes == 3
    # The per-step counts add up to everything the driver did (reset_state included).
    reset = total - sum_counts(h for _, h in log.steps)
    assert reset.buffer_bytes_read == 0 and reset.register_writes == 1      # CONTROL.clear_state


def sum_counts(counts) -> HostCounts:
    total = HostCounts()
    for c in counts:
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(c, name))
    return total


@pytest.mark.sim
def test_sampling_reads_the_logits_of_generated_tokens_only(sim_backend, tiny):
    prompt, n = [tiny.config.bos_token_id, 200, 7], 4
    want = list(generate(GoldenBackend(tiny), prompt, n, temperature=0.7, top_k=10, seed=5))
    log = HostLog(sim_backend)
    assert list(generate(log, prompt, n, temperature=0.7, top_k=10, seed=5)) == want
    logits_bytes = 8 * tiny.config.V
    for kind, h in log.steps:
        if kind == "step":
            assert h == HostCounts(register_reads=1, register_writes=3, buffer_bytes_read=logits_bytes,
                                   invalidates=1, waits=1), h
        else:
            assert h.buffer_bytes_read == 0 and h.invalidates == 0
    assert sum(k == "step" for k, _ in log.steps) == n


@pytest.mark.sim
def test_counters_are_read_only_when_asked(sim_backend, tiny):
    from mmfree.host.driver import COUNTERS

    sim_backend.reset()
    sim_backend.advance(1)
    assert sim_backend.last.counters is None
    sim_backend.read_counters = True
    try:
        sim_backend.step_argmax(2)
    finally:
        sim_backend.read_counters = False
    last = sim_backend.last
    assert last.counters["tokens"] == 2 and last.counters["cycles_total"] > 0
    assert last.host.register_reads == 2 + len(COUNTERS)
