"""Hostile input against the engine, class by class (issue 12, part 1): many generated members
of each class, each checked for what a production ad server needs. A bad request gets a Slate
whose error names its field and its batch-mates are served bit for bit as if alone; no finite
value stops serving; beam widths and batch sizes cannot exhaust memory; every public
constructor refuses wrong types with our own error naming the field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ega_infer import Catalog, DecodeConfig, Engine, ListScore, Request
from ega_infer.exceptions import CatalogError, ConfigError, EgaInferError, RequestError
from ega_infer.ops.beam_step_torch import token_weight
from ega_infer.testing import synthetic_catalog, synthetic_requests

CONFIG = DecodeConfig(mode="lists", beams=(4,), num_slots=4, max_ads=2)
CANDIDATES = DecodeConfig(mode="candidates", beams=(6,), num_slots=3)


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=11))
    return engine


@pytest.fixture(scope="module")
def good(engine) -> list[Request]:
    return synthetic_requests(engine.catalog, engine.config, n=3, n_organic=5, seed=12)


def served(slate):
    """Everything a slate says (floats exactly)."""
    return slate.error, slate.request_id, slate.slots, slate.candidates


# -- class 1: one malformed field never costs its batch-mates anything ----------------------
def _bad_values(engine) -> list[tuple[str, dict]]:
    """(field the error must name, Request keyword arguments), many per field."""
    cfg, cat = engine.config, engine.catalog
    codes = cat.poi_codes[:3].astype(np.int64).tolist()
    organic = cat.item_ids[~cat.is_ad][:3].tolist()
    ad = int(cat.item_ids[cat.is_ad][0])
    nested_wrong = [
        [codes[0], codes[1][:2], codes[2]],  # one row shorter (ragged)
        [codes[0], codes[1] + [1], codes[2]],  # one row longer
        [codes[0], [codes[1]], codes[2]],  # one row nested deeper
        [codes[0], "abc", codes[2]], [codes[0], None, codes[2]], [codes[0], {"a": 1}, codes[2]],
        [[1.5, 2, 3]], [[True, False, True]], [[2**70, 0, 0]], [[float("nan"), 0, 0]],
        "codes", b"\x00\x01", {"codes": codes}, 42, 3.5, [1, 2, 3], [[[1, 2, 3]]],
        np.array([[1, 2, 3]], dtype=object), np.zeros((2, 3), np.float32), torch.zeros(2, 3),
        np.array([["1", "2", "3"]]), [[-1, 0, 0]], [[0, cfg.poi_codebook_sizes[1], 0]],
        np.full((2, 3), 2**63, dtype=np.uint64), [[0, 0]] * 2, [[0, 0, 0, 0]],
    ]
    cases = [("history_poi_codes", {"history_poi_codes": v}) for v in nested_wrong]
    creative_wrong = [[[0, 0], [0]], [[0, 0], [0, 0, 0]], "x", [[0.5, 1]], [[0, 0]] * 2,
                      [[cfg.creative_codebook_sizes[0], 0]] * 3, [[-2, 0]] * 3, [[0, 0], None, [0, 0]], 7]
    cases += [("history_creative_codes", {"history_poi_codes": codes, "history_creative_codes": v}) for v in creative_wrong]
    vector_wrong = [[0, 1], [0, 1, 2, 3], [[0], [1], [2]], [0, "1", 2], [0.0, 1.0, 2.0], [True, False, True],
                    [0, None, 1], "012", [0, 2**70, 1], [-1, 0, 0], 5, {"0": 1}]
    for field, size in (("history_actions", cfg.encoder.n_actions), ("history_time_buckets", cfg.encoder.n_time_buckets)):
        cases += [(field, {"history_poi_codes": codes, field: v}) for v in vector_wrong + [[0, size, 0]]]
    organic_wrong = [[organic[0], [organic[1]]], [[organic[0]], [organic[1]]], [organic[0], "x"], [organic[0], None],
                     [float(organic[0])], [organic[0], 10**30], [organic[0], -5], [organic[0], ad],
                     [organic[0], organic[0]], "items", 12, {"id": organic[0]}, [organic[0], 2**64 - 1],
                     np.array(organic, dtype=np.uint64) + np.uint64(2**63)]
    cases += [("organic_items", {"organic_items": v}) for v in organic_wrong]
    cases += [("request_id", {"request_id": v}) for v in (7, None, b"id", 1.5, ["a"], {"a": 1}, np.str_)]
    rng = np.random.default_rng(1)
    for _ in range(40):  # random ragged histories: one row of another length somewhere
        rows = [list(map(int, rng.integers(0, 4, cfg.levels))) for _ in range(int(rng.integers(2, 9)))]
        j = int(rng.integers(len(rows)))
        rows[j] = rows[j][: int(rng.integers(0, cfg.levels))] if rng.random() < 0.5 else rows[j] + [0]
        field = ["history_poi_codes", "history_creative_codes"][int(rng.integers(2))]
        if field == "history_poi_codes":
            cases.append((field, {field: rows}))
        else:
            creative = [[-1] * cfg.creative_levels for _ in rows]
            creative[j] = creative[j][:1] if rng.random() < 0.5 else creative[j] + [-1]
            cases.append((field, {"history_poi_codes": [[0] * cfg.levels for _ in rows], field: creative}))
    return cases


def test_every_malformed_field_fails_only_its_own_request(engine, good):
    cases = _bad_values(engine)
    assert len(cases) > 120
    batch = [good[0]]
    where = {}
    for k, (_, kwargs) in enumerate(cases):
        where[k] = len(batch)
        batch.append(Request(**kwargs))
        if k % 37 == 0:
            batch.append(good[1])
    batch.append(good[2])
    slates = engine.generate(batch, CONFIG)
    assert len(slates) == len(batch)
    for k, (field, _) in enumerate(cases):
        slate = slates[where[k]]
        assert not slate.ok and slate.slots == () and slate.candidates == (), (k, field)
        assert slate.error.startswith(f"requests[{where[k]}].{field}"), (k, slate.error)
        assert "expected" in slate.error, slate.error
    alone = {id(r): served(engine.generate([r], CONFIG)[0]) for r in good}
    for i, request in enumerate(batch):
        if any(request is r for r in good):
            assert slates[i].ok
            assert served(slates[i]) == alone[id(request)]  # bit for bit: slots, payments, pCTRs


def test_non_request_objects_and_non_str_ids(engine, good):
    batch = [good[0], {"history_poi_codes": [[0, 0, 0]]}, None, 3, "request", Request(request_id=12), good[1]]
    slates = engine.generate(batch, CONFIG)
    assert [s.ok for s in slates] == [True, False, False, False, False, False, True]
    for slate in slates[1:5]:
        assert ".request: is a" in slate.error
    assert slates[5].error.startswith("requests[5].request_id: is a int; expected a str")
    assert slates[5].request_id == ""  # refused, never replaced by the batch index
    assert slates[0].request_id == good[0].request_id


def test_decoded_json_requests(engine, good):
    """JSON gives exactly these shapes: ragged lists, floats, nulls, nested organic items."""
    cat = engine.catalog
    codes = cat.poi_codes[:2].tolist()
    organic = cat.item_ids[~cat.is_ad][:2].tolist()
    texts = [
        json.dumps({"history_poi_codes": [codes[0], codes[1][:1]], "request_id": "ragged"}),
        json.dumps({"history_poi_codes": codes, "organic_items": [[organic[0]], organic[1]], "request_id": "nested"}),
        json.dumps({"history_poi_codes": codes, "history_actions": [0.5, 1], "request_id": "floats"}),
        json.dumps({"history_poi_codes": codes, "history_time_buckets": [None, 1], "request_id": "null"}),
        json.dumps({"history_poi_codes": codes, "organic_items": organic, "request_id": "fine"}),
    ]
    requests = [Request(**json.loads(t)) for t in texts]
    slates = engine.generate([good[0], *requests], CONFIG)
    fields = ["history_poi_codes", "organic_items", "history_actions", "history_time_buckets"]
    for slate, field in zip(slates[1:5], fields):
        assert not slate.ok and f".{field}" in slate.error, slate.error
    assert slates[5].ok and slates[5].request_id == "fine"
    assert served(slates[0]) == served(engine.generate([good[0]], CONFIG)[0])


@pytest.mark.parametrize("config", [CONFIG, CANDIDATES], ids=["lists", "candidates"])
def test_slates_do_not_depend_on_batch_mates(engine, config):
    """A request's slate is the same bit for bit alone, in any batch, at any position."""
    requests = synthetic_requests(engine.catalog, engine.config, n=9, n_organic=6, seed=21)
    alone = [served(engine.generate([r], config)[0]) for r in requests]
    for order in (range(9), range(8, -1, -1), [4, 0, 8, 2, 6, 1, 7, 3, 5]):
        order = list(order)
        slates = engine.generate([requests[i] for i in order], config)
        assert [served(s) for s in slates] == [alone[i] for i in order]
    pairs = engine.generate(requests[2:4], config)
    assert [served(s) for s in pairs] == alone[2:4]


