"""Payments for the winning lists from the payment network."""

from __future__ import annotations

import dataclasses

import torch

from ..auction.lists import CandidateLists, list_vcg_prices
from ..model.payment import PaymentNetwork

__all__ = ["network_pricing"]


def network_pricing(payment: PaymentNetwork):
    """The payment network as a ``pricing(lists, winner) -> [N, K]`` rule over candidate lists
    (``CandidateLists`` carrying ``slot_repr`` and ``log_alloc``): per-click prices of the
    winner's slots, 0 for organic and empty slots, never above the bid."""

    def pricing(lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the threshold is an input: no gradient flows through it
            threshold = list_vcg_prices(_exact(lists), winner)
        bids = lists.at(lists.bids, winner)
        pctr = lists.at(lists.pctr, winner)
        alloc_value = torch.exp(lists.at(lists.log_alloc, winner).clamp(max=0)) * pctr
        _, pay = payment(lists.at(lists.slot_repr, winner), bids.float(), lists.at(lists.is_ad, winner),
                         alloc_value.float(), threshold.float())
        return pay.to(bids.dtype)

    return pricing


def _exact(lists: CandidateLists) -> CandidateLists:
    """float64 copy of the welfare terms: Clarke prices are differences of near-equal welfares."""
    if lists.bids.dtype == torch.float64:
        return lists
    return dataclasses.replace(lists, bids=lists.bids.double(), pctr=lists.pctr.double(), base=lists.base.double())
