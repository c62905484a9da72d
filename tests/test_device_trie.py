"""The trie built with torch ops (catalog/device_build.py, the Hugging Face engine's GPU build)
against _C.

Every array must equal ``_C.build_trie``'s bit for bit (signed zeros of max bids included). Runs
on ``--device`` (default cpu; ``--device cuda`` on a GPU host).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ega_infer import _C
from ega_infer.catalog.device_build import build_trie_device
from ega_infer.catalog.trie import DeviceTrie, TrieArrays
from ega_infer.exceptions import CatalogError

BIG = 2**31 - 1  # the largest codebook _C takes

# name: (codebook sizes, codes drawn per level). Few distinct codes per level make SID
# collisions (leaves of several items); the packed code key takes one of three paths:
# with the 32-bit bid key in one sort (<= 31 code bits), one code sort then a leaf sort
# (<= 63), successive stable code sorts (> 63).
SHAPES = {
    "3-levels": ([4, 5, 3], None),
    "2-levels": ([7, 6], None),
    "1-level": ([5], None),
    "size-1-codebooks": ([1, 4, 1], None),
    "gr4ad-base": ([16384, 4096, 1024], 6),  # 36 code bits: code sort + leaf sort
    "wide-fallback": ([BIG, BIG, 5], 4),  # 65 code bits: two stable code sorts
}


def random_catalog(n: int, sizes: list[int], ads: str, seed: int, distinct: int | None = None):
    """Codes drawn from ``distinct`` values per level spread over each codebook (both ends
    included), ads ``mixed``/``none``/``all``, bids from a few values (ties) with both zeros."""
    rng = np.random.default_rng(seed)
    columns = []
    for k in sizes:
        values = np.unique(np.linspace(0, k - 1, distinct or k).astype(np.int64))
        columns.append(rng.choice(values, size=n))
    codes = np.stack(columns, axis=1).astype(np.int32).reshape(n, len(sizes))
    is_ad = {"mixed": rng.random(n) < 0.5, "none": np.zeros(n, bool), "all": np.ones(n, bool)}[ads]
    bids = rng.choice(np.array([0.0, -0.0, 0.5, 1.25, 3.0, -1.0], np.float32), size=n)
    return codes, is_ad, bids


def tensors(device, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def assert_same_array(got: torch.Tensor, want: np.ndarray, what: str, device) -> None:
    assert isinstance(got, torch.Tensor) and got.device.type == torch.device(device).type, what
    g = got.cpu().numpy()
    assert g.dtype == want.dtype and g.shape == want.shape, f"{what}: {g.dtype}{g.shape} != {want.dtype}{want.shape}"
    if want.dtype == np.float32:  # bit for bit: -0.0 and 0.0 differ
        g, want = g.view(np.uint32), want.view(np.uint32)
    np.testing.assert_array_equal(g, want, err_msg=what)


def assert_same_trie(got: dict, want: dict, device) -> None:
    assert set(got) == set(want)
    for key, w in want.items():
        if isinstance(w, list):
            assert isinstance(got[key], list) and len(got[key]) == len(w), key
            for level, (g, wl) in enumerate(zip(got[key], w)):
                assert_same_array(g, wl, f"{key}[{level}]", device)
        else:
            assert_same_array(got[key], w, key, device)


CASES = [
    pytest.param(n, shape, ads, id=f"{shape}-n{n}-{ads}")
    for shape in SHAPES
    for n, ads in [(1, "mixed"), (1, "none"), (7, "all"), (111, "mixed"), (1000, "mixed"), (1000, "none"), (1000, "all")]
]


@pytest.mark.parametrize(("n", "shape", "ads"), CASES)
def test_build_trie_device_matches_c(device, n: int, shape: str, ads: str) -> None:
    sizes, distinct = SHAPES[shape]
    codes, is_ad, bids = random_catalog(n, sizes, ads, seed=n + len(shape), distinct=distinct)
    got = build_trie_device(*tensors(device, codes, is_ad, bids), sizes)
    assert_same_trie(got, _C.build_trie(codes, is_ad, bids, sizes), device)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_build_trie_device_empty_catalog(device, levels: int) -> None:
    sizes = [4] * levels
    codes, is_ad, bids = np.zeros((0, levels), np.int32), np.zeros(0, bool), np.zeros(0, np.float32)
    got = build_trie_device(*tensors(device, codes, is_ad, bids), sizes)
    assert_same_trie(got, _C.build_trie(codes, is_ad, bids, sizes), device)


def test_build_trie_device_int64_and_non_contiguous_codes(device) -> None:
    codes, is_ad, bids = random_catalog(4097, [9, 8, 7], "mixed", seed=3)
    wide = torch.from_numpy(np.repeat(codes, 2, axis=1).astype(np.int64)).to(device)
    view = wide[:, ::2]  # int64 and strided
    assert not view.is_contiguous()
    ad_view = torch.from_numpy(np.repeat(is_ad, 2)).to(device)[::2]
    got = build_trie_device(view, ad_view, torch.from_numpy(bids).to(device), [9, 8, 7])
    assert_same_trie(got, _C.build_trie(codes, is_ad, bids, [9, 8, 7]), device)


def test_build_trie_device_signed_zero_max_bids(device) -> None:
    # Which of 0.0 / -0.0 a node reports depends on the first ad in prefix-then-row order.
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        codes, _, _ = random_catalog(n, [2, 3, 2], "mixed", seed=int(rng.integers(1 << 30)))
        is_ad = rng.random(n) < 0.7
        bids = rng.choice(np.array([0.0, -0.0, -0.5], np.float32), size=n)
        got = build_trie_device(*tensors(device, codes, is_ad, bids), [2, 3, 2])
        assert_same_trie(got, _C.build_trie(codes, is_ad, bids, [2, 3, 2]), device)


def test_build_trie_device_leaf_order_ads_by_bid_then_organic(device) -> None:
    codes = np.zeros((6, 1), np.int32)
    is_ad = np.array([False, True, True, False, True, True])
    bids = np.array([9.0, 1.0, 2.0, 9.0, 2.0, 0.5], np.float32)
    got = build_trie_device(*tensors(device, codes, is_ad, bids), [1])
    assert got["leaf_items"].tolist() == [2, 4, 1, 5, 0, 3]
    assert got["node_max_bid"][0].tolist() == [2.0]
    assert got["node_ad_count"][0].tolist() == [4]


@pytest.mark.parametrize("shape", ["3-levels", "2-levels", "size-1-codebooks", "wide-fallback"])
def test_from_tensors_equals_device_trie(device, shape: str) -> None:
    sizes, distinct = SHAPES[shape]
    codes, is_ad, bids = random_catalog(500, sizes, "mixed", seed=8, distinct=distinct)
    want = DeviceTrie(TrieArrays.build(codes, is_ad, bids, tuple(sizes)), tuple(sizes), device)
    got = DeviceTrie.from_tensors(build_trie_device(*tensors(device, codes, is_ad, bids), sizes), tuple(sizes), device)
    assert got.device == want.device and got.levels == want.levels and got.codebook_sizes == want.codebook_sizes
    assert (got.max_children, got.max_leaf_items, got.level_nodes) == (want.max_children, want.max_leaf_items, want.level_nodes)
    for name in ("child_ptr", "node_code", "node_max_bid", "node_ad_count",
                 "leaf_ptr", "leaf_items", "item_nodes"):
        g, w = getattr(got, name), getattr(want, name)
        for a, b in zip(g, w, strict=True) if isinstance(w, list) else [(g, w)]:
            assert a.dtype == b.dtype and a.device == b.device, name
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    leaves = torch.tensor([0, len(got.leaf_ptr) - 2], device=device)
    assert torch.equal(got.resolve(leaves), want.resolve(leaves))


def _ok(device):
    codes, is_ad, bids = random_catalog(20, [32, 32, 32], "mixed", seed=0)
    return dict(zip(("codes", "is_ad", "bids"), tensors(device, codes, is_ad, bids)), codebook_sizes=[32, 32, 32])


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda a: a["codes"].__setitem__((17, 2), 40), r"codes\[17, 2\]: = 40 is out of range; expected a code in \[0, 32\)"),
    (lambda a: a["codes"].__setitem__((3, 0), -1), r"codes\[3, 0\]: = -1 is out of range"),
    (lambda a: a["bids"].__setitem__(5, float("nan")), r"bids\[5\]: = nan is not finite"),
    (lambda a: a["bids"].__setitem__(6, float("inf")), r"bids\[6\]: = inf is not finite"),
    (lambda a: a.update(codes=a["codes"][:, :2]), r"codes: has shape \(20, 2\); expected 3 levels per row"),
    (lambda a: a.update(codes=a["codes"].float()), r"codes: has dtype torch.float32"),
    (lambda a: a.update(is_ad=a["is_ad"][:19]), r"is_ad: has 19 entries; expected 20"),
    (lambda a: a.update(bids=a["bids"].double()), r"bids: has dtype torch.float64; expected torch.float32"),
    (lambda a: a.update(bids=a["bids"].to("meta")), r"bids: is on meta"),
    (lambda a: a.update(codebook_sizes=[32, 0, 32]), r"codebook_sizes\[1\]: = 0 is out of range"),
    (lambda a: a.update(codebook_sizes=[]), r"codebook_sizes: is empty"),
])
def test_build_trie_device_rejects_bad_input(device, mutate, message: str) -> None:
    args = _ok(device)
    mutate(args)
    with pytest.raises(CatalogError, match=message):
        build_trie_device(args["codes"], args["is_ad"], args["bids"], args["codebook_sizes"])


def test_host_syncs_on_cuda(device) -> None:
    """build syncs once (the node counts), from_tensors once (the widths; CUDA's sync debug mode)."""
    if device.type != "cuda":
        pytest.skip("host synchronisation is only observable on a CUDA device (run with --device cuda)")
    import warnings

    sizes = [16384, 4096, 1024]
    codes, is_ad, bids = tensors(device, *random_catalog(5000, sizes, "mixed", seed=9, distinct=50))
    arrays = build_trie_device(codes, is_ad, bids, sizes)  # warm up allocator and kernels
    DeviceTrie.from_tensors(arrays, sizes, device)
    torch.cuda.synchronize(device)

    def syncs(fn) -> int:
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(lambda: build_trie_device(codes, is_ad, bids, sizes)) == 1
    assert syncs(lambda: DeviceTrie.from_tensors(arrays, sizes, device)) == 1


@pytest.mark.parametrize("sizes", [["32", 32, 32], [32, 3.7, 32], [True, 32, 32], "323", 32, [32, None, 32]])
def test_build_trie_device_refuses_codebook_sizes_that_are_not_ints(device, sizes) -> None:
    args = _ok(device)
    with pytest.raises(CatalogError) as info:
        build_trie_device(args["codes"], args["is_ad"], args["bids"], sizes)
    assert info.value.field.startswith("codebook_sizes")
