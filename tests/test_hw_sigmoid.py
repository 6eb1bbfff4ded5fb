"""The sigmoid table of ``hw.sigmoid.SigmoidLookup`` against ``numerics.SIGMOID_TABLE``.

The lookup itself runs inside the MLGRU and GLU units: tests/test_hw_mlgru.py
checks it bit exact against ``numerics.sigmoid_act`` / ``silu_act`` there
(table ends and segment edges included).
"""
from __future__ import annotations

from mmfree.hw.sigmoid import sigmoid_rom
from mmfree.models import numerics as nx


def test_rom_is_the_numerics_table():
    words, base_bits, d1_bits, d2_bits = sigmoid_rom()
    assert len(words) == nx.SIGMOID_SEGMENTS
    base = [w & ((1 << base_bits) - 1) for w in words]
    d1 = [(w >> base_bits) & ((1 << d1_bits) - 1) for w in words]
    d2 = [w >> (base_bits + d1_bits) for w in words]
    d2 = [v - (1 << d2_bits) if v >> (d2_bits - 1) else v for v in d2]
    t = [int(v) for v in nx.SIGMOID_TABLE]
    assert base == t[:-2]
    assert [b + s for b, s in zip(base, d1)] == t[1:-1]
    assert [b + 2 * s + c for b, s, c in zip(base, d1, d2)] == t[2:]
