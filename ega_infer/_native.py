"""Access to the compiled modules ``ega_infer._C`` (always built) and ``ega_infer._cuda`` (optional).

Importing ``ega_infer`` never needs either: ``_C`` is imported on first use, and ``_cuda`` through
:func:`cuda_module_or_none`, which answers ``None`` where the module was not built (no nvcc at
build time, ``EGA_INFER_CUDA=OFF``). A call that needs a missing module raises
:class:`~ega_infer.exceptions.BackendUnavailableError` saying how to rebuild.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import torch

from .exceptions import BackendUnavailableError, FieldError

__all__ = [
    "beam_step_cuda",
    "c_module",
    "cuda_module",
    "cuda_module_or_none",
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
    tensors = {"row_node": row_node, "child_ptr": child_ptr, "child_code": child_code,
               "child_max_bid": child_max_bid}
    if allowed is not None:
        tensors["allowed"] = allowed
    for name, t in tensors.items():
        if t.device != device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {device}")
    if logits.dim() != 2:
        raise FieldError("logits", f"has shape {tuple(logits.shape)}", "[rows, vocab]")
    if logits.dtype not in _LOGITS_DTYPES:
        raise FieldError("logits", f"has dtype {logits.dtype}", "float32, bfloat16 or float16")
    rows, vocab = logits.shape
    _check_vector("row_node", row_node, (torch.int32, torch.int64))
    _check_vector("child_ptr", child_ptr, (torch.int32, torch.int64))
    _check_vector("child_code", child_code, (torch.int32, torch.int64))
    _check_vector("child_max_bid", child_max_bid, (torch.float32,))
    if row_node.shape[0] != rows:
        raise FieldError("row_node", f"has {row_node.shape[0]} entries", f"{rows} (one per row)")
    if child_code.shape != child_max_bid.shape:
        raise FieldError("child_max_bid", f"has shape {tuple(child_max_bid.shape)}",
                         f"{tuple(child_code.shape)} like child_code")
    if allowed is not None:
        if allowed.shape != logits.shape or allowed.dtype != torch.bool:
            raise FieldError("allowed", f"has shape {tuple(allowed.shape)} dtype {allowed.dtype}",
                             f"bool {tuple(logits.shape)}")
        allowed = allowed.contiguous()
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
    tensors = {"beam_scores": beam_scores, "row_node": row_node, "child_ptr": child_ptr,
               "child_code": child_code, "child_max_bid": child_max_bid}
    if allowed is not None:
        tensors["allowed"] = allowed
    for name, t in tensors.items():
        if t.device != device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {device}")
    if logits.dim() != 2:
        raise FieldError("logits", f"has shape {tuple(logits.shape)}", "[requests * beams, vocab]")
    if logits.dtype not in _LOGITS_DTYPES:
        raise FieldError("logits", f"has dtype {logits.dtype}", "float32, bfloat16 or float16")
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
    _check_vector("row_node", row_node, (torch.int32, torch.int64))
    _check_vector("child_ptr", child_ptr, (torch.int32, torch.int64))
    _check_vector("child_code", child_code, (torch.int32, torch.int64))
    _check_vector("child_max_bid", child_max_bid, (torch.float32,))
    if row_node.shape[0] != rows:
        raise FieldError("row_node", f"has {row_node.shape[0]} entries", f"{rows} (one per row)")
    if child_code.shape != child_max_bid.shape:
        raise FieldError("child_max_bid", f"has shape {tuple(child_max_bid.shape)}",
                         f"{tuple(child_code.shape)} like child_code")
    if allowed is not None:
        if allowed.shape != logits.shape or allowed.dtype != torch.bool:
            raise FieldError("allowed", f"has shape {tuple(allowed.shape)} dtype {allowed.dtype}",
                             f"bool {tuple(logits.shape)}")
        allowed = allowed.contiguous()

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
