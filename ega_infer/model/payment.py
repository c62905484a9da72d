"""Payment network (EGA-V2 Eq. 25-26): a per-click price for every ad of the winning list.

``rate_i = sigmoid(MLP(slot representation_i, bids of the other slots, z_i * pCTR_i))`` and
``payment_i = rate_i * bid_i``; organic and empty slots pay 0. The sigmoid keeps every payment
at or below the bid (individual rationality by construction).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import MLP

__all__ = ["PaymentNetwork"]


class PaymentNetwork(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.max_slots = config.decoder.max_slots
        self.mlp = MLP(config.reward.d_model + self.max_slots, config.payment.hidden)

    def forward(
        self,
        slot_repr: torch.Tensor,
        bids: torch.Tensor,
        is_ad: torch.Tensor,
        alloc_value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """slot_repr [L, K, d], bids [L, K] (0 for organic/empty), is_ad [L, K] bool,
        alloc_value [L, K] = allocation probability x pCTR. Returns ``(rate, payment)`` [L, K]."""
        n, k = bids.shape
        bids = torch.where(is_ad, bids, torch.zeros_like(bids)).float()
        padded = torch.zeros(n, self.max_slots, device=bids.device, dtype=bids.dtype)
        padded[:, :k] = bids
        # row i holds the other slots' bids in slot order with slot i removed: [L, K, max_slots - 1]
        slots = torch.arange(self.max_slots, device=bids.device)
        keep = slots[None, :] != slots[:k, None]
        others = padded[:, None, :].expand(n, k, -1)[:, keep].reshape(n, k, self.max_slots - 1)
        features = torch.cat([slot_repr.float(), others, alloc_value.float().unsqueeze(-1)], dim=-1)
        rate = torch.sigmoid(self.mlp(features.to(slot_repr.dtype)).float())
        payment = torch.where(is_ad, rate * bids, torch.zeros_like(rate))
        return rate, payment
