"""The Vivado project of a board build: the block-design wrapper's Verilog and the Tcl script.

:func:`wrapper_verilog` writes ``mmfree_top``, a thin Verilog module around
the Amaranth accelerator (``mmfree_accelerator``) that Vivado's IP integrator
takes as a module reference. Its ``X_INTERFACE_INFO`` /
``X_INTERFACE_PARAMETER`` attributes state what Vivado would otherwise have
to guess from the port names: which ports form the AXI4 masters
(``m_axi_p<p>``, port 0 read/write, the others read only), the AXI4-Lite
slave (``s_axil``), the clock (``aclk``), the active-low reset (``aresetn``:
the accelerator's synchronous ``rst`` is its inverse) and the level
interrupt (``irq``). The slave's address is widened to 12 bits, the 4 KiB
segment Vivado's address editor assigns at least; the accelerator decodes the
low 8.

:func:`build_tcl` writes the script ``vivado -mode batch -source build.tcl``
runs: project at the board's part and board part, block design (processing
system with the board's presets, clock wizard at the configuration's clock,
reset, the accelerator, one SmartConnect per AXI path), address map, then
synthesis, implementation, bitstream, a timing check, and the copy of
``mmfree.bit`` + ``mmfree.hwh`` + ``manifest.json`` into ``bitstreams/<board>/``.

Nothing here runs Vivado; the generated files are checked by
``tests/test_board_flow.py`` against the RTL's ports and the board table.
"""
from __future__ import annotations

import dataclasses

from amaranth.hdl import Shape
from amaranth.lib.wiring import Out

from mmfree.contract.registers import ACCELERATOR_IP_NAME
from mmfree.hw.axi import MAX_BURST_BEATS
from mmfree.contract.boards import CONTROL_RANGE, Board

__all__ = ["TOP", "WRAPPER", "BD_NAME", "CELL", "SLAVE_ADDR_WIDTH", "AxiInterface", "interfaces",
           "wrapper_verilog", "build_tcl"]

#: Verilog module name of the Amaranth accelerator.
TOP = "mmfree_accelerator"
#: The block-design wrapper Vivado references.
WRAPPER = "mmfree_top"
#: Block design name: the bitstream and hardware handoff are mmfree.bit / mmfree.hwh.
BD_NAME = "mmfree"
#: The accelerator's cell in the block design (the PYNQ transport looks it up by this name).
CELL = ACCELERATOR_IP_NAME
#: Address bits of the wrapper's AXI4-Lite slave: a 4 KiB window (the accelerator decodes 8).
SLAVE_ADDR_WIDTH = CONTROL_RANGE.bit_length() - 1
#: A PS clock the clock wizard multiplies to the accelerator's clock.
PS_CLOCK_MHZ = 100


@dataclasses.dataclass(frozen=True)
class AxiInterface:
    """One AXI interface of the accelerator: its port prefix, protocol and Vivado parameters."""

    name: str                      # port prefix, also the interface name in the block design
    mode: str                      # "master" or "slave"
    protocol: str                  # "AXI4" or "AXI4LITE"
    ports: tuple[str, ...]         # the accelerator's port names (``<name>_<signal>``)
    parameters: tuple[tuple[str, object], ...]


def interfaces(accelerator) -> list[AxiInterface]:
    """The accelerator's AXI interfaces, in the order of its ports (masters first, then the slave)."""
    p = accelerator.params
    names = list(accelerator.signature.members)
    out = []
    for port in range(p["ports"]):
        prefix = f"m_axi_p{port}"
        members = tuple(n for n in names if n.startswith(prefix + "_"))
        out.append(AxiInterface(prefix, "master", "AXI4", members, (
            ("PROTOCOL", "AXI4"), ("READ_WRITE_MODE", "READ_WRITE" if port == 0 else "READ_ONLY"),
            ("DATA_WIDTH", 8 * p["bus_bytes"]), ("ADDR_WIDTH", p["addr_width"]), ("ID_WIDTH", 1),
            ("MAX_BURST_LENGTH", MAX_BURST_BEATS), ("NUM_READ_OUTSTANDING", p["outstanding"]),
            ("NUM_WRITE_OUTSTANDING", p["outstanding"] if port == 0 else 0),
            ("SUPPORTS_NARROW_BURST", 0), ("HAS_LOCK", 0), ("HAS_QOS", 0), ("HAS_REGION", 0))))
    members = tuple(n for n in names if n.startswith("s_axil_"))
    out.append(AxiInterface("s_axil", "slave", "AXI4LITE", members, (
        ("PROTOCOL", "AXI4LITE"), ("DATA_WIDTH", 32), ("ADDR_WIDTH", SLAVE_ADDR_WIDTH),
        ("READ_WRITE_MODE", "READ_WRITE"), ("HAS_PROT", 0))))
    return out


