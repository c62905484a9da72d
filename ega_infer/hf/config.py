"""The config of a Hugging Face Llama or Qwen3 causal LM, read from its ``config.json``.

Only what the forward pass needs is kept, in one frozen dataclass validated on construction.
Missing keys take the defaults of transformers' ``LlamaConfig`` / ``Qwen3Config`` (``head_dim``:
``hidden_size // num_attention_heads`` for Llama, 128 for Qwen3). Features this engine does not
implement raise ``ConfigError`` instead of running silently wrong: a RoPE type other than
``default`` (``rope_scaling`` / ``rope_parameters``), partial rotary embeddings, sliding-window
layers, and an activation other than SiLU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import CheckpointError, ConfigError

__all__ = ["ARCHITECTURES", "CausalLMConfig"]

# architecture name in config.json -> (model_type, has per-head q/k RMSNorm)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", False),
    "Qwen3ForCausalLM": ("qwen3", True),
}
_DTYPES = ("float32", "bfloat16", "float16")
_DEFAULT_THETA = 10000.0


@dataclass(frozen=True, slots=True)
class CausalLMConfig:
    """Shapes and constants of a decoder-only Llama / Qwen3 model.

    ``qk_norm``: Qwen3's RMSNorm over each head's query and key before RoPE. ``dtype``: the
    checkpoint's recorded dtype name (``None`` when config.json has none).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = _DEFAULT_THETA
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError("architectures", f"is {self.architecture!r}",
                              f"one of {sorted(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"is {value!r}", "a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_key_value_heads", f"{self.num_kv_heads} does not divide "
                              f"num_attention_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ConfigError("head_dim", f"is {self.head_dim}",
                              "an even number (RoPE rotates halves)")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(name, f"is {value!r}", "a positive number")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"is {getattr(self, name)!r}", "true or false")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError("dtype", f"is {self.dtype!r}", f"one of {_DTYPES} or absent")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CausalLMConfig:
        """The config of a parsed config.json (transformers 4.x or 5.x layout)."""
        architectures = raw.get("architectures") or []
        if len(architectures) != 1:
            raise ConfigError("architectures", f"is {architectures!r}",
                              f"one of {sorted(ARCHITECTURES)} as a one-element list")
        architecture = architectures[0]
        if architecture not in ARCHITECTURES:
            raise ConfigError("architectures", f"is {architectures!r}",
                              f"one of {sorted(ARCHITECTURES)}")
        model_type, qk_norm = ARCHITECTURES[architecture]
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError("hidden_act", f"is {act!r}", "'silu' (SwiGLU MLP)")
        _check_full_attention(raw)
        hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
        head_dim = raw.get("head_dim")
        if head_dim is None:
            head_dim = 128 if model_type == "qwen3" else _floor_div(hidden, heads)
        kv_heads = raw.get("num_key_value_heads")
        dtype = raw.get("dtype", raw.get("torch_dtype"))
        return cls(
            architecture=architecture,
            vocab_size=raw.get("vocab_size"),
            hidden_size=hidden,
            intermediate_size=raw.get("intermediate_size"),
            num_layers=raw.get("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=heads if kv_heads is None else kv_heads,
            head_dim=head_dim,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(raw),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            attention_bias=raw.get("attention_bias", False),
            mlp_bias=raw.get("mlp_bias", False),
            qk_norm=qk_norm,
            dtype=dtype,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> CausalLMConfig:
        """Read ``path`` (a config.json, or a model directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file (a Hugging Face model directory holds "
                                  "config.json and model.safetensors)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable config ({exc})") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        return cls.from_dict(raw)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


def _floor_div(a, b):
    if isinstance(a, int) and isinstance(b, int) and not isinstance(b, bool) and b > 0:
        return a // b
    return None  # the constructor names the bad field


def _rope_theta(raw: dict[str, Any]) -> float:
    """``rope_theta`` of a default RoPE; any other RoPE type raises ConfigError."""
    params = raw.get("rope_parameters")
    field = "rope_parameters"
    if params is None and raw.get("rope_scaling") is not None:
        params, field = raw["rope_scaling"], "rope_scaling"
    params = dict(params or {})
    if not isinstance(params.get("rope_type", params.get("type", "default")), str):
        raise ConfigError(field, f"is {params!r}", "a dict with a 'rope_type' string")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{field}.rope_type", f"is {rope_type!r}",
                          "'default' (scaled RoPE variants are not implemented)")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConfigError("partial_rotary_factor", f"is {partial!r}", "1.0 (full rotary embedding)")
    theta = params.get("rope_theta", raw.get("rope_theta", _DEFAULT_THETA))
    if isinstance(theta, (int, float)) and not isinstance(theta, bool):
        return float(theta)
    return theta  # the constructor names the bad value


def _check_full_attention(raw: dict[str, Any]) -> None:
    layer_types = raw.get("layer_types") or []
    sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
    if sliding:
        raise ConfigError(f"layer_types[{sliding[0]}]", f"is {layer_types[sliding[0]]!r}",
                          "'full_attention' (sliding-window layers are not implemented)")
    if raw.get("use_sliding_window") and not layer_types:
        raise ConfigError("use_sliding_window", "is true", "false (not implemented)")
