"""Host access to the simulated DDR of ``accel_tb`` (inside a cocotb test), through files.

``sim/ddr_model.v`` copies between its byte array and one file per pulse of
``ddr_load`` / ``ddr_dump``, so Python never moves a bus beat: a 4 MB image
loads in a few tens of milliseconds, a token's logits read back in about a
millisecond. Each operation takes one clock cycle of simulated time.

The file is the simulator's plusarg ``+ddr_file=<path>``; without it,
``ddr_host.bin`` in the simulator's working directory, which is what
:class:`DdrHostAccess` uses by default (cocotb runs in that directory).
"""
from __future__ import annotations

import os
from pathlib import Path

from cocotb.triggers import RisingEdge

__all__ = ["DdrHostAccess", "DdrAccessError", "DEFAULT_FILE"]

DEFAULT_FILE = "ddr_host.bin"
_STATUS = {1: "the transfer file could not be opened", 2: "the range is outside the simulated memory",
           3: "the transfer file was shorter than the length"}


class DdrAccessError(RuntimeError):
    """A host access the DDR model refused (one-line message)."""


class DdrHostAccess:
    """Load and read back ``accel_tb``'s DDR; set its error window; read its statistics.

    Parameters
    ----------
    dut : the cocotb handle of ``accel_tb``.
    path : the transfer file (must be what the simulator's ``+ddr_file`` names;
        default ``ddr_host.bin`` in the current directory).

    Call the coroutines from one task at a time, with the clock running.
    """

    def __init__(self, dut, path: str | os.PathLike | None = None):
        self.dut = dut
        self.path = Path(path) if path is not None else Path.cwd() / DEFAULT_FILE
        dut.ddr_load.value = 0
        dut.ddr_dump.value = 0
        dut.ddr_err_lo.value = 0
        dut.ddr_err_hi.value = 0

    async def _pulse(self, signal, address: int, nbytes: int) -> None:
        if not isinstance(address, int) or not isinstance(nbytes, int) or address < 0 or nbytes < 0:
            raise ValueError(f"DDR access needs a non-negative address and length, not {address!r}, {nbytes!r}")
        if address + nbytes > 1 << 32:
            raise DdrAccessError(f"bytes [{address:#x}, {address + nbytes:#x}) are outside the simulated memory")
        self.dut.ddr_addr.value = address
        self.dut.ddr_len.value = nbytes
        signal.value = 1
        await RisingEdge(self.dut.clk)          # the model copies at this edge
        signal.value = 0
        await RisingEdge(self.dut.clk)          # host_ack and host_status were set at the previous edge
        if not int(self.dut.ddr_ack.value):    # the model was in reset at the pulse: nothing was copied
            raise DdrAccessError(f"DDR access of {nbytes} bytes at {address:#x}: not acknowledged "
                                 "(the DDR model was in reset)")
        status = int(self.dut.ddr_status.value)
        if status:
            raise DdrAccessError(f"DDR access of {nbytes} bytes at {address:#x}: {_STATUS.get(status, status)}")

    async def write(self, address: int, data: bytes) -> None:
        """Put ``data`` into the memory at byte ``address``."""
        data = bytes(data)
        self.path.write_bytes(data)
        await self._pulse(self.dut.ddr_load, address, len(data))

    async def read(self, address: int, nbytes: int) -> bytes:
        """``nbytes`` of the memory from byte ``address``."""
        await self._pulse(self.dut.ddr_dump, address, nbytes)
        data = self.path.read_bytes()
        if len(data) != nbytes:
            raise DdrAccessError(f"DDR dump gave {len(data)} bytes, not {nbytes}")
        return data

    def set_error_window(self, lo: int, hi: int) -> None:
        """Make accesses touching bytes ``[lo, hi)`` answer SLVERR (``0, 0``: none)."""
        self.dut.ddr_err_lo.value = lo
        self.dut.ddr_err_hi.value = hi

    def stats(self) -> dict:
        """The model's counters: read/write bytes, first/last read cycle, cycles, row activations and
        refreshes (board model), protocol error."""
        d = self.dut
        return {"read_bytes": int(d.ddr_read_bytes.value), "write_bytes": int(d.ddr_write_bytes.value),
                "first_read": int(d.ddr_first_read.value), "last_read": int(d.ddr_last_read.value),
                "cycles": int(d.ddr_cycles.value), "row_misses": int(d.ddr_row_misses.value),
                "refreshes": int(d.ddr_refreshes.value), "protocol_error": int(d.ddr_protocol_error.value)}
