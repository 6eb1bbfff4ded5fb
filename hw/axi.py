"""AXI4 and AXI4-Lite wiring signatures, and flat top-level ports with the names Vivado infers.

Inside the design, AXI ports are ordinary ``wiring`` interfaces (``reader.bus[0].araddr``).
At the top level they become flat ports named ``<prefix>_<signal>``
(``m_axi_p0_araddr``, ``s_axil_awaddr``, ...): Vivado's IP packager infers an
AXI interface from exactly these names, and cocotbext-axi's
``AxiBus.from_prefix(dut, "m_axi_p0")`` / ``AxiLiteBus.from_prefix(dut, "s_axil")``
find them. Amaranth would otherwise join a nested port's names with ``__``.

All signatures are from the master's side: a master holds ``Out(sig)``, a
slave ``In(sig)``.
"""
from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AxiBurst", "AxiResp", "AXI4ReadSignature", "AXI4WriteSignature", "AXI4Signature",
           "AXI4LiteSignature", "flat_ports", "FlatInterface", "check_widths",
           "MAX_BURST_BEATS", "BOUNDARY_BYTES", "CACHE_NORMAL"]

#: Longest INCR burst of AXI4 (AxLEN is 8 bits).
MAX_BURST_BEATS = 256
#: No AXI burst may cross a 4 KiB address boundary.
BOUNDARY_BYTES = 4096


class AxiBurst:
    """AxBURST encodings."""
    FIXED, INCR, WRAP = 0, 1, 2


class AxiResp:
    """xRESP encodings; bit 1 set means an error (SLVERR or DECERR)."""
    OKAY, EXOKAY, SLVERR, DECERR = 0, 1, 2, 3


#: AxCACHE for ordinary non-cacheable bufferable accesses (what the Zynq HP ports expect of a DMA).
CACHE_NORMAL = 0b0011


def check_widths(*, addr_width: int, data_bytes: int, id_width: int = 1, data_name: str = "data_bytes") -> None:
    """Validate AXI widths (exact ``ValueError``/``TypeError`` messages; ``data_name`` names the data width)."""
    for name, value in (("addr_width", addr_width), (data_name, data_bytes), ("id_width", id_width)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 12 <= addr_width <= 64:
        raise ValueError(f"addr_width must be in [12, 64], not {addr_width}")
    if data_bytes not in (4, 8, 16, 32, 64, 128):
        raise ValueError(f"{data_name} must be a power of two from 4 to 128, not {data_bytes}")
    if not 1 <= id_width <= 16:
        raise ValueError(f"id_width must be in [1, 16], not {id_width}")


def _read_members(addr_width: int, data_bytes: int, id_width: int) -> dict:
    return {
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
        "arburst": Out(2), "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_width), "rdata": In(8 * data_bytes), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    }


def _write_members(addr_width: int, data_bytes: int, id_width: int) -> dict:
    return {
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
        "awburst": Out(2), "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes), "wlast": Out(1), "wvalid": Out(1),
        "wready": In(1),
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    }


class _AxiSignature(wiring.Signature):
    """Common base: validated widths, structural equality over (kind, widths)."""

    _members = None  # (addr_width, data_bytes, id_width) -> members dict

    def __init__(self, *, addr_width: int, data_bytes: int, id_width: int = 1):
        check_widths(addr_width=addr_width, data_bytes=data_bytes, id_width=id_width)
        self.addr_width, self.data_bytes, self.id_width = addr_width, data_bytes, id_width
        super().__init__(type(self)._members(addr_width, data_bytes, id_width))

    def __eq__(self, other):
        return (type(other) is type(self) and (self.addr_width, self.data_bytes, self.id_width) ==
                (other.addr_width, other.data_bytes, other.id_width))

    def __hash__(self):
        return hash((type(self), self.addr_width, self.data_bytes, self.id_width))

    def __repr__(self):
        return (f"{type(self).__name__}(addr_width={self.addr_width}, data_bytes={self.data_bytes}, "
                f"id_width={self.id_width})")


class AXI4ReadSignature(_AxiSignature):
    """The read half of an AXI4 master (AR and R channels), master's view.

    Parameters
    ----------
    addr_width : int, address bits (12..64).
    data_bytes : int, bytes per beat (a power of two, 4..128).
    id_width : int, ARID/RID bits (the masters here use one ID, so responses come in order).
    """

    _members = staticmethod(_read_members)


class AXI4WriteSignature(_AxiSignature):
    """The write half of an AXI4 master (AW, W and B channels), master's view; parameters as above."""

    _members = staticmethod(_write_members)


class AXI4Signature(_AxiSignature):
    """A full AXI4 master (all five channels), master's view; parameters as above."""

    _members = staticmethod(lambda a, d, i: {**_read_members(a, d, i), **_write_members(a, d, i)})


class AXI4LiteSignature(wiring.Signature):
    """An AXI4-Lite master with 32-bit data, master's view (a register block holds ``In`` of it).

    Parameters
    ----------
    addr_width : int, address bits the slave decodes (4..32).
    """

    def __init__(self, *, addr_width: int):
        if not isinstance(addr_width, int) or isinstance(addr_width, bool):
            raise TypeError(f"addr_width must be an integer, not {addr_width!r}")
        if not 4 <= addr_width <= 32:
            raise ValueError(f"addr_width must be in [4, 32], not {addr_width}")
        self.addr_width = addr_width
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and self.addr_width == other.addr_width

    def __hash__(self):
        return hash((type(self), self.addr_width))

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width})"


def flat_ports(prefix: str, signature: wiring.Signature) -> dict:
    """Members ``{"<prefix>_<name>": member}`` for a component's signature dict.

    ``signature`` is the port as the component sees it: ``AXI4Signature(...)``
    for a master port, ``AXI4LiteSignature(...).flip()`` for a slave port.
    """
    ports = {}
    for path, member in signature.members.flatten():
        if member.is_port:
            ports[f"{prefix}_{path[-1]}"] = Out(member.shape) if member.flow == Out else In(member.shape)
    return ports


class FlatInterface:
    """The flat ports ``<prefix>_*`` of ``component`` seen as one interface of ``signature``.

    Connect it like the component's own port:
    ``wiring.connect(m, wiring.flipped(FlatInterface(self, "m_axi_p0", sig)), reader.bus)``.
    """

    def __init__(self, component, prefix: str, signature: wiring.Signature):
        self.signature = signature
        for path, member in signature.members.flatten():
            if member.is_port:
                setattr(self, path[-1], getattr(component, f"{prefix}_{path[-1]}"))
