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

The arrays are read-only and shared between catalogs: ``with_bids`` and ``without_items`` build
the arrays an update changes (in ``_C`` too, without re-sorting the catalog) and reuse the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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

        return cls._from_raw(c_module().build_trie(
            np.ascontiguousarray(codes, dtype=np.int32),
            np.ascontiguousarray(is_ad, dtype=np.bool_),
            np.ascontiguousarray(bids, dtype=np.float32),
            list(sizes),
        ))

    @property
    def levels(self) -> int:
        return len(self.child_ptr)

    def with_bids(self, is_ad: np.ndarray, bids: np.ndarray, changed: np.ndarray) -> TrieArrays:
        """The trie after the bids of rows ``changed`` became ``bids[changed]`` (``is_ad``/``bids``:
        every row, bids new). Only the leaves of those rows and their paths are redone; the node
        structure is shared with ``self``, which stays unchanged."""
        from .._native import c_module

        raw = c_module().refresh_bids(
            self._raw(), _bools(is_ad), _floats(bids), np.ascontiguousarray(changed, dtype=np.int64)
        )
        return replace(self, leaf_items=_frozen(raw["leaf_items"]),
                       node_max_bid=tuple(_frozen(a) for a in raw["node_max_bid"]))

    def without_items(self, keep: np.ndarray, is_ad: np.ndarray, bids: np.ndarray) -> TrieArrays:
        """The trie of the rows where ``keep`` is True, renumbered in order (``is_ad``/``bids``:
        every row of ``self``). Equals ``build`` on the kept rows, in linear time without a sort:
        nodes left without items are pruned and the survivors renumbered in order."""
        from .._native import c_module

        return self._from_raw(c_module().prune_trie(self._raw(), _bools(is_ad), _floats(bids), _bools(keep)))

    @classmethod
    def _from_raw(cls, raw: dict) -> TrieArrays:
        # read-only: catalogs share these arrays across updates and threads
        return cls(
            level_sizes=_frozen(raw["level_sizes"]),
            child_ptr=tuple(_frozen(a) for a in raw["child_ptr"]),
            node_code=tuple(_frozen(a) for a in raw["node_code"]),
            node_max_bid=tuple(_frozen(a) for a in raw["node_max_bid"]),
            node_ad_count=tuple(_frozen(a) for a in raw["node_ad_count"]),
            leaf_ptr=_frozen(raw["leaf_ptr"]),
            leaf_items=_frozen(raw["leaf_items"]),
            item_nodes=_frozen(raw["item_nodes"]),
        )

    def _raw(self) -> dict:
        """The dict ``_C`` functions take (build_trie's layout)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _bools(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.bool_)


def _floats(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


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
        self._set_widths([int(np.diff(a).max(initial=0)) for a in trie.child_ptr], int(np.diff(trie.leaf_ptr).max(initial=0)))

    @classmethod
    def from_tensors(cls, arrays: dict, codebook_sizes: tuple[int, ...], device: torch.device | str) -> DeviceTrie:
        """The same trie from ``build_trie``-layout tensors (``device_build.build_trie_device``),
        with no host round trip. A tensor already on ``device`` with the attribute's dtype is
        shared, not copied. One host synchronisation reads the widths (max children per node,
        max items per leaf) that let the decode loop itself run without any."""
        device = torch.device(device)
        self = cls.__new__(cls)
        self.device = device
        self.levels = len(arrays["child_ptr"])
        self.codebook_sizes = tuple(codebook_sizes)

        def t(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return a.to(device=device, dtype=dtype)

        self.child_ptr = [t(a, torch.long) for a in arrays["child_ptr"]]
        self.node_code = [t(a, torch.int32) for a in arrays["node_code"]]
        self.node_max_bid = [t(a, torch.float32) for a in arrays["node_max_bid"]]
        self.node_ad_count = [t(a, torch.int32) for a in arrays["node_ad_count"]]
        self.leaf_ptr = t(arrays["leaf_ptr"], torch.long)
        self.leaf_items = t(arrays["leaf_items"], torch.long)
        self.item_nodes = t(arrays["item_nodes"], torch.long)
        counts = [torch.diff(p).max() if p.numel() > 1 else p.new_zeros(()) for p in self.child_ptr]
        leaf = torch.diff(self.leaf_ptr).max() if self.leaf_ptr.numel() > 1 else self.leaf_ptr.new_zeros(())
        widths = torch.stack(counts + [leaf]).tolist()  # the one host sync
        self._set_widths(widths[:-1], widths[-1])
        return self

    def _set_widths(self, max_children: list[int], max_leaf_items: int) -> None:
        self.max_children = max_children  # per level: the most children any node has
        self.max_leaf_items = max_leaf_items  # the most items any leaf holds
        self.level_nodes = [int(c.numel()) for c in self.node_code]  # per level: the nodes at depth l + 1
        self.node_item_count = self._item_counts()

    def _item_counts(self) -> list[torch.Tensor]:
        """Per level, the items below each depth-(l+1) node (on the device, no host sync):
        the leaves' counts summed up the CSR child ranges."""
        counts = [torch.diff(self.leaf_ptr)]
        for ptr in reversed(self.child_ptr[1:]):
            total = torch.cat([counts[0].new_zeros(1), torch.cumsum(counts[0], 0)])
            counts.insert(0, total[ptr[1:]] - total[ptr[:-1]])
        return counts

    def beam_capacity(self, level: int, beams: int, width: int, first_slot: bool = True) -> int:
        """``width`` cut to the most beams one request can hold after decoding ``level`` from
        ``beams`` beams: each has at most ``max_children[level]`` children, and in the first
        slot each beam is a distinct depth-(level+1) prefix (at most one per node). A width
        beyond what the catalog can fill is served at this, never allocated."""
        capacity = beams * max(self.max_children[level], 1)
        if first_slot:
            capacity = min(capacity, max(self.level_nodes[level], 1))
        return min(width, capacity)

    def children(self, level: int, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The depth-(level+1) children of depth-``level`` nodes ``[R]`` (-1: none), padded to
        the level's widest node: ``(child [R, W], valid [R, W])``. Fixed shapes, no host sync."""
        ptr = self.child_ptr[level]
        alive = node >= 0
        safe = node.clamp(min=0, max=max(ptr.numel() - 2, 0)).long()
        start = ptr[safe]
        count = torch.where(alive, ptr[(safe + 1).clamp(max=ptr.numel() - 1)] - start, 0)
        offset = torch.arange(max(self.max_children[level], 1), device=node.device)
        valid = offset < count[:, None]
        child = torch.where(valid, start[:, None] + offset, 0).clamp(max=max(self.node_code[level].numel() - 1, 0))
        return child, valid

    def leaf_scan(self, leaf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items of leaves ``[...]`` (-1: none), padded to the largest leaf, in leaf order:
        ``(items [..., M], valid [..., M])`` (items past a leaf's count are clamped rows, not -1).
        Fixed shapes, no host sync."""
        alive = leaf >= 0
        leaf = leaf.clamp(min=0)
        start = self.leaf_ptr[leaf]
        count = torch.where(alive, self.leaf_ptr[leaf + 1] - start, 0)
        offset = torch.arange(max(self.max_leaf_items, 1), device=leaf.device)
        valid = offset < count[..., None]
        items = self.leaf_items[(start[..., None] + offset).clamp(max=max(len(self.leaf_items) - 1, 0))]
        return items, valid

    def resolve(self, leaf: torch.Tensor) -> torch.Tensor:
        """Default item of each leaf: its highest-bid ad, else its first organic item."""
        return self.leaf_items[self.leaf_ptr[leaf]]
