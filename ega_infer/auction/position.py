"""Position auctions with quality scores: the GSP and VCG references.

n bidders with per-click bids ``b`` and quality scores ``q`` (a bidder's click probability is
``alpha_k * q`` in slot k) compete for K slots with position click-through rates
``alpha_1 >= ... >= alpha_K``. Bidders are ranked by ``b * q`` (ties by index); the k-th ranked
bidder gets slot k. Per-click prices, with ``s_(j) = b_(j) q_(j)``, ``alpha_(K+1) = 0`` and
``s_(n+1) = reserve * q``:

* GSP: ``p_(k) = s_(k+1) / q_(k)``  (the lowest bid that keeps rank k)
* VCG: ``p_(k) = sum_{j=k..K} (alpha_j - alpha_(j+1)) s_(j+1) / (alpha_k q_(k))``
  (the externality the bidder imposes on the others; the lowest locally envy-free GSP equilibrium)

Everything is batched over a leading request dimension and differentiable in the bids
almost everywhere, so the regret evaluator can run gradient ascent on misreports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["PositionOutcome", "position_auction"]


@dataclass
class PositionOutcome:
    """slot [R, n] (-1 = no slot), price [R, n] per click, click_prob [R, n] = alpha_slot * q."""

    slot: torch.Tensor
    price: torch.Tensor
    click_prob: torch.Tensor

    @property
    def expected_payment(self) -> torch.Tensor:
        return self.price * self.click_prob


def position_auction(
    bids: torch.Tensor,
    slot_ctr: torch.Tensor,
    quality: torch.Tensor | None = None,
    mechanism: Literal["gsp", "vcg"] = "gsp",
) -> PositionOutcome:
    """Allocate K slots to n bidders by ``bid * quality`` and price them by GSP or VCG.

    bids [R, n] >= 0; slot_ctr [K] or [R, K] non-increasing; quality [R, n] > 0 (default 1).
    Bidders with a zero bid are never allocated.
    """
    r, n = bids.shape
    quality = torch.ones_like(bids) if quality is None else quality
    alpha = slot_ctr.expand(r, -1) if slot_ctr.dim() == 1 else slot_ctr
    k = alpha.shape[1]
    score = bids * quality
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # rank -> bidder
    ranked_score = score.gather(1, order)
    ranked_q = quality.gather(1, order)
    zeros = ranked_score.new_zeros(r, 1)
    next_score = torch.cat([ranked_score[:, 1:], zeros], dim=1)  # s_(j+1), 0 past the last bidder
    positions = min(k, n)
    alpha_ext = torch.cat([alpha[:, :positions], zeros], dim=1)  # alpha_1..alpha_P, 0
    won = (torch.arange(n, device=bids.device) < positions)[None, :] & (ranked_score > 0)

    if mechanism == "gsp":
        ranked_price = next_score / ranked_q
    elif mechanism == "vcg":
        drop = alpha_ext[:, :-1] - alpha_ext[:, 1:]  # alpha_j - alpha_(j+1), j < P
        terms = drop * next_score[:, :positions]
        tail = terms.flip(1).cumsum(1).flip(1)  # sum over j >= k
        total = torch.cat([tail, ranked_score.new_zeros(r, n - positions)], dim=1)
        denom = torch.cat([alpha[:, :positions], ranked_score.new_ones(r, n - positions)], dim=1) * ranked_q
        ranked_price = total / denom
    else:
        raise ValueError(f"mechanism={mechanism!r}; expected 'gsp' or 'vcg'")

    ranked_slot = torch.where(won, torch.arange(n, device=bids.device)[None, :].expand(r, -1), -1)
    ranked_ctr = torch.where(won, torch.cat([alpha[:, :positions], zeros.expand(r, n - positions)], 1) * ranked_q, 0.0)
    ranked_price = torch.where(won, torch.minimum(ranked_price, ranked_score / ranked_q), 0.0)
    inverse = torch.argsort(order, dim=1)
    return PositionOutcome(
        ranked_slot.gather(1, inverse), ranked_price.gather(1, inverse), ranked_ctr.gather(1, inverse)
    )
