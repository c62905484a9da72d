"""Request validation: a bad request gets a Slate with an error naming its field, and never
changes what the other requests of its batch are served."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ega_infer import DecodeConfig, Engine, Request, RequestError
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.request import prepare_request

CONFIG = DecodeConfig(mode="lists", beams=(4,), num_slots=4)


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=3))
    return engine


@pytest.fixture(scope="module")
def good(engine) -> list[Request]:
    return synthetic_requests(engine.catalog, engine.config, n=5, n_organic=6, seed=7)


def _ids(catalog, ad: bool) -> np.ndarray:
    return catalog.item_ids[catalog.is_ad == ad]


def _bad_requests(engine) -> list[tuple[object, str, str]]:
    """(request, field of the error, text the message must contain)."""
    cat, cfg = engine.catalog, engine.config
    organic, ads = _ids(cat, False), _ids(cat, True)
    codes = cat.poi_codes[:3].astype(np.int64)
    out_of_range = codes.copy()
    out_of_range[2, 1] = cfg.poi_codebook_sizes[1]
    negative = codes.copy()
    negative[0, 0] = -1
    creative = np.full((3, cfg.creative_levels), -1)
    creative_bad = creative.copy()
    creative_bad[1, 0] = cfg.creative_codebook_sizes[0]
    creative_neg = creative.copy()
    creative_neg[2, 1] = -2
    return [
        (Request(history_poi_codes=out_of_range), "history_poi_codes[2, 1]", "= 32 is out of range; expected a code in [0, 32)"),
        (Request(history_poi_codes=negative), "history_poi_codes[0, 0]", "= -1 is out of range"),
        (Request(history_poi_codes=codes[:, :2]), "history_poi_codes", "has 2 codes per behaviour; expected 3"),
        (Request(history_poi_codes=[1, 2, 3]), "history_poi_codes", "expected integers of shape (S, 3)"),
        (Request(history_poi_codes=codes, history_creative_codes=creative_bad), "history_creative_codes[1, 0]",
         "= 16 is out of range; expected a code in [0, 16) (or -1 for unknown)"),
        (Request(history_poi_codes=codes, history_creative_codes=creative_neg), "history_creative_codes[2, 1]", "= -2 is out of range"),
        (Request(history_poi_codes=codes, history_creative_codes=creative[:2]), "history_creative_codes",
         "has 2 rows; expected 3 (one per behaviour"),
        (Request(history_poi_codes=codes, history_creative_codes=creative[:, :1]), "history_creative_codes",
         "has 1 codes per behaviour; expected 2"),
        (Request(history_poi_codes=codes, history_actions=[0, cfg.encoder.n_actions, 1]), "history_actions[1]",
         "= 4 is out of range; expected an id in [0, 4)"),
        (Request(history_poi_codes=codes, history_actions=[0, 1, -1]), "history_actions[2]", "= -1 is out of range"),
        (Request(history_poi_codes=codes, history_actions=[0, 1]), "history_actions", "expected 3 integers (one per behaviour)"),
        (Request(history_poi_codes=codes, history_time_buckets=[0, 1, 2, 3]), "history_time_buckets",
         "has shape (4,)"),
        (Request(history_poi_codes=codes, history_time_buckets=[0, 16, 1]), "history_time_buckets[1]", "expected an id in [0, 16)"),
        (Request(history_poi_codes=codes, history_time_buckets=[0.0, 1.0, 2.0]), "history_time_buckets", "dtype float64"),
        (Request(organic_items=[organic[0], 5]), "organic_items[1]", "= 5 is not in the catalog; expected ids of catalog items"),
        (Request(organic_items=[organic[1], ads[0]]), "organic_items[1]", f"= {ads[0]} is an ad; expected organic items only"),
        (Request(organic_items=[organic[0], organic[1], organic[0]]), "organic_items[2]",
         f"= {organic[0]} appears twice; expected each organic item once"),
        (Request(organic_items=[[organic[0]], [organic[1]]]), "organic_items", "expected a list of item ids"),
        ({"history_poi_codes": codes}, "request", "is a dict; expected an ega_infer.Request"),
        (None, "request", "is a NoneType"),
    ]


_N_BAD = 20


@pytest.fixture(scope="module")
def mixed(engine, good):
    """One batch with every bad request, good ones at the start, between them and at the tail;
    and the good requests served alone. Returns (batch, slates, index of bad case k, alone)."""
    cases = _bad_requests(engine)
    assert len(cases) == _N_BAD
    batch, bad_at = [good[0]], {}
    for k, (request, _, _) in enumerate(cases):
        bad_at[k] = len(batch)
        batch.append(request)
        if k in (6, 13):
            batch.append(good[1 if k == 6 else 2])
    batch += [good[3], good[4]]
    slates = engine.generate(batch, CONFIG)
    alone = engine.generate(good, CONFIG)
    return batch, slates, bad_at, alone


@pytest.mark.parametrize("k", range(_N_BAD))
def test_bad_field_error_in_slate(engine, mixed, k):
    _, field, text = _bad_requests(engine)[k]
    batch, slates, bad_at, _ = mixed
    i = bad_at[k]
    assert len(slates) == len(batch)
    bad = slates[i]
    assert not bad.ok and bad.slots == () and bad.candidates == ()
    assert bad.error.startswith(f"requests[{i}].{field}: "), bad.error
    assert text in bad.error, bad.error
    assert bad.request_id == ""  # these requests carry no request_id (never replaced by the index)


@pytest.mark.parametrize("k", range(_N_BAD))
def test_prepare_request_raises_field(engine, k):
    request, field, text = _bad_requests(engine)[k]
    with pytest.raises(RequestError) as info:
        prepare_request(request, engine.config, engine.catalog, lists_mode=True)
    err = info.value
    assert err.field == field
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{field}: ") and text in str(err)


def test_prepare_request_good(engine, good):
    cfg = engine.config
    for request in good:
        p = prepare_request(request, cfg, engine.catalog, lists_mode=True)
        s = min(len(request.history_poi_codes), cfg.encoder.max_history)
        assert p.poi_codes.shape == (s, cfg.levels) and p.creative_codes.shape == (s, cfg.creative_levels)
        assert p.actions.shape == (s,) and p.time_buckets.shape == (s,)
        np.testing.assert_array_equal(engine.catalog.item_ids[p.organic_rows], request.organic_items)


def test_prepare_request_defaults(engine):
    cfg = engine.config
    p = prepare_request(Request(history_poi_codes=[[1, 2, 3], [4, 5, 6]]), cfg, engine.catalog, lists_mode=True)
    np.testing.assert_array_equal(p.creative_codes, np.full((2, cfg.creative_levels), -1))
    np.testing.assert_array_equal(p.actions, [0, 0])
    np.testing.assert_array_equal(p.time_buckets, [0, 0])
    assert p.organic_rows.shape == (0,)
    empty = prepare_request(Request(), cfg, engine.catalog, lists_mode=True)
    assert empty.poi_codes.shape == (0, cfg.levels)


def test_candidates_mode_ignores_organic_items(engine):
    request = Request(organic_items=[5, 5, -1])  # unknown and repeated: ignored in candidates mode
    p = prepare_request(request, engine.config, engine.catalog, lists_mode=False)
    assert p.organic_rows.shape == (0,)
    with pytest.raises(RequestError) as info:
        prepare_request(request, engine.config, engine.catalog, lists_mode=True)
    assert info.value.field == "organic_items[0]"


def assert_same_slate(got, want):
    assert got.error == want.error
    assert got.request_id == want.request_id
    assert [s.slot for s in got.slots] == [s.slot for s in want.slots]
    assert [s.item_id for s in got.slots] == [s.item_id for s in want.slots]
    assert [s.creative_id for s in got.slots] == [s.creative_id for s in want.slots]
    assert [s.is_ad for s in got.slots] == [s.is_ad for s in want.slots]
    np.testing.assert_allclose([s.payment for s in got.slots], [s.payment for s in want.slots], rtol=0, atol=1e-5)
    np.testing.assert_allclose([s.bid for s in got.slots], [s.bid for s in want.slots], rtol=0, atol=1e-6)


def test_mixed_batch_serves_good_requests_unchanged(mixed):
    batch, slates, bad_at, alone = mixed
    bad_rows = set(bad_at.values())
    good_slates = [slate for i, slate in enumerate(slates) if i not in bad_rows]
    assert len(good_slates) == len(alone) == 5
    for got, want in zip(good_slates, alone):
        assert got.ok and len(got.slots) == CONFIG.num_slots
        assert_same_slate(got, want)
    assert all(not slates[i].ok for i in bad_rows)


def test_all_requests_bad(engine):
    bad = _bad_requests(engine)
    slates = engine.generate([bad[1][0], bad[19][0]], CONFIG)
    assert [s.error.split(":")[0] for s in slates] == [f"requests[0].{bad[1][1]}", f"requests[1].{bad[19][1]}"]
    assert all(s.slots == () for s in slates)


def test_single_request_batch_matches_bigger_batch(engine, good, mixed):
    """A request alone gives the slate it gets in a batch (padding must not leak)."""
    alone = mixed[3]
    for k in (0, 3, 4):  # first, odd, tail
        (got,) = engine.generate([good[k]], CONFIG)
        assert_same_slate(got, alone[k])


@pytest.mark.parametrize("extra", [1, 37])
def test_history_truncated_to_most_recent(engine, good, extra):
    cfg, cat = engine.config, engine.catalog
    max_history = cfg.encoder.max_history
    s = max_history + extra
    rng = np.random.default_rng(extra)
    rows = rng.integers(0, len(cat), s)
    creative = rng.integers(-1, min(cfg.creative_codebook_sizes), (s, cfg.creative_levels))
    actions = rng.integers(0, cfg.encoder.n_actions, s)
    times = np.sort(rng.integers(0, cfg.encoder.n_time_buckets, s))
    organic = good[0].organic_items
    long = Request(cat.poi_codes[rows], creative, actions, times, organic, "long")
    last = slice(s - max_history, s)
    short = Request(cat.poi_codes[rows][last], creative[last], actions[last], times[last], organic, "long")
    p_long = prepare_request(long, cfg, cat, lists_mode=True)
    p_short = prepare_request(short, cfg, cat, lists_mode=True)
    for f in dataclasses.fields(p_long):
        np.testing.assert_array_equal(getattr(p_long, f.name), getattr(p_short, f.name), err_msg=f.name)
    # the oldest behaviours really are dropped: changing them changes nothing
    changed = Request(np.where(np.arange(s)[:, None] < extra, 0, cat.poi_codes[rows]), creative, actions, times, organic, "long")
    got = engine.generate([long, good[1], short, changed], CONFIG)
    assert got[0].ok and got[1].ok
    assert_same_slate(got[2], got[0])
    assert_same_slate(got[3], got[0])


def test_history_of_exactly_max_history_is_kept(engine):
    cfg, cat = engine.config, engine.catalog
    s = cfg.encoder.max_history
    codes = cat.poi_codes[np.arange(s) % len(cat)]
    p = prepare_request(Request(history_poi_codes=codes), cfg, cat, lists_mode=True)
    np.testing.assert_array_equal(p.poi_codes, codes)
