"""The simulator side of :class:`~mmfree.sim.transport.SimTransport`.

Two halves in one module:

* :func:`prepare` (host side): build, once and cached by
  :mod:`mmfree.sim.runner`, the Verilator model of ``accel_tb`` for a
  :mod:`mmfree.contract.configs` configuration, and return how to start it;
* :func:`serve` (a cocotb test, inside the simulator): connect to the
  host's UNIX socket and execute its requests until it says ``quit``.

Requests (tuples) and replies (``("ok", value)`` or ``("error", text)``):

========================  ===================================================
``("read", off)``          AXI4-Lite read of the register at byte ``off``
``("read_many", offs)``    several reads, one reply
``("write", off, value)``  AXI4-Lite write
``("mem_write", a, b)``    bytes ``b`` into the simulated DDR at offset ``a`` (host access, no bus cycles)
``("mem_read", a, n)``     ``n`` bytes of the DDR from offset ``a``
``("advance", n)``         run until ``irq`` rises or ``n`` cycles pass: (cycles, irq rose)
``("quit",)``              reply, then end the test (the simulator exits)
========================  ===================================================

Python runs only per request: the clock is the simulator's own (cocotb's
GPI clock), AXI4-Lite transactions take a few cycles, and ``advance`` is a
single ``First(RisingEdge(irq), Timer(n))``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from mmfree.contract.registers import design_hash_from_digest

try:  # only inside the simulator process
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

__all__ = ["prepare", "SimulatorBuild", "design_key", "TEST_MODULE"]

RESET_CYCLES = 8
#: This module, as cocotb imports it inside the simulator.
TEST_MODULE = "mmfree.sim.accel_server"
_REPO = Path(__file__).resolve().parent.parent
#: Everything the accelerator's Verilog and the bench around it are generated from.
_DESIGN_SOURCES = ("hw/*.py", "models/*.py", "sim/accel_tb.py", "sim/accel_tb.v", "sim/ddr_model.v", "sim/runner.py")


# --------------------------------------------------------------------------
# Host side: build once, start as often as needed
# --------------------------------------------------------------------------
def design_key(config) -> str:
    """Content hash of what the simulated design is made of: the configuration, the generator
    sources (hw/, models/, the bench's Verilog) and the tool versions. Its first 32 bits are the
    build's DESIGN_HASH (``registers.design_hash_from_digest``)."""
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(json.dumps({"accelerator": config.accelerator_params(), "ddr": config.ddr_params(),
                         "amaranth": version("amaranth"), "verilator": version("verilator"),
                         "cocotb": version("cocotb")}, sort_keys=True).encode())
    for pattern in _DESIGN_SOURCES:
        for path in sorted(_REPO.glob(pattern)):
            h.update(str(path.relative_to(_REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class SimulatorBuild:
    """A built ``accel_tb`` for one configuration; :meth:`run_server` starts the simulator."""

    def __init__(self, build, config, design_hash: int):
        self.build, self.config, self.design_hash = build, config, design_hash

    def run_server(self, *, env: dict, log_path) -> None:
        """Run the simulator with the :func:`serve` test until the host says quit (blocks).

        The simulator's output (cocotb's log, Verilator's messages) goes to
        ``log_path``, never to the caller's stdout.
        """
        b = self.build
        run_dir = Path(tempfile.mkdtemp(prefix="serve-", dir=b.build_dir))
        saved = os.environ.pop("PYTEST_CURRENT_TEST", None)  # else cocotb's runner sys.exits on failure
        try:
            with contextlib.suppress(SystemExit):
                b.runner.test(hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog", test_module=TEST_MODULE,
                              testcase="serve", build_dir=b.build_dir, test_dir=run_dir, extra_env=env,
                              plusargs=[f"+ddr_file={run_dir / 'ddr_host.bin'}"], log_file=str(log_path),
                              results_xml=str(run_dir / "results.xml"))
        finally:
            if saved is not None:
                os.environ["PYTEST_CURRENT_TEST"] = saved
            shutil.rmtree(run_dir, ignore_errors=True)


def prepare(config, *, progress=None) -> SimulatorBuild:
    """The Verilator build of ``config``'s accelerator on the simulated DDR (built at most once).

    A marker ``sim_build/accel-<config>-<design key>.json`` names the cached
    build, so a later start neither elaborates nor converts the design.
    ``progress`` is called with one line before a build starts.
    """
    from cocotb_tools.runner import get_runner

    from .accel_tb import TOPLEVEL
    from .runner import SIM_BUILD, Build, setup_verilator

    key = design_key(config)
    design_hash = design_hash_from_digest(key)
    marker = SIM_BUILD / f"accel-{config.name}-{key[:16]}.json"
    if marker.exists():
        build_dir = Path(json.loads(marker.read_text())["build_dir"])
        if (build_dir / "BUILT").exists():
            setup_verilator()
            return SimulatorBuild(Build(get_runner("verilator"), build_dir, TOPLEVEL), config, design_hash)
    if progress is not None:
        progress("building the simulator (once)...")
    SIM_BUILD.mkdir(parents=True, exist_ok=True)
    log = marker.with_suffix(".build.log")
    try:
        with open(log, "w") as out, _stdout_to(out):
            from mmfree.hw.accelerator import Accelerator

            from .accel_tb import build_accel_tb

            build = build_accel_tb(Accelerator(**config.accelerator_params(design_hash)), config.ddr_params())
    except Exception as e:  # any failure of elaboration, conversion or the C++ build: one line
        import warnings

        from amaranth.hdl import UnusedElaboratable

        from mmfree.contract.transport import TransportError, first_line

        # The half-elaborated design would warn about every unused unit at exit, after the error line.
        warnings.simplefilter("ignore", UnusedElaboratable)

        raise TransportError(f"building the {config.name} simulator failed: {type(e).__name__}: {first_line(e)} "
                             f"(log: {log})") from None
    marker.write_text(json.dumps({"config": config.name, "design_key": key, "build_dir": str(build.build_dir)}))
    return SimulatorBuild(build, config, design_hash)


@contextlib.contextmanager
def _stdout_to(file):
    """Send this process's file descriptor 1 (and its children's) to ``file``: the Verilator
    build prints its compiler commands there, and a CLI's stdout carries only its results."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(file.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# --------------------------------------------------------------------------
# Inside the simulator
# --------------------------------------------------------------------------
if cocotb is not None:
    from cocotb.simtime import get_sim_time
    from cocotb.triggers import First, RisingEdge, Timer

    @cocotb.test()
    async def serve(dut):
        """Execute the host's requests until it says quit (or closes the socket)."""
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from .accel_tb import RST_DELAY
        from .ddr_access import DdrHostAccess
        from .stream import start_clock_and_reset
        from .transport import CLOCK_PERIOD_NS, SOCKET_ENV, TOKEN_ENV, recv_message, send_message

        await start_clock_and_reset(dut, period_ns=CLOCK_PERIOD_NS, reset_cycles=RESET_CYCLES, rst_delay=RST_DELAY,
                                    clock_impl="gpi")
        axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        ddr = DdrHostAccess(dut)

        async def advance(max_cycles):
            start = get_sim_time("ns")
            irq = RisingEdge(dut.irq)
            fired = await First(irq, Timer(max(1, max_cycles) * CLOCK_PERIOD_NS, "ns"))
            await RisingEdge(dut.clk)   # continue on a clock edge, as a bus transaction would
            return round((get_sim_time("ns") - start) / CLOCK_PERIOD_NS), fired is irq

        async def read(offset):
            return await axil.read_dword(offset)

        async def read_many(offsets):
            return [await axil.read_dword(o) for o in offsets]

        async def write(offset, value):
            await axil.write_dword(offset, value)

        async def mem_write(address, data):
            await ddr.write(address, data)

        async def mem_read(address, nbytes):
            return await ddr.read(address, nbytes)

        handlers = {"read": read, "read_many": read_many, "write": write, "mem_write": mem_write,
                    "mem_read": mem_read, "advance": advance}
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.environ[SOCKET_ENV])
        send_message(sock, {"token": os.environ[TOKEN_ENV], "pid": os.getpid(),
                            "clock_period_ns": CLOCK_PERIOD_NS})
        try:
            while True:
                # Blocking here freezes simulated time while the host computes.
                request = recv_message(sock)
                if request is None or request[0] == "quit":
                    if request is not None:
                        send_message(sock, ("ok", None))
                    break
                op, *args = request
                try:
                    value = await handlers[op](*args)
                except Exception as e:  # the host gets one line; the simulation goes on
                    send_message(sock, ("error", f"{op}: {type(e).__name__}: {e}".splitlines()[0]))
                    continue
                send_message(sock, ("ok", value))
        finally:
            sock.close()
