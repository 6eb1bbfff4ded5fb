"""What the AXI benches add to cocotbext-axi: random channel stalls and injected error responses.

Only cocotbext-axi's public API is used: a channel's ``set_pause_generator`` /
``clear_pause_generator`` for stalls (a paused source channel leaves valid
low that cycle, a paused sink channel holds ready low: gaps and
backpressure, on a master's channels as on a slave's), and the ``target``
object of ``AxiSlaveRead`` / ``AxiSlaveWrite`` (anything with ``async
read(address, length)`` and ``async write(address, data)``) for the memory;
an exception from the target is answered SLVERR on that beat (reads) or
burst (writes).

Typical use::

    memory = FaultyMemory(bytearray(1 << 20))
    slave = AxiSlaveRead(AxiReadBus.from_prefix(dut, "bus_"), dut.clk, dut.rst, target=memory)
    stall_channels([slave.ar_channel, slave.r_channel], 0.3, random.Random(seed))
    memory.fail(0x2000, 0x2040)        # reads touching these bytes answer SLVERR
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

__all__ = ["FaultyMemory", "random_pauses", "stall_channels"]


def random_pauses(probability: float, rng: random.Random) -> Iterator[bool]:
    """Endless per-cycle pause pattern: ``True`` (the channel stalls this cycle) with ``probability``."""
    while True:
        yield rng.random() < probability


def stall_channels(channels: Iterable, probability: float, rng: random.Random) -> None:
    """Stall each cocotbext-axi channel at random with ``probability`` per cycle (0: never).

    Each channel gets its own pattern, seeded from ``rng``, so the channels
    stall independently and a bench's seed reproduces all of them.
    """
    for channel in channels:
        if probability > 0:
            channel.set_pause_generator(random_pauses(probability, random.Random(rng.random())))
        else:
            channel.clear_pause_generator()


class FaultyMemory:
    """A byte array as the ``target`` of cocotbext-axi slaves, failing inside an error window.

    Addresses wrap at the array's size (as cocotbext-axi's AxiRam does). An
    access touching ``[lo, hi)`` (set by :meth:`fail`; empty at first) raises
    ``ValueError``, which the slave answers with SLVERR and, for a read,
    zero data. Several slaves may share one instance (one memory behind
    several ports).
    """

    def __init__(self, mem: bytearray):
        self.mem = mem
        self.error_window = (0, 0)

    def fail(self, lo: int, hi: int) -> None:
        """Accesses touching bytes ``[lo, hi)`` fail from now on (``fail(0, 0)``: none do)."""
        self.error_window = (lo, hi)

    def _check(self, address: int, length: int) -> int:
        lo, hi = self.error_window
        if address < hi and address + length > lo:
            raise ValueError(f"injected error at {address:#x}+{length}")
        return address % len(self.mem)

    async def read(self, address: int, length: int) -> bytes:
        address = self._check(address, length)
        return bytes(self.mem[address:address + length])

    async def write(self, address: int, data: bytes) -> None:
        address = self._check(address, len(data))
        self.mem[address:address + len(data)] = data
