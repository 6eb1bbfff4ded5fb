"""The BitLinear input stage: RMSNorm statistics and int8 codes of one vector for up to three consumers.

This is the "RMSNorm + activation quantizer" of a BitLinear record
(``golden_int.norm_stats`` + ``quantize_vector`` + ``numerics.output_scale``):
a max pass riding on the gain load, one reciprocal per consumer, one
code-and-square pass, one reciprocal square root per vector, and one output
scale per consumer.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx
from mmfree.models.weight_image import MAX_CONSUMERS, NormSource

from .quantize import CODE_ESTIMATE_BITS, bit_length, code_correct, code_estimate, normalise_peak, shift_magnitude
from .reciprocal import RECIP_BITS, QuantReciprocal
from .rescale import RATIO_BITS, SCALE_OUT_BITS
from .rsqrt import INV_BITS, RsqrtFixed, rsqrt_z_bits
from .ternary_accumulate import CODE_BITS

__all__ = ["RmsQuantize", "X_LAYOUT", "CODES_LAYOUT", "rms_params_layout", "scales_layout", "v_bits_for",
           "FRAC_MAX", "EPS_SHIFT_MIN", "EPS_SHIFT_MAX", "X_FRAC_MAX", "EC_BITS", "SCALE_OUT_BITS"]

# --------------------------------------------------------------------------
# The header-field ranges the hardware supports. Widths below follow from
# them; the engine refuses a record header outside them (its ``error``).
# --------------------------------------------------------------------------
#: Gain fractions frac_a, frac_g in [0, FRAC_MAX]: with the largest |mantissa| in
#: [2**22, 2**23), gain peaks in [2**-17, 2**23) (the bundled model's fractions are 21..23).
FRAC_MAX = nx.GAIN_TOP_BIT + 17
#: eps_shift in [EPS_SHIFT_MIN, EPS_SHIFT_MAX]: eps (24-bit mantissa) in [2**-40, 2).
EPS_SHIFT_MIN = nx.EPS_MANT_BITS - 1
EPS_SHIFT_MAX = 63
#: x_frac in [0, X_FRAC_MAX] (every BitLinear input is ACT, x_frac = 32, since numerics version 2).
X_FRAC_MAX = nx.ACT_FRAC
#: The weight-scale exponent ec is a signed EC_BITS-bit value.
EC_BITS = 8

#: |x * G| of an ACT x and a 24-bit gain: at most 2**70 (71 bits).
MAG_BITS = nx.ACT_BITS + nx.GAIN_BITS - 1
#: Bits of a magnitude after the sum-of-squares rounding (``rshift_round`` may reach 2**24).
SUMSQ_MAG_BITS = nx.SUMSQ_BITS + 1

#: One element of the input vector: x (ACT width, in the record's x_frac format),
#: the pre-norm's input n (ACT, used by NormSource.GATE records), end of vector.
X_LAYOUT = data.StructLayout({"value": signed(nx.ACT_BITS), "norm": signed(nx.ACT_BITS), "last": 1})

#: One group of five inputs: each consumer's five int8 codes (zero beyond K
#: and for absent consumers), end of vector.
CODES_LAYOUT = data.StructLayout({
    "codes": data.ArrayLayout(data.ArrayLayout(signed(CODE_BITS), nx.TRITS_PER_BYTE), MAX_CONSUMERS),
    "last": 1,
})


def rms_params_layout(max_k: int) -> data.StructLayout:
    """The record's scalars (weight_image header words), as the unit takes them."""
    return data.StructLayout({
        "k": unsigned(max_k.bit_length()),
        "consumers": unsigned(2),
        "frac_a": unsigned(FRAC_MAX.bit_length()),
        "source": unsigned(2),                       # NormSource
        "eps_mant": unsigned(nx.EPS_MANT_BITS),
        "eps_shift": unsigned(EPS_SHIFT_MAX.bit_length()),
        "x_frac": unsigned(X_FRAC_MAX.bit_length()),
        "frac_g": data.ArrayLayout(unsigned(FRAC_MAX.bit_length()), MAX_CONSUMERS),
        "cm": data.ArrayLayout(unsigned(nx.SCALE_BITS), MAX_CONSUMERS),
        "ec": data.ArrayLayout(signed(EC_BITS), MAX_CONSUMERS),
    })


def v_bits_for(max_k: int) -> int:
    """Width of V (sum of squares plus the eps term) for vectors of up to ``max_k`` elements and
    every header in the supported ranges: what :class:`RmsQuantize` gives its :class:`RsqrtFixed`."""
    return _Bounds(max_k).v_bits


def _signed_bits(lo: int, hi: int) -> int:
    return max(lo.bit_length(), (-lo).bit_length(), hi.bit_length(), (-hi).bit_length()) + 1


