"""Expression builders for the numerics module's fixed-point rules (no components here).

Each returns an Amaranth value computing the named ``numerics`` function on
its operands, for use inside a unit's ``elaborate``.
"""
from __future__ import annotations

from amaranth.hdl import Mux, Signal

from mmfree.models import numerics as nx

__all__ = ["rshift_round", "saturate", "mul_gate", "mul_act", "pipeline_stages"]


def rshift_round(v, n: int):
    """``numerics.rshift_round``: ``(v + 2**(n-1)) >> n`` (arithmetic shift for signed v), n >= 1."""
    return (v + (1 << (n - 1))) >> n


def saturate(v, bits: int = nx.ACT_BITS):
    """``numerics.saturate``: clamp a signed value to ``bits`` two's complement."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(v > hi, hi, Mux(v < lo, lo, v))[:bits].as_signed()


def mul_gate(x, gate):
    """``numerics.mul_gate``: ACT x times GATE g, ``saturate(rshift_round(x * g, 32))``."""
    return saturate(rshift_round(x * gate, nx.GATE_FRAC))


def mul_act(x, y):
    """``numerics.mul_act``: ACT x times ACT y, ``saturate(rshift_round(x * y, 32))``."""
    return saturate(rshift_round(x * y, nx.ACT_FRAC))


def pipeline_stages(m, advance):
    """A register factory for a stall-together pipeline: ``stage(name, shape, value)``
    returns a register loaded with ``value`` on every cycle where ``advance`` is high."""
    def stage(name, shape, value):
        reg = Signal(shape, name=name)
        with m.If(advance):
            m.d.sync += reg.eq(value)
        return reg
    return stage
