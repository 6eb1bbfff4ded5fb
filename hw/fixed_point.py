"""Expression builders for the numerics module's fixed-point rules (no components here).

Each returns an Amaranth value computing the named ``numerics`` function on
its operands, for use inside a unit's ``elaborate``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Mux, Signal, signed, unsigned

from mmfree.models import numerics as nx

__all__ = ["rshift_round", "saturate", "mul_gate", "mul_act", "pipeline_stages", "pipelined_product",
           "product_latency", "delay", "saturate_sign_extension", "DSP_A_LIMB", "DSP_B_LIMB"]


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
    returns a register loaded with ``value`` on every cycle where ``advance`` is high
    (``reset_less=True``: no reset, so yosys can map a chain of them to shift registers)."""
    def stage(name, shape, value, reset_less=False):
        reg = Signal(shape, name=name, reset_less=reset_less)
        with m.If(advance):
            m.d.sync += reg.eq(value)
        return reg
    return stage


#: Unsigned limb widths of a DSP48 multiply: the 25 x 18 signed multiplier takes a 24-bit and a
#: 17-bit unsigned limb (a signed operand's top limb keeps its sign: up to 25 / 18 bits), the
#: limbs yosys' Xilinx DSP mapping prefers.
DSP_A_LIMB, DSP_B_LIMB = 24, 17


def _limbs(v, step: int) -> list[tuple]:
    """``v`` as ``(limb, shift)`` pairs, ``v = sum limb * 2**shift``: unsigned ``step``-bit limbs and a
    top limb that fits ``step + 1`` signed bits (signed when ``v`` is)."""
    signed, width, lo, limbs = v.shape().signed, len(v), 0, []
    while width - lo > step + (1 if signed else 0):
        limbs.append((v[lo: lo + step], lo))
        lo += step
    top = v[lo:]
    limbs.append((top.as_signed() if signed else top, lo))
    return limbs


def _split(a, b) -> list[tuple]:
    """Limb pairs of ``a * b``, with the operand that needs fewer partial products on the 24-bit side."""
    pairs = [[(x, y, sx + sy) for x, sx in _limbs(p, DSP_A_LIMB) for y, sy in _limbs(q, DSP_B_LIMB)]
             for p, q in ((a, b), (b, a))]
    return min(pairs, key=len)


def product_latency(a, b) -> int:
    """Stages of :func:`pipelined_product` for these operands: 1 + ceil(log2(partial products))."""
    return 1 + (len(_split(a, b)) - 1).bit_length()


def pipelined_product(stage, name: str, a, b):
    """``a * b`` exactly, :func:`product_latency` stages after ``a`` and ``b`` (built with ``stage`` of
    :func:`pipeline_stages`).

    Stage 1 registers every 24 x 17-bit limb product (one DSP48 each, the register packed into it);
    each further stage adds pairs of the previous stage's terms, the lower term's bits below the
    higher term's weight passing beside the adder, so every stage is one carry chain of at most
    about 60 bits. The result is signed when either operand is, ``len(a) + len(b)`` bits wide.
    """
    terms = [(stage(f"{name}_p{n}", (x * y).shape(), x * y), shift)
             for n, (x, y, shift) in enumerate(_split(a, b))]
    level = 0
    while len(terms) > 1:
        level += 1
        terms.sort(key=lambda t: t[1])
        paired = []
        for n in range(0, len(terms), 2):
            if n + 1 == len(terms):                      # odd term out: registered to stay aligned
                v, s = terms[n]
                paired.append((stage(f"{name}_s{level}_{n}", v.shape(), v), s))
                continue
            (lo, slo), (hi, shi) = terms[n], terms[n + 1]
            d = shi - slo
            # lo + hi * 2**d = lo[:d] + ((lo >> d) + hi) * 2**d
            if len(lo) > d:
                total = (lo >> d) + hi
                value = total if d == 0 else Cat(lo[:d], total)
            else:                                        # no overlap: lo + hi * 2**d, lo sign-extended
                total = value = lo + (hi << d)
                d = 0
            shape = signed(d + len(total)) if total.shape().signed else unsigned(d + len(total))
            paired.append((stage(f"{name}_s{level}_{n}", shape, value), slo))
        terms = paired
    (v, s), = terms
    width = len(a) + len(b)
    product = v[:width]
    return product.as_signed() if (a.shape().signed or b.shape().signed) else product


def delay(stage, name: str, value, n: int, *, reset_less: bool = True):
    """``value`` ``n`` stages later (``n`` registers named ``name1`` .. ``name<n>``); without reset
    (a shift register in LUTs) unless ``reset_less=False``, as a valid flag needs."""
    for k in range(n):
        value = stage(f"{name}{k + 1}", value.shape(), value, reset_less)
    return value


def saturate_sign_extension(v, bits: int = nx.ACT_BITS):
    """:func:`saturate` of a signed ``v`` by comparing its bits above ``bits - 1`` with its sign
    (a LUT tree and a mux, no comparator carry chains)."""
    if not v.shape().signed or len(v) <= bits:
        return saturate(v, bits)
    sign, top = v[-1], v[bits - 1:]
    fits = (top == 0) | (top == (1 << len(top)) - 1)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(fits, v[:bits], Mux(sign, lo, hi))[:bits].as_signed()
