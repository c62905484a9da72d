"""Triton backend of ``beam_step``: the scoring and per-beam top-k fused in one pass per row.

Semantics: ``ega_infer/ops/beam_step.py`` (the public op, which validates the inputs and picks
this backend); PyTorch reference: ``ega_infer/ops/beam_step_torch.py``. Runs on CUDA tensors,
and on CPU tensors under ``TRITON_INTERPRET=1``.

What is fused (kernel ``_beam_step_rows_kernel``, one program per logit row = beam)
---------------------------------------------------------------------------------------
The program loads its node's children into one register tile, so every logit it needs is read
from global memory exactly once and nothing of size ``[rows, V]`` is ever written:

1. gather ``logits[r, code]`` (+ ``allowed``, + ``child_max_bid`` when ``alpha != 0``), add the
   bid weight ``logaddexp(alpha * log(bid), log_beta)`` (in log space, so no finite bid
   overflows), and take the logsumexp over the admissible children (``tl.max`` / ``tl.sum``;
   skipped with ``renormalize=False``, where the masked values are the log-probabilities);
2. ``score = beam_score + ((v - m) - log(sum))`` for each child, the exact float32 arithmetic of the
   reference (``beam_scores[..., None] + logp``);
3. exact per-row top-``min(k, admissible)`` by (score descending, token ascending): when more
   children are admissible than ``k``, a bisection over the order-preserving int32 image of the
   float score finds the k-th score (<= 32 counting reductions over the tile), and ties at that
   score are cut by a second bisection over the code (<= log2 V reductions);
4. the survivors are compacted with a ``tl.cumsum`` and written as a 64-bit key
   ``ordered(score) << 31 | (2**31 - 1 - (beam * V + token))`` (unique per request; larger key =
   better candidate, ties already resolved by parent then token), plus the child index and logp.

The tile is chosen per row by its child count: ``count <= _SMALL_TILE`` uses a small tile and
gathers at the child codes (the common case below the root: a few dozen to a few hundred
children); a larger node uses a whole-row tile of ``next_pow2(V)`` lanes, and a node holding
every code (``count == V``, a full node such as the root) reads the logit row contiguously and
skips the ``child_code`` load (its codes are ``0 .. V-1`` in order, since a node's codes are
distinct and ascending).

What is not fused: the per-request merge
----------------------------------------
The ``P * min(k, V)`` survivor keys of a request go through one ``torch.topk(keys, k)``; the keys
are distinct, so its order is exact whatever the sort's stability. Score, parent and token are
decoded from the key; child and logp are gathered with the top-k indices.

Sizing for the GPU (8 requests x 512 beams x 16384 codes; goal 12 us at 512 x 8192 on an H100):
the row kernel reads only the children's logits (2-4 bytes per child, +4 for the code and +4 for
the bid when ``alpha != 0``), so a level with ~100 children per node moves well under 1 MB and a
beam's selection is skipped entirely when its admissible children number ``<= k`` (the usual
case with k = 512 beams). Full nodes read the whole row: 16 MB of fp32 logits at 512 x 8192,
~5.5 us at 3 TB/s. The merge's survivors are ``P * min(k, children)`` keys of 16 bytes. Not
measured on a GPU yet; the likely costs are the bisection reductions on whole-row tiles and the
``torch.topk`` over up to ``P * k`` keys (a second Triton kernel could replace it).

Per-request bid overrides (``override_child`` / ``override_bid``, ``[N, E]``): with ``alpha != 0``
each row scans its request's ``E`` entries once per tile and weighs a named child with the smallest
of its override bids; without them (``HAS_OVERRIDE=False``) the kernel is the plain one.

Limits (``kernels/limits.py``, checked by the op's capability table): ``V <=
BEAM_STEP_TRITON_MAX_VOCAB`` (the whole-row tile lives in registers) and ``P * V < 2**31`` (key).
Loops over data-dependent bounds are ``while`` loops (Triton's interpreter cannot take a loaded
value, nor a scalar kernel argument, as a ``range`` bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import Launch

__all__ = ["beam_step_triton", "beam_step_rows_launch"]

_SMALL_TILE = 256  # children per row at or below which the small gather tile is used
_BLOCK_PAD = 128  # survivor slots per padding store
_KEY_LOW = 0x7FFFFFFF  # low 31 key bits: 2**31 - 1 - (beam * V + token)
_PAD_KEY = -(2**63) + 1  # below every real key (the lowest is about -2**62)


@triton.jit
def _row_candidates(
    logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
    start, count, vocab, alpha, log_beta, beam_score, k, beam,
    key_row, child_row, logp_row, override_child_row, override_bid_row, n_override,
    USE_BID: tl.constexpr, HAS_ALLOWED: tl.constexpr, RENORM: tl.constexpr,
    HAS_OVERRIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Score one row's children in a BLOCK-lane tile and store its top-``k`` survivors.

    Returns how many were stored (at the front of the row's survivor slots, in lane order).
    """
    lane = tl.arange(0, BLOCK)
    in_range = lane < count
    j = start + lane
    # A node holding every code (count == V) has codes 0 .. V-1 in order: no child_code read.
    full = count == vocab
    code = tl.where(full, lane, tl.load(child_code_ptr + j, mask=in_range & ~full, other=0)).to(tl.int64)
    if USE_BID:  # a = alpha * log(bid): -inf for bid 0
        bid = tl.load(child_bid_ptr + j, mask=in_range, other=1.0)
        if HAS_OVERRIDE:
            # The request's own bids for the children it names (the smallest where named twice);
            # E is small (a request's exclusions), so a scalar loop keeps the tile [BLOCK] wide.
            # -1 pads never match (j >= 0); lanes past count may match but are masked out below.
            ov = tl.full([BLOCK], float("inf"), tl.float32)
            e = tl.full([], 0, tl.int64)
            while e < n_override:  # not range(): the interpreter takes no argument as its bound
                oc = tl.load(override_child_row + e).to(tl.int64)
                ob = tl.load(override_bid_row + e)
                ov = tl.where(j == oc, tl.minimum(ov, ob), ov)
                e += 1
            bid = tl.where(ov < float("inf"), ov, bid)
        a = alpha * tl.log(bid)
    else:  # bid ** 0 == 1 for every child, bid 0 included
        a = tl.zeros([BLOCK], tl.float32)
    # weight = logaddexp(a, log_beta); -inf when both are (no ad below, beta == 0), never NaN
    top = tl.maximum(a, log_beta)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weight = top + tl.log(1.0 + tl.exp(tl.minimum(a, log_beta) - top_safe))
    keep = in_range & (code >= 0) & (code < vocab) & (weight > float("-inf"))
    if HAS_ALLOWED:
        ok = tl.load(allowed_row + code * stride_av, mask=keep, other=0)
        keep = keep & (ok != 0)
    x = tl.load(logits_row + code * stride_lv, mask=keep, other=0.0).to(tl.float32)
    v = tl.where(keep, x + weight, float("-inf"))

    if RENORM:
        m = tl.max(v, axis=0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        # (v - m) - log(sum) as torch.log_softmax: m + log(sum) would round the log(sum) away
        # when the bid weights are huge (1e31), and tied children would each get logp 0
        shifted = v - m_safe
        logp = shifted - tl.log(tl.sum(tl.exp(shifted), axis=0))
    else:
        logp = v
    score = beam_score + logp
    valid = keep & (score > float("-inf"))

    # Order-preserving int32 image of the score (no -0.0 arises: x - x is +0 in IEEE).
    bits = score.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    selected = valid
    n_valid = tl.sum(valid.to(tl.int32), axis=0)
    if n_valid > k:
        # Largest t with #(order >= t) >= k: the k-th best score. lo always qualifies, hi never.
        lo = tl.min(tl.where(valid, order, 0x7FFFFFFF), axis=0).to(tl.int64)
        hi = tl.max(tl.where(valid, order, -0x7FFFFFFF), axis=0).to(tl.int64) + 1
        while hi - lo > 1:
            mid = lo + (hi - lo) // 2
            enough = tl.sum((valid & (order >= mid)).to(tl.int32), axis=0) >= k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid)
        above = valid & (order > lo)
        tied = valid & (order == lo)
        need = k - tl.sum(above.to(tl.int32), axis=0)
        if tl.sum(tied.to(tl.int32), axis=0) > need:
            # Smallest code c with #(tied & code <= c) >= need: keep the lowest codes of the tie.
            c_lo = tl.full([], -1, tl.int64)
            c_hi = tl.max(tl.where(tied, code, 0), axis=0)
            while c_hi - c_lo > 1:
                mid = c_lo + (c_hi - c_lo) // 2
                enough = tl.sum((tied & (code <= mid)).to(tl.int32), axis=0) >= need
                c_lo = tl.where(enough, c_lo, mid)
                c_hi = tl.where(enough, mid, c_hi)
            tied = tied & (code <= c_hi)
        selected = above | tied

    slot = tl.cumsum(selected.to(tl.int32), axis=0) - 1
    key = (order.to(tl.int64) << 31) + (0x7FFFFFFF - (beam * vocab + code))
    tl.store(key_row + slot, key, mask=selected)
    tl.store(child_row + slot, j.to(tl.int32), mask=selected)
    tl.store(logp_row + slot, logp, mask=selected)
    return tl.sum(selected.to(tl.int32), axis=0)


