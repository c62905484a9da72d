"""Pricing rules as a config choice: Clarke prices against counterfactual decodes equal the
engine served again on ``catalog.without_items``, every rule is individually rational, the
maximal-in-range rule has zero full re-decode regret on random worlds, and bad configs get
field-named errors."""

import dataclasses

import numpy as np
import pytest
import torch

from ega_infer import DecodeConfig, Engine
from ega_infer.decoding import PRICING
from ega_infer.evaluation import redecode_rules
from ega_infer.exceptions import ConfigError
from ega_infer.world import AdWorld, WorldConfig


@pytest.fixture(scope="module")
def served():
    engine = Engine.from_pretrained("tiny")
    world = AdWorld(WorldConfig(seed=0), engine.config)
    engine.set_catalog(world.catalog())
    requests = [world.request(int(u)) for u in world.users("test")[:6]]
    return engine, world, requests


def test_clarke_prices_equal_serving_without_each_winning_ad(served):
    engine, _, requests = served
    config = dataclasses.replace(engine.default_config, pricing="clarke")
    lists = engine.serve_batch(requests, config)
    catalog = engine.catalog
    rows = torch.arange(len(requests))
    won = lists.items[rows, lists.winner]
    checked = 0
    for i, request in enumerate(requests):
        welfare = float(lists.list_scores[i, lists.winner[i]])
        for k, row in enumerate(won[i].tolist()):
            if row < 0 or not catalog.is_ad[row]:
                assert float(lists.payment[i, k]) == 0.0
                continue
            bid = float(lists.bids[i, lists.winner[i], k])
            pctr = float(lists.probs[i, lists.winner[i], k, 0])
            without = engine.serve_batch([request], config, catalog=catalog.without_items([catalog.item_ids[row]]))
            best = float(without.list_scores[0].max())
            want = min(max(best - (welfare - bid * pctr), 0.0) / max(pctr, 1e-12), bid)
            assert float(lists.payment[i, k]) == pytest.approx(want, rel=1e-4, abs=1e-5)
            checked += 1
    assert checked >= 6


def test_clarke_counterfactuals_keep_the_requests_exclusions(served):
    engine, world, requests = served
    config = dataclasses.replace(engine.default_config, pricing="clarke")
    catalog = engine.catalog
    ads = catalog.item_ids[catalog.is_ad][:40]
    request = dataclasses.replace(requests[0], exclude_items=list(ads))
    got = engine.serve_batch([request], config)
    want = engine.serve_batch([requests[0]], config, catalog=catalog.without_items(list(ads)))
    torch.testing.assert_close(got.payment, want.payment, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pricing", PRICING)
def test_every_rule_is_individually_rational(served, pricing):
    engine, _, requests = served
    config = dataclasses.replace(engine.default_config, pricing=pricing,
                                 alpha=0.0 if pricing == "mir" else engine.default_config.alpha)
    lists = engine.serve_batch(requests, config)
    rows = torch.arange(len(requests))
    bids = lists.bids[rows, lists.winner]
    is_ad = lists.is_ad[rows, lists.winner]
    assert torch.all(lists.payment >= 0) and torch.all(lists.payment <= bids + 1e-6)
    assert torch.all(lists.payment[~is_ad] == 0)
    for slate in engine.generate(requests, config):
        for slot in slate.slots:
            assert 0 <= slot.payment <= slot.bid + 1e-6 and (slot.is_ad or slot.payment == 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_maximal_in_range_has_zero_full_redecode_regret_on_random_worlds(seed):
    engine = Engine.from_pretrained("tiny")
    world = AdWorld(WorldConfig(seed=seed), engine.config)
    engine.set_catalog(world.catalog())
    requests = [world.request(int(u)) for u in world.users("test")[:5]]
    config = DecodeConfig(pricing="mir", alpha=0.0, beams=(8,), num_slots=5, max_ads=2)
    result = redecode_rules(engine, requests, config, ("mir",))["mir"]
    assert result.regret.bidders.sum() > 5
    assert float(result.regret.grid.max()) <= 1e-6
    # the same world priced by the payment network at alpha 1.2 is not truthful under re-decode
    network = redecode_rules(engine, requests, dataclasses.replace(config, pricing="network", alpha=1.2),
                             ("network",))["network"]
    assert float(network.regret.grid.max()) > 1e-3


@pytest.mark.parametrize(("changes", "field"), [
    ({"pricing": "second-price"}, "pricing"), ({"pricing": 3}, "pricing"), ({"pricing": None}, "pricing"),
    ({"pricing": "mir", "alpha": 1.2}, "alpha"),
])
def test_bad_pricing_configs_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        DecodeConfig(**changes)


def test_exclusions_through_the_engine_equal_the_smaller_catalog(served):
    engine, world, requests = served
    catalog = engine.catalog
    rng = np.random.default_rng(0)
    for request in requests[:3]:
        seen = list(rng.choice(catalog.item_ids, 25, replace=False)) + list(request.organic_items[:2])
        excluded = dataclasses.replace(request, exclude_items=seen + seen[:3] + [10**12])  # repeats, unknown id
        got = engine.generate([excluded])[0]
        want = engine.generate([dataclasses.replace(request, organic_items=[o for o in request.organic_items
                                                                            if o not in set(seen)])],
                               catalog=catalog.without_items(seen))[0]
        assert [s.item_id for s in got.slots] == [s.item_id for s in want.slots]
        assert not {s.item_id for s in got.slots} & set(seen)
        for a, b in zip(got.slots, want.slots):
            assert a.payment == pytest.approx(b.payment, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(("value", "field"), [
    ("abc", "exclude_items"), ([1.5], "exclude_items"), ([[1, 2]], "exclude_items"), ({"a": 1}, "exclude_items"),
    (list(range(2000)), "exclude_items"), ([True], "exclude_items"),
])
def test_bad_exclusion_lists_name_the_field(served, value, field):
    engine, _, requests = served
    bad = dataclasses.replace(requests[0], exclude_items=value)
    slates = engine.generate([requests[1], bad, requests[2]])
    assert slates[1].error and field in slates[1].error
    assert not slates[0].error and not slates[2].error
    assert [s.item_id for s in slates[0].slots] == [s.item_id for s in engine.generate([requests[1]])[0].slots]
