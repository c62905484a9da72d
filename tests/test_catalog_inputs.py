"""Hostile inputs to every public catalog constructor, update and loader.

Each class of bad input (wrong types, ragged nesting, wrong shapes and dtypes, strings, None,
bools, NaN/inf, huge values, empty, negative, floats where integers are expected, numpy arrays
and plain lists) is generated in many members. Every one must raise the project's own error
naming the field (``CatalogError``; ``CheckpointError`` for files), never numpy's or Python's
own errors, never a crash, and never be coerced into a catalog.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from ega_infer.catalog.catalog import MAX_CODEBOOK_SIZE, MAX_LEVELS, Catalog, Creative, Item
from ega_infer.exceptions import CatalogError, CatalogFileError, CheckpointError, EgaInferError, FieldError

SIZES = (4, 3, 5)
CREATIVE_SIZES = (6, 7)
N = 5
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """A bad input must fail with our error, not pass with a numpy warning along the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def base_arrays() -> dict:
    """Valid from_arrays inputs: 5 items, items 12 and 14 without creatives."""
    return dict(
        item_ids=[10, 11, 12, 13, 14],
        poi_codes=[[0, 0, 0], [1, 2, 3], [1, 2, 4], [3, 0, 1], [1, 2, 3]],
        is_ad=[True, False, True, True, False],
        bids=[1.5, 0.0, 2.0, 0.25, 0.0],
        creative_item_ids=[10, 11, 13, 10],
        creative_ids=[100, 101, 102, 103],
        creative_codes=[[0, 0], [5, 6], [1, 2], [3, 4]],
    )


def build(arrays: dict, sizes=SIZES, creative_sizes=CREATIVE_SIZES) -> Catalog:
    a = dict(arrays)
    return Catalog.from_arrays(
        a.pop("item_ids"), a.pop("poi_codes"), a.pop("is_ad"), a.pop("bids"),
        codebook_sizes=sizes, creative_codebook_sizes=creative_sizes, **a,
    )


def assert_field_error(info, field_prefix: str, error=CatalogError) -> FieldError:
    err = info.value
    assert type(err) is error or isinstance(err, error), type(err)
    assert isinstance(err, FieldError) and isinstance(err, EgaInferError)
    assert err.field == field_prefix or err.field.startswith(field_prefix + "["), (err.field, str(err))
    assert str(err).startswith(f"{err.field}: ")
    return err


def rejects(field: str, **changes) -> FieldError:
    arrays = base_arrays()
    sizes = changes.pop("codebook_sizes", SIZES)
    creative_sizes = changes.pop("creative_codebook_sizes", CREATIVE_SIZES)
    arrays.update(changes)
    with pytest.raises(CatalogError) as info:
        build(arrays, sizes, creative_sizes)
    return assert_field_error(info, field)


def _ids(cases):
    return [pytest.param(v, id=name) for name, v in cases]


# -- generators of bad values -----------------------------------------------------------------
class _Weird:
    """An object numpy makes a 0-d object array of, whose repr raises."""

    def __repr__(self):
        raise RuntimeError("no repr")


def not_arrays() -> list[tuple[str, object]]:
    """Values that are no array at all."""
    return [
        ("None", None), ("str", "10 11 12"), ("empty-str", ""), ("bytes", b"\x01\x02"),
        ("dict", {0: 1}), ("nested-dict", {"a": {"b": 1}}), ("set", {1, 2}), ("frozenset", frozenset({1})),
        ("int", 7), ("float", 7.5), ("bool", True), ("np-scalar", np.int64(3)), ("0-d", np.array(3)),
        ("object", object()), ("weird", _Weird()), ("generator", (i for i in range(N))),
        ("complex", 1 + 2j), ("ellipsis", ...),
    ]


def bad_int_vectors(n: int) -> list[tuple[str, object]]:
    """Not ``n`` integers: wrong types, ragged nesting, wrong shapes and dtypes, huge values."""
    ints = list(range(20, 20 + n))
    cases = not_arrays()
    for name, v in [("float", 1.0), ("frac", 1.5), ("nan", float("nan")), ("inf", float("inf")),
                    ("str", "1"), ("None", None), ("bool", True), ("np-bool", np.bool_(False)),
                    ("list", [1]), ("dict", {}), ("complex", 1j), ("huge", 2**64), ("neg-huge", -(2**63) - 1),
                    ("np-float", np.float32(2.0)), ("bytes", b"1")]:
        for at in (0, n - 1):
            bad = list(ints)
            bad[at] = v
            cases.append((f"{name}-at-{at}", bad))
    cases += [
        ("floats", [float(i) for i in ints]), ("strings", [str(i) for i in ints]),
        ("bools", [bool(i % 2) for i in range(n)]), ("np-float64", np.arange(n, dtype=np.float64)),
        ("np-float32", np.arange(n, dtype=np.float32)), ("np-bool", np.ones(n, bool)),
        ("np-str", np.array([str(i) for i in ints])), ("np-object", np.array(ints, dtype=object)),
        ("np-complex", np.arange(n, dtype=np.complex128)), ("np-timedelta", np.arange(n).astype("m8[s]")),
        ("np-datetime", np.arange(n).astype("M8[s]")), ("np-bytes", np.array([b"1"] * n)),
        ("column", [[i] for i in ints]), ("np-column", np.arange(n).reshape(n, 1)),
        ("row", [ints]), ("3-d", np.zeros((n, 1, 1), np.int64)),
        ("ragged", [ints[:2], ints[2:]]), ("ragged-deep", [[1, [2]], [3]]),
        ("uint64-huge", np.array([2**63] + ints[1:], np.uint64)), ("uint64-max", np.full(n, 2**64 - 1, np.uint64)),
        ("py-huge", [2**70] + ints[1:]), ("py-neg-huge", [-(2**100)] + ints[1:]),
        ("nan-array", np.full(n, np.nan)), ("empty-2d", np.zeros((1, 0), np.int64)),
    ]
    return cases


