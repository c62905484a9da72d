"""A Llama / Qwen3 decoder-only causal LM as the engine's own modules.

Per layer (pre-norm, residual)::

    h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))     q, k, v = qkv(rms(x))
    y = h + down(silu(gate(rms(h))) * up(rms(h)))

``RMSNorm(x) = w * (x / sqrt(mean(x^2) + eps))`` in float32, cast back before the weight (as
transformers does). RoPE rotates halves (``rotate_half``): ``x * cos + [-x2, x1] * sin`` with
``inv_freq = theta ** -(2i / D)``. Qwen3 normalises each head's query and key (``q_norm``,
``k_norm``) before RoPE; Llama has no such norm. Query/key/value and gate/up projections are
fused into one matmul each (the checkpoint's matrices stacked by rows).

Attention runs on the engine's ops: ``prefill_attention`` (causal, prompts packed back to back,
no padding) over the prompts, and ``decode_attention`` for the beams, which read their prompt's
keys/values once (shared, never copied per beam) plus their own few generated positions. The
caller passes each op's concrete backend (``ops.resolve_backends``, once per call); the
default is the PyTorch reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import FieldError
from ..ops.decode_attention import decode_attention
from ..ops.prefill_attention import prefill_attention
from .config import CausalLMConfig

__all__ = ["CausalLM", "RMSNorm", "Rotary", "apply_rope"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary:
    """Default RoPE: ``cos``/``sin`` of ``position * inv_freq`` (float32, then the model dtype)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim = head_dim
        self.theta = theta
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
            self._inv_freq[device] = 1.0 / (self.theta ** (exponent / self.head_dim))
        return self._inv_freq[device]

    def cos_sin(self, positions: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., D]`` cos and sin at integer ``positions [...]``."""
        freqs = positions[..., None].float() * self.inv_freq(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [..., H, D]`` rotated by ``cos, sin [..., D]`` (broadcast over the heads)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[..., None, :] + rotated * sin[..., None, :]


class Attention(nn.Module):
    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__()
        hq, hkv, d = config.num_heads, config.num_kv_heads, config.head_dim
        self.hq, self.hkv, self.head_dim = hq, hkv, d
        self.scale = d ** -0.5
        self.qkv = nn.Linear(config.hidden_size, (hq + 2 * hkv) * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(hq * d, config.hidden_size, bias=config.attention_bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """RoPE'd queries ``[..., Hq, D]``, keys and values ``[..., Hkv, D]`` of ``x [..., d]``."""
        lead = x.shape[:-1]
        d, hq = self.head_dim, self.hq
        qk, v = self.qkv(x).split([(hq + self.hkv) * d, self.hkv * d], dim=-1)
        qk, v = qk.view(*lead, hq + self.hkv, d), v.view(*lead, self.hkv, d)
        if self.q_norm is not None:
            return (apply_rope(self.q_norm(qk[..., :hq, :]), cos, sin),
                    apply_rope(self.k_norm(qk[..., hq:, :]), cos, sin), v)
        qk = apply_rope(qk, cos, sin)  # queries and keys rotated together
        return qk[..., :hq, :], qk[..., hq:, :], v


class MLP(nn.Module):
    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__()
        self.inner = config.intermediate_size
        self.gate_up = nn.Linear(config.hidden_size, 2 * self.inner, bias=config.mlp_bias)
        self.down = nn.Linear(self.inner, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.inner, dim=-1)
        return self.down(F.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.post_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Output projection, residual and MLP after the attention ``attn_out [..., Hq, D]``."""
        h = x + self.attn.o_proj(attn_out.flatten(-2))
        return h + self.mlp(self.post_norm(h))


class CausalLM(nn.Module):
    """The model: embedding, ``num_layers`` layers, final RMSNorm, LM head (tied or not).

    State-dict names are the engine's own (``weights.py`` maps a transformers checkpoint onto
    them): ``embed.weight``, ``layers.N.{input_norm,post_norm}.weight``,
    ``layers.N.attn.{qkv,o_proj}.{weight,bias}``, ``layers.N.attn.{q_norm,k_norm}.weight``,
    ``layers.N.mlp.{gate_up,down}.{weight,bias}``, ``norm.weight``, ``lm_head.weight``.
    """

    def __init__(self, config: CausalLMConfig) -> None:
        if not isinstance(config, CausalLMConfig):
            raise FieldError("config", f"is a {type(config).__name__}", "a CausalLMConfig")
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (None if config.tie_word_embeddings
                        else nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.rotary = Rotary(config.head_dim, config.rope_theta)

    @property
    def head_weight(self) -> torch.Tensor:
        """``[vocab, d]`` output embedding (the input embedding when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Logits of token ids ``start .. stop-1`` for final hidden states ``[..., d]``."""
        return F.linear(hidden, self.head_weight[start:stop])

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor,
                last: torch.Tensor | None = None, *, backend: str = "torch"):
        """Run packed prompts (``tokens [T]``, ``positions [T]``, boundaries ``cu_seqlens [N+1]``).

        Returns ``(hidden, keys, values)``: the final-norm hidden states of the rows ``last``
        (all ``T`` rows when None), and per layer the prompts' RoPE'd keys and values
        ``[T, Hkv, D]``. The last layer runs its output projection and MLP on the rows ``last``
        only (the other rows only feed its keys and values). ``backend``: the concrete
        ``prefill_attention`` backend ("torch" | "triton"), resolved by the caller.
        """
        x = self.embed(tokens)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.project(layer.input_norm(x), cos, sin)
            out = prefill_attention(q, k, v, cu_seqlens, causal=True, scale=layer.attn.scale,
                                    backend=backend, check_seqlens=False)  # built by the engine
            if last is not None and i == len(self.layers) - 1:
                x, out = x[last], out[last]
            x = layer.finish(x, out)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, ctx_k: list[torch.Tensor],
               ctx_v: list[torch.Tensor], ctx_len: torch.Tensor, own_k: list[torch.Tensor],
               own_v: list[torch.Tensor], *, backend: str = "torch"):
        """One new token per beam: ``tokens [N, P]`` at ``positions [N, P]``.

        Beam ``(n, p)`` attends to its prompt's keys/values ``ctx_k[layer] [N, Hkv, S, D]``
        (``ctx_len[n]`` valid, shared by the request's beams) and to its own earlier generated
        positions ``own_k[layer] [N, P, Hkv, t, D]`` plus the new one. Returns ``(hidden [N, P, d]``
        after the final norm, ``own_k``, ``own_v)`` with the new position appended (``t + 1``).
        ``backend``: the concrete ``decode_attention`` backend, resolved by the caller.
        """
        x = self.embed(tokens)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.project(layer.input_norm(x), cos, sin)
            ok = torch.cat([own_k[i], k[:, :, :, None]], dim=3)
            ov = torch.cat([own_v[i], v[:, :, :, None]], dim=3)
            out = decode_attention(q, ctx_k[i], ctx_v[i], ctx_len, ok, ov, scale=layer.attn.scale,
                                   backend=backend)
            x = layer.finish(x, out)
            new_k.append(ok)
            new_v.append(ov)
        return self.norm(x), new_k, new_v
