"""Prefill attention over variable-length sequences packed back to back without padding.

Sequence b holds tokens ``cu_seqlens[b] .. cu_seqlens[b+1] - 1``. For a token i of sequence b and
query head h with key/value head ``g = h // (Hq // Hkv)``::

    out[i, h] = softmax_j(scale * k[j, g] . q[i, h]) @ v[j, g]      (scale = 1/sqrt(D) default)

over the tokens j of sequence b, with ``j <= i`` when ``causal``. Sequences never see each other;
zero-length sequences are allowed. Accumulation is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from ..exceptions import FieldError
from ..kernels.limits import ATTENTION_TRITON_MAX_HEAD_DIM
from ._dispatch import Backend, Capabilities, head_dim_up_to, resolve

__all__ = ["prefill_attention", "CAPABILITIES"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# no CUDA C++ version: "auto" runs Triton on a GPU
CAPABILITIES = Capabilities("prefill_attention", {
    "triton": head_dim_up_to(ATTENTION_TRITON_MAX_HEAD_DIM),
    "torch": lambda **_: None,
})


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
        raises, and "auto" picks Triton on a GPU (``CAPABILITIES``).
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
    _check_inputs(q, k, v, cu_seqlens, check_seqlens)
    chosen = resolve(CAPABILITIES, backend, q.device, head_dim=q.shape[-1])
    if chosen == "triton":
        from ..kernels.prefill_attention import prefill_attention_triton

        return prefill_attention_triton(q, k, v, cu_seqlens, causal=causal, scale=scale)
    from .prefill_attention_torch import prefill_attention_torch

    return prefill_attention_torch(q, k, v, cu_seqlens, causal=causal, scale=scale)


def _check_inputs(q, k, v, cu_seqlens, check_seqlens: bool = True) -> None:
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