def wrong_lengths(n: int, make) -> list[tuple[str, object]]:
    return [(f"len-{k}", make(k)) for k in sorted({0, 1, n - 1, n + 1, 2 * n})]


def bad_code_rows(n: int, levels: int, sizes) -> list[tuple[str, object]]:
    """Not integers of shape (n, levels) within ``sizes``."""
    good = [[(i + level) % sizes[level] for level in range(levels)] for i in range(n)]
    cases = not_arrays()
    for name, v in [("float", 1.0), ("frac", 0.5), ("nan", float("nan")), ("str", "1"), ("None", None),
                    ("bool", True), ("list", [0]), ("negative", -1), ("too-big", "SIZE"), ("huge", 2**40),
                    ("py-huge", 2**80), ("inf", float("inf"))]:
        for i, level in ((0, 0), (n - 1, levels - 1)):
            bad = [list(r) for r in good]
            bad[i][level] = sizes[level] if v == "SIZE" else v
            cases.append((f"{name}-at-{i}-{level}", bad))
    ragged = [list(r) for r in good]
    ragged[n - 1] = ragged[n - 1][:-1]
    longer = [list(r) for r in good]
    longer[0] = longer[0] + [0]
    cases += [
        ("ragged-short", ragged), ("ragged-long", longer), ("row-is-int", [good[0], 3] + good[2:]),
        ("row-is-str", ["abc"] + good[1:]), ("row-is-None", [None] + good[1:]),
        ("flat", [c for r in good for c in r]), ("1-d", list(range(n))),
        ("3-d", np.zeros((n, levels, 1), np.int64)), ("transposed", np.array(good).T.copy()),
        ("fewer-levels", [r[:-1] for r in good]), ("more-levels", [r + [0] for r in good]),
        ("fewer-rows", good[:-1]), ("more-rows", good + [good[0]]), ("no-rows", []),
        ("np-float", np.array(good, dtype=np.float64)), ("np-float-int-valued", np.array(good, dtype=np.float32)),
        ("np-bool", np.array(good) > 0), ("np-str", np.array(good).astype(str)),
        ("np-object", np.array(good, dtype=object)), ("np-negative", -np.ones((n, levels), np.int64)),
        ("np-uint64-huge", np.full((n, levels), 2**63, np.uint64)), ("np-int64-max", np.full((n, levels), 2**63 - 1)),
        ("np-too-big", np.array([list(sizes)] * n)), ("empty-rows", [[] for _ in range(n)]),
    ]
    return cases


def bad_flags(n: int) -> list[tuple[str, object]]:
    flags = [bool(i % 2) for i in range(n)]
    cases = not_arrays()
    for name, v in [("two", 2), ("minus-one", -1), ("float-one", 1.0), ("half", 0.5), ("nan", float("nan")),
                    ("str-true", "True"), ("str-1", "1"), ("None", None), ("list", [True]), ("dict", {})]:
        bad = list(flags)
        bad[n - 1] = v
        cases.append((f"{name}-at-end", bad))
    cases += [
        ("strings", [str(f) for f in flags]), ("floats", [float(f) for f in flags]),
        ("np-float", np.array(flags, dtype=np.float64)), ("np-int-2", np.full(n, 2)),
        ("np-uint8-255", np.full(n, 255, np.uint8)), ("np-str", np.array(["yes"] * n)),
        ("np-object", np.array(flags, dtype=object)), ("column", [[f] for f in flags]),
        ("ragged", [flags[:2], flags[2:]]),
    ]
    return cases


def bad_bids(n: int) -> list[tuple[str, object]]:
    """Not ``n`` finite bids >= 0 that float32 holds."""
    bids = [0.5 + i for i in range(n)]
    cases = not_arrays()
    above = float(np.nextafter(np.float64(F32_MAX) + 2.0**103, np.inf))  # past float32's rounding to its max
    for name, v in [("str", "1.5"), ("str-num", "0"), ("None", None), ("bool-true", True), ("bool-false", False),
                    ("np-bool", np.bool_(True)), ("nan", float("nan")), ("np-nan", np.float32("nan")),
                    ("inf", float("inf")), ("minus-inf", -float("inf")), ("negative", -1.0), ("tiny-negative", -1e-30),
                    ("neg-int", -3), ("above-f32", 3.5e38), ("just-above-f32", above), ("f64-max", float(np.finfo(np.float64).max)),
                    ("1e39", 1e39), ("py-huge", 2**1100), ("py-big", 10**40), ("complex", 1j), ("list", [1.0]),
                    ("dict", {"bid": 1.0}), ("bytes", b"1.5"), ("decimal-str", "1e33")]:
        for at in (0, n - 1):
            bad = list(bids)
            bad[at] = v
            cases.append((f"{name}-at-{at}", bad))
    cases += [
        ("strings", [str(b) for b in bids]), ("np-str", np.array([str(b) for b in bids])),
        ("np-bool", np.ones(n, bool)), ("np-complex", np.ones(n, np.complex64)),
        ("np-object", np.array(bids, dtype=object)), ("np-f64-above", np.full(n, 1e39)),
        ("np-longdouble-huge", np.full(n, np.longdouble(10.0) ** 400)), ("np-nan", np.full(n, np.nan)),
        ("np-negative", -np.ones(n)), ("column", [[b] for b in bids]), ("ragged", [bids[:2], bids[2:]]),
        ("np-datetime", np.arange(n).astype("M8[s]")), ("np-timedelta", np.arange(n).astype("m8[s]")),
    ] + wrong_lengths(n, lambda k: [1.0] * k)
    return cases


