"""Catalog trie build throughput: ``ega_infer._C.build_trie`` on a random catalog.

Target: 10 million items x 3 levels (codebooks 16384/4096/1024, 30% ads) in under 10 s on one
CPU core, Python-side array preparation included.

    python bench/bench_catalog_build.py --items 10000000 [--save]
    pytest bench/bench_catalog_build.py            # pytest-benchmark, small catalog
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ega_infer import _C

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (16384, 4096, 1024)


def make_catalog(items: int, sizes=DEFAULT_SIZES, ad_fraction: float = 0.3, seed: int = 0):
    """Random codes (collisions included), ``ad_fraction`` ads with bids in [0, 5)."""
    rng = np.random.default_rng(seed)
    codes = np.empty((items, len(sizes)), dtype=np.int32)
    for level, size in enumerate(sizes):
        codes[:, level] = rng.integers(0, size, size=items, dtype=np.int32)
    is_ad = rng.random(items) < ad_fraction
    bids = (rng.random(items, dtype=np.float32) * 5).astype(np.float32)
    return codes, is_ad, bids


def build(codes, is_ad, bids, sizes) -> dict:
    """What a caller pays: dtype/layout normalisation plus the native build."""
    return _C.build_trie(
        np.ascontiguousarray(codes, dtype=np.int32),
        np.ascontiguousarray(is_ad, dtype=np.bool_),
        np.ascontiguousarray(bids, dtype=np.float32),
        [int(s) for s in sizes],
    )


def test_bench_catalog_build(benchmark) -> None:
    items, sizes = 200_000, DEFAULT_SIZES
    codes, is_ad, bids = make_catalog(items, sizes)
    trie = benchmark(build, codes, is_ad, bids, sizes)
    assert trie["leaf_items"].shape == (items,)
    benchmark.extra_info.update(items=items, sizes=list(sizes),
                                items_per_s=items / benchmark.stats.stats.median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated codebook sizes, one per level")
    parser.add_argument("--ad-fraction", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--all-cores", action="store_true",
                        help="do not pin the process to one CPU core")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    codes, is_ad, bids = make_catalog(args.items, sizes, args.ad_fraction)
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        trie = build(codes, is_ad, bids, sizes)
        seconds.append(time.perf_counter() - start)
        del trie
    median = statistics.median(seconds)
    print(f"build_trie: {args.items:,} items x {len(sizes)} levels {sizes}: "
          f"median {median:.3f} s (min {min(seconds):.3f}, max {max(seconds):.3f}, "
          f"{args.repeat} runs), {args.items / median:,.0f} items/s")
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"catalog_build_{stamp}.json"
        path.write_text(json.dumps({
            "bench": "catalog_build", "items": args.items, "sizes": list(sizes),
            "ad_fraction": args.ad_fraction, "seconds": seconds, "median_s": median,
            "items_per_s": args.items / median, "one_core": not args.all_cores,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "timestamp": stamp,
        }, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
