"""Quality figures on the synthetic world: does the engine find what users want, and what do
its slates earn under the world's true click model?"""

from __future__ import annotations

import numpy as np

from ..decoding import DecodeConfig
from ..engine import Engine
from ..world import AdWorld

__all__ = ["interest_hit_rates", "slate_metrics", "judge_slates"]


def interest_hit_rates(engine: Engine, world: AdWorld, users: np.ndarray, k: int = 6, beams: int = 16) -> dict[str, float]:
    """Share of the top-``k`` recommended POIs that fall in the user's true interest categories:
    the engine (candidates mode, bidding off), a uniformly random catalog sample, and the
    ``k`` most popular POIs of the training histories."""
    config = DecodeConfig(mode="candidates", beams=(beams,), num_slots=k, alpha=0.0, beta=0.0, choose_creatives=False)
    slates = engine.generate([world.request(int(u)) for u in users], config)
    rows = np.full((len(users), k), -1)
    for i, slate in enumerate(slates):
        found = engine.catalog.index_of([s.item_id for s in slate.slots])  # the world's catalog: rows = POIs
        rows[i, : len(found)] = found
    rng = np.random.default_rng(0)
    random_rows = rng.integers(0, world.config.n_pois, (len(users), k))
    popular = np.argsort(-world.popularity(), kind="stable")[:k]
    return {
        "engine": float(world.interest_hit(users, rows).mean()),
        "random": float(world.interest_hit(users, random_rows).mean()),
        "popularity": float(world.interest_hit(users, np.broadcast_to(popular, (len(users), k))).mean()),
    }


def judge_slates(world: AdWorld, users: np.ndarray, pois: np.ndarray, creatives: np.ndarray,
                 payments: np.ndarray) -> dict[str, float]:
    """Slates ``pois [R, K]`` (world POI rows, -1 = empty) with ``creatives`` (-1 = none) and
    per-click ``payments`` judged by the world's true click model: ad share, mean CTR of the
    filled slots, and expected revenue per thousand requests (sum of payment x click prob)."""
    filled = pois >= 0
    safe = np.maximum(pois, 0)
    clicks = world.click_prob(users, safe, creatives) * filled
    return {
        "ad_share": float(world.is_ad[safe][filled].mean()) if filled.any() else 0.0,
        "ctr": float(clicks[filled].mean()) if filled.any() else 0.0,
        "revenue_per_mille": float(1000 * (clicks * payments * filled).sum() / max(len(users), 1)),
    }


def slate_metrics(world: AdWorld, engine: Engine, users: np.ndarray, slates) -> dict[str, float]:
    """``judge_slates`` for the engine's served ``Slate`` objects."""
    k = max((len(s.slots) for s in slates), default=0)
    pois = np.full((len(users), k), -1)
    creatives = np.full((len(users), k), -1)
    payments = np.zeros((len(users), k))
    for i, slate in enumerate(slates):
        for j, slot in enumerate(slate.slots):
            pois[i, j] = np.searchsorted(world.poi_ids, slot.item_id)
            creatives[i, j] = -1 if slot.creative_id is None else int(np.searchsorted(world.creative_ids, slot.creative_id))
            payments[i, j] = slot.payment
    return judge_slates(world, users, pois, creatives, payments)
