"""Payments for the winning slates from the payment network."""

from __future__ import annotations

import torch

from ..model.payment import PaymentNetwork

__all__ = ["price_slates", "network_pricing"]


def price_slates(
    payment: PaymentNetwork,
    slot_repr: torch.Tensor,
    bids: torch.Tensor,
    is_ad: torch.Tensor,
    log_alloc: torch.Tensor,
    pctr: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-click payment of every slot of the winning slates ``[N, K]``.

    The network sees each ad's allocation probability ``z = exp(log_alloc)`` times its pCTR.
    Returns ``(rate, payment)``; organic and empty slots pay 0 and payment <= bid always.
    """
    alloc_value = torch.exp(log_alloc.clamp(max=0)) * pctr
    return payment(slot_repr, bids, is_ad, alloc_value)


def network_pricing(payment: PaymentNetwork):
    """The payment network as a ``pricing(lists, winner) -> [N, K]`` rule over candidate lists
    (``ega_infer.auction.CandidateLists`` carrying ``slot_repr`` and ``log_alloc``)."""

    def pricing(lists, winner):
        _, pay = price_slates(
            payment, lists.at(lists.slot_repr, winner), lists.at(lists.bids, winner).float(),
            lists.at(lists.is_ad, winner), lists.at(lists.log_alloc, winner), lists.at(lists.pctr, winner).float(),
        )
        return pay.to(lists.bids.dtype)

    return pricing
