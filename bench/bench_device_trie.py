"""The catalog trie built on a device (``ega_infer.catalog.build_trie_device``, the Hugging Face
engine's build of a catalog already on the GPU) against the C++ build on the host
(``TrieArrays.build``): median / p20 / p80 and items/s.

Providers: ``torch`` (batched torch ops on ``--device``; on a CPU they run on CPU tensors) and
``c++`` (the host build from host arrays). The device build is first checked against the C++
build array by array; each timed device call ends with a synchronisation.

Full shape: 10 million items x 3 levels (codebooks 16384/4096/1024, the gr4ad-base preset;
30% ads).

    python bench/bench_device_trie.py [--device cuda] [--size full] [--save]
    python bench/bench_device_trie.py --shape items=1000000 sizes=256,256,256
    pytest bench/bench_device_trie.py [--device cuda]           # pytest-benchmark, small catalog
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from _harness import Case, Suite

from ega_infer.catalog import TrieArrays, build_trie_device

_FULL = dict(items=10_000_000, sizes=[16384, 4096, 1024], ad_fraction=0.3)
SHAPES = {"small": [dict(_FULL, items=200_000)], "full": [_FULL]}


def make_catalog(items: int, sizes, device, ad_fraction: float = 0.3, seed: int = 0):
    """Random codes (collisions included), ``ad_fraction`` ads with bids in [0, 5), on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (items,), generator=gen, dtype=torch.int32) for k in sizes], 1)
    is_ad = torch.rand(items, generator=gen) < ad_fraction
    bids = torch.where(is_ad, torch.rand(items, generator=gen) * 5, 0.0)
    return codes.to(device), is_ad.to(device), bids.to(device)


def assert_same(got: dict, want: TrieArrays) -> None:
    """Every array of the device build equals the C++ build's, bit for bit."""
    for f in fields(TrieArrays):
        w = getattr(want, f.name)
        pairs = zip(got[f.name], w, strict=True) if isinstance(w, tuple) else [(got[f.name], w)]
        for level, (a, b) in enumerate(pairs):
            a = a.cpu().numpy()
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
                raise AssertionError(f"build_trie_device: {f.name}[{level}] differs from the C++ build")


def cases(shape: dict, device: torch.device):
    sizes = tuple(shape["sizes"])
    codes, is_ad, bids = make_catalog(shape["items"], sizes, device, shape["ad_fraction"])
    host = [t.cpu().numpy() for t in (codes, is_ad, bids)]
    want = TrieArrays.build(*host, sizes)
    n = shape["items"]
    yield Case("build_trie", "torch", lambda: build_trie_device(codes, is_ad, bids, sizes),
               check=lambda got: assert_same(got, want), items=n)
    yield Case("build_trie", "c++", lambda: TrieArrays.build(*host, sizes), items=n)


SUITE = Suite("device_trie", __doc__, SHAPES, cases, entries=(("build_trie", "torch"), ("build_trie", "c++")))
test_bench = SUITE.pytest_test()

if __name__ == "__main__":
    SUITE.main()
