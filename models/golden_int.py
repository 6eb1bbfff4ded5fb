"""Integer golden model: the accelerator's arithmetic, bit for bit.

Every value is an integer in a format of :mod:`mmfree.models.numerics`; the
RTL must reproduce each intermediate here exactly. The model reads only what
the accelerator reads: the STREAM region (folded 24-bit gains, weight-scale
mantissas, lower-bound gates, packed ternary codes) and bf16 embedding rows.

One BitLinear record (input vector x in ACT, pre-norm gain A, folded gains
G_c = A * gamma_c for its consumers c) computes, with
``x^ = x * G / rms(x * A)`` being the reference's normalised input:

1. codes: ``p = x * G_c`` (exact, up to 71 bits); ``M = max|p|``; normalise
   |p| by ``sh`` (floor) so ``M' in [2**30, 2**31)``; one reciprocal
   ``R = 127 * 2**48 // M'``; ``q = sign(p) * round(127 |p'| / M')`` (int8,
   ties away from zero, exact: :func:`~mmfree.models.numerics.quantize_codes`);
2. norm: ``t = |x * A|`` rounded to 24 bits by ``sa``; ``V = sum t'**2 + K*eps``;
   one reciprocal square root ``inv, z = rsqrt_fixed(V)``;
3. ``acc = sum_k q_k * T_nk`` (exact integer);
4. ``y = rescale(acc, *output_scale(M', inv, z, Cm, ec, sh, sa, frac_g, frac_a))``.

The pre-norm's own 1/rms cancels from the codes and enters the scale only
through ``rms(x * A)`` (docs/numerics.md derives this); so the RMSNorm before
a BitLinear costs no extra pass and no extra square root.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import numerics as nx
from .weight_image import NormSource, WeightImage


@dataclasses.dataclass
class QuantizedVector:
    """The int8 codes of one input vector for one consumer, and the scalars the scale needs."""

    codes: np.ndarray     # int8 [K]
    peak_norm: int        # M'
    shift: int            # sh


@dataclasses.dataclass
class NormStats:
    """The sum of squares of x*A after the 16-bit normalisation, and its rsqrt."""

    sumsq: int            # V = sum t'^2 + K*eps
    shift: int            # sa
    inv: int
    z: int


def quantize_vector(x: np.ndarray, gain_mant: np.ndarray) -> QuantizedVector:
    """Step 1: int8 codes of x * G (all zero for a zero vector)."""
    x = np.asarray(x, np.int64)                # |x| < 2**47
    g = np.asarray(gain_mant, np.int64)        # |G| < 2**23
    peak_bits = nx.product_bit_length(x, g)
    if peak_bits == 0:
        return QuantizedVector(np.zeros(x.shape, np.int8), 0, 0)
    sh = peak_bits - nx.QUANT_NORM_BITS
    mag_norm = nx.mul_floor_magnitude(x, g, sh)          # floor(|x * G| / 2**sh), exact
    peak_norm = int(mag_norm.max())                      # = floor(M / 2**sh)
    negative = (x < 0) != (g < 0)
    codes = nx.quantize_codes(mag_norm, negative, nx.quant_reciprocal(peak_norm), peak_norm)
    return QuantizedVector(codes, peak_norm, sh)


def norm_stats(x: np.ndarray, x_frac: int, norm_mant: np.ndarray, frac_a: int, eps_mant: int, eps_shift: int,
               norm_vector: np.ndarray | None = None, norm_frac: int = nx.ACT_FRAC) -> NormStats:
    """Step 2: V = sum of squares of the 24-bit-normalised |x * A| plus the epsilon term, and rsqrt(V).

    Without a pre-norm (``norm_vector`` None) the epsilon term is K * eps. With
    one, it is eps * sum(n**2) of the pre-norm's input n (``norm_vector``,
    ``norm_frac`` fractional bits), itself normalised to 24-bit magnitudes.
    """
    x = np.asarray(x, np.int64)
    a = np.asarray(norm_mant, np.int64)
    sa = nx.product_bit_length(x, a) - nx.SUMSQ_BITS
    # rshift_round(|x * A|, sa): the exact wide product when sa > 0, a left shift of a small one otherwise
    tn = nx.mul_rshift(np.abs(x), np.abs(a), sa) if sa > 0 else (np.abs(x) * np.abs(a)) << (-sa)
    s = int(np.sum(tn * tn))                   # t' <= 2**24: the sum stays below 2**61 for K <= 8192
    if norm_vector is None:
        eps = nx.eps_term(x.size, 2 * (x_frac + frac_a - sa) - eps_shift, eps_mant)
    else:
        n = np.abs(np.asarray(norm_vector, np.int64))
        sn = nx.normalize_shift(int(n.max()), nx.SUMSQ_BITS)
        nn = nx.sumsq_magnitudes(n, sn)
        eps = nx.eps_term(int(np.sum(nn * nn)), 2 * (sn - norm_frac + x_frac + frac_a - sa) - eps_shift, eps_mant)
    v = s + eps
    if v == 0:
        return NormStats(0, sa, 0, 0)
    inv, z = nx.rsqrt_fixed(v)
    return NormStats(v, sa, inv, z)


def consumer_scale(qv: QuantizedVector, stats: NormStats, cm: int, ec: int, frac_g: int,
                   frac_a: int) -> tuple[int, int] | None:
    """Step 4's ``(scale, exp)`` of one consumer (``numerics.output_scale``: scale unsigned
    ``SCALE_OUT_BITS``, exp a signed shift), from its codes' M', sh and the vector's V, sa, inv, z;
    None when the consumer's outputs are all zero (V = 0 or M' = 0)."""
    if stats.sumsq == 0 or qv.peak_norm == 0:
        return None
    return nx.output_scale(qv.peak_norm, stats.inv, stats.z, cm, ec, qv.shift, stats.shift, frac_g, frac_a)


def mlgru_step(i: np.ndarray, f_pre: np.ndarray, g: np.ndarray, h: np.ndarray,
               lower_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MLGRU's element-wise part (``hw.mlgru.MLGRU``): returns ``(w, h_new)``, both ACT.

    ``i``, ``f_pre``, ``g`` (the ``attn.in`` outputs), ``h`` (the layer's
    state) are ACT (``numerics.ACT_BITS``, Q15.32) int64 arrays;
    ``lower_bound`` is the layer's gates, GATE (Q0.32, below 1). With
    ``f = LB + (1 - LB) * sigmoid(f_pre)`` (GATE, truncated):
    ``h_new = saturate(f * h + silu(i) * (1 - f))`` and ``w = g * silu(h_new)``,
    each product rounded (``numerics.mul_gate`` / ``mul_act``).
    """
    lb = lower_bound
    f = lb + nx.mul_rshift(nx.GATE_ONE - lb, nx.sigmoid_act(f_pre), nx.GATE_FRAC)  # LB + (1-LB)*sigma
    c = nx.mul_gate(nx.silu_act(i), nx.GATE_ONE - f)                                   # silu(i)*(1-f)
    h_new = nx.saturate(nx.mul_gate(h, f) + c)                                        # f*h + c
    return nx.mul_act(g, nx.silu_act(h_new)), h_new                                   # g*silu(h)


