"""Decode attention of a request's beams: one query per beam over the request's shared context
followed by the beam's own positions (the LazyAR tail step).

For request n, beam p, query head h with key/value head ``g = h // (Hq // Hkv)``::

    keys    = ctx_k[n, g, :ctx_len[n]]  ++  own_k[n, p, g, :T]
    values  = ctx_v[n, g, :ctx_len[n]]  ++  own_v[n, p, g, :T]
    out[n, p, h] = softmax(scale * keys @ q[n, p, h]) @ values       (scale = 1/sqrt(D) default)

One softmax covers both parts. A query with no key at all (``ctx_len[n] <= 0`` and ``T == 0``)
outputs zeros. Context positions ``s >= ctx_len[n]`` are padding and never read; ``ctx_len``
values above ``S`` count as ``S``. Accumulation is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from ..exceptions import FieldError
from ..kernels.limits import ATTENTION_TRITON_MAX_HEAD_DIM
from .decode_attention_cuda import MAX_HEAD_DIM as CUDA_MAX_HEAD_DIM
from ._dispatch import Backend, Capabilities, head_dim_up_to, resolve

__all__ = ["decode_attention", "CAPABILITIES"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


CAPABILITIES = Capabilities("decode_attention", {
    "cuda": head_dim_up_to(CUDA_MAX_HEAD_DIM),
    "triton": head_dim_up_to(ATTENTION_TRITON_MAX_HEAD_DIM),
    "torch": lambda **_: None,
})


def decode_attention(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None = None,
    own_v: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Attention of every beam's query to its request's context and to its own positions.

    ``out[n, p, h] = softmax(scale * [ctx_k[n, g, :ctx_len[n]] ; own_k[n, p, g]] q[n, p, h])
    @ [ctx_v[n, g, :ctx_len[n]] ; own_v[n, p, g]]`` with ``g = h // (Hq // Hkv)``.

    Parameters
    ----------
    q : [N, P, Hq, D] float32, bfloat16 or float16; one query per beam (P beams per request).
    ctx_k, ctx_v : [N, Hkv, S, D] the request's context keys/values, shared by its beams.
    ctx_len : [N] int32/int64 valid context length per request (0 allowed: own positions only).
    own_k, own_v : optional [N, P, Hkv, T, D] each beam's own keys/values, all valid (T may be 0).
    scale : softmax scale, ``1 / sqrt(D)`` by default.
    backend : "auto" | "torch" | "triton" | "cuda".

    Returns
    -------
    [N, P, Hq, D] tensor in q's dtype; zeros for a query with no key.

    Raises
    ------
    FieldError : a shape, dtype or device does not match, or Hq is not a multiple of Hkv.
    BackendUnavailableError : the requested backend cannot run here.
    """
    _check_inputs(q, ctx_k, ctx_v, ctx_len, own_k, own_v)
    chosen = resolve(CAPABILITIES, backend, q.device, head_dim=q.shape[-1])
    if chosen == "torch":
        from .decode_attention_torch import decode_attention_torch

        return decode_attention_torch(q, ctx_k, ctx_v, ctx_len, own_k, own_v, scale=scale)
    if chosen == "triton":
        from ..kernels.decode_attention import decode_attention_triton

        return decode_attention_triton(q, ctx_k, ctx_v, ctx_len, own_k, own_v, scale=scale)
    from .decode_attention_cuda import decode_attention_cuda

    return decode_attention_cuda(q, ctx_k, ctx_v, ctx_len, own_k, own_v, scale=scale)


def _check_inputs(q, ctx_k, ctx_v, ctx_len, own_k, own_v) -> None:
    if q.dim() != 4:
        raise FieldError("q", f"has shape {tuple(q.shape)}", "[N, P, Hq, D]")
    if q.dtype not in _DTYPES:
        raise FieldError("q", f"has dtype {q.dtype}", "float32, bfloat16 or float16")
    n, p, hq, d = q.shape
    if d == 0:
        raise FieldError("q", "has head dim 0", "D >= 1")
    if ctx_k.dim() != 4 or ctx_k.shape[0] != n or ctx_k.shape[3] != d:
        raise FieldError("ctx_k", f"has shape {tuple(ctx_k.shape)}", f"[{n}, Hkv, S, {d}]")
    hkv = ctx_k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise FieldError("ctx_k", f"has {hkv} key/value heads for {hq} query heads",
                         "Hkv >= 1 dividing Hq")
    if ctx_v.shape != ctx_k.shape:
        raise FieldError("ctx_v", f"has shape {tuple(ctx_v.shape)}", f"{tuple(ctx_k.shape)} like ctx_k")
    if ctx_len.shape != (n,):
        raise FieldError("ctx_len", f"has shape {tuple(ctx_len.shape)}", f"[{n}]")
    if ctx_len.dtype not in (torch.int32, torch.int64):
        raise FieldError("ctx_len", f"has dtype {ctx_len.dtype}", "int32 or int64")
    if (own_k is None) != (own_v is None):
        raise FieldError("own_k/own_v", "only one of them is given", "both or neither")
    tensors = {"q": q, "ctx_k": ctx_k, "ctx_v": ctx_v, "ctx_len": ctx_len}
    if own_k is not None:
        if own_k.dim() != 5 or own_k.shape[:3] != (n, p, hkv) or own_k.shape[4] != d:
            raise FieldError("own_k", f"has shape {tuple(own_k.shape)}", f"[{n}, {p}, {hkv}, T, {d}]")
        if own_v.shape != own_k.shape:
            raise FieldError("own_v", f"has shape {tuple(own_v.shape)}", f"{tuple(own_k.shape)} like own_k")
        tensors.update(own_k=own_k, own_v=own_v)
    for name, t in tensors.items():
        if name != "ctx_len" and t.dtype != q.dtype:
            raise FieldError(name, f"has dtype {t.dtype}", f"q's dtype {q.dtype}")
        if t.device != q.device:
            raise FieldError(name, f"is on {t.device}", f"q's device {q.device}")
