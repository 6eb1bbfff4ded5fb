"""The transport: how the host reaches one accelerator, on a board or in a simulator.

The driver (:mod:`mmfree.host.driver`) speaks to a :class:`Transport` only:
32-bit register reads and writes at byte offsets of the accelerator's
AXI4-Lite window, device-visible buffers, and :meth:`Transport.wait`, which
lets time pass on the device until a condition holds. Two transports exist:
``PynqTransport`` (:mod:`mmfree.host.pynq_transport`, a PYNQ board) and
``SimTransport`` (:mod:`mmfree.sim.transport`, the Verilator simulation).

Plain Python (no numpy, amaranth or cocotb): the board path imports it.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

__all__ = ["TransportError", "DeviceBuffer", "Transport", "check_register_access", "first_line", "HostCounts",
           "CountingTransport"]


class TransportError(RuntimeError):
    """The transport cannot reach or drive the device (one-line message)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): what a one-line
    error quotes of an exception from a library (pynq, tokenizers, a driver or a transport)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


REGISTER_MASK = 0xFFFF_FFFF


def check_register_access(offset: int, value: int | None = None, window: int | None = None) -> None:
    """Raise ``ValueError`` unless ``offset`` is a word-aligned register offset (and ``value`` a u32)."""
    if not isinstance(offset, int) or offset < 0 or offset % 4:
        raise ValueError(f"register offset must be a non-negative multiple of 4, not {offset!r}")
    if window is not None and offset >= window:
        raise ValueError(f"register offset {offset} is outside the {window}-byte register window")
    if value is not None and (not isinstance(value, int) or not 0 <= value <= REGISTER_MASK):
        raise ValueError(f"register value must be an unsigned 32-bit integer, not {value!r}")


class DeviceBuffer(abc.ABC):
    """A physically contiguous buffer the accelerator reads or writes by bus address.

    ``write``/``read`` touch the host's view; ``sync_to_device`` makes host
    writes visible to the device (cache flush on a board, a copy into the
    simulated DDR), ``sync_from_device`` the reverse. Offsets and lengths are
    in bytes and must stay inside the buffer (``ValueError`` otherwise).
    """

    def __init__(self, physical_address: int, nbytes: int):
        self.physical_address = physical_address
        self.nbytes = nbytes

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.nbytes:
            raise ValueError(f"bytes [{offset}, {offset + length}) are outside the {self.nbytes}-byte buffer")

    @abc.abstractmethod
    def write(self, data: bytes, offset: int = 0) -> None:
        """Copy ``data`` into the host view at ``offset``."""

    @abc.abstractmethod
    def read(self, nbytes: int, offset: int = 0) -> bytes:
        """``nbytes`` of the host view from ``offset``."""

    @abc.abstractmethod
    def sync_to_device(self) -> None:
        """Make every host write visible to the device."""

    @abc.abstractmethod
    def sync_from_device(self) -> None:
        """Make every device write visible to the host view."""

    def free(self) -> None:
        """Give the memory back (the transport frees what is left at close)."""


