"""Per-click payments of the winning lists from the payment network."""

from __future__ import annotations

import torch

from ..auction.lists import CandidateLists, list_vcg_prices
from ..model.layers import rowwise
from ..model.payment import PaymentNetwork

__all__ = ["network_prices"]


def network_prices(payment: PaymentNetwork, lists: CandidateLists, winner: torch.Tensor) -> torch.Tensor:
    """Per-click prices ``[N, K]`` of the ``winner`` lists' slots (``lists`` with ``probs``,
    ``slot_repr`` and ``log_alloc``): 0 for organic and empty slots, never above the bid. With
    ``functools.partial(network_prices, payment)`` it is a ``pricing(lists, winner)`` rule like
    ``list_vcg_prices``."""
    with torch.no_grad():  # the threshold is an input: no gradient flows through it
        threshold = list_vcg_prices(lists, winner)
    bids = lists.at(lists.bids, winner)
    pctr = lists.at(lists.pctr, winner)
    alloc_value = rowwise(torch.exp, lists.at(lists.log_alloc, winner).clamp(max=0)) * pctr
    _, pay = payment(lists.at(lists.slot_repr, winner), bids.float(), lists.at(lists.is_ad, winner),
                     alloc_value.float(), threshold.float())
    return pay.to(bids.dtype)
