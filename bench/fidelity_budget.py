"""Error budget of the integer arithmetic: which approximation costs how much fidelity.

:class:`BudgetModel` runs the integer golden model's dataflow (folded gains,
one reciprocal and one reciprocal square root per vector, ACT/GATE/WIDE
values) in float64, with each of the integer approximations of
``models/numerics.py`` switched on or off independently:

========== ==================================================================
name       what "on" means (off: the exact real-number operation)
========== ==================================================================
act        ACT (Q15.16, half up, saturating) for the embedding row, every
           BitLinear output, SiLU, the recurrent state, residual adds and the
           gate products; WIDE products stay exact products of ACT values
gate       GATE (2**-16) rounding of sigma outputs, of (1-LB)*sigma, and the
           uint16 lower-bound gates of the stream
sigmoid    the 513-entry table with linear interpolation instead of 1/(1+e^-x)
gains      int16-mantissa norm gains A and folded gains G (stream) instead of
           the float64 products of the checkpoint's gains
quantizer  |p| cut to 23 bits (floor), R = floor(127*2**40/M'), rounding by
           shift, instead of round_half_away(127*|p|/max|p|)
rsqrt      16-bit magnitudes for the sum of squares, integer isqrt and
           floor(2**61/isqrt) instead of the exact 1/sqrt
eps        24-bit epsilon mantissa, floored epsilon term, eps**2 dropped
scale      C = (m/127)*sqrt(K) as a 24-bit mantissa, F' = (M'*inv) >> 30,
           scale = (Cm*F') >> 24 instead of the exact product
========== ==================================================================

With every switch on, the model reproduces ``IntegerModel`` bit for bit;
with every switch off it is the float golden model in float64 (up to the
order of float64 operations). Both facts are checked on every run
(``--check``, on by default).

Figures per variant, all against the float golden model in float64 over the
held-out text (``models/kjv/heldout.txt``, fed as one sequence from ``<s>``):

* ``flip_positions``: positions where any int8 code differs from the exact
  model when both start the token from the exact model's recurrent states
  (one step, teacher-forced state): the approximation's local effect,
  free of the chaotic divergence that follows a first flip;
* ``one_step_disagree``: of those one-step runs, positions whose argmax
  differs;
* ``free_disagree``: free-running greedy disagreements (each model carries
  its own state): the figure the issue's agreement target is about;
* ``perplexity``.

Run: ``mmfree fidelity-budget [--positions N] [--mode only|all-but|both] [--json OUT]``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmfree.models import numerics as nx
from mmfree.models.golden_float import FloatModel, lower_bounds_float64
from mmfree.models.golden_int import IntegerModel
from mmfree.models.weight_image import NormSource, WeightImage

REPO = Path(__file__).resolve().parents[1]
APPROXIMATIONS = ("act", "gate", "sigmoid", "gains", "quantizer", "rsqrt", "eps", "scale")


@dataclasses.dataclass(frozen=True)
class Formats:
    """Precisions of the approximations when switched on (defaults: the shipped numerics).

    ``act_frac``: fractional bits of ACT (WIDE has twice as many; the range
    stays +-2**15); ``gate_frac``: of sigma outputs and (1-LB)*sigma;
    ``lb_frac``: of the stored lower bounds; ``sigmoid_segments_log2``: table
    segments over |x| < 16 (entries rounded to ``gate_frac``); ``gain_bits``:
    signed gain mantissas (one exponent per vector); ``sumsq_bits``: the
    magnitudes squared for the sum of squares; ``quant_norm_bits``: M' in
    [2**(b-1), 2**b), reciprocal shift b + 17.
    """

    act_frac: int = nx.ACT_FRAC
    gate_frac: int = nx.GATE_FRAC
    lb_frac: int = nx.GATE_FRAC
    sigmoid_segments_log2: int = nx.SIGMOID_SEGMENTS_LOG2
    gain_bits: int = nx.GAIN_BITS
    sumsq_bits: int = nx.SUMSQ_BITS
    quant_norm_bits: int = nx.QUANT_NORM_BITS
    tie_exact: bool = True
    wide: bool = False
    sigmoid_order: int = 2
    sigmoid_range_log2: int = nx.SIGMOID_RANGE_LOG2


    def table(self) -> np.ndarray:
        step = 2.0 ** (self.sigmoid_segments_log2 - self.sigmoid_range_log2)
        return np.array([math.floor(2.0**self.gate_frac / (1.0 + math.exp(-j / step)) + 0.5)
                         for j in range((1 << self.sigmoid_segments_log2) + self.sigmoid_order)], np.int64)


def _gain_mantissas(g: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """``numerics.gain_to_fixed`` with ``bits``-bit mantissas."""
    peak = float(np.max(np.abs(g)))
    frac = bits - 2 - math.floor(math.log2(peak))
    return np.clip(np.floor(g * 2.0**frac + 0.5), -(1 << (bits - 1)), (1 << (bits - 1)) - 1), frac


def _bitlen(v: np.ndarray) -> np.ndarray:
    """bit_length of floor(v) for non-negative float64 v (0 for v < 1)."""
    _, e = np.frexp(np.floor(v))
    return e.astype(np.int64)


class BudgetModel:
    """The integer model's arithmetic in float64 with switchable approximations (see module doc)."""

    def __init__(self, image: WeightImage, on=APPROXIMATIONS, formats: Formats = Formats(), *,
                 exact_ties: bool = False):
        unknown = set(on) - set(APPROXIMATIONS)
        if unknown:
            raise ValueError(f"unknown approximation {sorted(unknown)[0]!r}; known: {', '.join(APPROXIMATIONS)}")
        self.on = frozenset(on)
        self.exact_ties = exact_ties
        self.fmt = fmt = formats
        self.sigmoid_table = fmt.table()
        self.image = image
        self.cfg = cfg = image.config
        self.eps = cfg.rms_norm_eps
        self.embedding_bf16 = image.embedding_bf16()
        self.lb_exact = lower_bounds_float64(image.host_tensor("model.lower_bounds"))
        if fmt.lb_frac == nx.GATE_FRAC:
            self.lb_gate = np.stack([image.lower_bound_gates(layer) for layer in range(cfg.L)]) / nx.GATE_ONE
        else:
            one = 2.0**fmt.lb_frac
            self.lb_gate = np.minimum(np.floor(self.lb_exact * one + 0.5), one - 1) / one
        self.records = {}
        for r in image.records():
            if r["kind"] != "BITLINEAR":
                continue
            a = (np.ones(r["k"]) if r["norm"] is None
                 else image.host_tensor(r["norm"]).astype(np.float64))
            if fmt.gain_bits == nx.GAIN_BITS:
                a_mant, frac_a = image.norm_gain(r["name"])
            else:
                a_mant, frac_a = _gain_mantissas(a, fmt.gain_bits)
            cons = []
            for c in r["consumers"]:
                gamma = image.host_tensor(f"{c['name']}.norm.weight").astype(np.float64)
                if fmt.gain_bits == nx.GAIN_BITS:
                    g_mant, frac_g = image.folded_gain(c["name"])
                else:
                    g_mant, frac_g = _gain_mantissas(a * gamma, fmt.gain_bits)
                cons.append(dict(c, g_mant=g_mant.astype(np.float64), frac_g=frac_g, g_exact=a * gamma,
                                 codes=image.codes_float32(c["name"])))
            self.records[r["name"]] = dict(r, a_mant=a_mant.astype(np.float64), frac_a=frac_a, a_exact=a,
                                           consumers=cons)

    # -- element-wise formats ---------------------------------------------
    def act(self, v: np.ndarray) -> np.ndarray:
        """Round to ACT (half up) and saturate, when ``act`` is on."""
        if "act" not in self.on:
            return v
        one = 2.0**self.fmt.act_frac
        return np.clip(np.floor(v * one + 0.5), -(2.0**15) * one, 2.0**15 * one - 1) / one

    def gate(self, v: np.ndarray) -> np.ndarray:
        """Round to GATE (half up) when ``gate`` is on."""
        one = 2.0**self.fmt.gate_frac
        return np.floor(v * one + 0.5) / one if "gate" in self.on else v

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        fmt = self.fmt
        a = np.abs(x) * 2.0**fmt.act_frac
        if "sigmoid" in self.on:
            table, segments = self.sigmoid_table, 1 << fmt.sigmoid_segments_log2
            seg = 2.0 ** (fmt.act_frac + fmt.sigmoid_range_log2 - fmt.sigmoid_segments_log2)
            j = np.floor(a / seg)
            inside = j < segments
            jc = np.minimum(j, segments - 1).astype(np.int64)
            r = a - jc * seg
            lo = table[jc].astype(np.float64)
            if fmt.sigmoid_order == 2:      # Newton form through T[j], T[j+1], T[j+2]
                d1 = table[jc + 1] - table[jc]
                d2 = table[jc + 2] - 2 * table[jc + 1] + table[jc]
                if "gate" in self.on:       # numerics.sigmoid_act's two roundings
                    t = np.floor((d2 * (r - seg) + seg / 2) / seg)
                    s = lo + np.floor((r * (2 * d1 + t) + seg) / (2 * seg))
                else:
                    u = r / seg
                    s = lo + d1 * u + d2 * u * (u - 1) / 2
            else:
                d = (table[jc + 1] - table[jc]) * r
                s = lo + (np.floor((d + seg / 2) / seg) if "gate" in self.on else d / seg)
            s = np.where(inside, s, 2.0**fmt.gate_frac) / 2.0**fmt.gate_frac
        else:
            s = self.gate(1.0 / (1.0 + np.exp(-np.abs(x))))
        return np.where(x < 0, 1.0 - s, s)

    def silu(self, x: np.ndarray) -> np.ndarray:
        return self.act(x * self.sigmoid(x))

    # -- one BitLinear record -----------------------------------------------
    def bitlinear(self, x: np.ndarray, name: str, norm_vector: np.ndarray | None = None,
                  codes_out: list | None = None) -> list[np.ndarray]:
        """All consumers' outputs (real values, T x N) for rows x (T x K)."""
        rec = self.records[name]
        on = self.on
        fmt = self.fmt
        wide_input = rec["x_frac"] != nx.ACT_FRAC and fmt.wide
        xf = 2 * fmt.act_frac if wide_input else fmt.act_frac            # WIDE or ACT input
        fa, k = rec["frac_a"], rec["k"]
        source = NormSource[rec["norm_source"]]
        if source == NormSource.INPUT:
            norm_vector, norm_frac = x, xf
        elif source == NormSource.GATE:
            norm_frac = fmt.act_frac
        else:
            norm_vector = None
        X = x * 2.0**xf
        A = rec["a_mant"] if "gains" in on else rec["a_exact"] * 2.0**fa
        rows = x.shape[0]

        def to_16_bits(v, shift):
            """rshift_round(v, shift) for shift > 0, an exact left shift otherwise (floored for real v)."""
            scaled = v * 2.0 ** (-shift)[:, None]
            return np.where(shift[:, None] > 0, np.floor(scaled + 0.5), np.floor(scaled))

        # Norm: V = sum t'^2 + eps term, in units of t' = |x*A| / 2**sa.
        t = np.abs(X * A)
        sa = _bitlen(t.max(axis=1)) - fmt.sumsq_bits
        tn = to_16_bits(t, sa) if "rsqrt" in on else t * 2.0 ** (-sa)[:, None]
        s = (tn * tn).sum(axis=1)
        unit = 2.0 ** (2.0 * (xf + fa - sa))                     # sum-of-squares units per real unit
        eps_mant, eps_shift = rec["eps_mant"], rec["eps_shift"]
        if norm_vector is None:
            if "eps" in on:
                eps_terms = [nx.eps_term(k, int(2 * (xf + fa - sa[r]) - eps_shift), eps_mant) for r in range(rows)]
            else:
                eps_terms = list(self.eps * k * unit)
        else:
            n = np.abs(norm_vector) * 2.0**norm_frac
            if "eps" in on:
                sn = _bitlen(n.max(axis=1)) - fmt.sumsq_bits
                nn = to_16_bits(n, sn)
                sum_nn = (nn * nn).sum(axis=1)
                eps_terms = [nx.eps_term(int(sum_nn[r]), int(2 * (sn[r] - norm_frac + xf + fa - sa[r]) - eps_shift),
                                         eps_mant) for r in range(rows)]
            else:
                sum_n = ((n * 2.0**-norm_frac) ** 2).sum(axis=1)
                eps_terms = list(self.eps * (sum_n + k * self.eps) * unit)
        exact_ints = "rsqrt" in on and "eps" in on
        inv = np.zeros(rows, np.int64 if "rsqrt" in on else np.float64)
        z = np.zeros(rows, np.int64)
        for r in range(rows):
            v = int(s[r]) + eps_terms[r] if exact_ints else float(s[r]) + float(eps_terms[r])
            if v == 0:
                continue
            if exact_ints:
                inv[r], z[r] = nx.rsqrt_fixed(v)
                continue
            z[r] = (nx.RSQRT_NORM_BITS - int(math.floor(v)).bit_length()) // 2
            vn = v * 4.0 ** int(z[r])
            inv[r] = ((1 << nx.RSQRT_RECIP_SHIFT) // math.isqrt(int(vn)) if "rsqrt" in on
                      else 2.0**nx.RSQRT_RECIP_SHIFT / math.sqrt(vn))
        outs = []
        for c in rec["consumers"]:
            fg = c["frac_g"]
            G = c["g_mant"] if "gains" in on else c["g_exact"] * 2.0**fg
            p = X * G
            mag = np.abs(p)
            peak = mag.max(axis=1)
            live = (peak > 0) & (inv > 0)
            sh = _bitlen(peak) - fmt.quant_norm_bits
            recip_shift = fmt.quant_norm_bits + nx.QUANT_RECIP_SHIFT - nx.QUANT_NORM_BITS
            if "quantizer" in on:
                mn = np.floor(mag * 2.0 ** (-sh)[:, None])
                peak_n = np.floor(peak * 2.0 ** (-sh)).astype(np.int64)
                recip = (nx.ACT_CODE_MAX << recip_shift) // np.maximum(peak_n, 1)
                # |p'| * R < 2**b * 2**25: exact in int64 for the b <= 37 tried here
                q = (mn.astype(np.int64) * recip[:, None] + (1 << (recip_shift - 1))) >> recip_shift
                if fmt.tie_exact:
                    # R is floored, so q is round(127 |p'| / M') or one less: one compare fixes it
                    q = q + ((2 * q + 1) * peak_n[:, None] <= 2 * nx.ACT_CODE_MAX * mn.astype(np.int64))
            else:
                peak_n = peak * 2.0 ** (-sh)
                ratio = nx.ACT_CODE_MAX * mag / np.where(live, peak, 1.0)[:, None]
                q = np.floor(ratio + 0.5)
                if self.exact_ties:
                    # decide values within 1e-6 of a rounding tie with exact rationals
                    for r, kk in zip(*np.nonzero(np.abs(ratio - np.floor(ratio) - 0.5) < 1e-6)):
                        exact = Fraction(nx.ACT_CODE_MAX) * Fraction(float(mag[r, kk])) / Fraction(float(peak[r]))
                        q[r, kk] = math.floor(exact + Fraction(1, 2))
            q = np.where(p < 0, -q, q).astype(np.float32)
            q[~live] = 0
            if codes_out is not None:
                codes_out.append(q)
            acc = q @ c["codes"].T
            if "scale" in on:
                if peak_n.dtype == np.int64 and inv.dtype == np.int64:
                    f = (peak_n * inv) >> nx.RATIO_DROP_BITS
                else:
                    f = np.floor(peak_n * inv / 2.0**nx.RATIO_DROP_BITS).astype(np.int64)
                scale = (c["cm"] * f) >> nx.SCALE_BITS
                exp = (c["ec"] + sh + fa - fg - sa + z - nx.RSQRT_RECIP_SHIFT + fmt.act_frac
                       + nx.RATIO_DROP_BITS + nx.SCALE_BITS)
                if "act" in on:
                    drop = np.where(live, -exp, 1)[:, None]
                    prod = acc.astype(np.int64) * scale[:, None]
                    y = np.where(drop > 0, (prod + (np.int64(1) << np.maximum(drop - 1, 0))) >> np.maximum(drop, 0),
                                 prod * 2.0 ** np.maximum(-drop, 0))
                    y = np.clip(y, -(2**(15 + fmt.act_frac)), 2**(15 + fmt.act_frac) - 1) * 2.0**-fmt.act_frac
                else:
                    y = acc * (scale * 2.0 ** (exp - fmt.act_frac))[:, None]
            else:
                cexact = c["m_float64"] / nx.ACT_CODE_MAX * math.sqrt(k)
                y = self.act(acc * (cexact * peak_n * inv * 2.0 ** (sh + fa - fg - sa + z - nx.RSQRT_RECIP_SHIFT))
                             [:, None])
            y[~live] = 0.0
            outs.append(y)
        return outs

    # -- the model -----------------------------------------------------------
    def embed(self, ids) -> np.ndarray:
        if "act" in self.on and self.fmt.act_frac == nx.ACT_FRAC:
            return nx.bf16_to_act(self.embedding_bf16[ids]) * 2.0**-nx.ACT_FRAC
        v = nx.bf16_to_float32(self.embedding_bf16[ids]).astype(np.float64)
        if "act" in self.on:                     # magnitude rounded half up, as bf16_to_act does
            return np.sign(v) * self.act(np.abs(v))
        return v

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cfg.D) for _ in range(self.cfg.L)]

    def layer(self, layer: int, h: np.ndarray, state: np.ndarray, prev_states: np.ndarray | None = None,
              codes_out: list | None = None):
        """One block on rows h (T x D). ``prev_states`` (T x D): the state before each row, given
        (teacher-forced); otherwise the recurrence runs from ``state``. Returns (h, states T x D)."""
        p = f"model.layers.{layer}"
        sat = self.act
        i, f_pre, g = self.bitlinear(h, f"{p}.attn.in", codes_out=codes_out)
        lb = self.lb_gate[layer] if "gate" in self.on else self.lb_exact[layer]
        f = lb + self.gate((1.0 - lb) * self.sigmoid(f_pre))
        c = self.act(self.silu(i) * (1.0 - f))
        if prev_states is not None:
            states = sat(self.act(prev_states * f) + c)
        else:
            states = np.empty_like(c)
            for t in range(c.shape[0]):
                state = sat(self.act(state * f[t]) + c[t])
                states[t] = state
        w = g * self.silu(states)
        if not self.fmt.wide:
            w = self.act(w)
        (o,) = self.bitlinear(w, f"{p}.attn.out", norm_vector=g, codes_out=codes_out)
        r = sat(h + o)
        (ab,) = self.bitlinear(r, f"{p}.mlp.in", codes_out=codes_out)
        a, b = ab[:, : self.cfg.I], ab[:, self.cfg.I:]
        glu = self.silu(a) * b
        (d,) = self.bitlinear(glu if self.fmt.wide else self.act(glu), f"{p}.mlp.out", codes_out=codes_out)
        return sat(r + d), states

    def head(self, h: np.ndarray, codes_out: list | None = None) -> np.ndarray:
        (logits,) = self.bitlinear(h, "head", codes_out=codes_out)
        return logits

    def run(self, ids, state=None, prev_states=None, codes_out=None):
        """Logits (T x V) of rows ids; returns (logits, per-layer states T x D)."""
        state = self.initial_state() if state is None else state
        h = self.embed(np.asarray(ids))
        all_states = []
        for layer in range(self.cfg.L):
            h, st = self.layer(layer, h, state[layer], None if prev_states is None else prev_states[layer],
                               codes_out)
            all_states.append(st)
        return self.head(h, codes_out), all_states


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(len(targets)), targets]


