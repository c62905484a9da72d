"""Frozen, validated configs of every model module (the named presets are in ``presets.py``).

A ``ModelConfig`` is everything needed to build the weights' shapes; it is saved as
``config.json`` next to ``model.safetensors``.

Every size is bounded, so that no config (a hostile ``config.json`` included) makes the model
allocate memory, or build modules, in proportion to an absurd value: codebooks of at most
``MAX_CODEBOOK_SIZE`` codes over 1 to ``MAX_LEVELS`` levels, widths (``d_model``) up to
``MAX_WIDTH``, hidden sizes up to ``MAX_HIDDEN``, at most ``MAX_LAYERS`` layers, histories up
to ``MAX_HISTORY``, action/time vocabularies up to ``MAX_EMBEDDINGS``, ``MAX_SLOTS`` slots and
MLPs of at most ``MAX_MLP_DEPTH`` hidden layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..exceptions import ConfigError, show_value

__all__ = [
    "EncoderConfig",
    "DecoderConfig",
    "CreativeHeadConfig",
    "RewardConfig",
    "PaymentConfig",
    "ModelConfig",
    "MAX_LEVELS",
    "MAX_CODEBOOK_SIZE",
    "MAX_WIDTH",
    "MAX_HIDDEN",
    "MAX_LAYERS",
    "MAX_HISTORY",
    "MAX_EMBEDDINGS",
    "MAX_SLOTS",
    "MAX_MLP_DEPTH",
    "MAX_NAME",
]

MAX_LEVELS = 8  # SID levels (the catalog trie compiles in 8)
MAX_CODEBOOK_SIZE = 2**20  # codes per level: an embedding and an output head of that many rows
MAX_WIDTH = 2**14  # d_model and reward.d_model
MAX_HIDDEN = 2**18  # ffn_hidden and MLP widths
MAX_LAYERS = 256  # n_layers of any stack
MAX_HISTORY = 2**16  # encoder.max_history: the position embedding's rows
MAX_EMBEDDINGS = 2**16  # encoder.n_actions and encoder.n_time_buckets
MAX_SLOTS = 1024  # decoder.max_slots: learned queries of max_slots * levels positions
MAX_MLP_DEPTH = 16  # hidden layers of reward.tower_hidden and payment.hidden
MAX_NAME = 256  # characters of ModelConfig.name


# -- checks (each error names the field and what was expected) ---------------------------------
def _what(value: object) -> str:
    return f"is {show_value(value)} (a {type(value).__name__})"


def _int(name: str, value: object, high: int, low: int = 1) -> None:
    expected = f"a positive integer <= {high}" if low == 1 else f"an integer in [{low}, {high}]"
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(name, _what(value), expected)
    if not low <= value <= high:
        raise ConfigError(name, f"is {show_value(value)}", expected)


def _bounded(high: int, low: int = 1) -> Callable[[str, object], None]:
    return lambda name, value: _int(name, value, high, low)


def _sizes(name: str, value: object) -> None:
    expected = f"a non-empty tuple of at most {MAX_LEVELS} positive integers <= {MAX_CODEBOOK_SIZE}"
    if not isinstance(value, tuple) or not value:
        raise ConfigError(name, _what(value), expected)
    if len(value) > MAX_LEVELS:
        raise ConfigError(name, f"has {len(value)} levels", expected)
    for i, size in enumerate(value):
        _int(f"{name}[{i}]", size, MAX_CODEBOOK_SIZE)


def _widths(name: str, value: object) -> None:
    expected = f"a tuple of at most {MAX_MLP_DEPTH} positive integers <= {MAX_HIDDEN}"
    if not isinstance(value, tuple):
        raise ConfigError(name, _what(value), expected)
    if len(value) > MAX_MLP_DEPTH:
        raise ConfigError(name, f"has {len(value)} layers", expected)
    for i, width in enumerate(value):
        _int(f"{name}[{i}]", width, MAX_HIDDEN)


def _eps(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(name, _what(value), "a positive float <= 1")


def _name(name: str, value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME:
        raise ConfigError(name, _what(value), f"a string of 1 to {MAX_NAME} characters")


def _heads(prefix: str, d_model: int, n_heads: int, n_kv_heads: int) -> None:
    """Call after ``n_heads`` and ``n_kv_heads`` passed their own checks."""
    if d_model % n_heads:
        raise ConfigError(f"{prefix}.n_heads", f"{n_heads} does not divide d_model {d_model}")
    if n_heads % n_kv_heads:
        raise ConfigError(f"{prefix}.n_kv_heads", f"{n_kv_heads} does not divide n_heads {n_heads}")


# The checks of each setting that need no other setting (type and range), by section ("" is
# ModelConfig's own). ``validate`` runs them, then the checks across settings.
_CHECKS: dict[str, dict[str, Callable[[str, object], None]]] = {
    "": {
        "name": _name,
        "poi_codebook_sizes": _sizes,
        "creative_codebook_sizes": _sizes,
        "d_model": _bounded(MAX_WIDTH),
        "norm_eps": _eps,
    },
    "encoder": {
        "n_layers": _bounded(MAX_LAYERS),
        "n_heads": _bounded(MAX_WIDTH),
        "n_kv_heads": _bounded(MAX_WIDTH),
        "ffn_hidden": _bounded(MAX_HIDDEN),
        "max_history": _bounded(MAX_HISTORY),
        "n_actions": _bounded(MAX_EMBEDDINGS),
        "n_time_buckets": _bounded(MAX_EMBEDDINGS),
    },
    "decoder": {
        "n_layers": _bounded(MAX_LAYERS),
        "split": _bounded(MAX_LAYERS - 1, 0),  # and below n_layers: checked by validate
        "n_heads": _bounded(MAX_WIDTH),
        "n_kv_heads": _bounded(MAX_WIDTH),
        "ffn_hidden": _bounded(MAX_HIDDEN),
        "max_slots": _bounded(MAX_SLOTS),
    },
    "creative": {
        "n_heads": _bounded(MAX_WIDTH),
        "n_kv_heads": _bounded(MAX_WIDTH),
        "ffn_hidden": _bounded(MAX_HIDDEN),
    },
    "reward": {
        "d_model": _bounded(MAX_WIDTH),
        "n_layers": _bounded(MAX_LAYERS),
        "n_heads": _bounded(MAX_WIDTH),
        "ffn_hidden": _bounded(MAX_HIDDEN),
        "tower_hidden": _widths,
    },
    "payment": {
        "hidden": _widths,
    },
}
_TUPLES = {"poi_codebook_sizes", "creative_codebook_sizes", "tower_hidden", "hidden"}


def _check(section: str, key: str, value: object) -> None:
    _CHECKS[section][key](f"{section}.{key}" if section else key, value)


def _check_all(section: str, config: object, skip: tuple[str, ...] = ()) -> None:
    for key in _CHECKS[section]:
        if key not in skip:
            _check(section, key, getattr(config, key))


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """User encoder: one token per behaviour (sum of its code, action and time embeddings).

    ``n_layers`` <= ``MAX_LAYERS``, ``ffn_hidden`` <= ``MAX_HIDDEN``, ``max_history`` <=
    ``MAX_HISTORY``, ``n_actions`` and ``n_time_buckets`` <= ``MAX_EMBEDDINGS``; ``n_heads``
    divides ``d_model`` and ``n_kv_heads`` divides ``n_heads``.
    """

    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256
    max_history: int = 64
    n_actions: int = 4
    n_time_buckets: int = 16

    def validate(self, d_model: int) -> None:
        _check_all("encoder", self)
        _heads("encoder", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """LazyAR decoder: ``n_layers`` blocks split at ``split`` (trunk = first ``split`` layers).

    ``split = 0`` is a plain autoregressive decoder. ``max_slots`` sizes the learned
    per-position queries: one position per (slot, SID level). ``n_layers`` <= ``MAX_LAYERS``,
    ``split`` in ``[0, n_layers)``, ``ffn_hidden`` <= ``MAX_HIDDEN``, ``max_slots`` <=
    ``MAX_SLOTS``; ``n_heads`` divides ``d_model`` and ``n_kv_heads`` divides ``n_heads``.
    """

    n_layers: int = 3
    split: int = 1
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256
    max_slots: int = 8

    def validate(self, d_model: int) -> None:
        _check("decoder", "n_layers", self.n_layers)
        split = self.split
        if not isinstance(split, int) or isinstance(split, bool) or not 0 <= split < self.n_layers:
            raise ConfigError("decoder.split", _what(split), f"an integer in [0, {self.n_layers})")
        _check_all("decoder", self, skip=("n_layers", "split"))
        _heads("decoder", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class CreativeHeadConfig:
    """Multi-token-prediction creative head: one decoder block over the creative's code levels.

    ``ffn_hidden`` <= ``MAX_HIDDEN``; ``n_heads`` divides ``d_model`` and ``n_kv_heads``
    divides ``n_heads``."""

    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 256

    def validate(self, d_model: int) -> None:
        _check("creative", "ffn_hidden", self.ffn_hidden)
        _check_all("creative", self, skip=("ffn_hidden",))
        _heads("creative", d_model, self.n_heads, self.n_kv_heads)


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Permutation-aware reward model: self-attention across slots, three sigmoid towers.

    ``d_model`` <= ``MAX_WIDTH`` (divisible by ``n_heads``), ``n_layers`` <= ``MAX_LAYERS``,
    ``ffn_hidden`` <= ``MAX_HIDDEN``, ``tower_hidden``: at most ``MAX_MLP_DEPTH`` widths <=
    ``MAX_HIDDEN``."""

    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    ffn_hidden: int = 128
    tower_hidden: tuple[int, ...] = (128, 32, 10)

    def validate(self) -> None:
        _check_all("reward", self)
        _heads("reward", self.d_model, self.n_heads, self.n_heads)


