"""The catalog trie over POI codes, as flat arrays (built by C++ in ``ega_infer._C``).

Nodes of each depth are stored in lexicographic order of their prefixes, so the children of a
node are a contiguous, code-sorted range of the next depth (CSR without next-node ids):

* ``child_ptr[l]``  [n_l + 1]: children of depth-l node i are depth-(l+1) nodes
  ``child_ptr[l][i] .. child_ptr[l][i+1] - 1`` (depth 0 is the root);
* ``node_code[l]``, ``node_max_bid[l]``, ``node_ad_count[l]`` [n_{l+1}]: per depth-(l+1) node,
  its code, the max ad bid in its subtree (0 without ads) and its number of ads;
* ``leaf_ptr`` / ``leaf_items``: the items of each leaf, ads by bid descending then organic
  items in catalog order, so a leaf resolves to ``leaf_items[leaf_ptr[leaf]]``;
* ``item_nodes`` [N, C]: each item's node at depths 1..C.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["TrieArrays", "DeviceTrie"]


@dataclass(frozen=True)
class TrieArrays:
    level_sizes: np.ndarray
    child_ptr: tuple[np.ndarray, ...]
    node_code: tuple[np.ndarray, ...]
    node_max_bid: tuple[np.ndarray, ...]
    node_ad_count: tuple[np.ndarray, ...]
    leaf_ptr: np.ndarray
    leaf_items: np.ndarray
    item_nodes: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, is_ad: np.ndarray, bids: np.ndarray, sizes: tuple[int, ...]) -> TrieArrays:
        from .._native import c_module

        raw = c_module().build_trie(
            np.ascontiguousarray(codes, dtype=np.int32),
            np.ascontiguousarray(is_ad, dtype=np.bool_),
            np.ascontiguousarray(bids, dtype=np.float32),
            list(sizes),
        )
        return cls(
            level_sizes=raw["level_sizes"],
            child_ptr=tuple(raw["child_ptr"]),
            node_code=tuple(raw["node_code"]),
            node_max_bid=tuple(raw["node_max_bid"]),
            node_ad_count=tuple(raw["node_ad_count"]),
            leaf_ptr=raw["leaf_ptr"],
            leaf_items=raw["leaf_items"],
            item_nodes=raw["item_nodes"],
        )

    @property
    def levels(self) -> int:
        return len(self.child_ptr)

    def with_bids(self, is_ad: np.ndarray, bids: np.ndarray, changed: np.ndarray) -> TrieArrays:
        """Re-resolve the leaves holding ``changed`` items and refresh every max bid; no re-sort
        of the catalog, the node structure is shared with ``self``."""
        leaf_items = self.leaf_items.copy()
        leaves = np.unique(self.item_nodes[changed, -1])
        _order_leaves(leaf_items, self.leaf_ptr, leaves, is_ad, bids)
        return replace(self, leaf_items=leaf_items, node_max_bid=self._max_bids(leaf_items, is_ad, bids))

    def without_items(self, keep: np.ndarray, is_ad: np.ndarray, bids: np.ndarray) -> TrieArrays | None:
        """Drop the items where ``keep`` is False (``is_ad``/``bids`` are of the kept items).

        Returns ``None`` when a leaf would become empty: the node structure changes and the
        caller rebuilds.
        """
        dropped_per_leaf = np.bincount(self.item_nodes[~keep, -1], minlength=len(self.leaf_ptr) - 1)
        if np.any(np.diff(self.leaf_ptr) == dropped_per_leaf):
            return None
        new_index = np.cumsum(keep) - 1  # old row -> new row
        kept_slots = keep[self.leaf_items]
        leaf_items = new_index[self.leaf_items[kept_slots]]
        leaf_ptr = self.leaf_ptr - np.concatenate([[0], np.cumsum(dropped_per_leaf)])
        item_nodes = self.item_nodes[keep]
        ad_count = [None] * self.levels
        for level in range(self.levels):
            ad_count[level] = np.bincount(
                item_nodes[is_ad, level], minlength=len(self.node_code[level])
            ).astype(np.int32)
        trie = replace(
            self, leaf_ptr=leaf_ptr, leaf_items=leaf_items, item_nodes=item_nodes,
            node_ad_count=tuple(ad_count),
        )
        return replace(trie, node_max_bid=trie._max_bids(leaf_items, is_ad, bids))

    def _max_bids(self, leaf_items: np.ndarray, is_ad: np.ndarray, bids: np.ndarray) -> tuple[np.ndarray, ...]:
        ad_bids = np.where(is_ad, bids, 0).astype(np.float32)
        out = [None] * self.levels
        out[-1] = np.maximum.reduceat(ad_bids[leaf_items], self.leaf_ptr[:-1]) if len(leaf_items) else np.zeros(0, np.float32)
        for level in range(self.levels - 2, -1, -1):
            below = out[level + 1]
            out[level] = np.maximum.reduceat(below, self.child_ptr[level + 1][:-1]) if len(below) else below
        return tuple(a.astype(np.float32) for a in out)


def _order_leaves(leaf_items: np.ndarray, leaf_ptr: np.ndarray, leaves: np.ndarray, is_ad: np.ndarray, bids: np.ndarray) -> None:
    """Sort the items of ``leaves`` in place: ads by bid descending, then organic, ties by row."""
    if len(leaves) == 0:
        return
    starts, ends = leaf_ptr[leaves], leaf_ptr[leaves + 1]
    counts = ends - starts
    seg = np.repeat(np.arange(len(leaves)), counts)
    pos = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    items = leaf_items[pos]
    order = np.lexsort((items, -np.where(is_ad[items], bids[items], 0), ~is_ad[items], seg))
    leaf_items[pos] = items[order]


class DeviceTrie:
    """The trie's arrays as tensors on one device, plus what decoding needs to walk it."""

    def __init__(self, trie: TrieArrays, codebook_sizes: tuple[int, ...], device: torch.device) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.ascontiguousarray(a), device=device)  # a copy: catalog arrays are read-only

        self.device = device
        self.levels = trie.levels
        self.codebook_sizes = codebook_sizes
        self.child_ptr = [t(a).long() for a in trie.child_ptr]
        self.node_code = [t(a).int() for a in trie.node_code]
        self.node_max_bid = [t(a).float() for a in trie.node_max_bid]
        self.node_ad_count = [t(a).int() for a in trie.node_ad_count]
        self.leaf_ptr = t(trie.leaf_ptr).long()
        self.leaf_items = t(trie.leaf_items).long()
        self.item_nodes = t(trie.item_nodes).long()
        # children are sorted by (parent, code): a global key makes child lookup a searchsorted
        self.child_key = []
        for level in range(self.levels):
            counts = torch.diff(self.child_ptr[level])
            parent = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
            self.child_key.append(parent * codebook_sizes[level] + self.node_code[level].long())

    def child(self, level: int, node: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Depth-(level+1) node reached from depth-``level`` ``node`` by ``code`` (must exist)."""
        key = node.long() * self.codebook_sizes[level] + code.long()
        return torch.searchsorted(self.child_key[level], key)

    def resolve(self, leaf: torch.Tensor) -> torch.Tensor:
        """Default item of each leaf: its highest-bid ad, else its first organic item."""
        return self.leaf_items[self.leaf_ptr[leaf]]
