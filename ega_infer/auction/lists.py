"""The candidate lists of a batch, and GSP and VCG prices for the list the reward model picks.

``CandidateLists`` is the one container of the stages after decoding: decoding fills the lists
(items, their ad flags and bids, the decoder state each slot came from, the beams), the creative
stage ``creative_rows``, the reward model ``probs`` and ``slot_repr``, selection ``list_scores`` and
``winner``, pricing ``payment``. The list score (``welfare``) is defined once, here.

Selecting the list with the highest ``welfare = revenue * sum_ads bid * pCTR + (bid-free terms)``
among a fixed set of candidate lists is a maximal-in-range allocation, so Clarke payments over
that range are truthful for the selection stage:

* VCG: ``p_i * revenue * pCTR_i = max_L W_-i(L) - W_-i(L*)`` with ``W_-i`` the welfare without ad
  i's own term, ``L*`` the winner;
* GSP: the winner's ads ranked by ``bid * pCTR``; each pays the next ad's score over its own
  pCTR, the last one the best score of an ad that only other lists hold;
* Clarke against counterfactual decodes: ``p_i * revenue * pCTR_i = W*_-i - W_-i(L*)`` with
  ``W*_-i`` the best welfare of the lists decoded for the request without ad i (the whole
  engine re-run, not the same beams).

Both are capped at the bid. Shapes: lists ``[N, L, K]``, ``alive [N, L]``, ``winner [N]``; prices
of the winner's slots ``[N, K]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..decoding.config import ListScore

__all__ = ["CandidateLists", "list_gsp_prices", "list_vcg_prices", "clarke_prices", "selection_mechanism"]


@dataclass
class CandidateLists:
    """``N`` requests x ``L`` lists x ``K`` slots; ``None`` until the stage that fills it ran.

    Decoding: ``items`` catalog rows (-1 = empty slot), ``is_ad`` and ``bids`` of the placed
    items (False / 0 elsewhere), ``alive [N, L]``, ``log_alloc`` (log of each slot's bid-weighted
    allocation probability), ``poi_codes [.., C]`` and ``hidden [.., d]`` (the decoder state that
    emitted each slot, for the creative head), the raw beams ``beam_items [N, B, K]`` and
    ``beam_scores [N, B]`` (``-inf``: dead). Creatives: ``creative_rows`` (-1 = none). Reward
    model: ``probs [.., 3]`` (pCTR of the POI, pCTR of the creative, pCVR), ``slot_repr
    [.., d_r]``. Selection: ``list_scores [N, L]`` (``welfare()``), ``winner [N]``. Pricing:
    ``payment [N, K]`` per click for the winner's slots. ``weights`` is the list score.
    """

    items: torch.Tensor
    is_ad: torch.Tensor
    bids: torch.Tensor
    alive: torch.Tensor
    weights: ListScore = dataclasses.field(default_factory=ListScore)
    log_alloc: torch.Tensor | None = None
    poi_codes: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    beam_items: torch.Tensor | None = None
    beam_scores: torch.Tensor | None = None
    creative_rows: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    slot_repr: torch.Tensor | None = None
    list_scores: torch.Tensor | None = None
    winner: torch.Tensor | None = None
    payment: torch.Tensor | None = None

    @property
    def pctr(self) -> torch.Tensor:
        return self.probs[..., 0]

    def ad_value(self) -> torch.Tensor:
        """``bid * pCTR`` of each placed ad, 0 elsewhere."""
        return torch.where(self.is_ad, self.bids * self.pctr, 0.0)

    def welfare(self) -> torch.Tensor:
        """The list score ``[N, L]`` (``-inf`` for dead lists), in float64: a sum of up to K bids
        near float32's max stays finite, and Clarke prices are differences of near-equal
        welfares."""
        w = self.weights
        p = self.probs.double()
        value = torch.where(self.is_ad, self.bids.double() * p[..., 0], 0.0)
        score = (w.revenue * value.sum(-1) + w.ctr * p[..., 0].sum(-1) + w.creative_ctr * p[..., 1].sum(-1)
                 + w.cvr * p[..., 2].sum(-1))
        return torch.where(self.alive, score, float("-inf"))

    def select(self) -> CandidateLists:
        """Fill ``list_scores`` and ``winner`` (the best-scoring list of each request)."""
        self.list_scores = self.welfare()
        self.winner = self.list_scores.argmax(-1)
        return self

    def at(self, t: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
        """``t[n, winner[n]]`` for ``t [N, L, ...]``: one gather (no index tensor to build)."""
        index = winner.reshape(-1, 1, *([1] * (t.dim() - 2))).expand(-1, 1, *t.shape[2:])
        return t.gather(1, index).squeeze(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every filled tensor field by name (what a CUDA graph outputs, what a batch copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def take(self, rows: torch.Tensor) -> CandidateLists:
        """The lists of requests ``rows``."""
        return dataclasses.replace(self, **{name: t[rows] for name, t in self.tensors().items()})

    @classmethod
    def cat(cls, parts: list[CandidateLists]) -> CandidateLists:
        """The requests of ``parts`` (same L, K and weights) one after another."""
        fields = parts[0].tensors()
        return dataclasses.replace(parts[0], **{name: torch.cat([getattr(p, name) for p in parts]) for name in fields})


def list_vcg_prices(lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
    revenue = lists.weights.revenue
    value = revenue * torch.where(lists.is_ad, lists.bids.double() * lists.pctr.double(), 0.0)  # [N, L, K]
    welfare = lists.welfare()  # [N, L]
    won_items = lists.at(lists.items, winner)  # [N, K]
    won_ad = lists.at(lists.is_ad, winner)
    # own[n, l, k]: ad k of the winner's term inside list l (0 where list l does not hold it)
    same = (lists.items[:, :, :, None] == won_items[:, None, None, :]) & (won_items[:, None, None, :] >= 0)
    own = (value[..., None] * same).sum(2)  # [N, L, K]
    others = welfare[..., None] - own  # W_-k(L)
    best = others.max(1).values  # [N, K]
    chosen = lists.at(others, winner)
    pctr = lists.at(lists.pctr, winner).double()
    scale = (revenue * pctr).clamp(min=1e-12)
    bids = lists.at(lists.bids, winner)
    price = ((best - chosen).clamp(min=0) / scale).minimum(bids.double())
    return torch.where(won_ad, price, 0.0).to(bids.dtype)


def clarke_prices(lists: CandidateLists, winner: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """Per-click Clarke prices ``[N, K]`` of the winner's slots: ``without [N, K]`` float64 is the
    best welfare of the request decoded without each slot's ad (``-inf``: no live list; ignored
    at organic and empty slots). Never negative, never above the bid, 0 for organic items."""
    revenue = lists.weights.revenue
    pctr = lists.at(lists.pctr, winner).double()
    bids = lists.at(lists.bids, winner)
    won_ad = lists.at(lists.is_ad, winner)
    own = revenue * torch.where(won_ad, bids.double() * pctr, 0.0)
    others = lists.at(lists.welfare(), winner)[:, None] - own  # W_-i(L*)
    price = ((without - others).clamp(min=0) / (revenue * pctr).clamp(min=1e-12)).minimum(bids.double())
    return torch.where(won_ad, price, 0.0).to(bids.dtype)


def list_gsp_prices(lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
    won_items = lists.at(lists.items, winner)
    won_ad = lists.at(lists.is_ad, winner)
    ad_value = lists.ad_value()
    score = torch.where(won_ad, lists.at(ad_value, winner), float("-inf"))
    held = (lists.items[:, :, :, None] == won_items[:, None, None, :]).any(-1)  # [N, L, K]
    outside = torch.where(lists.is_ad & ~held & lists.alive[..., None], ad_value, 0.0)
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
    truthful_winner = lists.welfare().argmax(-1)
    bidder_items = lists.at(lists.items, truthful_winner)  # [N, K]
    holds = (lists.items[..., None] == bidder_items[:, None, None, :]) & (bidder_items[:, None, None, :] >= 0)  # [N,L,K,K]
    priced = ("items", "is_ad", "alive", "probs", "slot_repr", "log_alloc")

    def mechanism(bids: torch.Tensor):
        b = bids.shape[0]
        rewritten = torch.where(holds.any(-1), (holds * bids[:, :, None, None, :]).sum(-1), lists.bids)  # [B,N,L,K]

        def tile(t):
            return None if t is None else t.expand(b, *t.shape).flatten(0, 1)

        flat = CandidateLists(bids=rewritten.flatten(0, 1), weights=lists.weights,
                              **{name: tile(getattr(lists, name)) for name in priced})
        winner = flat.welfare().argmax(-1)
        price = pricing(flat, winner)  # [B*N, K] by the new winner's slots
        items = flat.at(flat.items, winner)
        ctr = flat.at(flat.pctr, winner)
        # bidder k -> its slot in the new winner (if any)
        match = items[:, None, :] == bidder_items.repeat(b, 1)[:, :, None]  # [B*N, K(bidder), K(slot)]
        bidder_price = (match * price[:, None, :]).sum(-1)
        bidder_ctr = (match * ctr[:, None, :]).sum(-1)
        return bidder_price.reshape(bids.shape), bidder_ctr.reshape(bids.shape)

    return mechanism
