"""Stage 3: the payment network by augmented-Lagrangian ex-post regret minimisation
(RegretNet; EGA-V2 Eq. 33-35).

The mechanism trained against is the one served: the reward model's choice among the beam
lists of a request (``selection_mechanism``) priced by the network. A misreport rewrites the
bidder's bid in every list that holds it, re-selects the winner and re-prices it; a bidder
out of the new winner gets no click. Bidder i's utility is ``ctr_i (v_i - p_i)``. The network
maximises expected revenue subject to zero regret: minimise
``-rev + sum_k lambda_k rgt_k + rho/2 sum_k rgt_k^2`` over slots k, misreports found by the
EGA gamma grid and gradient ascent, ``lambda_k += rho * rgt_k`` every few steps. The lists
themselves (beams, pCTRs) are held fixed: bids move the selection and the prices, not the
decode (the offline evaluator also measures full re-decodes).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from ..auction import find_misreports
from ..auction.lists import CandidateLists, selection_mechanism
from ..auction.regret import own_utility
from ..model.payment import PaymentNetwork
from ..post.pricing import network_prices

__all__ = ["train_payment"]


def train_payment(
    payment: PaymentNetwork,
    lists: CandidateLists,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 1e-3,
    rho: float = 5.0,
    lambda_init: float = 5.0,
    update_every: int = 20,
    ascent_steps: int = 10,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    """Train on the candidate lists of served requests (``lists [R, L, K]``, truthful bids)."""
    rng = np.random.default_rng(seed)
    pricing = functools.partial(network_prices, payment)
    k = lists.bids.shape[-1]
    lam = torch.full((k,), lambda_init)  # start constrained: an unconstrained start saturates the sigmoid
    optimizer = torch.optim.Adam(payment.parameters(), lr=lr)
    payment.train()
    recent = []
    for step in range(steps):
        batch = lists.take(torch.as_tensor(rng.integers(0, len(lists.bids), batch_size)))
        winner = batch.welfare().argmax(-1)
        values = batch.at(batch.bids, winner)
        is_ad = batch.at(batch.is_ad, winner)
        mechanism = selection_mechanism(batch, pricing)
        search = find_misreports(mechanism, values, ascent_steps=ascent_steps, random_starts=1, lr=0.1, seed=step)
        truthful = own_utility(mechanism, values, torch.ones_like(values)[None])[0]
        misreport = own_utility(mechanism, values, search.best_multiplier[None])[0]
        regret = torch.where(is_ad, (misreport - truthful).clamp(min=0), 0.0).mean(0)  # per slot
        revenue = (pricing(batch, winner) * batch.at(batch.pctr, winner)).sum(1).mean()
        loss = -revenue + (lam * regret).sum() + rho / 2 * (regret**2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent.append(regret.detach())
        if (step + 1) % update_every == 0:
            lam = lam + rho * torch.stack(recent).mean(0)
            recent = []
        if step % 50 == 0 or step == steps - 1:
            log(f"payment   step {step:5d}  revenue {revenue.item():.4f}  regret {regret.sum().item():.5f}  "
                f"lambda {lam.sum().item():.3f}")
    payment.eval()
