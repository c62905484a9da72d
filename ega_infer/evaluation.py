"""Quality figures of an engine on the synthetic world: does it find what users want?"""

from __future__ import annotations

import dataclasses

import numpy as np

from .decoding import DecodeConfig
from .engine import Engine
from .world import AdWorld

__all__ = ["interest_hit_rates", "slate_metrics", "incentive_report"]


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


def slate_metrics(world: AdWorld, engine: Engine, users: np.ndarray, slates) -> dict[str, float]:
    """Served slates judged by the world's true click model: ad share, expected CTR, and
    expected revenue per thousand requests (sum over ads of payment x true click probability)."""
    k = max((len(s.slots) for s in slates), default=0)
    pois = np.full((len(users), k), -1)
    creatives = np.full((len(users), k), -1)
    payments = np.zeros((len(users), k))
    for i, slate in enumerate(slates):
        for j, slot in enumerate(slate.slots):
            pois[i, j] = engine.catalog.index_of([slot.item_id])[0]
            creatives[i, j] = -1 if slot.creative_id is None else int(np.searchsorted(world.creative_ids, slot.creative_id))
            payments[i, j] = slot.payment
    filled = pois >= 0
    clicks = world.click_prob(users, np.maximum(pois, 0), creatives) * filled
    return {
        "ad_share": float(world.is_ad[np.maximum(pois, 0)][filled].mean()) if filled.any() else 0.0,
        "ctr": float(clicks[filled].mean()) if filled.any() else 0.0,
        "revenue_per_mille": float(1000 * (clicks * payments).sum() / max(len(users), 1)),
    }


def incentive_report(engine: Engine, requests, config: DecodeConfig | None = None, ascent_steps: int = 30) -> dict[str, dict[str, float]]:
    """Payment network, GSP and VCG on the same served slates: expected revenue per request
    (sum over ads of price x pCTR) and EGA-V2's Psi on the EGA gamma grid and after gradient
    ascent. Misreports re-run the list selection among the beam lists and the pricing (the
    beams themselves are held fixed)."""
    import torch

    from .auction import ex_post_regret, list_gsp_prices, list_vcg_prices, selection_mechanism
    from .post import network_pricing

    config = config or engine.default_config
    lists = engine.serve_batch(requests, config).candidate_lists(config.list_score)
    # float64: Clarke payments are differences of near-equal welfares
    lists = dataclasses.replace(lists, bids=lists.bids.double(), pctr=lists.pctr.double(), base=lists.base.double())
    network = network_pricing(engine.model.payment)

    winner = lists.winner()
    values = lists.at(lists.bids, winner)
    bidders = lists.at(lists.is_ad, winner)
    report = {}
    for name, pricing in (("payment network", network), ("GSP", list_gsp_prices), ("VCG", list_vcg_prices)):
        with torch.enable_grad():
            regret = ex_post_regret(selection_mechanism(lists, pricing), values, bidders, ascent_steps=ascent_steps)
        with torch.no_grad():
            price = pricing(lists, winner)
        report[name] = {
            "revenue": float((price * lists.at(lists.pctr, winner)).sum(-1).mean()),
            "psi_grid": regret.psi("grid"),
            "psi": regret.psi("ascent"),
        }
    return report
