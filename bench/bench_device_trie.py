"""Trie build, bid refresh and SID lookup on a device (catalog/device_build.py), median/p20/p80.

Builds the trie of a random catalog with ``build_trie_device`` on ``--device`` (cuda when there
is one), after checking it, and a refresh after ``--updates`` bid changes, against
``_C.build_trie`` array by array. Then times ``build_trie_device``, ``refresh_bids_device``
(the full recompute after any bid change) and ``lookup_items`` of ``--lookups`` catalog SIDs;
each timed call ends with a device synchronisation.

Default: 10 million items x 3 levels (codebooks 16384/4096/1024, the gr4ad-base preset; 30% ads)
on a GPU, 1 million on the CPU so it finishes.

    python bench/bench_device_trie.py [--device cuda] [--items 10000000] [--sizes 256,256,256] [--save]
    pytest bench/bench_device_trie.py            # pytest-benchmark, small catalog
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ega_infer import _C
from ega_infer.catalog.device_build import build_trie_device, lookup_items, refresh_bids_device
from ega_infer.catalog.trie import DeviceTrie
from ega_infer.serving.bench import device_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (16384, 4096, 1024)


def make_catalog(items: int, sizes, device, ad_fraction: float = 0.3, seed: int = 0):
    """Random codes (collisions included), ``ad_fraction`` ads with bids in [0, 5), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (items,), generator=gen, dtype=torch.int32) for k in sizes], 1)
    is_ad = torch.rand(items, generator=gen) < ad_fraction
    bids = torch.where(is_ad, torch.rand(items, generator=gen) * 5, 0.0)
    return codes.to(device), is_ad.to(device), bids.to(device)


def new_bids(is_ad: torch.Tensor, bids: torch.Tensor, updates: int, seed: int = 1) -> torch.Tensor:
    """``updates`` random ads re-bid in [0, 5): raises and cuts alike."""
    gen = torch.Generator().manual_seed(seed)
    ads = torch.nonzero(is_ad.cpu()).flatten()
    rows = ads[torch.randperm(len(ads), generator=gen)[:updates]]
    out = bids.clone()
    out[rows.to(bids.device)] = (torch.rand(len(rows), generator=gen) * 5).to(bids.device)
    return out


def check(codes, is_ad, bids, updated, sizes) -> None:
    """The device build and refresh against ``_C.build_trie`` of the same catalog."""
    host = [t.cpu().numpy() for t in (codes, is_ad, bids, updated)]
    built = build_trie_device(codes, is_ad, bids, sizes)
    assert_same(built, _C.build_trie(host[0], host[1], host[2], list(sizes)), "build_trie_device")
    refreshed = {**built, **refresh_bids_device(built, is_ad, updated)}
    assert_same(refreshed, _C.build_trie(host[0], host[1], host[3], list(sizes)), "refresh_bids_device")


