"""Training batches from the synthetic world: histories as encoder input, logged slates as
targets."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model.encoder import History
from ..request import PreparedRequest, collate, prepare_request
from ..world import AdWorld

__all__ = ["HistoryBank", "logged_slates", "cosine_schedule"]


class HistoryBank:
    """Every user's validated history, collated on demand into padded batches."""

    def __init__(self, world: AdWorld, users: np.ndarray) -> None:
        catalog = world.catalog()
        self.prepared: dict[int, PreparedRequest] = {
            int(u): prepare_request(world.request(int(u)), world.model_config, catalog, lists_mode=False) for u in users
        }

    def batch(self, users: np.ndarray, device: torch.device) -> History:
        history, _, _ = collate([self.prepared[int(u)] for u in users], device)
        return history


def logged_slates(
    world: AdWorld,
    users: np.ndarray,
    slots: int,
    rng: np.random.Generator,
    temperature: float = 0.5,
    ad_bias: float = -0.5,
):
    """Slates a relevance-driven behaviour policy showed. At each slot it samples a candidate
    ad among the unused ones (softmax of ``log relevance / temperature``), then shows it instead
    of the request's next organic item with probability
    ``sigmoid(log r_ad - log r_organic + ad_bias)`` (always when no organic item is left).

    Returns POI rows and creative rows ``[R, slots]`` (creatives drawn mostly by appeal).
    """
    ads = np.flatnonzero(world.is_ad)
    pois = np.zeros((len(users), slots), np.int64)
    for r, user in enumerate(users):
        organic = world.organic_lists[user]
        log_ad = np.log(world.relevance(np.full(len(ads), user), ads))
        log_organic = np.log(world.relevance(np.full(len(organic), user), organic))
        used = np.zeros(len(ads), dtype=bool)
        next_organic = 0
        for k in range(slots):
            ad = int(np.where(used, -np.inf, log_ad / temperature + rng.gumbel(size=len(ads))).argmax())
            show_ad = next_organic >= len(organic) or (
                rng.random() < 1 / (1 + np.exp(-(log_ad[ad] - log_organic[next_organic] + ad_bias)))
            )
            if show_ad:
                pois[r, k] = ads[ad]
                used[ad] = True
            else:
                pois[r, k] = organic[next_organic]
                next_organic += 1
    return pois, _appealing_creatives(world, pois, rng)


def _appealing_creatives(world: AdWorld, pois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each POI, one of its creatives drawn in proportion to appeal^4 (mostly the best)."""
    flat = pois.reshape(-1)
    starts = np.searchsorted(world.creative_poi, flat)
    ends = np.searchsorted(world.creative_poi, flat, side="right")
    out = np.empty(len(flat), np.int64)
    for j, (lo, hi) in enumerate(zip(starts, ends)):
        w = world.creative_appeal[lo:hi] ** 4
        out[j] = lo + rng.choice(hi - lo, p=w / w.sum())
    return out.reshape(pois.shape)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate decaying from its initial value to 0 over ``steps`` along a half cosine."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
