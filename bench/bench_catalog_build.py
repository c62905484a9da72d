"""Catalog build and update times on a random catalog, on one pinned CPU core.

Measures ``Catalog.from_arrays`` end to end (validation, creatives and the id index included),
``ega_infer._C.build_trie`` alone, ``Catalog.with_bids`` of ``--updates`` ads and
``Catalog.without_items`` of ``--updates`` items. Both updates are first checked against a
rebuild. Items get one creative each and increasing ids (``--shuffle-ids``: random order, which
costs ``from_arrays`` its id sorts and lookups at full price).

Targets for 10 million items x 3 levels (codebooks 16384/4096/1024, 30% ads): from_arrays under
10 s; with_bids of 1000 ads under 0.15 s; without_items well under a rebuild.

    python bench/bench_catalog_build.py --items 10000000 [--save]
    pytest bench/bench_catalog_build.py            # pytest-benchmark, small catalog
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ega_infer import Catalog, _C
from ega_infer.catalog.trie import TrieArrays
from ega_infer.serving.bench import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (16384, 4096, 1024)
CREATIVE_SIZES = (1024, 1024)


def make_catalog(items: int, sizes=DEFAULT_SIZES, ad_fraction: float = 0.3, seed: int = 0):
    """Random codes (collisions included), ``ad_fraction`` ads with bids in [0, 5)."""
    rng = np.random.default_rng(seed)
    codes = np.empty((items, len(sizes)), dtype=np.int32)
    for level, size in enumerate(sizes):
        codes[:, level] = rng.integers(0, size, size=items, dtype=np.int32)
    is_ad = rng.random(items) < ad_fraction
    bids = (rng.random(items, dtype=np.float32) * 5).astype(np.float32)
    return codes, is_ad, bids


def make_arrays(items: int, sizes=DEFAULT_SIZES, ad_fraction: float = 0.3, seed: int = 0,
                shuffle_ids: bool = False) -> dict:
    """``Catalog.from_arrays`` inputs: ``make_catalog`` plus ids (increasing, or shuffled) and
    one creative per item."""
    codes, is_ad, bids = make_catalog(items, sizes, ad_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    ids = (rng.permutation(items) if shuffle_ids else np.arange(items)).astype(np.int64) * 3 + 7
    creative_codes = np.stack([rng.integers(0, s, items, dtype=np.int32) for s in CREATIVE_SIZES], 1)
    return dict(item_ids=ids, poi_codes=codes, is_ad=is_ad, bids=np.where(is_ad, bids, 0),
                creative_item_ids=ids, creative_ids=ids + 1, creative_codes=creative_codes)


def build(codes, is_ad, bids, sizes) -> dict:
    """The native build alone, with the dtype/layout normalisation a caller pays."""
    return _C.build_trie(
        np.ascontiguousarray(codes, dtype=np.int32),
        np.ascontiguousarray(is_ad, dtype=np.bool_),
        np.ascontiguousarray(bids, dtype=np.float32),
        [int(s) for s in sizes],
    )


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


def check_updates(cat: Catalog, bid_ids, new_bids, gone) -> None:
    """Each update's trie must equal a build from scratch of the updated catalog."""
    bids = cat.bids.copy()
    bids[cat.index_of(bid_ids)] = new_bids
    want = TrieArrays.build(cat.poi_codes, cat.is_ad, bids, cat.codebook_sizes)
    assert_same_trie(cat.with_bids(bid_ids, new_bids).trie, want, "with_bids")
    keep = np.ones(len(cat), bool)
    keep[cat.index_of(gone)] = False
    want = TrieArrays.build(cat.poi_codes[keep], cat.is_ad[keep], cat.bids[keep], cat.codebook_sizes)
    assert_same_trie(cat.without_items(gone).trie, want, "without_items")


def assert_same_trie(got: TrieArrays, want: TrieArrays, what: str) -> None:
    for f in fields(TrieArrays):
        g, w = getattr(got, f.name), getattr(want, f.name)
        for a, b in zip(g, w, strict=True) if isinstance(g, tuple) else [(g, w)]:
            if a.dtype != b.dtype or not np.array_equal(a, b):
                raise AssertionError(f"{what}: trie.{f.name} differs from a rebuild")


