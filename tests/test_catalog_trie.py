"""ega_infer._C.build_trie against a dict-of-prefixes reference, plus its input errors."""

from __future__ import annotations

import numpy as np
import pytest

from ega_infer import _C


def reference_trie(codes: np.ndarray, is_ad: np.ndarray, bids: np.ndarray) -> dict:
    """The trie of ``codes`` written the slow, obvious way: sorted sets of prefixes."""
    n, levels = codes.shape
    rows = [tuple(int(c) for c in r) for r in codes]
    depth_nodes = [[()]] + [sorted({r[: d + 1] for r in rows}) for d in range(levels)]
    ids = [{p: i for i, p in enumerate(nodes)} for nodes in depth_nodes]

    child_ptr, node_code, node_max_bid, node_ad_count = [], [], [], []
    for l in range(levels):
        counts = [0] * len(depth_nodes[l])
        for p in depth_nodes[l + 1]:
            counts[ids[l][p[:-1]]] += 1
        child_ptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        node_code.append(np.array([p[-1] for p in depth_nodes[l + 1]], dtype=np.int32))
        ad_bids: dict[tuple, list[float]] = {p: [] for p in depth_nodes[l + 1]}
        for i, r in enumerate(rows):
            if is_ad[i]:
                ad_bids[r[: l + 1]].append(float(bids[i]))
        node_max_bid.append(np.array([max(ad_bids[p], default=0.0) for p in depth_nodes[l + 1]],
                                     dtype=np.float32))
        node_ad_count.append(np.array([len(ad_bids[p]) for p in depth_nodes[l + 1]], dtype=np.int32))

    leaf_items, leaf_ptr = [], [0]
    for leaf in depth_nodes[levels]:
        members = [i for i, r in enumerate(rows) if r == leaf]
        members.sort(key=lambda i: (not is_ad[i], -float(bids[i]) if is_ad[i] else 0.0, i))
        leaf_items.extend(members)
        leaf_ptr.append(len(leaf_items))

    item_nodes = np.array(
        [[ids[l + 1][r[: l + 1]] for l in range(levels)] for r in rows], dtype=np.int32
    ).reshape(n, levels)
    return {
        "level_sizes": np.array([len(nodes) for nodes in depth_nodes], dtype=np.int64),
        "child_ptr": child_ptr,
        "node_code": node_code,
        "node_max_bid": node_max_bid,
        "node_ad_count": node_ad_count,
        "leaf_ptr": np.array(leaf_ptr, dtype=np.int64),
        "leaf_items": np.array(leaf_items, dtype=np.int64),
        "item_nodes": item_nodes,
    }


def random_catalog(n: int, sizes: list[int], ads: str, seed: int):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, k, size=n) for k in sizes], axis=1).astype(np.int32)
    codes = np.ascontiguousarray(codes.reshape(n, len(sizes)))
    is_ad = {"mixed": rng.random(n) < 0.4, "none": np.zeros(n, bool), "all": np.ones(n, bool)}[ads]
    bids = rng.choice(np.array([0.0, 0.5, 1.25, 3.0], dtype=np.float32), size=n)  # ties on purpose
    return codes, is_ad, bids.astype(np.float32)


