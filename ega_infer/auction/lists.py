"""GSP and VCG prices for the list the reward model picks among the beam lists.

Selecting the list with the highest ``welfare = sum_ads bid * pCTR + base`` (``base`` is the
bid-free part of the list score) among a fixed set of candidate lists is a maximal-in-range
allocation, so Clarke payments over that range are truthful for the selection stage:

* VCG: ``p_i * pCTR_i = max_L W_-i(L) - W_-i(L*)`` with ``W_-i`` the welfare without ad i's own
  term, ``L*`` the winner;
* GSP: the winner's ads ranked by ``bid * pCTR``; each pays the next ad's score over its own
  pCTR, the last one the best score of an ad that only other lists hold.

Both are capped at the bid. Tensors: lists ``[N, L, K]`` (bids, pctr, is_ad, items with -1 for
an empty slot), ``alive [N, L]``, ``base [N, L]``, ``winner [N]``; prices of the winner's slots
``[N, K]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CandidateLists", "list_gsp_prices", "list_vcg_prices", "selection_mechanism"]


@dataclass
class CandidateLists:
    """``revenue_weight`` scales the bid term of the welfare (the list score's revenue weight);
    ``slot_repr`` and ``log_alloc`` are carried along for pricing by the payment network."""

    bids: torch.Tensor
    pctr: torch.Tensor
    is_ad: torch.Tensor
    items: torch.Tensor
    alive: torch.Tensor
    base: torch.Tensor
    revenue_weight: float = 1.0
    slot_repr: torch.Tensor | None = None
    log_alloc: torch.Tensor | None = None

    def ad_value(self) -> torch.Tensor:
        return torch.where(self.is_ad, self.bids * self.pctr, 0.0)

    def welfare(self) -> torch.Tensor:
        return torch.where(self.alive, self.revenue_weight * self.ad_value().sum(-1) + self.base, float("-inf"))

    def winner(self) -> torch.Tensor:
        return self.welfare().argmax(-1)

    def at(self, t: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
        """``t[n, winner[n]]`` for ``t [N, L, ...]``: one gather (no index tensor to build)."""
        index = winner.reshape(-1, 1, *([1] * (t.dim() - 2))).expand(-1, 1, *t.shape[2:])
        return t.gather(1, index).squeeze(1)

    def take(self, rows: torch.Tensor) -> CandidateLists:
        """The lists of requests ``rows``."""
        def pick(t):
            return None if t is None else t[rows]

        return CandidateLists(
            pick(self.bids), pick(self.pctr), pick(self.is_ad), pick(self.items), pick(self.alive),
            pick(self.base), self.revenue_weight, pick(self.slot_repr), pick(self.log_alloc),
        )


def list_vcg_prices(lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
    value = lists.revenue_weight * lists.ad_value()  # [N, L, K]
    welfare = lists.welfare()  # [N, L]
    won_items = lists.at(lists.items, winner)  # [N, K]
    won_ad = lists.at(lists.is_ad, winner)
    # own[n, l, k]: ad k of the winner's term inside list l (0 where list l does not hold it)
    same = (lists.items[:, :, :, None] == won_items[:, None, None, :]) & (won_items[:, None, None, :] >= 0)
    own = (value[..., None] * same).sum(2)  # [N, L, K]
    others = welfare[..., None] - own  # W_-k(L)
    best = others.max(1).values  # [N, K]
    chosen = lists.at(others, winner)
    pctr = lists.at(lists.pctr, winner)
    scale = (lists.revenue_weight * pctr).clamp(min=1e-12)
    price = ((best - chosen).clamp(min=0) / scale).minimum(lists.at(lists.bids, winner))
    return torch.where(won_ad, price, 0.0)


def list_gsp_prices(lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
    n, _, k = lists.items.shape
    won_items = lists.at(lists.items, winner)
    won_ad = lists.at(lists.is_ad, winner)
    score = torch.where(won_ad, lists.at(lists.ad_value(), winner), float("-inf"))
    held = (lists.items[:, :, :, None] == won_items[:, None, None, :]).any(-1)  # [N, L, K]
    outside = torch.where(lists.is_ad & ~held & lists.alive[..., None], lists.ad_value(), 0.0)
    runner_up = outside.flatten(1).max(1).values  # [N]
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    ranked = score.gather(1, order)
    nxt = torch.cat([ranked[:, 1:], runner_up[:, None]], dim=1)
    nxt = torch.where(nxt > float("-inf"), nxt, runner_up[:, None])  # past the last ad: the runner-up
    next_score = torch.empty_like(nxt).scatter_(1, order, nxt)
    pctr = lists.at(lists.pctr, winner)
    price = (next_score / pctr.clamp(min=1e-12)).minimum(lists.at(lists.bids, winner))
    return torch.where(won_ad, price, 0.0)


def selection_mechanism(lists: CandidateLists, pricing):
    """The selection stage as a mechanism over the truthful winner's ads (``[B, N, K]`` bids of
    those K bidders): each profile rewrites the bidders' bids in every list holding them,
    re-selects the winner and prices it with ``pricing(lists, winner)``. A bidder whose item is
    not in the new winner gets no click."""
    truthful_winner = lists.winner()
    bidder_items = lists.at(lists.items, truthful_winner)  # [N, K]
    holds = (lists.items[..., None] == bidder_items[:, None, None, :]) & (bidder_items[:, None, None, :] >= 0)  # [N,L,K,K]

    def mechanism(bids: torch.Tensor):
        b = bids.shape[0]
        rewritten = torch.where(holds.any(-1), (holds * bids[:, :, None, None, :]).sum(-1), lists.bids)  # [B,N,L,K]
        def tile(t):
            return None if t is None else t.expand(b, *t.shape).flatten(0, 1)

        flat = CandidateLists(
            rewritten.flatten(0, 1), tile(lists.pctr), tile(lists.is_ad), tile(lists.items), tile(lists.alive),
            tile(lists.base), lists.revenue_weight, tile(lists.slot_repr), tile(lists.log_alloc),
        )
        winner = flat.winner()
        price = pricing(flat, winner)  # [B*N, K] by the new winner's slots
        items = flat.at(flat.items, winner)
        ctr = flat.at(flat.pctr, winner)
        # bidder k -> its slot in the new winner (if any)
        match = items[:, None, :] == bidder_items.repeat(b, 1)[:, :, None]  # [B*N, K(bidder), K(slot)]
        bidder_price = (match * price[:, None, :]).sum(-1)
        bidder_ctr = (match * ctr[:, None, :]).sum(-1)
        return bidder_price.reshape(bids.shape), bidder_ctr.reshape(bids.shape)

    return mechanism
