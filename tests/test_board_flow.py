"""Issue 6's board flow: the synthesis estimate per board, the Vivado project, and their guards.

A full-board synthesis takes minutes per board on the 2-core machine
(``make synth`` measured 3.3 min for pynq-z2 and 7 min for kv260, 10 min
together, beside other jobs), more than the suite can afford, so the suite
guards the committed results instead:

* ``bitstreams/<board>/utilization.json`` must be within the board's budget
  **and** made from the current RTL: its design hash must equal the hash of
  the accelerator elaborated now. A change that grows the design fails here
  until ``make synth`` (which refuses an over-budget design) is run again.
* the synthesis machinery runs for real on a small unit (yosys phases, log,
  cell counts), and the utilization arithmetic and budget checks are
  checked on known cell counts;
* the Vivado project is generated for both boards and checked for what can
  be checked without Vivado: part, board part, clock, addresses, HP ports,
  and that every name the Tcl uses exists on the generated Verilog top,
  whose ports are the accelerator's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from amaranth.hdl import Shape
from click.testing import CliRunner

from mmfree.contract.boards import BOARDS, CONTROL_RANGE, RESOURCES, get_board
from mmfree.hw.flow import board_flow, vivado
from mmfree.hw.flow.cli import bitstream, synth

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """Each board's design (elaborated twice: hash, then with it) and its Vivado project folder."""
    root = tmp_path_factory.mktemp("vivado")
    out = {}
    for name, board in BOARDS.items():
        design = board_flow.elaborate(board)
        folder = board_flow.write_vivado_project(board, build_dir=root / "build" / name,
                                                 out_dir=root / "bitstreams" / name, design=design,
                                                 say=lambda line: None)
        out[name] = (design, folder, root / "bitstreams" / name)
    return out


def verilog_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """``{port: (direction, width)}`` of ``module`` in Verilog ``text`` (ANSI or non-ANSI declarations)."""
    start = re.search(rf"^module {re.escape(module)}\s*\(", text, re.M)
    assert start, f"no module {module}"
    body = text[start.start(): text.index("endmodule", start.start())]
    header = body[: body.index(");") + 2]
    ports = {}
    for m in re.finditer(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s*)?(\\?[\w$.]+)\s*[,;]?\s*$",
                         body if "input" not in header else header, re.M):
        ports[m.group(3)] = (m.group(1), int(m.group(2)) + 1 if m.group(2) else 1)
    return ports


# --------------------------------------------------------------------------
# Utilization: the committed reports against the current RTL
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_committed_utilization_is_current_and_within_budget(projects, name):
    design, _, _ = projects[name]
    board = get_board(name)
    assert board_flow.committed_problems(board, design=design) == []
    report = json.loads((REPO / "bitstreams" / name / "utilization.json").read_text())
    assert report["used"]["LUT"] <= board.lut_budget * board.capacity["LUT"]
    assert all(report["used"][k] <= board.capacity[k] for k in RESOURCES)
    assert report["family"] == board.yosys_family and report["part"] == board.part
    md = (REPO / "bitstreams" / name / "utilization.md").read_text()
    assert f"| LUT | {report['used']['LUT']:,} | {board.capacity['LUT']:,} |" in md


def test_a_report_from_other_rtl_or_over_budget_is_refused(projects, tmp_path):
    design, _, _ = projects["pynq-z2"]
    board = get_board("pynq-z2")
    committed = json.loads((REPO / "bitstreams" / "pynq-z2" / "utilization.json").read_text())
    stale = dict(committed, design_sha256="0" * 64, design_hash="0x00000000")
    (tmp_path / "utilization.json").write_text(json.dumps(stale))
    problems = board_flow.committed_problems(board, design=design, out_dir=tmp_path)
    assert problems == [f"{tmp_path / 'utilization.json'} was made from other RTL (design hash 0x00000000, the "
                        f"current one is 0x{design.design_hash:08X}); run make synth BOARD=pynq-z2"]
    grown = dict(committed, used=dict(committed["used"], LUT=40_000))
    (tmp_path / "utilization.json").write_text(json.dumps(grown))
    assert board_flow.committed_problems(board, design=design, out_dir=tmp_path) == [
        "LUT 40,000 is 75.2 % of 53,200, above the 70 % budget"]
    (tmp_path / "utilization.json").unlink()
    assert board_flow.committed_problems(board, design=design, out_dir=tmp_path)[0].endswith(
        "run make synth BOARD=pynq-z2")


