"""PyTorch reference of ``prefill_attention`` (semantics in ``prefill_attention.py``): the
Triton backend is tested against it, and ``backend="torch"`` serves it."""

from __future__ import annotations

import math

import torch

__all__ = ["prefill_attention_torch"]


def prefill_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """PyTorch reference: one float32 masked softmax per sequence.

    The query heads of a key/value group are stacked (``[Hkv, G * L, D]``), so each sequence's
    keys and values are read by one batched matmul per key/value head, without copies per query
    head; the causal mask is added by the score matmul itself (``baddbmm``).
    """
    total, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.zeros((total, hq, d), dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        if length <= 0:
            continue
        qs = q[start:end].float().view(length, hkv, group, d).permute(1, 2, 0, 3)
        qs = qs.reshape(hkv, group * length, d)  # rows: (query head in group, token)
        ks = k[start:end].float().permute(1, 2, 0)  # [Hkv, D, L]
        vs = v[start:end].float().transpose(0, 1)  # [Hkv, L, D]
        bias = torch.zeros(length, length, device=q.device)
        if causal:
            later = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
            bias.masked_fill_(later, float("-inf"))
        bias = bias.repeat(group, 1)  # [G * L, L]
        score = torch.baddbmm(bias, qs, ks, alpha=scale)  # [Hkv, G * L, L]
        rows = torch.softmax(score, dim=-1) @ vs  # [Hkv, G * L, D]
        out[start:end] = rows.view(hkv, group, length, d).permute(2, 0, 1, 3).reshape(length, hq, d)
    return out.to(q.dtype)
