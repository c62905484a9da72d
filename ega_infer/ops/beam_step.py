"""One fused step of the constrained beam search: trie log-softmax + beam score + exact top-k.

For request ``n`` with beams ``p = 0 .. P-1`` (logit row ``r = n * P + p``)::

    logp[r, c]    = trie_log_softmax(logits, row_node, child_ptr, ...)[r, c]    # -inf off the trie
    cand[n, p, c] = beam_scores[n, p] + logp[r, c]
    keep the k best cand[n] by (score descending, parent p ascending, token c ascending)

``renormalize=False`` drops the normalisation: ``logp[r, c]`` is then ``logits[r, c] + w`` on
the admissible children (``-inf`` elsewhere), for logits that are already log-probabilities over a
larger vocabulary and are only masked to the trie (Hugging Face transformers' default constrained
beam search: full-vocabulary log-softmax, then the mask, no renormalisation).

For every kept entry the step also returns the chosen code's CSR child index ``j`` (the
depth-(l+1) node id, ``child_code[j] == token`` within ``row_node[r]``'s child range) and its
``logp``. Entries beyond the number of finite candidates (``k > P * V``, dead beams, rows with no
admissible child) are *missing*: score ``-inf``, parent 0, token 0, child -1, logp ``-inf``.

This is what ``decoding/beam_search.py`` does per position with ``trie_log_softmax``, the
exact top-k of ``decoding/topk.py`` and ``DeviceTrie.child``; ``beam_step_torch`` computes exactly
those (the top-k as one ``torch.topk`` over distinct integer keys) and is the reference the Triton
and CUDA backends are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..exceptions import BackendUnavailableError
from ._dispatch import Backend, resolve_backend, triton_available
from .trie_log_softmax import trie_children, trie_log_softmax_torch

__all__ = ["BeamStep", "beam_step", "beam_step_torch"]

NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class BeamStep:
    """The ``k`` kept beams of each of ``N`` requests, best first.

    scores [N, k] float32 (``-inf``: missing), parent [N, k] int64 beam index ``0 .. P-1``,
    token [N, k] int64 code, child [N, k] int64 CSR child index (-1: missing), logp [N, k]
    float32 log-probability of the token under the masked, bid-weighted log-softmax.
    """

    scores: torch.Tensor
    parent: torch.Tensor
    token: torch.Tensor
    child: torch.Tensor
    logp: torch.Tensor

    @property
    def alive(self) -> torch.Tensor:
        return self.scores > NEG_INF


def beam_step(
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
    renormalize: bool = True,
    backend: Backend = "auto",
) -> BeamStep:
    """Score every trie child of every beam and keep the ``k`` best per request.

    ``scores = beam_scores[n, p] + log_softmax_{admissible children}(logits[r] + w)[token]``
    with ``w = log(child_max_bid ** alpha + beta)``; ranked by score descending, then parent
    ascending, then token ascending (a stable sort of the flattened ``[P * V]`` candidates).

    Parameters
    ----------
    logits : [N*P, V] float32, bfloat16 or float16; row ``r`` is request ``r // P``, beam
        ``r % P``. Rows may be strided; the last dimension must be contiguous.
    beam_scores : [N, P] float32 running beam scores; ``-inf`` marks a dead beam.
    row_node : [N*P] int32/int64 trie node of each beam at depth l; -1 marks a dead beam.
    child_ptr : [n_l + 1] int32/int64 CSR pointers into the depth-(l+1) node arrays.
    child_code : [n_{l+1}] int32/int64 code of each depth-(l+1) node; the children of a node have
        distinct codes in ascending order (as ``_C.build_trie`` lays them out).
    child_max_bid : [n_{l+1}] float32 max ad bid in each depth-(l+1) node's subtree.
    k : beams to keep per request, ``k >= 1`` (may exceed the number of candidates).
    alpha, beta : token-bid exponent and floor, ``w = log(max_bid ** alpha + beta)``.
    allowed : optional [N*P, V] bool; False removes a code from that row (slate rules).
    renormalize : True (default): log-softmax over the admissible children. False: the masked
        values ``logits + w`` themselves (the logits are log-probabilities already). The CUDA
        backend has no such mode: "auto" then runs Triton (or the reference without Triton),
        an explicit "cuda" raises.
    backend : "auto" | "torch" | "triton" | "cuda".

    Returns
    -------
    BeamStep of [N, k] tensors; missing entries have score ``-inf``, parent 0, token 0,
    child -1 and logp ``-inf``.

    Raises
    ------
    FieldError
        A tensor has the wrong shape, dtype, layout or device, or ``k < 1``.
    BackendUnavailableError
        The requested backend cannot run here.
    """
    _check_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed, k)
    chosen = resolve_backend(backend, logits.device, "beam_step")
    if chosen == "cuda" and not renormalize:
        if backend == "cuda":
            raise BackendUnavailableError(
                "beam_step: the CUDA backend has no renormalize=False mode; use backend='triton'"
            )
        chosen = "triton" if triton_available() else "torch"
    args = (logits, beam_scores, row_node, child_ptr, child_code, child_max_bid)
    options = dict(k=int(k), alpha=float(alpha), beta=float(beta), allowed=allowed)
    if chosen == "torch":
        return beam_step_torch(*args, **options, renormalize=bool(renormalize))
    if chosen == "triton":
        from ..kernels.beam_step import beam_step_triton

        return beam_step_triton(*args, **options, renormalize=bool(renormalize))
    from .._native import beam_step_cuda

    return BeamStep(*beam_step_cuda(*args, **options))  # the five [N, k] tensors, in field order


def beam_step_torch(
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
    renormalize: bool = True,
) -> BeamStep:
    """PyTorch reference: ``trie_log_softmax_torch`` -> exact top-k -> child lookup.

    The top-k equals a stable descending sort of each request's flattened ``[P * V]`` scores
    (``decoding.topk.full_topk``): every candidate gets a distinct int64 key, the score's
    order-preserving integer image above ``2**32 - 1 - (p * V + c)``, so one ``torch.topk``
    breaks ties by parent, then token, whatever its own tie order. The child of a kept
    ``(row, token)`` is found by matching the rows' expanded child ranges (``trie_children``)
    against the kept keys, so it does not rely on the codes being sorted.
    """
    n, p = beam_scores.shape
    vocab = logits.shape[1]
    logp = trie_log_softmax_torch(
        logits, row_node, child_ptr, child_code, child_max_bid,
        alpha=alpha, beta=beta, allowed=allowed, renormalize=renormalize,
    ).view(n, p, vocab)
    scores, parent, token = _ranked_topk(beam_scores.float()[..., None] + logp, k)
    alive = scores > NEG_INF
    parent = torch.where(alive, parent, 0)
    token = torch.where(alive, token, 0)
    request = torch.arange(n, device=logits.device)[:, None]
    chosen_logp = torch.where(alive, logp[request, parent, token], NEG_INF)
    child = _child_index(request * p + parent, token, alive, row_node, child_ptr, child_code, vocab)
    return BeamStep(scores, parent, token, child, chosen_logp)


def _ranked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, parent, token)`` ``[N, k]`` of ``scores [N, P, V]`` by (value descending, parent,
    token); entries past ``P * V`` are ``-inf`` with parent 0 and token 0."""
    n, p, v = scores.shape
    flat = scores.reshape(n, p * v) + 0.0  # -0.0 -> +0.0: equal scores get equal keys
    bits = flat.view(torch.int32).long()
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # same order as the floats
    index = torch.arange(p * v, device=scores.device)
    key = (ordered << 32) + (0xFFFFFFFF - index)  # distinct; larger = better, then lower index
    take = min(k, p * v)
    flat_index = torch.topk(key, take, dim=1, sorted=True).indices
    values = flat.gather(1, flat_index)
    parent = torch.div(flat_index, v, rounding_mode="floor")
    token = flat_index - parent * v
    if take < k:
        values = torch.cat([values, values.new_full((n, k - take), NEG_INF)], dim=1)
        parent = torch.cat([parent, parent.new_zeros(n, k - take)], dim=1)
        token = torch.cat([token, token.new_zeros(n, k - take)], dim=1)
    return values, parent, token