def bad_sizes() -> list[tuple[str, object]]:
    cases = [
        ("None", None), ("str", "432"), ("bytes", b"\x04\x03"), ("int", 4), ("float", 4.0), ("dict", {4: 1}),
        ("set", {4, 3}), ("generator", (s for s in SIZES)), ("empty", []), ("empty-tuple", ()),
        ("too-many", [4] * (MAX_LEVELS + 1)), ("way-too-many", [4] * 1000), ("np-2d", np.array([SIZES])),
        ("np-float", np.array(SIZES, dtype=np.float64)), ("np-0d", np.array(4)), ("object", object()),
    ]
    for name, v in [("zero", 0), ("negative", -4), ("float", 4.0), ("frac", 4.5), ("nan", float("nan")),
                    ("inf", float("inf")), ("str", "4"), ("None", None), ("bool", True), ("np-bool", np.bool_(True)),
                    ("list", [4]), ("above-int32", 2**31), ("1e12", 10**12), ("py-huge", 2**200),
                    ("np-huge", np.uint64(2**64 - 1)), ("np-float", np.float64(4)), ("complex", 4j)]:
        for at in (0, len(SIZES) - 1):
            bad = list(SIZES)
            bad[at] = v
            cases.append((f"{name}-at-{at}", bad))
    return cases


# -- from_arrays: each argument ---------------------------------------------------------------
def test_base_arrays_are_valid():
    cat = build(base_arrays())
    assert len(cat) == N and len(cat.creative_ids) == 4
    np.testing.assert_array_equal(np.diff(cat.creative_ptr), [2, 1, 0, 1, 0])  # 12 and 14 own none


@pytest.mark.parametrize("value", _ids(bad_int_vectors(N)))
def test_item_ids_rejected(value):
    rejects("item_ids", item_ids=value)


@pytest.mark.parametrize("value", _ids(wrong_lengths(N, lambda k: list(range(k)))))
def test_item_ids_wrong_length(value):
    # the item count is len(item_ids): the first array that disagrees is poi_codes
    rejects("poi_codes", item_ids=value)


@pytest.mark.parametrize("at", [1, 4])
def test_item_ids_duplicate(at):
    ids = base_arrays()["item_ids"]
    ids[at] = ids[0]
    err = rejects("item_ids", item_ids=ids)
    assert err.field == f"item_ids[{at}]" and "repeats item_ids[0]" in str(err)


@pytest.mark.parametrize("value", _ids(bad_code_rows(N, len(SIZES), SIZES)))
def test_poi_codes_rejected(value):
    rejects("poi_codes", poi_codes=value)


@pytest.mark.parametrize("value", _ids(bad_flags(N) + wrong_lengths(N, lambda k: [True] * k)))
def test_is_ad_rejected(value):
    rejects("is_ad", is_ad=value)


@pytest.mark.parametrize("value", _ids(bad_bids(N)))
def test_bids_rejected(value):
    rejects("bids", bids=value)


@pytest.mark.parametrize("at", [0, 2, 4])
@pytest.mark.parametrize("bid", [3.5e38, 1e39, 1e300, float(np.finfo(np.float64).max)])
def test_bid_above_float32_named(at, bid):
    """A finite float64 that float32 cannot hold would become inf: refused, naming the entry."""
    bids = base_arrays()["bids"]
    bids[at] = bid
    for value in (bids, np.array(bids)):
        err = rejects("bids", bids=value)
        assert err.field == f"bids[{at}]" and "float32" in str(err)


@pytest.mark.parametrize("bid", [1e33, 1e38, F32_MAX, float(np.float64(F32_MAX) + 2.0**102), 0.0, 1, 10**30, np.float16(3.5)])
def test_large_representable_bids_accepted(bid):
    bids = base_arrays()["bids"]
    bids[0] = bid
    cat = build({**base_arrays(), "bids": bids})
    assert cat.bids.dtype == np.float32 and np.isfinite(cat.bids).all()
    assert cat.bids[0] == np.float32(bid)


@pytest.mark.parametrize("which", ["codebook_sizes", "creative_codebook_sizes"])
@pytest.mark.parametrize("value", _ids(bad_sizes()))
def test_codebook_sizes_rejected(which, value):
    with pytest.raises(CatalogError) as info:
        build(base_arrays(), **{"sizes" if which == "codebook_sizes" else "creative_sizes": value})
    assert_field_error(info, which)


