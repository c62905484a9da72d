"""Trie-masked, bid-weighted log-softmax: the scoring half of the constrained beam step.

For each row r (a beam) whose trie node at depth l is ``n = row_node[r]``::

    for child j of n (j in child_ptr[n] .. child_ptr[n+1]-1), code c = child_code[j]:
        w_j  = log(child_max_bid[j] ** alpha + beta)          # token bid weight (EGA Eq. 21)
        v_j  = logits[r, c] + w_j        admissible if allowed[r, c] and v_j > -inf
    out[r, c] = v_j - logsumexp_j(v_j)  for admissible children, -inf for every other code

A row with ``row_node < 0`` (a dead beam) or with no admissible child is all ``-inf``.
``alpha = beta = 0`` gives plain constrained decoding (``0 ** 0 == 1`` so every weight is 0).
The reference's ``renormalize=False`` skips the normalisation: ``out[r, c] = v_j`` (the logits
are then log-probabilities over a larger vocabulary, only masked to the trie, as in Hugging Face
transformers' default constrained beam search).
"""

from __future__ import annotations

import torch

from ._dispatch import Backend, resolve_backend

__all__ = ["trie_log_softmax", "trie_log_softmax_torch", "trie_children"]


def trie_log_softmax(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.0,
    allowed: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Masked, bid-weighted log-softmax over each row's trie children.

    Parameters
    ----------
    logits : [R, V] float32, bfloat16 or float16 level-head logits (rows may be strided).
    row_node : [R] int32/int64 node id of each row at depth l; -1 marks a dead row.
    child_ptr : [n_l + 1] int64 CSR pointers into the depth-(l+1) node arrays.
    child_code : [n_{l+1}] int32 code of each depth-(l+1) node.
    child_max_bid : [n_{l+1}] float32 max ad bid in each depth-(l+1) node's subtree.
    alpha, beta : token-bid exponent and floor, ``w = log(max_bid ** alpha + beta)``.
    allowed : optional [R, V] bool; False removes a code from that row (slate rules).
    backend : "auto" | "torch" | "triton" | "cuda".

    Returns
    -------
    [R, V] float32 log-probabilities, ``-inf`` outside the admissible children.
    """
    _check_inputs(logits, row_node, child_ptr, child_code, child_max_bid, allowed)
    chosen = resolve_backend(backend, logits.device, "trie_log_softmax")
    if chosen == "torch":
        return trie_log_softmax_torch(
            logits, row_node, child_ptr, child_code, child_max_bid,
            alpha=alpha, beta=beta, allowed=allowed,
        )
    if chosen == "triton":
        from ..kernels.trie_log_softmax import trie_log_softmax_triton

        return trie_log_softmax_triton(
            logits, row_node, child_ptr, child_code, child_max_bid,
            alpha=alpha, beta=beta, allowed=allowed,
        )
    from .._native import trie_log_softmax_cuda

    return trie_log_softmax_cuda(
        logits, row_node, child_ptr, child_code, child_max_bid,
        alpha=alpha, beta=beta, allowed=allowed,
    )


def trie_log_softmax_torch(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.0,
    allowed: torch.Tensor | None = None,
    renormalize: bool = True,
) -> torch.Tensor:
    """PyTorch reference: expand each row's children (CSR), score them, scatter, normalise
    (``renormalize=False``: the masked values ``logits + w`` as they are)."""
    num_rows, vocab = logits.shape
    device = logits.device
    rows, child = trie_children(row_node, child_ptr)
    code = child_code[child].long()
    weight = torch.log(torch.pow(child_max_bid[child].float(), alpha) + beta)
    value = logits[rows, code].float() + weight
    keep = value > float("-inf")  # a -inf weight (beta = 0, no ad) or logit removes the child
    if allowed is not None:
        keep &= allowed[rows, code]
    dense = torch.full((num_rows, vocab), float("-inf"), dtype=torch.float32, device=device)
    dense[rows[keep], code[keep]] = value[keep]
    if not renormalize:
        return dense
    has_child = torch.zeros(num_rows, dtype=torch.bool, device=device)
    has_child[rows[keep]] = True
    out = torch.log_softmax(dense, dim=-1)
    return torch.where(has_child[:, None], out, torch.full_like(out, float("-inf")))


def trie_children(row_node: torch.Tensor, child_ptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, child node) pair of the rows' CSR child ranges, rows ascending; rows with
    ``row_node < 0`` have none. Returns ``(rows, child)``, both int64 of equal length."""
    alive = row_node >= 0
    node = row_node.clamp(min=0, max=max(child_ptr.numel() - 2, 0)).long()
    start = child_ptr[node]
    count = (child_ptr[(node + 1).clamp(max=child_ptr.numel() - 1)] - start) * alive
    rows = torch.repeat_interleave(torch.arange(row_node.numel(), device=row_node.device), count)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    child = torch.repeat_interleave(start, count) + torch.arange(rows.numel(), device=rows.device) - first
    return rows, child


def _check_inputs(logits, row_node, child_ptr, child_code, child_max_bid, allowed) -> None:
    from ..exceptions import FieldError

    if logits.dim() != 2:
        raise FieldError("logits", f"has shape {tuple(logits.shape)}", "[rows, vocab]")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise FieldError("logits", f"has dtype {logits.dtype}", "float32, bfloat16 or float16")
    if row_node.shape != (logits.shape[0],):
        raise FieldError("row_node", f"has shape {tuple(row_node.shape)}", f"[{logits.shape[0]}]")
    if child_ptr.dim() != 1 or child_code.dim() != 1 or child_max_bid.shape != child_code.shape:
        raise FieldError("child_ptr/child_code/child_max_bid", "are not matching 1-D CSR arrays")
    for name, t in (("row_node", row_node), ("child_ptr", child_ptr), ("child_code", child_code)):
        if t.dtype not in (torch.int32, torch.int64):
            raise FieldError(name, f"has dtype {t.dtype}", "int32 or int64")
    if allowed is not None and (allowed.shape != logits.shape or allowed.dtype != torch.bool):
        raise FieldError(
            "allowed", f"has shape {tuple(allowed.shape)} dtype {allowed.dtype}",
            f"bool {tuple(logits.shape)}",
        )
    tensors = (row_node, child_ptr, child_code, child_max_bid) + ((allowed,) if allowed is not None else ())
    for t in tensors:
        if t.device != logits.device:
            raise FieldError("trie_log_softmax inputs", f"mix devices {t.device} and {logits.device}")
