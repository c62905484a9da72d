"""The constrained beam search over SID levels, both decode modes.

One step per (slot, level) position, vectorised over requests and beams:

    LazyAR tail on every beam -> level head logits -> ``beam_step`` (trie mask + token bid
    weight + log-softmax over the admissible children, added to the beam score, exact top-k,
    the child node reached) -> gather parents.

After a slot's last level the leaf resolves to an item. ``candidates`` decodes one slot (each
beam is one item); ``lists`` decodes ``num_slots`` slots (each beam is a whole slate) under the
slate rules. No invalid SID can be emitted: every kept token is a trie child of its prefix.

Per-request exclusions and replaced bids (``overrides.py``) decode exactly as the catalog
without those items, or with those bids, would: the excluded items are masked like placed
ones and ``beam_step`` weighs their paths with the bids the request leaves there.
"""

from __future__ import annotations

import torch

from ..auction.lists import CandidateLists
from ..catalog.device import DeviceCatalog
from ..model.decoder import DecoderContext, LazyARDecoder
from ..ops._dispatch import OpBackends
from ..ops.beam_step import beam_step
from .config import DecodeSpec
from .overrides import DecodeOverrides, ItemOverrides, resolve_leaves
from .slate_rules import SlateRules

__all__ = ["beam_search"]


@torch.no_grad()
def beam_search(
    decoder: LazyARDecoder,
    ctx: DecoderContext,
    catalog: DeviceCatalog,
    spec: DecodeSpec,
    backends: OpBackends,
    organic: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    overrides: ItemOverrides | None = None,
) -> CandidateLists:
    """Decode a batch into its candidate lists ``[N, L, K]``.

    Lists mode: each beam is a list (``L = B`` beams of ``K = num_slots`` slots). Candidates mode:
    the one list of each request is its best ``num_slots`` beams in beam order (``L = 1``). The
    lists carry items, ad flags and bids, ``log_alloc`` (each slot's log allocation probability:
    the sum of its level log-probs), ``poi_codes``, ``hidden`` (the decoder state that emitted
    each slot's last code, for the creative head) and the raw beams. ``organic [N, M]`` (catalog
    rows, -1 pad) is required in lists mode. A width wider than the catalog can fill is served
    at what it can fill (``DeviceTrie.beam_capacity``).

    ``exclude [N, E]`` (catalog rows, -1 pad) keeps those items out of every beam of their
    request; ``overrides`` (an ``ItemOverrides``) excludes items or gives ads another bid per
    request. Items must be distinct within a request across both."""
    trie = catalog.trie
    levels = trie.levels
    schedule = spec.beam_schedule(levels)
    slots = spec.slots
    n = ctx.mask.shape[0]
    device = ctx.mask.device
    if exclude is not None:
        excluded = ItemOverrides.exclusions(exclude.long())
        overrides = excluded if overrides is None else overrides.cat(excluded)
    ov = (DecodeOverrides(overrides, trie, catalog.is_ad, catalog.bids)
          if overrides is not None and overrides.width > 0 else None)
    if ov is not None and organic is not None:
        organic = ov.drop_excluded(organic)
    rules = (SlateRules(spec, trie, catalog.is_ad, organic, ov, spec.bid_blind)
             if spec.mode == "lists" else None)

    trunk = decoder.trunk(ctx, slots * levels)
    dtype = trunk.dtype
    cache = decoder.empty_cache(n, device, dtype)
    rows = torch.arange(n, device=device)[:, None]

    scores = torch.zeros(n, 1, device=device)
    node = torch.zeros(n, 1, dtype=torch.long, device=device)
    prev_token = torch.zeros(n, 1, dtype=torch.long, device=device)
    items = torch.full((n, 1, slots), -1, dtype=torch.long, device=device)
    codes = torch.zeros(n, 1, slots, levels, dtype=torch.long, device=device)
    log_alloc = torch.zeros(n, 1, slots, device=device)
    hidden_out = torch.zeros(n, 1, slots, trunk.shape[-1], device=device, dtype=dtype)
    slot_logp = torch.zeros(n, 1, device=device)

    if trie.leaf_items.numel() == 0:  # an empty catalog: every beam is dead from the start
        scores = torch.full((n, 1), float("-inf"), device=device)
        return _lists(spec, catalog, scores, items, codes, log_alloc.fill_(float("-inf")), hidden_out)

    for position in range(slots * levels):
        slot, level = divmod(position, levels)
        beams = scores.shape[1]
        width = trie.beam_capacity(level, beams, schedule[level] if slot == 0 else schedule[-1], slot == 0)

        x = decoder.fuse(
            trunk[:, position, None].expand(n, beams, -1),
            decoder.token_embedding(prev_token, position - 1),
        )
        hidden, cache = decoder.tail_step(x, ctx, cache, backends.decode_attention)
        logits = decoder.logits(hidden, level).reshape(n * beams, -1)
        if rules is not None:
            allowed = rules.allowed(level, slot, node, items)
        else:
            allowed = ov.allowed(level, node) if ov is not None else None
        override_child, override_bid = ov.beam_step_override(level) if ov is not None else (None, None)
        step = beam_step(
            logits, scores, node.reshape(-1), trie.child_ptr[level], trie.node_code[level],
            trie.node_max_bid[level], k=width, alpha=spec.alpha, beta=spec.beta,
            allowed=allowed, override_child=override_child, override_bid=override_bid,
            backend=backends.beam_step,
        )
        scores, parent, token, alive = step.scores, step.parent, step.token, step.alive
        cache = cache.reorder(parent)
        items, codes, log_alloc, hidden_out = (
            items[rows, parent], codes[rows, parent], log_alloc[rows, parent], hidden_out[rows, parent]
        )
        slot_logp = slot_logp[rows, parent] + step.logp
        codes[..., slot, level] = token
        node = step.child  # -1 where the beam is dead
        if rules is not None:
            rules.reorder(parent)
        prev_token = token

        if level == levels - 1:
            if rules is not None:
                placed = rules.resolve(slot, node, items)
                rules.place(slot, placed)
            elif ov is not None or spec.bid_blind:
                placed = torch.where(alive, resolve_leaves(trie, catalog.is_ad, node, ov, spec.bid_blind), -1)
            else:
                placed = torch.where(alive, trie.resolve(node.clamp(min=0)), -1)
            items[..., slot] = placed
            log_alloc[..., slot] = torch.where(alive, slot_logp, float("-inf"))
            hidden_out[..., slot, :] = hidden[rows, parent]
            slot_logp = torch.zeros_like(slot_logp)
            node = torch.where(alive, 0, -1)

    return _lists(spec, catalog, scores, items, codes, log_alloc, hidden_out, ov)


