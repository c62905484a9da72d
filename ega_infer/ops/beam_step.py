"""One fused step of the constrained beam search: trie log-softmax + beam score + exact top-k.

For request ``n`` with beams ``p = 0 .. P-1`` (logit row ``r = n * P + p``) at trie node
``row_node[r]``, child ``j`` of that node with code ``c``::

    w_j           = log(child_max_bid[j] ** alpha + beta)       # token bid weight, in log space
    logp[r, c]    = log_softmax over the admissible children of (logits[r, c] + w_j)
    cand[n, p, c] = beam_scores[n, p] + logp[r, c]
    keep the k best cand[n] by (score descending, parent p ascending, token c ascending)

``renormalize=False`` drops the normalisation: ``logp[r, c] = logits[r, c] + w_j`` on the
admissible children (logits that are already log-probabilities over a larger vocabulary, only
masked to the trie: Hugging Face transformers' default constrained beam search).

A request may carry its own bids for a few children (``override_child`` / ``override_bid``,
``[N, E]``): child ``j`` named by ``override_child[n, e]`` weighs with ``override_bid[n, e]``
instead of ``child_max_bid[j]`` in every beam of request ``n`` (the max bid of the ads a
request's exclusions or misreports leave in that subtree; ``decoding/overrides.py``).

For every kept entry the step also returns the chosen code's CSR child index (the depth-(l+1)
node id) and its ``logp``. Entries beyond the finite candidates (``k > P * V``, dead beams, rows
with no admissible child) are *missing*: score ``-inf``, parent 0, token 0, child -1, logp -inf.

Backends, each in its own file with the same arguments (``log_beta = log(beta)`` instead of
``beta``): ``beam_step_torch.py`` (the reference), ``kernels/beam_step.py`` (Triton),
``beam_step_cuda.py`` over ``csrc/beam_step.cu`` (CUDA C++). ``CAPABILITIES`` says what each runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..exceptions import FieldError
from ..kernels.limits import BEAM_STEP_TRITON_MAX_VOCAB
from ._dispatch import Backend, Capabilities, resolve
from .beam_step_cuda import MAX_BEAMS_TIMES_VOCAB

__all__ = ["BeamStep", "beam_step", "CAPABILITIES", "MAX_ALPHA", "log_beta"]

NEG_INF = float("-inf")
# alpha * log(bid) must fit float32 for every finite float32 bid (|log(bid)| <= 104)
MAX_ALPHA = 1e36


def _triton(*, vocab: int = 1, beams: int = 1, **_) -> str | None:
    if vocab > BEAM_STEP_TRITON_MAX_VOCAB:
        return f"takes at most {BEAM_STEP_TRITON_MAX_VOCAB} codes per level, got {vocab}"
    if beams * vocab >= 2**31:
        return f"needs beams * vocab < 2**31, got {beams} * {vocab}"
    return None


def _cuda(*, vocab: int = 1, beams: int = 1, renormalize: bool = True, **_) -> str | None:
    if not renormalize:
        return "has no renormalize=False mode"
    if beams * vocab >= MAX_BEAMS_TIMES_VOCAB:
        return f"needs beams * vocab < {MAX_BEAMS_TIMES_VOCAB}, got {beams} * {vocab}"
    return None


CAPABILITIES = Capabilities("beam_step", {"cuda": _cuda, "triton": _triton, "torch": lambda **_: None})


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


def log_beta(beta: float) -> float:
    """``log(beta)`` in float64 (``-inf`` for 0): what the backends take instead of beta, so a
    beta beyond float32's range (1e300) still weighs exactly."""
    return math.log(beta) if beta > 0 else NEG_INF


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
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> BeamStep:
    """Score every trie child of every beam and keep the ``k`` best per request.

    ``scores = beam_scores[n, p] + log_softmax_{admissible children}(logits[r] + w)[token]``
    with ``w = log(child_max_bid ** alpha + beta)`` (``0 ** 0 == 1``); ranked by score
    descending, then parent ascending, then token ascending.

    Parameters
    ----------
    logits : [N*P, V] float32, bfloat16 or float16; row ``r`` is request ``r // P``, beam
        ``r % P``. Rows may be strided; the last dimension must be contiguous.
    beam_scores : [N, P] float32 running beam scores; ``-inf`` marks a dead beam.
    row_node : [N*P] int32/int64 trie node of each beam at depth l; -1 marks a dead beam.
    child_ptr : [n_l + 1] int32/int64 CSR pointers into the depth-(l+1) node arrays.
    child_code : [n_{l+1}] int32/int64 code of each depth-(l+1) node; the children of a node have
        distinct codes in ascending order (as ``_C.build_trie`` lays them out).
    child_max_bid : [n_{l+1}] float32 finite max ad bid in each depth-(l+1) node's subtree.
    k : beams to keep per request, ``k >= 1`` (may exceed the number of candidates).
    alpha, beta : token-bid exponent and floor, finite, ``0 <= alpha <= MAX_ALPHA``, ``beta >= 0``.
    allowed : optional [N*P, V] bool; False removes a code from that row (slate rules).
    renormalize : True (default): log-softmax over the admissible children. False: the masked
        values ``logits + w`` themselves (the logits are log-probabilities already).
    override_child, override_bid : optional, both or neither: [N, E] int32/int64 depth-(l+1)
        node ids (-1: no entry) and [N, E] float32 finite bids >= 0. Child ``j`` of any beam of
        request ``n`` with ``j == override_child[n, e]`` uses ``override_bid[n, e]`` as its max
        bid (the smallest of them where several entries name ``j``). No effect when
        ``alpha == 0``.
    backend : "auto" | "torch" | "triton" | "cuda" (``CAPABILITIES`` says which runs what).

    Returns
    -------
    BeamStep of [N, k] tensors; missing entries have score ``-inf``, parent 0, token 0,
    child -1 and logp ``-inf``.

    Raises
    ------
    FieldError
        A tensor has the wrong shape, dtype, layout or device, or ``k``, ``alpha`` or ``beta``
        is out of range.
    BackendUnavailableError
        The requested backend cannot run here or cannot take this call.
    """
    _check_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed, k, alpha, beta)
    _check_override(override_child, override_bid, beam_scores.shape[0], logits.device)
    if float(alpha) == 0.0 or (override_child is not None and override_child.shape[1] == 0):  # nothing to apply
        override_child = override_bid = None
    chosen = resolve(CAPABILITIES, backend, logits.device, vocab=logits.shape[1],
                     beams=beam_scores.shape[1], renormalize=bool(renormalize))
    args = (logits, beam_scores, row_node, child_ptr, child_code, child_max_bid)
    options = dict(k=int(k), alpha=float(alpha), log_beta=log_beta(float(beta)), allowed=allowed,
                   override_child=override_child, override_bid=override_bid)
    if chosen == "torch":
        from .beam_step_torch import beam_step_torch

        return beam_step_torch(*args, **options, renormalize=bool(renormalize))
    if chosen == "triton":
        from ..kernels.beam_step import beam_step_triton

        return BeamStep(*beam_step_triton(*args, **options, renormalize=bool(renormalize)))
    from .beam_step_cuda import beam_step_cuda

    return BeamStep(*beam_step_cuda(*args, **options))


