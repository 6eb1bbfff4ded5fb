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
from mmfree.host.backends import GoldenBackend
from mmfree.host.generate import generate

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
