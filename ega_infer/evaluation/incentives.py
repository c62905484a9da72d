"""Incentives of the selection stage: the same slates priced by the payment network, GSP and
VCG, and each mechanism's ex-post regret (EGA-V2's Psi) with the beam lists held fixed: the
bid rewrites the bidder's bid in every list that holds it, the reward model's selection and
the pricing run again (grid and gradient ascent over all requests and ads at once). The whole
engine re-run on misreports is ``redecode.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import torch

from ..auction import RegretReport, ex_post_regret, list_gsp_prices, list_vcg_prices, selection_mechanism
from ..auction.lists import CandidateLists
from ..decoding import DecodeConfig
from ..engine import Engine
from ..post import network_prices
from ..request import Request

__all__ = ["incentive_report", "priced_three_ways"]

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