def measure(image: WeightImage, ids: np.ndarray, variants: dict[str, tuple[frozenset, Formats]],
            chunk: int = 512, progress=None, exact_ties: bool = False) -> dict:
    """Figures of every variant (name: (approximations on, formats)) against the exact (all-off)
    model over ids (predicting ids[1:])."""
    exact = BudgetModel(image, on=(), exact_ties=exact_ties)
    models = {name: BudgetModel(image, on=on, formats=fmt) for name, (on, fmt) in variants.items()}
    ex_state = exact.initial_state()
    free_state = {name: m.initial_state() for name, m in models.items()}
    figs = {name: {"flip_positions": 0, "one_step_disagree": 0, "free_disagree": 0, "nll": 0.0}
            for name in models}
    ex_nll = 0.0
    n = len(ids) - 1
    for start in range(0, n, chunk):
        x, y = ids[start: min(start + chunk, n)], ids[start + 1: min(start + chunk, n) + 1]
        ex_codes = []
        ex_logits, ex_states = exact.run(x, ex_state, codes_out=ex_codes)
        # the state before row t: the previous row's state (the chunk's incoming state for row 0)
        prev = [np.vstack([ex_state[layer][None], ex_states[layer][:-1]]) for layer in range(exact.cfg.L)]
        ex_state = [s[-1].copy() for s in ex_states]
        ex_arg = ex_logits.argmax(axis=1)
        ex_nll += float(_nll(ex_logits, y).sum())
        for name, m in models.items():
            codes = []
            one_logits, _ = m.run(x, prev_states=prev, codes_out=codes)
            flipped = np.zeros(len(x), bool)
            for qa, qb in zip(codes, ex_codes):
                flipped |= (qa != qb).any(axis=1)
            fr = figs[name]
            fr["flip_positions"] += int(flipped.sum())
            fr["one_step_disagree"] += int((one_logits.argmax(axis=1) != ex_arg).sum())
            free_logits, st = m.run(x, free_state[name])
            free_state[name] = [s[-1].copy() for s in st]
            fr["free_disagree"] += int((free_logits.argmax(axis=1) != ex_arg).sum())
            fr["nll"] += float(_nll(free_logits, y).sum())
        if progress:
            progress(min(start + chunk, n))
    out = {"positions": n, "exact_perplexity": math.exp(ex_nll / n)}
    for name, fr in figs.items():
        nll = fr.pop("nll")
        fr["perplexity"] = math.exp(nll / n)
        fr["free_agreement"] = 1 - fr["free_disagree"] / n
        fr["on"] = sorted(variants[name][0])
        fr["formats"] = dataclasses.asdict(variants[name][1])
        out[name] = fr
    return out


