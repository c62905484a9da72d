"""Access to the compiled modules ``ega_infer._C`` (always built) and ``ega_infer._cuda`` (optional).

Importing ``ega_infer`` never needs either: ``_C`` is imported on first use, and ``_cuda`` through
:func:`cuda_module_or_none`, which answers ``None`` where the module was not built (no nvcc at
build time, ``EGA_INFER_CUDA=OFF``). A call that needs a missing module raises
:class:`~ega_infer.exceptions.BackendUnavailableError` saying how to rebuild.
"""

from __future__ import annotations

import functools
import importlib
import math
from types import ModuleType
from typing import Any

import torch

from .exceptions import BackendUnavailableError, FieldError

__all__ = [
    "beam_step_cuda",
    "c_module",
    "cuda_module",
    "cuda_module_or_none",
    "decode_attention_cuda",
    "native_info",
    "trie_log_softmax_cuda",
]

_REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .` or `make install`"
_CUDA_NOT_BUILT = (
    "ega_infer._cuda is not built: rebuild on a machine with nvcc "
    "(EGA_INFER_CUDA=ON pip install --no-build-isolation -e . , or make install; "
    "EGA_INFER_CUDA_ARCHS='80;90' picks the GPU architectures)"
)
_LOGITS_DTYPES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}


@functools.cache
def _c_module_or_error() -> ModuleType | ImportError:
    try:
        return importlib.import_module(f"{__package__}._C")
    except ImportError as exc:
        return exc


def c_module() -> ModuleType:
    """The ``ega_infer._C`` module; raises ``BackendUnavailableError`` if it is not built."""
    found = _c_module_or_error()
    if isinstance(found, ImportError):
        raise BackendUnavailableError(
            f"ega_infer._C is not built or does not load ({found}); {_REBUILD_HINT}"
        ) from found
    return found


@functools.cache
def _cuda_state() -> tuple[ModuleType | None, str | None]:
    """(the ``_cuda`` module if built, why it cannot run here or None)."""
    try:
        _cuda = importlib.import_module(f"{__package__}._cuda")
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError):
            return None, _CUDA_NOT_BUILT
        return None, f"ega_infer._cuda does not load ({exc}); {_REBUILD_HINT}"
    runtime, driver = int(_cuda.cuda_runtime_version()), int(_cuda.cuda_driver_version())
    if driver and driver // 1000 < runtime // 1000:
        problem = (
            f"ega_infer._cuda was built with CUDA {runtime // 1000}.{runtime % 1000 // 10} (cudart "
            f"linked statically) but the driver supports CUDA {driver // 1000}."
            f"{driver % 1000 // 10}: update the driver or rebuild with an older nvcc"
        )
        return _cuda, problem
    return _cuda, None


def cuda_module_or_none() -> ModuleType | None:
    """The ``ega_infer._cuda`` module, or ``None`` where it was not built or cannot run.

    "Cannot run": the driver is older than the CUDA major version the module was built with.
    Without any driver (a CPU machine) the built module is still returned.
    """
    module, problem = _cuda_state()
    return module if problem is None else None


def cuda_module() -> ModuleType:
    """The ``ega_infer._cuda`` module; raises ``BackendUnavailableError`` with rebuild steps."""
    module = cuda_module_or_none()
    if module is None:
        _, problem = _cuda_state()
        raise BackendUnavailableError(problem or _CUDA_NOT_BUILT)
    return module


def native_info() -> dict[str, Any]:
    """What native code this install carries (for ``ega-infer info``)."""
    c_found = not isinstance(_c_module_or_error(), ImportError)
    cuda, problem = _cuda_state()
    info: dict[str, Any] = {
        "c_module": c_found,
        "cuda_module": cuda is not None,
        "cuda_usable": cuda is not None and problem is None,
        "cuda_problem": problem if cuda is not None else None,
        "cuda_archs": [],
        "cuda_runtime_version": None,
        "cuda_driver_version": None,
    }
    if cuda is not None:
        info["cuda_archs"] = [f"sm_{arch // 10}" for arch in cuda.compiled_archs()]
        info["cuda_runtime_version"] = int(cuda.cuda_runtime_version())
        info["cuda_driver_version"] = int(cuda.cuda_driver_version())
    return info


def _check_vector(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if t.dim() != 1:
        raise FieldError(name, f"has shape {tuple(t.shape)}", "a 1-D tensor")
    if t.dtype not in dtypes:
        raise FieldError(name, f"has dtype {t.dtype}", " or ".join(str(d) for d in dtypes))
    if not t.is_contiguous():
        raise FieldError(name, f"is not contiguous (stride {t.stride()})", "a contiguous tensor")


def _check_trie_rows(logits, row_node, child_ptr, child_code, child_max_bid, allowed, logits_shape: str,
                     **others: torch.Tensor) -> torch.Tensor | None:
    """The checks both trie kernels need: every tensor on the logits' device, logits 2-D in a
    kernel dtype, the CSR child arrays, one row node per row, ``allowed`` bool like logits.
    Returns ``allowed`` contiguous (or None)."""
    device = logits.device
    tensors = {**others, "row_node": row_node, "child_ptr": child_ptr, "child_code": child_code,
               "child_max_bid": child_max_bid}
    if allowed is not None:
        tensors["allowed"] = allowed
    for name, t in tensors.items():
        if t.device != device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {device}")
    if logits.dim() != 2:
        raise FieldError("logits", f"has shape {tuple(logits.shape)}", logits_shape)
    if logits.dtype not in _LOGITS_DTYPES:
        raise FieldError("logits", f"has dtype {logits.dtype}", "float32, bfloat16 or float16")
    _check_vector("row_node", row_node, (torch.int32, torch.int64))
    _check_vector("child_ptr", child_ptr, (torch.int32, torch.int64))
    _check_vector("child_code", child_code, (torch.int32, torch.int64))
    _check_vector("child_max_bid", child_max_bid, (torch.float32,))
    if row_node.shape[0] != logits.shape[0]:
        raise FieldError("row_node", f"has {row_node.shape[0]} entries", f"{logits.shape[0]} (one per row)")
    if child_code.shape != child_max_bid.shape:
        raise FieldError("child_max_bid", f"has shape {tuple(child_max_bid.shape)}",
                         f"{tuple(child_code.shape)} like child_code")
    if allowed is None:
        return None
    if allowed.shape != logits.shape or allowed.dtype != torch.bool:
        raise FieldError("allowed", f"has shape {tuple(allowed.shape)} dtype {allowed.dtype}",
                         f"bool {tuple(logits.shape)}")
    return allowed.contiguous()


def trie_log_softmax_cuda(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """CUDA C++ backend of :func:`ega_infer.ops.trie_log_softmax.trie_log_softmax`.

    Same arguments and result as ``trie_log_softmax_torch``; every tensor must be on one CUDA
    device. Index arrays are converted to the kernel's dtypes (row_node, child_ptr: int64;
    child_code: int32); a logits view is used in place when its columns are contiguous.
    """
    module = cuda_module()
    device = logits.device
    if device.type != "cuda":
        raise FieldError("logits", f"is on {device}", "a CUDA tensor for backend 'cuda'")
    allowed = _check_trie_rows(logits, row_node, child_ptr, child_code, child_max_bid, allowed, "[rows, vocab]")
    rows, vocab = logits.shape
    if vocab > 0 and logits.stride(1) != 1:
        logits = logits.contiguous()
    row_node = row_node.to(torch.int64)
    child_ptr = child_ptr.to(torch.int64)
    child_code = child_code.to(torch.int32)

    out = torch.empty((rows, vocab), dtype=torch.float32, device=device)
    if rows == 0:
        return out
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        module.trie_log_softmax(
            logits_ptr=logits.data_ptr(),
            logits_dtype=_LOGITS_DTYPES[logits.dtype],
            logits_row_stride=logits.stride(0) if vocab > 0 else 0,
            row_node_ptr=row_node.data_ptr(),
            child_ptr_ptr=child_ptr.data_ptr(),
            child_code_ptr=child_code.data_ptr(),
            child_max_bid_ptr=child_max_bid.data_ptr(),
            allowed_ptr=allowed.data_ptr() if allowed is not None else 0,
            out_ptr=out.data_ptr(),
            rows=rows,
            vocab=vocab,
            alpha=float(alpha),
            beta=float(beta),
            stream=stream,
        )
    return out


def beam_step_cuda(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    k: int,
    alpha: float = 0.0,
    beta: float = 0.0,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA C++ backend of :func:`ega_infer.ops.beam_step.beam_step` (two kernel launches).

    ``logits [N*P, V]`` (row r = request r // P, beam r % P), ``beam_scores [N, P]`` float32,
    ``row_node [N*P]``, the CSR child arrays of the next depth, optional ``allowed [N*P, V]`` bool.
    Returns ``(scores, parent, token, child, logp)``, each ``[N, k]``: the top-``k`` of
    ``beam_scores[n, p] + trie_log_softmax(...)[n*P + p, c]`` per request, ordered by score
    descending, then parent, then token (a stable sort of the flattened scores). Entries past
    the finite candidates are score -inf, parent 0, token 0, child -1, logp -inf. Needs
    ``P * V < 2**32`` and children of a node sorted by code (the trie invariant).
    """
    module = cuda_module()
    device = logits.device
    if device.type != "cuda":
        raise FieldError("logits", f"is on {device}", "a CUDA tensor for backend 'cuda'")
    allowed = _check_trie_rows(logits, row_node, child_ptr, child_code, child_max_bid, allowed,
                               "[requests * beams, vocab]", beam_scores=beam_scores)
    rows, vocab = logits.shape
    if beam_scores.dim() != 2 or beam_scores.dtype != torch.float32:
        raise FieldError("beam_scores",
                         f"has shape {tuple(beam_scores.shape)} dtype {beam_scores.dtype}",
                         "float32 [requests, beams]")
    requests, beams = beam_scores.shape
    if requests * beams != rows:
        raise FieldError("beam_scores", f"has shape {tuple(beam_scores.shape)}",
                         f"[requests, beams] with requests * beams = {rows} (the logits rows)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FieldError("k", f"is {k!r}", "an int >= 1")
    if beams * vocab >= 2**32:
        raise FieldError("logits", f"has beams * vocab = {beams} * {vocab}", "< 2**32")

    if rows == 0 or vocab == 0:  # no candidate at all: every entry is a missing one
        neg_inf = torch.full((requests, k), float("-inf"), dtype=torch.float32, device=device)
        zeros = torch.zeros((requests, k), dtype=torch.int64, device=device)
        return neg_inf, zeros, zeros.clone(), torch.full_like(zeros, -1), neg_inf.clone()
    scores = torch.empty((requests, k), dtype=torch.float32, device=device)
    parent = torch.empty((requests, k), dtype=torch.int64, device=device)
    token = torch.empty((requests, k), dtype=torch.int64, device=device)
    child = torch.empty((requests, k), dtype=torch.int64, device=device)
    logp = torch.empty((requests, k), dtype=torch.float32, device=device)

    if logits.stride(1) != 1:
        logits = logits.contiguous()
    beam_scores = beam_scores.contiguous()
    row_node = row_node.to(torch.int64)
    child_ptr = child_ptr.to(torch.int64)
    child_code = child_code.to(torch.int32)
    workspace_bytes = int(module.beam_step_workspace_bytes(requests, beams, vocab, k))
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        module.beam_step(
            logits_ptr=logits.data_ptr(),
            logits_dtype=_LOGITS_DTYPES[logits.dtype],
            logits_row_stride=logits.stride(0),
            beam_scores_ptr=beam_scores.data_ptr(),
            row_node_ptr=row_node.data_ptr(),
            child_ptr_ptr=child_ptr.data_ptr(),
            child_code_ptr=child_code.data_ptr(),
            child_max_bid_ptr=child_max_bid.data_ptr(),
            allowed_ptr=allowed.data_ptr() if allowed is not None else 0,
            requests=requests,
            beams=beams,
            vocab=vocab,
            k=k,
            alpha=float(alpha),
            beta=float(beta),
            workspace_ptr=workspace.data_ptr(),
            workspace_bytes=workspace_bytes,
            score_ptr=scores.data_ptr(),
            parent_ptr=parent.data_ptr(),
            token_ptr=token.data_ptr(),
            child_out_ptr=child.data_ptr(),
            logp_ptr=logp.data_ptr(),
            stream=stream,
        )
    return scores, parent, token, child, logp


_ATTENTION_MAX_HEAD_DIM = 256  # csrc/decode_attention.cuh: kDecodeAttentionMaxHeadDim
_ATTENTION_MMA_MAX_HEAD_DIM = 128


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _mma_layout(t: torch.Tensor, *, context: bool) -> bool:
    """Whether ``t``'s layout lets the tensor-core path run: unit stride along D, and for the
    context also 16-byte rows (other strides multiples of 8 elements, 16-byte aligned base)."""
    if t.stride(-1) != 1:
        return False
    return not context or (all(st % 8 == 0 for st in t.stride()[:-1]) and t.data_ptr() % 16 == 0)


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
    """CUDA C++ backend of :func:`ega_infer.ops.decode_attention.decode_attention`.

    Same arguments and result as ``decode_attention_torch`` (a new contiguous ``[N, P, Hq, D]``
    tensor in q's dtype); every tensor on one CUDA device, head dims up to 256. Strided views are
    read in place, except that for bf16/fp16 with ``D % 16 == 0`` and ``D <= 128`` (the
    tensor-core kernel) a tensor whose layout would keep that kernel from running is copied with
    ``.contiguous()`` first: q / own_k / own_v without unit stride along D, and ctx_k / ctx_v
    without unit stride along D, 8-element-multiple strides and a 16-byte aligned start.
    ``num_splits`` forces the number of context splits (tests; default: chosen per shape).
    """
    module = cuda_module()
    device = q.device
    if device.type != "cuda":
        raise FieldError("q", f"is on {device}", "a CUDA tensor for backend 'cuda'")
    if q.dim() != 4:
        raise FieldError("q", f"has shape {tuple(q.shape)}", "[N, P, Hq, D]")
    if q.dtype not in _LOGITS_DTYPES:
        raise FieldError("q", f"has dtype {q.dtype}", "float32, bfloat16 or float16")
    n, p, hq, d = q.shape
    if ctx_k.dim() != 4 or ctx_k.shape[0] != n or ctx_k.shape[3] != d:
        raise FieldError("ctx_k", f"has shape {tuple(ctx_k.shape)}", f"[{n}, Hkv, S, {d}]")
    hkv, s = ctx_k.shape[1], ctx_k.shape[2]
    if hkv == 0 or hq % hkv != 0:
        raise FieldError("ctx_k", f"has {hkv} key/value heads for {hq} query heads",
                         "Hkv >= 1 dividing Hq")
    if ctx_v.shape != ctx_k.shape:
        raise FieldError("ctx_v", f"has shape {tuple(ctx_v.shape)}", f"{tuple(ctx_k.shape)} like ctx_k")
    if ctx_len.shape != (n,) or ctx_len.dtype not in (torch.int32, torch.int64):
        raise FieldError("ctx_len", f"has shape {tuple(ctx_len.shape)} dtype {ctx_len.dtype}",
                         f"int32 or int64 [{n}]")
    if (own_k is None) != (own_v is None):
        raise FieldError("own_k/own_v", "only one of them is given", "both or neither")
    tensors = {"ctx_k": ctx_k, "ctx_v": ctx_v, "ctx_len": ctx_len}
    if own_k is not None:
        if own_k.dim() != 5 or own_k.shape[:3] != (n, p, hkv) or own_k.shape[4] != d:
            raise FieldError("own_k", f"has shape {tuple(own_k.shape)}", f"[{n}, {p}, {hkv}, T, {d}]")
        if own_v.shape != own_k.shape:
            raise FieldError("own_v", f"has shape {tuple(own_v.shape)}", f"{tuple(own_k.shape)} like own_k")
        tensors.update(own_k=own_k, own_v=own_v)
    for name, t in tensors.items():
        if t.device != device:
            raise FieldError(name, f"is on {t.device}", f"q's device {device}")
        if name != "ctx_len" and t.dtype != q.dtype:
            raise FieldError(name, f"has dtype {t.dtype}", f"q's dtype {q.dtype}")
    if d > _ATTENTION_MAX_HEAD_DIM:
        raise BackendUnavailableError(
            f"decode_attention: the CUDA kernels take head dims up to {_ATTENTION_MAX_HEAD_DIM}, "
            f"got {d}; use backend='torch'"
        )
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise FieldError("num_splits", f"is {num_splits!r}", "None or an int >= 1")

    out = torch.empty((n, p, hq, d), dtype=q.dtype, device=device)
    if out.numel() == 0:
        return out
    t_len = own_k.shape[3] if own_k is not None else 0
    if t_len == 0:
        own_k = own_v = None
    if q.dtype != torch.float32 and d % 16 == 0 and d <= _ATTENTION_MMA_MAX_HEAD_DIM:
        # Copy only what would keep the tensor-core kernel from running (see the docstring).
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
    ctx_len = ctx_len.contiguous()
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dtype = _LOGITS_DTYPES[q.dtype]
    shape = [n, p, hq, hkv, s, t_len, d]
    num_sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    splits = 0 if num_splits is None else num_splits
    workspace_bytes = int(module.decode_attention_workspace_bytes(dtype, shape, num_sms, splits))
    workspace = (torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
                 if workspace_bytes else None)
    no_own = [0] * 5
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
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
            stream=stream,
        )
    return out
