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
) -> dict[str, torch.Tensor | None]:
    """The inputs as the kernels read them: logits with unit column stride (any row stride),
    beam_scores / child_max_bid / allowed contiguous, row_node and child_ptr int64, child_code
    int32. Device-independent, so the CPU emulation of the kernels (tests/cuda_emulation) passes
    exactly what the GPU gets."""
    return {
        "logits": logits if logits.stride(1) == 1 else logits.contiguous(),
        "beam_scores": beam_scores.contiguous(),
        "row_node": row_node.to(torch.int64).contiguous(),
        "child_ptr": child_ptr.to(torch.int64).contiguous(),
        "child_code": child_code.to(torch.int32).contiguous(),
        "child_max_bid": child_max_bid.contiguous(),
        "allowed": allowed.contiguous() if allowed is not None else None,
    }


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` candidates per request of ``beam_scores[n, p] + logp[n * P + p, c]``.

    ``logp`` is the log-softmax of ``logits[r, c] + w`` over the admissible children of
    ``row_node[r]``, with the token weight ``w = logaddexp(alpha * log(child_max_bid), log_beta)``
    (``alpha * log(bid)`` read as 0 when ``alpha == 0``; ``log_beta = log(beta)``, ``-inf`` for
    ``beta == 0``, computed in float64 by the caller), which is ``log(bid ** alpha + beta)`` without
    its overflow. Inputs as the public op takes them: ``logits [N*P, V]`` (unit column stride),
    ``beam_scores [N, P]`` float32, ``row_node [N*P]``, the CSR child arrays of the next depth
    (children of a node sorted by code), optional ``allowed [N*P, V]`` bool.

    Returns
    -------
    ``(scores, parent, token, child, logp)``, each ``[N, k]``, ordered by score descending, then
    parent, then token (a stable sort of the flattened scores). Entries past the finite candidates
    are score -inf, parent 0, token 0, child -1, logp -inf.

    Raises
    ------
    FieldError
        The tensors are not on a CUDA device.
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

    inputs = kernel_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed)
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
