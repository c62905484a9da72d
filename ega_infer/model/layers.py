"""Transformer building blocks shared by the encoder, the decoder, the creative head and the
reward model. Attention takes precomputed keys and values so a request's context is projected
once and then read by all of its beams in one call (beams are the queries)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "Attention", "FeedForward", "EncoderBlock", "DecoderBlock", "MLP"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics, then x * rsqrt(mean(x^2) + eps) * weight in the input dtype: one
        # fused kernel on CUDA (aten._fused_rms_norm) where the spelled-out form launched six
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Attention(nn.Module):
    """Grouped-query attention with separate query and key/value projections.

    ``project_kv`` and ``project_q`` return ``[..., heads, length, head_dim]``; ``attend`` runs
    scaled dot-product attention with ``enable_gqa`` (key/value heads are never expanded in
    memory) and projects the output.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        return q.transpose(-2, -3)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(-2, -3)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(-2, -3)
        return k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``q [..., H, Lq, hd]``, ``k, v [..., Hkv, Lk, hd]``, bool ``mask`` (True = attend)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(-2, -3).flatten(-2))

    def attend_beams(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        ctx_len: torch.Tensor,
        own_k: torch.Tensor | None = None,
        own_v: torch.Tensor | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """One query per beam ``q [N, P, H, hd]`` over its request's context ``[N, Hkv, S, hd]``
        (first ``ctx_len`` positions) and its own positions ``[N, P, Hkv, T, hd]``, through the
        ``decode_attention`` kernel op; returns the projected output ``[N, P, d]``."""
        from ..ops.decode_attention import decode_attention

        out = decode_attention(q, ctx_k, ctx_v, ctx_len, own_k, own_v, backend=backend)
        return self.o_proj(out.flatten(-2))

    def attend_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool, backend: str = "auto") -> torch.Tensor:
        """Self-attention of sequences packed without padding, ``x [T, d]`` with boundaries
        ``cu_seqlens [B + 1]``, through the ``prefill_attention`` kernel op."""
        from ..ops.prefill_attention import prefill_attention

        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))
        # cu_seqlens comes from collate (checked there by construction): no sync per layer
        out = prefill_attention(q, k, v, cu_seqlens, causal=causal, backend=backend, check_seqlens=False)
        return self.o_proj(out.flatten(-2))


class FeedForward(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention block (encoder, reward model)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps)
        self.attn = Attention(d_model, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(d_model, eps)
        self.ffn = FeedForward(d_model, ffn_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.attn_norm(x)
        k, v = self.attn.project_kv(h)
        x = x + self.attn.attend(self.attn.project_q(h), k, v, mask)
        return x + self.ffn(self.ffn_norm(x))

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """The same block on sequences packed without padding, ``x [T, d]``."""
        x = x + self.attn.attend_packed(self.attn_norm(x), cu_seqlens, causal=False, backend=backend)
        return x + self.ffn(self.ffn_norm(x))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the context, FFN.

    The block is driven by its owner, which keeps the self-attention cache and the context
    keys/values; see ``LazyARDecoder``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        self.self_norm = RMSNorm(d_model, eps)
        self.self_attn = Attention(d_model, n_heads, n_kv_heads)
        self.cross_norm = RMSNorm(d_model, eps)
        self.cross_attn = Attention(d_model, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(d_model, eps)
        self.ffn = FeedForward(d_model, ffn_hidden)

    def context_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of a context memory ``[N, S, d] -> [N, Hkv, S, hd]``."""
        return self.cross_attn.project_kv(memory)

    def cross(self, x: torch.Tensor, ctx_k: torch.Tensor, ctx_v: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """Cross-attention of ``x [N, Q, d]`` (all queries of a request together) to its context."""
        q = self.cross_attn.project_q(self.cross_norm(x))
        return x + self.cross_attn.attend(q, ctx_k, ctx_v, ctx_mask)


class MLP(nn.Module):
    """ReLU MLP ending in one output unit (reward towers, payment network)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
