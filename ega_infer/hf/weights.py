"""Read a transformers Llama / Qwen3 checkpoint (safetensors) into ``CausalLM``'s state dict.

transformers names -> ours (``N`` a layer)::

    model.embed_tokens.weight                          embed.weight
    model.layers.N.input_layernorm.weight              layers.N.input_norm.weight
    model.layers.N.self_attn.{q,k,v}_proj.*            layers.N.attn.qkv.*  (rows stacked q, k, v)
    model.layers.N.self_attn.o_proj.*                  layers.N.attn.o_proj.*
    model.layers.N.self_attn.{q,k}_norm.weight         layers.N.attn.{q,k}_norm.weight (Qwen3)
    model.layers.N.post_attention_layernorm.weight     layers.N.post_norm.weight
    model.layers.N.mlp.{gate,up}_proj.*                layers.N.mlp.gate_up.*  (stacked gate, up)
    model.layers.N.mlp.down_proj.*                     layers.N.mlp.down.*
    model.norm.weight                                  norm.weight
    lm_head.weight                                     lm_head.weight (untied only)

(``*``: ``weight``, plus ``bias`` when ``attention_bias`` / ``mlp_bias`` is set.)

The weights come from ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. A missing tensor, a tensor of the wrong shape or a tensor the
config does not account for raises ``CheckpointError`` naming the tensor, and so does a tensor
that is not floating point (``rotary_emb.inv_freq`` buffers of old checkpoints, and
``lm_head.weight`` of a tied model, are ignored).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..exceptions import CheckpointError
from .config import CausalLMConfig

__all__ = ["hf_shapes", "load_hf_state_dict", "read_safetensors"]

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_TENSORS_PER_LAYER = 9  # two norms, q/k/v/o, gate/up/down: the fewest any layer has
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_shapes(config: CausalLMConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a transformers checkpoint of ``config`` holds, with its shape."""
    d, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    hq, hkv, hd = config.num_heads, config.num_kv_heads, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d),
                                          "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(config.num_layers):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = (d,)
        shapes[pre + "post_attention_layernorm.weight"] = (d,)
        for name, out, inp in (("q_proj", hq * hd, d), ("k_proj", hkv * hd, d),
                               ("v_proj", hkv * hd, d), ("o_proj", d, hq * hd)):
            shapes[pre + f"self_attn.{name}.weight"] = (out, inp)
            if config.attention_bias:
                shapes[pre + f"self_attn.{name}.bias"] = (out,)
        if config.qk_norm:
            shapes[pre + "self_attn.q_norm.weight"] = (hd,)
            shapes[pre + "self_attn.k_norm.weight"] = (hd,)
        for name, out, inp in (("gate_proj", inner, d), ("up_proj", inner, d),
                               ("down_proj", d, inner)):
            shapes[pre + f"mlp.{name}.weight"] = (out, inp)
            if config.mlp_bias:
                shapes[pre + f"mlp.{name}.bias"] = (out,)
    return shapes


def read_safetensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``model_dir`` (single file or sharded), on the CPU."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    single, index = model_dir / WEIGHTS_FILE, model_dir / INDEX_FILE
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc!r})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map is not a map of tensor names to shard "
                                  "file names in the model directory")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{model_dir}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors


def load_hf_state_dict(model_dir: str | Path, config: CausalLMConfig,
                       dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``CausalLM``'s state dict from the checkpoint in ``model_dir``, cast to ``dtype`` (CPU)."""
    tensors = read_safetensors(model_dir)
    if config.num_layers * _TENSORS_PER_LAYER > len(tensors):  # before listing every layer
        layer = next(i for i in range(config.num_layers)
                     if f"model.layers.{i}.input_layernorm.weight" not in tensors)
        raise CheckpointError(f"{model_dir}: missing the tensors of layer {layer} and above, "
                              f"first ['model.layers.{layer}.input_layernorm.weight'] "
                              f"(config.json has num_hidden_layers {config.num_layers}; the "
                              f"checkpoint holds {len(tensors)} tensors)")
    expected = hf_shapes(config)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise CheckpointError(f"{model_dir}: missing {len(missing)} tensor(s) the config needs, "
                              f"first {missing[:3]}")
    extra = [name for name in tensors if name not in expected and not _IGNORED.search(name)
             and not (name == "lm_head.weight" and config.tie_word_embeddings)]
    if extra:
        raise CheckpointError(f"{model_dir}: {len(extra)} tensor(s) the config does not account "
                              f"for, first {extra[:3]} (bias or norm flags in config.json?)")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{model_dir}: {name} has shape {tuple(tensors[name].shape)}; "
                                  f"expected {shape} from config.json")
        if not tensors[name].is_floating_point():
            raise CheckpointError(f"{model_dir}: {name} has dtype {tensors[name].dtype}; "
                                  "expected floating-point weights")

    def get(name: str) -> torch.Tensor:
        return tensors[name].to(dtype)

    state = {"embed.weight": get("model.embed_tokens.weight"),
             "norm.weight": get("model.norm.weight")}
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = get("lm_head.weight")
    kinds = ["weight"] + (["bias"] if config.attention_bias else [])
    mlp_kinds = ["weight"] + (["bias"] if config.mlp_bias else [])
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        state[dst + "input_norm.weight"] = get(src + "input_layernorm.weight")
        state[dst + "post_norm.weight"] = get(src + "post_attention_layernorm.weight")
        for kind in kinds:
            state[dst + f"attn.qkv.{kind}"] = torch.cat(
                [get(src + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            state[dst + f"attn.o_proj.{kind}"] = get(src + f"self_attn.o_proj.{kind}")
        if config.qk_norm:
            state[dst + "attn.q_norm.weight"] = get(src + "self_attn.q_norm.weight")
            state[dst + "attn.k_norm.weight"] = get(src + "self_attn.k_norm.weight")
        for kind in mlp_kinds:
            state[dst + f"mlp.gate_up.{kind}"] = torch.cat(
                [get(src + f"mlp.{p}_proj.{kind}") for p in ("gate", "up")])
            state[dst + f"mlp.down.{kind}"] = get(src + f"mlp.down_proj.{kind}")
    return state
