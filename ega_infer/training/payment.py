"""Stage 3: the payment network by augmented-Lagrangian ex-post regret minimisation
(RegretNet; EGA-V2 Eq. 33-35).

The mechanism priced here is the served slate with a differentiable allocation: ad i keeps
its slot with probability ``z_i(b)``, the item-level bid-weighted share of the decoder
(EGA-V2 Eq. 22: its weight ``b^alpha + beta`` against everything else it competed with), so
``z_i(b') = sigmoid(logit z_i + log w(b') - log w(b_i))``. Bidder i's expected utility is
``z_i(b') pCTR_i (v_i - p_i(b'))``. The network maximises expected revenue subject to zero
regret: minimise ``-rev + sum_k lambda_k rgt_k + rho/2 sum_k rgt_k^2`` over slots k, with
misreports found by grid and gradient ascent and ``lambda_k += rho * rgt_k`` every few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..auction import find_misreports
from ..auction.regret import own_utility
from ..model.payment import PaymentNetwork

__all__ = ["PricedSlates", "slate_mechanism", "train_payment"]


@dataclass
class PricedSlates:
    """Served slates as the payment network sees them, ``[R, K]`` (``slot_repr [R, K, d]``)."""

    slot_repr: torch.Tensor
    bids: torch.Tensor  # = values: truthful bidding
    is_ad: torch.Tensor
    alloc: torch.Tensor  # z_i at the truthful bids
    pctr: torch.Tensor

    def take(self, rows) -> PricedSlates:
        return PricedSlates(*(t[rows] for t in (self.slot_repr, self.bids, self.is_ad, self.alloc, self.pctr)))


def slate_mechanism(payment: PaymentNetwork, slates: PricedSlates, alpha: float, beta: float):
    """The mechanism ``bids [B, R, K] -> (price, click prob)`` of a batch of served slates."""
    log_w0 = torch.log(slates.bids.clamp(min=0) ** alpha + beta)
    logit0 = torch.logit(slates.alloc.clamp(1e-6, 1 - 1e-6))

    def mechanism(bids: torch.Tensor):
        b, r, k = bids.shape
        z = torch.sigmoid(logit0 + torch.log(bids.clamp(min=0) ** alpha + beta) - log_w0)
        z = torch.where(slates.is_ad, z, slates.alloc)
        ctr = z * slates.pctr
        repr_ = slates.slot_repr.expand(b, -1, -1, -1).reshape(b * r, k, -1)
        _, price = payment(repr_, bids.reshape(b * r, k), slates.is_ad.expand(b, -1, -1).reshape(b * r, k), ctr.reshape(b * r, k))
        return price.reshape(b, r, k), ctr

    return mechanism


def train_payment(
    payment: PaymentNetwork,
    slates: PricedSlates,
    alpha: float,
    beta: float,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 1e-3,
    rho: float = 5.0,
    lambda_init: float = 5.0,
    update_every: int = 20,
    ascent_steps: int = 10,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    rng = np.random.default_rng(seed)
    k = slates.bids.shape[1]
    lam = torch.full((k,), lambda_init)  # start constrained: an unconstrained start saturates the sigmoid
    optimizer = torch.optim.Adam(payment.parameters(), lr=lr)
    payment.train()
    recent = []
    for step in range(steps):
        batch = slates.take(torch.as_tensor(rng.integers(0, len(slates.bids), batch_size)))
        mechanism = slate_mechanism(payment, batch, alpha, beta)
        search = find_misreports(mechanism, batch.bids, ascent_steps=ascent_steps, random_starts=1, lr=0.1, seed=step)
        truthful = own_utility(mechanism, batch.bids, torch.ones_like(batch.bids)[None])[0]
        misreport = own_utility(mechanism, batch.bids, search.best_multiplier[None])[0]
        regret = torch.where(batch.is_ad, (misreport - truthful).clamp(min=0), 0.0).mean(0)  # per slot
        price, ctr = mechanism(batch.bids[None])
        revenue = (price[0] * ctr[0]).sum(1).mean()
        loss = -revenue + (lam * regret).sum() + rho / 2 * (regret**2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent.append(regret.detach())
        if (step + 1) % update_every == 0:
            lam = lam + rho * torch.stack(recent).mean(0)
            recent = []
        if step % 100 == 0 or step == steps - 1:
            log(f"payment   step {step:5d}  revenue {revenue.item():.4f}  regret {regret.sum().item():.5f}  "
                f"lambda {lam.sum().item():.3f}")
    payment.eval()