@triton.jit
def _beam_step_rows_kernel(
    logits_ptr, stride_lr, stride_lv, beam_scores_ptr,
    row_node_ptr, child_ptr_ptr, child_code_ptr, child_bid_ptr,
    allowed_ptr, stride_ar, stride_av, override_child_ptr, override_bid_ptr,
    key_ptr, child_out_ptr, logp_out_ptr,
    vocab, beams, k, slots, alpha, log_beta, n_override,
    USE_BID: tl.constexpr, HAS_ALLOWED: tl.constexpr, RENORM: tl.constexpr,
    HAS_OVERRIDE: tl.constexpr, SMALL: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_PAD: tl.constexpr, PAD_KEY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    beam = row % beams
    key_row = key_ptr + row * slots
    child_row = child_out_ptr + row * slots
    logp_row = logp_out_ptr + row * slots
    logits_row = logits_ptr + row * stride_lr
    allowed_row = allowed_ptr + row * stride_ar
    override_child_row = override_child_ptr + (row // beams) * n_override  # the row's request
    override_bid_row = override_bid_ptr + (row // beams) * n_override
    beam_score = tl.load(beam_scores_ptr + row)
    node = tl.load(row_node_ptr + row).to(tl.int64)

    stored = tl.full([], 0, tl.int32)
    if node >= 0:
        if beam_score > float("-inf"):
            start = tl.load(child_ptr_ptr + node).to(tl.int64)
            count = tl.load(child_ptr_ptr + node + 1).to(tl.int64) - start
            if count <= SMALL:  # a few dozen to a few hundred children: gather them
                stored = _row_candidates(
                    logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
                    start, count, vocab, alpha, log_beta, beam_score, k, beam,
                    key_row, child_row, logp_row, override_child_row, override_bid_row, n_override,
                    USE_BID, HAS_ALLOWED, RENORM, HAS_OVERRIDE, SMALL,
                )
            else:  # a large node: a whole-row tile
                stored = _row_candidates(
                    logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
                    start, count, vocab, alpha, log_beta, beam_score, k, beam,
                    key_row, child_row, logp_row, override_child_row, override_bid_row, n_override,
                    USE_BID, HAS_ALLOWED, RENORM, HAS_OVERRIDE, BLOCK_V,
                )

    # Unused survivor slots get a key below every real one (child and logp stay unwritten).
    s0 = stored.to(tl.int64)
    while s0 < slots:
        offs = s0 + tl.arange(0, BLOCK_PAD)
        tl.store(key_row + offs, tl.full([BLOCK_PAD], PAD_KEY, tl.int64),
                 mask=offs < slots)
        s0 += BLOCK_PAD


def beam_step_triton(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backend, for inputs the public op has validated: ``(scores, parent, token,
    child, logp)``, each ``[N, k]``, as ``beam_step_torch`` returns them.

    Each node's children must have distinct, ascending codes (``_C.build_trie``'s layout); a
    node with all ``V`` codes as children is read without its ``child_code`` range.
    ``override_child`` / ``override_bid`` (``[N, E]``, both or neither) only act when ``alpha != 0``.
    """
    n, p = beam_scores.shape
    keys, child, logp = _row_survivors(
        logits, beam_scores, row_node, child_ptr, child_code, child_max_bid,
        k=k, alpha=alpha, log_beta=log_beta, allowed=allowed, renormalize=renormalize,
        override_child=override_child, override_bid=override_bid,
    )
    slots = keys.shape[1]
    return _merge(keys.view(n, p * slots), child.view(n, p * slots), logp.view(n, p * slots), k,
                  logits.shape[1])


def _row_survivors(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, *, k, alpha,
                   log_beta, allowed, renormalize=True, override_child=None,
                   override_bid=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the row kernel: ``(keys, child, logp)``, each ``[rows, min(k, V)]``.

    Row r's first ``min(k, admissible children)`` slots hold its best candidates (lane order);
    the rest have key ``_PAD_KEY`` and unwritten child / logp.
    """
    rows, vocab = logits.shape
    slots = min(k, vocab)
    keys = torch.empty((rows, slots), dtype=torch.int64, device=logits.device)
    child = torch.empty((rows, slots), dtype=torch.int32, device=logits.device)
    logp = torch.empty((rows, slots), dtype=torch.float32, device=logits.device)
    if rows == 0 or slots == 0:
        return keys, child, logp
    launch = beam_step_rows_launch(
        logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, keys, child, logp,
        k=k, alpha=alpha, log_beta=log_beta, allowed=allowed, renormalize=renormalize,
        override_child=override_child, override_bid=override_bid,
    )
    if logits.device.type == "cuda":
        with torch.cuda.device(logits.device):
            launch()
    else:
        launch()
    return keys, child, logp


def beam_step_rows_launch(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    keys: torch.Tensor,
    child: torch.Tensor,
    logp: torch.Tensor,
    *,
    k: int,
    alpha: float,
    log_beta: float,
    allowed: torch.Tensor | None,
    renormalize: bool = True,
    override_child: torch.Tensor | None = None,
    override_bid: torch.Tensor | None = None,
) -> Launch:
    """The row-kernel launch that fills ``keys``, ``child``, ``logp`` (contiguous
    ``[rows, min(k, V)]``, none empty); shared by :func:`beam_step_triton` and
    ``ega_infer.compile``."""
    p = beam_scores.shape[1]
    vocab = logits.shape[1]
    rows, slots = keys.shape
    if allowed is not None:
        allowed_arg = allowed.view(torch.uint8)
        stride_ar, stride_av = allowed_arg.stride()
    else:
        allowed_arg, stride_ar, stride_av = keys, 0, 0  # never read: HAS_ALLOWED=False
    use_bid = float(alpha) != 0.0
    has_override = use_bid and override_child is not None
    if has_override:  # rows of E entries, read at request * E
        override_child_arg, override_bid_arg = override_child.contiguous(), override_bid.contiguous()
        n_override = override_child.shape[1]
    else:  # never read: HAS_OVERRIDE=False (int64 / float32 placeholders)
        override_child_arg, override_bid_arg, n_override = keys, logp, 0
    block_v = triton.next_power_of_2(vocab)
    args = (
        logits, logits.stride(0), logits.stride(1), beam_scores.contiguous(),
        row_node.contiguous(), child_ptr.contiguous(), child_code.contiguous(),
        child_max_bid.contiguous(), allowed_arg, stride_ar, stride_av,
        override_child_arg, override_bid_arg,
        keys, child, logp, vocab, p, k, slots, float(alpha), float(log_beta), n_override,
    )
    meta = dict(
        USE_BID=use_bid, HAS_ALLOWED=allowed is not None, RENORM=bool(renormalize),
        HAS_OVERRIDE=has_override,
        SMALL=min(_SMALL_TILE, block_v), BLOCK_V=block_v, BLOCK_PAD=_BLOCK_PAD, PAD_KEY=_PAD_KEY,
        num_warps=4 if block_v <= 1024 else 8 if block_v <= 4096 else 16,
    )
    return Launch(_beam_step_rows_kernel, (rows,), args, meta)


def _merge(keys: torch.Tensor, child: torch.Tensor, logp: torch.Tensor, k: int, vocab: int):
    """Global top-``k`` of each request's survivor keys, decoded and padded to ``k`` entries."""
    n, pool = keys.shape
    take = min(k, pool)
    top, index = torch.topk(keys, take, dim=1, largest=True, sorted=True)
    alive = top != _PAD_KEY
    order = top >> 31
    bits = torch.where(order < 0, order ^ 0x7FFFFFFF, order).to(torch.int32)
    scores = torch.where(alive, bits.view(torch.float32), float("-inf"))
    flat = _KEY_LOW - (top & _KEY_LOW)
    parent = torch.where(alive, torch.div(flat, max(vocab, 1), rounding_mode="floor"), 0)
    token = torch.where(alive, flat - parent * vocab, 0)
    child = torch.where(alive, child.gather(1, index).long(), -1)
    logp = torch.where(alive, logp.gather(1, index), float("-inf"))
    missing = k - take
    if missing > 0:
        scores = torch.cat([scores, scores.new_full((n, missing), float("-inf"))], dim=1)
        parent = torch.cat([parent, parent.new_zeros(n, missing)], dim=1)
        token = torch.cat([token, token.new_zeros(n, missing)], dim=1)
        child = torch.cat([child, child.new_full((n, missing), -1)], dim=1)
        logp = torch.cat([logp, logp.new_full((n, missing), float("-inf"))], dim=1)
    return scores, parent, token, child, logp.float()
