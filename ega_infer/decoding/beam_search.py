"""The constrained beam search over SID levels (MISSION.md section 4), both decode modes.

One step per (slot, level) position, vectorised over requests and beams:

    LazyAR tail on every beam -> level head logits -> ``beam_step`` (trie mask + token bid
    weight + log-softmax over the admissible children, added to the beam score, exact top-k,
    the child node reached) -> gather parents.

After a slot's last level the leaf resolves to an item. ``candidates`` decodes one slot (each
beam is one item); ``lists`` decodes ``num_slots`` slots (each beam is a whole slate) under the
slate rules. No invalid SID can be emitted: every kept token is a trie child of its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..catalog.trie import DeviceTrie
from ..model.decoder import DecoderContext, LazyARDecoder
from ..ops.beam_step import beam_step
from .config import DecodeConfig
from .slate_rules import SlateRules

__all__ = ["BeamResult", "beam_search"]


@dataclass
class BeamResult:
    """Final beams of every request (``N`` requests, ``B`` beams, ``K`` slots per beam).

    scores [N, B] (``-inf`` for dead beams), items [N, B, K] catalog rows (-1 = none),
    poi_codes [N, B, K, C], log_alloc [N, B, K] (log of the bid-weighted allocation
    probability of each slot's item: the sum of its level log-probs), hidden [N, B, K, d]
    (decoder state that emitted each slot's last code, for the creative head).
    """

    scores: torch.Tensor
    items: torch.Tensor
    poi_codes: torch.Tensor
    log_alloc: torch.Tensor
    hidden: torch.Tensor

    @property
    def alive(self) -> torch.Tensor:
        return self.scores > float("-inf")


@torch.no_grad()
def beam_search(
    decoder: LazyARDecoder,
    ctx: DecoderContext,
    trie: DeviceTrie,
    is_ad: torch.Tensor,
    config: DecodeConfig,
    organic: torch.Tensor | None = None,
) -> BeamResult:
    """Decode a batch. ``organic [N, M]`` (catalog rows, -1 pad) is required in lists mode."""
    levels = trie.levels
    schedule = config.beam_schedule(levels)
    slots = config.num_slots if config.mode == "lists" else 1
    n = ctx.mask.shape[0]
    device = ctx.mask.device
    rules = SlateRules(config, trie, is_ad, organic) if config.mode == "lists" else None

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
        return BeamResult(scores, items, codes, log_alloc.fill_(float("-inf")), hidden_out)

    for position in range(slots * levels):
        slot, level = divmod(position, levels)
        width = schedule[level] if slot == 0 else schedule[-1]
        beams = scores.shape[1]

        x = decoder.fuse(
            trunk[:, position, None].expand(n, beams, -1),
            decoder.token_embedding(prev_token, position - 1),
        )
        hidden, cache = decoder.tail_step(x, ctx, cache, config.backend)
        logits = decoder.logits(hidden, level).reshape(n * beams, -1)
        allowed = rules.allowed(level, slot, node, items) if rules is not None else None
        step = beam_step(
            logits, scores, node.reshape(-1), trie.child_ptr[level], trie.node_code[level],
            trie.node_max_bid[level], k=width, alpha=config.alpha, beta=config.beta,
            allowed=allowed, backend=config.backend,
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
            else:
                placed = torch.where(alive, trie.resolve(node.clamp(min=0)), -1)
            items[..., slot] = placed
            log_alloc[..., slot] = torch.where(alive, slot_logp, float("-inf"))
            hidden_out[..., slot, :] = hidden[rows, parent]
            slot_logp = torch.zeros_like(slot_logp)
            node = torch.where(alive, 0, -1)

    return BeamResult(scores, items, codes, log_alloc, hidden_out)
