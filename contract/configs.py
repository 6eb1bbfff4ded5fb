"""Named accelerator configurations: build parameters and the memory system they meet.

One table, plain Python (no amaranth import), read by the simulator transport
(which builds ``Accelerator(**config.accelerator_params())`` and the DDR
model with ``config.ddr_params()``), by the benchmark, and later by the
synthesis flow. A configuration is chosen by name (``--config pynq-z2``).

The memory: ``ddr_params()`` gives the simulated DDR either the board's memory
model (``memory="board"``, the default: :func:`board_ddr_params` from the cited
figures of :mod:`mmfree.contract.memory`) or the ideal memory, a constant
``ddr_bytes_per_cycle`` (``memory="ideal"``: the upper bound).

The clocks are what the logic-depth estimate of the RTL supports
(``bitstreams/<board>/timing.md``, docs/timing.md): an estimate, not timing
closure; the RTL's deepest paths, not the parts, hold them there today.

* ``pynq-z2``: Zynq-7020, four 64-bit HP ports (AXI3, 16-beat bursts), 60 MHz,
  32 weight bytes per cycle: the four ports' 1.92 GB/s at 60 MHz is what keeps
  the 16-bit DDR3 (2.1 GB/s peak, 2.04 sustained) nearly busy at this clock.
  Two columns (four need 78 % of the LUTs and the whole block RAM, and drop the
  estimate to 57 MHz: docs/columns.md).
* ``kv260``: Zynq UltraScale+ K26, four 128-bit HP ports, 64 weight bytes per
  cycle; at its clock the ports, not the 64-bit DDR4-2400 (19.2 GB/s peak, about
  16 sustained), bound the stream. Five columns, two element-wise lanes (67 %
  of the LUTs; a sixth column is over the 70 % budget: docs/columns.md).
* ``sim-default``: the PYNQ-Z2 memory at 150 MHz (the PL clock of UG585's
  efficiency test) with two ports, two columns (so CI runs batched decode and
  prefill) and capacities sized for the bundled model (and the tiny test
  model): a smaller, faster Verilator build for CI and ``mmfree generate
  --backend sim``.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from .memory import get_board_memory

__all__ = ["AcceleratorConfig", "CONFIGS", "ConfigError", "DEFAULT_SIM_CONFIG", "get_config", "MEMORY_MODELS",
           "board_ddr_params"]

#: The simulated DDR's models (``AcceleratorConfig.memory``).
MEMORY_MODELS = ("board", "ideal")


class ConfigError(ValueError):
    """An unknown or inconsistent configuration (one-line message)."""


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig:
    """Build parameters of one accelerator and the memory system it is measured against.

    Attributes
    ----------
    name : the configuration's name (``CONFIGS`` key).
    bus_bytes : AXI4 data width of each read port in bytes (8 or 16).
    ports : number of AXI4 read ports (1..4).
    engine_bytes : packed weight bytes the matrix engine consumes per cycle.
    rows_per_block : the weight image's ``rows_per_block`` this build expects.
    fifo_bytes : weight FIFO depth between the DDR reader and the datapath.
    outstanding : read bursts in flight per port.
    max_hidden, max_layers, max_intermediate, max_vocab : on-chip capacity.
    clock_hz : fabric clock the projections use.
    ddr_bytes_per_cycle : DDR bandwidth at ``clock_hz`` (a fraction, shared by the ports).
    ddr_latency_cycles : read latency of the DDR model (address to first beat).
    ddr_bytes : size of the simulated DDR (images and buffers must fit).
    ddr_base : bus address of the simulated DDR's first byte (a multiple of 4096): where the
        board's contiguous memory (what ``pynq.allocate`` hands out) lies.
    elements_per_cycle : input-stage elements per cycle of the BitLinear engine (1, 2 or 4): the
        per-record prep passes shrink by this factor, which matters when the weight stream is fast.
    max_burst_beats : longest AXI burst the build issues (16 on the Zynq-7000's AXI3 HP ports).
    addr_width : address bits of the AXI4 masters (32 reaches the low 4 GB; 40 reaches the
        Zynq UltraScale+ DDR that the address map puts at 0x8_0000_0000, docs/capacity.md).
    memory_board : the board whose memory system (:mod:`mmfree.contract.memory`) the simulated
        DDR models.
    memory : ``"board"`` (the default: refresh, rows, turnaround, port acceptance and latency of
        ``memory_board``, :func:`board_ddr_params`) or ``"ideal"`` (a constant
        ``ddr_bytes_per_cycle`` with a fixed ``ddr_latency_cycles``: the upper bound).
    cpu_share : share of the DRAM's peak bandwidth the processor takes meanwhile (board model only).
    columns : tokens per weight pass (B sequences decoded, or B prompt tokens prefilled, sharing one
        pass over the weights), 1..8; the driver keeps one sequence slot of recurrent state in
        memory per column.
    elementwise_lanes : MLGRUs and GLUs (1 or 2; 2 needs ``engine_bytes`` >= 16): with two, every
        record's outputs but the head's move two rows a cycle, so a record whose weights take
        fewer cycles a row than it has columns is not bound by one output a cycle (its cost:
        docs/columns.md).
    """

    name: str
    bus_bytes: int
    ports: int
    engine_bytes: int
    rows_per_block: int
    fifo_bytes: int
    outstanding: int
    max_hidden: int
    max_layers: int
    max_intermediate: int
    max_vocab: int
    clock_hz: float
    ddr_bytes_per_cycle: Fraction
    ddr_latency_cycles: int
    ddr_bytes: int
    description: str = ""
    elements_per_cycle: int = 1
    #: ``ram_style`` of the weight FIFO and the deep per-column vectors (``"ultra"``: UltraRAM,
    #: UltraScale+ only).
    large_ram_style: str | None = None
    max_burst_beats: int = 256
    addr_width: int = 32
    ddr_base: int = 0
    memory_board: str = "pynq-z2"
    memory: str = "board"
    cpu_share: float = 0.0
    columns: int = 1
    elementwise_lanes: int = 1

    def __post_init__(self):
        if self.bus_bytes not in (8, 16):
            raise ConfigError(f"{self.name}: bus_bytes must be 8 or 16, not {self.bus_bytes}")
        if not 1 <= self.ports <= 4:
            raise ConfigError(f"{self.name}: ports must be 1..4, not {self.ports}")
        if self.rows_per_block % self.engine_bytes:
            raise ConfigError(f"{self.name}: rows_per_block {self.rows_per_block} is not a multiple of "
                             f"engine_bytes {self.engine_bytes}")
        if self.ddr_bytes_per_cycle <= 0 or self.ddr_bytes_per_cycle > self.bus_bytes * self.ports:
            raise ConfigError(f"{self.name}: ddr_bytes_per_cycle must be in (0, bus_bytes * ports]")
        if self.memory not in MEMORY_MODELS:
            raise ConfigError(f"{self.name}: memory must be one of {', '.join(MEMORY_MODELS)}, not {self.memory!r}")
        if not 32 <= self.addr_width <= 64:
            raise ConfigError(f"{self.name}: addr_width must be in [32, 64], not {self.addr_width}")
        if self.ddr_base % 4096 or not 0 <= self.ddr_base or self.ddr_base + self.ddr_bytes > 1 << self.addr_width:
            raise ConfigError(f"{self.name}: the simulated DDR at {self.ddr_base:#x} must be 4 KiB aligned and "
                             f"end within {self.addr_width}-bit addresses")
        if not 1 <= self.columns <= 8:
            raise ConfigError(f"{self.name}: columns must be in 1..8, not {self.columns}")
        if not 0 <= self.cpu_share < 1:
            raise ConfigError(f"{self.name}: cpu_share must be in [0, 1), not {self.cpu_share!r}")

    @property
    def ddr_bytes_per_second(self) -> float:
        return float(self.ddr_bytes_per_cycle) * self.clock_hz

    @property
    def max_vocab_log2(self) -> int:
        """Width of the logits counter: the build holds V <= 2**max_vocab_log2."""
        return max(1, math.ceil(math.log2(self.max_vocab)))

    def accelerator_params(self, design_hash: int = 0) -> dict:
        """Keyword arguments of ``hw.accelerator.Accelerator`` for this build."""
        return dict(bus_bytes=self.bus_bytes, ports=self.ports, engine_bytes=self.engine_bytes,
                    rows_per_block=self.rows_per_block, fifo_bytes=self.fifo_bytes,
                    max_hidden=self.max_hidden, max_layers=self.max_layers,
                    max_intermediate=self.max_intermediate, max_vocab=self.max_vocab,
                    design_hash=design_hash, outstanding=self.outstanding, max_burst_beats=self.max_burst_beats,
                    addr_width=self.addr_width, columns=self.columns,
                    elements_per_cycle=self.elements_per_cycle, large_ram_style=self.large_ram_style,
                    elementwise_lanes=self.elementwise_lanes)

    def ddr_params(self) -> dict:
        """Parameters of the simulated DDR (sim/ddr_model.v) for this configuration's ``memory``."""
        if self.memory == "board":
            return board_ddr_params(self)
        bw = Fraction(self.ddr_bytes_per_cycle)
        return dict(bandwidth_num=bw.numerator, bandwidth_den=bw.denominator,
                    latency_cycles=self.ddr_latency_cycles, size_bytes=self.ddr_bytes,
                    base_page=self.ddr_base >> 12)

    def with_memory(self, memory: str, cpu_share: float | None = None) -> "AcceleratorConfig":
        """This build on another memory model (``"board"`` or ``"ideal"``), or processor share."""
        return dataclasses.replace(self, memory=memory,
                                   cpu_share=self.cpu_share if cpu_share is None else cpu_share)

    def roofline_cycles(self, bytes_moved: int) -> float:
        """Cycles the DDR needs to deliver ``bytes_moved`` at its sustained bandwidth."""
        return bytes_moved / float(self.ddr_bytes_per_cycle)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ddr_bytes_per_cycle"] = float(self.ddr_bytes_per_cycle)
        return d



def board_ddr_params(config: AcceleratorConfig) -> dict:
    """sim/ddr_model.v's board-model parameters for ``config`` at its clock, from the cited
    figures of its ``memory_board`` (:mod:`mmfree.contract.memory`; docs/memory.md says how each
    mechanism works). Times are rounded up to whole cycles of the fabric clock."""
    from .boards import get_board

    mem = get_board_memory(config.memory_board)
    ns_per_cycle = 1e9 / config.clock_hz

    def cycles(ns: float) -> int:
        return math.ceil(ns / ns_per_cycle - 1e-9)

    peak = Fraction(mem.peak_bytes_per_s / config.clock_hz).limit_denominator(1000)
    banks = int(mem.banks.value)
    hp_ports = get_board(config.memory_board).hp_ports[:config.ports]
    groups = [mem.ddrc_port_of_hp[hp] for hp in hp_ports]
    miss = cycles(mem.t_rp_ns.value + mem.t_rcd_ns.value)
    return dict(bandwidth_num=peak.numerator, bandwidth_den=peak.denominator,
                latency_cycles=max(2, cycles(mem.read_latency_ns.value)), size_bytes=config.ddr_bytes,
                base_page=config.ddr_base >> 12,
                queue=int(mem.pl_port_read_acceptance.value),
                refresh_interval_cycles=round(mem.t_refi_ns.value / ns_per_cycle),
                refresh_cycles=cycles(mem.t_rfc_ns.value), banks=banks, bank_shift=int(mem.bank_shift.value),
                row_shift=int(mem.row_bytes.value * banks).bit_length() - 1, miss_cycles=miss,
                turnaround_cycles=cycles(mem.t_rtw_ns.value + mem.t_wtr_ns.value),
                port_group=sum((g % 4) << (2 * p) for p, g in enumerate(groups)),
                # the spread between a read that finds its row open and one that must open it
                jitter_cycles=miss,
                cpu_bytes_num=round(config.cpu_share * peak.numerator))


_FULL_370M = dict(max_hidden=1024, max_layers=24, max_intermediate=2816, max_vocab=32000,
                  ddr_bytes=96 << 20)
#: Every released size (spec/model.md section 5): 2.7B's D 2560, L 32, I 6912 bound the others. The
#: simulated DDR lies where the KV260's contiguous memory does under Ubuntu (docs/capacity.md: 1008 MiB
#: at 0x3600_0000); 255 MiB of it, as Verilator's byte arrays stop at 2**28 elements: enough for the
#: benchmark's 1- and 2-layer images of every shape (a whole 2.7B image is 656 MiB).
_FULL_2_7B = dict(max_hidden=2560, max_layers=32, max_intermediate=6912, max_vocab=32000,
                  ddr_bytes=255 << 20, ddr_base=int(get_board_memory("kv260").contiguous_address.value))

CONFIGS: dict[str, AcceleratorConfig] = {c.name: c for c in (
    AcceleratorConfig("pynq-z2", bus_bytes=8, ports=4, engine_bytes=32, rows_per_block=64, fifo_bytes=16384,
                      outstanding=8, max_burst_beats=16, elements_per_cycle=2, columns=2, clock_hz=60e6, ddr_bytes_per_cycle=Fraction(32), ddr_latency_cycles=24,
                      description="Zynq-7020, 4 x 64-bit HP ports, 60 MHz (what the logic-depth estimate "
                                  "supports), DDR3 2.1 GB/s", **_FULL_370M),
    AcceleratorConfig("kv260", bus_bytes=16, ports=4, engine_bytes=64, rows_per_block=64, fifo_bytes=65536,
                      outstanding=8, max_burst_beats=16, elements_per_cycle=4, large_ram_style="ultra", columns=5,
                      elementwise_lanes=2,
                      clock_hz=45e6,
                      ddr_bytes_per_cycle=Fraction(64), ddr_latency_cycles=48, memory_board="kv260", addr_width=40,
                      description="Zynq UltraScale+ K26, 4 x 128-bit HP ports, 45 MHz (what the logic-depth "
                                  "estimate supports), DDR4 19.2 GB/s; every released size (370M, 1.3B, 2.7B), "
                                  "40-bit addresses", **_FULL_2_7B),
    AcceleratorConfig("sim-default", bus_bytes=8, ports=2, engine_bytes=16, rows_per_block=64, fifo_bytes=16384,
                      outstanding=8, max_burst_beats=16, clock_hz=150e6, ddr_bytes_per_cycle=Fraction(14), ddr_latency_cycles=24,
                      max_hidden=256, max_layers=8, max_intermediate=768, max_vocab=4096, ddr_bytes=8 << 20, columns=2, elementwise_lanes=2,
                      description="PYNQ-Z2 memory system at 150 MHz (the PL clock of UG585's efficiency test), 2 ports, capacity of the bundled model (D 256, L 6, I 768, V 4096), 2 columns"),
)}

#: What ``mmfree generate --backend sim`` builds unless told otherwise.
DEFAULT_SIM_CONFIG = "sim-default"


def get_config(name: str) -> AcceleratorConfig:
    """The configuration called ``name``; :class:`ConfigError` (one line) otherwise."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown accelerator configuration {name!r} (choose from {', '.join(CONFIGS)})")
    return CONFIGS[name]
