"""Transformer building blocks shared by the encoder, the decoder, the creative head and the
reward model. Attention takes precomputed keys and values so a request's context is projected
once and then read by all of its beams in one call (beams are the queries)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "RMSNorm", "Attention", "FeedForward", "EncoderBlock", "DecoderBlock", "MLP", "rowwise"]

_ROW_ALIGN = 64  # floats: a multiple of every CPU vector width times PyTorch's 2x unroll


def rowwise(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` for an elementwise ``fn`` (exp, sigmoid, ...) with, on a CPU, each row
    (last dim) padded to a multiple of 64 elements. PyTorch evaluates such functions with
    vector code in blocks of the flattened tensor and scalar code for a ragged end, and the two
    round differently: aligned rows put every request's values through the same code, whatever
    its position in the batch."""
    width = tensors[0].shape[-1]
    if tensors[0].device.type != "cpu" or width % _ROW_ALIGN == 0:
        return fn(*tensors)
    pad = -width % _ROW_ALIGN
    return fn(*(F.pad(t, (0, pad)) for t in tensors))[..., :width]


_GEMM_ROWS = 8  # rows the CPU BLAS multiplies at a time: 4 on AVX2 (AMD EPYC), 8 on AVX-512 (Xeon)


class Linear(nn.Linear):
    """``nn.Linear`` whose product on a CPU always has a multiple of 8 rows (zero rows added,
    then dropped). The CPU BLAS (MKL) multiplies 4 (AVX2) or 8 (AVX-512) rows at a time and the
    rest with another kernel that rounds differently; which rows are "the rest" depends on the
    batch's size and the thread count, so without this a request's slate would depend on its
    batch-mates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if x.device.type != "cpu" or rows % _GEMM_ROWS == 0:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        flat = torch.cat([flat, flat.new_zeros(-rows % _GEMM_ROWS, flat.shape[1])])
        return F.linear(flat, self.weight, self.bias)[:rows].reshape(*x.shape[:-1], self.out_features)


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
    memory) and projects the output. On a CPU it is spelled out as matrix products and a
    softmax (``math_attention``): PyTorch's fused CPU kernel splits its work across threads so
    that a row's result depends on where it sits in the batch, and a request's slate must not
    depend on its batch-mates.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = Linear(n_heads * self.head_dim, d_model, bias=False)

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
        if q.device.type == "cpu":
            out = math_attention(q, k, v, mask)
        else:
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
        backend: str = "torch",
    ) -> torch.Tensor:
        """One query per beam ``q [N, P, H, hd]`` over its request's context ``[N, Hkv, S, hd]``
        (first ``ctx_len`` positions) and its own positions ``[N, P, Hkv, T, hd]``, through the
        ``decode_attention`` kernel op; returns the projected output ``[N, P, d]``."""
        from ..ops.decode_attention import decode_attention

        out = decode_attention(q, ctx_k, ctx_v, ctx_len, own_k, own_v, backend=backend)
        return self.o_proj(out.flatten(-2))

    def attend_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, causal: bool, backend: str = "torch") -> torch.Tensor:
        """Self-attention of sequences packed without padding, ``x [T, d]`` with boundaries
        ``cu_seqlens [B + 1]``, through the ``prefill_attention`` kernel op."""
        from ..ops.prefill_attention import prefill_attention

        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))
        # cu_seqlens comes from collate (checked there by construction): no sync per layer
        out = prefill_attention(q, k, v, cu_seqlens, causal=causal, backend=backend, check_seqlens=False)
        return self.o_proj(out.flatten(-2))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention as batched matrix products (each batch element its own
    product of fixed shape): the query heads of a key/value group are the rows of one product."""
    *batch, heads, length, dim = q.shape
    kv_heads = k.shape[-3]
    k, v = k.contiguous(), v.contiguous()  # one BLAS path whatever the batch (see Linear)
    q = q.reshape(*batch, kv_heads, heads // kv_heads * length, dim)
    score = (q @ k.transpose(-1, -2)).mul_(dim ** -0.5).unflatten(-2, (heads // kv_heads, length))
    if mask is not None:  # [..., Lq, Lk] or [..., 1, Lq|1, Lk]: broadcast over the head group
        score = score.masked_fill(~(mask.unsqueeze(-3) if mask.dim() >= 3 else mask), float("-inf"))
    weight = torch.softmax(score.float(), dim=-1).to(v.dtype).flatten(-3, -2)
    return (weight @ v).reshape(*batch, heads, length, dim)


class FeedForward(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = Linear(d_model, hidden, bias=False)
        self.up = Linear(d_model, hidden, bias=False)
        self.down = Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(rowwise(F.silu, self.gate(x)) * self.up(x))


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

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, backend: str = "torch") -> torch.Tensor:
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
            layers += [Linear(width, h), nn.ReLU()]
            width = h
        layers.append(Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
