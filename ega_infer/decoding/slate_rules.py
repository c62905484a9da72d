"""Which items a lists-mode beam may place next, vectorised over requests and beams.

At slot s a beam may take any ad it has not used yet (when the slot rules allow an ad there)
or the next organic item of its request (organic items keep their given order). A trie child
is admissible when its subtree still holds such an item; a chosen leaf resolves to its
highest-bid admissible ad, else to the admissible organic item. A request's ``DecodeOverrides``
(exclusions, replaced bids) take items out of the counts and the leaves and set the bids a
leaf ranks its ads by; ``bid_blind`` ranks them by catalog row instead, so no bid moves them.
"""

from __future__ import annotations

import torch

from ..catalog.trie import DeviceTrie
from .config import DecodeSpec
from .overrides import DecodeOverrides, choose_leaf_item, code_mask

__all__ = ["SlateRules"]

_NO_AD = -(10**6)  # "last ad slot" of a beam that has placed no ad yet


class SlateRules:
    """Per-beam slate state (``[N, B]`` each) and the admissibility masks it implies.

    organic : [N, M] catalog rows of each request's organic items in their given order, -1 pad.
    """

    def __init__(self, spec: DecodeSpec, trie: DeviceTrie, is_ad: torch.Tensor, organic: torch.Tensor,
                 overrides: DecodeOverrides | None = None, bid_blind: bool = False) -> None:
        self.spec = spec
        self.overrides = overrides
        self.bid_blind = bid_blind
        self.trie = trie
        self.is_ad = is_ad
        self.organic = organic
        n = organic.shape[0]
        device = organic.device
        self.organic_len = (organic >= 0).sum(1)
        self.next_organic = torch.zeros(n, 1, dtype=torch.long, device=device)
        self.n_ads = torch.zeros(n, 1, dtype=torch.long, device=device)
        self.last_ad = torch.full((n, 1), _NO_AD, dtype=torch.long, device=device)
        self.forbidden = set(spec.forbidden_ad_slots)

    def reorder(self, parent: torch.Tensor) -> None:
        self.next_organic = self.next_organic.gather(1, parent)
        self.n_ads = self.n_ads.gather(1, parent)
        self.last_ad = self.last_ad.gather(1, parent)

    def ads_ok(self, slot: int) -> torch.Tensor:
        if slot in self.forbidden:
            return torch.zeros_like(self.n_ads, dtype=torch.bool)
        ok = slot - self.last_ad - 1 >= self.spec.min_gap
        if self.spec.max_ads is not None:
            ok &= self.n_ads < self.spec.max_ads
        return ok

    def organic_next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ok, row)``: whether an organic item is left, and its catalog row (-1 if none)."""
        ok = self.next_organic < self.organic_len[:, None]
        if self.organic.shape[1] == 0:
            return ok, torch.full_like(self.next_organic, -1)
        idx = self.next_organic.clamp(max=self.organic.shape[1] - 1)
        return ok, torch.where(ok, self.organic.gather(1, idx), -1)

    def allowed(self, level: int, slot: int, node: torch.Tensor, slot_items: torch.Tensor) -> torch.Tensor:
        """Admissible codes at ``level`` for beams at trie ``node [N, B]``: bool ``[N * B, V]``.

        slot_items : [N, B, K] rows of the items placed so far (-1 for none).
        """
        n, b = node.shape
        trie = self.trie
        child, valid = trie.children(level, node.reshape(-1))  # [R, W], fixed shapes
        used = slot_items.reshape(n * b, -1)
        used_ad = (used >= 0) & self.is_ad[used.clamp(min=0)]
        used_nodes = torch.where(used_ad, trie.item_nodes[used.clamp(min=0), level], -1)  # [R, K]
        ads_left = trie.node_ad_count[level][child] - (used_nodes[:, None, :] == child[..., None]).sum(-1)
        if self.overrides is not None:
            ads_left = ads_left - self.overrides.ads_removed(level, child.view(n, -1)).view(child.shape)
        organic_ok, organic_row = self.organic_next()
        organic_node = torch.where(organic_ok, trie.item_nodes[organic_row.clamp(min=0), level], -1).reshape(-1)
        ads_ok = self.ads_ok(slot).reshape(-1)
        ok = valid & ((ads_ok[:, None] & (ads_left > 0)) | (organic_node[:, None] == child))
        return code_mask(trie, level, child, ok)

    def resolve(self, slot: int, leaf: torch.Tensor, slot_items: torch.Tensor) -> torch.Tensor:
        """Item row each beam places at its chosen ``leaf [N, B]`` (-1 for dead beams)."""
        alive = leaf >= 0
        items, valid = self.trie.leaf_scan(leaf)
        unused = ~(items[..., :, None] == slot_items[..., None, :]).any(-1)
        organic_ok, organic_row = self.organic_next()
        ad_ok = valid & self.is_ad[items] & self.ads_ok(slot)[..., None] & unused
        organic = valid & (items == organic_row[..., None]) & organic_ok[..., None]
        if self.overrides is not None or self.bid_blind:
            if self.overrides is not None:
                ad_ok &= ~self.overrides.excluded(items)
            key = (torch.zeros_like(items, dtype=torch.float32) if self.bid_blind or self.overrides is None
                   else self.overrides.item_bid(items))
            return torch.where(alive, choose_leaf_item(items, ad_ok, organic, key), -1)
        admissible = ad_ok | organic
        first = admissible.int().argmax(-1, keepdim=True)
        return torch.where(alive & admissible.any(-1), items.gather(-1, first).squeeze(-1), -1)

    def place(self, slot: int, items: torch.Tensor) -> None:
        """Record the items placed at ``slot`` (``[N, B]``, -1 for dead beams)."""
        placed = items >= 0
        ad = placed & self.is_ad[items.clamp(min=0)]
        self.n_ads += ad.long()
        self.last_ad = torch.where(ad, slot, self.last_ad)
        self.next_organic += (placed & ~ad).long()