def test_batches_beyond_max_batch_are_served_in_chunks(engine, good):
    small = Engine(engine.model, max_batch=2)
    small.set_catalog(engine.catalog)
    requests = synthetic_requests(engine.catalog, engine.config, n=5, n_organic=5, seed=3)
    batch = [requests[0], Request(history_poi_codes="bad"), *requests[1:]]
    slates = small.generate(batch, CONFIG)
    assert len(slates) == 6 and slates[1].error.startswith("requests[1].history_poi_codes")
    assert [served(s) for i, s in enumerate(slates) if i != 1] == [served(engine.generate([r], CONFIG)[0]) for r in requests]


def test_long_inputs_are_cut_not_padded_into_the_batch(engine, good):
    """Organic lists longer than the slate and histories longer than max_history: only what
    can be used is kept, so one long request cannot inflate its batch."""
    cat, cfg = engine.catalog, engine.config
    organic = cat.item_ids[~cat.is_ad]
    rows = np.arange(5 * cfg.encoder.max_history) % len(cat)
    long = Request(history_poi_codes=cat.poi_codes[rows], organic_items=organic, request_id="long")
    short = Request(history_poi_codes=cat.poi_codes[rows[-cfg.encoder.max_history:]],
                    organic_items=organic[: CONFIG.num_slots], request_id="long")
    assert served(engine.generate([long, good[0]], CONFIG)[0]) == served(engine.generate([short], CONFIG)[0])


