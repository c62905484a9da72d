"""Per-request changes to the catalog one decode sees: excluded items and replaced ad bids.

Requests exclude items (frequency caps, advertiser blocklists, ads the user hid, items already
seen); the counterfactual decodes of Clarke pricing drop one ad of the winning slate; the
full re-decode evaluation gives one ad another bid. Each is exact on the shared trie, with no
per-request copy of it:

* an excluded item is never placed (a leaf skips it; a subtree left without an admissible item
  is masked, from per-node ad and item counts minus the request's excluded ones below);
* the token bid weight of every node on an overridden item's path uses the max bid of what
  the request leaves in that subtree, computed bottom-up once per decode along those paths
  (a leaf scan, then one child scan per level) and passed to ``beam_step`` as its per-request
  override: exact for any set of overrides;
* a leaf resolves to its highest admissible bid as the request sees it (ties by catalog row).

Everything is fixed-shape ``[N, E]`` work with sorted per-request lookups; no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..catalog.trie import DeviceTrie

__all__ = ["ItemOverrides", "DecodeOverrides", "resolve_leaves", "choose_leaf_item", "code_mask"]

_PAD = 2**62  # sorts after every node id and catalog row


@dataclass(frozen=True, eq=False)
class ItemOverrides:
    """``[N, E]`` per request: ``items`` catalog rows (-1 pad, distinct within a request),
    ``excluded`` (the item is out of this request) and ``bids`` (the ad's bid in this request
    where it is not excluded; ignored for organic items)."""

    items: torch.Tensor
    bids: torch.Tensor
    excluded: torch.Tensor

    @classmethod
    def exclusions(cls, items: torch.Tensor) -> ItemOverrides:
        return cls(items, torch.zeros(items.shape, device=items.device), items >= 0)

    @classmethod
    def rebids(cls, items: torch.Tensor, bids: torch.Tensor) -> ItemOverrides:
        return cls(items, bids.float(), torch.zeros_like(items, dtype=torch.bool))

    @property
    def width(self) -> int:
        return self.items.shape[1]

    def cat(self, other: ItemOverrides) -> ItemOverrides:
        """Both sets per request (their items must be distinct)."""
        return ItemOverrides(*(torch.cat([getattr(self, f), getattr(other, f)], 1) for f in ("items", "bids", "excluded")))

    def take(self, rows: torch.Tensor) -> ItemOverrides:
        return ItemOverrides(self.items[rows], self.bids[rows], self.excluded[rows])


def _sorted(keys: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``keys [N, E]`` (-1: none) sorted per request with pads last, and ``values`` alongside."""
    keys = torch.where(keys >= 0, keys, _PAD)
    keys, order = torch.sort(keys, dim=1)
    return (keys, *(v.gather(1, order) for v in values))


