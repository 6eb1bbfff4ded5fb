"""Logic depth of a mapped yosys netlist against the clock: an estimate, not Vivado timing closure.

    report = analyze(json.loads(Path("netlist.json").read_text()), "mmfree_accelerator", "xc7")
    report.worst.levels, report.worst.carry_cells, report.worst.delay_ns

The netlist is what ``synth_xilinx`` leaves (``write_json`` in the same yosys
run as the cell statistics: :func:`mmfree.hw.flow.synth.synth_verilog`'s
``netlist_path``). Every net bit is a node; every cell contributes arcs from
its input bits to its output bits with a delay from :data:`PART_TIMING`, and a
longest-path pass (the netlist's combinational part is a DAG) gives each
endpoint its latest arrival. A path runs from a launch point to a capture
point:

* launch: a flip-flop's Q (``FD*``), a block RAM / UltraRAM output (clock to
  out with or without the output register, from ``DOA_REG``/``DOB_REG`` /
  ``OREG_A``/``OREG_B``), a DSP output (clock to out from the last internal
  register the cell's ``*REG`` parameters enable), a shift-register or LUT-RAM
  output, or a top-level input port;
* capture: a flip-flop's D, CE or sync set/reset, a block RAM / UltraRAM
  input, a DSP input whose path meets an internal register (setup through the
  unregistered stages before it), a LUT-RAM write port, an SRL data input, or
  a top-level output port.

What a path counts: LUT levels (LUT1..LUT6 one each, LUT-RAM read ports one,
``MUXF7`` half, ``MUXF8``/``MUXF9`` a quarter: they sit behind a LUT in the same
slice), carry-chain length in cells (``CARRY4``/``CARRY8``, each cascade cell
one), and DSP stages crossed unregistered (a DSP input or output whose path
runs through a DSP stage without its register, or a fully combinational DSP).

The delay model (:func:`budget_levels` states it as a formula) uses one
figure per element and one routing delay per net hop; docs/timing.md gives the
sources. It ignores fan-out, placement and clock skew: it ranks paths and
says which ones a clock cannot carry, it does not replace Vivado's timing
report.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter, defaultdict

__all__ = ["PartTiming", "PART_TIMING", "Path", "DepthReport", "analyze", "budget_levels", "path_delay_ns",
           "render_markdown"]


@dataclasses.dataclass(frozen=True)
class PartTiming:
    """Delay figures of one part's fabric in ns, and where each comes from (docs/timing.md).

    ``lut`` is a LUT's worst input-to-output delay, ``net`` the routing delay of
    one net hop (the assumption the budget hangs on), ``carry_in`` a carry
    cell entered from its S/DI inputs, ``carry_cell`` each further cascade cell
    (CI to CO), ``ff_cko``/``ff_setup`` the flip-flop's clock to out and worst
    setup (D or CE), ``bram_cko``/``bram_cko_reg`` block RAM clock to out without
    and with the output register, ``bram_setup`` its worst input setup,
    ``srl_cko`` a shift register's clock to out, ``dsp_scale`` the factor applied
    to the DSP48E1 figures (``_DSP_REQUIRED``, ``_DSP_ARRIVAL``, ``_DSP_COMB``) for this part.
    """

    family: str
    speed: str
    lut: float
    net: float
    carry_in: float
    carry_cell: float
    ff_cko: float
    ff_setup: float
    bram_cko: float
    bram_cko_reg: float
    bram_setup: float
    srl_cko: float
    dsp_scale: float
    sources: tuple[str, ...]

    @property
    def level_ns(self) -> float:
        """One LUT level with the net that feeds it."""
        return self.lut + self.net


# yosys 0.70 techlibs/xilinx/cells_sim.v carries these as specify delays (ps), each
# line citing the prjxray-db Artix-7 -1 timing database (the same 7-series CLB, block
# RAM and DSP48E1 as the Zynq-7000 PL; prjxray-db's artix7/timings/*.sdf).
_PRJXRAY = ("yosys techlibs/xilinx/cells_sim.v specify delays, from prjxray-db artix7/timings "
            "(7-series fabric, -1 speed grade): LUT6 I0->O 642 ps, FDRE C->Q 303 ps, FDRE CE setup 109 ps, "
            "CARRY4 S[0]->O[3] 582 ps and CI->CO[3] 114 ps, RAMB18E1 CLK->DO 2454 ps (no output register) "
            "/ 882 ps (DOA_REG=1), DI setup 737 ps, SRLC32E CLK->Q 1472 ps, DSP48E1 arrival/required "
            "functions")
_WIRE = ("routing: 300 ps per net hop, the wire delay yosys's ABC9 maps xc7 with "
         "(techlibs/xilinx/synth_xilinx.cc XC7_WIRE_DELAY); UG949 'Datapath Delay and Logic Levels' "
         "expects route delay up to 75 % of a 7-series path, so this is an optimistic placement")

#: Delay figures per yosys family (the boards' parts: contract/boards.py). The one place they live.
PART_TIMING: dict[str, PartTiming] = {
    "xc7": PartTiming(
        family="xc7", speed="-1 (xc7z020clg400-1)", lut=0.642, net=0.300, carry_in=0.582, carry_cell=0.114,
        ff_cko=0.303, ff_setup=0.109, bram_cko=2.454, bram_cko_reg=0.882, bram_setup=0.737, srl_cko=1.472,
        dsp_scale=1.0, sources=(_PRJXRAY, _WIRE)),
    # DS925 (Zynq UltraScale+ MPSoC DC and AC switching characteristics) publishes no CLB delays, only
    # block maxima. The one comparable figure: its DSP48 table, 0.72 V -2 column (the K26's -2LV), gives
    # FMAX_NOPIPELINEREG 323 MHz (3.10 ns, A register to P register without MREG), where the prjxray-db
    # 7-series -1 model has 2.95 ns from AREG to P (cells_sim.v DSP48E1 \P.arrival) plus the P setup:
    # within a few percent. So the 7-series -1 figures stand in for the K26 unscaled.
    "xcup": PartTiming(
        family="xcup", speed="-2LV, VCCINT 0.72 V (xck26-sfvc784-2LV-c)", lut=0.642, net=0.300, carry_in=0.582,
        carry_cell=0.114, ff_cko=0.303, ff_setup=0.109, bram_cko=2.454, bram_cko_reg=0.882, bram_setup=0.737,
        srl_cko=1.472, dsp_scale=1.0,
        sources=(_PRJXRAY + ", standing in for the K26: DS925 publishes no CLB delays for Zynq UltraScale+; "
                 "its DSP48 table at -2, 0.72 V (FMAX 644 MHz with all registers, 323 MHz = 3.10 ns without "
                 "pipeline registers) matches the 7-series -1 model's unpipelined DSP path (AREG to P 2.95 ns) "
                 "within a few percent", _WIRE)),
}

# DSP48E1 figures (ps) from yosys cells_sim.v's DSP48E1 functions (\A.required, \P.arrival, \A.P.comb ...,
# prjxray-db), per mode: "mult" (USE_MULT=MULTIPLY, USE_DPORT=FALSE), "dport" (with the pre-adder),
# "none" (USE_MULT=NONE). _DSP_REQUIRED: the setup of an input at the first register on its way, in
# pipeline order (the later the register, the more unregistered stages before it); _DSP_ARRIVAL: clock to
# P behind the last register (PREG, else the register before the unregistered stages); _DSP_COMB: input
# to P of a DSP with no register on the way.
_DSP_REQUIRED = {
    "mult": {"A": (("AREG", 254), ("MREG", 1416), ("PREG", 2739)), "B": (("BREG", 324), ("MREG", 1285), ("PREG", 2608)),
             "C": (("CREG", 168), ("PREG", 1244)), "PCIN": (("PREG", 1244),)},
    "dport": {"A": (("AREG", 254), ("ADREG", 1283), ("MREG", 2400), ("PREG", 3723)),
              "B": (("BREG", 324), ("MREG", 1285), ("PREG", 2608)), "C": (("CREG", 168), ("PREG", 1244)),
              "D": (("DREG", 248), ("ADREG", 1195), ("MREG", 2310), ("PREG", 3635)), "PCIN": (("PREG", 1244),)},
    "none": {"A": (("AREG", 254), ("PREG", 1441)), "B": (("BREG", 324), ("PREG", 1428)),
             "C": (("CREG", 168), ("PREG", 1244)), "PCIN": (("PREG", 1244),)}}
_DSP_ARRIVAL = {
    "mult": (("PREG", 329), ("CREG", 1687), ("MREG", 1671), ("AREG", 2952), ("BREG", 2813)),
    "dport": (("PREG", 329), ("CREG", 1687), ("MREG", 1671), ("ADREG", 2958), ("AREG", 3935), ("DREG", 3908),
              ("BREG", 2813)),
    "none": (("PREG", 329), ("CREG", 1687), ("AREG", 1632), ("BREG", 1616))}
_DSP_COMB = {"mult": {"A": 2823, "B": 2690, "C": 1325, "PCIN": 1325},
             "dport": {"A": 3806, "B": 2690, "C": 1325, "D": 3717, "PCIN": 1325},
             "none": {"A": 1523, "B": 1509, "C": 1325, "PCIN": 1325}}
#: DSP inputs fed by the neighbouring DSP's cascade outputs on dedicated wires.
_DSP_CASCADE = {"ACIN": "A", "BCIN": "B", "PCIN": "PCIN"}


#: Fraction of a LUT level that a wide-function mux adds (it sits behind LUTs in its slice).
MUXF_LEVEL = {"MUXF7": 0.5, "MUXF8": 0.25, "MUXF9": 0.25}

_CLOCK_PINS = {"C", "CLK", "CLKARDCLK", "CLKBWRCLK", "WCLK", "CLKA", "CLKB"}


@dataclasses.dataclass
class Path:
    """One register-to-register path: where it starts and ends, what it crosses, its estimated delay."""

    start: str                 # launch cell type and the net name yosys keeps for its output
    end: str                   # capture cell type and pin, and the net name at that pin
    levels: float              # LUT levels (MUXF7/F8 fractional)
    carry_cells: int           # carry cells crossed (cascade length, all chains on the path)
    carry_chains: int          # separate carry chains entered
    dsp_unregistered: int      # DSP stages crossed without their register
    slow_launch: str | None    # "unregistered block RAM" etc. when the launch is a long clock-to-out
    delay_ns: float
    through: list[str]         # cell types along the path, in order
    scopes: list[str] = dataclasses.field(default_factory=list)   # design hierarchy the path's names mention

    @property
    def fmax_mhz(self) -> float:
        return 1e3 / self.delay_ns

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["levels"] = round(self.levels, 2)
        d["delay_ns"] = round(self.delay_ns, 3)
        d["fmax_mhz"] = round(self.fmax_mhz, 1)
        return d


@dataclasses.dataclass
class DepthReport:
    """The worst paths of a netlist (latest arrival first) and the LUT-level histogram of its endpoints."""

    family: str
    paths: list[Path]
    histogram: dict[int, int]   # LUT levels (floor) of each endpoint's worst path -> endpoints
    endpoints: int
    by_scope: list[Path] = dataclasses.field(default_factory=list)   # the worst path of each design scope
    delays: list[float] = dataclasses.field(default_factory=list)    # every capture pin's worst delay (ns)

    @property
    def worst(self) -> Path:
        return self.paths[0]


def budget_levels(timing: PartTiming, clock_hz: float) -> int:
    """Most LUT levels a register-to-register path can have at ``clock_hz`` with no carry chain:

    ``Tcko + Tnet + L * (Tlut + Tnet) + Tsetup <= 1 / f``  (the net into the capture flip-flop is the
    ``+ Tnet``; each LUT level is its cell delay and the net that feeds it). A carry chain adds
    ``Tnet + Tcarry_in`` for its first cell and ``Tcarry_cell`` for each further one (:func:`path_delay_ns`).
    """
    period = 1e9 / clock_hz
    return max(0, math.floor((period - timing.ff_cko - timing.net - timing.ff_setup) / timing.level_ns + 1e-9))


def path_delay_ns(timing: PartTiming, levels: float, carry_cells: int = 0, carry_chains: int = 0) -> float:
    """The model's delay of a flip-flop to flip-flop path with ``levels`` LUT levels and carry chains."""
    carry = carry_chains * (timing.net + timing.carry_in) + max(0, carry_cells - carry_chains) * timing.carry_cell
    return timing.ff_cko + timing.net + levels * timing.level_ns + carry + timing.ff_setup