def run_times(fn, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
        del out
        gc.collect()  # free the catalog before the next run, outside the timing
    return seconds


def summary(seconds: list[float]) -> dict:
    p20, median, p80 = np.percentile(seconds, [20, 50, 80])
    return {"seconds": seconds, "median_s": float(median), "p20_s": float(p20), "p80_s": float(p80)}


# -- pytest-benchmark: small catalog --------------------------------------------------------
SMALL_ITEMS = 200_000


def test_bench_catalog_build(benchmark) -> None:
    codes, is_ad, bids = make_catalog(SMALL_ITEMS, DEFAULT_SIZES)
    trie = benchmark(build, codes, is_ad, bids, DEFAULT_SIZES)
    assert trie["leaf_items"].shape == (SMALL_ITEMS,)
    benchmark.extra_info.update(items=SMALL_ITEMS, sizes=list(DEFAULT_SIZES),
                                items_per_s=SMALL_ITEMS / benchmark.stats.stats.median)


def test_bench_catalog_with_bids(benchmark) -> None:
    cat = from_arrays(make_arrays(SMALL_ITEMS, shuffle_ids=True), DEFAULT_SIZES)
    bid_ids, new_bids, gone = pick_updates(cat, 1000)
    check_updates(cat, bid_ids, new_bids, gone)
    updated = benchmark(cat.with_bids, bid_ids, new_bids)
    assert len(updated) == SMALL_ITEMS
    benchmark.extra_info.update(items=SMALL_ITEMS, updates=len(bid_ids))


def test_bench_catalog_without_items(benchmark) -> None:
    cat = from_arrays(make_arrays(SMALL_ITEMS, shuffle_ids=True), DEFAULT_SIZES)
    _, _, gone = pick_updates(cat, 1000)
    smaller = benchmark(cat.without_items, gone)
    assert len(smaller) == SMALL_ITEMS - len(gone)
    benchmark.extra_info.update(items=SMALL_ITEMS, updates=len(gone))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated codebook sizes, one per level")
    parser.add_argument("--ad-fraction", type=float, default=0.3)
    parser.add_argument("--updates", type=int, default=1000,
                        help="ads re-bid by with_bids, and items removed by without_items")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shuffle-ids", action="store_true", help="item ids in random order")
    parser.add_argument("--all-cores", action="store_true",
                        help="do not pin the process to one CPU core")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    arrays = make_arrays(args.items, sizes, args.ad_fraction, shuffle_ids=args.shuffle_ids)
    codes, is_ad, bids = arrays["poi_codes"], arrays["is_ad"], arrays["bids"]
    results = {
        "from_arrays": summary(run_times(lambda: from_arrays(arrays, sizes), args.repeat)),
        "build_trie": summary(run_times(lambda: build(codes, is_ad, bids, sizes), args.repeat)),
    }
    cat = from_arrays(arrays, sizes)
    bid_ids, new_bids, gone = pick_updates(cat, args.updates)
    check_updates(cat, bid_ids, new_bids, gone)
    results["with_bids"] = summary(run_times(lambda: cat.with_bids(bid_ids, new_bids), args.repeat))
    results["without_items"] = summary(run_times(lambda: cat.without_items(gone), args.repeat))

    print(f"{args.items:,} items x {len(sizes)} levels {sizes}, {args.ad_fraction:.0%} ads, "
          f"{'shuffled' if args.shuffle_ids else 'increasing'} ids, "
          f"{'one core' if not args.all_cores else 'all cores'}, {args.repeat} runs each; "
          f"updates of {args.updates} items checked against a rebuild")
    for name, r in results.items():
        print(f"  {name:14s} median {r['median_s']:7.3f} s  [p20 {r['p20_s']:7.3f}, p80 {r['p80_s']:7.3f}]")
    print(f"  build_trie: {args.items / results['build_trie']['median_s']:,.0f} items/s")
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"catalog_build_{stamp}.json"
        path.write_text(json.dumps({
            "bench": "catalog_build", "items": args.items, "sizes": list(sizes),
            "ad_fraction": args.ad_fraction, "shuffled_ids": args.shuffle_ids,
            "updates": args.updates, "repeat": args.repeat,
            "one_core": not args.all_cores, "results": results,
            "build_trie_items_per_s": args.items / results["build_trie"]["median_s"],
            "cpu": cpu_name(), "python": platform.python_version(), "timestamp": stamp,
        }, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
