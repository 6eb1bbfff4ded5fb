"""cocotb models of ``amaranth.lib.stream`` ports (``<name>__payload/valid/ready``), and the
clock and reset every bench starts with (:func:`start_clock_and_reset`; AXI channel stalls
are in :mod:`mmfree.sim.axi_bench`).

Timing scheme: the bench drives on the falling edge and samples in the
``ReadOnly`` phase after it, so what it samples is exactly what the next
rising edge sees (a handshake is ``valid & ready`` at that edge), whatever
order the simulator evaluates in.

* :class:`StreamDriver` feeds payload integers, inserting random idle cycles
  (valid low) between transfers with probability ``idle``; once valid is
  high it stays high with a stable payload until the transfer.
* :class:`StreamMonitor` collects payload integers, holding ready low with
  probability ``backpressure``, and checks the producer side of the protocol
  (valid not withdrawn, payload stable while stalled).

Both count cycles from their start, so transfer cycles are comparable for
latency and throughput checks. ``random.Random(seed)`` makes every gap
pattern reproducible.
"""
from __future__ import annotations

import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

__all__ = ["start_clock_and_reset", "StreamDriver", "StreamMonitor", "pack", "unpack"]


def pack(layout, value) -> int:
    """Payload integer of ``value`` (a dict/list/int as ``layout.const`` accepts)."""
    if isinstance(value, int):
        return value
    return layout.const(value).as_value().value


def unpack(layout, bits: int):
    """A constant view of ``layout`` over ``bits`` (fields read as Python ints)."""
    return layout.from_bits(bits)


async def start_clock_and_reset(dut, *, period_ns: int = 10, reset_cycles: int = 3, rst_delay: int = 0,
                                clock_impl: str | None = None):
    """Start ``dut.clk`` and hold ``dut.rst`` for ``reset_cycles`` rising edges.

    The one reset of every bench. ``rst`` falls on the falling edge after
    the last reset edge, and this returns there: the next rising edge is the
    design's first cycle out of reset. A bench whose top registers ``rst``
    before the design sees it (``rst_delay`` registers; ``accel_tb.v``: 1)
    returns ``rst_delay`` rising edges later, once the design is out of
    reset: what the bench drives then is never lost to a reset.
    ``clock_impl`` is cocotb's ``Clock`` ``impl`` (``"gpi"``: the clock in
    C++, for long simulations).
    """
    Clock(dut.clk, period_ns, unit="ns", impl=clock_impl).start()
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    for _ in range(rst_delay):
        await RisingEdge(dut.clk)


class StreamDriver:
    """Source for the DUT's input stream ``<prefix>__*``."""

    def __init__(self, dut, prefix: str, *, idle: float = 0.0, seed: int = 0):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.idle = idle
        self.rng = random.Random(seed)
        self.queue: deque[int] = deque()
        self.transfer_cycles: list[int] = []
        self.cycle = 0
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, words) -> None:
        """Queue payload integers."""
        self.queue.extend(int(w) for w in words)

    @property
    def idle_now(self) -> bool:
        return not self.queue

    def stop(self) -> None:
        """Stop driving: the words still queued are dropped; valid keeps its value (drive it yourself)."""
        self._task.cancel()
        self.queue.clear()

    async def _run(self):
        holding = False
        fired = False
        while True:
            await FallingEdge(self.clk)
            self.cycle += 1
            if fired:
                self.queue.popleft()
                self.transfer_cycles.append(self.cycle - 1)
                holding = False
            if not holding and self.queue and self.rng.random() >= self.idle:
                holding = True
                self.payload.value = self.queue[0]
            self.valid.value = int(holding)
            await ReadOnly()
            fired = holding and bool(self.ready.value)


class StreamMonitor:
    """Sink for the DUT's output stream ``<prefix>__*``."""

    def __init__(self, dut, prefix: str, *, backpressure: float = 0.0, seed: int = 0):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.backpressure = backpressure
        self.rng = random.Random(seed)
        self.items: list[int] = []
        self.transfer_cycles: list[int] = []
        self.protocol_errors: list[str] = []
        self.cycle = 0
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        stalled = None  # payload of a valid beat not yet taken
        while True:
            await FallingEdge(self.clk)
            self.cycle += 1
            ready = self.rng.random() >= self.backpressure
            self.ready.value = int(ready)
            await ReadOnly()
            valid = bool(self.valid.value)
            if stalled is not None:
                if not valid:
                    self.protocol_errors.append(f"cycle {self.cycle}: valid withdrawn before transfer")
                elif self.payload.value.to_unsigned() != stalled:
                    self.protocol_errors.append(f"cycle {self.cycle}: payload changed while stalled")
            if valid:
                word = self.payload.value.to_unsigned()
                if ready:
                    self.items.append(word)
                    self.transfer_cycles.append(self.cycle)
                    stalled = None
                else:
                    stalled = word
            else:
                stalled = None

    async def wait_for(self, count: int, *, timeout_cycles: int):
        """Wait until ``count`` items arrived; raise ``TimeoutError`` after ``timeout_cycles``."""
        for _ in range(timeout_cycles):
            if len(self.items) >= count:
                return
            await RisingEdge(self.clk)
        raise TimeoutError(f"got {len(self.items)} of {count} items in {timeout_cycles} cycles")