def _lists(spec: DecodeSpec, catalog: DeviceCatalog, scores: torch.Tensor, items: torch.Tensor,
           codes: torch.Tensor, log_alloc: torch.Tensor, hidden: torch.Tensor,
           ov: DecodeOverrides | None = None) -> CandidateLists:
    """The final beams ``[N, B, ...]`` as candidate lists, with the placed items' ad flags and bids."""
    beam_items, beam_scores = items, scores
    alive = scores > float("-inf")
    if spec.mode == "candidates":  # one list per request: its best num_slots beams in beam order
        k = min(spec.num_slots, scores.shape[1])
        alive_k = alive[:, :k]
        items = torch.where(alive_k, items[:, :k, 0], -1)[:, None]
        codes = codes[:, None, :k, 0]
        hidden = hidden[:, None, :k, 0]
        log_alloc = torch.where(alive_k, scores[:, :k], float("-inf"))[:, None]
        alive = alive_k[:, :1].any(1, keepdim=True)
    safe = items.clamp(min=0)
    is_ad = catalog.is_ad[safe] & (items >= 0)
    bids = torch.where(is_ad, catalog.bids[safe] if ov is None else ov.item_bid(safe), 0.0)
    return CandidateLists(
        items=items, is_ad=is_ad, bids=bids, alive=alive, weights=spec.list_score, log_alloc=log_alloc,
        poi_codes=codes, hidden=hidden, beam_items=beam_items, beam_scores=beam_scores,
    )