@pytest.mark.parametrize("sizes", [(MAX_CODEBOOK_SIZE, 3, 5), (2**31 - 1,) * 3, (70000, 2**20, 5)])
def test_huge_codebook_sizes_build_in_bounded_memory(sizes):
    """The largest codebooks build a 5-item trie at once: the build's memory does not grow
    with the codebook size (two radix passes of at most 2**16 counters per level)."""
    start = time.perf_counter()
    cat = build(base_arrays(), sizes=sizes)
    assert cat.codebook_sizes == sizes
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("sizes", [[4, 3, 5], (4, 3, 5), np.array([4, 3, 5]), np.array([4, 3, 5], np.uint8), range(4, 7)])
def test_codebook_sizes_as_any_integer_sequence(sizes):
    cat = build({**base_arrays(), "poi_codes": np.zeros((N, 3), np.int64)}, sizes=sizes)
    assert cat.codebook_sizes == tuple(int(s) for s in sizes)
    assert all(type(s) is int for s in cat.codebook_sizes)


# -- creatives --------------------------------------------------------------------------------
CREATIVE_KEYS = ("creative_item_ids", "creative_ids", "creative_codes")


@pytest.mark.parametrize("given", [(k,) for k in CREATIVE_KEYS] + [tuple(k for k in CREATIVE_KEYS if k != m) for m in CREATIVE_KEYS])
def test_creatives_all_or_none(given):
    arrays = base_arrays()
    for key in CREATIVE_KEYS:
        if key not in given:
            arrays.pop(key)
    with pytest.raises(CatalogError, match="is missing") as info:
        build(arrays)
    assert info.value.field in CREATIVE_KEYS and info.value.field not in given


@pytest.mark.parametrize("key", ["creative_item_ids", "creative_ids"])
@pytest.mark.parametrize("value", _ids(bad_int_vectors(4)))
def test_creative_id_arrays_rejected(key, value):
    rejects(key, **{key: value})


@pytest.mark.parametrize("key", ["creative_item_ids", "creative_ids"])
@pytest.mark.parametrize("length", [0, 1, 3, 5, 8])
def test_creative_arrays_mismatched_lengths(key, length):
    values = [10] * length if key == "creative_item_ids" else list(range(200, 200 + length))
    with pytest.raises(CatalogError) as info:
        build({**base_arrays(), key: values})
    assert info.value.field.split("[")[0] in CREATIVE_KEYS


@pytest.mark.parametrize("value", _ids(bad_code_rows(4, len(CREATIVE_SIZES), CREATIVE_SIZES)))
def test_creative_codes_rejected(value):
    rejects("creative_codes", creative_codes=value)


@pytest.mark.parametrize("owner", [-1, 0, 9, 15, 2**62, -(2**63)])
@pytest.mark.parametrize("at", [0, 3])
def test_creative_of_unknown_item(owner, at):
    owners = base_arrays()["creative_item_ids"]
    owners[at] = owner
    err = rejects("creative_item_ids", creative_item_ids=owners)
    assert err.field == f"creative_item_ids[{at}]" and "names no item" in str(err)


@pytest.mark.parametrize(("first", "again"), [(0, 1), (0, 3), (2, 3)])
def test_duplicate_creative_ids(first, again):
    ids = base_arrays()["creative_ids"]
    ids[again] = ids[first]
    assert rejects("creative_ids", creative_ids=ids).field == f"creative_ids[{again}]"


@pytest.mark.parametrize(
    "empty",
    [None, ([], [], []), (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int32)),
     (np.zeros(0), np.zeros(0), np.zeros((0, 2)))],
    ids=["none", "lists", "int-arrays", "float-empties"],
)
def test_zero_creatives_valid(empty):
    arrays = base_arrays()
    for key in CREATIVE_KEYS:
        arrays.pop(key)
    if empty is not None:
        arrays.update(zip(CREATIVE_KEYS, empty))
    cat = build(arrays)
    assert len(cat.creative_ids) == 0 and cat.creative_codes.shape == (0, len(CREATIVE_SIZES))
    np.testing.assert_array_equal(cat.creative_ptr, np.zeros(N + 1))
    assert all(cat.item(i).creatives == () for i in range(N))


@pytest.mark.parametrize(
    ("ids", "codes"),
    [([], []), (np.zeros(0, np.int64), np.zeros((0, 3), np.int32)), (np.zeros(0), np.zeros((0, 3))), ((), np.zeros((0, 3), np.int64))],
    ids=["lists", "int-arrays", "float-empties", "tuple"],
)
def test_empty_catalog_valid(ids, codes):
    cat = Catalog.from_arrays(ids, codes, [], [], codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)
    assert len(cat) == 0 and cat.num_ads == 0 and cat.poi_codes.shape == (0, 3)


