"""Frozen, validated configs of every model module, and the named presets.

A ``ModelConfig`` is everything needed to build the weights' shapes; it is saved as
``config.json`` next to ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "EncoderConfig",
    "DecoderConfig",
    "CreativeHeadConfig",
    "RewardConfig",
    "PaymentConfig",
    "ModelConfig",
]


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"is {value!r}", "a positive integer")


def _heads(prefix: str, d_model: int, n_heads: int, n_kv_heads: int) -> None:
    _positive(f"{prefix}.n_heads", n_heads)
    _positive(f"{prefix}.n_kv_heads", n_kv_heads)
    if d_model % n_heads:
        raise ConfigError(f"{prefix}.n_heads", f"{n_heads} does not divide d_model {d_model}")
    if n_heads % n_kv_heads:
        raise ConfigError(f"{prefix}.n_kv_heads", f"{n_kv_heads} does not divide n_heads {n_heads}")


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """User encoder: one token per behaviour (sum of its code, action and time embeddings)."""

    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256
    max_history: int = 64
    n_actions: int = 4
    n_time_buckets: int = 16

    def validate(self, d_model: int) -> None:
        for name in ("n_layers", "ffn_hidden", "max_history", "n_actions", "n_time_buckets"):
            _positive(f"encoder.{name}", getattr(self, name))
        _heads("encoder", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """LazyAR decoder: ``n_layers`` blocks split at ``split`` (trunk = first ``split`` layers).

    ``split = 0`` is a plain autoregressive decoder. ``max_slots`` sizes the learned
    per-position queries: one position per (slot, SID level).
    """

    n_layers: int = 3
    split: int = 1
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256
    max_slots: int = 8

    def validate(self, d_model: int) -> None:
        for name in ("n_layers", "ffn_hidden", "max_slots"):
            _positive(f"decoder.{name}", getattr(self, name))
        if not isinstance(self.split, int) or not 0 <= self.split < self.n_layers:
            raise ConfigError("decoder.split", f"is {self.split!r}", f"an integer in [0, {self.n_layers})")
        _heads("decoder", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class CreativeHeadConfig:
    """Multi-token-prediction creative head: one decoder block over the creative's code levels."""

    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256

    def validate(self, d_model: int) -> None:
        _positive("creative.ffn_hidden", self.ffn_hidden)
        _heads("creative", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Permutation-aware reward model: self-attention across slots, three sigmoid towers."""

    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    ffn_hidden: int = 128
    tower_hidden: tuple[int, ...] = (128, 32, 10)

    def validate(self) -> None:
        for name in ("d_model", "n_layers", "ffn_hidden"):
            _positive(f"reward.{name}", getattr(self, name))
        _heads("reward", self.d_model, self.n_heads, self.n_heads)
        for i, width in enumerate(self.tower_hidden):
            _positive(f"reward.tower_hidden[{i}]", width)


@dataclass(frozen=True, slots=True)
class PaymentConfig:
    """Payment network MLP widths (EGA-V2: 128 -> 32 -> 10 -> 1)."""

    hidden: tuple[int, ...] = (128, 32, 10)

    def validate(self) -> None:
        for i, width in enumerate(self.hidden):
            _positive(f"payment.hidden[{i}]", width)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The whole generative ad model: SID shapes, width, and one config per module."""

    name: str = "custom"
    poi_codebook_sizes: tuple[int, ...] = (32, 32, 32)
    creative_codebook_sizes: tuple[int, ...] = (16, 16)
    d_model: int = 64
    norm_eps: float = 1e-6
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    creative: CreativeHeadConfig = field(default_factory=CreativeHeadConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    payment: PaymentConfig = field(default_factory=PaymentConfig)

    def __post_init__(self) -> None:
        for attr in ("poi_codebook_sizes", "creative_codebook_sizes"):
            sizes = getattr(self, attr)
            if not isinstance(sizes, tuple) or not sizes:
                raise ConfigError(attr, f"is {sizes!r}", "a non-empty tuple of positive integers")
            for i, size in enumerate(sizes):
                _positive(f"{attr}[{i}]", size)
        _positive("d_model", self.d_model)
        if not self.norm_eps > 0:
            raise ConfigError("norm_eps", f"is {self.norm_eps!r}", "a positive float")
        self.encoder.validate(self.d_model)
        self.decoder.validate(self.d_model)
        self.creative.validate(self.d_model)
        self.reward.validate()
        self.payment.validate()

    @property
    def levels(self) -> int:
        return len(self.poi_codebook_sizes)

    @property
    def creative_levels(self) -> int:
        return len(self.creative_codebook_sizes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        subs = {
            "encoder": EncoderConfig,
            "decoder": DecoderConfig,
            "creative": CreativeHeadConfig,
            "reward": RewardConfig,
            "payment": PaymentConfig,
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError("config.json", f"has unknown keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in subs:
                value = subs[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
