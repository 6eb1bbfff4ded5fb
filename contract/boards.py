"""The boards the accelerator is built for: FPGA part, processing system, capacity, address map.

One table, plain Python (no amaranth import): the synthesis estimate
(``make synth``), the Vivado project generator (``make bitstream``), the
board host (``mmfree generate --backend pynq``) and its tests all read it. A
board's name is also the name of its :mod:`mmfree.contract.configs` configuration,
which holds the accelerator's build parameters and clock.

Capacities are the parts' data-sheet figures: CLB LUTs (logic and memory),
CLB flip-flops, 36 Kb block RAM tiles, UltraRAM blocks, DSP slices.

Address map (the same on every build of a board): the accelerator's AXI4-Lite
register window sits at ``control_address`` in the PS's general-purpose
master window; each AXI4 master reaches the PS DDR through one high-performance
port (``hp_ports[p]`` for read port ``p``) at the address the CPU sees it, so
``pynq.allocate``'s physical addresses go straight into the address registers.
"""
from __future__ import annotations

import dataclasses

from .configs import AcceleratorConfig, get_config

__all__ = ["Board", "BOARDS", "BoardError", "get_board", "RESOURCES", "CONTROL_RANGE", "YOSYS_FAMILIES"]

#: Resources the utilization report counts, in table order.
RESOURCES = ("LUT", "FF", "BRAM36", "URAM", "DSP")
#: Size of the control window in the address map: Vivado's smallest segment (the
#: accelerator decodes the low 8 bits, so its registers repeat every 256 bytes in it).
CONTROL_RANGE = 4096


class BoardError(ValueError):
    """An unknown board (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Board:
    """One board: where the accelerator goes and what it may use.

    Attributes
    ----------
    name : board name, also the :mod:`mmfree.contract.configs` configuration name.
    title : what the board is, for tables and messages.
    part : Vivado part name.
    board_part : Vivado board part without its version (``vendor:board``); its board files give
        the processing system's DDR and MIO presets.
    yosys_family : ``synth_xilinx -family`` of the part.
    ps : the processing-system IP (``processing_system7`` or ``zynq_ultra_ps_e``).
    hp_ports : the PS's high-performance slave ports, in the order read port 0, 1, ... use them.
    control_port : the PS master port that reaches the accelerator's registers.
    control_address : bus address of the register window.
    capacity : the part's resources (:data:`RESOURCES`).
    pynq_image : the PYNQ image the board runs.
    lut_budget : largest LUT fraction a build may use (the rest is room for Vivado's placement
        and routing at the configuration's clock).
    """

    name: str
    title: str
    part: str
    board_part: str
    yosys_family: str
    ps: str
    hp_ports: tuple[str, ...]
    control_port: str
    control_address: int
    capacity: dict
    pynq_image: str
    lut_budget: float = 0.70

    @property
    def config(self) -> AcceleratorConfig:
        """The accelerator configuration built for this board."""
        return get_config(self.name)

    @property
    def used_hp_ports(self) -> tuple[str, ...]:
        """The HP ports this board's configuration connects (one per read port)."""
        return self.hp_ports[:self.config.ports]


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("pynq-z2", "TUL PYNQ-Z2 (Zynq-7020)", part="xc7z020clg400-1", board_part="tul.com.tw:pynq-z2",
          yosys_family="xc7", ps="processing_system7",
          # HP0 and HP2 first: they reach different DDR controller ports (HP0/HP1 share one, HP2/HP3
          # the other; docs/memory.md), so a two-port build takes bursts through both.
          hp_ports=("S_AXI_HP0", "S_AXI_HP2", "S_AXI_HP1", "S_AXI_HP3"), control_port="M_AXI_GP0",
          control_address=0x43C0_0000,
          capacity={"LUT": 53_200, "FF": 106_400, "BRAM36": 140, "URAM": 0, "DSP": 220},
          pynq_image="PYNQ 3.x SD-card image for PYNQ-Z2"),
    Board("kv260", "AMD Kria KV260 (Zynq UltraScale+ K26, XCK26)", part="xck26-sfvc784-2LV-c",
          board_part="xilinx.com:kv260_som", yosys_family="xcup", ps="zynq_ultra_ps_e",
          hp_ports=("S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD", "S_AXI_HP3_FPD"),
          control_port="M_AXI_HPM0_FPD", control_address=0xA000_0000,
          capacity={"LUT": 117_120, "FF": 234_240, "BRAM36": 144, "URAM": 64, "DSP": 1_248},
          pynq_image="Kria-PYNQ on the Ubuntu 22.04 image for KV260"),
)}
#: yosys ``synth_xilinx -family`` names of the boards' parts, in board order (each once).
YOSYS_FAMILIES = tuple(dict.fromkeys(b.yosys_family for b in BOARDS.values()))


def get_board(name: str) -> Board:
    """The board called ``name``; :class:`BoardError` (one line) otherwise."""
    if name not in BOARDS:
        raise BoardError(f"unknown board {name!r} (choose from {', '.join(BOARDS)})")
    return BOARDS[name]


def _check() -> None:
    for b in BOARDS.values():
        cfg = b.config
        if cfg.ports > len(b.hp_ports):
            raise AssertionError(f"{b.name}: {cfg.ports} read ports but {len(b.hp_ports)} HP ports")
        if set(b.capacity) != set(RESOURCES):
            raise AssertionError(f"{b.name}: capacity must list {', '.join(RESOURCES)}")


_check()