# -- lists and arrays give the same catalog ---------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_lists_and_arrays_agree(seed):
    rng = np.random.default_rng(seed)
    a = base_arrays()
    arrays = {k: np.asarray(v) for k, v in a.items()}
    dtype = [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32][seed]
    arrays["poi_codes"] = arrays["poi_codes"].astype(dtype)
    arrays["is_ad"] = arrays["is_ad"].astype([np.bool_, np.int8, np.uint8, np.int64, np.bool_, np.int32][seed])
    arrays["bids"] = arrays["bids"].astype([np.float64, np.float32, np.float16, np.float64, np.float32, np.float64][seed])
    order = rng.permutation(4)
    for key in CREATIVE_KEYS:
        arrays[key] = arrays[key][order]
        a[key] = [a[key][j] for j in order]
    x, y = build(a), build(arrays)
    for name in ("item_ids", "poi_codes", "is_ad", "bids", "creative_ptr", "creative_ids", "creative_codes"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


# -- Item and Creative ------------------------------------------------------------------------
def bad_scalar_ints() -> list[tuple[str, object]]:
    return [
        ("None", None), ("str", "1"), ("float", 1.0), ("frac", 1.5), ("nan", float("nan")), ("bool", True),
        ("np-bool", np.bool_(False)), ("list", [1]), ("tuple", (1,)), ("dict", {}), ("complex", 1j),
        ("huge", 2**63), ("neg-huge", -(2**63) - 1), ("py-huge", 2**300), ("np-float", np.float64(1)),
        ("np-array", np.array([1])), ("bytes", b"1"), ("object", object()),
    ]


def bad_code_tuples() -> list[tuple[str, object]]:
    cases = [
        ("None", None), ("str", "012"), ("int", 1), ("float", 1.0), ("dict", {0: 1}), ("set", {0, 1}),
        ("empty", ()), ("too-many", (0,) * (MAX_LEVELS + 1)), ("np-2d", np.zeros((1, 3), np.int64)),
        ("np-float", np.zeros(3)), ("generator", (c for c in (0, 1))), ("bytes", b"\x00"),
    ]
    for name, v in [("negative", -1), ("float", 1.0), ("str", "1"), ("None", None), ("bool", True), ("nested", (1,)),
                    ("too-big", MAX_CODEBOOK_SIZE), ("py-huge", 2**100), ("nan", float("nan"))]:
        cases.append((f"{name}-in-tuple", (0, v, 2)))
        cases.append((f"{name}-in-list", [v, 1, 2]))
    return cases


@pytest.mark.parametrize("value", _ids(bad_scalar_ints()))
def test_item_id_rejected(value):
    with pytest.raises(CatalogError) as info:
        Item(value, (0, 1, 2))
    assert_field_error(info, "item_id")


@pytest.mark.parametrize("value", _ids(bad_code_tuples()))
def test_item_codes_rejected(value):
    with pytest.raises(CatalogError) as info:
        Item(1, value)
    assert_field_error(info, "poi_codes")


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "True", "", None, [True], np.float64(1), 1j, object()])
def test_item_is_ad_rejected(value):
    with pytest.raises(CatalogError) as info:
        Item(1, (0, 1, 2), is_ad=value)
    assert_field_error(info, "is_ad")


@pytest.mark.parametrize("value", [
    "1.5", "0", None, True, False, np.bool_(True), float("nan"), float("inf"), -float("inf"), -1.0, -1e-300,
    -2, 3.5e38, 1e39, float(np.finfo(np.float64).max), 2**1100, 10**39, 1j, [1.0], (1.0,), {}, np.array([1.0]), b"1",
])
def test_item_bid_rejected(value):
    with pytest.raises(CatalogError) as info:
        Item(1, (0, 1, 2), is_ad=True, bid=value)
    assert_field_error(info, "bid")


@pytest.mark.parametrize("value", [
    None, "creative", 3, Creative(1, (0,)), {"creative_id": 1}, [(1, (0, 1))], ((1, (0, 1)),), [None], (Creative(1, (0,)), 2),
])
def test_item_creatives_rejected(value):
    with pytest.raises(CatalogError) as info:
        Item(1, (0, 1, 2), creatives=value)
    assert_field_error(info, "creatives")


@pytest.mark.parametrize("value", _ids(bad_scalar_ints()))
def test_creative_id_rejected(value):
    with pytest.raises(CatalogError) as info:
        Creative(value, (0, 1))
    assert_field_error(info, "creative_id")


@pytest.mark.parametrize("value", _ids(bad_code_tuples()))
def test_creative_codes_tuple_rejected(value):
    with pytest.raises(CatalogError) as info:
        Creative(1, value)
    assert_field_error(info, "codes")


def test_item_normalises_sensible_input():
    item = Item(np.int64(3), np.array([1, 2, 3]), 1, np.float32(1.5), [Creative(np.int32(7), [0, np.int64(1)])])
    assert item == Item(3, (1, 2, 3), True, 1.5, (Creative(7, (0, 1)),))
    assert type(item.item_id) is int and type(item.bid) is float and type(item.is_ad) is bool
    assert all(type(c) is int for c in item.poi_codes + item.creatives[0].codes)
    assert Item(1, (0,), bid=1e33).bid == 1e33


# -- from_items -------------------------------------------------------------------------------
def good_items() -> list[Item]:
    return [
        Item(1, (0, 1, 2), True, 1.0, (Creative(10, (1, 1)),)),
        Item(2, (0, 1, 2)),
        Item(3, (3, 2, 4), True, 2.5, (Creative(11, (5, 6)), Creative(12, (0, 0)))),
    ]


@pytest.mark.parametrize("items", [None, "items", 3, {"a": 1}, Item(1, (0, 1, 2)), (i for i in range(2)), {1, 2}, b"x"])
def test_from_items_not_a_list(items):
    with pytest.raises(CatalogError) as info:
        Catalog.from_items(items, codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)
    assert_field_error(info, "items")


