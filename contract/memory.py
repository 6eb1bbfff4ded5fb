"""The DDR memory systems of the boards, as their documents and published measurements give them.

Plain Python, standard library only. Every number is a :class:`Figure` that carries its unit and
the document (and table or section) it comes from; a figure derived from others says how in its
``source``, and a figure with no primary source says which secondary source it uses. Nothing here
was measured on a board by this project: these are document figures, meant for the simulated DDR
model (``sim/ddr_model.v``) and for the bandwidth ceilings in ``docs/``.

``BOARD_MEMORY`` holds one :class:`BoardMemory` per board of :mod:`mmfree.contract.boards`;
:func:`markdown_table` renders every figure of every board, and ``docs/memory.md`` carries that
table between ``<!-- memory-table -->`` markers (tests/test_memory_facts.py keeps them equal).
Print it with ``python -m mmfree.contract.memory``.

Source keys used below (full titles in docs/memory.md, "Sources"):

* UG585: AMD Zynq 7000 SoC Technical Reference Manual (v1.11 chapter/table numbers; v1.15 online
  has the same content with per-page table numbers).
* UG1085: AMD Zynq UltraScale+ Device Technical Reference Manual v2.4.
* PYNQ-Z2 PS7: the PS7 configuration of the PYNQ-Z2 board design in github.com/Xilinx/PYNQ,
  ``boards/Pynq-Z2/petalinux_bsp/hardware_project/pynqz2.tcl`` (commit 10fb03dc).
* K26 PS8: the K26 SOM processing-system DDR preset as public K26/KV260 designs set it
  (analogdevicesinc/hdl K26 preset; RodolpheThienard/ieee-posit-benchmark
  ``documentation/fpga/zynq_modification.typ``), and DS987 (K26 SOM data sheet).
* JESD79-3F (DDR3) and JESD79-4 (DDR4): JEDEC device timings; Micron MT41J256M16 / MT40A512M16
  data sheets for the same speed bins.
* bitnet-kv260: github.com/MerlijnW70/bitnet-kv260 ``docs/measurements.md`` (commit 04feec2d),
  measurements on one KV260.
"""
from __future__ import annotations

import dataclasses

__all__ = ["Figure", "BoardMemory", "BOARD_MEMORY", "get_board_memory", "markdown_table",
           "TABLE_BEGIN", "TABLE_END"]

