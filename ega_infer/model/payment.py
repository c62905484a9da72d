"""Payment network (EGA-V2 Eq. 25-26): a per-click price for every ad of the winning list.

``rate_i = sigmoid(logit(s_i) + MLP(slot representation_i, bids of the other slots,
z_i * pCTR_i, s_i))`` with ``s_i = threshold_i / bid_i``, and ``payment_i = rate_i * bid_i``;
organic and empty slots pay 0. The sigmoid keeps every payment at or below the bid
(individual rationality by construction).

``threshold_i`` is the ad's Clarke threshold over the candidate lists (its VCG price: the
welfare it displaces in the other lists, per click). EGA-V2's inputs see only the winning
list; in the served mechanism the reward model picks among the beam lists, so whether a
lower bid would still win depends on the competing lists, and a network blind to them cannot
price truthfully (trained without it, it collapsed to near-zero revenue at Psi 0.14). The
threshold is that competition in one number. Pricing exactly at it is truthful, so the network
prices relative to it: the MLP's last layer starts at zero (the truthful price) and training
learns where to charge more, or less, at small regret.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import MLP, rowwise

__all__ = ["PaymentNetwork"]

_EPS = 1e-4  # keeps logit(threshold / bid) finite at 0 and 1
_MAX_MARKUP = 30.0  # sigmoid saturates long before: bounds a non-finite MLP output


class PaymentNetwork(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.max_slots = config.decoder.max_slots
        self.mlp = MLP(config.reward.d_model + self.max_slots + 1, config.payment.hidden)
        nn.init.zeros_(self.mlp.net[-1].weight)
        nn.init.zeros_(self.mlp.net[-1].bias)

    def forward(
        self,
        slot_repr: torch.Tensor,
        bids: torch.Tensor,
        is_ad: torch.Tensor,
        alloc_value: torch.Tensor,
        threshold: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """slot_repr [L, K, d], bids [L, K] (0 for organic/empty), is_ad [L, K] bool,
        alloc_value [L, K] = allocation probability x pCTR, threshold [L, K] per-click Clarke
        threshold price (>= 0). Returns ``(rate, payment)`` [L, K]."""
        n, k = bids.shape
        bids = torch.where(is_ad, bids, torch.zeros_like(bids)).float()
        padded = torch.zeros(n, self.max_slots, device=bids.device, dtype=bids.dtype)
        padded[:, :k] = bids
        # row i holds the other slots' bids in slot order with slot i removed: [L, K, max_slots - 1]
        # (a gather, not a boolean mask: a mask index syncs with the host and breaks graph capture)
        column = torch.arange(self.max_slots - 1, device=bids.device)
        slot = torch.arange(k, device=bids.device)[:, None]
        others = padded[:, column + (column >= slot)]
        share = torch.where(is_ad, threshold.float() / bids.clamp(min=1e-12), 0.0).clamp(0, 1)
        features = torch.cat([slot_repr.float(), others, alloc_value.float().unsqueeze(-1), share.unsqueeze(-1)], dim=-1)
        # bids near float32's max can overflow the MLP: fall back to the threshold price (0)
        markup = torch.nan_to_num(self.mlp(features.to(slot_repr.dtype)).float(), nan=0.0).clamp(-_MAX_MARKUP, _MAX_MARKUP)
        rate = rowwise(lambda s, m: torch.sigmoid(torch.logit(s, eps=_EPS) + m), share, markup)
        payment = torch.where(is_ad, rate * bids, torch.zeros_like(rate))
        return rate, payment