@pytest.mark.parametrize("at", [0, 2])
@pytest.mark.parametrize("value", [None, (1, (0, 1, 2)), {"item_id": 1}, 1, "item", Creative(1, (0, 1)), [Item(9, (0, 0, 0))]])
def test_from_items_element_not_an_item(at, value):
    items = good_items()
    items[at] = value
    with pytest.raises(CatalogError) as info:
        Catalog.from_items(items, codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)
    assert info.value.field == f"items[{at}]"


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([Item(1, (0, 1, 2)), Item(1, (1, 1, 1))], "item_ids[1]"),  # duplicate id
        ([Item(1, (0, 1, 9))], "poi_codes[0, 2]"),  # code beyond its codebook
        ([Item(1, (4, 0, 0))], "poi_codes[0, 0]"),
        ([Item(1, (0, 1))], "items[0].poi_codes"),
        ([Item(1, (0, 1, 2, 3))], "items[0].poi_codes"),
        ([Item(1, (0, 1, 2), creatives=(Creative(5, (6, 0)),))], "creative_codes[0, 0]"),
        ([Item(1, (0, 1, 2), creatives=(Creative(5, (0, 0, 0)),))], "creatives[0].codes"),
        ([Item(1, (0, 1, 2), creatives=(Creative(5, (0, 0)),)), Item(2, (0, 0, 0), creatives=(Creative(5, (1, 1)),))], "creative_ids[1]"),
    ],
)
def test_from_items_bad_content(items, field):
    with pytest.raises(CatalogError) as info:
        Catalog.from_items(items, codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)
    assert info.value.field == field


@pytest.mark.parametrize("value", _ids(bad_sizes()))
def test_from_items_bad_sizes(value):
    with pytest.raises(CatalogError) as info:
        Catalog.from_items(good_items(), codebook_sizes=value, creative_codebook_sizes=CREATIVE_SIZES)
    assert_field_error(info, "codebook_sizes")


def test_from_items_empty_and_creativeless():
    assert len(Catalog.from_items([], codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)) == 0
    cat = Catalog.from_items((Item(1, (0, 1, 2)), Item(2, (0, 1, 2), True, 3.0)), codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES)
    assert len(cat) == 2 and len(cat.creative_ids) == 0


# -- updates and queries ----------------------------------------------------------------------
@pytest.fixture
def cat() -> Catalog:
    return build(base_arrays())


