"""Float golden model: the MatMul-free LM in numpy float32 (or float64), as the reference computes it.

Follows ``spec/model.md`` literally (no algebraic folding): every BitLinear
runs its own RMSNorm, the per-token absmax int8 quantizer (ties away from
zero) and the ternary weights with their per-tensor scale. Weights come from
a :class:`~mmfree.models.weight_image.WeightImage` (codes and scales computed
by the converter from the latent checkpoint weights).

Two entry points that agree: :meth:`FloatModel.forward` (a whole sequence,
matrix products batched over positions) and :meth:`FloatModel.step` (one
token with explicit per-layer state, what the accelerator does).

``FloatModel(image, dtype=np.float64)`` runs the same formulas in float64,
with the weight scales m and the lower bounds also taken in float64 (the
mean of |W| as the converter computed it, the softmax of the stored P).
It is the arithmetic of the training framework's float64 forward
(``reference_logits.npz``'s ``logits_float64``). Why both exist: the int8
activation quantizer turns a last-bit difference into a whole code step when
a value lies near a rounding tie, and the recurrent state carries such a
step on, so two float32 implementations that order their operations
differently drift apart after some dozens of tokens; in float64 the same
flip needs a value within ~1e-16 of a tie and does not happen on the
bundled model's reference slice (docs/numerics.md, "Float32 drift").
"""
from __future__ import annotations

import numpy as np

from . import numerics as nx
from .weight_image import WeightImage, lower_bounds

F32 = np.float32
#: The arithmetic the float golden model offers, by name (``mmfree logits --arith``).
DTYPES = {"float32": np.float32, "float64": np.float64}


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """``x * gain / sqrt(mean(x**2) + eps)`` over the last axis, in x's float dtype."""
    t = x.dtype.type
    ms = np.mean(np.square(x, dtype=t), axis=-1, keepdims=True, dtype=t)
    return (x * (t(1.0) / np.sqrt(ms + t(eps)))) * gain