def test_utilization_arithmetic():
    kv = get_board("kv260")
    cells = {"LUT6": 100, "LUT3": 20, "RAM64M": 2, "SRLC32E": 3, "FDRE": 50, "FDSE": 2, "CARRY8": 4,
             "DSP48E2": 6, "RAMB36E2": 3, "RAMB18E2": 5, "URAM288": 2, "MUXF7": 1, "BUFG": 1}
    u = board_flow.utilization(cells, kv)
    assert u["used"] == {"LUT": 120 + 8 + 3, "FF": 52, "BRAM36": 5.5, "URAM": 2, "DSP": 6}
    assert u["percent"] == {"LUT": 0.1, "FF": 0.0, "BRAM36": 3.8, "URAM": 3.1, "DSP": 0.5}
    assert u["detail"] == {"LUT_logic": 120, "LUT_mem": 11, "CARRY": 4, "MUXF": 1, "other": 0}
    z2 = get_board("pynq-z2")
    over = board_flow.utilization({"LUT6": 38_000, "RAMB36E1": 141, "URAM288": 1}, z2)
    assert board_flow.budget_problems(over, z2) == [
        "LUT 38,000 is 71.4 % of 53,200, above the 70 % budget", "BRAM36 141 exceeds the part's 140",
        "URAM 1 exceeds the part's 0"]
    assert board_flow.budget_problems(board_flow.utilization({"LUT6": 37_240}, z2), z2) == []


@pytest.mark.synth
def test_synthesis_reports_its_phases(tmp_path):
    """The same yosys run ``make synth`` does, on a small unit: phases as they happen, the log, the cells."""
    from amaranth.back import verilog

    from mmfree.hw.argmax import Argmax
    from mmfree.hw.flow.synth import group_cells, synth_verilog

    phases = []
    log = tmp_path / "yosys.log"
    text = verilog.convert(Argmax(max_length=4096), name="argmax", emit_src=False)
    cells = synth_verilog(text, "argmax", "xcup", phase=phases.append, log_path=log)
    assert phases[:3] == ["reading the Verilog", "hierarchy", "processes to netlists"]
    assert "LUT mapping (ABC9)" in phases
    assert phases.index("block/LUT RAM mapping") < phases.index("LUT mapping (ABC9)")
    assert len(phases) == len(set(phases))
    assert "synth_xilinx -family xcup" in log.read_text()
    g = group_cells(cells)
    assert g["LUT"] > 0 and g["FF"] > 0


def test_unknown_board_is_refused():
    r = CliRunner().invoke(synth, ["--board", "zcu104"])
    assert r.exit_code == 2 and "Invalid value for '--board': 'zcu104' is not one of 'pynq-z2', 'kv260', 'all'" in r.output


def test_make_targets():
    for target, command in (("synth", "mmfree synth --board kv260"),
                            ("bitstream", "mmfree bitstream --board kv260")):
        r = subprocess.run(["make", "-n", "-o", ".venv/.installed", target, "BOARD=kv260"], cwd=REPO,
                           capture_output=True, text=True)
        assert r.returncode == 0 and command in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------
