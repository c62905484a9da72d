"""Catalog build and updates on the host (C++ in ega_infer._C): median / p20 / p80 and items/s.

Ops on a random catalog: ``Catalog.from_arrays`` end to end (validation, creatives and the id
index included), ``TrieArrays.build`` (the C++ trie build alone), ``Catalog.with_bids`` of
``updates`` ads and ``Catalog.without_items`` of ``updates`` items. Both updates are first
checked against a rebuild. Items get one creative each and increasing ids (``shuffle_ids``:
random order, which costs ``from_arrays`` its id sorts and lookups at full price). Single-
threaded code: ``--threads`` changes nothing but torch's setting.

Targets at the full shape, 10 million items x 3 levels (codebooks 16384/4096/1024, 30% ads):
from_arrays under 10 s; with_bids of 1000 ads under 0.15 s; without_items well under a rebuild.

    python bench/bench_catalog_build.py --size full [--save]
    python bench/bench_catalog_build.py --shape items=1000000 shuffle_ids=true
    pytest bench/bench_catalog_build.py            # pytest-benchmark, small catalog
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from _harness import Case, Suite

from ega_infer import Catalog
from ega_infer.catalog import TrieArrays

_FULL = dict(items=10_000_000, sizes=[16384, 4096, 1024], ad_fraction=0.3, updates=1000, shuffle_ids=False)
SHAPES = {"small": [dict(_FULL, items=200_000)], "full": [_FULL]}
CREATIVE_SIZES = (1024, 1024)
OPS = ("from_arrays", "build_trie", "with_bids", "without_items")


def make_arrays(items: int, sizes, ad_fraction: float = 0.3, seed: int = 0, shuffle_ids: bool = False) -> dict:
    """``Catalog.from_arrays`` inputs: random codes (collisions included), ``ad_fraction`` ads
    with bids in [0, 5), ids (increasing, or shuffled) and one creative per item."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, size, size=items, dtype=np.int32) for size in sizes], 1)
    is_ad = rng.random(items) < ad_fraction
    bids = (rng.random(items, dtype=np.float32) * 5).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    ids = (rng.permutation(items) if shuffle_ids else np.arange(items)).astype(np.int64) * 3 + 7
    creative_codes = np.stack([rng.integers(0, s, items, dtype=np.int32) for s in CREATIVE_SIZES], 1)
    return dict(item_ids=ids, poi_codes=codes, is_ad=is_ad, bids=np.where(is_ad, bids, 0).astype(np.float32),
                creative_item_ids=ids, creative_ids=ids + 1, creative_codes=creative_codes)


def from_arrays(arrays: dict, sizes) -> Catalog:
    return Catalog.from_arrays(
        arrays["item_ids"], arrays["poi_codes"], arrays["is_ad"], arrays["bids"],
        codebook_sizes=sizes, creative_codebook_sizes=CREATIVE_SIZES,
        creative_item_ids=arrays["creative_item_ids"], creative_ids=arrays["creative_ids"],
        creative_codes=arrays["creative_codes"],
    )


def pick_updates(cat: Catalog, count: int, seed: int = 1):
    """``count`` random ads with new bids, and ``count`` random items to remove."""
    rng = np.random.default_rng(seed)
    ads = cat.item_ids[cat.is_ad]
    bid_ids = rng.choice(ads, size=min(count, len(ads)), replace=False)
    new_bids = (rng.random(len(bid_ids)) * 5).astype(np.float32)
    gone = rng.choice(cat.item_ids, size=min(count, len(cat)), replace=False)
    return bid_ids, new_bids, gone


def assert_same_trie(got: TrieArrays, want: TrieArrays, what: str) -> None:
    for f in fields(TrieArrays):
        g, w = getattr(got, f.name), getattr(want, f.name)
        for a, b in zip(g, w, strict=True) if isinstance(g, tuple) else [(g, w)]:
            if a.dtype != b.dtype or not np.array_equal(a, b):
                raise AssertionError(f"{what}: trie.{f.name} differs from a rebuild")


def cases(shape: dict, device: torch.device):
    sizes = tuple(shape["sizes"])
    arrays = make_arrays(shape["items"], sizes, shape["ad_fraction"], shuffle_ids=shape["shuffle_ids"])
    codes, is_ad, bids = arrays["poi_codes"], arrays["is_ad"], arrays["bids"]
    n = shape["items"]

    def rows_are(count):
        def check(out) -> None:
            assert len(out) == count, f"{len(out)} items, expected {count}"
        return check

    yield Case("from_arrays", "c++", lambda: from_arrays(arrays, sizes), check=rows_are(n), items=n)
    yield Case("build_trie", "c++", lambda: TrieArrays.build(codes, is_ad, bids, sizes),
               check=lambda trie: assert_same_trie(trie, from_arrays(arrays, sizes).trie, "build_trie"), items=n)
    cat = from_arrays(arrays, sizes)
    bid_ids, new_bids, gone = pick_updates(cat, shape["updates"])

    def rebid_check(updated: Catalog) -> None:
        rebid = cat.bids.copy()
        rebid[cat.index_of(bid_ids)] = new_bids
        assert_same_trie(updated.trie, TrieArrays.build(cat.poi_codes, cat.is_ad, rebid, sizes), "with_bids")

    def removal_check(smaller: Catalog) -> None:
        keep = np.ones(len(cat), bool)
        keep[cat.index_of(gone)] = False
        want = TrieArrays.build(cat.poi_codes[keep], cat.is_ad[keep], cat.bids[keep], sizes)
        assert_same_trie(smaller.trie, want, "without_items")

    yield Case("with_bids", "c++", lambda: cat.with_bids(bid_ids, new_bids), check=rebid_check, items=len(bid_ids))
    yield Case("without_items", "c++", lambda: cat.without_items(gone), check=removal_check, items=len(gone))


SUITE = Suite("catalog_build", __doc__, SHAPES, cases, entries=tuple((op, "c++") for op in OPS))
test_bench = SUITE.pytest_test()

if __name__ == "__main__":
    SUITE.main()
