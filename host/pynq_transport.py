"""The PYNQ transport: the accelerator on a Zynq board, through the ``pynq`` package.

``PynqTransport(bitfile)`` loads the overlay (the ``.bit`` with its ``.hwh``
beside it), finds the accelerator's AXI4-Lite window in the overlay's IP
table, maps it (``pynq.MMIO``) and allocates buffers with ``pynq.allocate``
(physically contiguous, cache flushed/invalidated on sync; a buffer the host
reads back in bulk is mapped cacheable, so its copy runs from the cache after
one invalidate instead of word by word from uncached DDR).

``wait`` sleeps, then polls: device time is wall time on a board. Given the
time the token is expected to take (``expected_s``, the driver's previous
CYCLES_TOTAL at the manifest's clock) it sleeps that long first, then reads
the predicate back to back for :data:`SPIN_S`, then with :data:`POLL_INTERVAL_S`
sleeps in between; a token that ends when expected costs one STATUS read.
Why not PYNQ's ``Interrupt``: docs/board.md ("Host time per token").

Imports only the standard library, numpy and (lazily) pynq: a PYNQ board
image has neither amaranth nor cocotb.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mmfree.contract.registers import ACCELERATOR_IP_NAME
from mmfree.contract.transport import DeviceBuffer, Transport, TransportError, check_register_access, first_line

__all__ = ["PynqTransport", "PynqBuffer", "import_pynq"]

#: Sleep between polls once the spin is over: short against a token's milliseconds, long enough
#: not to starve the PS (Linux adds its default 50 us timer slack to it).
POLL_INTERVAL_S = 20e-6
#: After the expected time, poll back to back this long (each MMIO read from Python is itself
#: tens of microseconds: contract/host_costs.py) before sleeping between polls.
SPIN_S = 1e-3
#: Shortest wait: on a board the bound is wall time, which includes the host's own scheduling.
MIN_WAIT_S = 0.25


def import_pynq():
    """The ``pynq`` module, or :class:`TransportError` with a one-line reason."""
    try:
        import pynq
    except ImportError:
        raise TransportError("the pynq backend needs the pynq package, which runs on a PYNQ board image "
                             "(pip install 'mmfree[board]' there)") from None
    return pynq


class PynqBuffer(DeviceBuffer):
    """A ``pynq.allocate`` buffer of bytes."""

    def __init__(self, array):
        # PYNQ 3 names the bus address device_address (physical_address is its older alias).
        address = getattr(array, "device_address", None)
        super().__init__(int(array.physical_address if address is None else address), int(array.nbytes))
        self._array = array

    def write(self, data: bytes, offset: int = 0) -> None:
        import numpy as np

        self._check_range(offset, len(data))
        self._array[offset: offset + len(data)] = np.frombuffer(bytes(data), dtype=np.uint8)

    def read(self, nbytes: int, offset: int = 0) -> bytes:
        self._check_range(offset, nbytes)
        return self._array[offset: offset + nbytes].tobytes()

    def sync_to_device(self) -> None:
        self._array.flush()

    def sync_from_device(self) -> None:
        self._array.invalidate()

    def free(self) -> None:
        if self._array is not None:
            self._array.freebuffer()
            self._array = None


class PynqTransport(Transport):
    """The accelerator in a PYNQ overlay.

    Parameters
    ----------
    bitfile : the overlay's ``.bit`` (its ``.hwh`` beside it).
    ip_name : the accelerator's IP name in the overlay (default: the one entry
        whose name ends in :data:`ACCELERATOR_IP_NAME`).
    clock_hz : the accelerator's clock (default: PL clock 0 as PYNQ reports it).
    download : program the FPGA (False: attach to an already loaded overlay).
    """

    def __init__(self, bitfile, *, ip_name: str | None = None, clock_hz: float | None = None,
                 download: bool = True):
        from mmfree.contract.registers import REGISTER_SPACE_BYTES

        pynq = import_pynq()
        path = Path(bitfile)
        if not path.is_file():
            raise TransportError(f"{path}: no such bitstream")
        try:
            self._overlay = pynq.Overlay(str(path), download=download)
        except Exception as e:  # pynq raises many kinds; the user needs one line
            raise TransportError(f"cannot load overlay {path}: {first_line(e)}") from None
        ips = {name: d for name, d in self._overlay.ip_dict.items()
               if (ip_name is None and name.split("/")[-1] == ACCELERATOR_IP_NAME) or name == ip_name}
        if len(ips) != 1:
            raise TransportError(f"{path}: expected one accelerator IP named "
                                 f"{ip_name or ACCELERATOR_IP_NAME!r}, found {sorted(ips) or 'none'}")
        (ip,) = ips.values()
        self.register_window = REGISTER_SPACE_BYTES
        self._mmio = pynq.MMIO(int(ip["phys_addr"]), max(int(ip.get("addr_range", 0)), REGISTER_SPACE_BYTES))
        self._allocate = pynq.allocate
        if clock_hz is None:  # PL clock 0: fclk0 on Zynq-7000, pl_clk0 on Zynq UltraScale+
            clocks = pynq.ps.Clocks
            mhz = getattr(clocks, "fclk0_mhz", None) or getattr(clocks, "pl_clk0_mhz", None)
            if not mhz:
                raise TransportError("cannot read the PL clock from pynq; pass clock_hz")
            clock_hz = float(mhz) * 1e6
        self.clock_hz = float(clock_hz)
        self._buffers: list[PynqBuffer] = []

    def read(self, offset: int) -> int:
        check_register_access(offset, window=self.register_window)
        return int(self._mmio.read(offset)) & 0xFFFF_FFFF

    def write(self, offset: int, value: int) -> None:
        check_register_access(offset, value, window=self.register_window)
        self._mmio.write(offset, value)

    def allocate(self, nbytes: int, *, cacheable: bool = False) -> PynqBuffer:
        import numpy as np

        if nbytes <= 0:
            raise ValueError(f"buffer size must be positive, not {nbytes}")
        try:
            # PYNQ 3 maps buffers uncached unless asked (pynq/pl_server/xrt_device.py: cacheable=0).
            array = self._allocate(shape=(nbytes,), dtype=np.uint8, cacheable=bool(cacheable))
        except Exception as e:
            raise TransportError(f"cannot allocate {nbytes:,} bytes of device memory: {first_line(e)}") from None
        array[:] = 0
        buf = PynqBuffer(array)
        self._buffers.append(buf)
        return buf

    def wait(self, timeout_s: float, predicate: Callable[[], bool], *, expected_s: float = 0.0) -> bool:
        deadline = time.monotonic() + max(timeout_s, MIN_WAIT_S)
        if expected_s > 0:
            time.sleep(min(expected_s, timeout_s))
        spin_until = time.monotonic() + SPIN_S
        while True:
            if predicate():
                return True
            now = time.monotonic()
            if now >= deadline:
                return bool(predicate())
            if now >= spin_until:
                time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self._buffers.clear()