def sigmoid(x: np.ndarray) -> np.ndarray:
    t = x.dtype.type
    return t(1.0) / (t(1.0) + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def lower_bounds_float64(raw: np.ndarray) -> np.ndarray:
    """LB = cumsum_l(softmax_l(P)) - softmax_l(P)[0] in float64 (LB[0] = 0)."""
    p = np.asarray(raw, dtype=np.float64)
    e = np.exp(p - p.max(axis=0, keepdims=True))
    sm = e / e.sum(axis=0, keepdims=True)
    return np.cumsum(sm, axis=0) - sm[0]


class FloatModel:
    """Float golden model of one weight image, in float32 (default) or float64.

    Parameters
    ----------
    image : the weight image.
    dtype : keyword-only, ``np.float32`` (the reference's arithmetic) or
        ``np.float64``; anything else raises ``ValueError("dtype must be
        float32 or float64, got ...")``. In float64 the weight scales are the
        float64 means the converter recorded (``m_float64``); an image
        without them raises ``ValueError``.

    State: a list of L vectors of length D in ``dtype`` (zero at the start).
    """

    def __init__(self, image: WeightImage, *, dtype=np.float32, exact_ties: bool = False):
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if exact_ties and dtype is not np.float64:
            raise ValueError("exact_ties needs dtype float64")
        self.exact_ties = exact_ties
        self.image = image
        self.dtype = dt = dtype
        self.cfg = cfg = image.config
        self.eps = cfg.rms_norm_eps
        self.embedding = nx.bf16_to_float32(image.embedding_bf16()).astype(dt)
        raw_lb = image.host_tensor("model.lower_bounds")
        self.lower_bounds = lower_bounds(raw_lb) if dt is np.float32 else lower_bounds_float64(raw_lb)
        self._linear = {}
        for rec in image.records():
            for c in rec.get("consumers", []):
                if dt is np.float32:
                    m = F32(image.host_tensor(f"{c['name']}.weight_scale")[0])
                elif "m_float64" in c:
                    m = np.float64(c["m_float64"])
                else:
                    raise ValueError(f"{c['name']}: the image records no float64 weight scale; "
                                     "convert the checkpoint again")
                self._linear[c["name"]] = (
                    image.codes_float32(c["name"]),
                    image.host_tensor(f"{c['name']}.norm.weight").astype(dt),
                    m,
                )

    # -- building blocks --------------------------------------------------
    def bitlinear(self, x: np.ndarray, name: str, folded: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """BitLinear over the last axis of x (one row per position).

        ``folded = (w, a)`` says that x = w * a / (a per-row positive factor)
        (the pre-norm's input and gain, docs/numerics.md). With
        ``exact_ties`` the codes are rounded from
        ``127 * (w*a*gamma) / max|w*a*gamma|``: the same real number as
        x^ * s, computed with one rounding (the products of bf16 values are
        exact), so a value exactly on a tie rounds by the spec's rule.
        """
        codes, gamma, m = self._linear[name]
        t = self.dtype
        xn = rms_norm(x, gamma, self.eps)
        scale = t(nx.ACT_CODE_MAX) / np.maximum(np.max(np.abs(xn), axis=-1, keepdims=True), t(nx.ACT_ABSMAX_FLOOR))
        if self.exact_ties:
            w, a = (x, None) if folded is None else folded
            p = w * gamma if a is None else w * (a * gamma)        # a * gamma: exact (bf16 * bf16)
            peak = np.max(np.abs(p), axis=-1, keepdims=True)
            # The reference's floor on max|x^| (1e-5) only matters for a (near) zero vector.
            live = np.max(np.abs(xn), axis=-1, keepdims=True) >= nx.ACT_ABSMAX_FLOOR
            ratio = np.where(live, (nx.ACT_CODE_MAX * p) / np.where(peak > 0, peak, 1.0), xn * scale)
            q = np.clip(nx.round_half_away(ratio), -128, 127).astype(F32)
        else:
            q = np.clip(nx.round_half_away(xn * scale), -128, 127).astype(F32)
        acc = (q @ codes.T).astype(t, copy=False)   # exact: integers below 2**24
        return acc * (m / scale)

    def norm(self, name: str) -> np.ndarray:
        return self.image.host_tensor(name).astype(self.dtype)

    def _layer(self, layer: int, h: np.ndarray, state: np.ndarray):
        """One block on rows of h (T x D); state is the (D,) recurrent state before row 0."""
        p = f"model.layers.{layer}"
        a_attn = self.norm(f"{p}.attn_norm.weight")
        u = rms_norm(h, a_attn, self.eps)
        i = self.bitlinear(u, f"{p}.attn.i_proj", (h, a_attn))
        f = sigmoid(self.bitlinear(u, f"{p}.attn.f_proj", (h, a_attn)))
        g = self.bitlinear(u, f"{p}.attn.g_proj", (h, a_attn))
        one = self.dtype(1.0)
        if layer > 0:
            lb = self.lower_bounds[layer]
            f = lb + (one - lb) * f
        c = silu(i) * (one - f)
        states = np.empty_like(c)
        for t in range(c.shape[0]):            # h_t = f * h_{t-1} + c
            state = f[t] * state + c[t]
            states[t] = state
        a_g = self.norm(f"{p}.attn.g_norm.weight")
        silu_h = silu(states)
        o = rms_norm(g, a_g, self.eps) * silu_h
        r = h + self.bitlinear(o, f"{p}.attn.o_proj", (g * silu_h, a_g))
        a_mlp = self.norm(f"{p}.mlp_norm.weight")
        v = rms_norm(r, a_mlp, self.eps)
        ab = self.bitlinear(v, f"{p}.mlp.gate_proj", (r, a_mlp))
        a, b = ab[:, : self.cfg.I], ab[:, self.cfg.I:]
        out = r + self.bitlinear(silu(a) * b, f"{p}.mlp.down_proj")
        return out, state

    def _head(self, h: np.ndarray) -> np.ndarray:
        a = self.norm("model.norm.weight")
        return self.bitlinear(rms_norm(h, a, self.eps), "lm_head", (h, a))

    # -- entry points -----------------------------------------------------
    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cfg.D, self.dtype) for _ in range(self.cfg.L)]

    def forward(self, ids, state: list[np.ndarray] | None = None, *, return_state: bool = False,
                trace: dict | None = None):
        """Logits (T x V, in the model's dtype) of a whole sequence, batched over positions.

        ``state``: the per-layer state before the first token (zero if None);
        with ``return_state`` the result is (logits, state after the last
        token), so a long text can be fed in pieces. ``trace`` collects each
        layer's output (T x D) under the keys :meth:`step` uses.
        """
        ids = np.asarray(ids, dtype=np.int64)
        state = self.initial_state() if state is None else list(state)
        h = self.embedding[ids]
        for layer in range(self.cfg.L):
            h, state[layer] = self._layer(layer, h, state[layer])
            if trace is not None:
                trace[f"model.layers.{layer}.hidden"] = h
        logits = self._head(h)
        return (logits, state) if return_state else logits

    def step(self, token: int, state: list[np.ndarray],
             trace: dict | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (V,) of one token and the new per-layer state; ``trace`` collects each layer's output."""
        h = self.embedding[int(token)][None, :]
        new_state = []
        for layer in range(self.cfg.L):
            h, s = self._layer(layer, h, state[layer])
            new_state.append(s)
            if trace is not None:
                trace[f"model.layers.{layer}.hidden"] = h[0]
        return self._head(h)[0], new_state
