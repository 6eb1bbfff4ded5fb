"""Float golden model: the MatMul-free LM in numpy float32, as the reference computes it.

Follows ``spec/model.md`` literally (no algebraic folding): every BitLinear
runs its own RMSNorm, the per-token absmax int8 quantizer (ties away from
zero) and the ternary weights with their per-tensor scale. Weights come from
a :class:`~mmfree.models.weight_image.WeightImage` (codes and scales computed
by the converter from the latent checkpoint weights).

Two entry points that agree: :meth:`FloatModel.forward` (a whole sequence,
matrix products batched over positions) and :meth:`FloatModel.step` (one
token with explicit per-layer state, what the accelerator does).
"""
from __future__ import annotations

import numpy as np

from . import numerics as nx
from .weight_image import WeightImage, lower_bounds

F32 = np.float32


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """``x * gain / sqrt(mean(x**2) + eps)`` over the last axis, float32."""
    ms = np.mean(np.square(x, dtype=F32), axis=-1, keepdims=True, dtype=F32)
    return (x * (F32(1.0) / np.sqrt(ms + F32(eps)))) * gain


def sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(1.0) / (F32(1.0) + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


class FloatModel:
    """Float32 golden model of one weight image.

    State: a list of L float32 vectors of length D (zero at the start).
    """

    def __init__(self, image: WeightImage):
        self.image = image
        self.cfg = cfg = image.config
        self.eps = cfg.rms_norm_eps
        self.embedding = nx.bf16_to_float32(image.embedding_bf16())
        self.lower_bounds = lower_bounds(image.host_tensor("model.lower_bounds"))
        self._linear = {}
        for rec in image.records():
            for c in rec.get("consumers", []):
                self._linear[c["name"]] = (
                    image.codes_float32(c["name"]),
                    image.host_tensor(f"{c['name']}.norm.weight"),
                    F32(image.host_tensor(f"{c['name']}.weight_scale")[0]),
                )

    # -- building blocks --------------------------------------------------
    def bitlinear(self, x: np.ndarray, name: str) -> np.ndarray:
        """BitLinear over the last axis of x (one row per position)."""
        codes, gamma, m = self._linear[name]
        xn = rms_norm(x, gamma, self.eps)
        scale = F32(nx.ACT_CODE_MAX) / np.maximum(np.max(np.abs(xn), axis=-1, keepdims=True), F32(nx.ACT_ABSMAX_FLOOR))
        q = np.clip(nx.round_half_away(xn * scale), -128, 127).astype(F32)
        acc = q @ codes.T          # exact: integers below 2**24
        return acc * (m / scale)

    def norm(self, name: str) -> np.ndarray:
        return self.image.host_tensor(name)

    def _layer(self, layer: int, h: np.ndarray, state: np.ndarray):
        """One block on rows of h (T x D); state is the (D,) recurrent state before row 0."""
        p = f"model.layers.{layer}"
        u = rms_norm(h, self.norm(f"{p}.attn_norm.weight"), self.eps)
        i = self.bitlinear(u, f"{p}.attn.i_proj")
        f = sigmoid(self.bitlinear(u, f"{p}.attn.f_proj"))
        g = self.bitlinear(u, f"{p}.attn.g_proj")
        if layer > 0:
            lb = self.lower_bounds[layer]
            f = lb + (F32(1.0) - lb) * f
        c = silu(i) * (F32(1.0) - f)
        states = np.empty_like(c)
        for t in range(c.shape[0]):            # h_t = f * h_{t-1} + c
            state = f[t] * state + c[t]
            states[t] = state
        o = rms_norm(g, self.norm(f"{p}.attn.g_norm.weight"), self.eps) * silu(states)
        r = h + self.bitlinear(o, f"{p}.attn.o_proj")
        v = rms_norm(r, self.norm(f"{p}.mlp_norm.weight"), self.eps)
        ab = self.bitlinear(v, f"{p}.mlp.gate_proj")
        a, b = ab[:, : self.cfg.I], ab[:, self.cfg.I:]
        out = r + self.bitlinear(silu(a) * b, f"{p}.mlp.down_proj")
        return out, state

    def _head(self, h: np.ndarray) -> np.ndarray:
        return self.bitlinear(rms_norm(h, self.norm("model.norm.weight"), self.eps), "lm_head")

    # -- entry points -----------------------------------------------------
    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cfg.D, F32) for _ in range(self.cfg.L)]

    def forward(self, ids, state: list[np.ndarray] | None = None) -> np.ndarray:
        """Logits (T x V, float32) of a whole sequence, batched over positions."""
        ids = np.asarray(ids, dtype=np.int64)
        state = self.initial_state() if state is None else list(state)
        h = self.embedding[ids]
        for layer in range(self.cfg.L):
            h, state[layer] = self._layer(layer, h, state[layer])
        return self._head(h)

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