def glu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The GLU's element-wise part (``hw.glu.GLU``): ``silu(a) * b`` (``numerics.mul_act``), ACT in and out."""
    return nx.mul_act(nx.silu_act(a), b)


def residual_add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A residual add of two ACT vectors, saturated to ACT."""
    return nx.saturate(x + y)


class IntegerModel:
    """Bit-exact integer model of one weight image. State: L ACT vectors (int64 arrays)."""

    def __init__(self, image: WeightImage):
        self.image = image
        self.cfg = image.config
        self._records = {r["name"]: r for r in image.records()}
        self._codes = {c["name"]: image.codes_float32(c["name"])
                       for r in image.records() for c in r.get("consumers", [])}
        self._lb = [image.lower_bound_gates(layer) for layer in range(self.cfg.L)]
        self._gains = {}
        for r in image.records():
            if r["kind"] != "BITLINEAR":
                continue
            norm = image.norm_gain(r["name"])
            folded = [image.folded_gain(c["name"]) for c in r["consumers"]]
            self._gains[r["name"]] = (norm, folded)

    def bitlinear(self, x: np.ndarray, record: str, trace: dict | None = None,
                  norm_vector: np.ndarray | None = None) -> list[np.ndarray]:
        """All consumers' ACT outputs of one BITLINEAR record for input x (in the record's x_frac format).

        ``norm_vector`` is the pre-norm's input when it is not x itself (the
        MLGRU's g before o_proj).
        """
        outs = self.bitlinear_columns(np.asarray(x)[None], record, trace,
                                      None if norm_vector is None else np.asarray(norm_vector)[None])
        return [y[0] for y in outs]

    def bitlinear_columns(self, x: np.ndarray, record: str, trace: dict | None = None,
                          norm_vector: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`bitlinear` of B input vectors at once (``x``: B x K, one column each): every
        consumer's outputs (B x rows). Each column's statistics, codes and scale are its own, exactly
        as :meth:`bitlinear` of that column alone; only the matrix product is shared (one pass over
        the matrix for all B, as the accelerator's columns share one weight stream).
        ``trace`` (one column only) collects the intermediates."""
        rec = self._records[record]
        (a_mant, frac_a), folded = self._gains[record]
        source = NormSource[rec["norm_source"]]
        x = np.asarray(x, np.int64)
        if source == NormSource.INPUT:
            norm_vector = x
        elif source == NormSource.NONE:
            norm_vector = [None] * len(x)
        elif norm_vector is None:
            raise ValueError(f"record {record} needs the pre-norm's input vector")
        norm_frac = rec["x_frac"] if source == NormSource.INPUT else nx.ACT_FRAC
        stats = [norm_stats(xb, rec["x_frac"], a_mant, frac_a, rec["eps_mant"], rec["eps_shift"], nb, norm_frac)
                 for xb, nb in zip(x, norm_vector)]
        outs = []
        for cons, (g_mant, frac_g) in zip(rec["consumers"], folded):
            qvs = [quantize_vector(xb, g_mant) for xb in x]
            scalings = [consumer_scale(qv, st, cons["cm"], cons["ec"], frac_g, frac_a) for qv, st in zip(qvs, stats)]
            y = np.zeros((len(x), cons["rows"]), np.int64)
            live = [b for b, s in enumerate(scalings) if s is not None]
            if live:
                codes = np.stack([qvs[b].codes for b in live], axis=1).astype(np.float32)     # K x B'
                acc = (self._codes[cons["name"]] @ codes).astype(np.int64)                 # rows x B'
                for j, b in enumerate(live):
                    y[b] = nx.rescale(acc[:, j], *scalings[b])
                if trace is not None and live == [0]:
                    scale, exp = scalings[0]
                    trace[cons["name"]] = {"codes": qvs[0].codes, "acc": acc[:, 0], "scale": scale, "exp": exp,
                                           "y": y[0], "peak_norm": qvs[0].peak_norm, "shift": qvs[0].shift,
                                           "stats": stats[0]}
            outs.append(y)
        return outs

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cfg.D, np.int64) for _ in range(self.cfg.L)]

    def embed(self, token: int) -> np.ndarray:
        return nx.bf16_to_act(self.image.embedding_bf16(int(token)))

    def mlgru(self, layer: int, i: np.ndarray, f_pre: np.ndarray, g: np.ndarray, state: np.ndarray):
        """The token mixer's element-wise part (:func:`mlgru_step` with the layer's gates):
        returns (w = g * silu(h), new state h), both ACT."""
        return mlgru_step(i, f_pre, g, state, self._lb[layer])

    def glu(self, ab: np.ndarray) -> np.ndarray:
        """The channel mixer's element-wise part (:func:`glu` of the a and b halves): silu(a) * b
        (``ab``: 2I values, or B x 2I)."""
        return glu(ab[..., : self.cfg.I], ab[..., self.cfg.I:])

    def step(self, token: int, state: list[np.ndarray], trace: dict | None = None):
        """ACT logits (int64, V) of one token and the new state; ``trace`` collects intermediates."""
        logits, (new_state,) = self.step_batch([token], [state], trace)
        return logits[0], new_state

    def step_batch(self, tokens, states: list[list[np.ndarray]], trace: dict | None = None):
        """One token of each of B independent sequences (``tokens[b]`` with state ``states[b]``),
        all in one pass over the weights: (B x V logits, the B new states). Sequence b's results
        equal :meth:`step` of ``tokens[b]`` alone, bit for bit."""
        if len(tokens) != len(states):
            raise ValueError(f"{len(tokens)} tokens for {len(states)} states")
        h = np.stack([self.embed(t) for t in tokens])
        h, layers = self._columns(h, [np.stack([s[layer] for s in states]) for layer in range(self.cfg.L)],
                                  False, trace)
        (logits,) = self.bitlinear_columns(h, "head", trace)
        return logits, [[layers[layer][b] for layer in range(self.cfg.L)] for b in range(len(tokens))]

    def prefill(self, tokens, state: list[np.ndarray], logits: str = "last"):
        """B consecutive tokens of one sequence in one pass over the weights: every projection takes
        the B tokens as columns; only the MLGRU's recurrence runs across them in order. Returns
        (logits, new state): the last token's logits (V) for ``logits="last"``, every token's
        (B x V) for ``"all"``, none for ``"none"``; the state after the last token. Equal, bit for
        bit, to B :meth:`step` calls."""
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', not {logits!r}")
        if len(tokens) == 0:
            raise ValueError("prefill needs at least one token")
        h = np.stack([self.embed(t) for t in tokens])
        h, layers = self._columns(h, [s[None] for s in state], True)
        new_state = [s[-1] for s in layers]
        if logits == "none":
            return None, new_state
        (out,) = self.bitlinear_columns(h if logits == "all" else h[-1:], "head")
        return (out if logits == "all" else out[0]), new_state

    def _columns(self, h: np.ndarray, states: list[np.ndarray], recurrent: bool, trace: dict | None = None):
        """Every layer for B columns of hidden vectors ``h`` (B x D). ``states[layer]`` is B x D
        (independent sequences) or 1 x D (``recurrent``: the columns are consecutive tokens of one
        sequence, column b's MLGRU starting from column b-1's new state). Returns the last layer's
        hidden vectors and, per layer, every column's new state (B x D)."""
        new_states = []
        for layer in range(self.cfg.L):
            p = f"model.layers.{layer}"
            i, f_pre, g = self.bitlinear_columns(h, f"{p}.attn.in", trace)
            if recurrent:
                w, s = np.empty_like(i), np.empty_like(i)
                prev = states[layer][0]
                for b in range(len(h)):
                    w[b], s[b] = self.mlgru(layer, i[b], f_pre[b], g[b], prev)
                    prev = s[b]
            else:
                w, s = self.mlgru(layer, i, f_pre, g, states[layer])
            new_states.append(s)
            (o,) = self.bitlinear_columns(w, f"{p}.attn.out", trace, norm_vector=g)
            r = residual_add(h, o)
            (ab,) = self.bitlinear_columns(r, f"{p}.mlp.in", trace)
            (d,) = self.bitlinear_columns(self.glu(ab), f"{p}.mlp.out", trace)
            h = residual_add(r, d)
            if trace is not None:
                trace[f"{p}.hidden"] = h[0]
        return h, new_states

    def forward(self, ids, state=None) -> np.ndarray:
        """Float64 logits (T x V) of a sequence, fed one token at a time."""
        state = self.initial_state() if state is None else list(state)
        rows = []
        for t in np.asarray(ids, np.int64):
            logits, state = self.step(int(t), state)
            rows.append(nx.act_to_float(logits))
        return np.stack(rows)
