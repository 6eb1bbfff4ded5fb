"""The simulator transport: the accelerator's RTL in Verilator, behind the driver's transport interface.

``SimTransport(config)`` builds (once, cached by :mod:`mmfree.sim.runner`)
the Verilator model of ``sim/accel_tb.v`` (the ``Accelerator`` of the named
:mod:`mmfree.contract.configs` configuration plus the DDR model), starts it as a
subprocess running the cocotb module :mod:`mmfree.sim.accel_server`, and
talks to that server over a UNIX socket in a private temporary directory.

What each transport call costs:

* ``read``/``write``: one request; the server runs one AXI4-Lite transaction
  (cocotbext-axi ``AxiLiteMaster``) a few clock cycles long.
* buffers: :class:`SimBuffer` keeps a host-side copy; ``sync_to_device``
  sends the bytes written since the last sync in one request, which the
  server puts into the simulated DDR through its host-access port (no bus
  cycles); after ``sync_from_device`` each ``read`` fetches just the bytes
  it asks for.
* ``wait``: the server lets the simulation run until the accelerator's
  ``irq`` rises or a bounded number of cycles pass (one ``First(RisingEdge,
  Timer)``: no Python per clock cycle), then the predicate is evaluated;
  given ``expected_s``, the first run is that long plus an eighth and
  ``WAIT_FIRST_CYCLES`` (or until ``irq``), so a token that ends when
  expected costs one predicate call.
  Device time is simulated cycles / ``config.clock_hz``.

Simulated time stands still while the host computes: the simulator is
blocked in the server's socket read between requests.

Every failure (build, start, a simulator that stops, a server-side error) is
a :class:`~mmfree.contract.transport.TransportError` with one line; the
simulator's own output goes to a log file named in the message.
"""
from __future__ import annotations

import os
import pickle
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mmfree.contract.transport import DeviceBuffer, Transport, TransportError, check_register_access
from mmfree.contract.configs import AcceleratorConfig, DEFAULT_SIM_CONFIG, get_config
from mmfree.contract.registers import REGISTER_SPACE_BYTES

__all__ = ["SimTransport", "SimBuffer", "SOCKET_ENV", "TOKEN_ENV", "send_message", "recv_message",
           "CLOCK_PERIOD_NS", "BUFFER_BASE", "BUFFER_ALIGN"]

#: Environment variables telling the server where to connect and how to prove who it is.
SOCKET_ENV = "MMFREE_SIM_SOCKET"
TOKEN_ENV = "MMFREE_SIM_TOKEN"
#: The simulation's clock period. Device time is cycles / config.clock_hz, whatever this is.
CLOCK_PERIOD_NS = 10
#: First buffer address: LOGITS_ADDR 0 means "no logits", so nothing is ever placed at 0.
BUFFER_BASE = 0x10000
#: Buffers start on 4 KiB boundaries, like pynq.allocate's pages.
BUFFER_ALIGN = 4096
#: A wait advances at most this many cycles before the predicate is evaluated
#: again (the interrupt ends it earlier); it doubles each round up to the cap.
WAIT_FIRST_CYCLES = 1024
WAIT_MAX_CYCLES = 1 << 18
#: Longest a single request may take in wall time before the simulator is declared stuck.
REQUEST_TIMEOUT_S = 600.0
#: How long the simulator may take to start (after the build) and connect.
CONNECT_TIMEOUT_S = 120.0

_LENGTH = struct.Struct("<Q")