def _range(width: int) -> str:
    return f"[{width - 1}:0] " if width > 1 else ""


def wrapper_verilog(accelerator) -> str:
    """``mmfree_top``: the accelerator with Vivado interface attributes, ``aclk``/``aresetn`` and a
    12-bit AXI4-Lite address (see the module docstring)."""
    members = accelerator.signature.members
    groups = interfaces(accelerator)
    ports: list[str] = []        # declarations, each with its attributes
    connections: list[str] = []  # .port(expression) of the instance
    busifs = ":".join(g.name for g in groups)
    ports.append('  (* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 aclk CLK" *)\n'
                 f'  (* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF {busifs}, ASSOCIATED_RESET aresetn" *)\n'
                 '  input  wire aclk')
    ports.append('  (* X_INTERFACE_INFO = "xilinx.com:signal:reset:1.0 aresetn RST" *)\n'
                 '  (* X_INTERFACE_PARAMETER = "POLARITY ACTIVE_LOW" *)\n'
                 '  input  wire aresetn')
    connections += ["    .clk(aclk)", "    .rst(~aresetn)"]   # Amaranth's sync domain: active-high reset
    for group in groups:
        for n, name in enumerate(group.ports):
            member = members[name]
            width = Shape.cast(member.shape).width
            direction = "output" if member.flow == Out else "input "
            expression = name
            if group.protocol == "AXI4LITE" and name.endswith("addr"):
                # The 4 KiB window's upper bits are ignored: the registers repeat every 256 bytes.
                expression = f"{name}[{width - 1}:0]"
                width = SLAVE_ADDR_WIDTH
            signal = name[len(group.name) + 1:].upper()
            attrs = f'  (* X_INTERFACE_INFO = "xilinx.com:interface:aximm:1.0 {group.name} {signal}" *)\n'
            if n == 0:
                params = ", ".join(f"{k} {v}" for k, v in group.parameters)
                attrs += f'  (* X_INTERFACE_PARAMETER = "{params}" *)\n'
            ports.append(f"{attrs}  {direction} wire {_range(width)}{name}")
            connections.append(f"    .{name}({expression})")
    ports.append('  (* X_INTERFACE_INFO = "xilinx.com:signal:interrupt:1.0 irq INTERRUPT" *)\n'
                 '  (* X_INTERFACE_PARAMETER = "SENSITIVITY LEVEL_HIGH" *)\n'
                 '  output wire irq')
    connections.append("    .irq(irq)")
    known = {n for g in groups for n in g.ports} | {"irq"}
    left = sorted(set(members) - known)
    if left:  # a new top-level port must be placed in an interface here first
        raise ValueError(f"the accelerator has ports the wrapper does not place: {', '.join(left)}")
    return (f"// Generated by mmfree.hw.flow.vivado from the accelerator's signature; do not edit.\n"
            f"// {WRAPPER}: {TOP} as a Vivado block-design module reference.\n"
            f"module {WRAPPER} (\n" + ",\n".join(ports) + "\n);\n"
            f"  {TOP} accelerator (\n" + ",\n".join(connections) + "\n  );\n"
            "endmodule\n")


# --------------------------------------------------------------------------
# The Tcl script
# --------------------------------------------------------------------------
def hp_index(port: str) -> int:
    """The number of an HP port: 2 for ``S_AXI_HP2`` or ``S_AXI_HP2_FPD``."""
    return int(port.removeprefix("S_AXI_HP").split("_")[0])


def _used_hp(board: Board, ports: int) -> list[int]:
    """Numbers of the HP ports read ports 0..ports-1 use, in that order."""
    return [hp_index(h) for h in board.hp_ports[:ports]]


