"""The BitLinear input stage: RMSNorm statistics and int8 codes of one vector for up to three consumers.

This is the "RMSNorm + activation quantizer" of a BitLinear record
(``golden_int.norm_stats`` + ``quantize_vector`` + ``numerics.output_scale``):
a max pass riding on the gain load, one reciprocal per consumer, one
code-and-square pass, one reciprocal square root per vector, and one output
scale per consumer.
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory

from .stream_fifo import check_ram_style, ram_style_attrs
from amaranth.lib.wiring import In, Out

from mmfree.models import numerics as nx
from mmfree.models.weight_image import MAX_CONSUMERS, NormSource

from .quantize import CODE_ESTIMATE_BITS, code_correct, code_estimate, shift_magnitude
from .reciprocal import RECIP_BITS, QuantReciprocal
from .rescale import RATIO_BITS, SCALE_OUT_BITS
from .fixed_point import pipeline_stages
from .rsqrt import INV_BITS, RsqrtFixed, rsqrt_z_bits
from .ternary_accumulate import CODE_BITS

__all__ = ["RmsQuantize", "ROW_LANES", "X_LAYOUT", "x_layout", "column_shape", "CODES_LAYOUT", "rms_params_layout", "scales_layout", "v_bits_for",
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

def column_shape(columns: int):
    """The shape of a column index among ``columns``: at least one bit (a zero-width signal would
    reach the Verilog as ``[-1:0]``, which Verilator refuses)."""
    return unsigned(max(1, (columns - 1).bit_length()))


#: Elements per beat of a vector stream: two consecutive rows (the BitLinear engine's outputs and
#: its inputs move two to a beat, so a record with more columns than its weights take cycles a row
#: is not bound by one element a cycle).
ROW_LANES = 2


def x_layout(columns: int = 1) -> data.StructLayout:
    """One or two consecutive elements of an input vector: x (ACT width, in the record's x_frac
    format), the pre-norm's input n (ACT, used by NormSource.GATE records), each in lane 0 and,
    when ``pair``, lane 1 (the next element); which of the ``columns`` vectors they belong to
    (always 0 for one), end of that vector (on the beat with its final element)."""
    return data.StructLayout({"value": data.ArrayLayout(signed(nx.ACT_BITS), ROW_LANES),
                              "norm": data.ArrayLayout(signed(nx.ACT_BITS), ROW_LANES),
                              "column": column_shape(columns), "pair": 1, "last": 1})


#: One beat of a single input vector (:func:`x_layout` of one column).
X_LAYOUT = x_layout(1)

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
    2. **Normalise and divide**: the peaks' bit lengths (a priority-encoder
       tree, registered), then ``sh_c``, ``M'_c`` (``numerics.normalize_shift``),
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

    **Columns.** With ``columns`` = N > 1 a record has N input vectors that
    share its params and gains (the N sequences, or the N prompt tokens, of
    one weight pass). Their elements arrive on ``x`` tagged with their column,
    each column's in order, the columns interleaved in any way; each column
    has its own ``last``. Steps 2-5 then run once per column, column 0 first:
    column 0's max pass rides on the gain load, the others' replay it from the
    gain memories (``gain_lanes`` elements per cycle) or, with ``shadow_replay``
    in a one-consumer record, run beside the previous column's code pass; a
    column's steps 4-5 run beside the next column's passes (a second FSM).
    Each column gives its ``ceil(K / 5)`` codes beats and one scales beat, in
    column order.

    The ``scales`` beat carries scale and exponent per consumer and, for
    checking, ``M'_c``, ``sh_c``, ``V``, ``sa``, ``inv``, ``z``. ``V = 0`` or
    ``M'_c = 0`` (the golden model's all-zero outputs) give ``scale = 0``.

    What P costs: per element 4 products of x (48 bits) by a 24-bit gain, 2
    squares of 25 bits, and per consumer a code product of 31 x 25 bits and
    a tie product of 8 x 31 bits (P = 4: 16 + 8 + 24 multipliers). The max
    pass needs ``gain_lanes`` products of 48 x 24 bits; a replay never runs with
    the code pass, so both share one bank of ``max(gain_lanes, 4 P)``
    multipliers, except that with ``shadow_replay`` a one-consumer record's
    code pass (2 P products) lends the other 2 P to the next column's max
    pass. x and the gains are read ``gain_lanes`` wide, so P must
    divide ``gain_lanes``; the code packer takes at most one group of five
    per cycle, so P <= 4.

    Ports
    -----
    params : stream of :func:`rms_params_layout`: one beat per vector, first.
    gains : stream of ``gain_lanes`` 24-bit mantissas per beat: A, then
        ``G_0 .. G_{n-1}``, each exactly ``ceil(K / gain_lanes)`` beats (element
        j of a part in beat ``j // gain_lanes``, lane ``j % gain_lanes``; lanes
        beyond K are ignored). Taken once x is complete.
    x : stream of :func:`x_layout`: the K elements of each column, one or two a beat (any mix), ``last`` on the
        beat with each column's final one.
        Accepted (registered on transfer, ``ready`` from registers only) whenever the previous
        record's last code pass has read its input, and not after the final ``last`` until then,
        independently of ``params``/``gains`` (the next record's input may
        arrive while the current one's matrices are streaming).
    codes : stream of :data:`CODES_LAYOUT`: ``ceil(K / 5)`` beats per column, ``last`` on each column's final one.
    scales : stream of :func:`scales_layout`: one beat per column, after its codes.
    last_column : the record's columns are 0 .. ``last_column`` (below ``columns``; 0 with one
        column); held stable from a record's first x element to its last scales beat.

    Parameters
    ----------
    max_k : int, the longest vector, 1..65535.
    gain_lanes : int, gain mantissas per ``gains`` beat, a power of two, 2..32 (x's two lanes
        go to two banks).
    elements_per_cycle : int, P, elements per cycle of the code pass: 1, 2 or 4,
        at most ``gain_lanes`` (default 1).
    columns : int, N, input vectors per record, 1..16 (default 1).
    x_ram_style : None or ``"block"``/``"ultra"``: synthesis ``ram_style`` of the x banks
        (N x max_k elements, the unit's largest memory).

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

    #: Max-pass drain (3), normalise (2: bit lengths, then shifts), divide (1 + QuantReciprocal.latency), code pipeline (7:
    #: read, products, magnitudes, shifts, code estimate, code correction and squares, packing).
    MAX_DRAIN = 3
    CODES_OVERHEAD = MAX_DRAIN + 2 + 1 + QuantReciprocal.latency + 7

    def __init__(self, *, max_k: int, gain_lanes: int, elements_per_cycle: int = 1, columns: int = 1,
                 x_ram_style: str | None = None):
        self.x_ram_style = check_ram_style(x_ram_style)
        for name, value in (("max_k", max_k), ("gain_lanes", gain_lanes),
                            ("elements_per_cycle", elements_per_cycle), ("columns", columns)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 1 <= max_k <= 65535:
            raise ValueError(f"max_k must be in 1..65535, not {max_k}")
        if gain_lanes not in (2, 4, 8, 16, 32):
            raise ValueError(f"gain_lanes must be a power of two in 2..32, not {gain_lanes}")
        if elements_per_cycle not in (1, 2, 4) or elements_per_cycle > gain_lanes:
            raise ValueError(f"elements_per_cycle must be 1, 2 or 4 and at most gain_lanes ({gain_lanes}), "
                             f"not {elements_per_cycle}")
        if not 1 <= columns <= 16:
            raise ValueError(f"columns must be in 1..16, not {columns}")
        self.max_k = max_k
        self.columns = columns
        self.gain_lanes = gain_lanes
        self.elements_per_cycle = elements_per_cycle
        self.bounds = _Bounds(max_k)
        #: With more than one column and ``gain_lanes >= 4 P``, a one-consumer record's code pass (2 P of
        #: the 4 P products) replays the next column's max pass on the other 2 P (``_shadow_replay``).
        self.shadow_replay = columns > 1 and gain_lanes >= 4 * elements_per_cycle
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
            "x": In(stream.Signature(x_layout(columns))),
            "last_column": In(column_shape(columns)),
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

    def column_cycles(self, k: int, consumers: int) -> int:
        """Cycles from a column's last codes beat to the next column's, for a K-element record with
        ``consumers`` consumers, when the column before's scalars are out by then (they take at most
        ``scalars_cycles_max``; otherwise the column's scalars wait for them). One cycle hands the
        column to the scalars; then the replay ((1 + consumers) ceil(K / gain_lanes) beats), then as
        ``codes_cycles(k)`` after the last gains beat. With ``shadow_replay`` a one-consumer record's
        next column has its maxima when the code pass ends: no replay, no drain."""
        if self.shadow_replay and consumers == 1:
            return self.codes_cycles(k) - self.MAX_DRAIN
        return (1 + consumers) * -(-k // self.gain_lanes) + self.codes_cycles(k)

    @property
    def scalars_cycles_max(self) -> int:
        """A bound on the cycles from a column's last codes beat to its scales beat (``scales``
        ready): eps (the longest serial shift), V, ``RsqrtFixed``, the output scales. A replay of at
        least as many beats hides them (``column_cycles``)."""
        count = max(-self.bounds.e[0], self.bounds.e[1])
        shifts = max(n // 32 + n % 32 // 8 + n % 8 for n in range(count + 1))
        return shifts + RsqrtFixed(v_bits=self.v_bits).latency + 2 * MAX_CONSUMERS + 8

    @property
    def first_codes_cycles(self) -> int:
        return self.CODES_OVERHEAD + -(-nx.TRITS_PER_BYTE // self.elements_per_cycle)

    def elaborate(self, platform):
        m = Module()
        mem = self._storage(m)
        v = self._vector_registers()
        advance = Signal()                            # the code pipeline moves (stall-together)
        m.d.comb += advance.eq(~self.codes.valid | self.codes.ready)
        x_peaks = self._stage_x_load(m, mem, v)
        products = [Signal(signed(nx.ACT_BITS + nx.GAIN_BITS), name=f"product{i}")
                    for i in range(max(self.gain_lanes, (1 + MAX_CONSUMERS) * self.elements_per_cycle))]
        max_pass = self._stage_max_pass(m, mem, v, products)
        stage = pipeline_stages(m, advance)
        read = self._stage_read(m, mem, v, advance)
        self._product_bank(m, mem, v, read, max_pass, products, advance)
        prods = self._stage_products(m, stage, v, read, products)
        if self.shadow_replay:
            self._shadow_replay(m, v, prods, max_pass)
        mags = self._stage_magnitudes(stage, prods)
        shifted = self._stage_shifts(stage, v, mags)
        estimates = self._stage_code_estimate(stage, v, shifted)
        codes = self._stage_code_correct(stage, v, estimates)
        code_done = self._stage_pack(m, v, codes, advance)
        peak_shifts = self._peak_shifts(m, mem, v, x_peaks, max_pass)
        scalars = self._scalar_datapath(m, mem)
        # Two FSMs: the passes of one column overlap the scalars (eps .. scales) of the column before.
        with m.FSM(name="passes"):
            self._fsm_load(m, mem, v, peak_shifts, max_pass, code_done, advance)
        with m.FSM(name="scalars"):
            self._fsm_scales(m, mem, v, scalars)
        return m

    # -- storage and per-vector registers --------------------------------------
    def _storage(self, m):
        """The memories and the sequential arithmetic units.

        x lives in ``gain_lanes`` banks (element j of column c in bank ``j % gain_lanes``,
        word ``c * words + j // gain_lanes``), so a gain beat meets its x lanes in one read;
        gain part 0 is A, part ``1 + c`` is ``G_c``. All reads take one cycle.
        """
        gl, C = self.gain_lanes, MAX_CONSUMERS
        words = -(-self.max_k // gl)
        x_elem = data.StructLayout({"value": signed(nx.ACT_BITS), "norm": signed(nx.ACT_BITS)})
        mem = SimpleNamespace(x_wr=[], x_rd=[], x_shadow=[], gain_wr=[], gain_rd=[], recips=[], words=words,
                              gain_word=data.ArrayLayout(signed(nx.GAIN_BITS), gl))
        for lane in range(gl):
            bank = Memory(shape=x_elem, depth=words * self.columns, init=[], attrs=ram_style_attrs(self.x_ram_style))
            m.submodules[f"x{lane}"] = bank
            mem.x_wr.append(bank.write_port())
            mem.x_rd.append(bank.read_port(domain="sync"))
            if self.shadow_replay:
                # Read only while x is complete, so it takes the write port's address (x_load):
                # the write and this read become one read/write port of a true dual-port RAM.
                mem.x_shadow.append(bank.read_port(domain="sync"))
        for part in range(1 + C):
            gains = Memory(shape=mem.gain_word, depth=words, init=[])
            m.submodules[f"gain{part}"] = gains
            mem.gain_wr.append(gains.write_port())
            mem.gain_rd.append(gains.read_port(domain="sync"))
        m.submodules.rsqrt = mem.rsqrt = RsqrtFixed(v_bits=self.v_bits)
        for c in range(C):
            recip = QuantReciprocal()
            m.submodules[f"reciprocal{c}"] = recip
            mem.recips.append(recip)
        return mem

    def _vector_registers(self):
        """The current vector's scalars and the handshakes between the passes and the FSM."""
        C, b = MAX_CONSUMERS, self.bounds
        words = -(-self.max_k // self.gain_lanes)
        return SimpleNamespace(
            p=Signal(rms_params_layout(self.max_k)),          # the current vector's scalars
            k_last=Signal(range(self.max_k)),                 # K - 1
            x_full=Signal(), x_release=Signal(),              # x complete; the last code pass issued its last read
            col=Signal(column_shape(self.columns)), replay=Signal(),  # the column in the passes; its max pass replays
            col_base=Signal(range(words * self.columns + 1)),  # col * words: its x words
            part=Signal(range(1 + C)), beat=Signal(range(words + 1)), beats_per_part=Signal(range(words + 1)),
            gain_take=Signal(),
            issue=Signal(), ptr=Signal(range(self.max_k + self.elements_per_cycle + 1)), code_pass=Signal(),
            scalars_start=Signal(), scalars_idle=Signal(),     # the column's scalars begin; none are running
            # the code pass replays the next column's max pass beside it; that column's x word it reads
            shadow_on=Signal(), shadow_addr=Signal(range((self.columns + 1) * words + 1)),
            # after the max pass: M', sh and its split right/left shifts, R per consumer
            peak_norm=[Signal(nx.QUANT_NORM_BITS, name=f"peak_norm{c}") for c in range(C)],
            shift=[Signal(signed(8), name=f"shift{c}") for c in range(C)],
            shift_right=[Signal(range(MAG_BITS + 1), name=f"shift_right{c}") for c in range(C)],
            shift_left=[Signal(range(nx.QUANT_NORM_BITS + 1), name=f"shift_left{c}") for c in range(C)],
            recip=[Signal(RECIP_BITS, name=f"recip{c}") for c in range(C)],
            # sa, sn; rshift_round(t, s) = ((t >> (s - 1)) + 1) >> 1 for s > 0, t << -s otherwise
            sa=Signal(signed(8)), sn=Signal(signed(8)),
            sa_round=Signal(), sa_right=Signal(range(MAG_BITS)), sa_left=Signal(range(nx.SUMSQ_BITS + 1)),
            sn_round=Signal(), sn_right=Signal(range(nx.ACT_BITS)), sn_left=Signal(range(nx.SUMSQ_BITS + 1)),
            # the code pass's sums and packer state
            sumsq=Signal(b.sumsq_bits), sumsq_n=Signal(b.sumsq_bits),
            held=Signal(range(nx.TRITS_PER_BYTE)), flush=Signal(),
        )

    # -- x load and max pass -----------------------------------------------------
    def _stage_x_load(self, m, mem, v):
        """Writes x into its banks, one or two elements per cycle whenever ``x_full`` is low.

        Contract: ``x`` (ACT values and norms, column) in, registered as it transfers
        (``ready`` depends on registers only; nothing is taken after the
        record's final ``last`` until ``x_release``); the next cycle writes the banks (element
        j to bank ``j % gain_lanes``: a pair's two elements to two banks) and registers the
        beat's magnitudes, the one after folds them into the column's ``max|x|``,
        ``max|norm|`` (ACT magnitudes). ``x_full`` rises the cycle after the
        final ``last`` transfer (its elements written) and falls on ``x_release``.
        Returns ``(peak_x, peak_norm_in)``, arrays indexed by column.
        """
        gl, N = self.gain_lanes, self.columns
        gl_log2 = gl.bit_length() - 1
        # Per column: elements taken so far, max|x| and max|norm| (the pre-norm's max|n|).
        count = Array(Signal(range(mem.words * gl + 1), name=f"x_count{c}") for c in range(N))
        peak_x = Array(Signal(nx.ACT_BITS, name=f"peak_x{c}") for c in range(N))
        peak_norm_in = Array(Signal(nx.ACT_BITS, name=f"peak_norm_in{c}") for c in range(N))
        complete = Signal(N)                          # columns whose last element has been taken
        # (1) the beat as it transferred
        taken = Signal(x_layout(N))
        taken_valid = Signal()
        taken_count = Signal.like(count[0])
        m.d.comb += taken_count.eq(count[taken.column])
        used = Signal(N)                              # columns 0 .. last_column
        m.d.comb += used.eq((Const(2, N + 1) << self.last_column) - 1)
        final = ((complete | (Const(1, N) << taken.column)) & used) == used   # the record's last column ends
        m.d.comb += self.x.ready.eq(~v.x_full & ~(taken_valid & taken.last & final))
        m.d.sync += taken_valid.eq(self.x.valid & self.x.ready)
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += taken.eq(self.x.payload)
        # (2) into their banks; their magnitudes
        second = Signal.like(taken_count)
        m.d.comb += second.eq(taken_count + 1)
        for lane, port in enumerate(mem.x_wr):
            first_here = taken_count[:gl_log2] == lane
            element = Mux(first_here, 0, 1)
            addr = taken.column * mem.words + (Mux(first_here, taken_count, second) >> gl_log2)
            write = taken_valid & (first_here | (taken.pair & (second[:gl_log2] == lane)))
            if mem.x_shadow:      # x complete: no writes, the shadow replay reads at this address
                addr = Mux(v.x_full, v.shadow_addr, addr)
                m.d.comb += mem.x_shadow[lane].addr.eq(addr)
                if self.x_ram_style == "ultra":
                    # An UltraRAM port reads or writes in a cycle: with this enable the two share one.
                    m.d.comb += mem.x_shadow[lane].en.eq(~write)
            m.d.comb += [port.addr.eq(addr),
                         port.data.value.eq(taken.value[element]), port.data.norm.eq(taken.norm[element]),
                         port.en.eq(write)]
        mag_valid, mag_first = Signal(), Signal()
        mag_col = Signal.like(taken.column)
        mag_x = Signal(nx.ACT_BITS)
        mag_norm_in = Signal(nx.ACT_BITS)
        m.d.sync += mag_valid.eq(taken_valid)
        with m.If(taken_valid):
            m.d.sync += [mag_first.eq(taken_count == 0), mag_col.eq(taken.column),
                         count[taken.column].eq(taken_count + 1 + taken.pair),
                         mag_x.eq(self._beat_peak(taken.value, taken.pair)),
                         mag_norm_in.eq(self._beat_peak(taken.norm, taken.pair))]
            with m.If(taken.last):
                m.d.sync += [count[taken.column].eq(0), complete.eq(complete | (Const(1, N) << taken.column))]
                with m.If(final):
                    m.d.sync += [v.x_full.eq(1), complete.eq(0)]
        # (3) the maxima (read in BITLEN, long after x_full)
        with m.If(mag_valid):
            px, pn = peak_x[mag_col], peak_norm_in[mag_col]
            m.d.sync += [px.eq(Mux(mag_first | (mag_x > px), mag_x, px)),
                         pn.eq(Mux(mag_first | (mag_norm_in > pn), mag_norm_in, pn))]
        with m.If(v.x_release):
            m.d.sync += v.x_full.eq(0)
        return peak_x, peak_norm_in

    @staticmethod
    def _beat_peak(values, pair):
        """The larger magnitude of a beat's elements (lane 1 only when ``pair``)."""
        mags = [Mux(value < 0, -value, value)[:nx.ACT_BITS] for value in values]
        return Mux(pair & (mags[1] > mags[0]), mags[1], mags[0])

    def _stage_max_pass(self, m, mem, v, products):
        """Gains into the gain memories, part by part, and the max pass riding on them.

        Contract: one ``gain_lanes``-wide beat per cycle on ``gain_take`` (from
        ``gains``, or with ``replay`` from the gain memories, read in the same
        cycle); the beat's x lanes (column ``col``) are read in the same cycle (1), multiplied (2, the
        shared product bank), their magnitudes taken (3, lanes beyond K as
        zero) and the comparator tree's maximum folded into ``max|x * A|`` or
        ``M_c`` (unsigned ``MAG_BITS``). ``max_done`` pulses 3 cycles after the
        last beat's transfer, when the maxima are final. Never stalls. A shadow
        replay (``shadow_valid``: the code pass's product stage, one consumer) folds
        its products 2 P .. 3 P - 1 into ``max|x * A|`` and 3 P .. 4 P - 1 into
        ``M_0``, lanes ``shadow_mask``, two cycles later.
        """
        C, gl = MAX_CONSUMERS, self.gain_lanes
        gl_log2 = gl.bit_length() - 1
        for index, port in enumerate(mem.gain_wr):
            m.d.comb += [port.addr.eq(v.beat), port.data.eq(self.gains.payload),
                         port.en.eq(v.gain_take & ~v.replay & (v.part == index))]
        peak_a = Signal(MAG_BITS)
        peak = [Signal(MAG_BITS, name=f"peak{c}") for c in range(C)]
        # (1) the beat, its x lanes being read
        beat_valid, beat_last, beat_part, beat_replay = Signal(), Signal(), Signal(range(1 + C)), Signal()
        beat_gain = Signal(mem.gain_word)
        beat_base = Signal(range(mem.words * gl + 1))
        m.d.sync += beat_valid.eq(v.gain_take)
        with m.If(v.gain_take):
            m.d.sync += [beat_gain.eq(self.gains.payload), beat_part.eq(v.part), beat_base.eq(v.beat << gl_log2),
                         beat_replay.eq(v.replay),
                         beat_last.eq((v.part == v.p.consumers) & (v.beat == v.beats_per_part - 1))]
        # A replayed beat's gains come from the gain memories, read beside its x lanes.
        gain = Signal(mem.gain_word)
        m.d.comb += gain.eq(beat_gain)
        with m.If(beat_replay):
            with m.Switch(beat_part):
                for index, port in enumerate(mem.gain_rd):
                    with m.Case(index):
                        m.d.comb += gain.eq(port.data)
        # (2) x * gain of each lane, in the product bank
        prod_valid, prod_last, prod_part = Signal(), Signal(), Signal(range(1 + C))
        lane_prod = products[:gl]
        lane_mask = Signal(gl)
        m.d.sync += [prod_valid.eq(beat_valid), prod_last.eq(beat_last), prod_part.eq(beat_part)]
        m.d.sync += [lane_mask[i].eq(beat_base + i <= v.k_last) for i in range(gl)]
        # (3) magnitudes, then the maximum; a shadow replay's products (``shadow_valid``, its lanes
        # ``shadow_mask``) take the same path
        shadow_valid, shadow_mask, shadow_mag_valid = Signal(), Signal(gl), Signal()
        mag_valid, mag_last, mag_part = Signal(), Signal(), Signal(range(1 + C))
        lane_mag = [Signal(MAG_BITS, name=f"lane_mag{i}") for i in range(gl)]
        m.d.sync += [mag_valid.eq(prod_valid), mag_last.eq(prod_last), mag_part.eq(prod_part),
                     shadow_mag_valid.eq(shadow_valid)]
        for i in range(gl):
            mask = Mux(shadow_valid, shadow_mask[i], lane_mask[i])
            m.d.sync += lane_mag[i].eq(Mux(mask, Mux(lane_prod[i] < 0, -lane_prod[i], lane_prod[i]), 0))
        levels = [lane_mag]
        while len(levels[-1]) > 1:   # a tree of comparators over the beat's lanes
            below = levels[-1]
            levels.append([Mux(a > b_, a, b_) for a, b_ in zip(below[0::2], below[1::2])] + below[len(below) & ~1:])
        beat_max = levels[-1][0]
        candidate_a = candidate_g = beat_max
        if self.shadow_replay:
            # the nodes over lanes 2 P .. 3 P - 1 (x * A) and 3 P .. 4 P - 1 (x * G_0)
            group = levels[self.elements_per_cycle.bit_length() - 1]
            candidate_a = Mux(shadow_mag_valid, group[2], beat_max)
            candidate_g = Mux(shadow_mag_valid, group[3], beat_max)
        max_done = Signal()
        with m.If(mag_valid):
            with m.Switch(mag_part):
                with m.Case(0):
                    m.d.sync += peak_a.eq(Mux(candidate_a > peak_a, candidate_a, peak_a))
                for c in range(C):
                    with m.Case(1 + c):
                        cand = candidate_g if c == 0 else beat_max
                        m.d.sync += peak[c].eq(Mux(cand > peak[c], cand, peak[c]))
            m.d.comb += max_done.eq(mag_last)
        with m.If(shadow_mag_valid):
            # A stalled code pass folds the same products again: a maximum does not mind.
            m.d.sync += [peak_a.eq(Mux(candidate_a > peak_a, candidate_a, peak_a)),
                         peak[0].eq(Mux(candidate_g > peak[0], candidate_g, peak[0]))]
        return SimpleNamespace(peak_a=peak_a, peak=peak, done=max_done, gain=gain,
                               shadow_valid=shadow_valid, shadow_mask=shadow_mask)

    # -- the code pass: P elements per cycle, stalling together ------------------
    def _stage_read(self, m, mem, v, advance):
        """Issue: P elements per cycle from ``ptr`` while ``issue``; x and the gains are read.

        Contract: latency 1 (the memory read); returns the valid/last flags,
        the first element's index and, per lane j < P, x, norm, A and each
        ``G_c`` (ACT, ACT, 24-bit, 24-bit) selected from the words read.
        """
        C, gl, P = MAX_CONSUMERS, self.gain_lanes, self.elements_per_cycle
        gl_log2, P_log2 = gl.bit_length() - 1, P.bit_length() - 1
        word = Mux(v.code_pass, v.ptr >> gl_log2, v.beat)
        for port in mem.x_rd:
            m.d.comb += [port.addr.eq(word + v.col_base), port.en.eq(Mux(v.code_pass, advance, v.gain_take))]
        for port in mem.gain_rd:
            m.d.comb += [port.addr.eq(word), port.en.eq(Mux(v.code_pass, advance, v.gain_take))]
        stage = pipeline_stages(m, advance)
        chunk = stage("read_chunk", range(max(gl // P, 2)), (v.ptr & (gl - 1)) >> P_log2)   # which P lanes
        read = SimpleNamespace(valid=stage("read_valid", 1, v.issue), last=stage("read_last", 1, v.ptr + P > v.k_last),
                               base=stage("read_base", range(self.max_k + P + 1), v.ptr))
        with m.If(advance & v.issue):
            m.d.sync += v.ptr.eq(v.ptr + P)

        def lanes_of(values, name):
            """The P lanes ``chunk * P + j`` of a list of gl per-lane values."""
            out = []
            for j in range(P):
                sel = Signal.like(values[j], name=f"{name}{j}")
                with m.Switch(chunk):
                    for ch in range(gl // P):
                        with m.Case(ch):
                            m.d.comb += sel.eq(values[ch * P + j])
                out.append(sel)
            return out

        read.x = lanes_of([port.data.value for port in mem.x_rd], "x_lane")
        if mem.x_shadow:
            # The next column's word beside this one's: the port reads every cycle, so while the read
            # stage stalls it reads that stage's word again.
            word_now = Mux(advance, v.ptr, read.base) >> gl_log2
            m.d.comb += v.shadow_addr.eq(v.col_base + mem.words + word_now)
            read.x_next = lanes_of([port.data.value for port in mem.x_shadow], "x_next_lane")
        read.norm = lanes_of([port.data.norm for port in mem.x_rd], "norm_lane")
        read.a = lanes_of([mem.gain_rd[0].data[i] for i in range(gl)], "a_lane")
        read.g = [lanes_of([mem.gain_rd[1 + c].data[i] for i in range(gl)], f"g{c}_lane") for c in range(C)]
        return read

    def _product_bank(self, m, mem, v, read, max_pass, products, advance):
        """The 48 x 24-bit multipliers of both passes, registered (latency 1).

        The max pass (during the gain load) and the code pass never run at
        once, so one bank serves both: lane i of a gains beat in the max pass
        (registered every cycle); x * A (product j) and x * G_c (product
        ``P (1 + c) + j``) in the code pass (registered when it advances). In a
        shadow replay (one consumer) products ``2 P + j`` and ``3 P + j`` take the
        next column's x by the same lanes of A and G_0.
        """
        C, gl, P = MAX_CONSUMERS, self.gain_lanes, self.elements_per_cycle
        for i, product in enumerate(products):
            x_op = Signal(signed(nx.ACT_BITS), name=f"mul_x{i}")
            g_op = Signal(signed(nx.GAIN_BITS), name=f"mul_g{i}")
            with m.If(v.code_pass):
                if i < (1 + C) * P:
                    gain = read.a[i] if i < P else read.g[i // P - 1][i % P]
                    x_lane = read.x[i % P]
                    if self.shadow_replay and 2 * P <= i < 4 * P:
                        # the shadow replay: the next column's x lanes by the same A and G_0 lanes
                        x_lane = Mux(v.shadow_on, read.x_next[i % P], x_lane)
                        gain = Mux(v.shadow_on, (read.a if i < 3 * P else read.g[0])[i % P], gain)
                    m.d.comb += [x_op.eq(x_lane), g_op.eq(gain)]
            with m.Else():
                if i < gl:
                    m.d.comb += [x_op.eq(mem.x_rd[i].data.value), g_op.eq(max_pass.gain[i])]
            with m.If(~v.code_pass | advance):
                m.d.sync += product.eq(x_op * g_op)

    def _stage_products(self, m, stage, v, read, products):
        """The products ``p = x * G_c``, ``x * A`` (signed 72, from the bank), the norm vector's
        element n (ACT: the ``norm`` field for ``GATE``, else x) and the lane mask (j within K).
        Latency 1."""
        C, P = MAX_CONSUMERS, self.elements_per_cycle
        out = SimpleNamespace(valid=stage("product_valid", 1, read.valid), last=stage("product_last", 1, read.last),
                              a=products[:P], g=[products[P * (1 + c): P * (2 + c)] for c in range(C)])
        out.mask = stage("product_mask", P, Cat(*[read.base + j <= v.k_last for j in range(P)]))
        out.norm = [stage(f"norm_element{j}", signed(nx.ACT_BITS),
                          Mux(v.p.source == NormSource.GATE, read.norm[j], read.x[j])) for j in range(P)]
        return out

    def _shadow_replay(self, m, v, prods, max_pass):
        """While a one-consumer record's code pass runs on products 0 .. 2 P - 1, products
        2 P .. 4 P - 1 hold the next column's x by the same lanes of A and G_0 (``_product_bank``):
        its max pass, folded as the max-pass stage folds a gains beat, with the code pass's lane mask.
        By the code pass's end the next column's maxima are final: it needs no replay."""
        P = self.elements_per_cycle
        m.d.comb += max_pass.shadow_valid.eq(v.shadow_on & prods.valid)
        for j in range(P):
            m.d.comb += [max_pass.shadow_mask[2 * P + j].eq(prods.mask[j]),
                         max_pass.shadow_mask[3 * P + j].eq(prods.mask[j])]

    def _stage_magnitudes(self, stage, prods):
        """Magnitudes and signs (unsigned ``MAG_BITS``; |x * A| and |n| zero beyond K). Latency 1."""
        C, P = MAX_CONSUMERS, self.elements_per_cycle

        def magnitude(value, mask=1):
            return Mux(mask, Mux(value < 0, -value, value), 0)

        return SimpleNamespace(
            valid=stage("magnitude_valid", 1, prods.valid), last=stage("magnitude_last", 1, prods.last),
            mask=stage("magnitude_mask", P, prods.mask),
            a=[stage(f"mag_a{j}", MAG_BITS, magnitude(prods.a[j], prods.mask[j])) for j in range(P)],
            n=[stage(f"mag_n{j}", nx.ACT_BITS, magnitude(prods.norm[j], prods.mask[j])) for j in range(P)],
            g=[[stage(f"mag{c}_{j}", MAG_BITS, magnitude(prods.g[c][j])) for j in range(P)] for c in range(C)],
            neg=[[stage(f"neg{c}_{j}", 1, prods.g[c][j] < 0) for j in range(P)] for c in range(C)])

    def _stage_shifts(self, stage, v, mags):
        """The normalised magnitudes: ``|p| >> sh_c`` (``QUANT_NORM_BITS``) and the 24-bit
        ``rshift_round(|x * A|, sa)``, ``rshift_round(|n|, sn)`` (``SUMSQ_MAG_BITS``). Latency 1."""
        C, P = MAX_CONSUMERS, self.elements_per_cycle
        return SimpleNamespace(
            valid=stage("shifted_valid", 1, mags.valid), last=stage("shifted_last", 1, mags.last),
            mask=stage("shifted_mask", P, mags.mask),
            a=[stage(f"sumsq_mag_a{j}", SUMSQ_MAG_BITS,
                     _sumsq_magnitude(mags.a[j], v.sa_round, v.sa_right, v.sa_left)) for j in range(P)],
            n=[stage(f"sumsq_mag_n{j}", SUMSQ_MAG_BITS,
                     _sumsq_magnitude(mags.n[j], v.sn_round, v.sn_right, v.sn_left)) for j in range(P)],
            g=[[stage(f"mag_norm{c}_{j}", nx.QUANT_NORM_BITS,
                      shift_magnitude(mags.g[c][j], v.shift_right[c], v.shift_left[c])) for j in range(P)]
               for c in range(C)],
            neg=[[stage(f"shifted_neg{c}_{j}", 1, mags.neg[c][j]) for j in range(P)] for c in range(C)])

    def _stage_code_estimate(self, stage, v, shifted):
        """The code estimates ``q0 = (|p'| * R + 2**47) >> 48`` (``CODE_ESTIMATE_BITS``), the lanes
        within K counted; the other fields pass through. Latency 1."""
        C, P = MAX_CONSUMERS, self.elements_per_cycle
        return SimpleNamespace(
            valid=stage("estimate_valid", 1, shifted.valid), last=stage("estimate_last", 1, shifted.last),
            count=stage("estimate_count", range(P + 1), sum(shifted.mask[j] for j in range(P))),
            a=[stage(f"estimate_sumsq_a{j}", SUMSQ_MAG_BITS, shifted.a[j]) for j in range(P)],
            n=[stage(f"estimate_sumsq_n{j}", SUMSQ_MAG_BITS, shifted.n[j]) for j in range(P)],
            q0=[[stage(f"q0_{c}_{j}", CODE_ESTIMATE_BITS, code_estimate(shifted.g[c][j], v.recip[c]))
                 for j in range(P)] for c in range(C)],
            g=[[stage(f"estimate_mag{c}_{j}", nx.QUANT_NORM_BITS, shifted.g[c][j]) for j in range(P)]
               for c in range(C)],
            neg=[[stage(f"estimate_neg{c}_{j}", 1, shifted.neg[c][j]) for j in range(P)] for c in range(C)])

    def _stage_code_correct(self, stage, v, est):
        """The squares (``2 SUMSQ_MAG_BITS``) and the exact int8 codes
        ``q = sign * (q0 + [(2 q0 + 1) M' <= 254 |p'|])`` (a tie rounds away from zero),
        zero for an absent consumer. Latency 1."""
        C, P = MAX_CONSUMERS, self.elements_per_cycle

        def code(c, j):
            magnitude = code_correct(est.q0[c][j], est.g[c][j], v.peak_norm[c])
            return Mux(c < v.p.consumers, Mux(est.neg[c][j], -magnitude, magnitude), 0)

        return SimpleNamespace(
            valid=stage("code_valid", 1, est.valid), last=stage("code_last", 1, est.last),
            count=stage("code_count", range(P + 1), est.count),
            sq_a=[stage(f"square_a{j}", 2 * SUMSQ_MAG_BITS, est.a[j] * est.a[j]) for j in range(P)],
            sq_n=[stage(f"square_n{j}", 2 * SUMSQ_MAG_BITS, est.n[j] * est.n[j]) for j in range(P)],
            codes=[[stage(f"code{c}_{j}", signed(CODE_BITS), code(c, j)) for j in range(P)] for c in range(C)])

    def _stage_pack(self, m, v, codes, advance):
        """The sums ``s``, ``S_n`` and the codes packed five to a ``codes`` beat.

        Contract: up to P codes per cycle in; a :data:`CODES_LAYOUT` beat out
        (registered, latency 1) whenever five have gathered, the final group
        padded with zeros (one cycle later when the last issue completes two
        groups). Codes wait in a buffer of at most 4 + P. Returns
        ``code_done``, high in the cycle the final beat is loaded.
        """
        C, P, G = MAX_CONSUMERS, self.elements_per_cycle, nx.TRITS_PER_BYTE
        slots = G + P - 1
        buf = [[Signal(signed(CODE_BITS), name=f"buf{c}_{s_}") for s_ in range(slots)] for c in range(C)]
        held, flush = v.held, v.flush                 # codes waiting in buf; a final partial group to go
        code_done = Signal()
        with m.If(self.codes.valid & self.codes.ready):
            m.d.sync += self.codes.valid.eq(0)
        total = Signal(range(slots + 1))
        m.d.comb += total.eq(held + codes.count)
        merged = [[Signal(signed(CODE_BITS), name=f"merged{c}_{s_}") for s_ in range(slots)] for c in range(C)]
        for c in range(C):
            for s_ in range(slots):
                # slot s: a waiting code, the new lane s - held, or zero (padding of the last group)
                value = Mux(s_ < held, buf[c][s_], 0)
                for j in range(P):
                    value = Mux((s_ >= held) & (s_ - held == j) & (j < codes.count), codes.codes[c][j], value)
                m.d.comb += merged[c][s_].eq(value)
        with m.If(advance & codes.valid):
            m.d.sync += [v.sumsq.eq(v.sumsq + sum(codes.sq_a[1:], codes.sq_a[0])),
                         v.sumsq_n.eq(v.sumsq_n + sum(codes.sq_n[1:], codes.sq_n[0]))]
            with m.If(total >= G):
                m.d.sync += [self.codes.valid.eq(1), self.codes.payload.last.eq(codes.last & (total == G)),
                             held.eq(total - G)]
                for c in range(C):
                    m.d.sync += [self.codes.payload.codes[c][j].eq(merged[c][j]) for j in range(G)]
                    m.d.sync += [buf[c][s_].eq(merged[c][s_ + G]) for s_ in range(slots - G)]
                with m.If(codes.last):
                    with m.If(total == G):
                        m.d.comb += code_done.eq(1)
                    with m.Else():
                        m.d.sync += flush.eq(1)
            with m.Else():
                m.d.sync += held.eq(total)
                m.d.sync += [buf[c][s_].eq(merged[c][s_]) for c in range(C) for s_ in range(slots)]
                with m.If(codes.last):
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
        return code_done

    # -- the control: load, passes, then the scalars ----------------------------
    def _peak_shifts(self, m, mem, v, x_peaks, max_pass):
        """The peaks' highest set bits for the BITLEN state (priority-encoder trees, registered
        there) and, from those registers, each ``M_c`` normalised (``numerics.normalize_shift``:
        M', sh and its split shifts) and the bit lengths of ``max|x * A|`` and ``max|n|`` for the
        NORMALISE state; ``M'_c`` to the reciprocals."""
        C, bits = MAX_CONSUMERS, nx.QUANT_NORM_BITS
        peak_x, peak_norm_in = x_peaks
        peaks = [max_pass.peak_a, Mux(v.p.source == NormSource.GATE, peak_norm_in[v.col], peak_x[v.col]),
                 *max_pass.peak]
        found = [_msb_index(value) for value in peaks]
        # registered in BITLEN: (value != 0, index of the highest set bit)
        msb = [(Signal(name=f"nonzero{i}"), Signal(len(index), name=f"msb{i}")) for i, (_nz, index) in
               enumerate(found)]
        bitlen = []
        for i, (nonzero, index) in enumerate(msb):
            length = Signal(range(len(peaks[i]) + 1), name=f"bitlen{i}")
            m.d.comb += length.eq(Mux(nonzero, index + 1, 0))
            bitlen.append(length)
        norm_now = []
        for c in range(C):
            length, peak, index = bitlen[2 + c], max_pass.peak[c], msb[2 + c][1]
            # peak << (bits - bitlen) or peak >> (bitlen - bits): one right shift of peak << (bits - 1)
            value = Signal(bits, name=f"peak{c}_norm")
            shift = Signal(signed(8), name=f"peak{c}_shift")
            right = Signal(range(MAG_BITS + 1), name=f"peak{c}_shift_right")
            left = Signal(range(bits + 1), name=f"peak{c}_shift_left")
            m.d.comb += [value.eq((peak << (bits - 1)) >> index), shift.eq(Mux(length == 0, 0, length - bits))]
            with m.If(length >= bits):
                m.d.comb += right.eq(length - bits)
            with m.Elif(length != 0):
                m.d.comb += left.eq(bits - length)
            norm_now.append((value, shift, right, left))
        for recip_unit, value in zip(mem.recips, v.peak_norm):
            m.d.comb += [recip_unit.i.payload.eq(value), recip_unit.o.ready.eq(1)]
        return SimpleNamespace(found=found, msb=msb, norm_now=norm_now, bitlen_a=bitlen[0], bitlen_n=bitlen[1])

    def _fsm_load(self, m, mem, v, peak_shifts, max_pass, code_done, advance):
        """The first FSM, IDLE to CODE_PASS: params, gains with the max pass (or its replay), the
        normalisation of the peaks (2 cycles: bit lengths, then shifts), the reciprocals
        (1 + ``QuantReciprocal.latency``), the code pass; then HANDOFF (the column's scalars start
        once the previous column's are out) and the next column's replay (after a shadow replay
        its normalisation), or FINISH until the last column's scalars are out."""
        C, gl = MAX_CONSUMERS, self.gain_lanes
        gl_log2 = gl.bit_length() - 1
        norm_now, bitlen_a, bitlen_n = peak_shifts.norm_now, peak_shifts.bitlen_a, peak_shifts.bitlen_n
        with m.State("IDLE"):
            m.d.comb += self.params.ready.eq(1)
            with m.If(self.params.valid):
                m.d.sync += [v.p.eq(self.params.payload), v.k_last.eq(self.params.payload.k - 1),
                             v.beats_per_part.eq((self.params.payload.k + gl - 1) >> gl_log2),
                             v.part.eq(0), v.beat.eq(0), max_pass.peak_a.eq(0), v.col.eq(0), v.col_base.eq(0)]
                m.d.sync += [max_pass.peak[c].eq(0) for c in range(C)]
                m.next = "GAINS"
        with m.State("GAINS"):
            # Gains only with x complete: each beat meets its x lanes for the max.
            m.d.comb += [self.gains.ready.eq(v.x_full), v.gain_take.eq(self.gains.valid & v.x_full)]
            with m.If(v.gain_take):
                m.d.sync += v.beat.eq(v.beat + 1)
                with m.If(v.beat == v.beats_per_part - 1):
                    m.d.sync += [v.beat.eq(0), v.part.eq(v.part + 1)]
                    with m.If(v.part == v.p.consumers):
                        m.next = "MAX_DRAIN"
        with m.State("REPLAY"):
            # A further column's max pass, from the gain memories: one beat per cycle, never stalled.
            m.d.comb += [v.replay.eq(1), v.gain_take.eq(1)]
            m.d.sync += v.beat.eq(v.beat + 1)
            with m.If(v.beat == v.beats_per_part - 1):
                m.d.sync += [v.beat.eq(0), v.part.eq(v.part + 1)]
                with m.If(v.part == v.p.consumers):
                    m.next = "MAX_DRAIN"
        with m.State("MAX_DRAIN"):
            with m.If(max_pass.done):
                m.next = "BITLEN"
        with m.State("BITLEN"):
            for (nonzero, index), (nz_now, index_now) in zip(peak_shifts.msb, peak_shifts.found):
                m.d.sync += [nonzero.eq(nz_now), index.eq(index_now)]
            m.next = "NORMALISE"
        with m.State("NORMALISE"):
            for c in range(C):
                value, sh, right, left = norm_now[c]
                m.d.sync += [v.peak_norm[c].eq(value), v.shift[c].eq(sh), v.shift_right[c].eq(right),
                             v.shift_left[c].eq(left)]
            # sa = bitlen(max|x*A|) - 24, sn = bitlen(max|n|) - 24
            m.d.sync += [v.sa.eq(bitlen_a - nx.SUMSQ_BITS), v.sn.eq(bitlen_n - nx.SUMSQ_BITS),
                         v.sa_round.eq(bitlen_a > nx.SUMSQ_BITS), v.sa_right.eq(bitlen_a - nx.SUMSQ_BITS - 1),
                         v.sa_left.eq(nx.SUMSQ_BITS - bitlen_a),
                         v.sn_round.eq(bitlen_n > nx.SUMSQ_BITS), v.sn_right.eq(bitlen_n - nx.SUMSQ_BITS - 1),
                         v.sn_left.eq(nx.SUMSQ_BITS - bitlen_n)]
            m.next = "DIVIDE"
        with m.State("DIVIDE"):
            # One reciprocal per consumer, in parallel (a zero peak gives an unused quotient).
            for recip_unit in mem.recips:
                m.d.comb += recip_unit.i.valid.eq(1)
            m.next = "DIVIDE_WAIT"
        with m.State("DIVIDE_WAIT"):
            with m.If(mem.recips[0].o.valid):
                m.d.sync += [v.recip[c].eq(mem.recips[c].o.payload) for c in range(C)]
                m.d.sync += [v.ptr.eq(0), v.code_pass.eq(1), v.sumsq.eq(0), v.sumsq_n.eq(0), v.held.eq(0),
                             v.flush.eq(0)]
                if self.shadow_replay:
                    # This column's maxima are in M', sh, sa, sn now: the next column's may start.
                    shadow = (v.p.consumers == 1) & (v.col != self.last_column)
                    m.d.sync += v.shadow_on.eq(shadow)
                    with m.If(shadow):
                        m.d.sync += [max_pass.peak_a.eq(0), *[max_pass.peak[c].eq(0) for c in range(C)]]
                m.next = "CODE_PASS"
        with m.State("CODE_PASS"):
            m.d.comb += v.issue.eq(v.ptr <= v.k_last)
            m.d.comb += v.x_release.eq(advance & v.issue & (v.ptr + self.elements_per_cycle > v.k_last)
                                       & (v.col == self.last_column))
            with m.If(code_done):
                m.d.sync += v.code_pass.eq(0)
                m.next = "HANDOFF"
        with m.State("HANDOFF"):
            # The column's sums are final: its scalars start (with copies of what they read) once
            # the column before's are out.
            with m.If(v.scalars_idle):
                m.d.comb += v.scalars_start.eq(1)
                m.d.sync += v.shadow_on.eq(0)
                with m.If(v.col == self.last_column):
                    m.next = "FINISH"
                with m.Else():
                    m.d.sync += [v.col.eq(v.col + 1), v.col_base.eq(v.col_base + mem.words)]
                    with m.If(v.shadow_on):
                        m.next = "BITLEN"            # its max pass ran beside this code pass
                    with m.Else():
                        # the next column's max pass replays while this one's scalars are computed
                        m.d.sync += [v.part.eq(0), v.beat.eq(0), max_pass.peak_a.eq(0),
                                     *[max_pass.peak[c].eq(0) for c in range(C)]]
                        m.next = "REPLAY"
        with m.State("FINISH"):
            # The next record's params wait for the last column's scales (they share ``p``).
            with m.If(v.scalars_idle & ~v.scalars_start):
                m.next = "IDLE"

    def _scalar_datapath(self, m, mem):
        """The registers and the one shared multiplier of the states after the code pass."""
        b = self.bounds
        eps = Signal(self.v_bits)                 # the eps register, shifted serially
        eps_exp = Signal(signed(_signed_bits(*b.e)))
        eps_left = Signal()
        eps_count = Signal(range(max(-b.e[0], b.e[1]) + 1))
        sumsq_eps = Signal(self.v_bits)           # V
        inv = Signal(INV_BITS)
        z = Signal(signed(self._rsqrt_z_bits))
        cons = Signal(range(MAX_CONSUMERS))
        ratio = Signal(RATIO_BITS)
        # One multiplier for both per-consumer products of numerics.output_scale (RATIO, then SCALE).
        scalar_a = Signal(max(nx.QUANT_NORM_BITS, nx.SCALE_BITS))
        scalar_b = Signal(max(INV_BITS, RATIO_BITS))
        scalar_prod = Signal(len(scalar_a) + len(scalar_b))
        m.d.comb += scalar_prod.eq(scalar_a * scalar_b)
        scales = Signal(self.scales.payload.shape())
        m.d.comb += self.scales.payload.eq(scales)
        m.d.comb += [mem.rsqrt.i.payload.eq(sumsq_eps), mem.rsqrt.o.ready.eq(1)]
        # What the scalars read of the column, copied as they start: the passes go on to the next.
        C, b = MAX_CONSUMERS, self.bounds
        column = SimpleNamespace(
            sumsq=Signal(b.sumsq_bits, name="scalars_sumsq"), sumsq_n=Signal(b.sumsq_bits, name="scalars_sumsq_n"),
            sa=Signal(signed(8), name="scalars_sa"), sn=Signal(signed(8), name="scalars_sn"),
            peak_norm=[Signal(nx.QUANT_NORM_BITS, name=f"scalars_peak_norm{c}") for c in range(C)],
            shift=[Signal(signed(8), name=f"scalars_shift{c}") for c in range(C)])
        return SimpleNamespace(eps=eps, eps_exp=eps_exp, eps_left=eps_left, eps_count=eps_count, sumsq_eps=sumsq_eps,
                               inv=inv, z=z, cons=cons, ratio=ratio, scalar_a=scalar_a, scalar_b=scalar_b,
                               scalar_prod=scalar_prod, scales=scales, column=column)

    def _fsm_scales(self, m, mem, v, d):
        """The second FSM: a column's scalars after its code pass (WAIT, then EPS to OUTPUT).

        Started by ``scalars_start`` (the column's last codes beat packed):
        ``eps`` (``numerics.eps_term``: one multiply, then a serial shift of
        32, 8 or 1 bits per cycle), ``V = s + eps`` (1 cycle), ``RsqrtFixed``,
        then per consumer ``numerics.output_scale`` on one multiplier (2
        cycles each); the ``scales`` beat waits in OUTPUT for ``ready``, then
        WAIT (``scalars_idle``). Meanwhile the first FSM goes on with the next
        column (after the last column: under the matrices in the engine).
        """
        C, p, rsqrt = MAX_CONSUMERS, v.p, mem.rsqrt
        eps, eps_exp, eps_left, eps_count, sumsq_eps = d.eps, d.eps_exp, d.eps_left, d.eps_count, d.sumsq_eps
        inv, z, cons, ratio, scales = d.inv, d.z, d.cons, d.ratio, d.scales
        scalar_a, scalar_b, scalar_prod = d.scalar_a, d.scalar_b, d.scalar_prod
        col = d.column
        with m.State("WAIT"):
            m.d.comb += v.scalars_idle.eq(1)
            with m.If(v.scalars_start):
                m.d.sync += [col.sumsq.eq(v.sumsq), col.sumsq_n.eq(v.sumsq_n), col.sa.eq(v.sa), col.sn.eq(v.sn),
                             *[col.peak_norm[c].eq(v.peak_norm[c]) for c in range(C)],
                             *[col.shift[c].eq(v.shift[c]) for c in range(C)]]
                m.next = "EPS"
        with m.State("EPS"):
            # eps = floor(base * eps_mant * 2**e), e = 2 q - eps_shift,
            # q = [sn - n_frac] + x_frac + frac_a - sa (numerics.eps_term)
            none = p.source == NormSource.NONE
            n_frac = Mux(p.source == NormSource.INPUT, p.x_frac, nx.ACT_FRAC)
            q = Mux(none, 0, col.sn - n_frac) + p.x_frac + p.frac_a - col.sa
            e = Signal.like(eps_exp)
            m.d.comb += e.eq(2 * q - p.eps_shift)
            m.d.sync += [eps.eq(Mux(none, v.k_last + 1, col.sumsq_n) * p.eps_mant), eps_exp.eq(e),
                         eps_left.eq(e >= 0), eps_count.eq(Mux(e >= 0, e, -e))]
            m.next = "EPS_SHIFT"
        with m.State("EPS_SHIFT"):
            # Floor right shifts compose, so 32/8/1-bit steps give the exact floor.
            with m.If((eps_count == 0) | (eps == 0)):
                m.next = "SUM"
            for step, below in ((32, None), (8, 32), (1, 8)):
                cond = eps_count >= step
                if below is not None:
                    cond = cond & (eps_count < below)
                with m.If(cond):
                    m.d.sync += [eps.eq(Mux(eps_left, eps << step, eps >> step)), eps_count.eq(eps_count - step)]
        with m.State("SUM"):
            m.d.sync += sumsq_eps.eq(col.sumsq + eps)
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
            m.d.comb += [scalar_a.eq(Cat(col.peak_norm).word_select(cons, nx.QUANT_NORM_BITS)), scalar_b.eq(inv)]
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
                            scales.exp[c].eq(p.ec[c] + col.shift[c] + p.frac_a - p.frac_g[c] - col.sa + z
                                             - nx.RSQRT_RECIP_SHIFT + nx.ACT_FRAC + nx.RATIO_DROP_BITS
                                             + nx.SCALE_BITS),
                            scales.peak_norm[c].eq(col.peak_norm[c]), scales.shift[c].eq(col.shift[c])]
            m.d.sync += cons.eq(cons + 1)
            with m.If(cons == C - 1):
                m.d.sync += [scales.sumsq.eq(sumsq_eps), scales.sa.eq(col.sa), scales.inv.eq(inv), scales.z.eq(z),
                             self.scales.valid.eq(1)]
                m.next = "OUTPUT"
            with m.Else():
                m.next = "RATIO"
        with m.State("OUTPUT"):
            with m.If(self.scales.ready):
                m.d.sync += self.scales.valid.eq(0)
                m.next = "WAIT"


def _msb_index(value):
    """``(value != 0, value.bit_length() - 1)``: a priority encoder as a balanced tree of 2:1
    multiplexers (depth log2 of the width). Each node's lower part is a power of two wide, so
    the upper part's index gains a constant top bit: no adders in the tree."""
    def node(lo, width):
        if width == 1:
            return value[lo], Const(0, 1)
        low = 1 << ((width - 1).bit_length() - 1)      # largest power of two below width
        nz_lo, index_lo = node(lo, low)
        nz_hi, index_hi = node(lo + low, width - low)
        return nz_lo | nz_hi, Mux(nz_hi, index_hi | low, index_lo)
    nonzero, index = node(0, len(value))
    return nonzero, index[:max(1, (len(value) - 1).bit_length())]


def _sumsq_magnitude(value, rounding, right, left):
    """``numerics.sumsq_magnitudes`` of one magnitude, from the split shift of ``rshift_round``."""
    return Mux(rounding, ((value >> right)[:SUMSQ_MAG_BITS + 1] + 1) >> 1, value << left)[:SUMSQ_MAG_BITS]


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