def assert_same_trie(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in ("level_sizes", "leaf_ptr", "leaf_items", "item_nodes"):
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("child_ptr", "node_code", "node_max_bid", "node_ad_count"):
        assert len(got[key]) == len(want[key]), key
        for l, (g, w) in enumerate(zip(got[key], want[key])):
            assert g.dtype == w.dtype, f"{key}[{l}]"
            np.testing.assert_array_equal(g, w, err_msg=f"{key}[{l}]")


SIZES = {1: [5], 2: [3, 4], 3: [2, 3, 2]}


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("ads", ["mixed", "none", "all"])
def test_build_trie_matches_reference(n: int, levels: int, ads: str) -> None:
    sizes = SIZES[levels]
    codes, is_ad, bids = random_catalog(n, sizes, ads, seed=1000 * n + 10 * levels + len(ads))
    got = _C.build_trie(codes, is_ad, bids, sizes)
    assert_same_trie(got, reference_trie(codes, is_ad, bids))


def test_build_trie_empty_catalog_is_a_bare_root() -> None:
    got = _C.build_trie(np.zeros((0, 2), np.int32), np.zeros(0, bool), np.zeros(0, np.float32), [4, 4])
    np.testing.assert_array_equal(got["level_sizes"], [1, 0, 0])
    np.testing.assert_array_equal(got["child_ptr"][0], [0, 0])
    np.testing.assert_array_equal(got["child_ptr"][1], [0])
    np.testing.assert_array_equal(got["leaf_ptr"], [0])
    assert got["item_nodes"].shape == (0, 2)


def test_build_trie_large_codebook_uses_two_digit_passes() -> None:
    # A codebook above 2**16 is sorted in two 16-bit counting passes.
    codes, is_ad, bids = random_catalog(500, [70_000, 3], "mixed", seed=7)
    # Values on both sides of the 16-bit boundary, so both digits decide the order.
    firsts = np.array([0, 5, 65_535, 65_536, 65_537, 69_999, 1 << 15], dtype=np.int32)
    codes[:, 0] = np.random.default_rng(8).choice(firsts, size=500)
    got = _C.build_trie(codes, is_ad, bids, [70_000, 3])
    assert_same_trie(got, reference_trie(codes, is_ad, bids))


def test_build_trie_leaf_order_ads_by_bid_then_organic() -> None:
    codes = np.zeros((6, 1), np.int32)
    is_ad = np.array([False, True, True, False, True, True])
    bids = np.array([9.0, 1.0, 2.0, 9.0, 2.0, 0.5], np.float32)
    got = _C.build_trie(codes, is_ad, bids, [1])
    np.testing.assert_array_equal(got["leaf_items"], [2, 4, 1, 5, 0, 3])
    np.testing.assert_array_equal(got["node_max_bid"][0], [2.0])
    np.testing.assert_array_equal(got["node_ad_count"][0], [4])


def test_build_trie_outputs_outlive_inputs() -> None:
    codes, is_ad, bids = random_catalog(50, [3, 4], "mixed", seed=3)
    want = reference_trie(codes, is_ad, bids)
    got = _C.build_trie(codes.copy(), is_ad.copy(), bids.copy(), [3, 4])
    del codes, is_ad, bids
    assert_same_trie(got, want)
    assert got["item_nodes"].flags.c_contiguous and got["item_nodes"].flags.writeable


def _ok(n: int = 20, sizes=(32, 32, 32)):
    codes, is_ad, bids = random_catalog(n, list(sizes), "mixed", seed=0)
    return codes, is_ad, bids, list(sizes)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.update(codes=a["codes"][:, :2].copy()),
         r"codes: shape \(20, 2\) has 2 levels but codebook_sizes has length 3"),
        (lambda a: a["codes"].__setitem__((17, 2), 40), r"codes\[17, 2\] = 40 is out of range \[0, 32\)"),
        (lambda a: a["codes"].__setitem__((3, 0), -1), r"codes\[3, 0\] = -1 is out of range"),
        (lambda a: a["bids"].__setitem__(5, np.nan), r"bids\[5\] = nan is not finite"),
        (lambda a: a["bids"].__setitem__(6, np.inf), r"bids\[6\] = inf is not finite"),
        (lambda a: a.update(is_ad=a["is_ad"][:19].copy()), r"is_ad: has 19 entries; expected 20"),
        (lambda a: a.update(bids=a["bids"][:3].copy()), r"bids: has 3 entries; expected 20"),
        (lambda a: a.update(codes=a["codes"].astype(np.int64)), r"codes: has dtype int64; expected int32"),
        (lambda a: a.update(codes=np.asfortranarray(a["codes"])), r"codes: is not C-contiguous"),
        (lambda a: a.update(codes=a["codes"][:, 0].copy()), r"codes: has shape \(20,\)"),
        (lambda a: a.update(is_ad=a["is_ad"].astype(np.int8)), r"is_ad: has dtype int8; expected bool"),
        (lambda a: a.update(bids=a["bids"].astype(np.float64)), r"bids: has dtype float64; expected float32"),
        (lambda a: a.update(codebook_sizes=[32, 0, 32]), r"codebook_sizes\[1\] = 0 is out of range"),
        (lambda a: a.update(codebook_sizes=[]), r"codebook_sizes: is empty"),
    ],
)
def test_build_trie_rejects_bad_input(mutate, message: str) -> None:
    codes, is_ad, bids, sizes = _ok()
    args = {"codes": codes, "is_ad": is_ad, "bids": bids, "codebook_sizes": sizes}
    mutate(args)
    with pytest.raises(ValueError, match=message):
        _C.build_trie(args["codes"], args["is_ad"], args["bids"], args["codebook_sizes"])


# -- prune_trie and refresh_bids: an update equals build_trie on the updated catalog -----------
def _copies(raw: dict) -> dict:
    return {k: [a.copy() for a in v] if isinstance(v, list) else v.copy() for k, v in raw.items()}


