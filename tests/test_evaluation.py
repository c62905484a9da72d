"""Offline evaluation: the payment network's threshold input, the batched full re-decode regret
against one engine call per (request, ad, gamma) on a catalog with that bid, and the cascade
baseline."""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from ega_infer import Engine
from ega_infer.auction import ex_post_regret
from ega_infer.auction.lists import list_vcg_prices, selection_mechanism
from ega_infer.evaluation import cascade_slates, redecode_rules
from ega_infer.model import GenerativeAdModel
from ega_infer.post import network_prices
from ega_infer.presets import get_preset
from ega_infer.world import AdWorld, WorldConfig

from test_list_pricing import _random_lists


@pytest.fixture(scope="module")
def trained():
    engine = Engine.from_pretrained("tiny")
    world = AdWorld(WorldConfig(seed=0), engine.config)
    engine.set_catalog(world.catalog())
    return engine, world


def _with_network_inputs(lists, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, l, k = lists.items.shape
    return dataclasses.replace(lists, slot_repr=torch.randn(n, l, k, d, generator=g),
                               log_alloc=-torch.rand(n, l, k, generator=g, dtype=torch.float64) * 3)


def test_untrained_payment_network_prices_at_the_clarke_threshold():
    """The network prices relative to the threshold and starts at zero markup: a fresh network
    charges the VCG price, so it is truthful for the selection stage before any training."""
    config = get_preset("tiny").model
    model = GenerativeAdModel.from_config(config, seed=3)
    lists = _with_network_inputs(_random_lists(n=48, k=3, seed=5), config.reward.d_model)
    winner = lists.winner
    network = functools.partial(network_prices, model.payment)
    bids = lists.at(lists.bids, winner)
    torch.testing.assert_close(network(lists, winner), list_vcg_prices(lists, winner), rtol=0, atol=2e-4 * float(bids.max()))
    regret = ex_post_regret(selection_mechanism(lists, network), bids, lists.at(lists.is_ad, winner), ascent_steps=0)
    assert regret.grid.max() < 1e-3


def _one_by_one(engine, requests, config, gammas):
    """The oracle: per request, per ad of its live lists, per gamma, the engine served again on
    a catalog where that ad bids gamma x value; best utility where it lands in the slate."""
    catalog = engine.catalog
    out = {}
    for i, request in enumerate(requests):
        lists = engine.serve_batch([request], config)
        alive = lists.alive[0]
        ads = sorted({int(r) for r in lists.items[0][alive].flatten().tolist()
                      if r >= 0 and catalog.is_ad[r]}, reverse=True)
        served = engine.generate([request], config)[0]
        for a in ads:
            item_id, value = int(catalog.item_ids[a]), float(catalog.bids[a])
            truthful = next(((value - s.payment) * s.pctr_poi for s in served.slots if s.item_id == item_id), 0.0)
            best = 0.0
            for gamma in gammas:
                again = engine.generate([request], config, catalog=catalog.with_bids([item_id], [gamma * value]))[0]
                best = max(best, next(((value - s.payment) * s.pctr_poi for s in again.slots if s.item_id == item_id), 0.0))
            out[(i, a)] = (truthful, max(best - truthful, 0.0))
    return out


def test_batched_redecode_equals_one_engine_call_per_misreport(trained):
    engine, world = trained
    requests = [world.request(int(u)) for u in world.users("test")[:3]]
    config = engine.default_config
    gammas = (0.4, 1.0, 1.8)
    got = redecode_rules(engine, requests, config, ("network",), gammas=gammas, chunk=7)["network"]
    want = _one_by_one(engine, requests, config, gammas)
    bidders = 0
    for i in range(len(requests)):
        ads = got.regret.bidders[i].nonzero().flatten().tolist()
        assert len(ads) == len([key for key in want if key[0] == i])
        bidders += len(ads)
    assert bidders > 3
    regrets = sorted(v[1] for v in want.values())
    assert np.allclose(sorted(got.regret.grid[got.regret.bidders].tolist()), regrets, atol=1e-4)
    utilities = sorted(v[0] for v in want.values())
    assert np.allclose(sorted(got.regret.utility[got.regret.bidders].tolist()), utilities, atol=1e-4)
    assert np.array_equal(engine.catalog.bids, world.bids.astype(np.float32))  # the engine's catalog is untouched


def test_redecode_regret_is_a_nonnegative_lower_bound(trained):
    engine, world = trained
    requests = [world.request(int(u)) for u in world.users("test")[3:5]]
    for rule, result in redecode_rules(engine, requests, engine.default_config, gammas=(0.4, 1.0, 1.8)).items():
        report = result.regret
        assert torch.all(report.grid >= 0) and torch.all(report.grid[~report.bidders] == 0), rule
        assert np.isfinite(report.psi("grid")) and result.regret_per_surplus() >= 0


def test_cascade_fills_ad_slots_by_score_and_prices_by_gsp(trained):
    engine, world = trained
    users = world.users("test")[:12]
    ad_slots = [[0, 3], [1], [], [2, 4, 5]] * 3
    out = cascade_slates(engine, world, users, ad_slots, num_slots=6, candidates=8, ascent_steps=0)
    for r, user in enumerate(users):
        ads = world.is_ad[np.maximum(out.pois[r], 0)] & (out.pois[r] >= 0)
        assert set(np.flatnonzero(ads)) <= set(ad_slots[r])
        organic = [p for p in out.pois[r] if p >= 0 and not world.is_ad[p]]
        assert organic == list(world.organic_lists[int(user)][: len(organic)])  # given order
        assert np.all(out.payments[r][~ads] == 0)
        assert np.all(out.payments[r][ads] <= world.bids[out.pois[r][ads]] + 1e-12)
        # GSP: ads fill the ad slots by pCTR x bid; each pays the next candidate's score over its pCTR
        valid = out.candidates[r] >= 0
        score = np.sort(np.where(valid, out.pctr[r] * world.bids[np.maximum(out.candidates[r], 0)], 0.0))[::-1]
        for rank, k in enumerate(k for k in sorted(ad_slots[r]) if ads[k]):
            j = list(out.candidates[r]).index(out.pois[r, k])
            assert out.pctr[r, j] * world.bids[out.pois[r, k]] == pytest.approx(score[rank])
            assert out.payments[r, k] * out.pctr[r, j] == pytest.approx(min(score[rank + 1], score[rank]))
    assert torch.all(out.regret.grid >= 0)
