"""End to end on the tiny preset: slates are well formed, priced within the bids, deterministic,
and independent of the batch they are served in."""

import dataclasses

import numpy as np
import pytest
import torch

from ega_infer import DecodeConfig, Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests


@pytest.fixture(scope="module")
def served():
    engine = Engine.from_pretrained("tiny")
    catalog = synthetic_catalog(engine.config, n_items=400, seed=1)
    engine.set_catalog(catalog)
    requests = synthetic_requests(catalog, engine.config, n=5, n_organic=6, seed=2)
    return engine, catalog, requests


@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_slates_are_well_formed(served, mode):
    engine, catalog, requests = served
    config = DecodeConfig(mode=mode, beams=(4, 8, 8), num_slots=5, num_candidates=6)
    for slate, request in zip(engine.generate(requests, config), requests):
        assert slate.ok, slate.error
        assert slate.request_id == request.request_id
        assert [s.slot for s in slate.slots] == list(range(5))
        ids = [s.item_id for s in slate.slots]
        assert len(set(ids)) == len(ids)
        for s in slate.slots:
            row = int(catalog.index_of([s.item_id])[0])
            assert row >= 0 and s.is_ad == bool(catalog.is_ad[row])
            assert s.bid == pytest.approx(float(catalog.bids[row]))
            if s.creative_id is not None:
                lo, hi = catalog.creative_ptr[row], catalog.creative_ptr[row + 1]
                assert s.creative_id in catalog.creative_ids[lo:hi]
            assert 0 <= s.pctr_poi <= 1 and 0 <= s.pctr_creative <= 1 and 0 <= s.pcvr <= 1
            assert 0 < s.alloc_prob <= 1
            assert 0 <= s.payment <= s.bid
            if not s.is_ad:
                assert s.payment == 0
        if mode == "lists":
            organic = [s.item_id for s in slate.slots if not s.is_ad]
            assert organic == list(request.organic_items[: len(organic)])
        assert 1 <= len(slate.candidates) <= 6
        assert set(slate.latency_ms) >= {"encode", "decode", "creative", "reward", "payment", "total"}


def test_creatives_are_chosen_by_the_head(served):
    engine, catalog, requests = served
    config = DecodeConfig(beams=(4,), num_slots=5)
    chosen = engine.generate(requests, config)
    off = engine.generate(requests, dataclasses.replace(config, choose_creatives=False))
    assert any(s.creative_id is not None for sl in chosen for s in sl.slots)
    assert all(s.creative_id is None for sl in off for s in sl.slots)


def test_deterministic_and_batch_independent(served):
    engine, _, requests = served
    config = DecodeConfig(beams=(4, 6, 6), num_slots=4)
    batch = engine.generate(requests, config)
    again = engine.generate(requests, config)
    alone = [engine.generate([r], config)[0] for r in requests]
    for a, b, c in zip(batch, again, alone):
        assert a.slots == b.slots and a.candidates == b.candidates
        assert [s.item_id for s in a.slots] == [s.item_id for s in c.slots]
        assert [s.creative_id for s in a.slots] == [s.creative_id for s in c.slots]
        np.testing.assert_allclose([s.payment for s in a.slots], [s.payment for s in c.slots], atol=1e-5)


def test_catalog_swap_is_honoured(served):
    engine, catalog, requests = served
    config = DecodeConfig(mode="candidates", beams=(8,), num_slots=4)
    first = engine.generate(requests[:2], config)
    winners = {s.item_id for sl in first for s in sl.slots}
    engine.set_catalog(catalog.without_items(sorted(winners)))
    try:
        second = engine.generate(requests[:2], config)
        assert not winners & {s.item_id for sl in second for s in sl.slots}
    finally:
        engine.set_catalog(catalog)


def test_bids_move_ads(served):
    engine, catalog, requests = served
    config = DecodeConfig(beams=(8,), num_slots=5, alpha=2.0, beta=0.1)
    ads = catalog.item_ids[catalog.is_ad]
    boosted = catalog.with_bids(ads[:20], np.full(20, 1000.0))
    engine.set_catalog(boosted)
    try:
        slates = engine.generate(requests, config)
    finally:
        engine.set_catalog(catalog)
    placed = {s.item_id for sl in slates for s in sl.slots}
    assert placed & set(ads[:20].tolist())


def test_candidates_mode_returns_best_beams_first(served):
    engine, _, requests = served
    slate = engine.generate(requests[:1], DecodeConfig(mode="candidates", beams=(6,), num_slots=3, num_candidates=6))[0]
    scores = [c.score for c in slate.candidates]
    assert scores == sorted(scores, reverse=True)
    assert [s.item_id for s in slate.slots] == [c.item_ids[0] for c in slate.candidates[:3]]


def test_impossible_rules_give_a_per_request_error(served):
    engine, _, requests = served
    no_organic = dataclasses.replace(requests[0], organic_items=())
    config = DecodeConfig(beams=(4,), num_slots=5, max_ads=1)
    slates = engine.generate([no_organic, requests[1]], config)
    assert not slates[0].ok and "slot rules" in slates[0].error
    assert slates[1].ok


def test_payment_never_exceeds_bid_for_any_input():
    engine = Engine.from_pretrained("tiny")
    pay = engine.model.payment
    d = engine.config.reward.d_model
    for k in (1, 3, engine.config.decoder.max_slots):
        repr_ = torch.randn(64, k, d) * 100
        bids = torch.rand(64, k) * torch.tensor([0.0, 1e-3, 1.0, 1e6])[torch.randint(0, 4, (64, k))]
        is_ad = torch.rand(64, k) < 0.6
        alloc = torch.rand(64, k) * 10
        threshold = torch.rand(64, k) * torch.tensor([0.0, 1e-3, 1.0, 1e6])[torch.randint(0, 4, (64, k))]
        rate, payment = pay(repr_, bids, is_ad, alloc, threshold)
        assert torch.all(payment <= bids) and torch.all(payment >= 0)
        assert torch.all(payment[~is_ad] == 0)
        assert torch.all((rate >= 0) & (rate <= 1))
