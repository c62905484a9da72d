"""The catalog trie built on the catalog's device with batched torch ops (the Hugging Face
engine's trie of a catalog already on the GPU).

``build_trie_device`` returns the arrays of ``ega_infer._C.build_trie`` (same keys, dtypes and
values, see ``trie.py`` for the layout) as tensors on the device of its inputs:

1. sort the rows by their codes, packed into one int64 key (successive stable sorts when the
   codebooks need more than 63 bits);
2. run-length: sorted row i opens a node at depth l+1 when its first l+1 codes differ from row
   i-1's, and a cumulative sum of those flags numbers the nodes of each depth in prefix order;
3. scans and gathers: CSR pointers are the node ids (or sorted positions) where each node
   starts, ad counts are differences of the cumulative ad count at those positions;
4. leaf order: one stable sort of the rows by ``(leaf, ads by bid descending, organic)``;
5. max bids: a leaf's is its first item's bid, and a depth's node takes the segment max
   (``scatter_reduce`` amax) of its children's, ties going to the first leaf as in ``_C``.

There is no Python loop over items or nodes, only over the few levels.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ..exceptions import CatalogError

__all__ = ["build_trie_device"]

_INT64_MIN = -(1 << 63)
_LOW32 = 0xFFFFFFFF
_ORGANIC = 0xFFFFFFFF  # bid key of an organic item: above the key of every finite bid
_MAX_KEY_BITS = 63  # a non-negative int64


def build_trie_device(
    codes: torch.Tensor, is_ad: torch.Tensor, bids: torch.Tensor, codebook_sizes: Sequence[int]
) -> dict:
    """The catalog trie of ``_C.build_trie``, built on the device of ``codes``.

    Depth-(l+1) nodes are the distinct prefixes ``codes[:, :l+1]`` in lexicographic order; a
    node's max bid is the largest ad bid below it (0 without ads; between equal bids, the bit
    pattern of the first one in prefix-then-row order, so even the sign of a zero matches
    ``_C``), and a leaf lists its ads by bid descending (ties by row), then its organic items
    by row.

    Parameters
    ----------
    codes : int32 or int64 tensor [N, C], any device; row i is item i's semantic ID.
    is_ad : bool tensor [N], same device.
    bids : float32 tensor [N], same device; finite (organic items' bids are ignored).
    codebook_sizes : C ints in [1, 2**31 - 1]; ``codes[:, l]`` must lie in ``[0, codebook_sizes[l])``.

    Returns
    -------
    dict with the keys and dtypes of ``_C.build_trie``, every value a tensor on ``codes.device``:
    ``level_sizes`` int64 [C+1]; lists ``child_ptr`` (int64 [level_sizes[l]+1]), ``node_code``
    (int32), ``node_max_bid`` (float32), ``node_ad_count`` (int32) over l < C, each
    [level_sizes[l+1]]; ``leaf_ptr`` int64 [level_sizes[C]+1]; ``leaf_items`` int64 [N];
    ``item_nodes`` int32 [N, C].

    Host synchronisation: exactly one, reading the C node counts (they size the node arrays)
    together with two flags saying whether any code or bid is invalid. An invalid input costs
    a few more to name the first bad entry. Nothing else waits for the device.

    Raises
    ------
    CatalogError (a ValueError) naming the bad field: wrong device, dtype, rank or length, a
    code out of its codebook, a bid that is not finite, more than 2**31 - 1 items.
    """
    sizes = _check_sizes(codebook_sizes)
    levels = len(sizes)
    _check_items(codes, is_ad, bids, levels)
    device = codes.device
    n = codes.shape[0]
    is_ad = is_ad.contiguous()
    bids = bids.contiguous()
    if n == 0:
        return _empty_trie(levels, device)

    bits = [(k - 1).bit_length() for k in sizes]
    bid_key = _bid_order_key(is_ad, bids)
    leaf_items = None
    if sum(bits) + 32 <= _MAX_KEY_BITS:
        # The codes and the leaf order fit one key: the sorted rows are leaf_items already.
        key = (_pack_codes(codes, range(levels), bits) << 32) | bid_key
        order = torch.sort(key, stable=True).indices
        leaf_items = order
    else:
        order = _sort_by_codes(codes, bits)

    # Run-length over the sorted rows: new[i, l] when row i opens a depth-(l+1) node.
    sorted_codes = codes.index_select(0, order)
    new = torch.ones((n, levels), dtype=torch.bool, device=device)
    if n > 1:
        change = sorted_codes[1:] != sorted_codes[:-1]
        for level in range(levels):
            new[1:, level] = change[:, level] if level == 0 else new[1:, level - 1] | change[:, level]
    ids = new.cumsum(0)  # int64: 1 + the node id of each sorted row, per depth
    ids -= 1

    # The one synchronisation: node counts per depth, and whether the inputs were valid.
    # (No torch.tensor(host values, device=...) anywhere: a CUDA copy from the host syncs too.)
    node_counts = ids[-1] + 1
    bad = torch.stack([_bad_codes(codes, sizes).any(), ~torch.isfinite(bids).all()])
    stats = torch.cat([node_counts, bad.long()]).tolist()
    counts, (any_bad_code, any_bad_bid) = stats[:levels], stats[levels:]
    if any_bad_code:
        _raise_bad_code(codes, sizes)
    if any_bad_bid:
        _raise_bad_bid(bids)

    positions = torch.arange(n, device=device)
    # starts[l][j]: sorted position of the first row of depth-(l+1) node j.
    starts = [
        torch.empty(counts[level], dtype=torch.long, device=device).scatter_reduce_(
            0, ids[:, level], positions, "amin", include_self=False
        )
        for level in range(levels)
    ]
    n_rows = torch.full((1,), n, dtype=torch.long, device=device)
    ad_scan = torch.zeros(n + 1, dtype=torch.long, device=device)
    torch.cumsum(is_ad.index_select(0, order), 0, out=ad_scan[1:])

    child_ptr, node_code, node_ad_count = [], [], []
    for level in range(levels):
        if level == 0:
            child_ptr.append(torch.cat([node_counts.new_zeros(1), node_counts[:1]]))
        else:  # a depth-l node's first child is the depth-(l+1) node of its first row
            first_child = ids[:, level].index_select(0, starts[level - 1])
            child_ptr.append(torch.cat([first_child, ids[-1:, level] + 1]))
        node_code.append(sorted_codes[:, level].index_select(0, starts[level]).to(torch.int32))
        ends = torch.cat([starts[level], n_rows])
        node_ad_count.append(torch.diff(ad_scan.index_select(0, ends)).to(torch.int32))
    leaf_ptr = torch.cat([starts[-1], n_rows])

    item_nodes = torch.empty((n, levels), dtype=torch.int32, device=device)
    item_nodes.index_copy_(0, order, ids.to(torch.int32))
    if leaf_items is None:
        leaf_items = _leaf_order(item_nodes[:, -1], bid_key)
    node_max_bid = _max_bids(child_ptr, leaf_ptr, leaf_items, is_ad, bids, counts)
    return {
        "level_sizes": torch.cat([node_counts.new_ones(1), node_counts]),
        "child_ptr": child_ptr,
        "node_code": node_code,
        "node_max_bid": node_max_bid,
        "node_ad_count": node_ad_count,
        "leaf_ptr": leaf_ptr,
        "leaf_items": leaf_items,
        "item_nodes": item_nodes,
    }


# -- steps ------------------------------------------------------------------------------------
def _bid_order_key(is_ad: torch.Tensor, bids: torch.Tensor) -> torch.Tensor:
    """int64 [N] in [0, 2**32): ascending key = ads by bid descending, then organic items.

    The float's bits made order-preserving: a positive bid maps to ``0x7FFFFFFF - bits``, a
    negative one to its unsigned bits (more negative, larger). ``+ 0.0`` turns -0.0 into +0.0,
    so the two zeros tie (and fall to the row order) as they do under ``_C``'s ``>``.
    """
    bits = (bids + 0.0).view(torch.int32)
    unsigned = bits.long() & _LOW32
    key = torch.where(bits >= 0, 0x7FFFFFFF - unsigned, unsigned)
    return torch.where(is_ad, key, _ORGANIC)


def _pack_codes(codes: torch.Tensor, levels, bits: list[int]) -> torch.Tensor:
    """The codes of ``levels`` (most significant first) packed into one int64 per row."""
    key = None
    for level in levels:
        column = codes[:, level].long()
        key = column if key is None else (key << bits[level]) | column
    return key


def _sort_by_codes(codes: torch.Tensor, bits: list[int]) -> torch.Tensor:
    """Rows in lexicographic order of their codes: one sort of a packed key, or successive stable
    sorts of keys of at most 63 bits from the last levels to the first (LSD)."""
    chunks, width = [[]], 0
    for level in reversed(range(len(bits))):
        if width + bits[level] > _MAX_KEY_BITS:
            chunks.append([])
            width = 0
        chunks[-1].insert(0, level)
        width += bits[level]
    order = None
    for chunk in chunks:  # least significant first
        rows = codes if order is None else codes.index_select(0, order)
        step = torch.sort(_pack_codes(rows, chunk, bits), stable=True).indices
        order = step if order is None else order.index_select(0, step)
    return order


def _leaf_order(leaf: torch.Tensor, bid_key: torch.Tensor) -> torch.Tensor:
    """leaf_items: rows sorted by (leaf, bid key), ties by row (a stable sort of rows in order).
    A leaf id is below 2**31, so the key fits 63 bits."""
    return torch.sort((leaf.long() << 32) | bid_key, stable=True).indices


def _max_bids(child_ptr: list[torch.Tensor], leaf_ptr: torch.Tensor, leaf_items: torch.Tensor,
              is_ad: torch.Tensor, bids: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """node_max_bid per depth, from the leaf order: ads come first in a leaf, best bid first.

    A leaf is keyed ``k(bid) * 2**32 + (2**31 - 1 - leaf)`` (``k`` order-preserving, -0.0 = +0.0)
    and a node takes the max key of its children, so it names the first leaf, in prefix order,
    holding the best bid; that leaf's first item gives the node its bid bits, as ``_C`` keeps the
    first of equal bids. Without ads the key stays at its minimum and the bid is 0.
    """
    levels = len(child_ptr)
    device = leaf_items.device
    n_leaves = counts[-1]
    first = leaf_items.index_select(0, leaf_ptr[:-1])
    has_ad = is_ad.index_select(0, first)
    leaf_bid = bids.index_select(0, first)
    bits = (leaf_bid + 0.0).view(torch.int32)
    k = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()
    key = torch.where(has_ad, k * (1 << 32) + (0x7FFFFFFF - torch.arange(n_leaves, device=device)), _INT64_MIN)
    out = [None] * levels
    out[-1] = torch.where(has_ad, leaf_bid, 0.0)
    for level in range(levels - 2, -1, -1):
        parent = torch.repeat_interleave(
            torch.arange(counts[level], device=device), torch.diff(child_ptr[level + 1]),
            output_size=counts[level + 1],
        )
        key = torch.full((counts[level],), _INT64_MIN, dtype=torch.long, device=device).scatter_reduce_(
            0, parent, key, "amax"
        )
        winner = (0x7FFFFFFF - (key & _LOW32)).clamp_(max=n_leaves - 1)
        out[level] = torch.where(key != _INT64_MIN, leaf_bid.index_select(0, winner), 0.0)
    return out


def _empty_trie(levels: int, device: torch.device) -> dict:
    """A bare root: what ``_C.build_trie`` returns for no items."""
    def zeros(size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(size, dtype=dtype, device=device)

    return {
        "level_sizes": torch.cat([zeros(1, torch.long) + 1, zeros(levels, torch.long)]),
        "child_ptr": [zeros(2 if level == 0 else 1, torch.long) for level in range(levels)],
        "node_code": [zeros(0, torch.int32) for _ in range(levels)],
        "node_max_bid": [zeros(0, torch.float32) for _ in range(levels)],
        "node_ad_count": [zeros(0, torch.int32) for _ in range(levels)],
        "leaf_ptr": zeros(1, torch.long),
        "leaf_items": zeros(0, torch.long),
        "item_nodes": torch.zeros((0, levels), dtype=torch.int32, device=device),
    }


# -- validation (expected-vs-got messages, as _C's) ------------------------------------------
_INT_DTYPES = (torch.int32, torch.int64)


def _check_sizes(codebook_sizes: Sequence[int]) -> list[int]:
    if isinstance(codebook_sizes, (str, bytes)) or not isinstance(codebook_sizes, Sequence):
        raise CatalogError("codebook_sizes", f"is a {type(codebook_sizes).__name__}", "one codebook size per level")
    if not codebook_sizes:
        raise CatalogError("codebook_sizes", "is empty", "one codebook size per level")
    for level, k in enumerate(codebook_sizes):
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= 2**31 - 1:
            raise CatalogError(f"codebook_sizes[{level}]", f"= {k!r} is out of range", "an int size in [1, 2147483647]")
    return [int(k) for k in codebook_sizes]


def _check_tensor(name: str, t, dtypes, ndim: int, device: torch.device | None) -> None:
    dtypes = dtypes if isinstance(dtypes, tuple) else (dtypes,)
    if not isinstance(t, torch.Tensor):
        raise CatalogError(name, f"is a {type(t).__name__}", "a torch tensor")
    if t.dtype not in dtypes:
        raise CatalogError(name, f"has dtype {t.dtype}", " or ".join(str(d) for d in dtypes))
    if t.dim() != ndim:
        raise CatalogError(name, f"has shape {tuple(t.shape)}", f"a {ndim}-D tensor")
    if device is not None and t.device != device:
        raise CatalogError(name, f"is on {t.device}", f"a tensor on {device} (the device of codes)")


def _check_items(codes, is_ad, bids, levels: int) -> None:
    _check_tensor("codes", codes, _INT_DTYPES, 2, None)
    n = codes.shape[0]
    if codes.shape[1] != levels:
        raise CatalogError("codes", f"has shape {tuple(codes.shape)}",
                           f"{levels} levels per row (the length of codebook_sizes)")
    if n > 2**31 - 1:
        raise CatalogError("codes", f"has {n} rows", "at most 2147483647 items")
    _check_tensor("is_ad", is_ad, torch.bool, 1, codes.device)
    _check_tensor("bids", bids, torch.float32, 1, codes.device)
    for name, t in (("is_ad", is_ad), ("bids", bids)):
        if t.shape[0] != n:
            raise CatalogError(name, f"has {t.shape[0]} entries", f"{n} (one per codes row)")


def _bad_codes(codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """bool [N, C]: codes outside their codebook."""
    return torch.stack([(codes[:, level] < 0) | (codes[:, level] >= k) for level, k in enumerate(sizes)], dim=1)


def _raise_bad_code(codes: torch.Tensor, sizes: list[int]) -> None:
    bad = _bad_codes(codes, sizes)
    flat = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))
    row, level = divmod(flat, len(sizes))
    raise CatalogError(f"codes[{row}, {level}]", f"= {int(codes[row, level])} is out of range",
                       f"a code in [0, {sizes[level]}) of codebook {level}")


def _raise_bad_bid(bids: torch.Tensor) -> None:
    row = int(torch.argmax((~torch.isfinite(bids)).to(torch.uint8)))
    raise CatalogError(f"bids[{row}]", f"= {float(bids[row])} is not finite", "a finite bid")
