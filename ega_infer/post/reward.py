"""Reward-model scoring of the candidate lists (EGA-V2 Eq. 18-20): per slot pCTR of the POI,
pCTR of the creative and pCVR, each depending on the slot's neighbours and position."""

from __future__ import annotations

import torch

from ..auction.lists import CandidateLists
from ..catalog.device import DeviceCatalog
from ..model.reward import RewardModel

__all__ = ["score_lists"]


@torch.no_grad()
def score_lists(reward: RewardModel, lists: CandidateLists, catalog: DeviceCatalog) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs [N, L, K, 3], slot_repr [N, L, K, d_r])`` of ``lists`` (its ``items``,
    ``poi_codes``, ``is_ad`` and ``creative_rows``); empty slots get probabilities 0."""
    n, num_lists, k = lists.items.shape
    filled = lists.items >= 0
    creative_codes = catalog.creative_codes[lists.creative_rows]  # row -1: the all -1 "no creative" row
    probs, slot_repr = reward(
        lists.poi_codes.reshape(n * num_lists, k, -1),
        creative_codes.reshape(n * num_lists, k, -1),
        lists.is_ad.reshape(n * num_lists, k),
        filled.reshape(n * num_lists, k),
    )
    probs = probs.reshape(n, num_lists, k, -1) * filled[..., None]
    return probs, slot_repr.reshape(n, num_lists, k, -1)
