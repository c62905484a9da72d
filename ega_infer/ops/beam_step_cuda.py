"""CUDA C++ backend of :func:`ega_infer.ops.beam_step.beam_step`: the kernels of
``csrc/beam_step.cuh`` (two launches, no host sync) through ``ega_infer._cuda``.

The public op has already checked shapes, dtypes, devices and ``k``; this wrapper only puts the
inputs in the form the kernels read (index dtypes, contiguous arrays), checks the device and
allocates the outputs and the workspace (``beams * vocab < 2**32`` is the op's capability table's,
checked again by the C++ launcher).
"""

from __future__ import annotations

import torch

from .._native import cuda_module
from ..exceptions import FieldError

__all__ = ["MAX_BEAMS_TIMES_VOCAB", "beam_step_cuda", "kernel_inputs"]

MAX_BEAMS_TIMES_VOCAB = 2**32  # the kernels' keys hold beam * vocab + rank in 32 bits


def kernel_inputs(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    allowed: torch.Tensor | None,
    *,
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """The inputs as the kernels read them: logits with unit column stride (any row stride),
    beam_scores / child_max_bid / allowed contiguous, row_node and child_ptr int64, child_code
    int32, override_child int64 and override_bid float32 contiguous ``[N, E]`` (both None when
    there is no override or ``E == 0``: the kernels then read child_max_bid only).
    Device-independent, so the CPU emulation of the kernels (tests/cuda_emulation) passes
    exactly what the GPU gets.

    Raises
    ------
    FieldError
        Only one of the override tensors is given, or they are not both ``[N, E]``.
    """
    override_child, override_bid = _override_inputs(override_child, override_bid, beam_scores.shape[0])
    return {
        "logits": logits if logits.stride(1) == 1 else logits.contiguous(),
        "beam_scores": beam_scores.contiguous(),
        "row_node": row_node.to(torch.int64).contiguous(),
        "child_ptr": child_ptr.to(torch.int64).contiguous(),
        "child_code": child_code.to(torch.int32).contiguous(),
        "child_max_bid": child_max_bid.contiguous(),
        "allowed": allowed.contiguous() if allowed is not None else None,
        "override_child": override_child,
        "override_bid": override_bid,
    }


def _override_inputs(child, bid, requests: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # The public op checks these already; the wrapper is also called directly (tests, the
    # emulation), where a bad shape must not become an out-of-bounds read in the kernels.
    if child is None and bid is None:
        return None, None
    if child is None or bid is None:
        name = "override_child" if child is None else "override_bid"
        raise FieldError(name, "is None while the other override tensor is given", "both or neither")
    if child.dim() != 2 or child.shape[0] != requests:
        raise FieldError("override_child", f"has shape {tuple(child.shape)}", f"[{requests}, E]")
    if bid.shape != child.shape:
        raise FieldError("override_bid", f"has shape {tuple(bid.shape)}",
                         f"{tuple(child.shape)} like override_child")
    if child.shape[1] == 0:
        return None, None
    # one index dtype for the kernels: an int32 -> int64 copy of [N, E] costs nothing next to the step
    return child.to(torch.int64).contiguous(), bid.to(torch.float32).contiguous()


def beam_step_cuda(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    k: int,
    alpha: float,
    log_beta: float,
    allowed: torch.Tensor | None = None,
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` candidates per request of ``beam_scores[n, p] + logp[n * P + p, c]``.

    ``logp`` is the log-softmax of ``logits[r, c] + w`` over the admissible children of
    ``row_node[r]``, with the token weight ``w = logaddexp(alpha * log(child_max_bid), log_beta)``
    (``alpha * log(bid)`` read as 0 when ``alpha == 0``; ``log_beta = log(beta)``, ``-inf`` for
    ``beta == 0``, computed in float64 by the caller), which is ``log(bid ** alpha + beta)`` without
    its overflow. Inputs as the public op takes them: ``logits [N*P, V]`` (unit column stride),
    ``beam_scores [N, P]`` float32, ``row_node [N*P]``, the CSR child arrays of the next depth
    (children of a node sorted by code), optional ``allowed [N*P, V]`` bool, optional
    ``override_child`` ``[N, E]`` int32/int64 CSR child ids (-1: no entry) with ``override_bid``
    ``[N, E]`` float32: child ``j`` of any beam of request ``n`` named by ``override_child[n, e]``
    weighs with ``override_bid[n, e]`` instead of ``child_max_bid[j]`` (the smallest where several
    entries name it).

    Returns
    -------
    ``(scores, parent, token, child, logp)``, each ``[N, k]``, ordered by score descending, then
    parent, then token (a stable sort of the flattened scores). Entries past the finite candidates
    are score -inf, parent 0, token 0, child -1, logp -inf.

    Raises
    ------
    FieldError
        The tensors are not on a CUDA device, or the override tensors are not both ``[N, E]``.
    BackendUnavailableError
        ``ega_infer._cuda`` is not built (the message says how to rebuild).
    """
    module = cuda_module()
    device = logits.device
    if device.type != "cuda":
        raise FieldError("logits", f"is on {device}", "a CUDA tensor for backend 'cuda'")
    requests, beams = beam_scores.shape
    rows, vocab = logits.shape

    if rows == 0 or vocab == 0:  # no candidate at all: every entry is a missing one
        neg_inf = torch.full((requests, k), float("-inf"), dtype=torch.float32, device=device)
        zeros = torch.zeros((requests, k), dtype=torch.int64, device=device)
        return neg_inf, zeros, zeros.clone(), torch.full_like(zeros, -1), neg_inf.clone()
    scores = torch.empty((requests, k), dtype=torch.float32, device=device)
    parent = torch.empty((requests, k), dtype=torch.int64, device=device)
    token = torch.empty((requests, k), dtype=torch.int64, device=device)
    child = torch.empty((requests, k), dtype=torch.int64, device=device)
    logp = torch.empty((requests, k), dtype=torch.float32, device=device)

    inputs = kernel_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed,
                           override_child=override_child, override_bid=override_bid)
    override_child, override_bid = inputs["override_child"], inputs["override_bid"]
    logits, allowed = inputs["logits"], inputs["allowed"]
    workspace_bytes = int(module.beam_step_workspace_bytes(requests, beams, vocab, k))
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        module.beam_step(
            logits_ptr=logits.data_ptr(),
            logits_dtype=str(logits.dtype).removeprefix("torch."),
            logits_row_stride=logits.stride(0),
            beam_scores_ptr=inputs["beam_scores"].data_ptr(),
            row_node_ptr=inputs["row_node"].data_ptr(),
            child_ptr_ptr=inputs["child_ptr"].data_ptr(),
            child_code_ptr=inputs["child_code"].data_ptr(),
            child_max_bid_ptr=inputs["child_max_bid"].data_ptr(),
            allowed_ptr=allowed.data_ptr() if allowed is not None else 0,
            override_child_ptr=override_child.data_ptr() if override_child is not None else 0,
            override_bid_ptr=override_bid.data_ptr() if override_bid is not None else 0,
            override_entries=override_child.shape[1] if override_child is not None else 0,
            requests=requests,
            beams=beams,
            vocab=vocab,
            k=k,
            alpha=float(alpha),
            log_beta=float(log_beta),
            workspace_ptr=workspace.data_ptr(),
            workspace_bytes=workspace_bytes,
            score_ptr=scores.data_ptr(),
            parent_ptr=parent.data_ptr(),
            token_ptr=token.data_ptr(),
            child_out_ptr=child.data_ptr(),
            logp_ptr=logp.data_ptr(),
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
    return scores, parent, token, child, logp