def assert_same(got: dict, want: dict, what: str) -> None:
    for key, w in want.items():
        for level, (a, b) in enumerate(zip(got[key], w, strict=True) if isinstance(w, list) else [(got[key], w)]):
            a = a.cpu().numpy()
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
                raise AssertionError(f"{what}: {key}{f'[{level}]' if isinstance(w, list) else ''} differs from _C")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_times(fn, device: torch.device, repeat: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
        sync(device)
    seconds = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
        del out
    return seconds


def summary(seconds: list[float], items: int) -> dict:
    p20, median, p80 = np.percentile(seconds, [20, 50, 80])
    return {"seconds": seconds, "median_s": float(median), "p20_s": float(p20), "p80_s": float(p80),
            "items_per_s": items / float(median)}


# -- pytest-benchmark: small catalog, on the GPU when there is one ----------------------------
SMALL_ITEMS = 200_000


def _bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_bench_build_trie_device(benchmark) -> None:
    device = _bench_device()
    codes, is_ad, bids = make_catalog(SMALL_ITEMS, DEFAULT_SIZES, device)
    check(codes, is_ad, bids, new_bids(is_ad, bids, 1000), DEFAULT_SIZES)

    def build():
        out = build_trie_device(codes, is_ad, bids, DEFAULT_SIZES)
        sync(device)
        return out

    trie = benchmark(build)
    assert trie["leaf_items"].shape == (SMALL_ITEMS,)
    benchmark.extra_info.update(items=SMALL_ITEMS, sizes=list(DEFAULT_SIZES), device=device_name(device),
                                items_per_s=SMALL_ITEMS / benchmark.stats.stats.median)


def test_bench_refresh_bids_device(benchmark) -> None:
    device = _bench_device()
    codes, is_ad, bids = make_catalog(SMALL_ITEMS, DEFAULT_SIZES, device)
    arrays = build_trie_device(codes, is_ad, bids, DEFAULT_SIZES)
    updated = new_bids(is_ad, bids, 1000)

    def refresh():
        out = refresh_bids_device(arrays, is_ad, updated)
        sync(device)
        return out

    out = benchmark(refresh)
    assert out["leaf_items"].shape == (SMALL_ITEMS,)
    benchmark.extra_info.update(items=SMALL_ITEMS, sizes=list(DEFAULT_SIZES), device=device_name(device),
                                items_per_s=SMALL_ITEMS / benchmark.stats.stats.median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=None,
                        help="catalog size (default: 10,000,000 on a GPU, 1,000,000 on the CPU)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated codebook sizes, one per level")
    parser.add_argument("--ad-fraction", type=float, default=0.3)
    parser.add_argument("--updates", type=int, default=1000, help="ads re-bid before the refresh")
    parser.add_argument("--lookups", type=int, default=4096, help="SIDs per lookup_items call")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs (default: 20 on a GPU, 5 on the CPU)")
    parser.add_argument("--no-check", action="store_true", help="skip the check against _C.build_trie")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    items = args.items or (10_000_000 if on_gpu else 1_000_000)
    repeat = args.repeat or (20 if on_gpu else 5)
    sizes = tuple(int(s) for s in args.sizes.split(","))

    codes, is_ad, bids = make_catalog(items, sizes, device, args.ad_fraction)
    updated = new_bids(is_ad, bids, args.updates)
    if not args.no_check:
        check(codes, is_ad, bids, updated, sizes)
    arrays = build_trie_device(codes, is_ad, bids, sizes)
    trie = DeviceTrie.from_tensors(arrays, sizes, device)
    gen = torch.Generator().manual_seed(2)
    sids = codes[torch.randint(0, items, (args.lookups,), generator=gen).to(device)]
    results = {
        "build_trie_device": summary(run_times(lambda: build_trie_device(codes, is_ad, bids, sizes), device, repeat), items),
        "refresh_bids_device": summary(run_times(lambda: refresh_bids_device(arrays, is_ad, updated), device, repeat), items),
        "lookup_items": summary(run_times(lambda: lookup_items(trie, sids), device, repeat), args.lookups),
    }
    level_sizes = arrays["level_sizes"].tolist()

    name = device_name(device)
    threads = "" if on_gpu else f", {torch.get_num_threads()} torch threads"
    print(f"{items:,} items x {len(sizes)} levels {sizes} (nodes per depth {level_sizes[1:]}), "
          f"{args.ad_fraction:.0%} ads, on {name}{threads}; {repeat} runs each; "
          f"{'checked against _C.build_trie' if not args.no_check else 'not checked'}")
    for op, r in results.items():
        print(f"  {op:20s} median {1e3 * r['median_s']:9.3f} ms  [p20 {1e3 * r['p20_s']:9.3f}, "
              f"p80 {1e3 * r['p80_s']:9.3f}]  {r['items_per_s']:,.0f} {'SIDs' if op == 'lookup_items' else 'items'}/s")
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"device_trie_{device.type}_{stamp}.json"
        path.write_text(json.dumps({
            "bench": "device_trie", "device": str(device), "device_name": name,
            "items": items, "sizes": list(sizes), "levels": len(sizes), "level_sizes": level_sizes,
            "ad_fraction": args.ad_fraction, "updates": args.updates, "lookups": args.lookups,
            "repeat": repeat, "checked": not args.no_check, "results": results,
            "torch": torch.__version__, "torch_threads": None if on_gpu else torch.get_num_threads(),
            "python": platform.python_version(), "timestamp": stamp,
        }, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
