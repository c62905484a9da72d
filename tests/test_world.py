"""The synthetic ad world: deterministic for a seed, meaningful semantic IDs, a click model in
which position and neighbours matter, and a behaviour policy that respects the slate rules."""

import numpy as np
import pytest

from ega_infer.presets import get_preset
from ega_infer.training.batches import logged_slates
from ega_infer.world import AdWorld, WorldConfig, feedback, residual_kmeans

TINY = get_preset("tiny").model
SMALL = WorldConfig(n_pois=300, n_users=120, n_categories=6)


@pytest.fixture(scope="module")
def world():
    return AdWorld(SMALL, TINY)


def test_deterministic_for_a_seed(world):
    again = AdWorld(SMALL, TINY)
    for name in ("poi_codes", "creative_codes", "poi_category", "is_ad", "values", "user_interest", "next_items"):
        np.testing.assert_array_equal(getattr(world, name), getattr(again, name))
    for a, b in zip(world.histories, again.histories):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    other = AdWorld(WorldConfig(seed=1, n_pois=300, n_users=120, n_categories=6), TINY)
    assert not np.array_equal(world.poi_codes, other.poi_codes)


def test_semantic_ids_carry_meaning(world):
    codes = world.poi_codes
    assert codes.shape == (300, 3) and codes.min() >= 0 and (codes < 32).all()
    # the first level separates categories: each first code is (nearly) one category
    purity = [np.bincount(world.poi_category[codes[:, 0] == c]).max() / (codes[:, 0] == c).sum()
              for c in np.unique(codes[:, 0])]
    assert np.mean(purity) > 0.9
    # residual quantisation is deterministic and reproduces itself
    np.testing.assert_array_equal(residual_kmeans(world.poi_features, (32, 32, 32), seed=SMALL.seed), codes)


def test_near_duplicates_collide():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 4))
    features = np.concatenate([base, base + 1e-6])  # each item twice
    codes = residual_kmeans(features, (8, 8), seed=0)
    np.testing.assert_array_equal(codes[:50], codes[50:])


def test_click_model_position_and_neighbours(world):
    users = world.users("train")[:20]
    organic = np.stack([world.organic_lists[u][:1] for u in users])
    same = np.repeat(organic, 3, axis=1)  # the same item in slots 0..2
    p = world.click_prob(users, same, np.full(same.shape, -1))
    # position: later slots are clicked less; neighbours of the same category: less again
    alone = world.relevance(users, organic[:, 0]) * (1 / (1 + 0.3 * 2))
    assert np.all(p[:, 2] < alone + 1e-12)
    assert np.all(p[:, 0] > p[:, 1])


def test_feedback_is_consistent(world):
    users = world.users("train")[:50]
    pois, creatives = logged_slates(world, users, 6, np.random.default_rng(0))
    click, creative_click, conversion = feedback(world, users, pois, creatives, np.random.default_rng(1))
    assert not (creative_click & ~click).any() and not (conversion & ~click).any()


def test_logged_slates_follow_the_rules(world):
    users = world.users("train")[:40]
    pois, _ = logged_slates(world, users, 6, np.random.default_rng(2))
    for user, slate in zip(users, pois):
        assert len(set(slate.tolist())) == 6
        organic = [p for p in slate if not world.is_ad[p]]
        assert organic == list(world.organic_lists[user][: len(organic)])
    assert 0.1 < world.is_ad[pois].mean() < 0.9


def test_requests_and_catalog_line_up(world):
    catalog = world.catalog()
    request = world.request(int(world.users("test")[0]))
    rows = catalog.index_of(request.organic_items)
    assert (rows >= 0).all() and not catalog.is_ad[rows].any()
    assert len(request.history_poi_codes) >= SMALL.min_history
