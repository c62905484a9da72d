"""Named model presets with their default decoding settings.

* ``tiny``: the embedded default, small enough to train and serve on a CPU; its weights,
  trained on the synthetic world by ``ega-infer train``, ship in ``ega_infer/weights/tiny``.
* ``ega-base``: EGA-V2 shapes: 3 levels x 1024 codes, slates of 10 slots, 64 beams, history 256.
* ``gr4ad-base``: GR4AD shapes: about 0.16B parameters, 3 levels of 16384/4096/1024 codes,
  9 decoder layers split at 6 (LazyAR), beams 128 -> 256 -> 512, history 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .decoding.config import DecodeConfig
from .exceptions import show_value
from .model.config import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    RewardConfig,
)

__all__ = ["Preset", "PRESETS", "get_preset"]


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True, slots=True)
class Preset:
    """A model config, its default decoding, and where its shipped weights are (if any);
    without weights the model starts from random weights seeded by ``seed`` (an integer in
    ``[0, 2**64)``). ``weights`` is None or the name of a directory of ``ega_infer/weights``."""

    model: ModelConfig
    decode: DecodeConfig
    seed: int = 0
    weights: str | None = None

    def __post_init__(self) -> None:
        from .exceptions import ConfigError

        def bad(name: str, value: object, expected: str) -> ConfigError:
            return ConfigError(name, f"is {show_value(value)} (a {type(value).__name__})", expected)

        if not isinstance(self.model, ModelConfig):
            raise bad("model", self.model, "a ModelConfig")
        if not isinstance(self.decode, DecodeConfig):
            raise bad("decode", self.decode, "a DecodeConfig")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64:
            raise bad("seed", self.seed, "an integer in [0, 2**64)")
        w = self.weights
        if w is not None and (not isinstance(w, str) or not w or w in (".", "..") or "/" in w or "\\" in w):
            raise bad("weights", w, "None or the name of a directory of ega_infer/weights")

    @property
    def weights_dir(self) -> Path | None:
        if self.weights is None or not (WEIGHTS_DIR / self.weights / "model.safetensors").is_file():
            return None
        return WEIGHTS_DIR / self.weights


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(
            name="tiny",
            poi_codebook_sizes=(32, 32, 32),
            creative_codebook_sizes=(16, 16),
            d_model=64,
            encoder=EncoderConfig(n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_history=64),
            decoder=DecoderConfig(n_layers=3, split=1, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_slots=8),
            reward=RewardConfig(d_model=32, n_layers=1, n_heads=4, ffn_hidden=64),
        ),
        DecodeConfig(mode="lists", beams=(16,), num_slots=6, alpha=1.2, beta=2.0, max_ads=2, min_gap=1),
        weights="tiny",
    ),
    "ega-base": Preset(
        ModelConfig(
            name="ega-base",
            poi_codebook_sizes=(1024, 1024, 1024),
            creative_codebook_sizes=(1024, 1024, 1024),
            d_model=256,
            encoder=EncoderConfig(n_layers=3, n_heads=8, n_kv_heads=4, ffn_hidden=1024, max_history=256),
            decoder=DecoderConfig(n_layers=3, split=0, n_heads=8, n_kv_heads=4, ffn_hidden=1024, max_slots=10),
            reward=RewardConfig(d_model=128, n_layers=2, n_heads=4, ffn_hidden=256),
        ),
        DecodeConfig(mode="lists", beams=(64,), num_slots=10, alpha=1.2, beta=2.0),
    ),
    "gr4ad-base": Preset(
        ModelConfig(
            name="gr4ad-base",
            poi_codebook_sizes=(16384, 4096, 1024),
            creative_codebook_sizes=(1024, 1024),
            d_model=768,
            encoder=EncoderConfig(n_layers=4, n_heads=12, n_kv_heads=4, ffn_hidden=2048, max_history=1024),
            decoder=DecoderConfig(n_layers=9, split=6, n_heads=12, n_kv_heads=4, ffn_hidden=2048, max_slots=10),
            reward=RewardConfig(d_model=128, n_layers=2, n_heads=4, ffn_hidden=256),
        ),
        DecodeConfig(mode="candidates", beams=(128, 256, 512), num_slots=10, alpha=1.2, beta=2.0),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises ConfigError (field ``preset``) for any other value."""
    from .exceptions import ConfigError

    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError("preset", f"{show_value(name)} is not a preset", f"one of {sorted(PRESETS)}")
    return PRESETS[name]