@dataclass(frozen=True, slots=True)
class PaymentConfig:
    """Payment network MLP widths (EGA-V2: 128 -> 32 -> 10 -> 1): at most ``MAX_MLP_DEPTH``
    widths, each <= ``MAX_HIDDEN``."""

    hidden: tuple[int, ...] = (128, 32, 10)

    def validate(self) -> None:
        _check_all("payment", self)


_SECTIONS: dict[str, type] = {
    "encoder": EncoderConfig,
    "decoder": DecoderConfig,
    "creative": CreativeHeadConfig,
    "reward": RewardConfig,
    "payment": PaymentConfig,
}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The whole generative ad model: SID shapes, width, and one config per module.

    ``poi_codebook_sizes`` / ``creative_codebook_sizes``: tuples of 1 to ``MAX_LEVELS``
    positive integers <= ``MAX_CODEBOOK_SIZE``; ``d_model`` <= ``MAX_WIDTH``; ``norm_eps`` in
    ``(0, 1]``; ``name`` a string of 1 to ``MAX_NAME`` characters; each section its config
    class (see their bounds). Raises ``ConfigError`` naming the field (``"decoder.n_heads"``).
    """

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
        _check_all("", self)
        for key, cls in _SECTIONS.items():
            value = getattr(self, key)
            if not isinstance(value, cls):
                raise ConfigError(key, _what(value), f"a {cls.__name__}")
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
        """The config ``to_dict`` (or the JSON of ``to_json``) describes.

        ``data`` must hold every key ``to_dict`` gives, sections included (a config.json is a
        complete record: a missing key is an error, not a default), and no other; JSON lists
        stand for the tuple fields. Values are checked as they are, never converted: a string,
        float, bool or null where an integer is expected is refused.

        Raises
        ------
        ConfigError naming the key (``"config.json"`` for the object itself or an unknown
        top-level key, ``"decoder"`` for a section that is not an object, ``"decoder.n_heads"``
        for a setting) and what was expected.
        """
        if not isinstance(data, dict):
            raise ConfigError("config.json", _what(data), "a JSON object of model settings")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError("config.json", f"has unknown keys {sorted(map(str, unknown))}", f"only the keys {known}")
        kwargs: dict[str, Any] = {}
        missing: list[str] = []
        for key in known:
            if key not in data:
                missing.append(key)
                continue
            value = data[key]
            if key in _SECTIONS:
                kwargs[key], section_missing = _section(key, value)
                missing += section_missing
            else:
                value = tuple(value) if key in _TUPLES and isinstance(value, list) else value
                _check("", key, value)
                kwargs[key] = value
        if missing:
            raise ConfigError(missing[0], "is missing", "every key to_dict gives (config.json is a complete record)")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        """The config of a ``to_json`` text (a config.json): JSON without a repeated key, then
        ``from_dict`` (which refuses a NaN or Infinity, naming its field). Raises ConfigError
        (field ``"config.json"`` when the text is not JSON)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError("config.json", f"is not UTF-8 text ({exc})", "a JSON object") from None
        if not isinstance(text, str):
            raise ConfigError("config.json", _what(text), "JSON text (a str or bytes)")
        try:
            data = json.loads(text, object_pairs_hook=_no_repeats)
        except (ValueError, RecursionError) as exc:
            raise ConfigError("config.json", f"is not valid JSON ({show_value(str(exc), 120)})", "a JSON object") from None
        return cls.from_dict(data)


def _section(key: str, value: object) -> tuple[Any, list[str]]:
    """A section of ``from_dict``'s input: its config built from checked settings (defaults for
    the missing ones, which the caller refuses), and the missing settings' paths."""
    cls = _SECTIONS[key]
    if not isinstance(value, dict):
        raise ConfigError(key, _what(value), f"a JSON object of {key} settings")
    names = [f.name for f in dataclasses.fields(cls)]
    for sub in value:
        if sub not in names:
            raise ConfigError(f"{key}.{sub}", f"is not a setting of {key}", f"one of {names}")
    settings = {}
    for sub, v in value.items():
        v = tuple(v) if sub in _TUPLES and isinstance(v, list) else v
        _check(key, sub, v)
        settings[sub] = v
    return cls(**settings), [f"{key}.{sub}" for sub in names if sub not in value]


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out