def _child_index(row, token, alive, row_node, child_ptr, child_code, vocab) -> torch.Tensor:
    """CSR index of the child with code ``token`` of ``row_node[row]`` for the ``alive`` entries
    (``-1`` elsewhere, or where there is none). The rows' expanded child ranges are looked up in
    the sorted wanted ``(row, token)`` keys (distinct where alive): only ``N * k`` keys are
    sorted."""
    rows, child = trie_children(row_node, child_ptr)
    want = torch.where(alive, row * vocab + token, -1).reshape(-1)
    out = torch.full_like(want, -1)
    if rows.numel() == 0 or want.numel() == 0:
        return out.view(token.shape)
    wanted, order = torch.sort(want)
    pair = rows * vocab + child_code[child].long()
    pos = torch.searchsorted(wanted, pair).clamp(max=wanted.numel() - 1)
    hit = wanted[pos] == pair
    found = torch.full_like(want, -1)
    found[pos[hit]] = child[hit]
    out[order] = found
    return out.view(token.shape)


def _check_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed,
                  k) -> None:
    from ..exceptions import FieldError

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FieldError("k", f"is {k!r}", "an int >= 1")
    if logits.dim() != 2:
        raise FieldError("logits", f"has shape {tuple(logits.shape)}", "[requests * beams, vocab]")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise FieldError("logits", f"has dtype {logits.dtype}", "float32, bfloat16 or float16")
    rows, vocab = logits.shape
    if vocab > 1 and logits.stride(1) != 1:
        raise FieldError("logits", f"has strides {logits.stride()}", "a contiguous last dimension")
    if beam_scores.dim() != 2 or beam_scores.dtype != torch.float32:
        raise FieldError("beam_scores", f"has shape {tuple(beam_scores.shape)} dtype "
                         f"{beam_scores.dtype}", "float32 [requests, beams]")
    if beam_scores.shape[0] * beam_scores.shape[1] != rows:
        raise FieldError("beam_scores", f"has shape {tuple(beam_scores.shape)} "
                         f"({beam_scores.numel()} beams)",
                         f"[N, P] with N * P == {rows} logit rows")
    if row_node.shape != (rows,):
        raise FieldError("row_node", f"has shape {tuple(row_node.shape)}", f"[{rows}]")
    if child_ptr.dim() != 1 or child_ptr.numel() < 1:
        raise FieldError("child_ptr", f"has shape {tuple(child_ptr.shape)}", "[n_l + 1]")
    if child_code.dim() != 1:
        raise FieldError("child_code", f"has shape {tuple(child_code.shape)}", "[n_{l+1}]")
    if child_max_bid.shape != child_code.shape or child_max_bid.dtype != torch.float32:
        raise FieldError("child_max_bid", f"has shape {tuple(child_max_bid.shape)} dtype "
                         f"{child_max_bid.dtype}",
                         f"float32 {tuple(child_code.shape)} like child_code")
    for name, t in (("row_node", row_node), ("child_ptr", child_ptr), ("child_code", child_code)):
        if t.dtype not in (torch.int32, torch.int64):
            raise FieldError(name, f"has dtype {t.dtype}", "int32 or int64")
    if allowed is not None and (allowed.shape != logits.shape or allowed.dtype != torch.bool):
        raise FieldError("allowed", f"has shape {tuple(allowed.shape)} dtype {allowed.dtype}",
                         f"bool {tuple(logits.shape)}")
    named = {"beam_scores": beam_scores, "row_node": row_node, "child_ptr": child_ptr,
             "child_code": child_code, "child_max_bid": child_max_bid, "allowed": allowed}
    for name, t in named.items():
        if t is not None and t.device != logits.device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {logits.device}")