def check(image: WeightImage, ids: np.ndarray) -> None:
    """All on == IntegerModel; all off == FloatModel(float64, exact_ties=True).

    All on: every int8 code identical and the logits within 1e-9 of
    max|logit| (float64 holds the 80-bit products of the integer model only
    approximately, so an ACT rounding may differ by one LSB, 2**-32). All off:
    logits within 1e-9 of max|logit|.
    """
    codes = []
    logits, _ = BudgetModel(image).run(ids, codes_out=codes)
    im = IntegerModel(image)
    state = im.initial_state()
    want, want_codes = [], []
    for t in ids:
        trace = {}
        lg, state = im.step(int(t), state, trace)
        want.append(lg)
        want_codes.append([v["codes"] for k, v in trace.items() if isinstance(v, dict)])
    want = nx.act_to_float(np.stack(want))
    for index, got in enumerate(codes):
        if not np.array_equal(got, np.stack([w[index] for w in want_codes]).astype(np.float32)):
            raise SystemExit(f"check failed: all-on budget model's codes differ from IntegerModel's (BitLinear {index})")
    rel_int = (np.abs(logits - want).max(axis=1) / np.abs(want).max(axis=1)).max()
    if rel_int > 1e-9:
        raise SystemExit(f"check failed: all-on budget model differs from IntegerModel by {rel_int:.3g}")
    got, _ = BudgetModel(image, on=()).run(ids)
    ref = FloatModel(image, dtype=np.float64, exact_ties=True).forward(ids)
    rel = (np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)).max()
    if rel > 1e-9:
        raise SystemExit(f"check failed: all-off budget model differs from FloatModel(float64) by {rel:.3g}")
    print(f"check ({len(ids)} tokens): all-on == IntegerModel (codes identical, logits to {rel_int:.1e}), "
          f"all-off == FloatModel(float64, exact ties) to {rel:.1e}", file=sys.stderr)