# --------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------
def _flag(params: dict, name: str) -> bool:
    """A cell parameter as a bool: yosys writes integers as binary strings, strings as themselves."""
    v = params.get(name)
    if v is None:
        return False
    if isinstance(v, int):
        return v != 0
    s = str(v).strip()
    if re.fullmatch(r"[01xz]+", s):
        return "1" in s
    return s.upper() in ("TRUE", "1", "YES")


def _str(params: dict, name: str, default: str) -> str:
    v = params.get(name)
    if v is None:
        return default
    s = str(v).strip()
    if re.fullmatch(r"[01]+", s) and len(s) % 8 == 0 and len(s) > 8:   # a string parameter written as bits
        try:
            return int(s, 2).to_bytes(len(s) // 8, "big").decode().strip("\0 ")
        except (ValueError, UnicodeDecodeError):
            return s
    return s


class _Arc:
    """A cell's input-to-output arc; ``hop``: the routing delay of the net into it (0 on dedicated wires)."""

    __slots__ = ("delay", "hop", "levels", "carry", "chain", "dsp")

    def __init__(self, delay, hop, levels=0.0, carry=0, chain=0, dsp=0):
        self.delay, self.hop, self.levels, self.carry, self.chain, self.dsp = delay, hop, levels, carry, chain, dsp


def _dsp_mode(params: dict) -> str:
    if _str(params, "USE_MULT", "MULTIPLY").upper() == "NONE":
        return "none"
    return "dport" if _str(params, "USE_DPORT", "FALSE").upper() == "TRUE" else "mult"


def _dsp_stages(params: dict, pin: str) -> tuple[float | None, bool]:
    """(setup in ps or None when no register follows ``pin``, whether an unregistered stage is crossed)."""
    for n, (reg, ps) in enumerate(_DSP_REQUIRED[_dsp_mode(params)].get(pin, ())):
        if _flag(params, reg):
            return ps, n > 0
    return None, True


def _dsp_arrival(params: dict) -> tuple[float | None, bool]:
    """(clock to P in ps or None when no register drives P, whether an unregistered stage follows it)."""
    for n, (reg, ps) in enumerate(_DSP_ARRIVAL[_dsp_mode(params)]):
        if _flag(params, reg):
            return ps, n > 0
    return None, True


def analyze(netlist: dict, top: str, family: str, *, top_n: int = 10) -> DepthReport:
    """The worst ``top_n`` paths (one per capture cell) of module ``top`` in a yosys ``write_json`` netlist.

    Raises ValueError when the module is missing or the combinational graph has a loop.
    """
    modules = netlist["modules"]
    module = modules.get(top) or modules.get(f"\\{top}")
    if module is None:
        raise ValueError(f"no module {top!r} in the netlist (modules: {', '.join(list(modules)[:5])})")
    graph = _Graph(module, PART_TIMING[family])
    best = graph.longest_paths()
    return graph.report(best, family, top_n)


_DSP_OUTPUTS = ("P", "PCOUT", "CARRYOUT", "CARRYCASCOUT", "PATTERNDETECT", "PATTERNBDETECT", "OVERFLOW",
                "UNDERFLOW", "MULTSIGNOUT", "XOROUT")


class _Graph:
    """Net bits as nodes, cells as arcs, launch and capture points (see the module docstring)."""

    def __init__(self, module: dict, timing: PartTiming):
        self.timing = timing
        self.names = _net_names(module)
        self.cell_names = list(module["cells"])
        self.cell_types = [c["type"] for c in module["cells"].values()]
        self.launch: dict[int, tuple[float, str, str | None, int]] = {}  # bit -> (arrival, label, slow, dsp)
        self.launch_cell: dict[int, str] = {}
        self.capture: list[tuple[int, float, str, int, bool]] = []   # (bit, setup, label, cell, dsp crossed)
        self.arcs: dict[int, list[tuple[int, _Arc, int]]] = defaultdict(list)   # in bit -> (out bit, arc, cell)
        for port, p in module.get("ports", {}).items():
            for b in p["bits"]:
                if not isinstance(b, int):
                    continue
                if p["direction"] == "input":
                    self.set_launch(b, 0.0, f"port {port}")
                else:
                    self.capture.append((b, 0.0, f"port {port}", -1, False))
        for index, (name, cell) in enumerate(module["cells"].items()):
            self.add_cell(index, name, cell)

    # -- building ---------------------------------------------------------
    def set_launch(self, b, t, label, slow=None, dsp_n=0, cell=None):
        if b not in self.launch or self.launch[b][0] < t:
            self.launch[b] = (t, label, slow, dsp_n)
            if cell is not None:
                self.launch_cell[b] = cell

    def add_cell(self, index: int, name: str, cell: dict) -> None:
        ctype, conn = cell["type"], cell["connections"]
        dirs = cell.get("port_directions", {})
        params = cell.get("parameters", {})
        t, net = self.timing, self.timing.net
        outs = [pin for pin in conn if dirs.get(pin) == "output"]
        ins = [pin for pin in conn if dirs.get(pin) == "input" and pin not in _CLOCK_PINS]

        def bits(pin):
            return [b for b in conn.get(pin, ()) if isinstance(b, int)]

        def comb(in_pins, out_pins, arc):
            for ip in in_pins:
                for ib in bits(ip):
                    self.arcs[ib].extend((ob, arc, index) for op in out_pins for ob in bits(op))

        def cap(pins, setup, dsp_crossed=False):
            self.capture.extend((ib, setup, f"{ctype}.{ip}", index, dsp_crossed) for ip in pins for ib in bits(ip))

        def launch(pins, arrival, slow=None, dsp_n=0):
            for pin in pins:
                for b in bits(pin):
                    self.set_launch(b, arrival, f"{ctype}.{pin}" if ctype[:2] != "FD" else ctype, slow, dsp_n, name)

        if re.fullmatch(r"LUT[1-6]", ctype):
            comb(ins, outs, _Arc(t.lut, net, levels=1.0))
        elif ctype in MUXF_LEVEL:
            # fed by LUTs of its own slice: its share of a level, net included, on dedicated wires
            comb(ins, outs, _Arc(MUXF_LEVEL[ctype] * t.level_ns, 0.0, levels=MUXF_LEVEL[ctype]))
        elif ctype in ("CARRY4", "CARRY8"):
            comb([p for p in ins if p == "CI"], outs, _Arc(t.carry_cell, 0.0, carry=1))
            comb([p for p in ins if p != "CI"], outs, _Arc(t.carry_in, net, carry=1, chain=1))
        elif ctype == "INV" or (ctype.startswith("BUF") and ctype != "BUFG"):
            comb(ins, outs, _Arc(0.0, 0.0))
        elif re.fullmatch(r"FD[A-Z]*", ctype):
            launch(["Q"], t.ff_cko)
            cap(ins, t.ff_setup)
        elif ctype.startswith(("RAMB", "URAM")):
            for letter, reg in (("A", "DOA_REG"), ("B", "DOB_REG")) if ctype.startswith("RAMB") else (
                    ("A", "OREG_A"), ("B", "OREG_B")):
                registered = _flag(params, reg)
                kind = "block RAM" if ctype.startswith("RAMB") else "UltraRAM"
                launch([p for p in outs if _ram_port(p) == letter], t.bram_cko_reg if registered else t.bram_cko,
                       None if registered else f"{kind} without output register")
            cap(ins, t.bram_setup)
        elif ctype.startswith("DSP48"):
            self._dsp(params, ins, [p for p in outs if p in _DSP_OUTPUTS], comb, cap, launch)
        elif ctype.startswith("SRL"):
            launch(outs, t.srl_cko)
            addr = [p for p in ins if p.startswith("A")]
            comb(addr, outs, _Arc(t.lut, net, levels=1.0))
            cap([p for p in ins if p not in addr], t.ff_setup)
        elif ctype.startswith("RAM"):
            # LUT RAM: reading is a LUT (address to data), writing is clocked (WCLK); its outputs also
            # launch (a write seen through the read port), with the shift register's clock to out.
            read_addr = [p for p in ins if re.match(r"ADDR|A\d|DPRA|A$", p)]
            comb(read_addr, outs, _Arc(t.lut, net, levels=1.0))
            launch(outs, t.srl_cko)
            cap([p for p in ins if p not in read_addr], t.bram_setup)
        # BUFG (the clock), $scopeinfo and anything unknown carry no data arcs.

    def _dsp(self, params, ins, data_out, comb, cap, launch) -> None:
        """A DSP48: inputs meet their first enabled register or cross to P; P launches behind the last."""
        ps = self.timing.dsp_scale * 1e-3
        arrival, crossed = _dsp_arrival(params)
        if arrival is not None:
            launch(data_out, arrival * ps, None, int(crossed))
        for pin in ins:
            base = pin.rstrip("0123456789")
            key = _DSP_CASCADE.get(base, base)
            mode = _dsp_mode(params)
            if key not in _DSP_REQUIRED[mode]:               # control pins (OPMODE, CE*, RST*): registered
                cap([pin], self.timing.ff_setup)
                continue
            setup, crossed_in = _dsp_stages(params, key)
            if setup is not None:
                cap([pin], setup * ps, crossed_in)
            else:
                hop = 0.0 if base in _DSP_CASCADE else self.timing.net
                comb([pin], data_out, _Arc(_DSP_COMB[mode][key] * ps, hop, dsp=1))

    # -- longest paths ----------------------------------------------------
    def longest_paths(self) -> dict[int, tuple]:
        """bit -> (arrival, levels, carry cells, chains, DSP stages, previous bit, cell) of its latest path."""
        best: dict[int, tuple] = {b: (t, 0.0, 0, 0, dsp_n, None, None)
                                  for b, (t, _label, _slow, dsp_n) in self.launch.items()}
        for b in _topological(self.arcs, self.launch):
            state = best.get(b)
            if state is None:
                continue
            t, lv, ca, ch, dn = state[:5]
            for ob, arc, index in self.arcs.get(b, ()):
                arrival = t + arc.hop + arc.delay
                old = best.get(ob)
                if old is None or arrival > old[0]:
                    best[ob] = (arrival, lv + arc.levels, ca + arc.carry, ch + arc.chain, dn + arc.dsp, b, index)
        return best

    def report(self, best: dict, family: str, top_n: int) -> DepthReport:
        """Each capture cell's worst path; the ``top_n`` worst overall and per design scope."""
        endpoint_paths: dict = {}
        delays: list[float] = []
        histogram: Counter = Counter()
        for b, setup, label, index, dsp_crossed in self.capture:
            state = best.get(b)
            if state is None:
                continue
            total = state[0] + self.timing.net + setup     # the net into the capture pin, then its setup
            histogram[int(state[1] + 1e-9)] += 1
            delays.append(total)
            key = index if index >= 0 else label           # one path per capture cell (its worst pin) or port
            if key not in endpoint_paths or endpoint_paths[key].delay_ns < total:
                endpoint_paths[key] = self.path(best, b, total, label, index, dsp_crossed)
        paths, seen, scopes = [], set(), {}
        for path in sorted(endpoint_paths.values(), key=lambda p: (-p.delay_ns, -p.levels)):
            shape = (path.start, path.end, round(path.delay_ns, 3))    # one net fanning out to twin cells
            if shape not in seen:
                seen.add(shape)
                paths.append(path)
            scopes.setdefault(path.scopes[0] if path.scopes else "?", path)
        return DepthReport(family, paths[:top_n], dict(sorted(histogram.items())), sum(histogram.values()),
                           list(scopes.values())[:top_n], sorted(delays, reverse=True))

    def path(self, best: dict, b: int, total: float, label: str, index: int, dsp_crossed: bool) -> Path:
        _t, lv, ca, ch, dn = best[b][:5]
        start_bit, cells = _walk(best, b)
        _t0, start_label, slow, _ = self.launch[start_bit]
        start_cell = self.launch_cell.get(start_bit)
        end_cell = self.cell_names[index] if index >= 0 else None
        found = [self.names.get(start_bit, ""), self.names.get(b, ""), start_cell or "", end_cell or ""]
        found += [self.cell_names[c] for c in cells]
        return Path(start=f"{start_label} {_shown(start_cell, self.names.get(start_bit, f'bit {start_bit}'))}",
                    end=f"{label} {_shown(end_cell, self.names.get(b, f'bit {b}'))}", levels=lv, carry_cells=ca,
                    carry_chains=ch, dsp_unregistered=dn + int(dsp_crossed), slow_launch=slow, delay_ns=total,
                    through=[self.cell_types[c] for c in cells], scopes=_scopes(found))


def _ram_port(pin: str) -> str | None:
    """Which read port (A or B) a block RAM / UltraRAM output pin belongs to."""
    m = re.fullmatch(r"(?:DO|DOP|DOUT|DOUTP|CASDOUT|CASDOUTP)([AB]).*|.*_([AB])", pin)
    return (m.group(1) or m.group(2)) if m else None


def _walk(best: dict, b: int) -> tuple[int, list[int]]:
    """The launch bit of ``b``'s worst path and the cells (indices) it crosses, in order."""
    cells = []
    while best[b][5] is not None:
        cells.append(best[b][6])
        b = best[b][5]
    return b, cells[::-1]


def _shown(cell: str | None, net: str) -> str:
    """A cell's own name when yosys kept a public one (block RAMs keep theirs), else the net's."""
    return cell if cell and not cell.startswith("$") else net


_FLATTEN = re.compile(r"flatten\\((?:[^$\\]+\.\\?)+)")


def _scopes(found: list[str], most: int = 4) -> list[str]:
    """Design scopes (``core.engine.input``) that the names along a path mention, most frequent first.

    ABC9 renames what it maps, so most names are ``$abc$...``; what survives are public names
    (ports, memories, submodule boundaries) and ``$flatten\\a.\\b.`` prefixes of mapped arithmetic.
    """
    count: Counter = Counter()
    for name in found:
        if not name:
            continue
        for m in _FLATTEN.finditer(name):
            count[m.group(1).replace("\\", "").rstrip(".")] += 1
        if not name.startswith("$") and "." in name:
            base = name.split("[")[0]
            trimmed = re.sub(r"(\.\d+)+$", "", base)       # a memory's cells: core.a_buffer.0.1
            count[trimmed if trimmed != base else base.rsplit(".", 1)[0]] += 1
    return [s for s, _n in count.most_common(most) if s]


def _topological(arcs: dict, launch: dict) -> list[int]:
    indegree: Counter = Counter()
    nodes = set(arcs) | set(launch)
    for outs in arcs.values():
        for ob, _arc, _t in outs:
            indegree[ob] += 1
            nodes.add(ob)
    ready = [n for n in nodes if indegree[n] == 0]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for ob, _arc, _t in arcs.get(n, ()):
            indegree[ob] -= 1
            if indegree[ob] == 0:
                ready.append(ob)
    if len(order) != len(nodes):
        raise ValueError(f"combinational loop through {len(nodes) - len(order)} net bits")
    return order


def _net_names(module: dict) -> dict[int, str]:
    """bit -> the most readable name yosys keeps for it (public names first, then the shortest)."""
    names: dict[int, str] = {}
    for name, info in module.get("netnames", {}).items():
        bits_ = info["bits"]
        for i, b in enumerate(bits_):
            if not isinstance(b, int):
                continue
            shown = (f"{name}[{i + info.get('offset', 0)}]" if len(bits_) > 1 else name)
            old = names.get(b)
            if old is None or _name_rank(shown) < _name_rank(old):
                names[b] = shown
    return names


def _name_rank(name: str) -> tuple:
    """Public names first, then names that carry the design hierarchy (``$flatten\\core.``), then the rest."""
    kind = 0 if not name.startswith("$") else 1 if "flatten" in name else 2
    return (kind, len(name))


# --------------------------------------------------------------------------
# The board report
# --------------------------------------------------------------------------
def board_report(report: DepthReport, clock_hz: float) -> dict:
    """The ``timing`` part of a board report: model, budget, worst paths, histogram, verdict."""
    timing = PART_TIMING[report.family]
    worst = report.worst
    period = 1e9 / clock_hz
    budget = budget_levels(timing, clock_hz)
    fits = worst.delay_ns <= period
    problems = [] if fits else [
        f"worst path {worst.delay_ns:.2f} ns ({worst.levels:g} LUT levels, {worst.carry_cells} carry cells"
        f"{', ' + worst.slow_launch if worst.slow_launch else ''}) exceeds the {period:.2f} ns period at "
        f"{clock_hz / 1e6:g} MHz; the estimate supports {worst.fmax_mhz:.0f} MHz"]
    return {"model": {k: v for k, v in dataclasses.asdict(timing).items() if k != "sources"},
            "sources": list(timing.sources),
            "clock_mhz": clock_hz / 1e6, "period_ns": round(period, 3), "budget_levels": budget,
            "worst": worst.to_dict(), "fmax_mhz": round(worst.fmax_mhz, 1), "within_budget": fits,
            "problems": problems, "endpoints": report.endpoints,
            "endpoints_over_period": sum(1 for d in report.delays if d > period),
            "level_histogram": {str(k): v for k, v in report.histogram.items()},
            "paths": [p.to_dict() for p in report.paths],
            "worst_by_scope": [p.to_dict() for p in report.by_scope]}


def render_markdown(timing_report: dict, title: str) -> str:
    """``timing.md`` of one board from :func:`board_report`'s dictionary."""
    t = timing_report
    w = t["worst"]
    lines = [f"# {title}: logic depth against the clock", "",
             ("An estimate from the yosys netlist, not Vivado timing closure (method and sources: "
              "docs/timing.md)."), "",
             f"Clock {t['clock_mhz']:g} MHz ({t['period_ns']:.2f} ns): at most {t['budget_levels']} LUT levels "
             f"flip-flop to flip-flop without carry. Worst path {w['delay_ns']:.2f} ns, estimated Fmax "
             f"{t['fmax_mhz']:.0f} MHz: {'within' if t['within_budget'] else 'OVER'} budget; "
             f"{t['endpoints_over_period']:,} of {t['endpoints']:,} capture pins arrive after the period.", ""]
    for heading, key in (("Worst paths", "paths"), ("Worst path of each design scope", "worst_by_scope")):
        lines += [f"## {heading}", "",
                  "| # | delay (ns) | Fmax (MHz) | LUT levels | carry cells | DSP unregistered | scope | from | to |",
                  "|---:|---:|---:|---:|---:|---:|---|---|---|"]
        for n, p in enumerate(t[key], 1):
            slow = " (no output register)" if p["slow_launch"] else ""
            lines.append(f"| {n} | {p['delay_ns']:.2f} | {p['fmax_mhz']:.0f} | {p['levels']:g} | {p['carry_cells']} | "
                         f"{p['dsp_unregistered']} | {', '.join(p['scopes'][:2])} | `{p['start']}`{slow} | "
                         f"`{p['end']}` |")
        lines.append("")
    lines += ["## LUT levels", "", "LUT levels of each capture pin's worst path (capture pins):", "",
              "| levels | " + " | ".join(t["level_histogram"]) + " |",
              "|---|" + "---:|" * len(t["level_histogram"]),
              "| endpoints | " + " | ".join(str(v) for v in t["level_histogram"].values()) + " |"]
    return "\n".join(lines) + "\n"