def _find(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``query [N, ...]``: whether each is in its request's sorted ``keys [N, E]``, and where."""
    flat = query.reshape(query.shape[0], -1).contiguous()
    if keys.shape[1] == 0:
        return torch.zeros_like(flat, dtype=torch.bool).view(query.shape), torch.zeros_like(flat).view(query.shape)
    pos = torch.searchsorted(keys, flat).clamp(max=keys.shape[1] - 1)
    hit = (keys.gather(1, pos) == flat) & (flat >= 0)
    return hit.view(query.shape), pos.view(query.shape)


def _count(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """How often each ``query [N, ...]`` occurs in its request's sorted ``keys [N, E]``."""
    flat = query.reshape(query.shape[0], -1).contiguous()
    if keys.shape[1] == 0:
        return torch.zeros_like(flat).view(query.shape)
    return (torch.searchsorted(keys, flat, right=True) - torch.searchsorted(keys, flat)).view(query.shape)


class DecodeOverrides:
    """What one decode needs of an ``ItemOverrides``, built once on its trie.

    Per level ``l`` (depth-(l+1) nodes): the overridden items' path nodes with the max bid left
    below each (``beam_step``'s ``override_child`` / ``override_bid``), and sorted path nodes of
    the excluded ads and items (for the admissibility counts)."""

    def __init__(self, overrides: ItemOverrides, trie: DeviceTrie, is_ad: torch.Tensor, bids: torch.Tensor) -> None:
        self.trie = trie
        self.is_ad = is_ad
        self.catalog_bids = bids
        items = overrides.items
        present = items >= 0
        safe = items.clamp(min=0)
        self._items, self._bids, self._excluded = _sorted(items, overrides.bids.float(), overrides.excluded & present)
        path = [torch.where(present, trie.item_nodes[safe, level], -1) for level in range(trie.levels)]
        ad = present & is_ad[safe] & overrides.excluded
        gone = present & overrides.excluded
        self.excluded_ad_nodes = [_sorted(torch.where(ad, p, -1))[0] for p in path]
        self.excluded_item_nodes = [_sorted(torch.where(gone, p, -1))[0] for p in path]
        self.path = path
        self.path_bid = self._path_bids(path)

    def item_bid(self, rows: torch.Tensor) -> torch.Tensor:
        """The bid of catalog ``rows [N, ...]`` in each request (0 for organic items)."""
        safe = rows.clamp(min=0)
        if self._items.shape[1] == 0:
            return torch.where(self.is_ad[safe], self.catalog_bids[safe], 0.0)
        hit, pos = _find(self._items, rows)
        own = self._bids.gather(1, pos.reshape(rows.shape[0], -1)).view(rows.shape)
        return torch.where(self.is_ad[safe], torch.where(hit, own, self.catalog_bids[safe]), 0.0)

    def excluded(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether catalog ``rows [N, ...]`` are excluded from their request."""
        if self._items.shape[1] == 0:
            return torch.zeros_like(rows, dtype=torch.bool)
        hit, pos = _find(self._items, rows)
        return hit & self._excluded.gather(1, pos.reshape(rows.shape[0], -1)).view(rows.shape)

    def beam_step_override(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.path[level], self.path_bid[level]

    def ads_removed(self, level: int, child: torch.Tensor) -> torch.Tensor:
        """Excluded ads below each depth-(level+1) node ``child [N, ...]`` of its request."""
        return _count(self.excluded_ad_nodes[level], child)

    def items_removed(self, level: int, child: torch.Tensor) -> torch.Tensor:
        return _count(self.excluded_item_nodes[level], child)

    def allowed(self, level: int, node: torch.Tensor) -> torch.Tensor:
        """Candidates mode: the codes ``[N * B, V]`` whose subtree still holds an item the
        request has not excluded, for beams at ``node [N, B]``."""
        n = node.shape[0]
        child, valid = self.trie.children(level, node.reshape(-1))
        left = self.trie.node_item_count[level][child] - self.items_removed(level, child.view(n, -1)).view(child.shape)
        return code_mask(self.trie, level, child, valid & (left > 0))

    def drop_excluded(self, organic: torch.Tensor) -> torch.Tensor:
        """``organic [N, M]`` rows (-1 pad) without the excluded ones, order kept, -1 padded."""
        gone = (organic < 0) | self.excluded(organic)
        position = torch.arange(organic.shape[1], device=organic.device)
        order = torch.sort(gone.long() * organic.shape[1] + position, dim=1).indices
        return torch.where(gone.gather(1, order), -1, organic.gather(1, order))

    def _path_bids(self, path: list[torch.Tensor]) -> list[torch.Tensor]:
        """Max bid a request leaves below each of its path nodes (0 without ads), leaves up."""
        trie = self.trie
        n, e = path[0].shape
        rows, valid = trie.leaf_scan(path[-1])
        rows = torch.where(valid, rows, -1)
        live = valid & self.is_ad[rows.clamp(min=0)] & ~self.excluded(rows)
        bid = torch.where(live, self.item_bid(rows), float("-inf")).amax(-1).clamp(min=0)
        out = [bid]
        for level in range(trie.levels - 2, -1, -1):
            child, ok = trie.children(level + 1, path[level].reshape(-1))  # [N * E, W]
            child = torch.where(ok, child, -1).view(n, e, -1)
            below = trie.node_max_bid[level + 1][child.clamp(min=0)]
            keys, values = _sorted(path[level + 1], out[0])
            hit, pos = _find(keys, child)
            below = torch.where(hit, values.gather(1, pos.reshape(n, -1)).view(child.shape), below)
            out.insert(0, torch.where(child >= 0, below, float("-inf")).amax(-1).clamp(min=0))
        return out


def resolve_leaves(trie: DeviceTrie, is_ad: torch.Tensor, leaf: torch.Tensor, ov: DecodeOverrides | None,
                   bid_blind: bool) -> torch.Tensor:
    """Candidates mode: the item each ``leaf [N, B]`` resolves to for its request (-1 if dead or
    every item is excluded): its highest-bid ad as the request sees bids (``bid_blind``: the
    lowest-row ad), else its first organic item."""
    items, valid = trie.leaf_scan(leaf)
    ok = valid if ov is None else valid & ~ov.excluded(items)
    ad = is_ad[items]
    key = torch.zeros(items.shape, device=items.device) if bid_blind or ov is None else ov.item_bid(items)
    return torch.where(leaf >= 0, choose_leaf_item(items, ok & ad, ok & ~ad, key), -1)


def choose_leaf_item(items: torch.Tensor, ad_ok: torch.Tensor, organic_ok: torch.Tensor,
                     ad_key: torch.Tensor) -> torch.Tensor:
    """The item a leaf resolves to, from its ``items [.., M]`` (catalog rows): the admissible ad
    with the highest ``ad_key`` (ties: the lowest row), else the admissible organic item of the
    lowest row, else -1. With ``ad_key`` the catalog bids this is the leaf's own order."""
    key = torch.where(ad_ok, ad_key, float("-inf"))
    top = ad_ok & (key == key.amax(-1, keepdim=True))
    none = torch.iinfo(torch.int64).max
    ad = torch.where(top, items, none).amin(-1)
    organic = torch.where(organic_ok, items, none).amin(-1)
    return torch.where(ad_ok.any(-1), ad, torch.where(organic_ok.any(-1), organic, -1))


def code_mask(trie: DeviceTrie, level: int, child: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Bool ``[R, V]``: the codes of the children ``child [R, W]`` where ``ok``."""
    vocab = trie.codebook_sizes[level]
    # inadmissible children write into a spare column, dropped after the scatter
    code = torch.where(ok, trie.node_code[level][child].long(), vocab)
    allowed = torch.zeros(child.shape[0], vocab + 1, dtype=torch.bool, device=child.device)
    return allowed.scatter_(1, code, True)[:, :vocab]
