"""Reward-model scoring of candidate lists and the configurable list score that picks the
winner (EGA-V2 Eq. 24)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoding.config import ListScore
from ..model.reward import RewardModel

__all__ = ["ScoredLists", "score_lists"]


@dataclass
class ScoredLists:
    probs: torch.Tensor  # [N, L, K, 3]: pctr_poi, pctr_creative, pcvr
    slot_repr: torch.Tensor  # [N, L, K, d_reward]
    list_scores: torch.Tensor  # [N, L], -inf for lists that are not alive
    winner: torch.Tensor  # [N] index of the best list of each request


@torch.no_grad()
def score_lists(
    reward: RewardModel,
    poi_codes: torch.Tensor,
    creative_codes: torch.Tensor,
    items: torch.Tensor,
    is_ad: torch.Tensor,
    bids: torch.Tensor,
    alive: torch.Tensor,
    weights: ListScore,
) -> ScoredLists:
    """poi_codes [N, L, K, C], creative_codes [N, L, K, Cc] (-1 none), items [N, L, K] (-1
    empty), is_ad and bids [N, L, K] of the placed items, alive [N, L]."""
    n, lists, k = items.shape
    filled = items >= 0
    probs, slot_repr = reward(
        poi_codes.reshape(n * lists, k, -1),
        creative_codes.reshape(n * lists, k, -1),
        is_ad.reshape(n * lists, k),
        filled.reshape(n * lists, k),
    )
    probs = probs.reshape(n, lists, k, -1) * filled[..., None]
    slot_repr = slot_repr.reshape(n, lists, k, -1)
    pctr, pctr_creative, pcvr = probs.unbind(-1)
    ad_value = torch.where(is_ad, bids * pctr, torch.zeros_like(pctr))
    score = (
        weights.revenue * ad_value.sum(-1)
        + weights.ctr * pctr.sum(-1)
        + weights.creative_ctr * pctr_creative.sum(-1)
        + weights.cvr * pcvr.sum(-1)
    )
    score = torch.where(alive, score, float("-inf"))
    return ScoredLists(probs, slot_repr, score, score.argmax(-1))
