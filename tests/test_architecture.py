"""The folders' dependencies run one way (docs/architecture.md draws them).

* The import graph between the top-level folders, read from every module's
  ``import`` statements (lazy ones inside functions included), stays within
  the table :data:`ALLOWED` (what each folder may import; a permitted edge
  need not be used): no folder imports another both ways, and the host
  names no simulation, gateware or benchmark module.
* The board path (host plus the device contract) imports and runs with
  amaranth and cocotb made unimportable, as on a PYNQ image.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

#: Folder -> folders it may import. models and contract are plain Python and import no other folder.
ALLOWED = {
    "models": set(),
    "contract": set(),
    "hw": {"models", "contract"},
    "sim": {"hw", "models", "contract"},
    "host": {"models", "contract"},
    "bench": {"host", "sim", "hw", "models", "contract"},
    "train": {"models"},
}


def imported_folders(path) -> set[str]:
    """The top-level folders (``mmfree.<folder>``) that one module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("mmfree.") and n.count(".") >= 1}
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for folder in ALLOWED:
        for path in (REPO / folder).rglob("*.py"):
            graph.setdefault(folder, set()).update(imported_folders(path) - {folder})
    return graph


def test_imports_stay_within_the_documented_graph():
    graph = import_graph()
    extra = {f: sorted(graph.get(f, set()) - ALLOWED[f]) for f in ALLOWED if graph.get(f, set()) - ALLOWED[f]}
    assert not extra, f"imports beyond docs/architecture.md: {extra}"


def test_no_folder_imports_another_both_ways():
    graph = import_graph()
    both = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, set()))
    assert both == []


def test_imported_folders_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mmfree.sim.transport import SimTransport\n    import mmfree.hw.axi\n")
    assert imported_folders(module) == {"sim", "hw"}


def test_architecture_doc_lists_every_folder_and_edge():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for folder, targets in ALLOWED.items():
        assert f"`{folder}/`" in doc, folder
        for target in targets:
            assert f"{folder} → {target}" in doc, f"{folder} → {target}"


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("amaranth", "cocotb", "cocotb_tools", "cocotbext", "pynq"):
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
"""


def run_blocked(script: str, tmp_path):
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_board_path_imports_neither_amaranth_nor_cocotb(tmp_path):
    """A PYNQ board has numpy and pynq only: the contract, the driver, the PYNQ transport, the backends
    and the CLI import without amaranth or cocotb, and a missing pynq is one line."""
    out = run_blocked("""
        import mmfree.contract.registers, mmfree.contract.configs, mmfree.contract.boards
        import mmfree.host.driver, mmfree.host.pynq_transport, mmfree.host.backends, mmfree.host.cli
        from mmfree.contract.transport import TransportError
        from mmfree.host.pynq_transport import PynqTransport
        try:
            PynqTransport("no.bit")
        except TransportError as e:
            print("ERR", e)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("amaranth", "cocotb")))
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == ("ERR the pynq backend needs the pynq package, which runs on a PYNQ board image "
                        "(pip install 'mmfree[board]' there)")
    assert lines[1] == "[]"


def test_board_path_runs_generation_without_amaranth_or_cocotb(tmp_path):
    """The CLI generates with the bundled model, and a build-only command says which extra it needs."""
    out = run_blocked("""
        from click.testing import CliRunner
        from mmfree.host.cli import main
        r = CliRunner().invoke(main, ["generate", "--prompt", "And God said", "--max-new-tokens", "4"])
        print(r.exit_code)
        print(repr(r.output.strip().splitlines()[-1]))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("amaranth", "cocotb")))
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    code, last, modules = out.stdout.strip().splitlines()[-3:]
    assert code == "0" and last.startswith("'And God said") and len(last) > len("'And God said'") and modules == "[]"


@pytest.mark.parametrize("command", [["synth", "--board", "kv260"], ["synth-units", "rsqrt"]])
def test_build_commands_need_their_extra_in_one_line(tmp_path, command):
    out = run_blocked(f"""
        from click.testing import CliRunner
        from mmfree.host.cli import main
        r = CliRunner().invoke(main, {command!r})
        print(r.exit_code)
        print(r.output.strip().splitlines()[-1])
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    code, last = out.stdout.strip().splitlines()[-2:]
    assert code != "0" and last.startswith("Error: ") and "amaranth" in last and "Traceback" not in out.stdout


#: An elaborate() longer than this is a pipeline waiting to be named (../shared/style.md, habit 14).
MAX_ELABORATE_LINES = 150


def elaborate_lengths() -> dict[str, int]:
    """Lines of every ``elaborate`` method in hw/, keyed ``file:Class``."""
    lengths = {}
    for path in sorted((REPO / "hw").rglob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(cls, ast.ClassDef):
                for fn in cls.body:
                    if isinstance(fn, ast.FunctionDef) and fn.name == "elaborate":
                        lengths[f"{path.name}:{cls.name}"] = fn.end_lineno - fn.lineno + 1
    return lengths


def test_every_elaborate_fits_a_screen():
    lengths = elaborate_lengths()
    assert len(lengths) >= 15                      # the walk found the units
    assert {k: n for k, n in lengths.items() if n > MAX_ELABORATE_LINES} == {}