def assert_valid(c: Catalog) -> None:
    """``c`` equals the catalog built from scratch from its own arrays."""
    owners = np.repeat(c.item_ids, np.diff(c.creative_ptr))
    again = Catalog.from_arrays(
        c.item_ids, c.poi_codes, c.is_ad, c.bids, codebook_sizes=c.codebook_sizes,
        creative_codebook_sizes=c.creative_codebook_sizes, creative_item_ids=owners,
        creative_ids=c.creative_ids, creative_codes=c.creative_codes,
    )
    for name in ("item_ids", "poi_codes", "is_ad", "bids", "creative_ptr", "creative_ids", "creative_codes"):
        x, y = getattr(c, name), getattr(again, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    np.testing.assert_array_equal(c.trie.leaf_items, again.trie.leaf_items)
    np.testing.assert_array_equal(c.trie.level_sizes, again.trie.level_sizes)
    np.testing.assert_array_equal(c.index_of(c.item_ids), np.arange(len(c)))


@pytest.mark.parametrize("value", _ids(bad_int_vectors(2)))
def test_with_bids_bad_ids(cat, value):
    with pytest.raises(CatalogError) as info:
        cat.with_bids(value, [1.0, 2.0])
    assert_field_error(info, "item_ids")


@pytest.mark.parametrize("value", _ids(bad_bids(2)))
def test_with_bids_bad_bids(cat, value):
    snapshot = cat.bids.copy()
    with pytest.raises(CatalogError) as info:
        cat.with_bids([10, 12], value)
    assert_field_error(info, "bids")
    np.testing.assert_array_equal(cat.bids, snapshot)


@pytest.mark.parametrize(("ids", "field"), [([10, 99], "item_ids[1]"), ([-1], "item_ids[0]"), ([10, 10], "item_ids[1]"), ([12, 13, 12], "item_ids[2]")])
def test_with_bids_unknown_or_repeated(cat, ids, field):
    with pytest.raises(CatalogError) as info:
        cat.with_bids(ids, [1.0] * len(ids))
    assert info.value.field == field


@pytest.mark.parametrize("bid", [1e33, F32_MAX, 0.0, 7])
def test_with_bids_large_and_zero(cat, bid):
    updated = cat.with_bids(np.array([10, 13]), [bid, 0.5])
    assert updated.bids[0] == np.float32(bid) and np.isfinite(updated.bids).all()
    assert_valid(updated)
    assert_valid(cat.with_bids([], []))
    assert_valid(cat.with_bids([11], [0]))  # an organic item takes only 0


@pytest.mark.parametrize("value", _ids(bad_int_vectors(2)))
def test_without_items_bad_ids(cat, value):
    with pytest.raises(CatalogError) as info:
        cat.without_items(value)
    assert_field_error(info, "item_ids")


@pytest.mark.parametrize(("ids", "field"), [([99], "item_ids[0]"), ([10, 11, 99], "item_ids[2]"), ([-5, 10], "item_ids[0]")])
def test_without_items_unknown(cat, ids, field):
    with pytest.raises(CatalogError, match="is not in the catalog") as info:
        cat.without_items(ids)
    assert info.value.field == field


@pytest.mark.parametrize(
    "ids",
    [[10], [10, 10], [14, 12], [10, 11, 13], [13, 11, 10, 10], [10, 11, 12, 13, 14], [14, 13, 12, 11, 10, 12], []],
    ids=["one", "repeated", "no-creatives", "all-owners", "all-owners-repeated", "all", "all-repeated", "none"],
)
def test_without_items_valid(cat, ids):
    """Repeats remove an item once; removing every item, or every owner of creatives, leaves
    a valid catalog (empty, or without creatives)."""
    smaller = cat.without_items(np.array(ids, np.int64) if ids else ids)
    assert len(smaller) == N - len(set(ids))
    assert (smaller.index_of(ids) == -1).all() if ids else True
    assert_valid(smaller)
    if set(ids) >= {10, 11, 13}:
        assert len(smaller.creative_ids) == 0 and smaller.creative_codes.shape == (0, len(CREATIVE_SIZES))
    assert_valid(smaller.without_items([]))
    if len(smaller):
        assert_valid(smaller.without_items(smaller.item_ids))


@pytest.mark.parametrize("value", _ids(bad_int_vectors(3)))
def test_index_of_bad_ids(cat, value):
    with pytest.raises(CatalogError) as info:
        cat.index_of(value)
    assert_field_error(info, "item_ids")


def test_index_of_unknown_ids(cat):
    np.testing.assert_array_equal(cat.index_of([14, -1, 10, 2**63 - 1, -(2**63)]), [4, -1, 0, -1, -1])
    np.testing.assert_array_equal(cat.index_of(np.array([11], np.uint8)), [1])
    assert cat.index_of([]).shape == (0,)


@pytest.mark.parametrize("index", [-1, N, 2**63, "0", 0.0, 1.5, None, True, [0], np.float64(0)])
def test_item_bad_index(cat, index):
    with pytest.raises(CatalogError) as info:
        cat.item(index)
    assert info.value.field == "index"


# -- Catalog.load -----------------------------------------------------------------------------
TENSORS = ("item_ids", "poi_codes", "is_ad", "bids", "creative_item_ids", "creative_ids", "creative_codes")


@pytest.fixture
def saved(tmp_path, cat):
    path = tmp_path / "catalog.safetensors"
    cat.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    return path, tensors, meta


def write(tmp_path, tensors, meta, name="edited.safetensors"):
    from safetensors.numpy import save_file

    path = tmp_path / name
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def load_fails(path, field: str | None, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        Catalog.load(path)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, EgaInferError)
    if field is not None:
        assert isinstance(err, CatalogFileError) and isinstance(err, CatalogError)
        assert err.field == field or err.field.startswith(field + "["), (err.field, str(err))
        assert field in str(err)
    if match is not None:
        assert match in str(err), str(err)
    return err


def test_load_round_trip(saved, cat):
    loaded = Catalog.load(saved[0])
    for name in ("item_ids", "poi_codes", "is_ad", "bids", "creative_ptr", "creative_ids", "creative_codes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(cat, name))
    assert Catalog.load(str(saved[0])).codebook_sizes == SIZES


@pytest.mark.parametrize("path", [None, 3, 1.5, b"/tmp/x", ["a"], {"path": 1}, object()])
def test_load_bad_path_type(path):
    load_fails(path, "path")


def test_load_missing_and_directory(tmp_path):
    load_fails(tmp_path / "nope.safetensors", None, "no such catalog file")
    load_fails(tmp_path, None, "directory")
    (tmp_path / "sub.safetensors").mkdir()
    load_fails(tmp_path / "sub.safetensors", None, "directory")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
     b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": 1}' + b" " * 8, json.dumps({"item_ids": [1, 2]}).encode()],
    ids=["empty", "one-byte", "text", "short-header", "huge-header-size", "list-header", "bad-entry", "json"],
)
def test_load_not_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    load_fails(path, None)


@pytest.mark.parametrize("cut", [1, 10, 100, -1, -8])
def test_load_truncated(tmp_path, saved, cut):
    data = saved[0].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    load_fails(path, None)


@pytest.mark.parametrize("name", TENSORS)
def test_load_missing_tensor(tmp_path, saved, name):
    _, tensors, meta = saved
    load_fails(write(tmp_path, {k: v for k, v in tensors.items() if k != name}, meta), name, "missing")


@pytest.mark.parametrize("name", TENSORS)
def test_load_renamed_tensor(tmp_path, saved, name):
    _, tensors, meta = saved
    renamed = {(k + "_v2" if k == name else k): v for k, v in tensors.items()}
    err = load_fails(write(tmp_path, renamed, meta), None)
    assert name in str(err)


@pytest.mark.parametrize("extra", ["trie", "weight", "bids_v2", "item_ids.1"])
def test_load_extra_tensor(tmp_path, saved, extra):
    _, tensors, meta = saved
    load_fails(write(tmp_path, {**tensors, extra: np.zeros(3, np.float32)}, meta), extra)


def _wrong_dtypes(name: str) -> list:
    right = {"item_ids": "int64", "poi_codes": "int32", "is_ad": "uint8", "bids": "float32",
             "creative_item_ids": "int64", "creative_ids": "int64", "creative_codes": "int32"}[name]
    dtypes = ("int8", "int16", "int32", "int64", "uint32", "uint64", "float16", "float32", "float64")
    return [pytest.param(name, d, id=f"{name}-{d}") for d in dtypes if d != right]


@pytest.mark.parametrize(("name", "dtype"), [p for n in TENSORS for p in _wrong_dtypes(n)])
def test_load_wrong_dtype(tmp_path, saved, name, dtype):
    _, tensors, meta = saved
    changed = {**tensors, name: tensors[name].astype(dtype)}
    load_fails(write(tmp_path, changed, meta), name, "dtype")


@pytest.mark.parametrize("name", TENSORS)
@pytest.mark.parametrize("reshape", ["scalar", "add-dim", "flatten-or-column"])
def test_load_wrong_rank(tmp_path, saved, name, reshape):
    _, tensors, meta = saved
    a = tensors[name]
    if reshape == "scalar":
        b = np.asarray(a.reshape(-1)[:1].reshape(()) if a.size else np.zeros((), a.dtype))
    elif reshape == "add-dim":
        b = a[None]
    else:
        b = a.reshape(-1) if a.ndim == 2 else a.reshape(-1, 1)
    path = write(tmp_path, {**tensors, name: b}, meta)
    if reshape == "scalar" and a.ndim == 1:  # safetensors stores a 0-d array as shape (1,)
        assert isinstance(load_fails(path, None), CatalogFileError)
    else:
        load_fails(path, name)


@pytest.mark.parametrize(
    ("name", "edit", "field"),
    [
        ("item_ids", lambda a: np.r_[a[:1], a[:-1]], "item_ids"),  # a repeated id
        ("item_ids", lambda a: a[:-1], "poi_codes"),  # fewer ids than rows
        ("poi_codes", lambda a: np.full_like(a, 7), "poi_codes"),  # out of the codebooks
        ("poi_codes", lambda a: -np.ones_like(a), "poi_codes"),
        ("poi_codes", lambda a: a[:, :2].copy(), "poi_codes"),
        ("is_ad", lambda a: np.full_like(a, 2), "is_ad"),
        ("is_ad", lambda a: a[:-1], "is_ad"),
        ("bids", lambda a: np.full_like(a, np.nan), "bids"),
        ("bids", lambda a: np.full_like(a, np.inf), "bids"),
        ("bids", lambda a: -np.ones_like(a), "bids"),
        ("bids", lambda a: a[:-2], "bids"),
        ("creative_item_ids", lambda a: a + 1000, "creative_item_ids"),
        ("creative_item_ids", lambda a: a[:-1], "creative_item_ids"),
        ("creative_ids", lambda a: np.zeros_like(a), "creative_ids"),
        ("creative_ids", lambda a: np.r_[a, a[:1]], "creative_item_ids"),
        ("creative_codes", lambda a: np.full_like(a, 99), "creative_codes"),
        ("creative_codes", lambda a: a[:, :1].copy(), "creative_codes"),
        ("creative_codes", lambda a: a[:-1], "creative_codes"),
    ],
)
def test_load_inconsistent_content(tmp_path, saved, name, edit, field):
    _, tensors, meta = saved
    err = load_fails(write(tmp_path, {**tensors, name: edit(tensors[name])}, meta), field)
    assert "edited.safetensors" in str(err)


@pytest.mark.parametrize("key", ["format", "codebook_sizes", "creative_codebook_sizes"])
def test_load_missing_metadata(tmp_path, saved, key):
    _, tensors, meta = saved
    load_fails(write(tmp_path, tensors, {k: v for k, v in meta.items() if k != key}), key, "missing")


def test_load_no_metadata(tmp_path, saved):
    load_fails(write(tmp_path, saved[1], None), "format", "not a catalog saved by Catalog.save")


@pytest.mark.parametrize("key", ["codebook_sizes", "creative_codebook_sizes"])
@pytest.mark.parametrize(
    "text",
    ["", "not json", "[4, 3", "{}", '{"a": [4, 3, 5]}', '"abc"', '"[4, 3, 5]"', "null", "3", "true", "[]", "[[4, 3]]",
     "[4.0, 3, 5]", "[4.5, 3, 5]", "[true, 3, 5]", "[null, 3, 5]", '["4", 3, 5]', "[0, 3, 5]", "[-4, 3, 5]",
     "[1e400, 3, 5]", "NaN", "[NaN, 3]", "[4, 3, 5, 4, 3, 5, 4, 3, 5]", "[1000000000000, 3, 5]", "[" * 5000 + "]" * 5000,
     "[" + "9" * 5000 + "]", "[2147483648, 3]"],
)
def test_load_bad_metadata(tmp_path, saved, key, text):
    _, tensors, meta = saved
    load_fails(write(tmp_path, tensors, {**meta, key: text}), key)


def test_load_codebook_sizes_not_matching_codes(tmp_path, saved):
    _, tensors, meta = saved
    load_fails(write(tmp_path, tensors, {**meta, "codebook_sizes": "[2, 2, 2]"}), "poi_codes")
    load_fails(write(tmp_path, tensors, {**meta, "codebook_sizes": "[4, 3]"}), "poi_codes")


@pytest.mark.parametrize("fmt", ["", "ega_infer.catalog/2", "ega_infer.catalog", "pt", "EGA_INFER.CATALOG/1", "null"])
def test_load_wrong_format(tmp_path, saved, fmt):
    _, tensors, meta = saved
    load_fails(write(tmp_path, tensors, {**meta, "format": fmt}), "format")


@pytest.mark.parametrize("target", ["dir", "bad-type"])
def test_save_errors(tmp_path, cat, target):
    with pytest.raises(EgaInferError):
        cat.save(tmp_path if target == "dir" else 3)


def test_zero_creative_and_empty_catalogs_round_trip(tmp_path, cat):
    for c in (cat.without_items([10, 11, 13]), cat.without_items(cat.item_ids)):
        path = tmp_path / f"c{len(c)}.safetensors"
        c.save(path)
        loaded = Catalog.load(path)
        assert len(loaded) == len(c) and len(loaded.creative_ids) == 0
        assert_valid(loaded)