def _check_override(child, bid, requests: int, device: torch.device) -> None:
    if child is None and bid is None:
        return
    if child is None or bid is None:
        name = "override_child" if child is None else "override_bid"
        raise FieldError(name, "is None while the other override tensor is given", "both or neither")
    for name, t in (("override_child", child), ("override_bid", bid)):
        if not isinstance(t, torch.Tensor):
            raise FieldError(name, f"is a {type(t).__name__}", "a torch.Tensor")
        if t.device != device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {device}")
    if child.dim() != 2 or child.shape[0] != requests or child.dtype not in (torch.int32, torch.int64):
        raise FieldError("override_child", f"has shape {tuple(child.shape)} dtype {child.dtype}",
                         f"int32 or int64 [{requests}, E]")
    if bid.shape != child.shape or bid.dtype != torch.float32:
        raise FieldError("override_bid", f"has shape {tuple(bid.shape)} dtype {bid.dtype}",
                         f"float32 {tuple(child.shape)} like override_child")


def _check_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, allowed,
                  k, alpha, beta) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FieldError("k", f"is {k!r}", "an int >= 1")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= MAX_ALPHA:
        raise FieldError("alpha", f"is {alpha!r}", f"a finite number >= 0, at most {MAX_ALPHA:g}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
        raise FieldError("beta", f"is {beta!r}", "a finite number >= 0")
    tensors = {"logits": logits, "beam_scores": beam_scores, "row_node": row_node, "child_ptr": child_ptr,
               "child_code": child_code, "child_max_bid": child_max_bid}
    if allowed is not None:
        tensors["allowed"] = allowed
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise FieldError(name, f"is a {type(t).__name__}", "a torch.Tensor")
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
    for name, t in tensors.items():
        if t.device != logits.device:
            raise FieldError(name, f"is on {t.device}", f"the logits device {logits.device}")
