"""The part of the ``pynq`` package the board host uses, implemented on the Verilator simulation.

Installed as ``pynq`` (``sys.modules["pynq"] = mmfree.sim.pynq_sim``, or a
``pynq`` package on ``PYTHONPATH`` that imports this module's names), it lets
:class:`~mmfree.host.pynq_transport.PynqTransport` and the ``pynq`` backend run
their own code here, with the accelerator's RTL underneath instead of a
board. Nothing in it has run on a board, and it proves nothing about one
beyond the host code path.

The surface (what ``host/pynq_transport.py`` calls, with PYNQ 3's meaning):

* ``Overlay(bitfile, download=True)``: the ``.bit`` and its ``.hwh`` must
  exist (their contents are not read); programs the "PL", i.e. starts the
  simulated accelerator (:class:`~mmfree.sim.transport.SimTransport` of the
  configuration :data:`CONFIG_ENV` names, default ``sim-default``).
  ``ip_dict`` lists the accelerator's cell with the board's register address
  (:mod:`mmfree.contract.boards`, board :data:`BOARD_ENV`, default ``pynq-z2``).
* ``MMIO(phys_addr, length)``: ``read(offset)`` / ``write(offset, value)`` are
  AXI4-Lite transactions on the simulated accelerator.
* ``allocate(shape, dtype)``: a numpy array in "DDR" with ``physical_address``
  / ``device_address``; ``flush()`` copies the host's view into the simulated
  DDR, ``invalidate()`` copies the DDR back: a cache the device cannot see,
  as on a board; ``freebuffer()``.
* ``ps.Clocks.fclk0_mhz`` / ``pl_clk0_mhz``: see :data:`WALL_CLOCK_HZ`.

Like a board, the device runs by itself: a thread advances the simulation in
short slices whenever the host is not talking to it, so the host polls
``STATUS`` exactly as it does on a board.

Time: on a board, device time is wall time. The simulated device's clock in
wall time is the simulator's speed (0.17-0.55 M cycles/s here), so
``ps.Clocks`` reports :data:`WALL_CLOCK_HZ` (a lower bound of that speed), and
manifests written for it give the same ``clock_hz``: the driver's time
bounds then hold in wall time, as they do on a board.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
import types
from pathlib import Path

import numpy as np

from mmfree.contract.boards import CONTROL_RANGE, get_board

__all__ = ["Overlay", "MMIO", "allocate", "ps", "PynqSimBuffer", "shutdown", "CONFIG_ENV", "BOARD_ENV",
           "WALL_CLOCK_HZ", "SLICE_CYCLES", "IP_NAME"]

#: Environment variable naming the simulated accelerator's configuration.
CONFIG_ENV = "MMFREE_PYNQ_SIM_CONFIG"
#: Environment variable naming the board whose address map the overlay has.
BOARD_ENV = "MMFREE_PYNQ_SIM_BOARD"
#: The simulated PL clock as wall time sees it (cycles per second of the simulator, at least).
WALL_CLOCK_HZ = 10_000.0
#: Cycles the device runs between chances for the host to reach it.
SLICE_CYCLES = 1024
#: The accelerator's cell name in the block design (as ``build.tcl`` names it).
IP_NAME = "mmfree_accelerator"

__version__ = "3.0.1+mmfree.sim"


class _Device:
    """The simulated PL: one accelerator, running by itself between host requests."""

    def __init__(self, config: str, control_address: int):
        from .transport import SimTransport

        self.sim = SimTransport(config)
        self.control_address = control_address
        self.config = self.sim.config
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pynq-sim-device", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                if self._stop.is_set():
                    break
                try:
                    self.sim.advance(SLICE_CYCLES)
                except BaseException as e:  # the host's next request reports it
                    self._error = e
                    return
            time.sleep(0.0005)   # the host's requests get the lock in between

    def call(self, method: str, *args):
        if self._error is not None:
            raise RuntimeError(f"the simulated device stopped: {self._error}")
        with self.lock:
            return getattr(self.sim, method)(*args)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        with self.lock:
            self.sim.close()


_device: _Device | None = None


def _current() -> _Device:
    if _device is None:
        raise RuntimeError("no overlay is loaded (pynq.Overlay first)")
    return _device


def shutdown() -> None:
    """Stop the simulated device (tests call it; also at exit)."""
    global _device
    if _device is not None:
        device, _device = _device, None
        device.close()


atexit.register(shutdown)


class Overlay:
    """A loaded overlay: the simulated accelerator at the board's address map."""

    def __init__(self, bitfile_name, download: bool = True, **kwargs):
        global _device
        bit = Path(bitfile_name)
        if not bit.is_file():
            raise IOError(f"{bit} does not exist")
        if not bit.with_suffix(".hwh").is_file():
            raise ValueError(f"Cannot find HWH file for {bit}")
        board = get_board(os.environ.get(BOARD_ENV, "pynq-z2"))
        if download or _device is None:
            shutdown()
            _device = _Device(os.environ.get(CONFIG_ENV, "sim-default"), board.control_address)
        self.bitfile_name = str(bit)
        self.ip_dict = {IP_NAME: {"phys_addr": board.control_address, "addr_range": CONTROL_RANGE,
                                  "type": "xilinx.com:module_ref:mmfree_top:1.0", "fullpath": IP_NAME,
                                  "state": None, "interrupts": {}, "gpio": {}}}

    @property
    def design_hash(self) -> int:
        """What the simulated build's DESIGN_HASH register holds (tests write manifests with it)."""
        return _current().sim.design_hash