#: Markers around the generated table in docs/memory.md.
TABLE_BEGIN = "<!-- memory-table -->"
TABLE_END = "<!-- /memory-table -->"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One cited number: ``value`` in ``unit``, from ``source`` (document + table or section,
    or a URL of a published measurement; derived figures state the derivation)."""

    value: float
    unit: str
    source: str


@dataclasses.dataclass(frozen=True)
class BoardMemory:
    """The DDR memory system of one board, as seen from a PL master on the HP ports.

    Times are in ns at the board's DRAM clock; ``row_bytes`` is the open-page size across the
    whole data bus; ``bank_shift`` is the lowest bank (or bank-group) bit of the byte address under
    ``address_map``; ``ddrc_port_of_hp`` maps each HP port name of :mod:`mmfree.contract.boards` to
    the DDR controller AXI port it reaches (two HP ports on one controller port share it);
    ``calibration`` holds published sustained sequential read bandwidths (GB/s) PL to DDR that a
    simulated memory of this board must reproduce within +-10 %.
    """

    board: str
    dram: str
    data_rate_mt_s: Figure
    bus_bits: Figure
    banks: Figure
    bank_groups: Figure
    row_bytes: Figure
    t_ck_ns: Figure
    cl_cycles: Figure
    t_rcd_ns: Figure
    t_rp_ns: Figure
    t_ras_ns: Figure
    t_rfc_ns: Figure
    t_refi_ns: Figure
    t_wtr_ns: Figure
    t_rtw_ns: Figure
    address_map: str
    bank_shift: Figure
    controller_efficiency: dict[str, Figure]
    pl_port_bits: Figure
    pl_port_max_burst: Figure
    pl_port_read_acceptance: Figure
    pl_port_max_clock_mhz: Figure
    ddrc_port_of_hp: dict[str, int]
    ddrc_port_bytes_per_s: Figure
    read_latency_ns: Figure
    calibration: tuple[Figure, ...]
    calibration_clock_mhz: Figure      # the PL clock the calibration points were measured at
    #: What ``pynq.allocate`` can hand out on the board's stock PYNQ image (the kernel's CMA less what
    #: the kernel itself takes): the weight buffer, the logits and any other buffer share it.
    contiguous_bytes: Figure
    notes: str = ""
    #: Where that contiguous memory starts on the bus, where a published boot log shows it.
    contiguous_address: Figure | None = None

    @property
    def peak_bytes_per_s(self) -> float:
        """DRAM peak: data rate (transfers per second) x bus width in bytes."""
        return self.data_rate_mt_s.value * 1e6 * self.bus_bits.value / 8

    def figures(self) -> list[tuple[str, Figure]]:
        """Every figure of this board as (name, figure), in field order; dictionary and tuple
        fields are expanded as ``name[key]`` and ``name[i]``."""
        out: list[tuple[str, Figure]] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Figure):
                out.append((field.name, value))
            elif isinstance(value, dict) and all(isinstance(v, Figure) for v in value.values()):
                out.extend((f"{field.name}[{k}]", v) for k, v in value.items())
            elif isinstance(value, tuple):
                out.extend((f"{field.name}[{i}]", v) for i, v in enumerate(value))
        return out


# --- TUL PYNQ-Z2: Zynq-7020, one 4 Gb x16 DDR3 device on a 16-bit bus at 1050 MT/s ----------------

_Z2_TCK = 1e3 / 525.0          # ns: DDR clock 525 MHz (PCW_UIPARAM_DDR_FREQ_MHZ)
_UG585_EFF = ("UG585 v1.11 Table 22-5 (v1.15 'DDR Efficiency' Table 1): DDR controller efficiency, "
              "system #1 (4 HP/AFI masters, AXI burst 16, PL 150 MHz, DDR3 1,050 Mb/s)")

_PYNQ_Z2 = BoardMemory(
    board="pynq-z2",
    dram="DDR3-1066 speed bin run at 1050 MT/s, 16-bit bus, one 4 Gb x16 device (MT41J256M16), 512 MB",
    data_rate_mt_s=Figure(1050, "MT/s", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_FREQ_MHZ 525 (DDR PLL 1050 MHz / 2), "
                          "speed bin DDR3_1066F, part MT41J256M16 RE-125"),
    bus_bits=Figure(16, "bits", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_BUS_WIDTH '16 Bit', DRAM_WIDTH '16 Bits'"),
    banks=Figure(8, "banks", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_BANK_ADDR_COUNT 3 (8 banks); JESD79-3F"),
    bank_groups=Figure(1, "groups", "DDR3 has no bank groups (JESD79-3F)"),
    row_bytes=Figure(2048, "bytes", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_COL_ADDR_COUNT 10 -> 1,024 columns x 2 bytes "
                     "on one x16 device (MT41J256M16 page size 2 KB)"),
    t_ck_ns=Figure(round(_Z2_TCK, 4), "ns", "1 / 525 MHz (PYNQ-Z2 PS7 PCW_UIPARAM_ACT_DDR_FREQ_MHZ 525)"),
    cl_cycles=Figure(7, "cycles", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_CL 7 (CWL 6)"),
    t_rcd_ns=Figure(round(7 * _Z2_TCK, 4), "ns", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_T_RCD 7 cycles x t_CK"),
    t_rp_ns=Figure(round(7 * _Z2_TCK, 4), "ns", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_T_RP 7 cycles x t_CK"),
    t_ras_ns=Figure(35.0, "ns", "PYNQ-Z2 PS7: PCW_UIPARAM_DDR_T_RAS_MIN 35.0 (t_RC 48.91, t_FAW 40.0)"),
    t_rfc_ns=Figure(260, "ns", "JESD79-3F t_RFC for a 4 Gb device (MT41J256M16 data sheet: 260 ns)"),
    t_refi_ns=Figure(7800, "ns", "JESD79-3F t_REFI 7.8 us at 0-85 C (PS7 PCW_UIPARAM_DDR_HIGH_TEMP 'Normal (0-85)')"),
    t_wtr_ns=Figure(round(4 * _Z2_TCK, 4), "ns", "JESD79-3F t_WTR = max(4 nCK, 7.5 ns); 4 nCK = 7.62 ns at 525 MHz. "
                    "Write-to-read command spacing is CWL + 4 + t_WTR"),
    t_rtw_ns=Figure(round(7 * _Z2_TCK, 4), "ns", "derived, JESD79-3F read-to-write: RL + t_CCD + 2 nCK - WL "
                    "= 7 + 4 + 2 - 6 = 7 nCK (CL 7, CWL 6, AL 0, BL8)"),
    address_map="row-bank-column: byte address [0] byte lane, [10:1] column (10 bits), [13:11] bank (3 bits), "
                "[28:14] row (15 bits). UG585 ch.10 DDRC address mapping registers DRAM_addr_map_bank/col/row "
                "(0xF800603C-44) as the PS7 wizard programs them for a 16-bit bus (ps7_init bank 0x666: "
                "bank_b0 = 6 + internal base 5 = bit 11; row 0x0FF55555: row_b0 = bit 14)",
    bank_shift=Figure(11, "bit", "UG585 register DRAM_addr_map_bank (reg_ddrc_addrmap_bank_b0, internal base 5) "
                      "as ps7_init sets it for a 16-bit bus (0x666): 1 byte-lane bit + 10 column bits"),
    controller_efficiency={
        "sequential reads": Figure(97, "%", _UG585_EFF),
        "random reads": Figure(92, "%", _UG585_EFF),
        "sequential writes": Figure(90, "%", _UG585_EFF),
        "random writes": Figure(87, "%", _UG585_EFF),
        "sequential reads+writes": Figure(87, "%", _UG585_EFF),
        "random reads+writes": Figure(79, "%", _UG585_EFF),
        "design maximum (planning)": Figure(75, "%", "UG585 v1.11 section 22.3.2: 'the DDR controller was designed "
                                           "to have a maximum efficiency of approximately 75%'"),
    },
    pl_port_bits=Figure(64, "bits", "UG585 ch.5 AXI_HP: 32- or 64-bit PL interface; PYNQ-Z2 PS7 "
                        "PCW_S_AXI_HP0..3_DATA_WIDTH 64"),
    pl_port_max_burst=Figure(16, "beats", "UG585 ch.5/ch.10: AXI3 ports, bursts of 1 to 16 beats "
                             "(DDRI: 'Burst length support from 1 to 16 data beats')"),
    pl_port_read_acceptance=Figure(8, "transactions", "UG585 register AFI_RDCHAN_ISSUINGCAP (axi_hp0..3 "
                                   "0xF8008004..): reset 0x7, i.e. 8 reads in flight from an HP port into the PS"),
    pl_port_max_clock_mhz=Figure(150, "MHz", "UG585 v1.11 ch.22 (Table 22-4 and the DDR efficiency test system, "
                                 "PL AXI clock 150 MHz): the HP-port planning clock, 1,200 MB/s read per 64-bit "
                                 "port; secondary: the DS187 -1 maximum was not retrieved for this table"),
    ddrc_port_of_hp={"S_AXI_HP0": 3, "S_AXI_HP1": 3, "S_AXI_HP2": 2, "S_AXI_HP3": 2},
    ddrc_port_bytes_per_s=Figure(2.8e9, "bytes/s", "UG585 v1.11 section 22.3.1: 'DDR read bandwidth is limited to "
                                 "2,840 MB/s on a particular port by the memory interconnect' (64-bit DDRI port at "
                                 "DDR_2x 355 MHz); at PYNQ-Z2's DDR_2x 350 MHz (DDR PLL 1050 / 3, as UG585 Table "
                                 "22-7 system #1) 8 B x 350 MHz = 2.80 GB/s"),
    read_latency_ns=Figure(200, "ns", "ESTIMATE, no published PL-side measurement found: DRAM row miss "
                           "t_RP + t_RCD + CL = 40 ns plus the AFI clock crossings, memory interconnect, DDRI "
                           "arbitration, DDRC CAM and PHY both ways (~160 ns); treat as +-50 %"),
    calibration=(
        Figure(2.037, "GB/s", "derived: UG585 Table 22-5 sequential reads 97 % x 2.1 GB/s peak (1050 MT/s x 2 B); "
               "the efficiency was measured with 4 HP masters at PL 150 MHz on DDR3 1,050 Mb/s, the PYNQ-Z2's DDR "
               "clocks. No published PL->DDR bandwidth measurement on a PYNQ-Z2 was found"),
    ),
    calibration_clock_mhz=Figure(150, "MHz", "UG585 v1.11 ch.22: the DDR efficiency test system's PL AXI masters "
                                 "ran at 150 MHz, the conditions of the calibration point"),
    contiguous_bytes=Figure(120 << 20, "bytes", "PYNQ v2.7, v3.0.1, v3.1 (github.com/Xilinx/PYNQ "
                            "sdbuild/boot/meta-pynq/recipes-kernel/linux/linux-xlnx/pynq.cfg): CONFIG_CMA_SIZE_MBYTES=128, "
                            "no cma= in pynq_bootargs.dtsi, no reserved-memory for the Pynq-Z2; Xilinx/PYNQ pull "
                            "request #1424: 'by default only 128M of which ~8M is already used by the kernel ... only "
                            "120M of memory can by default be allocated'. cma= in the boot arguments raises it"),
    notes="HP0/HP1 share one memory-interconnect switch and DDRC port, HP2/HP3 the other (UG585 ch.5 Figure 5-1; "
          "ch.10: 'two ports are dedicated to the AXI_HP interfaces'); the numbers 3 (HP0/HP1) and 2 (HP2/HP3) are "
          "secondary (a public Zynq design citing UG585 Table 5-11) and matter only as labels of the sharing. For two "
          "read ports use HP0+HP2 (or HP1+HP3). One 64-bit HP "
          "port at 150 MHz carries at most 1.2 GB/s, so two ports are needed to approach the 2.1 GB/s DRAM peak. "
          "UG585's 75 % design-maximum efficiency (1.58 GB/s) is the planning figure the anchors used; the "
          "calibration uses the measured 97 % sequential-read table entry.",
)


# --- AMD Kria KV260: K26 SOM (XCK26), four 8 Gb x16 DDR4 devices, 64-bit at 2400 MT/s --------------

_K26_TCK = 1e3 / 1200.0        # ns: DRAM clock 1200 MHz (DDR4-2400)
_BITNET = ("bitnet-kv260 docs/measurements.md 'Bandwidth' (github.com/MerlijnW70/bitnet-kv260, commit 04feec2d): "
           "four engines, one 128-bit beat a clock each on S_AXI_HP0..3_FPD at 250 MHz (16.0 GB/s beat rate)")

_KV260 = BoardMemory(
    board="kv260",
    dram="DDR4-2400, 64-bit non-ECC, four 8 Gb x16 devices (MT40A512M16), 4 GB, on the K26 SOM",
    data_rate_mt_s=Figure(2400, "MT/s", "DS987 (K26 SOM: 4 GB 64-bit DDR4, non-ECC); K26 PS8: "
                          "PSU__CRF_APB__DDR_CTRL__FREQMHZ 1200, PSU__DDRC__SPEED_BIN DDR4_2400"),
    bus_bits=Figure(64, "bits", "DS987 (64-bit DDR4 on the SOM); K26 PS8 effective DRAM bus width 64 bits"),
    banks=Figure(8, "banks", "K26 PS8: PSU__DDRC__BG_ADDR_COUNT 1 and bank address count 2 -> 2 bank groups "
                 "x 4 banks (JESD79-4 x16 device)"),
    bank_groups=Figure(2, "groups", "JESD79-4: an x16 DDR4 device has 2 bank groups (K26 PS8 BG_ADDR_COUNT 1)"),
    row_bytes=Figure(8192, "bytes", "JESD79-4 / MT40A512M16: x16 page size 2 KB (10 column bits x 2 bytes); "
                     "x 4 devices across the 64-bit bus"),
    t_ck_ns=Figure(round(_K26_TCK, 4), "ns", "1 / 1200 MHz (DDR4-2400; K26 PS8 DDR_CTRL 1200 MHz)"),
    cl_cycles=Figure(16, "cycles", "K26 PS8: PSU__DDRC__CL 16, CWL 16 (JESD79-4 DDR4-2400R 16-16-16)"),
    t_rcd_ns=Figure(13.32, "ns", "K26 PS8: PSU__DDRC__T_RCD 16 cycles; JESD79-4 DDR4-2400R t_RCD 13.32 ns"),
    t_rp_ns=Figure(13.32, "ns", "K26 PS8: PSU__DDRC__T_RP 16 cycles; JESD79-4 DDR4-2400R t_RP 13.32 ns"),
    t_ras_ns=Figure(32.0, "ns", "JESD79-4 DDR4-2400 t_RAS min 32 ns (t_RC = 45.32 ns as K26 PS8 PSU__DDRC__T_RC)"),
    t_rfc_ns=Figure(350, "ns", "JESD79-4 t_RFC1 for an 8 Gb device (MT40A512M16 data sheet: 350 ns)"),
    t_refi_ns=Figure(7800, "ns", "JESD79-4 t_REFI 7.8 us at 0-85 C"),
    t_wtr_ns=Figure(7.5, "ns", "JESD79-4 t_WTR_L = max(4 nCK, 7.5 ns) (same bank group; t_WTR_S = max(2 nCK, 2.5 ns)). "
                    "Write-to-read command spacing is CWL + 4 + t_WTR"),
    t_rtw_ns=Figure(round(6 * _K26_TCK, 4), "ns", "derived, JESD79-4 read-to-write: RL + BL/2 - WL + 2 nCK "
                    "= 16 + 4 - 16 + 2 = 6 nCK (CL 16, CWL 16, AL 0, 1 nCK preamble)"),
    address_map="row-bank-column with the bank group lowest: byte address [2:0] byte lane, [12:3] column (10 bits), "
                "[13] bank group, [15:14] bank, [31:16] row (16 bits). UG1085 ch.17 DDRC address mapper "
                "(ADDRMAP0..11, UG1087) with the Vivado PCW default mapping ROW_BANK_COL; the bit positions are "
                "derived from the device geometry, the board's psu_init ADDRMAP values were not retrieved",
    bank_shift=Figure(13, "bit", "derived: 3 byte-lane bits + 10 column bits under ROW_BANK_COL (UG1085 ch.17, "
                      "UG1087 ADDRMAP8.addrmap_bg_b0 internal base 2 on the HIF word address); verify against "
                      "the board's psu_init.c"),
    controller_efficiency={
        "sequential reads": Figure(83.2, "%", "derived: " + _BITNET + "; head stream 15.93-16.01 GB/s / 19.2 GB/s "
                                   "peak. A lower bound: the stream ran at the ports' beat rate"),
        "sequential reads, uneven ports": Figure(66.3, "%", "derived: " + _BITNET + "; model stream 12.73 GB/s / "
                                                 "19.2 GB/s; engines on HP1 and HP2 finished 9-33 % late"),
    },
    pl_port_bits=Figure(128, "bits", "UG1085 ch.35 PL-PS interfaces: 32-, 64- or 128-bit PL side, PS side always "
                        "128 bits"),
    pl_port_max_burst=Figure(16, "beats", "UG1085 ch.35 'PL-PS Interface Specifics': AXI4 on the PL side, burst "
                             "length restricted to 16 by the AXI3 conversion in the AFI"),
    pl_port_read_acceptance=Figure(8, "transactions", "UG1085 ch.35 'AXI Interface Programming' (AFI): 8-deep read "
                                   "command queue, 'read and write command acceptance capability of eight'"),
    pl_port_max_clock_mhz=Figure(333, "MHz", "DS925 PS-PL AXI interface maximum (secondary: Vivado warns above "
                                 "333.33 MHz on an HP port clock, github.com/esa-tu-darmstadt/tapasco issue 205); "
                                 "published KV260 LLM designs close 250 MHz"),
    ddrc_port_of_hp={"S_AXI_HP0_FPD": 3, "S_AXI_HP1_FPD": 4, "S_AXI_HP2_FPD": 4, "S_AXI_HP3_FPD": 5},
    ddrc_port_bytes_per_s=Figure(9.6e9, "bytes/s", "derived: UG1085 ch.17 XPI AXI ports 128-bit, 'synchronous to the "
                                 "memory controller clock', which runs at half the 1200 MHz DRAM clock: 16 B x 600 MHz"),
    read_latency_ns=Figure(170, "ns", "ESTIMATE, no published idle PL-side measurement found: DRAM row miss "
                           "t_RP + t_RCD + CL = 40 ns plus AFI clock crossings, FPD interconnect, XPI/port arbiter, "
                           "DDRC CAM and PHY both ways; treat as +-50 %. Loaded latency is far larger: Manev et al. "
                           "(FPT 2019, ZCU102) measured ~650 ns with ~47 reads in flight on one HP port"),
    calibration=(
        Figure(15.97, "GB/s", _BITNET + ": head stream 65,667,072 B in 4.103-4.123 ms = 15.93-16.01 GB/s "
               "(midpoint), sustained sequential reads, all four ports at their beat rate"),
    ),
    calibration_clock_mhz=Figure(250, "MHz", _BITNET + ": the four HP ports ran at 250 MHz during the "
                                 "measurement"),
    contiguous_bytes=Figure(1008 << 20, "bytes", "KV260 Ubuntu 22.04 boot log, kernel 5.15.0-1010-xilinx-zynqmp "
                            "(github.com/LogicTronixInc/Vitis-AI-KriaSoMs-Forum-Resources, KV260-Ubuntu-Boot-Log/"
                            "KV260_Ubuntu22_04LTS_March52023/Boot_LOG_March5_2023.txt): 'cma=1000M', 'cma: Reserved "
                            "1008 MiB at 0x0000000036000000' (in DDR_LOW, below 4 GB); Kria-PYNQ (Xilinx/Kria-PYNQ "
                            "install.sh, dts/pynq.dts) does not change it. What the display stack takes of it is not "
                            "known"),
    contiguous_address=Figure(0x3600_0000, "address", "the same KV260 boot log: 'cma: Reserved 1008 MiB at "
                              "0x0000000036000000'"),
    notes="S_AXI_HP1_FPD and S_AXI_HP2_FPD share XPI port 4; HP0 shares a port with the DisplayPort DMA, HP3 "
          "one with the FPD DMA (UG1085 ch.35 'PL-PS Interface Specifics'; their numbers 3 and 5 follow the DDR "
          "subsystem diagram of UG1085 ch.17, where ports 0-2 serve the RPU and the CCI); with two read ports use "
          "HP0+HP3 (or one of HP1/HP2 with HP0 or HP3), never HP1+HP2. The same design's weight stream reached "
          "only 12.73 GB/s (79.6 % of the 16.0 GB/s beat rate) because the engines on HP1 and HP2 finished 9-33 % "
          "late (bitnet-kv260 measurements.md); that is the anchors' '12.7 GB/s', and the anchors' '16.0 GB/s "
          "measured' is the head stream's 15.93-16.01 GB/s.",
)

BOARD_MEMORY: dict[str, BoardMemory] = {m.board: m for m in (_PYNQ_Z2, _KV260)}


def get_board_memory(name: str) -> BoardMemory:
    """The memory system of board ``name``; :class:`ValueError` (one line) otherwise."""
    if name not in BOARD_MEMORY:
        raise ValueError(f"no memory figures for board {name!r} (choose from {', '.join(BOARD_MEMORY)})")
    return BOARD_MEMORY[name]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if abs(value) >= 1e6:
        return f"{value:.4g}"
    return f"{value:g}"


def markdown_table() -> str:
    """The figures table of docs/memory.md: one row per figure per board, with its source."""
    lines = ["| board | figure | value | unit | source |", "|---|---|---|---|---|"]
    for memory in BOARD_MEMORY.values():
        lines.append(f"| {memory.board} | peak (derived) | {memory.peak_bytes_per_s / 1e9:g} | GB/s | "
                     f"data_rate_mt_s x bus_bits / 8 |")
        for name, figure in memory.figures():
            value = f"0x{int(figure.value):_X}" if figure.unit == "address" else _number(figure.value)
            lines.append(f"| {memory.board} | {_cell(name)} | {value} | {_cell(figure.unit)} | "
                         f"{_cell(figure.source)} |")
        ports = ", ".join(f"{hp}: {port}" for hp, port in memory.ddrc_port_of_hp.items())
        lines.append(f"| {memory.board} | ddrc_port_of_hp | {_cell(ports)} | port | see notes and prose |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
