"""Model configuration of the MatMul-free LM (``hgrn_bit`` checkpoints)."""
from __future__ import annotations

import dataclasses
import math


class ConfigError(ValueError):
    """A checkpoint configuration this project cannot run."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and constants of one model (spec/model.md §5).

    ``intermediate_size`` is always resolved (never None):
    ``256 * ceil(floor(D * hidden_ratio * 2/3) / 256)`` when the checkpoint
    leaves it null.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and 0 < self.rms_norm_eps < math.inf):
            raise ConfigError(f"rms_norm_eps must be a positive finite number, got {self.rms_norm_eps!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} must be a token id below vocab_size {self.vocab_size}, got {value!r}")
        if self.hidden_size > 8192 or self.intermediate_size > 8192:
            # accumulator and sum-of-squares widths are derived for K <= 8192
            raise ConfigError("hidden and intermediate sizes above 8192 are not supported")

    @property
    def D(self) -> int:
        return self.hidden_size

    @property
    def I(self) -> int:  # noqa: E743 - the spec's name
        return self.intermediate_size

    @property
    def L(self) -> int:
        return self.num_hidden_layers

    @property
    def V(self) -> int:
        return self.vocab_size

    def ternary_weight_count(self) -> int:
        """Ternary weights read per token (LM head included)."""
        per_layer = 4 * self.D * self.D + 2 * self.I * self.D + self.D * self.I
        return self.L * per_layer + self.V * self.D

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Validate a HuggingFace ``config.json`` of an MMfreeLM checkpoint."""
        if hf.get("model_type") != "hgrn_bit":
            raise ConfigError(f"unknown architecture: model_type {hf.get('model_type')!r}, expected 'hgrn_bit'")
        unsupported = {
            "num_heads": (1, "one head"),
            "expand_ratio": (1, "expand ratio 1"),
            "use_short_conv": (False, "no short convolution"),
            "use_lower_bound": (True, "lower bounds"),
            "tie_word_embeddings": (False, "untied embeddings"),
        }
        for key, (want, what) in unsupported.items():
            if key in hf and hf[key] is not None and hf[key] != want:
                raise ConfigError(f"config {key}={hf[key]!r} is not supported (the accelerator implements {what})")

        def number(key, default=None, kind=int):
            value = hf.get(key, default) if default is not None else hf[key]
            if value is None and default is not None:
                value = default
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {value!r}") from None

        try:
            d = number("hidden_size")
            inter = hf.get("intermediate_size")
            if inter is None:
                ratio = number("hidden_ratio", 4, float)
                inter = 256 * math.ceil(math.floor(d * ratio * 2 / 3) / 256)
            return cls(
                vocab_size=number("vocab_size"),
                hidden_size=d,
                num_hidden_layers=number("num_hidden_layers"),
                intermediate_size=number("intermediate_size", inter),
                rms_norm_eps=number("rms_norm_eps", 1e-6, float),
                bos_token_id=number("bos_token_id", 1),
                eos_token_id=number("eos_token_id", 2),
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks {e.args[0]!r}") from None
