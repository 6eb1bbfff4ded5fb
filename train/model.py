"""PyTorch HGRN-bit (MatMul-free LM) for training, following ``spec/model.md``.

The forward pass is the released checkpoints' arithmetic (spec §1-§4):

- ``BitLinear``: own RMSNorm (eps 1e-6) → per-token absmax int8 activation
  codes (round half away from zero) → per-tensor absmean ternary weight
  codes (round half to even, ``torch.round``) → product. Training uses the
  straight-through estimator ``x + (quant(x) - x).detach()`` on both.
- MLGRU token mixer with lower bounds ``LB = cumsum(softmax(P)) - softmax(P)[0]``,
  ``g_norm`` on g and SiLU on the state; GLU channel mixer with one
  ``gate_proj`` of 2I×D; final RMSNorm; ternary ``lm_head``; no biases.

Parameter names are the Hugging Face names of spec §5, so ``state_dict()``
exports directly to ``model.safetensors``.

The recurrence ``h_t = f_t ⊙ h_{t-1} + c_t`` runs in training as a
Hillis-Steele parallel scan (log2 T elementwise steps, products of forget
gates only, so it is as stable as the loop) and in evaluation as the
sequential loop of the reference kernel (same rounding as token-by-token
decoding; int8 codes near a rounding tie make the model sensitive to the
order of float operations, and the state carries such a difference on).
``forward`` also takes and returns the per-layer states so that a sequence
can be fed in pieces. Arithmetic is float32 (float64 if the parameters are
float64).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ACT_EPS = 1e-5      # floor of max|x̂| in the activation scale
WEIGHT_EPS = 1e-5   # floor of mean|W| in the weight scale
BITLINEAR_NORM_EPS = 1e-6


def intermediate_size_for(hidden_size: int, hidden_ratio: int = 4) -> int:
    """``I = 256 · ceil(floor(D · hidden_ratio · 2/3) / 256)`` (spec §4)."""
    return 256 * math.ceil(int(hidden_size * hidden_ratio * 2 / 3) / 256)


@dataclass
class HGRNBitConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_heads: int = 1
    expand_ratio: int = 1
    hidden_ratio: int = 4
    intermediate_size: int | None = None
    rms_norm_eps: float = 1e-6
    use_lower_bound: bool = True
    use_short_conv: bool = False
    attn_mode: str = "fused_recurrent"
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    initializer_range: float = 0.02
    model_type: str = "hgrn_bit"
    architectures: list = field(default_factory=lambda: ["HGRNBitForCausalLM"])
    hidden_act: str = "swish"
    conv_size: int = 4
    share_conv_kernel: bool = True
    fuse_cross_entropy: bool = True
    torch_dtype: str = "bfloat16"

    @property
    def intermediate(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return intermediate_size_for(self.hidden_size, self.hidden_ratio)

    @classmethod
    def from_dict(cls, d: dict) -> "HGRNBitConfig":
        if d.get("model_type", "hgrn_bit") != "hgrn_bit":
            raise ValueError(f"model_type {d.get('model_type')!r} is not hgrn_bit")
        if d.get("num_heads", 1) != 1 or d.get("expand_ratio", 1) != 1 or d.get("use_short_conv", False):
            raise ValueError("only num_heads=1, expand_ratio=1, use_short_conv=false are implemented")
        if d.get("tie_word_embeddings", False):
            raise ValueError("tied embeddings are not implemented")
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_file(cls, path: str | Path) -> "HGRNBitConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        return asdict(self)


def wide(x: torch.Tensor) -> torch.Tensor:
    """Compute dtype: float32, or float64 when the model runs in float64 (for checks)."""
    return x if x.dtype == torch.float64 else x.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x · γ / sqrt(mean(x²) + eps)`` over the last axis, in float32 (or float64)."""
    x32 = wide(x)
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * wide(weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero, exactly (no ``floor(x + 0.5)`` error)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def activation_codes(x: torch.Tensor):
    """Per-token int8 codes ``q`` (as float) and scale ``s_x = 127 / max(max|x|, 1e-5)``."""
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=ACT_EPS)
    return round_half_away(x * s).clamp(-128, 127), s


