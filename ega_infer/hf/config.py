"""The config of a Hugging Face Llama or Qwen3 causal LM, read from its ``config.json``.

Only what the forward pass needs is kept, in one frozen dataclass validated on construction.
The model's sizes must be present; other missing keys take the defaults of transformers'
``LlamaConfig`` / ``Qwen3Config`` (``head_dim``: ``hidden_size // num_attention_heads`` for
Llama, 128 for Qwen3; ``max_position_embeddings``: 2048 and 32768). A null or wrong-typed value
raises ``ConfigError`` naming its config.json key (``ConfigFileError``, also a
``CheckpointError``, when read from a file). Features this engine does not
implement raise ``ConfigError`` instead of running silently wrong: a RoPE type other than
``default`` (``rope_scaling`` / ``rope_parameters``), partial rotary embeddings, sliding-window
layers, and an activation other than SiLU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import CheckpointError, ConfigError, ConfigFileError
from ._checks import kind, show

__all__ = ["ARCHITECTURES", "CausalLMConfig"]

# architecture name in config.json -> (model_type, has per-head q/k RMSNorm)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", False),
    "Qwen3ForCausalLM": ("qwen3", True),
}
_DTYPES = ("float32", "bfloat16", "float16")
_DEFAULT_THETA = 10000.0
_MAX_POSITIONS = {"llama": 2048, "qwen3": 32768}  # transformers' defaults
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads")
# dataclass attribute -> config.json key, where they differ
_JSON_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
              "num_kv_heads": "num_key_value_heads", "architecture": "architectures"}
_REQUIRED = object()  # _value: no default, the key must be there
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True, slots=True)
class CausalLMConfig:
    """Shapes and constants of a decoder-only Llama / Qwen3 model.

    ``qk_norm``: Qwen3's RMSNorm over each head's query and key before RoPE. ``dtype``: the
    checkpoint's recorded dtype name (``None`` when config.json has none).
    ``max_position_embeddings``: the positions the model was trained for; a prompt plus the
    generated levels fed back must fit (transformers' defaults: 2048 Llama, 32768 Qwen3).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = _DEFAULT_THETA
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ConfigError("architectures", f"is {self.architecture!r}",
                              f"one of {sorted(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"is {show(value)}", "a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_key_value_heads", f"{self.num_kv_heads} does not divide "
                              f"num_attention_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ConfigError("head_dim", f"is {self.head_dim}",
                              "an even number (RoPE rotates halves)")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 < value < math.inf):
                raise ConfigError(name, f"is {show(value)}", "a finite positive number")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"is {getattr(self, name)!r}", "true or false")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError("dtype", f"is {self.dtype!r}", f"one of {_DTYPES} or absent")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CausalLMConfig:
        """The config of a parsed config.json (transformers 4.x or 5.x layout).

        A missing or null size (``vocab_size``, ``hidden_size``, ``intermediate_size``,
        ``num_hidden_layers``, ``num_attention_heads``) or a value of the wrong type raises
        ``ConfigError`` naming the config.json key. Null stands for "absent" only where
        transformers itself writes or accepts it: ``head_dim``, ``num_key_value_heads``,
        ``rope_scaling``, ``rope_parameters``, ``layer_types``, ``dtype`` / ``torch_dtype``.
        """
        if not isinstance(raw, dict):
            raise ConfigError("config", f"is {kind(raw)}", "a JSON object")
        architectures = raw.get("architectures")
        if (not isinstance(architectures, list) or len(architectures) != 1
                or not isinstance(architectures[0], str)):
            raise ConfigError("architectures", f"is {show(architectures)}",
                              f"one of {sorted(ARCHITECTURES)} as a one-element list")
        architecture = architectures[0]
        if architecture not in ARCHITECTURES:
            raise ConfigError("architectures", f"is {architectures!r}",
                              f"one of {sorted(ARCHITECTURES)}")
        model_type, qk_norm = ARCHITECTURES[architecture]
        act = _value(raw, "hidden_act", str, "silu")
        if act != "silu":
            raise ConfigError("hidden_act", f"is {act!r}", "'silu' (SwiGLU MLP)")
        _check_full_attention(raw)
        sizes = {key: _value(raw, key, int) for key in _SIZES}
        hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
        head_dim = _value(raw, "head_dim", int, None)
        if head_dim is None:
            head_dim = 128 if model_type == "qwen3" else _floor_div(hidden, heads)
        kv_heads = _value(raw, "num_key_value_heads", int, None)
        dtype = _value(raw, "dtype", str, None)
        if dtype is None:
            dtype = _value(raw, "torch_dtype", str, None)
        values = dict(
            architecture=architecture,
            vocab_size=sizes["vocab_size"],
            hidden_size=hidden,
            intermediate_size=sizes["intermediate_size"],
            num_layers=sizes["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=heads if kv_heads is None else kv_heads,
            head_dim=head_dim,
            max_position_embeddings=_value(raw, "max_position_embeddings", int,
                                           _MAX_POSITIONS[model_type]),
            rms_norm_eps=_value(raw, "rms_norm_eps", float, 1e-6),
            rope_theta=_rope_theta(raw),
            tie_word_embeddings=_value(raw, "tie_word_embeddings", bool, False),
            attention_bias=_value(raw, "attention_bias", bool, False),
            mlp_bias=_value(raw, "mlp_bias", bool, False),
            qk_norm=qk_norm,
            dtype=dtype,
        )
        try:
            return cls(**values)
        except ConfigError as exc:  # name the config.json key, not the attribute
            key = _JSON_KEYS.get(exc.field, exc.field)
            raise ConfigError(key, exc.problem, exc.expected) from None

    @classmethod
    def from_file(cls, path: str | Path) -> CausalLMConfig:
        """Read ``path`` (a config.json, or a model directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file (a Hugging Face model directory holds "
                                  "config.json and model.safetensors)") from None
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
            raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: holds {kind(raw)}, not a JSON object")
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigFileError(exc.field, f"{exc.problem} (in {path})", exc.expected) from None

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


def _floor_div(a, b):
    if isinstance(a, int) and isinstance(b, int) and not isinstance(b, bool) and b > 0:
        return a // b
    return None  # the constructor names the bad field


def _value(raw: dict[str, Any], key: str, want: type, default: Any = _REQUIRED) -> Any:
    """``raw[key]`` checked to be ``want`` (int, float, bool or str); ``default`` when absent,
    or null where the default is None. ``ConfigError`` naming ``key`` otherwise."""
    value = raw.get(key)
    if value is None:
        if default is _REQUIRED or (key in raw and default is not None):
            raise ConfigError(key, "is missing" if key not in raw else "is null",
                              _TYPE_NAMES[want])
        return default
    if want is bool:
        ok = isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(key, f"is {show(value)} ({kind(value)})", _TYPE_NAMES[want])
    return float(value) if want is float else value


def _rope_theta(raw: dict[str, Any]) -> float:
    """``rope_theta`` of a default RoPE; any other RoPE type raises ConfigError."""
    params = raw.get("rope_parameters")
    field = "rope_parameters"
    if params is None and raw.get("rope_scaling") is not None:
        params, field = raw["rope_scaling"], "rope_scaling"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(field, f"is {show(params)} ({kind(params)})",
                          "an object with a 'rope_type' string, or null")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if not isinstance(rope_type, str):
        raise ConfigError(f"{field}.rope_type", f"is {show(rope_type)}", "a string")
    if rope_type != "default":
        raise ConfigError(f"{field}.rope_type", f"is {rope_type!r}",
                          "'default' (scaled RoPE variants are not implemented)")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is not None and (isinstance(partial, bool) or partial not in (1, 1.0)):
        raise ConfigError("partial_rotary_factor", f"is {show(partial)}",
                          "1.0 (full rotary embedding)")
    if "rope_theta" not in params:
        source, name, default = raw, "rope_theta", _DEFAULT_THETA
    else:
        source, name, default = params, f"{field}.rope_theta", _REQUIRED
    try:
        theta = _value(source, "rope_theta", float, default)
    except ConfigError as exc:
        raise ConfigError(name, exc.problem, exc.expected) from None
    if not 0 < theta < math.inf:
        raise ConfigError(name, f"is {theta!r}", "a finite positive number")
    return theta


def _check_full_attention(raw: dict[str, Any]) -> None:
    layer_types = raw.get("layer_types")
    if layer_types is None:
        layer_types = []
    if not isinstance(layer_types, list):
        raise ConfigError("layer_types", f"is {show(layer_types)} ({kind(layer_types)})",
                          "a list of 'full_attention', or null")
    sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
    if sliding:
        raise ConfigError(f"layer_types[{sliding[0]}]", f"is {show(layer_types[sliding[0]])}",
                          "'full_attention' (sliding-window layers are not implemented)")
    if _value(raw, "use_sliding_window", bool, False) and not layer_types:
        raise ConfigError("use_sliding_window", "is true", "false (not implemented)")