class _Bounds:
    """Ranges of the data-dependent shifts and exponents for a given max_k (all inclusive)."""

    def __init__(self, max_k: int):
        self.sumsq_bits = (max_k << (2 * nx.SUMSQ_BITS)).bit_length()      # sum of K squares <= 2**48
        self.sa = (-nx.SUMSQ_BITS, MAG_BITS - nx.SUMSQ_BITS)                 # bitlen(max|x*A|) - 24
        self.sn = (-nx.SUMSQ_BITS, nx.ACT_BITS - nx.SUMSQ_BITS)             # bitlen(max|n|) - 24, n in ACT
        self.sh = (1 - nx.QUANT_NORM_BITS, MAG_BITS - nx.QUANT_NORM_BITS)
        # eps exponent / 2 + eps_shift / 2: q = [sn - n_frac] + x_frac + frac_a - sa
        sa_lo, sa_hi = self.sa
        q_none = (0 + 0 - sa_hi, X_FRAC_MAX + FRAC_MAX - sa_lo)
        q_input = (self.sn[0] + 0 - sa_hi, self.sn[1] + FRAC_MAX - sa_lo)           # n = x: n_frac = x_frac
        q_gate = (self.sn[0] - nx.ACT_FRAC - sa_hi, self.sn[1] - nx.ACT_FRAC + X_FRAC_MAX + FRAC_MAX - sa_lo)
        q_norm = (min(q_input[0], q_gate[0]), max(q_input[1], q_gate[1]))
        self.q = (min(q_none[0], q_norm[0]), max(q_none[1], q_norm[1]))
        self.e = (2 * self.q[0] - EPS_SHIFT_MAX, 2 * self.q[1] - EPS_SHIFT_MIN)
        # eps = floor(base * eps_mant * 2**e): base = K (NONE) or the norm vector's sum of
        # squares S_n (INPUT, GATE), each with its own largest exponent.
        eps_bits = max(max_k.bit_length() + nx.EPS_MANT_BITS + 2 * q_none[1] - EPS_SHIFT_MIN,
                       self.sumsq_bits + nx.EPS_MANT_BITS + 2 * q_norm[1] - EPS_SHIFT_MIN)
        self.v_bits = max(eps_bits, self.sumsq_bits) + 1                    # V = s + eps