def weight_codes(w: torch.Tensor):
    """Ternary codes ``T`` (as float) and ``scale = 1 / max(mean|W|, 1e-5)``, reference order of ops."""
    scale = 1.0 / w.abs().mean().clamp(min=WEIGHT_EPS)
    return (w * scale).round().clamp(-1, 1), scale


class BitLinear(nn.Module):
    """RMSNorm + int8 activations + ternary weights, no bias (spec §2).

    Training (``self.training``): fake-quantized float product with the
    straight-through estimator. Evaluation: integer codes multiplied
    (exact in float32 and bf16: |acc| ≤ 127·K) and scaled once,
    ``y = acc / (s_x · scale_w)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.norm = RMSNorm(in_features, BITLINEAR_NORM_EPS)

    def forward(self, x):
        xn = self.norm(x)
        w = wide(self.weight)
        if self.training and torch.is_grad_enabled():
            q, s = activation_codes(xn)
            t, ws = weight_codes(w)
            xq = xn + (q / s - xn).detach()
            wq = w + (t / ws - w).detach()
            return F.linear(xq, wq)
        with torch.no_grad():
            q, s = activation_codes(xn)
            t, ws = weight_codes(w)
        # float32 product of integer codes: exact (|acc| ≤ 127·K < 2**24); autocast
        # is off here because a bf16 output would round acc.
        with torch.autocast(device_type=x.device.type, enabled=False):
            acc = F.linear(q, t)
        return acc / (s * ws)


def linear_scan(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """``h_t = f_t ⊙ h_{t-1} + c_t`` along axis 1 (B, T, D), ``h_{-1} = h0`` (or 0).

    Hillis-Steele inclusive scan of the affine maps ``h ↦ f·h + c``: after
    the step with offset k each position holds the composition of the last
    2k maps. log2(T) steps of elementwise work.
    """
    if h0 is not None:
        c = torch.cat([c[:, :1] + f[:, :1] * h0.unsqueeze(1), c[:, 1:]], dim=1)
    a, b = f, c
    T = f.shape[1]
    k = 1
    while k < T:
        b = torch.cat([b[:, :k], b[:, k:] + a[:, k:] * b[:, :-k]], dim=1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    return b


def linear_recurrence(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Same as ``linear_scan`` as a loop over time: the reference kernel's order of
    operations, so a whole-sequence forward equals the token-by-token one bit for bit."""
    h = torch.zeros_like(c[:, 0]) if h0 is None else h0
    out = []
    for t in range(c.shape[1]):
        h = f[:, t] * h + c[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


class HGRNBitAttention(nn.Module):
    """MLGRU token mixer (spec §3)."""

    def __init__(self, config: HGRNBitConfig, layer_idx: int):
        super().__init__()
        D = config.hidden_size
        self.layer_idx = layer_idx
        self.i_proj = BitLinear(D, D)
        self.f_proj = BitLinear(D, D)
        self.g_proj = BitLinear(D, D)
        self.o_proj = BitLinear(D, D)
        self.g_norm = RMSNorm(D, config.rms_norm_eps)

    def forward(self, u, lower_bound, state=None):
        i = wide(self.i_proj(u))
        f = torch.sigmoid(wide(self.f_proj(u)))
        if self.layer_idx > 0:
            f = lower_bound + (1 - lower_bound) * f
        c = F.silu(i) * (1 - f)
        h = linear_scan(f, c, state) if self.training else linear_recurrence(f, c, state)
        o = self.g_norm(self.g_proj(u)) * F.silu(h)
        return self.o_proj(o), h[:, -1]


class HGRNBitMLP(nn.Module):
    """GLU channel mixer (spec §4)."""

    def __init__(self, config: HGRNBitConfig):
        super().__init__()
        D, I = config.hidden_size, config.intermediate
        self.intermediate = I
        self.gate_proj = BitLinear(D, 2 * I)
        self.down_proj = BitLinear(I, D)

    def forward(self, v):
        ab = wide(self.gate_proj(v))
        a, b = ab[..., : self.intermediate], ab[..., self.intermediate:]
        return self.down_proj(F.silu(a) * b)


class HGRNBitBlock(nn.Module):
    def __init__(self, config: HGRNBitConfig, layer_idx: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = HGRNBitAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = HGRNBitMLP(config)

    def forward(self, h, lower_bound, state=None):
        mixed, new_state = self.attn(self.attn_norm(h), lower_bound, state)
        r = h + F.dropout(mixed, self.dropout, self.training)
        return r + F.dropout(self.mlp(self.mlp_norm(r)), self.dropout, self.training), new_state


class HGRNBitModel(nn.Module):
    def __init__(self, config: HGRNBitConfig, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lower_bounds = nn.Parameter(torch.zeros(config.num_hidden_layers, config.hidden_size))
        self.layers = nn.ModuleList(HGRNBitBlock(config, l, dropout) for l in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def lower_bound_values(self) -> torch.Tensor:
        """``LB = cumsum_l(softmax_l(P)) − softmax_l(P)[0]``; LB[0] = 0."""
        p = torch.softmax(wide(self.lower_bounds), dim=0)
        return torch.cumsum(p, dim=0) - p[0]

    def forward(self, ids, states=None):
        h = F.dropout(wide(self.embeddings(ids)), self.dropout, self.training)
        lb = self.lower_bound_values()
        new_states = []
        for l, layer in enumerate(self.layers):
            h, s = layer(h, lb[l], None if states is None else states[l])
            new_states.append(s)
        return self.norm(h), new_states


class HGRNBitForCausalLM(nn.Module):
    """The causal LM. ``dropout`` (training only; on the embedding output and on
    both residual branches) is not part of the inference model or its config."""

    def __init__(self, config: HGRNBitConfig, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.model = HGRNBitModel(config, dropout)
        self.lm_head = BitLinear(config.hidden_size, config.vocab_size)
        self.reset_parameters()

    def reset_parameters(self):
        """Normal(0, initializer_range) for matrices and embeddings, ones for gains, zeros for P."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("lower_bounds"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                nn.init.normal_(p, mean=0.0, std=std)
            else:
                nn.init.ones_(p)

    def forward(self, ids, states=None):
        """ids (B, T) → logits (B, T, V) float32 and the per-layer final states [(B, D)]."""
        z, states = self.model(ids, states)
        return wide(self.lm_head(z)), states

    def num_parameters(self) -> dict:
        ternary = sum(m.weight.numel() for m in self.modules() if isinstance(m, BitLinear))
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "ternary": ternary, "lm_head_ternary": self.lm_head.weight.numel(),
                "embedding": self.model.embeddings.weight.numel()}

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None) -> list[int]:
        """Greedy (temperature 0) or sampled continuation of one prompt, carrying the state."""
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.lm_head.weight.device)[None]
        logits, states = self(ids)
        out = []
        for _ in range(max_new_tokens):
            last = logits[0, -1]
            if temperature <= 0:
                nxt = int(torch.argmax(last))
            else:
                last = last / temperature
                if top_k is not None:
                    kth = torch.topk(last, top_k).values[-1]
                    last = torch.where(last < kth, torch.full_like(last, -math.inf), last)
                nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=generator))
            out.append(nxt)
            if eos_token_id is not None and nxt == eos_token_id:
                break
            logits, states = self(torch.tensor([[nxt]], device=ids.device), states)
        return out


def load_checkpoint(path: str | Path, dtype=torch.float32, device="cpu") -> HGRNBitForCausalLM:
    """Load a released-format checkpoint dir (config.json + model.safetensors) into float32."""
    from safetensors.torch import load_file

    path = Path(path)
    config = HGRNBitConfig.from_file(path / "config.json")
    model = HGRNBitForCausalLM(config)
    tensors = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype).eval()


def save_checkpoint(model: HGRNBitForCausalLM, path: str | Path, tokenizer_json: str | Path | None = None):
    """Write config.json + bf16 model.safetensors (HF names) [+ tokenizer.json] into ``path``."""
    import shutil

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, path / "tokenizer.json")