def _ps7(board: Board, ports: int, bus_bits: int) -> dict:
    """Processing system 7 (Zynq-7000): properties, pins, interfaces."""
    props = {"PCW_USE_M_AXI_GP0": 1, "PCW_USE_M_AXI_GP1": 0, "PCW_EN_CLK0_PORT": 1,
             "PCW_FPGA0_PERIPHERAL_FREQMHZ": PS_CLOCK_MHZ, "PCW_EN_RST0_PORT": 1,
             "PCW_USE_FABRIC_INTERRUPT": 1, "PCW_IRQ_F2P_INTR": 1}
    used = _used_hp(board, ports)
    for n in range(len(board.hp_ports)):
        props[f"PCW_USE_S_AXI_HP{n}"] = int(n in used)
        if n in used:
            props[f"PCW_S_AXI_HP{n}_DATA_WIDTH"] = bus_bits
    return dict(
        automation="apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 -config "
                   '{make_external "FIXED_IO, DDR" apply_board_preset "1" Master "Disable" Slave "Disable"} $ps',
        props=props, pl_clock="ps/FCLK_CLK0", pl_resetn="ps/FCLK_RESET0_N", irq="ps/IRQ_F2P",
        control_clock="ps/M_AXI_GP0_ACLK", hp_clocks=[f"ps/S_AXI_HP{n}_ACLK" for n in used])


def _psu(board: Board, ports: int, bus_bits: int) -> dict:
    """Zynq UltraScale+ PS: HP<n>_FPD is S_AXI_GP<n+2>; M_AXI_HPM0_FPD is M_AXI_GP0."""
    props = {"PSU__USE__M_AXI_GP0": 1, "PSU__MAXIGP0__DATA_WIDTH": 32, "PSU__USE__M_AXI_GP1": 0,
             "PSU__USE__M_AXI_GP2": 0, "PSU__FPGA_PL0_ENABLE": 1,
             "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ": PS_CLOCK_MHZ, "PSU__USE__IRQ0": 1}
    used = _used_hp(board, ports)
    for n in range(len(board.hp_ports)):
        props[f"PSU__USE__S_AXI_GP{n + 2}"] = int(n in used)
        if n in used:
            props[f"PSU__SAXIGP{n + 2}__DATA_WIDTH"] = bus_bits
    return dict(
        automation='apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps',
        props=props, pl_clock="ps/pl_clk0", pl_resetn="ps/pl_resetn0", irq="ps/pl_ps_irq0",
        control_clock="ps/maxihpm0_fpd_aclk", hp_clocks=[f"ps/saxihp{n}_fpd_aclk" for n in used])


_PS = {"processing_system7": _ps7, "zynq_ultra_ps_e": _psu}


