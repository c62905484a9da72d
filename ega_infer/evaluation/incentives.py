"""Incentives of the served auction: the same slates priced by the payment network, GSP and VCG,
and each mechanism's ex-post regret (EGA-V2's Psi).

Two ways to re-run the mechanism on a misreport:

* ``incentive_report``: the beam lists are held fixed; the bid rewrites the bidder's bid in
  every list that holds it, the reward model's selection and the pricing run again. Batched:
  grid and gradient ascent over all requests and ads at once.
* ``redecode_regret``: the whole engine again, on a catalog where the ad's bid is scaled by
  gamma, so token-level bidding moves the beams too. One decode per (request, ad, gamma): a
  small sample.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import torch

from ..auction import EGA_GAMMAS, RegretReport, ex_post_regret, list_gsp_prices, list_vcg_prices, selection_mechanism
from ..auction.lists import CandidateLists
from ..decoding import DecodeConfig
from ..engine import Engine
from ..post import network_prices
from ..request import Request

__all__ = ["incentive_report", "priced_three_ways", "redecode_regret"]

Pricing = Callable[[CandidateLists, torch.Tensor], torch.Tensor]


def priced_three_ways(engine: Engine, lists: CandidateLists,
                      ascent_steps: int = 30) -> dict[str, tuple[torch.Tensor, RegretReport]]:
    """Per mechanism (payment network, GSP, VCG): per-click prices of the winning lists
    ``[N, K]`` and the regret report of the selection-stage mechanism."""
    # float64: Clarke payments are differences of near-equal welfares
    lists = dataclasses.replace(lists, bids=lists.bids.double(), probs=lists.probs.double())
    winner = lists.winner
    values = lists.at(lists.bids, winner)
    bidders = lists.at(lists.is_ad, winner)
    mechanisms: dict[str, Pricing] = {
        "payment network": functools.partial(network_prices, engine.model.payment), "GSP": list_gsp_prices,
        "VCG": list_vcg_prices,
    }
    out = {}
    for name, pricing in mechanisms.items():
        with torch.enable_grad():
            regret = ex_post_regret(selection_mechanism(lists, pricing), values, bidders, ascent_steps=ascent_steps)
        with torch.no_grad():
            out[name] = (pricing(lists, winner), regret)
    return out


def incentive_report(engine: Engine, requests: Sequence[Request], config: DecodeConfig | None = None,
                     ascent_steps: int = 30) -> dict[str, dict[str, float]]:
    """Payment network, GSP and VCG on the same served slates: expected revenue per request
    (sum over ads of price x pCTR) and Psi on the EGA gamma grid and after gradient ascent."""
    config = config or engine.default_config
    batch = engine.serve_batch(requests, config)
    rows = torch.arange(len(requests))
    pctr = batch.probs[rows, batch.winner, :, 0].double()
    return {
        name: {"revenue": float((price * pctr).sum(-1).mean()), "psi_grid": regret.psi("grid"), "psi": regret.psi("ascent")}
        for name, (price, regret) in priced_three_ways(engine, batch, ascent_steps).items()
    }


def redecode_regret(engine: Engine, requests: Sequence[Request], config: DecodeConfig | None = None,
                    gammas: tuple[float, ...] = EGA_GAMMAS) -> RegretReport:
    """Grid regret of every ad of the served slates ``[R, num_slots]`` with full re-decodes:
    the ad bids ``gamma x value`` (its catalog bid is its value: truthful default) and the
    request is served again from scratch; its utility is ``(value - payment) x pCTR`` where it
    lands, 0 if it drops out."""
    config = config or engine.default_config
    catalog = engine.catalog
    served = engine.generate(requests, config)
    shape = (len(requests), config.num_slots)
    utility, best, surplus = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
    bidders = torch.zeros(shape, dtype=torch.bool)
    for i, slate in enumerate(served):
        for slot in (s for s in slate.slots if s.is_ad):
            value, j = slot.bid, slot.slot
            bidders[i, j] = True
            utility[i, j] = (value - slot.payment) * slot.pctr_poi
            surplus[i, j] = value * slot.pctr_poi
            for gamma in gammas:
                what_if = catalog.with_bids([slot.item_id], [gamma * value])
                again = engine.generate([requests[i]], config, catalog=what_if)[0]
                for s in again.slots:
                    if s.item_id == slot.item_id:
                        best[i, j] = max(float(best[i, j]), (value - s.payment) * s.pctr_poi)
    grid = torch.where(bidders, (best - utility).clamp(min=0), 0.0)
    return RegretReport(utility, grid, grid, bidders, surplus)
