"""CUDA C++ backend of :func:`ega_infer.ops.decode_attention.decode_attention`: the kernels of
``csrc/decode_attention.cuh`` (a tensor-core path and a float32 path, split-K with a merge
kernel) through ``ega_infer._cuda``.

The public op has already checked shapes, dtypes and devices; this wrapper only checks what the
kernels need (a CUDA device; ``D <= MAX_HEAD_DIM`` is the op's capability table's), copies the inputs whose layout would keep
the tensor-core kernel from running, and allocates the output and the split-K workspace.
"""

from __future__ import annotations

import functools
import math

import torch

from .._native import cuda_module
from ..exceptions import FieldError

__all__ = ["MAX_HEAD_DIM", "MMA_MAX_HEAD_DIM", "decode_attention_cuda", "kernel_inputs"]

MAX_HEAD_DIM = 256  # csrc/decode_attention.cuh kDecodeAttentionMaxHeadDim: the float32 path's limit
MMA_MAX_HEAD_DIM = 128  # kDecodeAttentionMmaMaxHeadDim: bf16/fp16 with D % 16 == 0 up to here


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _mma_layout(t: torch.Tensor, *, context: bool) -> bool:
    """Whether ``t``'s layout lets the tensor-core path run: unit stride along D, and for the
    context also 16-byte rows (other strides multiples of 8 elements, 16-byte aligned base)."""
    if t.stride(-1) != 1:
        return False
    return not context or (all(st % 8 == 0 for st in t.stride()[:-1]) and t.data_ptr() % 16 == 0)


def kernel_inputs(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None,
    own_v: torch.Tensor | None,
) -> dict[str, torch.Tensor | None]:
    """The inputs as the kernels read them: for bf16/fp16 with ``D % 16 == 0`` and
    ``D <= MMA_MAX_HEAD_DIM`` the tensors whose layout would keep the tensor-core kernel from
    running copied with ``.contiguous()`` (see ``decode_attention_cuda``), ctx_len contiguous, and
    own_k / own_v None when there is no own position. Device-independent, so the CPU emulation of
    the kernels (tests/cuda_emulation) passes exactly what the GPU gets."""
    d, s = q.shape[3], ctx_k.shape[2]
    if own_k is not None and own_k.shape[3] == 0:
        own_k = own_v = None
    if q.dtype != torch.float32 and d % 16 == 0 and d <= MMA_MAX_HEAD_DIM:
        if not _mma_layout(q, context=False):
            q = q.contiguous()
        if s > 0:
            if not _mma_layout(ctx_k, context=True):
                ctx_k = ctx_k.contiguous()
            if not _mma_layout(ctx_v, context=True):
                ctx_v = ctx_v.contiguous()
        if own_k is not None:
            if not _mma_layout(own_k, context=False):
                own_k = own_k.contiguous()
            if not _mma_layout(own_v, context=False):
                own_v = own_v.contiguous()
    return {"q": q, "ctx_k": ctx_k, "ctx_v": ctx_v, "ctx_len": ctx_len.contiguous(), "own_k": own_k,
            "own_v": own_v}


def decode_attention_cuda(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None = None,
    own_v: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Decode attention of every beam over its request's context and its own positions.

    Same arguments and result as ``decode_attention_torch`` (a new contiguous ``[N, P, Hq, D]``
    tensor in q's dtype), inputs as the public op checked them, on one CUDA device. Strided views
    are read in place, except that for bf16/fp16 with ``D % 16 == 0`` and ``D <= MMA_MAX_HEAD_DIM``
    (the tensor-core kernel) a tensor whose layout would keep that kernel from running is copied
    with ``.contiguous()`` first: q / own_k / own_v without unit stride along D, and ctx_k / ctx_v
    without unit stride along D, 8-element-multiple strides and a 16-byte aligned start.
    ``num_splits`` forces the number of context splits (tests; default: chosen per shape).

    Raises
    ------
    FieldError
        q is not on a CUDA device, or ``num_splits`` is not None or an int >= 1.
    BackendUnavailableError
        ``ega_infer._cuda`` is not built. (``D > MAX_HEAD_DIM`` is refused by the op's
        capability table, and again by the C++ launcher.)
    """
    module = cuda_module()
    device = q.device
    if device.type != "cuda":
        raise FieldError("q", f"is on {device}", "a CUDA tensor for backend 'cuda'")
    n, p, hq, d = q.shape
    hkv, s = ctx_k.shape[1], ctx_k.shape[2]
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise FieldError("num_splits", f"is {num_splits!r}", "None or an int >= 1")

    out = torch.empty((n, p, hq, d), dtype=q.dtype, device=device)
    if out.numel() == 0:
        return out
    inputs = kernel_inputs(q, ctx_k, ctx_v, ctx_len, own_k, own_v)
    q, ctx_k, ctx_v, ctx_len = inputs["q"], inputs["ctx_k"], inputs["ctx_v"], inputs["ctx_len"]
    own_k, own_v = inputs["own_k"], inputs["own_v"]
    t_len = own_k.shape[3] if own_k is not None else 0
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dtype = str(q.dtype).removeprefix("torch.")
    shape = [n, p, hq, hkv, s, t_len, d]
    num_sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    splits = 0 if num_splits is None else num_splits
    workspace_bytes = int(module.decode_attention_workspace_bytes(dtype, shape, num_sms, splits))
    workspace = (torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
                 if workspace_bytes else None)
    no_own = [0] * 5
    with torch.cuda.device(device):
        module.decode_attention(
            q_ptr=q.data_ptr(),
            ctx_k_ptr=ctx_k.data_ptr(),
            ctx_v_ptr=ctx_v.data_ptr(),
            ctx_len_ptr=ctx_len.data_ptr(),
            ctx_len_int64=ctx_len.dtype == torch.int64,
            own_k_ptr=own_k.data_ptr() if own_k is not None else 0,
            own_v_ptr=own_v.data_ptr() if own_v is not None else 0,
            out_ptr=out.data_ptr(),
            dtype=dtype,
            shape=shape,
            q_stride=list(q.stride()),
            ctx_k_stride=list(ctx_k.stride()),
            ctx_v_stride=list(ctx_v.stride()),
            own_k_stride=list(own_k.stride()) if own_k is not None else no_own,
            own_v_stride=list(own_v.stride()) if own_v is not None else no_own,
            scale=scale,
            num_sms=num_sms,
            num_splits=splits,
            workspace_ptr=workspace.data_ptr() if workspace is not None else 0,
            workspace_bytes=workspace_bytes,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
    return out
