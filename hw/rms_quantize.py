"""The BitLinear input stage: RMSNorm statistics and int8 codes of one vector for up to three consumers.

This is the "RMSNorm + activation quantizer" of a BitLinear record
(``golden_int.norm_stats`` + ``quantize_vector`` + ``numerics.output_scale``):
one max pass, one reciprocal per consumer, one code-and-square pass, one
reciprocal square root per vector, and one output scale per consumer.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx
from mmfree.models.weight_image import MAX_CONSUMERS, NormSource

from .quantize import bit_length, code_magnitude, normalise_peak, shift_magnitude
from .reciprocal import RECIP_BITS, QuantReciprocal
from .rsqrt import INV_BITS, RsqrtFixed, rsqrt_z_bits
from .ternary_accumulate import CODE_BITS

__all__ = ["RmsQuantize", "X_LAYOUT", "CODES_LAYOUT", "rms_params_layout", "scales_layout",
           "FRAC_MAX", "EPS_SHIFT_MIN", "EPS_SHIFT_MAX", "X_FRAC_MAX", "EC_BITS", "SCALE_OUT_BITS"]

# --------------------------------------------------------------------------
# The header-field ranges the hardware supports. Widths below follow from
# them; the engine refuses a record header outside them (its ``error``).
# --------------------------------------------------------------------------
#: Gain fractions frac_a, frac_g in [0, FRAC_MAX] (gain peaks down to 2**-17).
FRAC_MAX = 31
#: eps_shift in [EPS_SHIFT_MIN, EPS_SHIFT_MAX]: eps from 2**-40 up to 1.
EPS_SHIFT_MIN = nx.EPS_MANT_BITS - 1
EPS_SHIFT_MAX = 63
#: x_frac in [0, X_FRAC_MAX] (ACT and WIDE inputs).
X_FRAC_MAX = nx.WIDE_FRAC
#: The weight-scale exponent ec is a signed EC_BITS-bit value.
EC_BITS = 8
#: Output scale width (``numerics.output_scale``: scale < 2**25).
SCALE_OUT_BITS = 25

#: |x * G| of a WIDE x and an int16 gain: at most 2**62 (63 bits).
MAG_BITS = nx.WIDE_BITS + nx.GAIN_BITS - 1
#: Bits of a magnitude after the sum-of-squares rounding (``rshift_round`` may reach 2**16).
SUMSQ_MAG_BITS = nx.SUMSQ_BITS + 1

#: One element of the input vector: x (in the record's x_frac format, WIDE
#: width), the pre-norm's input n (ACT, used by NormSource.GATE records), end of vector.
X_LAYOUT = data.StructLayout({"value": signed(nx.WIDE_BITS), "norm": signed(nx.ACT_BITS), "last": 1})

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


def _signed_bits(lo: int, hi: int) -> int:
    return max(lo.bit_length(), (-lo).bit_length(), hi.bit_length(), (-hi).bit_length()) + 1


class _Bounds:
    """Ranges of the data-dependent shifts and exponents for a given max_k (all inclusive)."""

    def __init__(self, max_k: int):
        self.sumsq_bits = (max_k << (2 * nx.SUMSQ_BITS)).bit_length()      # sum of <= 2**32 squares
        self.sa = (-nx.SUMSQ_BITS, MAG_BITS - nx.SUMSQ_BITS)                 # bitlen(max|x*A|) - 16
        self.sn_input = (-nx.SUMSQ_BITS, nx.WIDE_BITS - nx.SUMSQ_BITS)      # n = x (WIDE width)
        self.sn_gate = (-nx.SUMSQ_BITS, nx.ACT_BITS - nx.SUMSQ_BITS)        # n = g (ACT)
        self.sh = (1 - nx.QUANT_NORM_BITS, MAG_BITS - nx.QUANT_NORM_BITS)
        # eps exponent / 2 + eps_shift / 2: q = [sn - n_frac] + x_frac + frac_a - sa
        sa_lo, sa_hi = self.sa
        q_none = (0 + 0 - sa_hi, X_FRAC_MAX + FRAC_MAX - sa_lo)
        q_input = (self.sn_input[0] + 0 - sa_hi, self.sn_input[1] + FRAC_MAX - sa_lo)
        q_gate = (self.sn_gate[0] - nx.ACT_FRAC - sa_hi,
                  self.sn_gate[1] - nx.ACT_FRAC + X_FRAC_MAX + FRAC_MAX - sa_lo)
        self.q = (min(q_none[0], q_input[0], q_gate[0]), max(q_none[1], q_input[1], q_gate[1]))
        self.e = (2 * self.q[0] - EPS_SHIFT_MAX, 2 * self.q[1] - EPS_SHIFT_MIN)
        # eps = floor(base * eps_mant * 2**e), base = K or the norm vector's sum of squares
        self.base_bits = max(self.sumsq_bits, max_k.bit_length())
        self.eps_base_bits = self.base_bits + nx.EPS_MANT_BITS
        self.v_bits = max(self.eps_base_bits + self.e[1], self.sumsq_bits) + 1


class RmsQuantize(wiring.Component):
    """The input stage of a BitLinear record, bit exact with ``golden_int``.

    For input x (length K), pre-norm gain A and each consumer's folded gain
    ``G_c`` (int16 mantissas), it computes what ``IntegerModel.bitlinear``
    computes before the matrix product:

    1. **Max pass** (one element per cycle): ``M_c = max|x * G_c|``,
       ``max|x * A|`` and, with a pre-norm, ``max|n|`` (n = x for
       ``NormSource.INPUT``, the ``norm`` field for ``GATE``).
    2. **Normalise and divide**: ``sh_c``, ``M'_c`` (``numerics.normalize_shift``),
       ``sa``, ``sn``; one :class:`~mmfree.hw.reciprocal.QuantReciprocal` per
       consumer, in parallel.
    3. **Code pass** (one element per cycle): the codes
       ``q = sign * ((|p_c'| * R_c + 2**39) >> 40)`` (one :data:`CODES_LAYOUT`
       beat per five elements), ``s = sum rshift_round(|x * A|, sa)**2`` and
       ``S_n = sum rshift_round(|n|, sn)**2``.
    4. **Epsilon**: ``numerics.eps_term`` with base K (``NONE``) or ``S_n``,
       shifted serially (32, 8 or 1 bit per cycle) in a ``v_bits`` register;
       ``V = s + eps``.
    5. :class:`~mmfree.hw.rsqrt.RsqrtFixed`: ``(inv, z)``; then per consumer
       ``numerics.output_scale`` (two multiplies, one consumer per two cycles).

    The ``scales`` beat carries scale and exponent per consumer and, for
    checking, ``M'_c``, ``sh_c``, ``V``, ``sa``, ``inv``, ``z``. ``V = 0`` or
    ``M'_c = 0`` (the golden model's all-zero outputs) give ``scale = 0``.

    Ports
    -----
    params : stream of :func:`rms_params_layout`: one beat per vector, first.
    gains : stream of ``gain_lanes`` int16 mantissas per beat: A, then
        ``G_0 .. G_{n-1}``, each exactly ``ceil(K / gain_lanes)`` beats (element
        j of a part in beat ``j // gain_lanes``, lane ``j % gain_lanes``; lanes
        beyond K are ignored).
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

    Attributes
    ----------
    v_bits : width of ``V`` (from the supported header ranges, see ``FRAC_MAX`` etc.).
    exp_bits : signed width of the scale exponents.
    codes_cycles(k) : cycles from the start of the max pass (gains loaded and
        x complete) to the transfer of the last codes beat, the output ready:
        ``2 k + CODES_OVERHEAD``.
    Throughput: one vector at a time; ``params`` of the next vector is taken
    after this one's ``scales`` beat has left.
    """

    #: Fixed cycles of :meth:`codes_cycles` beyond one cycle per element and pass.
    CODES_OVERHEAD = 4 + 3 + QuantReciprocal.latency + 5

    def __init__(self, *, max_k: int, gain_lanes: int):
        for name, value in (("max_k", max_k), ("gain_lanes", gain_lanes)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 1 <= max_k <= 65535:
            raise ValueError(f"max_k must be in 1..65535, not {max_k}")
        if gain_lanes not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"gain_lanes must be a power of two in 1..32, not {gain_lanes}")
        self.max_k = max_k
        self.gain_lanes = gain_lanes
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
        return 2 * k + self.CODES_OVERHEAD

    def elaborate(self, platform):
        m = Module()
        b = self.bounds
        C = MAX_CONSUMERS
        gl = self.gain_lanes
        gl_log2 = gl.bit_length() - 1
        words = -(-self.max_k // gl)

        # ---- storage ---------------------------------------------------------
        m.submodules.x_mem = x_mem = Memory(shape=X_LAYOUT, depth=self.max_k, init=[])
        x_wr, x_rd = x_mem.write_port(), x_mem.read_port(domain="sync")
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
        x_count = Signal(range(self.max_k))
        x_release = Signal()                          # the code pass issued its last read
        m.d.comb += [self.x.ready.eq(~x_full), x_wr.addr.eq(x_count), x_wr.data.eq(self.x.payload),
                     x_wr.en.eq(self.x.valid & ~x_full)]
        with m.If(self.x.valid & ~x_full):
            m.d.sync += x_count.eq(x_count + 1)
            with m.If(self.x.payload.last):
                m.d.sync += [x_full.eq(1), x_count.eq(0)]
        with m.If(x_release):
            m.d.sync += x_full.eq(0)

        # ---- gains: part by part into the gain memories -----------------------
        part = Signal(range(1 + C))
        beat = Signal(range(words + 1))
        beats_per_part = Signal(range(words + 1))
        for index, port in enumerate(gain_wr):
            m.d.comb += [port.addr.eq(beat), port.data.eq(self.gains.payload),
                         port.en.eq(self.gains.valid & self.gains.ready & (part == index))]

        # ---- the element pipeline (both passes), stalling together -------------
        advance = Signal()
        m.d.comb += advance.eq(~self.codes.valid | self.codes.ready)
        issue = Signal()                          # stage 0: read element `ptr`
        code_pass = Signal()                      # 0: max pass, 1: code pass
        ptr = Signal(range(self.max_k + 1))
        word = Signal(range(words + 1))
        lane = Signal(range(gl))
        for port in [x_rd] + gain_rd:
            m.d.comb += port.en.eq(advance)
        m.d.comb += x_rd.addr.eq(ptr)
        for port in gain_rd:
            m.d.comb += port.addr.eq(word)
        valid1, last1, lane1 = Signal(), Signal(), Signal(range(gl))
        with m.If(advance):
            m.d.sync += [valid1.eq(issue), last1.eq(ptr == k_last), lane1.eq(lane)]
            with m.If(issue):
                m.d.sync += [ptr.eq(ptr + 1), lane.eq(lane + 1)]
                if gl > 1:
                    with m.If(lane == gl - 1):
                        m.d.sync += word.eq(word + 1)
                else:
                    m.d.sync += word.eq(word + 1)

        # Stage 2: the products p = x * G_c, x * A; the norm vector's element.
        xv = x_rd.data
        valid2, last2 = Signal(), Signal()
        prod_a = Signal(signed(nx.WIDE_BITS + nx.GAIN_BITS))
        prod = [Signal(signed(nx.WIDE_BITS + nx.GAIN_BITS), name=f"prod{c}") for c in range(C)]
        norm_el = Signal(signed(nx.WIDE_BITS))
        with m.If(advance):
            m.d.sync += [valid2.eq(valid1), last2.eq(last1),
                         prod_a.eq(xv.value * gain_rd[0].data[lane1]),
                         norm_el.eq(Mux(p.source == NormSource.GATE, xv.norm, xv.value))]
            m.d.sync += [prod[c].eq(xv.value * gain_rd[1 + c].data[lane1]) for c in range(C)]

        # Stage 3: magnitudes and signs.
        valid3, last3 = Signal(), Signal()
        mag_a = Signal(MAG_BITS)
        mag = [Signal(MAG_BITS, name=f"mag{c}") for c in range(C)]
        neg3 = [Signal(name=f"neg{c}") for c in range(C)]
        mag_n = Signal(nx.WIDE_BITS)
        with m.If(advance):
            m.d.sync += [valid3.eq(valid2), last3.eq(last2),
                         mag_a.eq(Mux(prod_a < 0, -prod_a, prod_a)),
                         mag_n.eq(Mux(norm_el < 0, -norm_el, norm_el))]
            for c in range(C):
                m.d.sync += [mag[c].eq(Mux(prod[c] < 0, -prod[c], prod[c])), neg3[c].eq(prod[c] < 0)]

        # Max pass, stage 4: the peaks.
        peak_a = Signal(MAG_BITS)
        peak = [Signal(MAG_BITS, name=f"peak{c}") for c in range(C)]
        peak_n = Signal(nx.WIDE_BITS)
        max_done = Signal()
        with m.If(advance & valid3 & ~code_pass):
            m.d.sync += [peak_a.eq(Mux(mag_a > peak_a, mag_a, peak_a)),
                         peak_n.eq(Mux(mag_n > peak_n, mag_n, peak_n))]
            m.d.sync += [peak[c].eq(Mux(mag[c] > peak[c], mag[c], peak[c])) for c in range(C)]
            m.d.comb += max_done.eq(last3)

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
        sn_round, sn_right, sn_left = Signal(), Signal(range(nx.WIDE_BITS)), Signal(range(nx.SUMSQ_BITS + 1))

        def sumsq_magnitude(value, rounding, right, left):
            """``numerics.sumsq_magnitudes`` of one magnitude, from the split shift."""
            return Mux(rounding, ((value >> right)[:SUMSQ_MAG_BITS + 1] + 1) >> 1, value << left)[:SUMSQ_MAG_BITS]

        # Code pass, stage 4: normalised magnitudes.
        valid4, last4 = Signal(), Signal()
        mag_a4 = Signal(SUMSQ_MAG_BITS)
        mag_n4 = Signal(SUMSQ_MAG_BITS)
        mag4 = [Signal(nx.QUANT_NORM_BITS, name=f"mag_norm{c}") for c in range(C)]
        neg4 = [Signal(name=f"neg4_{c}") for c in range(C)]
        with m.If(advance):
            m.d.sync += [valid4.eq(valid3 & code_pass), last4.eq(last3),
                         mag_a4.eq(sumsq_magnitude(mag_a, sa_round, sa_right, sa_left)),
                         mag_n4.eq(sumsq_magnitude(mag_n, sn_round, sn_right, sn_left))]
            for c in range(C):
                m.d.sync += [mag4[c].eq(shift_magnitude(mag[c], shift_right[c], shift_left[c])),
                             neg4[c].eq(neg3[c])]

        # Stage 5: squares and the codes q = sign * ((|p'| * R + 2**39) >> 40),
        # zero for an absent consumer.
        valid5, last5 = Signal(), Signal()
        sq_a = Signal(2 * SUMSQ_MAG_BITS)
        sq_n = Signal(2 * SUMSQ_MAG_BITS)
        code5 = [Signal(signed(CODE_BITS), name=f"code{c}") for c in range(C)]
        with m.If(advance):
            m.d.sync += [valid5.eq(valid4), last5.eq(last4), sq_a.eq(mag_a4 * mag_a4), sq_n.eq(mag_n4 * mag_n4)]
            for c in range(C):
                magnitude = code_magnitude(mag4[c], recip[c])
                m.d.sync += code5[c].eq(Mux(c < p.consumers, Mux(neg4[c], -magnitude, magnitude), 0))

        # Stage 6: the sums and the codes, five to a beat.
        sumsq = Signal(b.sumsq_bits)
        sumsq_n = Signal(b.sumsq_bits)
        slot = Signal(range(nx.TRITS_PER_BYTE))
        building = Signal(CODES_LAYOUT)
        code_done = Signal()
        with m.If(self.codes.valid & self.codes.ready):
            m.d.sync += self.codes.valid.eq(0)
        with m.If(advance & valid5):
            m.d.sync += [sumsq.eq(sumsq + sq_a), sumsq_n.eq(sumsq_n + sq_n)]
            group = Signal(CODES_LAYOUT)
            m.d.comb += group.eq(building)
            with m.Switch(slot):
                for j in range(nx.TRITS_PER_BYTE):
                    with m.Case(j):
                        m.d.comb += [group.codes[c][j].eq(code5[c]) for c in range(C)]
            with m.If((slot == nx.TRITS_PER_BYTE - 1) | last5):
                m.d.sync += [self.codes.payload.codes.eq(group.codes), self.codes.payload.last.eq(last5),
                             self.codes.valid.eq(1), building.eq(0), slot.eq(0)]
                m.d.comb += code_done.eq(last5)
            with m.Else():
                m.d.sync += [building.eq(group), slot.eq(slot + 1)]

        # ---- scalars after the passes -------------------------------------------
        norm_now = [normalise_peak(m, peak[c], nx.QUANT_NORM_BITS, name=f"peak{c}") for c in range(C)]
        bitlen_a = bit_length(m, peak_a, name="bitlen_a")
        bitlen_n = bit_length(m, peak_n, name="bitlen_n")
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
        ratio = Signal(nx.QUANT_NORM_BITS + INV_BITS - nx.RATIO_DROP_BITS)
        scales = Signal(self.scales.payload.shape())
        m.d.comb += self.scales.payload.eq(scales)
        m.d.comb += [rsqrt.i.payload.eq(v), rsqrt.o.ready.eq(1)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.params.ready.eq(1)
                with m.If(self.params.valid):
                    m.d.sync += [p.eq(self.params.payload), k_last.eq(self.params.payload.k - 1),
                                 beats_per_part.eq((self.params.payload.k + gl - 1) >> gl_log2),
                                 part.eq(0), beat.eq(0)]
                    m.next = "GAINS"
            with m.State("GAINS"):
                m.d.comb += self.gains.ready.eq(1)
                with m.If(self.gains.valid):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == beats_per_part - 1):
                        m.d.sync += [beat.eq(0), part.eq(part + 1)]
                        with m.If(part == p.consumers):
                            m.next = "WAIT_X"
            with m.State("WAIT_X"):
                with m.If(x_full):
                    m.d.sync += [ptr.eq(0), word.eq(0), lane.eq(0), code_pass.eq(0),
                                 peak_a.eq(0), peak_n.eq(0)] + [peak[c].eq(0) for c in range(C)]
                    m.next = "MAX_PASS"
            with m.State("MAX_PASS"):
                m.d.comb += issue.eq(ptr <= k_last)
                with m.If(max_done):
                    m.next = "NORMALISE"
            with m.State("NORMALISE"):
                for c in range(C):
                    value, sh, right, left = norm_now[c]
                    m.d.sync += [peak_norm[c].eq(value), shift[c].eq(sh), shift_right[c].eq(right),
                                 shift_left[c].eq(left)]
                # sa = bitlen(max|x*A|) - 16, sn = bitlen(max|n|) - 16
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
                    m.d.sync += [ptr.eq(0), word.eq(0), lane.eq(0), code_pass.eq(1), sumsq.eq(0),
                                 sumsq_n.eq(0), slot.eq(0), building.eq(0)]
                    m.next = "CODE_PASS"
            with m.State("CODE_PASS"):
                m.d.comb += issue.eq(ptr <= k_last)
                m.d.comb += x_release.eq(advance & (ptr == k_last))
                with m.If(code_done):
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
                # F' = (M' * inv) >> 30
                m.d.sync += ratio.eq((Cat(peak_norm)
                                      .word_select(cons, nx.QUANT_NORM_BITS) * inv) >> nx.RATIO_DROP_BITS)
                m.next = "SCALE"
            with m.State("SCALE"):
                # scale = (Cm * F') >> 24; exp = ec + sh + frac_a - frac_g - sa + z - 61 + 16 + 30 + 24
                with m.Switch(cons):
                    for c in range(C):
                        with m.Case(c):
                            m.d.sync += [
                                scales.scale[c].eq((p.cm[c] * ratio) >> nx.SCALE_BITS),
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
