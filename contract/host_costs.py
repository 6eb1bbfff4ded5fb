"""What one token costs the board's host (Python on the PS), from cited per-operation costs.

The driver counts what a token asks of its transport (:class:`~mmfree.contract.transport.HostCounts`:
register reads and writes, bytes copied out of device buffers, cache
invalidates, waits); :func:`host_us_per_token` prices those counts with the
board's :class:`HostCosts`. Every figure names its source and says whether it
is a published measurement, a model of cited figures, or an assumption.

The host time is the host's serial time per token on top of the device's:
the accesses after START (including the STATUS reads of the wait), the
copies, and the wake-up latency of the completion method. No published
figure for Python's own per-step overhead on these boards was found; it is
left out (:attr:`HostCosts.python_step_us` is ``None``), so the figure is a
floor of what ``mmfree bench --backend pynq`` will measure.

Plain Python (standard library only): the board, the benchmarks and the docs import it.
"""
from __future__ import annotations

import dataclasses

__all__ = ["Cost", "HostCosts", "HOST_COSTS", "host_costs", "host_us_per_token"]


@dataclasses.dataclass(frozen=True)
class Cost:
    """One figure: ``value`` in ``unit``; ``kind`` is measured, modelled or assumed; ``source`` cites it."""

    value: float
    unit: str
    kind: str
    source: str


#: PYNQ-Z1 and PYNQ-Z2 share the XC7Z020's processing system: two Cortex-A9 at 650 MHz (-1 grade).
Z7020_CPU_MHZ = 650.0
#: The KV260's K26 SOM: four Cortex-A53 at up to 1,333 MHz (DS987, K26 SOM data sheet).
K26_CPU_MHZ = 1333.0

_MMIO_Z2 = ("5,600 pynq MMIO.write calls took 150-200 ms on a PYNQ-Z1 (Z2's PS, Cortex-A9 650 MHz): "
            "27-36 us each, https://discuss.pynq.io/t/mmio-write-is-too-slow/389; four MMIO writes in a "
            "function timed 120-130 us on a PYNQ-Z2, https://github.com/KastnerRG/Read_the_docs/issues/25")
_COPY_Z7 = ("copies out of DMA buffers through memcpy reach about 160 MB/s on Zynq-7000 Linux, software cache "
            "coherency included: http://rsoc-framework.com/fast-dma-transfers-xilinx-zynq/")
_SLACK = ("Linux's default timer slack is 50 us: a sleep ends up to 50 us late "
          "(prctl(2) PR_SET_TIMERSLACK, https://man7.org/linux/man-pages/man2/pr_set_timerslack.2const.html)")
_SCALE = (f"the PYNQ-Z2 figure scaled by CPU clock {Z7020_CPU_MHZ:g} / {K26_CPU_MHZ:g} MHz (Python-bound; "
          "A9 and A53 run about the same instructions per clock); no published KV260 figure found")


@dataclasses.dataclass(frozen=True)
class HostCosts:
    """A board's per-operation host costs (microseconds)."""

    board: str
    register_read_us: Cost
    register_write_us: Cost
    buffer_read_us_per_byte: Cost
    invalidate_us: Cost
    #: Wake-up latency of the chosen completion method (sleep for the expected time, then poll STATUS).
    completion_wakeup_us: Cost
    #: The same for PYNQ's ``Interrupt`` (UIO + asyncio), the method not chosen: docs/board.md.
    interrupt_wakeup_us: Cost
    python_step_us: Cost | None = None


def _scaled(cost: Cost, factor: float) -> Cost:
    return Cost(cost.value * factor, cost.unit, "modelled", _SCALE + "; " + cost.source)


_Z2_WRITE = Cost(31.0, "us", "measured", _MMIO_Z2 + " (midpoint of 150-200 ms / 5,600)")
_Z2_READ = Cost(31.0, "us", "assumed",
                "equal to an MMIO write: pynq's MMIO.read and MMIO.write take the same Python path "
                "(index the mapped numpy array); " + _MMIO_Z2)
_Z2_BYTE = Cost(1 / 160.0, "us/byte", "measured", _COPY_Z7 + " (1 / 160 MB/s)")
_Z2_INVALIDATE = Cost(31.0, "us", "assumed",
                      "one call into pynq's buffer code, priced like one MMIO access; the per-byte cost of "
                      "the cache walk is in buffer_read_us_per_byte (" + _COPY_Z7 + ")")
_SLEEP_WAKEUP = Cost(50.0, "us", "measured", _SLACK + " (upper bound)")
_Z2_INTERRUPT = Cost(20.0, "us", "measured",
                     "about 20 us per interrupt through generic-uio on Zynq-7000, from C with 3 system calls "
                     "(http://harmoninstruments.com/posts/uio.html); PYNQ's Interrupt adds an asyncio event loop "
                     "and still needs the STATUS read, so it is a floor")

_K26 = Z7020_CPU_MHZ / K26_CPU_MHZ

HOST_COSTS: dict[str, HostCosts] = {c.board: c for c in (
    HostCosts("pynq-z2", register_read_us=_Z2_READ, register_write_us=_Z2_WRITE, buffer_read_us_per_byte=_Z2_BYTE,
              invalidate_us=_Z2_INVALIDATE, completion_wakeup_us=_SLEEP_WAKEUP, interrupt_wakeup_us=_Z2_INTERRUPT),
    HostCosts("kv260", register_read_us=_scaled(_Z2_READ, _K26), register_write_us=_scaled(_Z2_WRITE, _K26),
              buffer_read_us_per_byte=_scaled(_Z2_BYTE, _K26), invalidate_us=_scaled(_Z2_INVALIDATE, _K26),
              completion_wakeup_us=_SLEEP_WAKEUP, interrupt_wakeup_us=_scaled(_Z2_INTERRUPT, _K26)),
)}


def host_costs(board: str) -> HostCosts:
    """The costs of ``board`` (a :mod:`mmfree.contract.boards` name); ``ValueError`` (one line) otherwise."""
    if board not in HOST_COSTS:
        raise ValueError(f"no host costs for board {board!r} (boards: {', '.join(HOST_COSTS)})")
    return HOST_COSTS[board]


def host_us_per_token(board: str, reads: float, writes: float, bytes_read: float, *, invalidates: float = 0.0,
                      waits: float = 1.0, bytes_written: float = 0.0, flushes: float = 0.0) -> float:
    """Host microseconds per token on ``board`` for these per-token counts (means may be fractional).

    ``reads``/``writes``: register accesses; ``bytes_read``: bytes copied out of device
    buffers; ``invalidates``: cache invalidates; ``waits``: completions waited for (each
    costs the completion method's wake-up); ``bytes_written`` and ``flushes``: copies into device
    buffers and cache flushes, priced as their reading counterparts (the same memcpy and cache
    walk, the other way). Equation::

        us = reads * read_us + writes * write_us + (bytes_read + bytes_written) * us_per_byte
             + (invalidates + flushes) * invalidate_us + waits * wakeup_us (+ python_step_us when cited)
    """
    for name, value in (("reads", reads), ("writes", writes), ("bytes_read", bytes_read),
                        ("invalidates", invalidates), ("waits", waits), ("bytes_written", bytes_written),
                        ("flushes", flushes)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, not {value}")
    c = host_costs(board)
    us = (reads * c.register_read_us.value + writes * c.register_write_us.value
          + (bytes_read + bytes_written) * c.buffer_read_us_per_byte.value
          + (invalidates + flushes) * c.invalidate_us.value
          + waits * c.completion_wakeup_us.value)
    return us + (c.python_step_us.value if c.python_step_us is not None else 0.0)