class Transport(abc.ABC):
    """Registers, buffers and the passage of time on one accelerator.

    Attributes
    ----------
    clock_hz : the accelerator's clock; device time is cycles / clock_hz.
    register_window : size of the register window in bytes.
    """

    clock_hz: float
    register_window: int

    @abc.abstractmethod
    def read(self, offset: int) -> int:
        """The 32-bit register at byte ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit ``value`` to the register at byte ``offset``."""

    def read_many(self, offsets: list[int]) -> list[int]:
        """Several registers in one go (a transport with a round-trip cost overrides this)."""
        return [self.read(o) for o in offsets]

    @abc.abstractmethod
    def allocate(self, nbytes: int, *, cacheable: bool = False) -> DeviceBuffer:
        """A zero-filled device buffer of at least ``nbytes``, 4 KiB aligned.

        ``cacheable``: the host reads this buffer back in bulk; a transport whose host has
        caches maps it cached (``sync_from_device`` then invalidates), others ignore it.
        """

    @abc.abstractmethod
    def wait(self, timeout_s: float, predicate: Callable[[], bool], *, expected_s: float = 0.0) -> bool:
        """Let the device run until ``predicate()`` is true or ``timeout_s`` of device time pass.

        Returns True when the predicate held, False on timeout. A board polls
        (device time is wall time); the simulator advances simulated time
        until the accelerator's interrupt or a bounded number of cycles and
        evaluates the predicate only then, never once per cycle.

        ``expected_s``: device time the caller knows the condition needs (a token's
        cycles from the previous one): the transport may let that much pass before
        the first evaluation, so a wait that ends on time costs one predicate call.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device and every buffer (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclasses.dataclass
class HostCounts:
    """What the host asked of a transport: register accesses, buffer bytes, cache and wait calls.

    Counted by :class:`CountingTransport` from the calls actually made (``read_many`` counts one
    read per register). ``a - b`` is the traffic between two snapshots.
    """

    register_reads: int = 0
    register_writes: int = 0
    buffer_bytes_read: int = 0       # DeviceBuffer.read: bytes the host copied out of device buffers
    buffer_bytes_written: int = 0
    invalidates: int = 0             # DeviceBuffer.sync_from_device calls
    flushes: int = 0                 # DeviceBuffer.sync_to_device calls
    waits: int = 0                   # Transport.wait calls

    @property
    def register_accesses(self) -> int:
        return self.register_reads + self.register_writes

    def __sub__(self, other: "HostCounts") -> "HostCounts":
        return HostCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                             for f in dataclasses.fields(self)})

    def copy(self) -> "HostCounts":
        return dataclasses.replace(self)


class _CountingBuffer(DeviceBuffer):
    """A :class:`DeviceBuffer` whose reads, writes and syncs add to its transport's counts."""

    def __init__(self, inner: DeviceBuffer, counts: HostCounts):
        super().__init__(inner.physical_address, inner.nbytes)
        self.inner, self._counts = inner, counts

    def write(self, data: bytes, offset: int = 0) -> None:
        self.inner.write(data, offset)
        self._counts.buffer_bytes_written += len(data)

    def read(self, nbytes: int, offset: int = 0) -> bytes:
        data = self.inner.read(nbytes, offset)
        self._counts.buffer_bytes_read += len(data)
        return data

    def sync_to_device(self) -> None:
        self._counts.flushes += 1
        self.inner.sync_to_device()

    def sync_from_device(self) -> None:
        self._counts.invalidates += 1
        self.inner.sync_from_device()

    def free(self) -> None:
        self.inner.free()


class CountingTransport(Transport):
    """``inner`` with every call counted in :attr:`counts` (a :class:`HostCounts`).

    The driver talks through one of these, so the host traffic it reports is what it
    asked of the transport, call by call, on any transport.
    """

    def __init__(self, inner: Transport):
        self.inner = inner
        self.counts = HostCounts()

    @property
    def clock_hz(self) -> float:
        return self.inner.clock_hz

    @property
    def register_window(self) -> int:
        return self.inner.register_window

    def read(self, offset: int) -> int:
        self.counts.register_reads += 1
        return self.inner.read(offset)

    def read_many(self, offsets: list[int]) -> list[int]:
        self.counts.register_reads += len(offsets)
        return self.inner.read_many(offsets)

    def write(self, offset: int, value: int) -> None:
        self.counts.register_writes += 1
        self.inner.write(offset, value)

    def allocate(self, nbytes: int, *, cacheable: bool = False) -> DeviceBuffer:
        return _CountingBuffer(self.inner.allocate(nbytes, cacheable=cacheable), self.counts)

    def wait(self, timeout_s: float, predicate: Callable[[], bool], *, expected_s: float = 0.0) -> bool:
        self.counts.waits += 1
        return self.inner.wait(timeout_s, predicate, expected_s=expected_s)

    def close(self) -> None:
        self.inner.close()