# -- class 2: catalogs without creatives, or POIs without any ---------------------------------
def _catalog_without_creatives(engine, seed: int, share_with: float) -> Catalog:
    """The synthetic catalog where only a ``share_with`` fraction of the items keep creatives."""
    base = synthetic_catalog(engine.config, n_items=120, seed=seed)
    owners = np.repeat(base.item_ids, np.diff(base.creative_ptr))
    rng = np.random.default_rng(seed)
    keep_items = set(base.item_ids[rng.random(len(base)) < share_with].tolist())
    keep = np.array([o in keep_items for o in owners], dtype=bool)
    return Catalog.from_arrays(
        base.item_ids, base.poi_codes, base.is_ad, base.bids,
        codebook_sizes=base.codebook_sizes, creative_codebook_sizes=base.creative_codebook_sizes,
        creative_item_ids=owners[keep], creative_ids=base.creative_ids[keep], creative_codes=base.creative_codes[keep],
    )


@pytest.mark.parametrize("share_with", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("config", [CONFIG, CANDIDATES], ids=["lists", "candidates"])
def test_catalogs_without_creatives_serve_slates(engine, share_with, config):
    catalog = _catalog_without_creatives(engine, seed=int(share_with * 10), share_with=share_with)
    owns = np.diff(catalog.creative_ptr) > 0
    requests = synthetic_requests(catalog, engine.config, n=4, n_organic=5, seed=4)
    slates = engine.generate(requests, config, catalog=catalog)
    assert all(s.ok for s in slates), [s.error for s in slates]
    for slate in slates:
        for slot in slate.slots:
            row = int(catalog.index_of([slot.item_id])[0])
            assert (slot.creative_id is None) == (not owns[row])
            if slot.creative_id is not None:  # one of the item's own creatives
                lo, hi = catalog.creative_ptr[row], catalog.creative_ptr[row + 1]
                assert slot.creative_id in catalog.creative_ids[lo:hi]
            assert math.isfinite(slot.payment) and 0 <= slot.payment <= slot.bid + 1e-6


def test_without_items_down_to_no_creatives(engine):
    base = _catalog_without_creatives(engine, seed=5, share_with=0.4)
    owners = base.item_ids[np.diff(base.creative_ptr) > 0]
    catalog = base.without_items(owners[::2]).without_items(owners[1::2])
    assert len(catalog.creative_ids) == 0 and len(catalog) > 0
    slates = engine.generate(synthetic_requests(catalog, engine.config, n=3, n_organic=4, seed=6), CONFIG, catalog=catalog)
    assert all(s.ok for s in slates) and all(slot.creative_id is None for s in slates for slot in s.slots)


# -- class 3: no finite value stops serving --------------------------------------------------
def _with_bid(catalog: Catalog, bid: float, count: int = 1) -> Catalog:
    ads = catalog.item_ids[catalog.is_ad][:count]
    return catalog.with_bids(ads, [bid] * len(ads))


@pytest.mark.parametrize("bid", [1e30, 1e33, 3.4e38, 1e-40, 0.0])
@pytest.mark.parametrize("alpha,beta", [(1.2, 2.0), (1e30, 2.0), (1e36, 0.0), (1.2, 1e300), (0.0, 0.0), (1e-30, 1e-300)])
def test_huge_and_tiny_finite_values_serve(engine, good, bid, alpha, beta):
    catalog = _with_bid(engine.catalog, bid, count=3)
    config = DecodeConfig(mode="lists", beams=(4,), num_slots=4, alpha=alpha, beta=beta)
    slates = engine.generate(good, config, catalog=catalog)
    assert all(s.ok for s in slates), [s.error for s in slates]
    for slate in slates:
        for slot in slate.slots:
            assert math.isfinite(slot.payment) and 0 <= slot.payment <= slot.bid
            assert all(math.isfinite(x) for x in (slot.pctr_poi, slot.pctr_creative, slot.pcvr, slot.alloc_prob))
        assert all(math.isfinite(c.score) and math.isfinite(c.list_score) for c in slate.candidates)


def test_huge_list_score_weights_serve(engine, good):
    catalog = _with_bid(engine.catalog, 3e38, count=5)
    for weights in (ListScore(revenue=1e200), ListScore(revenue=0.0, ctr=1e200), ListScore(revenue=-1e200, cvr=1e-300)):
        config = DecodeConfig(mode="lists", beams=(4,), num_slots=4, list_score=weights)
        slates = engine.generate(good, config, catalog=catalog)
        assert all(s.ok for s in slates), [s.error for s in slates]
        assert all(math.isfinite(slot.payment) for s in slates for slot in s.slots)


def test_token_weight_in_log_space_matches_the_direct_formula():
    """Same values as ``log(bid ** alpha + beta)`` wherever that is finite (bid 0 and
    alpha = beta = 0 included), finite where it overflowed."""
    rng = np.random.default_rng(0)
    bids = np.concatenate([[0.0, 1.0, 1e-30, 1e30, 3.4e38], rng.lognormal(0, 2, 200)]).astype(np.float32)
    for alpha, beta in [(0.0, 0.0), (0.0, 2.0), (1.2, 2.0), (1.0, 0.0), (2.5, 1e-3), (1e30, 2.0), (1.2, 1e300)]:
        got = token_weight(torch.from_numpy(bids), alpha, math.log(beta) if beta else -math.inf).double().numpy()
        with np.errstate(over="ignore", divide="ignore"):
            direct = np.log(bids.astype(np.float64) ** alpha + beta)
        finite = np.isfinite(direct)
        np.testing.assert_allclose(got[finite], direct[finite], rtol=2e-6, atol=2e-6)
        assert not np.isnan(got).any() and not np.isposinf(got).any()
        assert np.array_equal(np.isneginf(got), np.isneginf(direct))  # no ad below and beta 0: not admissible


@pytest.mark.parametrize("name,value", [("alpha", 1e37), ("alpha", float("inf")), ("alpha", -1.0), ("alpha", float("nan")),
                                        ("beta", float("inf")), ("beta", -1e-9), ("beta", float("nan")),
                                        ("alpha", "1.2"), ("beta", None), ("alpha", True)])
def test_unrepresentable_bid_weights_are_refused_at_the_config(name, value):
    with pytest.raises(ConfigError) as info:
        DecodeConfig(**{name: value})
    assert info.value.field == name


@pytest.mark.parametrize("bid", [1e39, float("inf"), float("nan"), -1.0, 1e300])
def test_unrepresentable_bids_are_refused_at_the_catalog(engine, bid):
    catalog = engine.catalog
    with pytest.raises(CatalogError) as info:
        catalog.with_bids(catalog.item_ids[catalog.is_ad][:1], [bid])
    assert info.value.field.startswith("bids")


# -- class 4: beam widths cannot allocate what the catalog cannot fill ------------------------
def test_widths_above_max_beams_are_refused(engine, good):
    for config, field in ((DecodeConfig(beams=(10**9,)), "beams[0]"),
                          (DecodeConfig(beams=(4, 8, 10**9), mode="candidates"), "beams[2]"),
                          (DecodeConfig(beams=(4,), fallback_beams=((10**12,),)), "fallback_beams[0][0]")):
        with pytest.raises(ConfigError) as info:
            engine.generate(good, config)
        assert info.value.field == field and "max_beams" in str(info.value)


@pytest.mark.parametrize("mode,slots", [("lists", 2), ("candidates", 4)])
def test_widths_beyond_the_catalog_are_served_at_what_it_can_fill(engine, mode, slots):
    """10**9 beams on a 25-item catalog: served at what the catalog can fill (the same slates
    as 10**5, which it cannot fill either), never allocated."""
    wide = Engine(engine.model, max_beams=10**9)
    catalog = synthetic_catalog(engine.config, n_items=25, seed=8)
    wide.set_catalog(catalog)
    requests = synthetic_requests(catalog, engine.config, n=2, n_organic=3, seed=9)
    got = wide.generate(requests, DecodeConfig(mode=mode, beams=(10**9,), num_slots=slots, num_candidates=10**6))
    want = wide.generate(requests, DecodeConfig(mode=mode, beams=(10**5,), num_slots=slots, num_candidates=10**6))
    assert all(s.ok for s in got)
    assert [served(s) for s in got] == [served(s) for s in want]
    if mode == "candidates":  # every SID of the catalog is a beam
        sids = {tuple(c) for c in catalog.poi_codes.tolist()}
        assert all(len(s.candidates) == len(sids) for s in got)


# -- class 5: constructors and calls refuse wrong types with our own errors -------------------
@pytest.mark.parametrize("kwargs,field", [
    ({"forbidden_ad_slots": 3}, "forbidden_ad_slots"), ({"forbidden_ad_slots": "0"}, "forbidden_ad_slots"),
    ({"forbidden_ad_slots": (0.5,)}, "forbidden_ad_slots[0]"), ({"fallback_beams": 3}, "fallback_beams"),
    ({"fallback_beams": (3.0,)}, "fallback_beams[0]"), ({"fallback_beams": ((0,),)}, "fallback_beams[0][0]"),
    ({"fallback_beams": "8"}, "fallback_beams"), ({"beams": "16"}, "beams"), ({"beams": ()}, "beams"),
    ({"beams": (4.0,)}, "beams[0]"), ({"beams": None}, "beams"), ({"num_slots": 0}, "num_slots"),
    ({"num_slots": "6"}, "num_slots"), ({"max_ads": -1}, "max_ads"), ({"max_ads": 1.5}, "max_ads"),
    ({"min_gap": None}, "min_gap"), ({"mode": "slates"}, "mode"), ({"mode": ["lists"]}, "mode"),
    ({"backend": "gpu"}, "backend"), ({"backend": None}, "backend"), ({"list_score": {"revenue": 1}}, "list_score"),
    ({"choose_creatives": "yes"}, "choose_creatives"), ({"num_candidates": -2}, "num_candidates"),
    ({"latency_target_ms": 0}, "latency_target_ms"), ({"latency_target_ms": "5"}, "latency_target_ms"),
])
def test_decode_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DecodeConfig(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs", [{"revenue": float("inf")}, {"ctr": "1"}, {"cvr": None}, {"creative_ctr": 1e201}])
def test_list_score_names_the_field(kwargs):
    with pytest.raises(ConfigError) as info:
        ListScore(**kwargs)
    assert info.value.field == f"list_score.{next(iter(kwargs))}"


def test_engine_calls_name_the_field(engine, good):
    for bad in (None, "catalog", 3, engine.model):
        with pytest.raises(CatalogError) as info:
            engine.set_catalog(bad)
        assert info.value.field == "catalog"
    for bad in (None, "requests", {"a": 1}, 3):
        with pytest.raises(RequestError) as info:
            engine.generate(bad)
        assert info.value.field == "requests"
    with pytest.raises(ConfigError) as info:
        engine.generate(good, {"beams": 4})
    assert info.value.field == "config"
    for bad in (-1, 1.5, "3", None):
        with pytest.raises(ConfigError) as info:
            engine.generate(good, queue_depth=bad)
        assert info.value.field == "queue_depth"
    with pytest.raises(CatalogError):
        engine.generate(good, catalog="other")
    for kwargs, field in (({"max_beams": 0}, "max_beams"), ({"max_batch": 2.5}, "max_batch"), ({"device": "gpu:x"}, "device")):
        with pytest.raises(ConfigError) as info:
            Engine(engine.model, **kwargs)
        assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        Engine("not a model")
    assert info.value.field == "model"
    assert engine.generate([]) == []


def test_every_error_is_ours(engine, good):
    """What reaches the caller from a bad call is an EgaInferError, never a bare numpy or torch error."""
    calls = [lambda: engine.generate(good, DecodeConfig(num_slots=99)),
             lambda: engine.warmup(CONFIG, batch_sizes=[0]), lambda: engine.warmup(CONFIG, batch_sizes="1"),
             lambda: Engine.from_pretrained(12), lambda: Engine.from_pretrained("tiny", dtype="float32")]
    for call in calls:
        with pytest.raises(EgaInferError):
            call()
