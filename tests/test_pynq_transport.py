"""PynqTransport.wait: sleep for the expected time, then poll; a token on time costs one look.

Pure Python (no pynq, no simulator): ``wait`` uses only the clock, so it is run on a
transport built without an overlay, against a predicate that turns true at a known time.
The whole PYNQ path over the simulation is tests/test_pynq_backend.py.
"""
from __future__ import annotations

import time

import pytest

from mmfree.host import pynq_transport as pt


def transport() -> pt.PynqTransport:
    return object.__new__(pt.PynqTransport)      # wait needs no overlay


class DoneAt:
    """A predicate that holds from ``delay_s`` after construction; counts its calls."""

    def __init__(self, delay_s: float):
        self.at, self.calls = time.monotonic() + delay_s, 0

    def __call__(self) -> bool:
        self.calls += 1
        return time.monotonic() >= self.at


def test_expected_time_costs_one_look():
    done = DoneAt(0.02)
    start = time.monotonic()
    assert transport().wait(1.0, done, expected_s=0.02)
    assert done.calls == 1
    assert time.monotonic() - start >= 0.02


def test_without_an_expected_time_it_polls():
    done = DoneAt(0.02)
    assert transport().wait(1.0, done)
    assert done.calls > 1


def test_late_token_is_polled_after_the_expected_time():
    done = DoneAt(0.03)
    assert transport().wait(1.0, done, expected_s=0.01)
    assert done.calls > 1 and time.monotonic() >= done.at


def test_timeout_returns_false_after_the_bound():
    never = DoneAt(1e9)
    start = time.monotonic()
    assert not transport().wait(0.0, never, expected_s=0.0)
    assert time.monotonic() - start == pytest.approx(pt.MIN_WAIT_S, abs=0.2)
