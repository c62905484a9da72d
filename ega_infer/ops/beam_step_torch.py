"""PyTorch reference of ``beam_step``: the trie log-softmax, then an exact top-k, then the child.

The Triton and CUDA backends are tested against these functions. ``trie_log_softmax_torch``
is the scoring half (also the oracle of the tests' dense checks); ``token_weight`` is the bid
weight every backend computes the same way, in log space::

    w = log(max_bid ** alpha + beta) = logaddexp(a, log_beta),  a = alpha * log(max_bid)

with ``a = 0`` when ``alpha == 0`` (``bid ** 0 == 1``, bid 0 included) and ``log_beta = log(beta)``
(``-inf`` for ``beta == 0``), so no finite bid or exponent overflows float32 (``alpha <= 1e36``,
see ``beam_step.MAX_ALPHA``). Both terms ``-inf`` (no ad below the child, ``beta == 0``) give
``w = -inf``: the child is not admissible.
"""

from __future__ import annotations

import torch

from .beam_step import BeamStep

__all__ = ["beam_step_torch", "trie_log_softmax_torch", "trie_children", "token_weight"]

NEG_INF = float("-inf")


def token_weight(child_max_bid: torch.Tensor, alpha: float, log_beta: float) -> torch.Tensor:
    """``log(child_max_bid ** alpha + exp(log_beta))`` in float32, computed in log space."""
    bid = child_max_bid.float()
    a = torch.zeros_like(bid) if alpha == 0 else alpha * torch.log(bid)
    return torch.logaddexp(a, torch.full_like(a, log_beta))


def trie_log_softmax_torch(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    alpha: float,
    log_beta: float,
    allowed: torch.Tensor | None = None,
    renormalize: bool = True,
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked, bid-weighted log-softmax over each row's trie children, ``[R, V]`` float32.

    Row ``r`` at node ``n = row_node[r]``: child ``j`` of ``n`` with code ``c`` has the value
    ``v = logits[r, c] + token_weight(bid_j)``, ``bid_j = child_max_bid[j]`` unless the row's
    request names ``j`` in ``override_child`` (``[N, E]``, rows ``r // (R / N)`` of request
    ``n``): then the smallest of its ``override_bid`` entries. It is admissible when ``v > -inf``
    and ``allowed[r, c]``. ``out[r, c] = v - logsumexp(admissible v)`` (``renormalize=False``:
    ``v`` itself, for logits that are already log-probabilities and only masked), ``-inf`` for
    every other code; a dead row (``n < 0``) or one with no admissible child is all ``-inf``.
    """
    num_rows, vocab = logits.shape
    device = logits.device
    rows, child = trie_children(row_node, child_ptr)
    code = child_code[child].long()
    # weights of every node of the level, then gathered: a request's values do not depend on
    # where its children sit among the batch's (elementwise log/exp round by position on a CPU)
    weight = token_weight(child_max_bid, alpha, log_beta)[child]
    if override_child is not None and rows.numel():
        beams = num_rows // override_child.shape[0]
        named = override_child[rows // beams].long() == child[:, None]  # [pairs, E]
        bid = torch.where(named, override_bid[rows // beams], float("inf")).amin(1)
        weight = torch.where(named.any(1), token_weight(bid, alpha, log_beta), weight)
    value = logits[rows, code].float() + weight
    keep = value > NEG_INF
    if allowed is not None:
        keep &= allowed[rows, code]
    dense = torch.full((num_rows, vocab), NEG_INF, dtype=torch.float32, device=device)
    dense[rows[keep], code[keep]] = value[keep]
    if not renormalize:
        return dense
    has_child = torch.zeros(num_rows, dtype=torch.bool, device=device)
    has_child[rows[keep]] = True
    out = torch.log_softmax(dense, dim=-1)
    return torch.where(has_child[:, None], out, torch.full_like(out, NEG_INF))


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


def beam_step_torch(
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
    renormalize: bool = True,
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
) -> BeamStep:
    """``trie_log_softmax_torch`` -> exact top-k -> child lookup (arguments of ``beam_step``,
    with ``log_beta = log(beta)``).

    The top-k equals a stable descending sort of each request's flattened ``[P * V]`` scores:
    every candidate gets a distinct int64 key, the score's order-preserving integer image
    above ``2**32 - 1 - (p * V + c)``, so one ``torch.topk`` breaks ties by parent, then token,
    whatever its own tie order. The child of a kept ``(row, token)`` is found by matching the
    rows' expanded child ranges against the kept keys, so it does not rely on sorted codes.
    """
    n, p = beam_scores.shape
    vocab = logits.shape[1]
    logp = trie_log_softmax_torch(
        logits, row_node, child_ptr, child_code, child_max_bid,
        alpha=alpha, log_beta=log_beta, allowed=allowed, renormalize=renormalize,
        override_child=override_child, override_bid=override_bid,
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
    (``-1`` elsewhere, or where there is none): the rows' expanded child ranges are looked up
    in the sorted wanted ``(row, token)`` keys (distinct where alive), so only ``N * k`` keys
    are sorted."""
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
