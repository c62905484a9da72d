"""PyTorch reference of ``decode_attention`` (semantics in ``decode_attention.py``): the Triton
and CUDA backends are tested against it, and ``backend="torch"`` serves it."""

from __future__ import annotations

import math

import torch

__all__ = ["decode_attention_torch"]


def decode_attention_torch(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None = None,
    own_v: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """PyTorch reference: one masked float32 softmax over the concatenated (context, own) scores.

    The query heads of a key/value group are stacked with the beams (``[N, Hkv, P * G, D]``), so
    the shared context is read by one batched matmul per request and key/value head, with no
    copy of the context per query head or per beam.
    """
    # contiguous operands: a strided view of a one-request batch would take another BLAS path
    # whose sums round differently, and a request's result must not depend on its batch-mates
    q, ctx_k, ctx_v = q.contiguous(), ctx_k.contiguous(), ctx_v.contiguous()
    if own_k is not None:
        own_k, own_v = own_k.contiguous(), own_v.contiguous()
    n, p, hq, d = q.shape
    hkv, s = ctx_k.shape[1], ctx_k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qf = q.float().view(n, p, hkv, group, d)  # head h = g * group + j
    stacked = qf.permute(0, 2, 1, 3, 4).reshape(n * hkv, p * group, d)
    keys_t = ctx_k.float().transpose(-1, -2).reshape(n * hkv, d, s)
    # 0 on the valid context positions, -inf on the padding: added by the matmul itself
    bias = torch.zeros(n, s, device=q.device).masked_fill_(
        torch.arange(s, device=q.device) >= ctx_len[:, None], float("-inf"))
    bias = bias[:, None, None, :].expand(n, hkv, 1, s).reshape(n * hkv, 1, s)
    score = torch.baddbmm(bias, stacked, keys_t, alpha=scale).view(n, hkv, p * group, s)
    own = own_k is not None and own_k.shape[3] > 0
    if own:
        t = own_k.shape[3]
        own_score = torch.matmul(qf, own_k.float().transpose(-1, -2)) * scale  # [N, P, Hkv, G, T]
        score = torch.cat([score, own_score.permute(0, 2, 1, 3, 4).reshape(n, hkv, p * group, t)],
                          dim=-1)
    weight = torch.softmax(score, dim=-1)
    out = torch.matmul(weight[..., :s], ctx_v.float())  # [N, Hkv, P*G, D]
    out = out.view(n, hkv, p, group, d).permute(0, 2, 1, 3, 4)  # [N, P, Hkv, G, D]
    if own:
        own_weight = weight[..., s:].reshape(n, hkv, p, group, t).permute(0, 2, 1, 3, 4)
        out = out + torch.matmul(own_weight, own_v.float())
    has_key = (ctx_len > 0) | own  # a query without any key (softmax of all -inf) outputs zeros
    out = torch.where(has_key[:, None, None, None, None], out, torch.zeros_like(out))
    return out.reshape(n, p, hq, d).to(q.dtype)
