"""The AXI4-Lite register block, generated from the register map ``hw/registers.REGISTERS``."""
from __future__ import annotations

from collections.abc import Mapping

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx

from mmfree.contract import registers as regs
from .axi import AXI4LiteSignature

__all__ = ["ControlRegisters", "port_name"]

#: Address bits the block decodes (the register window is REGISTER_SPACE_BYTES).
ADDR_WIDTH = (regs.REGISTER_SPACE_BYTES - 1).bit_length()


def port_name(register: regs.Register, field: regs.Field | None = None) -> str:
    """The port carrying a register (``vocab``) or one of its fields (``model_dims_hidden``)."""
    return register.name.lower() if field is None else f"{register.name.lower()}_{field.name}"


def _kind(register: regs.Register, field: regs.Field | None) -> str:
    return (field.access if field is not None and field.access else register.access)


class ControlRegisters(wiring.Component):
    """AXI4-Lite slave exposing :data:`hw.registers.REGISTERS`; every port is derived from the table.

    Offsets, fields and access kinds come only from the register map, so
    the gateware cannot drift from the driver or ``docs/registers.md``:

    * ``RO`` register named in ``constants`` (ID, VERSION, DESIGN_HASH,
      BUILD_CONFIG, CAPACITY_*): reads the constant; no port.
    * other ``RO``: input port ``<reg>`` (32 bits) or ``<reg>_<field>`` per field.
    * ``RW``: output port ``<reg>`` or ``<reg>_<field>``, the value last
      written (bits outside the fields read 0); byte strobes honoured; reset 0.
    * ``W1S`` field: output ``<reg>_<field>``, a one-cycle pulse in the cycle
      after a write with that bit set; reads 0.
    * ``W1C`` field: input ``<reg>_<field>_set`` (a pulse sets the bit; it wins
      over a clear in the same cycle) and output ``<reg>_<field>`` (the bit);
      writing 1 clears it.

    Bus behaviour: a write is taken when AW and W are both valid (AWREADY and
    WREADY together), answered OKAY one cycle later; a read is answered one
    cycle after AR. Addresses outside the map read 0 and ignore writes (OKAY),
    so a stray access never stalls the bus. Only the low ``ADDR_WIDTH`` (8)
    address bits are decoded; the two lowest are ignored (32-bit registers).

    Parameters
    ----------
    constants : mapping of RO register name to its 32-bit value. ``ID`` and
        ``VERSION`` are filled in here (``registers.ID_MAGIC``,
        ``registers.INTERFACE_VERSION`` and ``numerics.NUMERICS_VERSION``)
        and may not be given.

    Attributes
    ----------
    latency : 1, cycles from the address handshake to the response.
    values : dict of register name to its read-back constant, for the constants.
    """

    latency = 1

    def __init__(self, *, constants: Mapping[str, int]):
        if not isinstance(constants, Mapping):
            raise TypeError(f"constants must be a mapping of register name to value, not {constants!r}")
        for name, value in constants.items():
            if name in ("ID", "VERSION"):
                raise ValueError(f"register {name} is fixed by the register map, not a constant to give")
            if name not in regs.BY_NAME:
                raise ValueError(f"no register named {name!r} in the register map")
            if regs.BY_NAME[name].access != "RO":
                raise ValueError(f"register {name} is {regs.BY_NAME[name].access}, only RO registers are constants")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 32):
                raise ValueError(f"constant {name} must be an unsigned 32-bit integer, not {value!r}")
        version = regs.BY_NAME["VERSION"]
        self.values = {"ID": regs.ID_MAGIC,
                       "VERSION": version.field("interface").put(regs.INTERFACE_VERSION) |
                       version.field("numerics").put(nx.NUMERICS_VERSION),
                       **constants}
        ports = {"axil": In(AXI4LiteSignature(addr_width=ADDR_WIDTH))}
        for r in regs.REGISTERS:
            if r.name in self.values:
                continue
            for f in (r.fields or (None,)):
                kind, width = _kind(r, f), (32 if f is None else f.width)
                if kind == "RO":
                    ports[port_name(r, f)] = In(width)
                elif kind == "RW":
                    ports[port_name(r, f)] = Out(width)
                elif kind == "W1S":
                    ports[port_name(r, f)] = Out(1)
                elif kind == "W1C":
                    ports[port_name(r, f)] = Out(1)
                    ports[port_name(r, f) + "_set"] = In(1)
                else:  # pragma: no cover - the map's _check() admits nothing else
                    raise ValueError(f"register {r.name}: unknown access kind {kind!r}")
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        bus = self.axil

        # Write: one register per handshake of AW and W together.
        write = Signal()
        m.d.comb += [write.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
                     bus.awready.eq(write), bus.wready.eq(write), bus.bresp.eq(0)]
        with m.If(write):
            m.d.sync += bus.bvalid.eq(1)
        with m.Elif(bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        strobe_mask = Cat(*[bus.wstrb[i].replicate(8) for i in range(4)])

        def written(r):
            return write & (bus.awaddr[2:] == r.offset >> 2)

        read_values = {}                                   # offset -> 32-bit read-back value
        for r in regs.REGISTERS:
            if r.name in self.values:
                read_values[r.offset] = Const(self.values[r.name], 32)
                continue
            parts = []                                     # (lsb, value) of the read-back
            for f in (r.fields or (None,)):
                kind = _kind(r, f)
                lsb, width = (0, 32) if f is None else (f.lsb, f.width)
                port = getattr(self, port_name(r, f))
                if kind == "RO":
                    parts.append((lsb, port))
                elif kind == "RW":
                    # The port is the register itself; only strobed bytes change.
                    new = (bus.wdata & strobe_mask) | (Cat(Const(0, lsb), port) & ~strobe_mask)
                    with m.If(written(r)):
                        m.d.sync += port.eq(new[lsb:lsb + width])
                    parts.append((lsb, port))
                elif kind == "W1S":
                    m.d.sync += port.eq(written(r) & bus.wdata[lsb] & bus.wstrb[lsb // 8])
                elif kind == "W1C":
                    with m.If(getattr(self, port_name(r, f) + "_set")):
                        m.d.sync += port.eq(1)
                    with m.Elif(written(r) & bus.wdata[lsb] & bus.wstrb[lsb // 8]):
                        m.d.sync += port.eq(0)
                    parts.append((lsb, port))
            value = Const(0, 32)
            for lsb, v in parts:
                value = value | (v.as_unsigned() << lsb)
            read_values[r.offset] = value[:32]

        # Read: registered data one cycle after AR.
        m.d.comb += [bus.arready.eq(~bus.rvalid), bus.rresp.eq(0)]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += bus.rvalid.eq(1)
            with m.Switch(bus.araddr[2:]):
                for offset, value in read_values.items():
                    with m.Case(offset >> 2):
                        m.d.sync += bus.rdata.eq(value)
                with m.Default():
                    m.d.sync += bus.rdata.eq(0)
        with m.Elif(bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        return m
