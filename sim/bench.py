"""A cocotb bench body for one-in, one-out stream units with a fixed latency."""
from __future__ import annotations

from cocotb.triggers import RisingEdge

from .stream import StreamDriver, StreamMonitor, start_clock_and_reset

__all__ = ["run_stream_unit"]


async def run_stream_unit(dut, words, *, idle: float, backpressure: float, seed: int,
                          latency: int | None = None, cycles_per_item: int = 20) -> list[int]:
    """Feed payload ints ``words`` to ``dut.i``, return the ``dut.o`` payload ints.

    Checks the stream protocol on ``o`` and, when ``latency`` is given (use it
    with no gaps and no backpressure), ``o.valid`` exactly ``latency`` cycles
    after each input transfer and, for more than one word, one transfer per
    cycle on ``i``. Gives up after ``cycles_per_item`` cycles per word.
    """
    words = list(words)
    await start_clock_and_reset(dut)
    src = StreamDriver(dut, "i", idle=idle, seed=seed)
    sink = StreamMonitor(dut, "o", backpressure=backpressure, seed=seed + 1)
    src.send(words)
    await sink.wait_for(len(words), timeout_cycles=cycles_per_item * len(words) + 100)
    for _ in range(5):  # nothing extra may come out
        await RisingEdge(dut.clk)
    assert not sink.protocol_errors, sink.protocol_errors[:5]
    assert len(sink.items) == len(words), f"{len(sink.items)} outputs for {len(words)} inputs"
    if latency is not None:
        ins = src.transfer_cycles
        assert ins[-1] - ins[0] == len(ins) - 1, "input did not run at one element per cycle"
        lat = [o - i for o, i in zip(sink.transfer_cycles, ins)]
        assert lat == [latency] * len(ins), f"latency {sorted(set(lat))}, published {latency}"
    return sink.items
