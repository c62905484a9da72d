"""Payments for the winning slates from the payment network."""

from __future__ import annotations

import torch

from ..model.payment import PaymentNetwork

__all__ = ["price_slates"]


@torch.no_grad()
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