def _keep_mask(n: int, kind: str, rng) -> np.ndarray:
    if kind == "random":
        return rng.random(n) < 0.5
    keep = np.ones(n, bool)
    if kind == "none":
        keep[:] = False
    elif kind == "one" and n:
        keep[rng.integers(n)] = False
    elif kind == "most" and n:
        keep[:] = False
        keep[rng.integers(n)] = True
    return keep


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("kind", ["random", "all", "none", "one", "most"])
def test_prune_trie_matches_build(n: int, levels: int, kind: str) -> None:
    sizes = SIZES[levels]
    codes, is_ad, bids = random_catalog(n, sizes, "mixed", seed=100 * n + levels)
    keep = _keep_mask(n, kind, np.random.default_rng(n + levels))
    raw = _C.build_trie(codes, is_ad, bids, sizes)
    before = _copies(raw)
    got = _C.prune_trie(raw, is_ad, bids, keep)
    assert_same_trie(got, _C.build_trie(np.ascontiguousarray(codes[keep]), is_ad[keep], bids[keep], sizes))
    assert_same_trie(raw, before)  # the input trie is not modified


@pytest.mark.parametrize("seed", range(5))
def test_prune_trie_twice_and_sparse_removals(seed: int) -> None:
    # Wide codebooks: mostly one item per leaf, so removals prune whole paths; then prune again.
    rng = np.random.default_rng(seed)
    sizes = [40, 30, 20]
    codes, is_ad, bids = random_catalog(3000, sizes, "mixed", seed=seed)
    keep = np.ones(3000, bool)
    keep[rng.choice(3000, size=40, replace=False)] = False
    once = _C.prune_trie(_C.build_trie(codes, is_ad, bids, sizes), is_ad, bids, keep)
    codes, is_ad, bids = np.ascontiguousarray(codes[keep]), is_ad[keep], bids[keep]
    assert_same_trie(once, _C.build_trie(codes, is_ad, bids, sizes))
    keep = rng.random(len(codes)) < 0.9
    twice = _C.prune_trie(once, is_ad, bids, keep)
    assert_same_trie(twice, _C.build_trie(np.ascontiguousarray(codes[keep]), is_ad[keep], bids[keep], sizes))


def test_prune_trie_keeps_signed_zero_bids_bitwise() -> None:
    # Max bids follow build_trie exactly, down to which of 0.0 / -0.0 a node reports.
    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        codes, _, _ = random_catalog(n, [2, 3, 2], "mixed", seed=int(rng.integers(1 << 30)))
        is_ad = rng.random(n) < 0.7
        bids = rng.choice(np.array([0.0, -0.0, 1.0], np.float32), size=n)
        keep = rng.random(n) < 0.6
        got = _C.prune_trie(_C.build_trie(codes, is_ad, bids, [2, 3, 2]), is_ad, bids, keep)
        want = _C.build_trie(np.ascontiguousarray(codes[keep]), is_ad[keep], bids[keep], [2, 3, 2])
        for g, w in zip(got["node_max_bid"], want["node_max_bid"]):
            np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32))


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("ads", ["mixed", "none", "all"])
def test_refresh_bids_matches_build(n: int, levels: int, ads: str) -> None:
    sizes = SIZES[levels]
    codes, is_ad, bids = random_catalog(n, sizes, ads, seed=7 * n + levels)
    rng = np.random.default_rng(n + 10 * levels)
    raw = _C.build_trie(codes, is_ad, bids, sizes)
    before = _copies(raw)
    changed = rng.choice(n, size=min(n, 1 + n // 10), replace=True).astype(np.int64) if n else np.zeros(0, np.int64)
    new = bids.copy()
    new[changed] = rng.choice(np.array([0.0, 0.5, 1.25, 3.0, 7.5], np.float32), size=len(changed))  # ties too
    got = _C.refresh_bids(raw, is_ad, new, changed)
    want = _C.build_trie(codes, is_ad, new, sizes)
    assert set(got) == {"leaf_items", "node_max_bid"}
    assert got["leaf_items"].dtype == want["leaf_items"].dtype
    np.testing.assert_array_equal(got["leaf_items"], want["leaf_items"])
    for level, (g, w) in enumerate(zip(got["node_max_bid"], want["node_max_bid"], strict=True)):
        assert g.dtype == w.dtype, level
        np.testing.assert_array_equal(g, w, err_msg=f"node_max_bid[{level}]")
    assert_same_trie(raw, before)  # copies: the old trie is not modified
    assert not np.shares_memory(got["leaf_items"], raw["leaf_items"])


def test_refresh_bids_without_changes_copies() -> None:
    codes, is_ad, bids = random_catalog(50, [3, 4], "mixed", seed=9)
    raw = _C.build_trie(codes, is_ad, bids, [3, 4])
    got = _C.refresh_bids(raw, is_ad, bids, np.zeros(0, np.int64))
    np.testing.assert_array_equal(got["leaf_items"], raw["leaf_items"])
    for g, w in zip(got["node_max_bid"], raw["node_max_bid"]):
        np.testing.assert_array_equal(g, w)
        assert not np.shares_memory(g, w)


def _update_args(n: int = 20):
    codes, is_ad, bids = random_catalog(n, [3, 4, 2], "mixed", seed=5)
    return _C.build_trie(codes, is_ad, bids, [3, 4, 2]), is_ad, bids


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.update(keep=a["keep"][:19].copy()), r"keep: has 19 entries; expected 20"),
        (lambda a: a.update(keep=a["keep"].astype(np.int8)), r"keep: has dtype int8; expected bool"),
        (lambda a: a.update(bids=a["bids"][:3].copy()), r"bids: has 3 entries; expected 20"),
        (lambda a: a["trie"].pop("leaf_items"), r"trie: has no 'leaf_items'"),
        (lambda a: a["trie"]["node_code"].pop(), r"trie\['node_code'\]: has 2 levels; expected 3"),
        (lambda a: a["trie"].update(leaf_ptr=a["trie"]["leaf_ptr"][:-1].copy()), r"trie\['leaf_ptr'\]: has"),
        (lambda a: a["trie"]["item_nodes"].__setitem__((4, 1), 10**6), r"item_nodes entry 13 = 1000000 names no node"),
        (lambda a: a["trie"]["leaf_items"].__setitem__(3, 20), r"expected the arrays of one build_trie call"),
        (lambda a: a["trie"]["leaf_ptr"].__setitem__(1, 10**6), r"expected the arrays of one build_trie call"),
        (lambda a: a["trie"]["child_ptr"][1].__setitem__(1, -1), r"expected the arrays of one build_trie call"),
    ],
)
def test_prune_trie_rejects_bad_input(mutate, message: str) -> None:
    trie, is_ad, bids = _update_args()
    keep = np.ones(20, bool)
    keep[[0, 5]] = False
    args = {"trie": dict(trie, node_code=list(trie["node_code"])), "is_ad": is_ad, "bids": bids, "keep": keep}
    mutate(args)
    with pytest.raises(ValueError, match=message):
        _C.prune_trie(args["trie"], args["is_ad"], args["bids"], args["keep"])