class MMIO:
    """Register access at ``base_addr``: the loaded overlay's register window (a board would map
    any physical address; the simulation has only the accelerator behind the GP port)."""

    def __init__(self, base_addr: int, length: int = 4, **kwargs):
        self._device = _current()
        if int(base_addr) != self._device.control_address:
            raise ValueError(f"nothing at 0x{int(base_addr):X}: the simulated overlay's registers are at "
                             f"0x{self._device.control_address:X}")
        self.base_addr, self.length = int(base_addr), int(length)

    def _check(self, offset: int) -> None:
        if not 0 <= offset < self.length or offset % 4:
            raise ValueError(f"offset {offset} outside the {self.length}-byte MMIO window")

    def read(self, offset: int = 0, length: int = 4) -> int:
        self._check(offset)
        return self._device.call("read", offset)

    def write(self, offset: int, data) -> None:
        self._check(offset)
        self._device.call("write", offset, int(data))


class PynqSimBuffer(np.ndarray):
    """``pynq.allocate``'s buffer: a numpy array with a device address and explicit cache maintenance."""

    def __new__(cls, shape, dtype, address: int, device: _Device):
        obj = np.zeros(shape, dtype=dtype).view(cls)
        obj.physical_address = obj.device_address = address
        obj._device = device
        obj.coherent = False
        return obj

    def __array_finalize__(self, obj):
        self.physical_address = getattr(obj, "physical_address", None)
        self.device_address = getattr(obj, "device_address", None)
        self._device = getattr(obj, "_device", None)
        self.coherent = False

    def _device_view(self) -> _Device:
        if self._device is None:
            raise ValueError("this buffer was freed: it no longer has device memory")
        return self._device

    def flush(self) -> None:
        """Write the host's view back to memory (the device sees it from now on)."""
        self._device_view().call("memory_write", self.physical_address, np.ascontiguousarray(self).tobytes())

    def invalidate(self) -> None:
        """Drop the host's view: read what the device wrote."""
        data = self._device_view().call("memory_read", self.physical_address, self.nbytes)
        self[...] = np.frombuffer(data, dtype=self.dtype).reshape(self.shape)

    def freebuffer(self) -> None:
        """Give the device memory up: flush/invalidate refuse from now on. (The simulated DDR is a
        bump allocator, so the bytes are reclaimed only when the simulation ends.)"""
        self._device = None
        self.physical_address = self.device_address = None

    def close(self) -> None:
        self.freebuffer()


def allocate(shape, dtype="u4", target=None, **kwargs) -> PynqSimBuffer:
    """A zeroed buffer in the simulated DDR (4 KiB aligned, as PYNQ's contiguous allocator gives)."""
    device = _current()
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    region = device.call("allocate", nbytes)
    return PynqSimBuffer(shape, dtype, region.physical_address, device)


class _Clocks:
    """PL clock 0 in MHz, as wall time sees the simulated device (see the module docstring)."""

    fclk0_mhz = pl_clk0_mhz = WALL_CLOCK_HZ / 1e6


ps = types.SimpleNamespace(Clocks=_Clocks)