# The Vivado project
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_project_part_clock_addresses_ports(projects, name):
    design, folder, out = projects[name]
    board, cfg = get_board(name), get_board(name).config
    tcl = (folder / "build.tcl").read_text()
    assert f"create_project -force mmfree [file join $here project] -part {board.part}\n" in tcl
    assert f"get_board_parts -quiet {board.board_part}:*" in tcl
    assert f"CONFIG.CLKOUT1_REQUESTED_OUT_FREQ {{{cfg.clock_hz / 1e6:.3f}}}" in tcl
    assert f"create_bd_cell -type ip -vlnv [latest_ip {board.ps}] ps" in tcl
    # the register window at the board's fixed address, 4 KiB
    assert re.findall(r"-offset (0x[0-9A-F]+) \\\n\s+-range (\d+)K \[get_bd_addr_segs (\S+)\]", tcl) == [
        (f"0x{board.control_address:08X}", str(CONTROL_RANGE // 1024), f"{vivado.CELL}/s_axil/reg0")]
    # one HP port per read port, in order, at the bus width; the others off
    hp = re.findall(r"connect_bd_intf_net \[get_bd_intf_pins memory_path_p(\d)/M00_AXI\] "
                    r"\[get_bd_intf_pins ps/(\S+)\]", tcl)
    assert hp == [(str(p), board.hp_ports[p]) for p in range(cfg.ports)]
    enabled = re.findall(r"CONFIG\.(?:PCW_USE_S_AXI_HP|PSU__USE__S_AXI_GP)(\d) \{1\}", tcl)
    assert len(enabled) == cfg.ports == len(board.used_hp_ports)
    widths = re.findall(r"CONFIG\.(?:PCW_S_AXI_HP\d_DATA_WIDTH|PSU__SAXIGP\d__DATA_WIDTH) \{(\d+)\}", tcl)
    assert widths == [str(8 * cfg.bus_bytes)] * cfg.ports
    masters = re.findall(r"get_bd_addr_spaces mmfree_accelerator/(m_axi_p\d)\] \[get_bd_addr_segs ps/\*/HP(\d)_(DDR_\w+)\*",
                         tcl)
    # a build of more than 32 address bits (the KV260's 40) also reaches the DDR above 4 GB
    segments = ("DDR_LOW", "DDR_HIGH") if cfg.addr_width > 32 else ("DDR_LOW",)
    assert masters == [(f"m_axi_p{p}", str(vivado.hp_index(board.hp_ports[p])), s)
                       for p in range(cfg.ports) for s in segments]
    assert (name == "kv260") == (cfg.addr_width == 40)
    gp_offset = 2 if board.ps == "zynq_ultra_ps_e" else 0       # UltraScale+: HP<n>_FPD is S_AXI_GP<n+2>
    assert sorted(int(n) - gp_offset for n in enabled) == sorted(vivado.hp_index(h) for h in board.used_hp_ports)
    # the outputs land in bitstreams/<board>/, named as the pynq backend expects
    rel = re.search(r"set out \[file normalize \[file join \$here (\S+)\]\]", tcl).group(1)
    assert (folder / rel).resolve() == out.resolve()
    assert "[file join $out mmfree.bit]" in tcl and "[file join $out mmfree.hwh]" in tcl
    assert f"DESIGN_HASH 0x{design.design_hash:08X}" in tcl


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_name_in_the_tcl_is_a_port_of_the_verilog_top(projects, name):
    design, folder, _ = projects[name]
    tcl = (folder / "build.tcl").read_text()
    wrapper = (folder / f"{vivado.WRAPPER}.v").read_text()
    top = (folder / f"{vivado.TOP}.v").read_text()
    wrapper_ports = verilog_ports(wrapper, vivado.WRAPPER)
    rtl_ports = verilog_ports(top, vivado.TOP)
    # interfaces the wrapper declares, and the signals of each
    declared: dict[str, set[str]] = {}
    for intf, signal, port in re.findall(r'X_INTERFACE_INFO = "xilinx\.com:interface:aximm:1\.0 (\S+) (\S+)" \*\)\n'
                                         r'(?:\s+\(\* X_INTERFACE_PARAMETER = "[^"]*" \*\)\n)?'
                                         r'\s+(?:input|output)\s+wire\s+(?:\[\d+:0\]\s+)?(\S+?),?\n', wrapper):
        assert port == f"{intf}_{signal.lower()}"
        declared.setdefault(intf, set()).add(signal.lower())
    cfg = get_board(name).config
    assert sorted(declared) == sorted([f"m_axi_p{p}" for p in range(cfg.ports)] + ["s_axil"])
    for intf in declared:
        sig = {n for n in design.accelerator.signature.members if n.startswith(intf + "_")}
        assert {f"{intf}_{s}" for s in declared[intf]} == sig
    # every cell pin / interface the Tcl names on the accelerator exists on the wrapper
    used_intf = set(re.findall(r"get_bd_intf_pins mmfree_accelerator/(\w+)\]", tcl))
    used_intf |= set(re.findall(r"get_bd_addr_spaces mmfree_accelerator/(\w+)\]", tcl))
    used_intf |= set(re.findall(r"get_bd_addr_segs mmfree_accelerator/(\w+)/reg0\]", tcl))
    used_pins = set(re.findall(r"get_bd_pins mmfree_accelerator/(\w+)\]", tcl))
    assert used_intf == set(declared)
    assert used_pins == {"aclk", "aresetn", "irq"} and used_pins <= set(wrapper_ports)
    assert re.search(r'ASSOCIATED_BUSIF ([\w:]+),', wrapper).group(1).split(":") == [*declared]
    # the wrapper's instance connects every port of the Amaranth top, each to a wrapper port of its width
    connections = dict(re.findall(r"^\s+\.(\w+)\(([^)]*)\)", wrapper, re.M))
    assert set(connections) == set(rtl_ports) and set(rtl_ports) == set(design.accelerator.signature.members) | {
        "clk", "rst"}
    for port, (direction, width) in rtl_ports.items():
        if port in ("clk", "rst"):
            continue
        wdir, wwidth = wrapper_ports[port]
        assert wdir == direction
        assert wwidth == (vivado.SLAVE_ADDR_WIDTH if port in ("s_axil_awaddr", "s_axil_araddr") else width)
        assert width == Shape.cast(design.accelerator.signature.members[port].shape).width
    assert connections["rst"] == "~aresetn" and connections["clk"] == "aclk"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_manifest_and_design_hash(projects, name):
    design, folder, _ = projects[name]
    board = get_board(name)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["design_hash"] == f"0x{design.design_hash:08X}" == f"0x{design.design_sha256[:8].upper()}"
    assert manifest["clock_hz"] == board.config.clock_hz and manifest["config"] == board.config.to_dict()
    assert manifest["control_address"] == f"0x{board.control_address:08X}" and manifest["ip_name"] == vivado.CELL
    assert manifest["tool_version"] is None and manifest["wns_ns"] is None       # filled in by build.tcl
    tcl = (folder / "build.tcl").read_text()
    assert '{"tool_version": null}' in tcl and '{"wns_ns": null}' in tcl
    # the Verilog Vivado builds carries the same number in its DESIGN_HASH register
    assert design.accelerator.constants["DESIGN_HASH"] == design.design_hash
    assert f"32'd{design.design_hash};" in (folder / f"{vivado.TOP}.v").read_text()


def test_design_hash_is_the_design_without_it(projects):
    """design_sha256 is recomputable from the accelerator's Verilog with DESIGN_HASH 0 (one board: a conversion
    of the full design takes seconds)."""
    from amaranth.back import verilog

    from mmfree.hw.accelerator import Accelerator

    design, _, _ = projects["pynq-z2"]
    board = get_board("pynq-z2")
    plain = verilog.convert(Accelerator(**board.config.accelerator_params(0)), name=vivado.TOP, emit_src=False)
    assert board_flow.design_sha256(board, plain) == design.design_sha256
    other = get_board("kv260")
    assert board_flow.design_sha256(other, plain) != design.design_sha256     # the board is part of it


def test_bitstream_without_vivado_writes_the_scripts_and_says_how(projects, tmp_path, monkeypatch):
    design, _, _ = projects["pynq-z2"]
    monkeypatch.setattr(board_flow, "VIVADO_BUILD", tmp_path / "build" / "vivado")
    monkeypatch.setattr(board_flow, "BITSTREAMS", tmp_path / "bitstreams")
    monkeypatch.setattr(board_flow, "elaborate", lambda board, **kw: design)
    monkeypatch.setenv("PATH", str(tmp_path / "no-vivado"))
    r = CliRunner().invoke(bitstream, ["--board", "pynq-z2"])
    assert r.exit_code == board_flow.VIVADO_EXIT
    err = r.stderr.strip()
    folder = tmp_path / "build" / "vivado" / "pynq-z2"
    assert "\n" not in err and err.startswith(f"pynq-z2: wrote {folder}/ (build.tcl, mmfree_accelerator.v, "
                                              "mmfree_top.v, manifest.json). Vivado is not on PATH")
    assert err.endswith(f"run `cd {folder} && vivado -mode batch -source build.tcl` (docs/board.md)")
    assert sorted(p.name for p in folder.iterdir()) == ["build.tcl", "manifest.json", "mmfree_accelerator.v",
                                                        "mmfree_top.v"]
    assert not (tmp_path / "bitstreams").exists()


def test_bitstream_runs_vivado_and_checks_its_outputs(projects, tmp_path, monkeypatch):
    """With ``vivado`` on PATH the flow runs the script from its folder and insists on the three outputs."""
    design, _, _ = projects["kv260"]
    monkeypatch.setattr(board_flow, "VIVADO_BUILD", tmp_path / "build" / "vivado")
    monkeypatch.setattr(board_flow, "BITSTREAMS", tmp_path / "bitstreams")
    monkeypatch.setattr(board_flow, "elaborate", lambda board, **kw: design)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vivado"
    # A stand-in that does what build.tcl's last step does when MAKE_OUTPUTS is set, and records its call.
    fake.write_text("#!/bin/sh\necho \"$PWD $*\" > \"$RECORD\"\n"
                    "[ -n \"$MAKE_OUTPUTS\" ] || exit 1\nmkdir -p \"$MAKE_OUTPUTS\"\n"
                    "for f in mmfree.bit mmfree.hwh manifest.json; do echo x > \"$MAKE_OUTPUTS/$f\"; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(tmp_path / "call.txt"))
    r = CliRunner().invoke(bitstream, ["--board", "kv260", "--jobs", "2"])
    assert r.exit_code == 1
    assert r.stderr.strip().startswith("Error: Vivado stopped (exit 1) without writing mmfree.bit, "
                                                      "mmfree.hwh, manifest.json")
    monkeypatch.setenv("MAKE_OUTPUTS", str(tmp_path / "bitstreams" / "kv260"))
    assert CliRunner().invoke(bitstream, ["--board", "kv260"]).exit_code == 0
    assert (tmp_path / "call.txt").read_text().strip() == (
        f"{tmp_path / 'build' / 'vivado' / 'kv260'} -mode batch -source build.tcl -notrace")

