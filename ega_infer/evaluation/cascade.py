"""The cascade baseline of EGA-V2's comparison: retrieve, rank, then auction.

Per request: retrieve the ``candidates`` most popular ads (training histories) among the
categories of the user's history; predict each one's CTR with the engine's reward model (the ad
alone in the top slot, no creative); rank by pCTR x bid and fill the request's ad slots in rank
order, organic items in their given order elsewhere; price by GSP. The auction assumes the
separable click model GSP is built on: quality = pCTR, position discount = the world's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..auction import RegretReport, ex_post_regret, position_auction
from ..engine import Engine
from ..world import AdWorld

__all__ = ["CascadeSlates", "cascade_slates"]


@dataclass
class CascadeSlates:
    """Slates ``[R, K]``: world POI rows (-1 empty), creatives (all -1) and per-click payments;
    the retrieved candidates ``[R, M]`` (POI rows, -1 pad) with their pCTR, and the GSP
    auction's regret report over them."""

    pois: np.ndarray
    creatives: np.ndarray
    payments: np.ndarray
    candidates: np.ndarray
    pctr: np.ndarray
    regret: RegretReport


@torch.no_grad()
def _single_slot_pctr(engine: Engine, world: AdWorld, pois: np.ndarray) -> np.ndarray:
    codes = torch.as_tensor(world.poi_codes[pois.reshape(-1)], device=engine.device)[:, None]
    n = codes.shape[0]
    creative = torch.full((n, 1, len(world.model_config.creative_codebook_sizes)), -1, device=engine.device)
    ones = torch.ones(n, 1, dtype=torch.bool, device=engine.device)
    probs, _ = engine.model.reward(codes, creative, ones, ones)
    return probs[:, 0, 0].double().cpu().numpy().reshape(pois.shape)


def cascade_slates(engine: Engine, world: AdWorld, users: np.ndarray, ad_slots: list[list[int]],
                   num_slots: int, candidates: int = 20, ascent_steps: int = 30) -> CascadeSlates:
    """``ad_slots[r]``: the slots of request r that carry ads (same ad load as the slate it is
    compared with)."""
    popularity = world.popularity()
    ads = np.flatnonzero(world.is_ad)
    ads = ads[np.argsort(-popularity[ads], kind="stable")]
    pool = np.full((len(users), candidates), -1)
    for r, user in enumerate(users):
        interests = np.unique(world.poi_category[world.histories[int(user)][0]])
        found = ads[np.isin(world.poi_category[ads], interests)][:candidates]
        pool[r, : len(found)] = found
    valid = pool >= 0
    pctr = np.where(valid, _single_slot_pctr(engine, world, np.maximum(pool, 0)), 1.0)
    bids = torch.as_tensor(np.where(valid, world.bids[np.maximum(pool, 0)], 0.0))
    quality = torch.as_tensor(pctr)
    discount = world.position_bias(num_slots)
    slot_ctr = torch.zeros(len(users), num_slots, dtype=torch.float64)
    for r, slots in enumerate(ad_slots):
        slot_ctr[r, : len(slots)] = torch.as_tensor(discount[sorted(slots)])

    def mechanism(profiles: torch.Tensor):
        b = profiles.shape[0]
        out = position_auction(profiles.flatten(0, 1), slot_ctr.repeat(b, 1), quality.repeat(b, 1), "gsp")
        alive = out.slot >= 0
        return torch.where(alive, out.price, 0.0).reshape(profiles.shape), out.click_prob.reshape(profiles.shape)

    outcome = position_auction(bids, slot_ctr, quality, "gsp")
    with torch.enable_grad():
        regret = ex_post_regret(mechanism, bids, torch.as_tensor(valid), ascent_steps=ascent_steps)

    pois = np.full((len(users), num_slots), -1)
    payments = np.zeros((len(users), num_slots))
    slot, price = outcome.slot.numpy(), outcome.price.numpy()
    for r, user in enumerate(users):
        taken = sorted(ad_slots[r])
        for bidder in np.flatnonzero((slot[r] >= 0) & (slot[r] < len(taken))):
            pois[r, taken[slot[r, bidder]]] = pool[r, bidder]
            payments[r, taken[slot[r, bidder]]] = price[r, bidder]
        organic = iter(world.organic_lists[int(user)])
        for k in range(num_slots):
            if pois[r, k] < 0:
                pois[r, k] = next(organic, -1)
    return CascadeSlates(pois, np.full_like(pois, -1), payments, pool, np.where(valid, pctr, 0.0), regret)