def build_tcl(board: Board, *, design_hash: int, out_dir: str, sources: tuple[str, ...]) -> str:
    """The Vivado batch script of ``board``'s build.

    Parameters
    ----------
    board : the board (its configuration gives ports, bus width and clock).
    design_hash : the DESIGN_HASH built into the Verilog (printed and checked against the manifest).
    out_dir : where the bitstream goes, relative to the script's folder (``bitstreams/<board>``).
    sources : the Verilog files, relative to the script's folder.
    """
    cfg = board.config
    if board.ps not in _PS:
        raise ValueError(f"{board.name}: no Tcl for processing system {board.ps!r}")
    ps = _PS[board.ps](board, cfg.ports, 8 * cfg.bus_bytes)
    mhz = cfg.clock_hz / 1e6
    props = " ".join(f"CONFIG.{k} {{{v}}}" for k, v in ps["props"].items())
    t: list[str] = []
    t.append(f"""# Generated by `make bitstream BOARD={board.name}` (mmfree bitstream); do not edit.
# {board.title}: the mmfree accelerator (DESIGN_HASH 0x{design_hash:08X}) in a block design with the
# processing system, synthesized, implemented and written as bitstreams/{board.name}/mmfree.bit + .hwh.
#   vivado -mode batch -source build.tcl      (from this folder or any other)
# MMFREE_VIVADO_JOBS sets the parallel jobs of the runs (default 4).
set here [file dirname [file normalize [info script]]]
set out [file normalize [file join $here {out_dir}]]
set jobs [expr {{[info exists ::env(MMFREE_VIVADO_JOBS)] ? $::env(MMFREE_VIVADO_JOBS) : 4}}]

proc fail {{message}} {{
    puts "ERROR: mmfree: $message"
    exit 1
}}
# The newest installed version of a Xilinx IP (scripts outlive Vivado releases).
proc latest_ip {{name}} {{
    set defs [lsort -dictionary [get_ipdefs -quiet xilinx.com:ip:${{name}}:*]]
    if {{[llength $defs] == 0}} {{ fail "Vivado has no IP xilinx.com:ip:$name" }}
    return [lindex $defs end]
}}

# ---- project: part and board (the board files give the PS's DDR and MIO presets) ----
create_project -force mmfree [file join $here project] -part {board.part}
set board_parts [lsort -dictionary [get_board_parts -quiet {board.board_part}:*]]
if {{[llength $board_parts] == 0}} {{
    fail "board files for {board.board_part} are not installed (Vivado > Tools > Vivado Store > Boards, or docs/board.md)"
}}
set_property board_part [lindex $board_parts end] [current_project]
add_files -norecurse [list {' '.join(f'[file join $here {s}]' for s in sources)}]
set_property top {WRAPPER} [current_fileset]
update_compile_order -fileset sources_1

# ---- block design ----
create_bd_design {BD_NAME}
set ps [create_bd_cell -type ip -vlnv [latest_ip {board.ps}] ps]
{ps["automation"]}
set_property -dict [list {props}] $ps

# The accelerator's clock: PS clock 0 ({PS_CLOCK_MHZ} MHz) through a clock wizard, exactly {mhz:g} MHz.
set clock [create_bd_cell -type ip -vlnv [latest_ip clk_wiz] clock]
set_property -dict [list CONFIG.CLKOUT1_REQUESTED_OUT_FREQ {{{mhz:.3f}}} CONFIG.USE_LOCKED {{true}} \\
    CONFIG.USE_RESET {{true}} CONFIG.RESET_TYPE {{ACTIVE_LOW}}] $clock
connect_bd_net [get_bd_pins {ps["pl_clock"]}] [get_bd_pins clock/clk_in1]
set reset [create_bd_cell -type ip -vlnv [latest_ip proc_sys_reset] reset]
connect_bd_net [get_bd_pins {ps["pl_resetn"]}] [get_bd_pins clock/resetn] [get_bd_pins reset/ext_reset_in]
connect_bd_net [get_bd_pins clock/locked] [get_bd_pins reset/dcm_locked]

set accelerator [create_bd_cell -type module -reference {WRAPPER} {CELL}]
connect_bd_net [get_bd_pins clock/clk_out1] [get_bd_pins reset/slowest_sync_clk] \\
    [get_bd_pins {CELL}/aclk] [get_bd_pins {ps["control_clock"]}]""")
    for clock in ps["hp_clocks"]:
        t.append(f"connect_bd_net [get_bd_pins clock/clk_out1] [get_bd_pins {clock}]")
    t.append(f"""connect_bd_net [get_bd_pins reset/peripheral_aresetn] [get_bd_pins {CELL}/aresetn]
connect_bd_net [get_bd_pins {CELL}/irq] [get_bd_pins {ps["irq"]}]

# Registers: PS {board.control_port} -> SmartConnect -> the AXI4-Lite slave.
set control_path [create_bd_cell -type ip -vlnv [latest_ip smartconnect] control_path]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $control_path
connect_bd_intf_net [get_bd_intf_pins ps/{board.control_port}] [get_bd_intf_pins control_path/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins control_path/M00_AXI] [get_bd_intf_pins {CELL}/s_axil]
connect_bd_net [get_bd_pins clock/clk_out1] [get_bd_pins control_path/aclk]
connect_bd_net [get_bd_pins reset/interconnect_aresetn] [get_bd_pins control_path/aresetn]

# Memory: read port p (port 0 also writes the logits) -> SmartConnect (AXI4 to the HP port's
# protocol and width; the build's bursts already fit an AXI3 port) -> the board's HP port of
# read port p (contract/boards.py) -> DDR.""")
    for p, hp in enumerate(board.used_hp_ports):
        t.append(f"""set memory_path [create_bd_cell -type ip -vlnv [latest_ip smartconnect] memory_path_p{p}]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $memory_path
connect_bd_intf_net [get_bd_intf_pins {CELL}/m_axi_p{p}] [get_bd_intf_pins memory_path_p{p}/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins memory_path_p{p}/M00_AXI] [get_bd_intf_pins ps/{hp}]
connect_bd_net [get_bd_pins clock/clk_out1] [get_bd_pins memory_path_p{p}/aclk]
connect_bd_net [get_bd_pins reset/interconnect_aresetn] [get_bd_pins memory_path_p{p}/aresetn]""")
    t.append(f"""
# ---- address map: registers at a fixed address; each master sees the DDR where the CPU does ----
assign_bd_address -target_address_space [get_bd_addr_spaces ps/Data] -offset 0x{board.control_address:08X} \\
    -range {CONTROL_RANGE // 1024}K [get_bd_addr_segs {CELL}/s_axil/reg0]""")
    # A build with more than 32 address bits also reaches the DDR that UltraScale+ maps above 4 GB
    # (DDR_HIGH at 0x8_0000_0000, UG1137 Table 1); PYNQ's CMA sits in DDR_LOW (docs/capacity.md).
    segments = ("DDR_LOW", "DDR_HIGH") if cfg.addr_width > 32 else ("DDR_LOW",)
    for p, n in enumerate(_used_hp(board, cfg.ports)):
        for segment in segments:
            t.append(f"assign_bd_address -target_address_space [get_bd_addr_spaces {CELL}/m_axi_p{p}] "
                     f"[get_bd_addr_segs ps/*/HP{n}_{segment}*]")
    t.append(f"""set control [get_bd_addr_segs -of_objects [get_bd_addr_spaces ps/Data] -filter {{NAME =~ "*{CELL}*"}}]
if {{[llength $control] != 1 || [get_property OFFSET $control] != 0x{board.control_address:08X}}} {{
    fail "the register window is not at 0x{board.control_address:08X}"
}}
validate_bd_design
save_bd_design

# ---- synthesis, implementation, bitstream ----
set bd [get_files {BD_NAME}.bd]
generate_target all $bd
set wrapper [make_wrapper -files $bd -top]
add_files -norecurse $wrapper
set_property top {BD_NAME}_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {{[get_property PROGRESS [get_runs synth_1]] != "100%"}} {{ fail "synthesis failed (see the synth_1 log)" }}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] != "100%"}} {{ fail "implementation failed (see the impl_1 log)" }}
open_run impl_1
file mkdir $out
report_utilization -file [file join $out vivado_utilization.txt]
report_timing_summary -file [file join $out vivado_timing.txt]
set wns [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -setup]]
if {{$wns < 0}} {{ fail "timing not met at {mhz:g} MHz: worst negative slack $wns ns (see $out/vivado_timing.txt)" }}

# ---- the overlay: bitstream, hardware handoff, manifest ----
file copy -force [file join [get_property DIRECTORY [get_runs impl_1]] {BD_NAME}_wrapper.bit] [file join $out mmfree.bit]
set hwh [glob -nocomplain [file join $here project mmfree.gen sources_1 bd {BD_NAME} hw_handoff {BD_NAME}.hwh] \\
    [file join $here project mmfree.srcs sources_1 bd {BD_NAME} hw_handoff {BD_NAME}.hwh]]
if {{[llength $hwh] == 0}} {{ fail "no hardware handoff {BD_NAME}.hwh was written" }}
file copy -force [lindex $hwh 0] [file join $out mmfree.hwh]
set f [open [file join $here manifest.json]]
set manifest [read $f]
close $f
set manifest [string map [list {{"tool_version": null}} "\\"tool_version\\": \\"Vivado [version -short]\\"" \\
    {{"wns_ns": null}} "\\"wns_ns\\": $wns"] $manifest]
set f [open [file join $out manifest.json] w]
puts -nonewline $f $manifest
close $f
puts "mmfree: wrote $out/mmfree.bit, mmfree.hwh and manifest.json (DESIGN_HASH 0x{design_hash:08X}, WNS $wns ns)"
""")
    return "\n".join(t)