def send_message(sock: socket.socket, obj) -> None:
    """One length-prefixed pickled message (both ends are this package, on this machine)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 22))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket):
    """The next message, or ``None`` when the other end has closed."""
    head = _recv_exact(sock, _LENGTH.size)
    if head is None:
        return None
    body = _recv_exact(sock, _LENGTH.unpack(head)[0])
    return None if body is None else pickle.loads(body)


class SimBuffer(DeviceBuffer):
    """A region of the simulated DDR with a host-side copy."""

    def __init__(self, transport: "SimTransport", physical_address: int, nbytes: int):
        super().__init__(physical_address, nbytes)
        self._transport = transport
        self._host = bytearray(nbytes)
        self._dirty: tuple[int, int] | None = None   # [lo, hi) written since the last sync_to_device
        self._stale = False                          # the device may have written since the last read

    def write(self, data: bytes, offset: int = 0) -> None:
        self._check_range(offset, len(data))
        self._host[offset: offset + len(data)] = data
        lo, hi = offset, offset + len(data)
        if self._dirty is not None:
            lo, hi = min(lo, self._dirty[0]), max(hi, self._dirty[1])
        self._dirty = (lo, hi)

    def read(self, nbytes: int, offset: int = 0) -> bytes:
        self._check_range(offset, nbytes)
        if self._stale:
            self._host[offset: offset + nbytes] = self._transport.memory_read(self.physical_address + offset, nbytes)
        return bytes(self._host[offset: offset + nbytes])

    def sync_to_device(self) -> None:
        if self._dirty is not None:
            lo, hi = self._dirty
            self._transport.memory_write(self.physical_address + lo, bytes(self._host[lo:hi]))
            self._dirty = None

    def sync_from_device(self) -> None:
        self._stale = True


class SimTransport(Transport):
    """The accelerator of configuration ``config`` (a name or an AcceleratorConfig) in Verilator.

    Parameters
    ----------
    config : a :mod:`mmfree.contract.configs` configuration or its name.
    progress : called with one line when something slow starts (default: print to stderr).
    log_path : where the simulator's output goes (default: a file in the build directory).
    """

    def __init__(self, config: AcceleratorConfig | str = DEFAULT_SIM_CONFIG, *,
                 progress: Callable[[str], None] | None = None, log_path: str | Path | None = None):
        self.config = get_config(config) if isinstance(config, str) else config
        self.clock_hz = self.config.clock_hz
        self.register_window = REGISTER_SPACE_BYTES
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._sim_error: BaseException | None = None
        self._next_address = BUFFER_BASE
        self.requests = 0                 # requests sent (tests use it to prove "no device access")
        self.cycles = 0                   # cycles advanced by waits
        self.wait_wall_s = 0.0            # wall time spent in those waits
        self._keep_log = True
        self._tmp = tempfile.TemporaryDirectory(prefix="mmfree-sim-")
        try:
            self._start(log_path)
        except BaseException:
            self.close()
            raise

    # -- start and stop ---------------------------------------------------
    def _start(self, log_path) -> None:
        from . import accel_server

        build = accel_server.prepare(self.config, progress=self._progress)
        self.design_hash = build.design_hash
        self._keep_log = log_path is not None
        if log_path is None:  # kept only if something goes wrong (see close)
            log_path = build.build.build_dir.parent / "logs" / f"simulator-{self.config.name}.{os.getpid()}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path)
        path = os.path.join(self._tmp.name, "sock")
        token = secrets.token_hex(16)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(0.2)
        env = {SOCKET_ENV: path, TOKEN_ENV: token}

        def run():
            try:
                build.run_server(env=env, log_path=self.log_path)
            except BaseException as e:  # reported by the main thread, one line
                self._sim_error = e

        self._thread = threading.Thread(target=run, name="mmfree-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        try:
            while True:
                try:
                    sock, _ = listener.accept()
                    break
                except socket.timeout:
                    if not self._thread.is_alive():
                        raise TransportError(f"the simulator stopped before connecting{self._log_hint()}") from None
                    if time.monotonic() > deadline:
                        raise TransportError(f"the simulator did not connect within {CONNECT_TIMEOUT_S:.0f} s"
                                             f"{self._log_hint()}") from None
        finally:
            listener.close()
        sock.settimeout(REQUEST_TIMEOUT_S)
        self._sock = sock
        hello = self._receive()
        if not isinstance(hello, dict) or hello.get("token") != token:
            raise TransportError("an unexpected process answered on the simulator socket")
        self.server_info = hello

    def _log_hint(self) -> str:
        self._keep_log = True
        if self._sim_error is not None and not isinstance(self._sim_error, SystemExit):
            first = (str(self._sim_error).strip().splitlines() or [""])[0][:200]
            return f": {type(self._sim_error).__name__}: {first} (log: {self.log_path})"
        last = ""
        try:
            lines = [x for x in Path(self.log_path).read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if "error" in x.lower() or "fatal" in x.lower()]
            last = errors[-1].strip() if errors else ""
        except OSError:
            pass
        detail = f": {last[:200]}" if last else ""
        return f"{detail} (log: {self.log_path})"

    def close(self) -> None:
        if self._sock is not None:
            try:
                send_message(self._sock, ("quit",))
                self._sock.settimeout(30)
                recv_message(self._sock)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        log = getattr(self, "log_path", None)
        if log is not None and not self._keep_log:
            log.unlink(missing_ok=True)

    # -- requests ---------------------------------------------------------
    def _receive(self):
        try:
            reply = recv_message(self._sock)
        except socket.timeout:
            raise TransportError(f"the simulator did not answer within {REQUEST_TIMEOUT_S:.0f} s"
                                 f"{self._log_hint()}") from None
        except OSError as e:
            raise TransportError(f"lost the simulator ({e}){self._log_hint()}") from None
        if reply is None:
            raise TransportError(f"the simulator stopped{self._log_hint()}")
        return reply

    def _request(self, *message):
        if self._sock is None:
            raise TransportError("the simulator transport is closed")
        self.requests += 1
        try:
            send_message(self._sock, message)
        except OSError as e:
            raise TransportError(f"lost the simulator ({e}){self._log_hint()}") from None
        status, value = self._receive()
        if status != "ok":
            raise TransportError(f"simulator: {value}")
        return value

    # -- Transport --------------------------------------------------------
    def read(self, offset: int) -> int:
        check_register_access(offset, window=self.register_window)
        return self._request("read", offset)

    def read_many(self, offsets: list[int]) -> list[int]:
        for o in offsets:
            check_register_access(o, window=self.register_window)
        return self._request("read_many", list(offsets))

    def write(self, offset: int, value: int) -> None:
        check_register_access(offset, value, window=self.register_window)
        self._request("write", offset, value)

    def allocate(self, nbytes: int, *, cacheable: bool = False) -> SimBuffer:
        # cacheable: the simulated host has no cache (each read after sync_from_device fetches).
        if nbytes <= 0:
            raise ValueError(f"buffer size must be positive, not {nbytes}")
        offset = self._next_address
        end = offset + -(-nbytes // BUFFER_ALIGN) * BUFFER_ALIGN
        if end > self.config.ddr_bytes:
            raise TransportError(f"cannot allocate {nbytes:,} bytes: the simulated DDR of {self.config.name} "
                                 f"holds {self.config.ddr_bytes:,} bytes ({offset:,} in use)")
        self._next_address = end
        address = self.config.ddr_base + offset
        # The DDR may hold data from an earlier buffer at this address: start from zeros.
        self.memory_write(address, bytes(end - offset))
        return SimBuffer(self, address, nbytes)

    def _offset(self, address: int, nbytes: int) -> int:
        """Where bus ``address`` lies in the simulated DDR (which starts at ``config.ddr_base``)."""
        offset = address - self.config.ddr_base
        if offset < 0 or offset + nbytes > self.config.ddr_bytes:
            raise TransportError(f"{nbytes:,} bytes at {address:#x} are outside the simulated DDR "
                                 f"[{self.config.ddr_base:#x}, {self.config.ddr_base + self.config.ddr_bytes:#x})")
        return offset

    def memory_write(self, address: int, data: bytes) -> None:
        """Put ``data`` into the simulated DDR at bus ``address`` (host access: no bus cycles)."""
        self._request("mem_write", self._offset(address, len(data)), bytes(data))

    def memory_read(self, address: int, nbytes: int) -> bytes:
        """``nbytes`` of the simulated DDR from bus ``address`` (host access: no bus cycles)."""
        return self._request("mem_read", self._offset(address, nbytes), nbytes)

    @property
    def simulated_cycles_per_s(self) -> float:
        """The simulator's speed so far: cycles advanced by waits per second of their wall time
        (0.0 before the first wait)."""
        return self.cycles / self.wait_wall_s if self.wait_wall_s > 0 else 0.0

    def advance(self, max_cycles: int) -> tuple[int, bool]:
        """Run until ``irq`` rises or ``max_cycles`` pass: (cycles run, whether irq rose)."""
        start = time.perf_counter()
        cycles, irq = self._request("advance", int(max_cycles))
        self.cycles += cycles
        self.wait_wall_s += time.perf_counter() - start
        return cycles, irq

    def wait(self, timeout_s: float, predicate: Callable[[], bool], *, expected_s: float = 0.0) -> bool:
        budget = int(timeout_s * self.clock_hz)
        chunk = WAIT_FIRST_CYCLES
        expected = int(expected_s * self.clock_hz)
        if expected > 0:
            # The condition cannot hold earlier: run past it (irq ends the run when the token is done;
            # the slack covers the cycles between START's write and the counter's start) before looking.
            cycles, _ = self.advance(min(expected + expected // 8 + WAIT_FIRST_CYCLES, budget))
            budget -= cycles
        while True:
            if predicate():
                return True
            if budget <= 0:
                return False
            cycles, _ = self.advance(min(chunk, budget))
            budget -= cycles
            chunk = min(2 * chunk, WAIT_MAX_CYCLES)