@pytest.mark.parametrize(
    ("changed", "bid", "message"),
    [
        ([3, 20], 1.0, r"changed\[1\] = 20 is not a row; expected rows in \[0, 20\)"),
        ([-1], 1.0, r"changed\[0\] = -1 is not a row"),
        ([2], np.nan, r"bids\[2\] = nan is not finite"),
    ],
)
def test_refresh_bids_rejects_bad_input(changed, bid, message: str) -> None:
    trie, is_ad, bids = _update_args()
    bids = bids.copy()
    bids[2] = bid
    with pytest.raises(ValueError, match=message):
        _C.refresh_bids(trie, is_ad, bids, np.array(changed, np.int64))


@pytest.mark.parametrize("n", [1, 9, 300])
def test_device_trie_padded_children_and_widths(n: int) -> None:
    """``DeviceTrie.children`` (fixed width, no host sync) lists exactly the CSR children, and
    the widths it pads to are the widest node and leaf, for both ways of building a DeviceTrie."""
    import torch

    from ega_infer.catalog import DeviceTrie, TrieArrays, build_trie_device
    from ega_infer.ops import trie_children

    sizes = [5, 4, 3]
    codes, is_ad, bids = random_catalog(n, sizes, "mixed", seed=n)
    trie = DeviceTrie(TrieArrays.build(codes, is_ad, bids, tuple(sizes)), tuple(sizes), torch.device("cpu"))
    arrays = build_trie_device(torch.as_tensor(codes), torch.as_tensor(is_ad), torch.as_tensor(bids), sizes)
    same = DeviceTrie.from_tensors(arrays, tuple(sizes), "cpu")
    assert same.max_children == trie.max_children and same.max_leaf_items == trie.max_leaf_items
    assert trie.max_leaf_items == int(np.diff(trie.leaf_ptr.numpy()).max())
    for level in range(len(sizes)):
        n_nodes = trie.child_ptr[level].numel() - 1
        assert trie.max_children[level] == int(np.diff(trie.child_ptr[level].numpy()).max())
        node = torch.tensor(list(range(n_nodes)) + [-1, 0])
        child, valid = trie.children(level, node)
        rows, want = trie_children(node, trie.child_ptr[level])
        assert child.shape == (len(node), max(trie.max_children[level], 1))
        assert torch.equal(child[valid], want) and torch.equal(valid.nonzero()[:, 0], rows)