class RmsQuantize(wiring.Component):
    """The input stage of a BitLinear record, bit exact with ``golden_int``.

    For input x (length K, ACT), pre-norm gain A and each consumer's folded
    gain ``G_c`` (24-bit mantissas), it computes what ``IntegerModel.bitlinear``
    computes before the matrix product:

    1. **Max pass, fused with the gain load**: as each beat of ``gain_lanes``
       gains arrives (x being complete), the same lanes of x are read (x is
       stored in ``gain_lanes`` banks) and ``max|x * A|`` or ``M_c = max|x * G_c|``
       is updated for that part: no pass of its own. ``max|n|`` (n = x for
       ``NormSource.INPUT``, the ``norm`` field for ``GATE``) is taken while x
       is loaded.
    2. **Normalise and divide**: ``sh_c``, ``M'_c`` (``numerics.normalize_shift``),
       ``sa``, ``sn``; one :class:`~mmfree.hw.reciprocal.QuantReciprocal` per
       consumer, in parallel.
    3. **Code pass**, ``elements_per_cycle`` (P) elements per cycle: the codes
       ``q0 = (|p_c'| * R_c + 2**47) >> 48``, then exactly rounded (ties away
       from zero) ``q = sign * (q0 + [(2 q0 + 1) M'_c <= 254 |p_c'|])``
       (``numerics.quantize_codes``; packed five to a :data:`CODES_LAYOUT`
       beat), ``s = sum rshift_round(|x * A|, sa)**2`` and
       ``S_n = sum rshift_round(|n|, sn)**2`` (24-bit magnitudes).
    4. **Epsilon**: ``numerics.eps_term`` with base K (``NONE``) or ``S_n``,
       shifted serially (32, 8 or 1 bit per cycle) in a ``v_bits`` register;
       ``V = s + eps``.
    5. :class:`~mmfree.hw.rsqrt.RsqrtFixed`: ``(inv, z)``; then per consumer
       ``numerics.output_scale`` (two multiplies on one multiplier, one
       consumer per two cycles).

    The ``scales`` beat carries scale and exponent per consumer and, for
    checking, ``M'_c``, ``sh_c``, ``V``, ``sa``, ``inv``, ``z``. ``V = 0`` or
    ``M'_c = 0`` (the golden model's all-zero outputs) give ``scale = 0``.

    What P costs: per element 4 products of x (48 bits) by a 24-bit gain, 2
    squares of 25 bits, and per consumer a code product of 31 x 25 bits and
    a tie product of 8 x 31 bits (P = 4: 16 + 8 + 24 multipliers). The max
    pass needs ``gain_lanes`` products of 48 x 24 bits; it never runs with
    the code pass, so both share one bank of ``max(gain_lanes, 4 P)``
    multipliers. x and the gains are read ``gain_lanes`` wide, so P must
    divide ``gain_lanes``; the code packer takes at most one group of five
    per cycle, so P <= 4.

    Ports
    -----
    params : stream of :func:`rms_params_layout`: one beat per vector, first.
    gains : stream of ``gain_lanes`` 24-bit mantissas per beat: A, then
        ``G_0 .. G_{n-1}``, each exactly ``ceil(K / gain_lanes)`` beats (element
        j of a part in beat ``j // gain_lanes``, lane ``j % gain_lanes``; lanes
        beyond K are ignored). Taken once x is complete.
    x : stream of :data:`X_LAYOUT`: the K elements, ``last`` on the final one.
        Accepted whenever the previous vector's code pass has read its input,
        independently of ``params``/``gains`` (the next record's input may
        arrive while the current one's matrices are streaming).
    codes : stream of :data:`CODES_LAYOUT`: ``ceil(K / 5)`` beats, ``last`` on the final one.
    scales : stream of :func:`scales_layout`: one beat per vector, after the codes.

    Parameters
    ----------
    max_k : int, the longest vector, 1..65535.
    gain_lanes : int, gain mantissas per ``gains`` beat, a power of two, 1..32.
    elements_per_cycle : int, P, elements per cycle of the code pass: 1, 2 or 4,
        at most ``gain_lanes`` (default 1).

    Attributes
    ----------
    v_bits : width of ``V`` (from the supported header ranges, see ``FRAC_MAX`` etc.).
    exp_bits : signed width of the scale exponents.
    codes_cycles(k) : cycles from the transfer of the last gains beat (x
        complete) to the transfer of the last codes beat, the output ready:
        ``ceil(k / P) + CODES_OVERHEAD`` (+1 when the final group needs a
        flush of its own).
    first_codes_cycles : cycles from the transfer of the last gains beat to the
        transfer of the first codes beat (K >= 5).
    Throughput: one vector at a time; ``params`` of the next vector is taken
    after this one's ``scales`` beat has left.
    """

    #: Max-pass drain (3), normalise (1), divide (1 + QuantReciprocal.latency), code pipeline (7:
    #: read, products, magnitudes, shifts, code estimate, code correction and squares, packing).
    CODES_OVERHEAD = 3 + 1 + 1 + QuantReciprocal.latency + 7

    def __init__(self, *, max_k: int, gain_lanes: int, elements_per_cycle: int = 1):
        for name, value in (("max_k", max_k), ("gain_lanes", gain_lanes),
                            ("elements_per_cycle", elements_per_cycle)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 1 <= max_k <= 65535:
            raise ValueError(f"max_k must be in 1..65535, not {max_k}")
        if gain_lanes not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"gain_lanes must be a power of two in 1..32, not {gain_lanes}")
        if elements_per_cycle not in (1, 2, 4) or elements_per_cycle > gain_lanes:
            raise ValueError(f"elements_per_cycle must be 1, 2 or 4 and at most gain_lanes ({gain_lanes}), "
                             f"not {elements_per_cycle}")
        self.max_k = max_k
        self.gain_lanes = gain_lanes
        self.elements_per_cycle = elements_per_cycle
        self.bounds = _Bounds(max_k)
        self.v_bits = self.bounds.v_bits
        self._rsqrt_z_bits = rsqrt_z_bits(self.v_bits)
        z_lo = (nx.RSQRT_NORM_BITS - self.v_bits) // 2
        z_hi = (nx.RSQRT_NORM_BITS - 1) // 2
        exp_const = nx.ACT_FRAC + nx.RATIO_DROP_BITS + nx.SCALE_BITS - nx.RSQRT_RECIP_SHIFT
        sh, sa = self.bounds.sh, self.bounds.sa
        self.exp_range = (-(1 << (EC_BITS - 1)) + sh[0] + 0 - FRAC_MAX - sa[1] + z_lo + exp_const,
                          (1 << (EC_BITS - 1)) - 1 + sh[1] + FRAC_MAX - 0 - sa[0] + z_hi + exp_const)
        self.exp_bits = _signed_bits(*self.exp_range)
        super().__init__({
            "params": In(stream.Signature(rms_params_layout(max_k))),
            "gains": In(stream.Signature(data.ArrayLayout(signed(nx.GAIN_BITS), gain_lanes))),
            "x": In(stream.Signature(X_LAYOUT)),
            "codes": Out(stream.Signature(CODES_LAYOUT)),
            "scales": Out(stream.Signature(scales_layout(self.v_bits, self._rsqrt_z_bits, self.exp_bits))),
        })

    def codes_cycles(self, k: int) -> int:
        P = self.elements_per_cycle
        issues = -(-k // P)
        # The final issue may complete two groups: the second leaves one cycle later.
        before = (issues - 1) * P
        flush = int(before % 5 + min(P, k - before) > 5)
        return issues + self.CODES_OVERHEAD + flush

    @property
    def first_codes_cycles(self) -> int:
        return self.CODES_OVERHEAD + -(-nx.TRITS_PER_BYTE // self.elements_per_cycle)

    def elaborate(self, platform):
        m = Module()
        b = self.bounds
        C = MAX_CONSUMERS
        gl, P = self.gain_lanes, self.elements_per_cycle
        gl_log2, P_log2 = gl.bit_length() - 1, P.bit_length() - 1
        words = -(-self.max_k // gl)
        G = nx.TRITS_PER_BYTE

        # ---- storage ---------------------------------------------------------
        # x in gain_lanes banks (element j in bank j % gl, word j // gl), so a
        # gain beat meets its x lanes in one read.
        x_elem = data.StructLayout({"value": signed(nx.ACT_BITS), "norm": signed(nx.ACT_BITS)})
        x_wr, x_rd = [], []
        for lane in range(gl):
            mem = Memory(shape=x_elem, depth=words, init=[])
            m.submodules[f"x{lane}"] = mem
            x_wr.append(mem.write_port())
            x_rd.append(mem.read_port(domain="sync"))
        gain_word = data.ArrayLayout(signed(nx.GAIN_BITS), gl)
        gain_wr, gain_rd = [], []
        for part in range(1 + C):   # part 0: A; part 1 + c: G_c
            mem = Memory(shape=gain_word, depth=words, init=[])
            m.submodules[f"gain{part}"] = mem
            gain_wr.append(mem.write_port())
            gain_rd.append(mem.read_port(domain="sync"))
        m.submodules.rsqrt = rsqrt = RsqrtFixed(v_bits=self.v_bits)
        recips = []
        for c in range(C):
            recip = QuantReciprocal()
            m.submodules[f"reciprocal{c}"] = recip
            recips.append(recip)

        p = Signal(rms_params_layout(self.max_k))    # the current vector's scalars
        k_last = Signal(range(self.max_k))           # K - 1

        # ---- x: loaded whenever the previous vector's code pass has read it --
        x_full = Signal()
        x_lane = Signal(range(gl))
        x_word = Signal(range(words + 1))
        x_first = Signal(init=1)
        x_release = Signal()                          # the code pass issued its last read
        peak_x = Signal(nx.ACT_BITS)                  # max|x| and max|norm|: the pre-norm's max|n|
        peak_norm_in = Signal(nx.ACT_BITS)
        load = self.x.valid & ~x_full
        m.d.comb += self.x.ready.eq(~x_full)
        for lane, port in enumerate(x_wr):
            m.d.comb += [port.addr.eq(x_word), port.data.value.eq(self.x.payload.value),
                         port.data.norm.eq(self.x.payload.norm), port.en.eq(load & (x_lane == lane))]
        mag_x = Signal(nx.ACT_BITS)
        mag_norm_in = Signal(nx.ACT_BITS)
        m.d.comb += [mag_x.eq(Mux(self.x.payload.value < 0, -self.x.payload.value, self.x.payload.value)),
                     mag_norm_in.eq(Mux(self.x.payload.norm < 0, -self.x.payload.norm, self.x.payload.norm))]
        with m.If(load):
            m.d.sync += [x_first.eq(0), x_lane.eq(x_lane + 1),
                         peak_x.eq(Mux(x_first | (mag_x > peak_x), mag_x, peak_x)),
                         peak_norm_in.eq(Mux(x_first | (mag_norm_in > peak_norm_in), mag_norm_in, peak_norm_in))]
            with m.If(x_lane == gl - 1):
                m.d.sync += [x_lane.eq(0), x_word.eq(x_word + 1)]
            with m.If(self.x.payload.last):
                m.d.sync += [x_full.eq(1), x_lane.eq(0), x_word.eq(0), x_first.eq(1)]
        with m.If(x_release):
            m.d.sync += x_full.eq(0)

        # ---- gains: part by part into the gain memories, with the max pass -----
        part = Signal(range(1 + C))
        beat = Signal(range(words + 1))
        beats_per_part = Signal(range(words + 1))
        gain_take = Signal()
        for index, port in enumerate(gain_wr):
            m.d.comb += [port.addr.eq(beat), port.data.eq(self.gains.payload),
                         port.en.eq(gain_take & (part == index))]
        peak_a = Signal(MAG_BITS)
        peak = [Signal(MAG_BITS, name=f"peak{c}") for c in range(C)]
        # The 48 x 24-bit products of both passes (one shared bank, see below).
        n_mul = max(gl, (1 + C) * P)
        products = [Signal(signed(nx.ACT_BITS + nx.GAIN_BITS), name=f"product{i}") for i in range(n_mul)]
        # Stage 1: the beat (x lanes being read); stage 2: products; stage 3: magnitudes; then the max.
        g1_valid, g1_last, g1_part = Signal(), Signal(), Signal(range(1 + C))
        g1_gain = Signal(gain_word)
        g1_base = Signal(range(words * gl + 1))
        m.d.sync += g1_valid.eq(gain_take)
        with m.If(gain_take):
            m.d.sync += [g1_gain.eq(self.gains.payload), g1_part.eq(part), g1_base.eq(beat << gl_log2),
                         g1_last.eq((part == p.consumers) & (beat == beats_per_part - 1))]
        g2_valid, g2_last, g2_part = Signal(), Signal(), Signal(range(1 + C))
        g2_prod = products[:gl]                      # x * gain of each lane
        g2_mask = Signal(gl)
        m.d.sync += [g2_valid.eq(g1_valid), g2_last.eq(g1_last), g2_part.eq(g1_part)]
        m.d.sync += [g2_mask[i].eq(g1_base + i <= k_last) for i in range(gl)]
        g3_valid, g3_last, g3_part = Signal(), Signal(), Signal(range(1 + C))
        g3_mag = [Signal(MAG_BITS, name=f"g3_mag{i}") for i in range(gl)]
        m.d.sync += [g3_valid.eq(g2_valid), g3_last.eq(g2_last), g3_part.eq(g2_part)]
        for i in range(gl):
            m.d.sync += g3_mag[i].eq(Mux(g2_mask[i], Mux(g2_prod[i] < 0, -g2_prod[i], g2_prod[i]), 0))
        lane_max = g3_mag
        while len(lane_max) > 1:   # a tree of comparators over the beat's lanes
            lane_max = [Mux(a > b_, a, b_) for a, b_ in zip(lane_max[0::2], lane_max[1::2])] + \
                lane_max[len(lane_max) & ~1:]
        beat_max = lane_max[0]
        max_done = Signal()
        with m.If(g3_valid):
            with m.Switch(g3_part):
                with m.Case(0):
                    m.d.sync += peak_a.eq(Mux(beat_max > peak_a, beat_max, peak_a))
                for c in range(C):
                    with m.Case(1 + c):
                        m.d.sync += peak[c].eq(Mux(beat_max > peak[c], beat_max, peak[c]))
            m.d.comb += max_done.eq(g3_last)

        # ---- the code pass: P elements per cycle, stalling together -------------
        advance = Signal()
        m.d.comb += advance.eq(~self.codes.valid | self.codes.ready)
        issue = Signal()
        ptr = Signal(range(self.max_k + P + 1))
        code_pass = Signal()
        for port in x_rd + gain_rd:
            m.d.comb += [port.addr.eq(Mux(code_pass, ptr >> gl_log2, beat)),
                         port.en.eq(Mux(code_pass, advance, gain_take))]
        valid1, last1 = Signal(), Signal()
        chunk1 = Signal(range(max(gl // P, 2)))       # which P lanes of the word
        base1 = Signal(range(self.max_k + P + 1))
        with m.If(advance):
            m.d.sync += [valid1.eq(issue), last1.eq(ptr + P > k_last), chunk1.eq((ptr & (gl - 1)) >> P_log2),
                         base1.eq(ptr)]
            with m.If(issue):
                m.d.sync += ptr.eq(ptr + P)

        def lanes_of(values, name):
            """The P lanes ``chunk1 * P + j`` of a list of gl per-lane values."""
            out = []
            for j in range(P):
                sel = Signal.like(values[j], name=f"{name}{j}")
                with m.Switch(chunk1):
                    for ch in range(gl // P):
                        with m.Case(ch):
                            m.d.comb += sel.eq(values[ch * P + j])
                out.append(sel)
            return out

        xv = lanes_of([port.data.value for port in x_rd], "x_lane")
        xn = lanes_of([port.data.norm for port in x_rd], "norm_lane")
        av = lanes_of([gain_rd[0].data[i] for i in range(gl)], "a_lane")
        gv = [lanes_of([gain_rd[1 + c].data[i] for i in range(gl)], f"g{c}_lane") for c in range(C)]

        # Stage 2: the products p = x * G_c, x * A; the norm vector's element; lane masks.
        valid2, last2 = Signal(), Signal()
        prod_a = products[:P]
        prod = [products[P * (1 + c): P * (2 + c)] for c in range(C)]
        norm_el = [Signal(signed(nx.ACT_BITS), name=f"norm_el{j}") for j in range(P)]
        mask2 = Signal(P)
        with m.If(advance):
            m.d.sync += [valid2.eq(valid1), last2.eq(last1)]
            for j in range(P):
                m.d.sync += [mask2[j].eq(base1 + j <= k_last),
                             norm_el[j].eq(Mux(p.source == NormSource.GATE, xn[j], xv[j]))]

        # The product bank: the max pass (during the gain load) and the code pass never run at
        # once, so one set of multipliers serves both: lane i of a gains beat in the max pass
        # (registered every cycle); x * A (product j) and x * G_c (product P (1 + c) + j) in the
        # code pass (registered when the code pipeline advances).
        for i in range(n_mul):
            x_op = Signal(signed(nx.ACT_BITS), name=f"mul_x{i}")
            g_op = Signal(signed(nx.GAIN_BITS), name=f"mul_g{i}")
            with m.If(code_pass):
                if i < (1 + C) * P:
                    gain = av[i] if i < P else gv[i // P - 1][i % P]
                    m.d.comb += [x_op.eq(xv[i % P]), g_op.eq(gain)]
            with m.Else():
                if i < gl:
                    m.d.comb += [x_op.eq(x_rd[i].data.value), g_op.eq(g1_gain[i])]
            with m.If(~code_pass | advance):
                m.d.sync += products[i].eq(x_op * g_op)

        # Stage 3: magnitudes and signs (lanes beyond K count as zero).
        valid3, last3 = Signal(), Signal()
        mask3 = Signal(P)
        mag_a = [Signal(MAG_BITS, name=f"mag_a{j}") for j in range(P)]
        mag = [[Signal(MAG_BITS, name=f"mag{c}_{j}") for j in range(P)] for c in range(C)]
        neg3 = [[Signal(name=f"neg{c}_{j}") for j in range(P)] for c in range(C)]
        mag_n = [Signal(nx.ACT_BITS, name=f"mag_n{j}") for j in range(P)]
        with m.If(advance):
            m.d.sync += [valid3.eq(valid2), last3.eq(last2), mask3.eq(mask2)]
            for j in range(P):
                m.d.sync += [mag_a[j].eq(Mux(mask2[j], Mux(prod_a[j] < 0, -prod_a[j], prod_a[j]), 0)),
                             mag_n[j].eq(Mux(mask2[j], Mux(norm_el[j] < 0, -norm_el[j], norm_el[j]), 0))]
                for c in range(C):
                    m.d.sync += [mag[c][j].eq(Mux(prod[c][j] < 0, -prod[c][j], prod[c][j])),
                                 neg3[c][j].eq(prod[c][j] < 0)]

        # The scalars of the code pass (latched after the max pass).
        peak_norm = [Signal(nx.QUANT_NORM_BITS, name=f"peak_norm{c}") for c in range(C)]
        shift = [Signal(signed(8), name=f"shift{c}") for c in range(C)]
        shift_right = [Signal(range(MAG_BITS + 1), name=f"shift_right{c}") for c in range(C)]
        shift_left = [Signal(range(nx.QUANT_NORM_BITS + 1), name=f"shift_left{c}") for c in range(C)]
        recip = [Signal(RECIP_BITS, name=f"recip{c}") for c in range(C)]
        sa = Signal(signed(8))
        sn = Signal(signed(8))
        # rshift_round(t, s) = ((t >> (s - 1)) + 1) >> 1 for s > 0, t << -s otherwise
        sa_round, sa_right, sa_left = Signal(), Signal(range(MAG_BITS)), Signal(range(nx.SUMSQ_BITS + 1))
        sn_round, sn_right, sn_left = Signal(), Signal(range(nx.ACT_BITS)), Signal(range(nx.SUMSQ_BITS + 1))

        def sumsq_magnitude(value, rounding, right, left):
            """``numerics.sumsq_magnitudes`` of one magnitude, from the split shift."""
            return Mux(rounding, ((value >> right)[:SUMSQ_MAG_BITS + 1] + 1) >> 1, value << left)[:SUMSQ_MAG_BITS]

        # Stage 4: normalised magnitudes.
        valid4, last4 = Signal(), Signal()
        mask4 = Signal(P)
        mag_a4 = [Signal(SUMSQ_MAG_BITS, name=f"mag_a4_{j}") for j in range(P)]
        mag_n4 = [Signal(SUMSQ_MAG_BITS, name=f"mag_n4_{j}") for j in range(P)]
        mag4 = [[Signal(nx.QUANT_NORM_BITS, name=f"mag_norm{c}_{j}") for j in range(P)] for c in range(C)]
        neg4 = [[Signal(name=f"neg4_{c}_{j}") for j in range(P)] for c in range(C)]
        with m.If(advance):
            m.d.sync += [valid4.eq(valid3), last4.eq(last3), mask4.eq(mask3)]
            for j in range(P):
                m.d.sync += [mag_a4[j].eq(sumsq_magnitude(mag_a[j], sa_round, sa_right, sa_left)),
                             mag_n4[j].eq(sumsq_magnitude(mag_n[j], sn_round, sn_right, sn_left))]
                for c in range(C):
                    m.d.sync += [mag4[c][j].eq(shift_magnitude(mag[c][j], shift_right[c], shift_left[c])),
                                 neg4[c][j].eq(neg3[c][j])]

        # Stage 5: the code estimates q0 = (|p'| * R + 2**47) >> 48.
        valid_e, last_e = Signal(), Signal()
        count_e = Signal(range(P + 1))                # lanes within K
        mag_a_e = [Signal(SUMSQ_MAG_BITS, name=f"mag_a_e{j}") for j in range(P)]
        mag_n_e = [Signal(SUMSQ_MAG_BITS, name=f"mag_n_e{j}") for j in range(P)]
        q0 = [[Signal(CODE_ESTIMATE_BITS, name=f"q0_{c}_{j}") for j in range(P)] for c in range(C)]
        mag_e = [[Signal(nx.QUANT_NORM_BITS, name=f"mag_e{c}_{j}") for j in range(P)] for c in range(C)]
        neg_e = [[Signal(name=f"neg_e{c}_{j}") for j in range(P)] for c in range(C)]
        with m.If(advance):
            m.d.sync += [valid_e.eq(valid4), last_e.eq(last4), count_e.eq(sum(mask4[j] for j in range(P)))]
            for j in range(P):
                m.d.sync += [mag_a_e[j].eq(mag_a4[j]), mag_n_e[j].eq(mag_n4[j])]
                for c in range(C):
                    m.d.sync += [q0[c][j].eq(code_estimate(mag4[c][j], recip[c])), mag_e[c][j].eq(mag4[c][j]),
                                 neg_e[c][j].eq(neg4[c][j])]

        # Stage 6: the squares, and the exact codes q = sign * (q0 + [(2 q0 + 1) M' <= 254 |p'|])
        # (a tie rounds away from zero), zero for an absent consumer.
        valid5, last5 = Signal(), Signal()
        count5 = Signal(range(P + 1))
        sq_a = [Signal(2 * SUMSQ_MAG_BITS, name=f"sq_a{j}") for j in range(P)]
        sq_n = [Signal(2 * SUMSQ_MAG_BITS, name=f"sq_n{j}") for j in range(P)]
        code5 = [[Signal(signed(CODE_BITS), name=f"code{c}_{j}") for j in range(P)] for c in range(C)]
        with m.If(advance):
            m.d.sync += [valid5.eq(valid_e), last5.eq(last_e), count5.eq(count_e)]
            m.d.sync += [sq_a[j].eq(mag_a_e[j] * mag_a_e[j]) for j in range(P)]
            m.d.sync += [sq_n[j].eq(mag_n_e[j] * mag_n_e[j]) for j in range(P)]
            for j in range(P):
                for c in range(C):
                    magnitude = code_correct(q0[c][j], mag_e[c][j], peak_norm[c])
                    m.d.sync += code5[c][j].eq(Mux(c < p.consumers, Mux(neg_e[c][j], -magnitude, magnitude), 0))

        # Stage 7: the sums, and the codes packed five to a beat through a
        # buffer (at most 4 waiting + P new <= 8).
        sumsq = Signal(b.sumsq_bits)
        sumsq_n = Signal(b.sumsq_bits)
        slots = G + P - 1
        buf = [[Signal(signed(CODE_BITS), name=f"buf{c}_{s_}") for s_ in range(slots)] for c in range(C)]
        held = Signal(range(G))                       # codes waiting in buf
        flush = Signal()                              # a final partial group still to go
        code_done = Signal()
        with m.If(self.codes.valid & self.codes.ready):
            m.d.sync += self.codes.valid.eq(0)
        total = Signal(range(slots + 1))
        m.d.comb += total.eq(held + count5)
        merged = [[Signal(signed(CODE_BITS), name=f"merged{c}_{s_}") for s_ in range(slots)] for c in range(C)]
        for c in range(C):
            for s_ in range(slots):
                # slot s: a waiting code, the new lane s - held, or zero (padding of the last group)
                value = Mux(s_ < held, buf[c][s_], 0)
                for j in range(P):
                    value = Mux((s_ >= held) & (s_ - held == j) & (j < count5), code5[c][j], value)
                m.d.comb += merged[c][s_].eq(value)
        with m.If(advance & valid5):
            m.d.sync += [sumsq.eq(sumsq + sum(sq_a[1:], sq_a[0])), sumsq_n.eq(sumsq_n + sum(sq_n[1:], sq_n[0]))]
            with m.If(total >= G):
                m.d.sync += [self.codes.valid.eq(1), self.codes.payload.last.eq(last5 & (total == G)),
                             held.eq(total - G)]
                for c in range(C):
                    m.d.sync += [self.codes.payload.codes[c][j].eq(merged[c][j]) for j in range(G)]
                    m.d.sync += [buf[c][s_].eq(merged[c][s_ + G]) for s_ in range(slots - G)]
                with m.If(last5):
                    with m.If(total == G):
                        m.d.comb += code_done.eq(1)
                    with m.Else():
                        m.d.sync += flush.eq(1)
            with m.Else():
                m.d.sync += held.eq(total)
                m.d.sync += [buf[c][s_].eq(merged[c][s_]) for c in range(C) for s_ in range(slots)]
                with m.If(last5):
                    # the final group, padded with zeros
                    m.d.sync += [self.codes.valid.eq(1), self.codes.payload.last.eq(1), held.eq(0)]
                    for c in range(C):
                        m.d.sync += [self.codes.payload.codes[c][j].eq(merged[c][j]) for j in range(G)]
                    m.d.comb += code_done.eq(1)
        with m.If(advance & flush):
            m.d.sync += [self.codes.valid.eq(1), self.codes.payload.last.eq(1), held.eq(0), flush.eq(0)]
            for c in range(C):
                m.d.sync += [self.codes.payload.codes[c][j].eq(Mux(j < held, buf[c][j], 0)) for j in range(G)]
            m.d.comb += code_done.eq(1)

        # ---- scalars after the passes -------------------------------------------
        norm_now = [normalise_peak(m, peak[c], nx.QUANT_NORM_BITS, name=f"peak{c}") for c in range(C)]
        bitlen_a = bit_length(m, peak_a, name="bitlen_a")
        bitlen_n = bit_length(m, Mux(p.source == NormSource.GATE, peak_norm_in, peak_x), name="bitlen_n")
        for recip_unit, value in zip(recips, peak_norm):
            m.d.comb += [recip_unit.i.payload.eq(value), recip_unit.o.ready.eq(1)]

        eps = Signal(self.v_bits)                 # the eps register, shifted serially
        eps_exp = Signal(signed(_signed_bits(*b.e)))
        eps_left = Signal()
        eps_count = Signal(range(max(-b.e[0], b.e[1]) + 1))
        v = Signal(self.v_bits)
        inv = Signal(INV_BITS)
        z = Signal(signed(self._rsqrt_z_bits))
        cons = Signal(range(C))
        ratio = Signal(RATIO_BITS)
        # One multiplier for both per-consumer products of numerics.output_scale (RATIO, then SCALE).
        scalar_a = Signal(max(nx.QUANT_NORM_BITS, nx.SCALE_BITS))
        scalar_b = Signal(max(INV_BITS, RATIO_BITS))
        scalar_prod = Signal(len(scalar_a) + len(scalar_b))
        m.d.comb += scalar_prod.eq(scalar_a * scalar_b)
        scales = Signal(self.scales.payload.shape())
        m.d.comb += self.scales.payload.eq(scales)
        m.d.comb += [rsqrt.i.payload.eq(v), rsqrt.o.ready.eq(1)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.params.ready.eq(1)
                with m.If(self.params.valid):
                    m.d.sync += [p.eq(self.params.payload), k_last.eq(self.params.payload.k - 1),
                                 beats_per_part.eq((self.params.payload.k + gl - 1) >> gl_log2),
                                 part.eq(0), beat.eq(0), peak_a.eq(0)] + [peak[c].eq(0) for c in range(C)]
                    m.next = "GAINS"
            with m.State("GAINS"):
                # Gains only with x complete: each beat meets its x lanes for the max.
                m.d.comb += [self.gains.ready.eq(x_full), gain_take.eq(self.gains.valid & x_full)]
                with m.If(gain_take):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == beats_per_part - 1):
                        m.d.sync += [beat.eq(0), part.eq(part + 1)]
                        with m.If(part == p.consumers):
                            m.next = "MAX_DRAIN"
            with m.State("MAX_DRAIN"):
                with m.If(max_done):
                    m.next = "NORMALISE"
            with m.State("NORMALISE"):
                for c in range(C):
                    value, sh, right, left = norm_now[c]
                    m.d.sync += [peak_norm[c].eq(value), shift[c].eq(sh), shift_right[c].eq(right),
                                 shift_left[c].eq(left)]
                # sa = bitlen(max|x*A|) - 24, sn = bitlen(max|n|) - 24
                m.d.sync += [sa.eq(bitlen_a - nx.SUMSQ_BITS), sn.eq(bitlen_n - nx.SUMSQ_BITS),
                             sa_round.eq(bitlen_a > nx.SUMSQ_BITS), sa_right.eq(bitlen_a - nx.SUMSQ_BITS - 1),
                             sa_left.eq(nx.SUMSQ_BITS - bitlen_a),
                             sn_round.eq(bitlen_n > nx.SUMSQ_BITS), sn_right.eq(bitlen_n - nx.SUMSQ_BITS - 1),
                             sn_left.eq(nx.SUMSQ_BITS - bitlen_n)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                # One reciprocal per consumer, in parallel (a zero peak gives an unused quotient).
                for recip_unit in recips:
                    m.d.comb += recip_unit.i.valid.eq(1)
                m.next = "DIVIDE_WAIT"
            with m.State("DIVIDE_WAIT"):
                with m.If(recips[0].o.valid):
                    m.d.sync += [recip[c].eq(recips[c].o.payload) for c in range(C)]
                    m.d.sync += [ptr.eq(0), code_pass.eq(1), sumsq.eq(0), sumsq_n.eq(0), held.eq(0), flush.eq(0)]
                    m.next = "CODE_PASS"
            with m.State("CODE_PASS"):
                m.d.comb += issue.eq(ptr <= k_last)
                m.d.comb += x_release.eq(advance & issue & (ptr + P > k_last))
                with m.If(code_done):
                    m.d.sync += code_pass.eq(0)
                    m.next = "EPS"
            with m.State("EPS"):
                # eps = floor(base * eps_mant * 2**e), e = 2 q - eps_shift,
                # q = [sn - n_frac] + x_frac + frac_a - sa (numerics.eps_term)
                none = p.source == NormSource.NONE
                n_frac = Mux(p.source == NormSource.INPUT, p.x_frac, nx.ACT_FRAC)
                q = Mux(none, 0, sn - n_frac) + p.x_frac + p.frac_a - sa
                e = Signal.like(eps_exp)
                m.d.comb += e.eq(2 * q - p.eps_shift)
                m.d.sync += [eps.eq(Mux(none, k_last + 1, sumsq_n) * p.eps_mant), eps_exp.eq(e),
                             eps_left.eq(e >= 0), eps_count.eq(Mux(e >= 0, e, -e))]
                m.next = "EPS_SHIFT"
            with m.State("EPS_SHIFT"):
                # Floor right shifts compose, so 32/8/1-bit steps give the exact floor.
                with m.If((eps_count == 0) | (eps == 0)):
                    m.next = "SUM"
                for step in (32, 8, 1):
                    cond = eps_count >= step
                    if step != 32:
                        cond = cond & (eps_count < prev)
                    with m.If(cond):
                        m.d.sync += [eps.eq(Mux(eps_left, eps << step, eps >> step)), eps_count.eq(eps_count - step)]
                    prev = step
            with m.State("SUM"):
                m.d.sync += v.eq(sumsq + eps)
                m.next = "RSQRT"
            with m.State("RSQRT"):
                m.d.comb += rsqrt.i.valid.eq(1)
                with m.If(rsqrt.i.ready):
                    m.next = "RSQRT_WAIT"
            with m.State("RSQRT_WAIT"):
                with m.If(rsqrt.o.valid):
                    m.d.sync += [inv.eq(rsqrt.o.payload.inv), z.eq(rsqrt.o.payload.z), cons.eq(0)]
                    m.next = "RATIO"
            with m.State("RATIO"):
                # F' = (M' * inv) >> 32
                m.d.comb += [scalar_a.eq(Cat(peak_norm).word_select(cons, nx.QUANT_NORM_BITS)), scalar_b.eq(inv)]
                m.d.sync += ratio.eq(scalar_prod >> nx.RATIO_DROP_BITS)
                m.next = "SCALE"
            with m.State("SCALE"):
                # scale = (Cm * F') >> 31; exp = ec + sh + frac_a - frac_g - sa + z - 61 + 32 + 32 + 31
                m.d.comb += [scalar_a.eq(Cat(p.cm).word_select(cons, nx.SCALE_BITS)), scalar_b.eq(ratio)]
                with m.Switch(cons):
                    for c in range(C):
                        with m.Case(c):
                            m.d.sync += [
                                scales.scale[c].eq(scalar_prod >> nx.SCALE_BITS),
                                scales.exp[c].eq(p.ec[c] + shift[c] + p.frac_a - p.frac_g[c] - sa + z
                                                 - nx.RSQRT_RECIP_SHIFT + nx.ACT_FRAC + nx.RATIO_DROP_BITS
                                                 + nx.SCALE_BITS),
                                scales.peak_norm[c].eq(peak_norm[c]), scales.shift[c].eq(shift[c])]
                m.d.sync += cons.eq(cons + 1)
                with m.If(cons == C - 1):
                    m.d.sync += [scales.sumsq.eq(v), scales.sa.eq(sa), scales.inv.eq(inv), scales.z.eq(z),
                                 self.scales.valid.eq(1)]
                    m.next = "OUTPUT"
                with m.Else():
                    m.next = "RATIO"
            with m.State("OUTPUT"):
                with m.If(self.scales.ready):
                    m.d.sync += self.scales.valid.eq(0)
                    m.next = "IDLE"
        return m


def scales_layout(v_bits: int, z_bits: int, exp_bits: int) -> data.StructLayout:
    """The ``scales`` beat: per consumer scale, exponent, M', sh; the vector's V, sa, inv, z."""
    return data.StructLayout({
        "scale": data.ArrayLayout(unsigned(SCALE_OUT_BITS), MAX_CONSUMERS),
        "exp": data.ArrayLayout(signed(exp_bits), MAX_CONSUMERS),
        "peak_norm": data.ArrayLayout(unsigned(nx.QUANT_NORM_BITS), MAX_CONSUMERS),
        "shift": data.ArrayLayout(signed(8), MAX_CONSUMERS),
        "sumsq": unsigned(v_bits),
        "sa": signed(8),
        "inv": unsigned(INV_BITS),
        "z": signed(z_bits),
    })