def budget(image: WeightImage, ids: np.ndarray, mode: str = "both", check_first: bool = True,
           progress=None) -> dict:
    """Figures of every variant ``mode`` names (each approximation alone, all but one, or both sets)."""
    if check_first:
        check(image, ids[:48])
    shipped = Formats()
    variants = {"all": (frozenset(APPROXIMATIONS), shipped)}
    if mode in ("only", "both"):
        variants.update({f"only {a}": (frozenset([a]), shipped) for a in APPROXIMATIONS})
    if mode in ("all-but", "both"):
        variants.update({f"all but {a}": (frozenset(APPROXIMATIONS) - {a}, shipped) for a in APPROXIMATIONS})
    t0 = time.time()
    res = measure(image, ids, variants, progress=progress)
    res["seconds"] = round(time.time() - t0, 1)
    res["variants"] = list(variants)
    return res


def report(res: dict) -> None:
    """Print the table of :func:`budget`'s figures."""
    print(f"{res['positions']} positions, exact (float64) perplexity {res['exact_perplexity']:.4f}, "
          f"{res['seconds']} s")
    print(f"{'variant':20s} {'flip pos':>9s} {'1-step dis':>10s} {'free dis':>9s} {'agreement':>10s} {'ppl':>8s}")
    for name in res["variants"]:
        r = res[name]
        print(f"{name:20s} {r['flip_positions']:9d} {r['one_step_disagree']:10d} {r['free_disagree']:9d} "
              f"{100 * r['free_agreement']:9.3f}% {r['perplexity']:8.4f}")
