"""Prefill attention over variable-length sequences packed back to back without padding.

Sequence b holds tokens ``cu_seqlens[b] .. cu_seqlens[b+1] - 1``. For a token i of sequence b and
query head h with key/value head ``g = h // (Hq // Hkv)``::

    out[i, h] = softmax_j(scale * k[j, g] . q[i, h]) @ v[j, g]      (scale = 1/sqrt(D) default)

over the tokens j of sequence b, with ``j <= i`` when ``causal``. Sequences never see each other;
zero-length sequences are allowed. Accumulation is float32 whatever the input dtype.
"""

from __future__ import annotations

import math

import torch

from ._dispatch import Backend, resolve_backend, triton_available

__all__ = ["prefill_attention", "prefill_attention_torch"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    backend: Backend = "auto",
    check_seqlens: bool = True,
) -> torch.Tensor:
    """Attention within each packed sequence: ``out[i] = softmax(scale * K_b q_i) V_b``.

    Parameters
    ----------
    q : [T, Hq, D] float32, bfloat16 or float16 queries of all sequences, packed.
    k, v : [T, Hkv, D] keys/values in q's dtype; Hq must be a multiple of Hkv.
    cu_seqlens : [B+1] int32/int64 sequence boundaries: 0, non-decreasing, ending at T.
    causal : token i attends to tokens j <= i of its sequence (else to all of them).
    scale : softmax scale, ``1 / sqrt(D)`` by default.
    backend : "auto" | "torch" | "triton". There is no CUDA C++ backend for this op: "cuda"
        raises, and "auto" picks Triton on a GPU.
    check_seqlens : check cu_seqlens' values (reads them on the host: one device sync per
        call). Callers that built cu_seqlens themselves (the engine's encoder, once per layer)
        pass False; shapes, dtypes and devices are checked either way.

    Returns
    -------
    [T, Hq, D] tensor in q's dtype.

    Raises
    ------
    FieldError : a shape, dtype or device does not match, Hq is not a multiple of Hkv, or
        cu_seqlens does not start at 0, decrease somewhere or not end at T (with
        ``check_seqlens``; reading its values synchronises with the device once).
    BackendUnavailableError : the requested backend cannot run here.
    """
    from ..exceptions import BackendUnavailableError

    if backend == "cuda":
        raise BackendUnavailableError("prefill_attention has no CUDA backend; use triton")
    _check_inputs(q, k, v, cu_seqlens, check_seqlens)
    chosen = resolve_backend(backend, q.device, "prefill_attention")
    if chosen == "cuda":  # "auto" with the CUDA module built: this op is Triton's
        chosen = "triton" if triton_available() else "torch"
    if chosen == "triton":
        from ..kernels.prefill_attention import prefill_attention_triton

        return prefill_attention_triton(q, k, v, cu_seqlens, causal=causal, scale=scale)
    return prefill_attention_torch(q, k, v, cu_seqlens, causal=causal, scale=scale)


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


def _check_inputs(q, k, v, cu_seqlens, check_seqlens: bool = True) -> None:
    from ..exceptions import FieldError

    if q.dim() != 3:
        raise FieldError("q", f"has shape {tuple(q.shape)}", "[T, Hq, D]")
    if q.dtype not in _DTYPES:
        raise FieldError("q", f"has dtype {q.dtype}", "float32, bfloat16 or float16")
    total, hq, d = q.shape
    if d == 0:
        raise FieldError("q", "has head dim 0", "D >= 1")
    if k.dim() != 3 or k.shape[0] != total or k.shape[2] != d:
        raise FieldError("k", f"has shape {tuple(k.shape)}", f"[{total}, Hkv, {d}]")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise FieldError("k", f"has {hkv} key/value heads for {hq} query heads", "Hkv >= 1 dividing Hq")
    if v.shape != k.shape:
        raise FieldError("v", f"has shape {tuple(v.shape)}", f"{tuple(k.shape)} like k")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise FieldError("cu_seqlens", f"has shape {tuple(cu_seqlens.shape)}", "[B+1], B >= 0")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise FieldError("cu_seqlens", f"has dtype {cu_seqlens.dtype}", "int32 or int64")
    for name, t in (("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if name != "cu_seqlens" and t.dtype != q.dtype:
            raise FieldError(name, f"has dtype {t.dtype}", f"q's dtype {q.dtype}")
        if t.device != q.device:
            raise FieldError(name, f"is on {t.device}", f"q's device {q.device}")
    if not check_seqlens:
        return
    steps = cu_seqlens[1:] - cu_seqlens[:-1]
    first, last, drops = torch.stack(
        [cu_seqlens[0], cu_seqlens[-1], (steps < 0).sum().to(cu_seqlens.dtype)]
    ).tolist()  # one device sync
    if first != 0 or last != total:
        raise FieldError("cu_seqlens", f"runs from {first} to {last}", f"0 to T = {total}")
    if drops:
        b = int(torch.nonzero(steps < 0)[0, 0])
        raise FieldError(f"cu_seqlens[{b + 1}]", f"is {int(cu_seqlens[b + 1])} < cu_seqlens[{b}] = "
                         f"{int(cu_seqlens[b])}", "non-decreasing boundaries")
