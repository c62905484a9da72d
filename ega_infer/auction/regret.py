"""Offline ex-post regret of a mechanism (EGA-V2 section 10, RegretNet).

A mechanism maps bid profiles ``[B, R, n]`` (B variants of a batch of R requests with n
bidders) to per-click prices and click probabilities of the same shape; bidder i's utility is ``(v_i - p_i) * ctr_i``. Its ex-post regret is the best utility
gain from misreporting while the others bid truthfully:

    rgt_i = max(0, max_b' u_i(b', v_-i) - u_i(v))

Two searches, both batched over requests, bidders and misreports:

* the grid of EGA-V2: ``b' = gamma * v_i`` for gamma in {0.2, 0.4, ..., 2.0};
* gradient ascent (Adam) on the misreport from the best grid point and random starts, keeping
  the best utility seen. It finds fine shading the grid misses when prices move with the bid;
  where utility is flat in the own bid (GSP, VCG) it cannot improve on its starting points.

Both are lower bounds of the true regret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Mechanism", "RegretReport", "MisreportSearch", "ex_post_regret", "find_misreports", "own_utility", "EGA_GAMMAS"]

# bids [B, R, n] (B profiles of the batch of R requests) -> (price per click, click prob) [B, R, n]
Mechanism = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
EGA_GAMMAS = tuple(round(0.2 * i, 1) for i in range(1, 11))


@dataclass
class RegretReport:
    """Per request and bidder ``[R, n]``: truthful utility, regret on the grid and after ascent
    (``ascent >= grid``), and the bidders that count (``bidders``)."""

    utility: torch.Tensor
    grid: torch.Tensor
    ascent: torch.Tensor
    bidders: torch.Tensor
    surplus: torch.Tensor | None = None  # value x click probability: the utility of paying 0

    def mean_regret(self, which: str = "ascent") -> float:
        """Mean regret over the counted bidders."""
        regret = getattr(self, which)
        return float(regret[self.bidders].mean()) if self.bidders.any() else 0.0

    def psi(self, which: str = "ascent", min_share: float = 0.01) -> float:
        """EGA-V2's Psi: mean over requests of the summed relative regret ``rgt_i / u_i`` of
        their bidders. A bidder whose truthful utility is below ``min_share`` of its surplus
        (it pays nearly its whole value) has no meaningful relative regret and is left out;
        requests left with no bidder are skipped."""
        regret = getattr(self, which)
        floor = 1e-12 if self.surplus is None else (min_share * self.surplus).clamp(min=1e-12)
        counted = self.bidders & (self.utility > floor)
        relative = torch.where(counted, regret / self.utility.clamp(min=1e-12), 0.0).sum(1)
        has = counted.any(1)
        return float(relative[has].mean()) if has.any() else 0.0


def own_utility(mechanism: Mechanism, values: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Utility of each bidder when it alone bids ``multipliers * value`` and the others bid their
    values: ``values [R, n]``, ``multipliers [S, R, n]`` -> ``[S, R, n]``. The mechanism sees
    ``S * n`` profiles of the whole batch, ``[S * n, R, n]``."""
    s, r, n = multipliers.shape
    eye = torch.eye(n, dtype=torch.bool, device=values.device)[None, :, None, :]  # [1, i, 1, n]
    own = (multipliers * values).permute(0, 2, 1)[..., None]  # [S, i, R, 1]
    profiles = torch.where(eye, own, values[None, None])  # [S, i, R, n]
    price, ctr = mechanism(profiles.reshape(s * n, r, n))
    idx = torch.arange(n, device=values.device)
    own_price = price.reshape(s, n, r, n)[:, idx, :, idx].permute(1, 2, 0)  # [S, R, n]
    own_ctr = ctr.reshape(s, n, r, n)[:, idx, :, idx].permute(1, 2, 0)
    return (values - own_price) * own_ctr


def ex_post_regret(
    mechanism: Mechanism,
    values: torch.Tensor,
    bidders: torch.Tensor | None = None,
    gammas: tuple[float, ...] = EGA_GAMMAS,
    ascent_steps: int = 200,
    random_starts: int = 4,
    lr: float = 0.05,
    max_multiplier: float = 2.0,
    seed: int = 0,
) -> RegretReport:
    """Regret of every counted bidder of ``values [R, n]`` under truthful bidding.

    bidders [R, n] bool marks who counts (e.g. the ads of a slate; default everyone). Misreports
    are kept in ``[0, max_multiplier * v_i]``. ``ascent_steps = 0`` skips the ascent.
    """
    bidders = torch.ones_like(values, dtype=torch.bool) if bidders is None else bidders
    search = find_misreports(mechanism, values, gammas, ascent_steps, random_starts, lr, max_multiplier, seed)
    grid = torch.where(bidders, (search.grid_utility - search.truthful).clamp(min=0), 0.0)
    ascent = torch.where(bidders, (search.best_utility - search.truthful).clamp(min=0), 0.0)
    return RegretReport(search.truthful, grid, torch.maximum(grid, ascent), bidders, search.surplus)


@dataclass
class MisreportSearch:
    """Per bidder ``[R, n]``: truthful utility, best utility on the grid, best overall and the
    bid multiplier that reached it."""

    truthful: torch.Tensor
    grid_utility: torch.Tensor
    best_utility: torch.Tensor
    best_multiplier: torch.Tensor
    surplus: torch.Tensor


def find_misreports(
    mechanism: Mechanism,
    values: torch.Tensor,
    gammas: tuple[float, ...] = EGA_GAMMAS,
    ascent_steps: int = 200,
    random_starts: int = 4,
    lr: float = 0.05,
    max_multiplier: float = 2.0,
    seed: int = 0,
) -> MisreportSearch:
    """Each bidder's most profitable misreport found (grid, then Adam from the best grid point
    and random starts); the mechanism's parameters get no gradient from this search."""
    r, n = values.shape
    with torch.no_grad():
        price, ctr = mechanism(values[None])
        truthful = (values - price[0]) * ctr[0]
        surplus = values * ctr[0]
        g = torch.tensor(gammas, device=values.device, dtype=values.dtype)
        u = own_utility(mechanism, values, g[:, None, None].expand(len(gammas), r, n))
        grid_utility, best_gamma = u.max(0)
    best_multiplier = g[best_gamma]
    best_utility = grid_utility.clone()
    if ascent_steps > 0:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        starts = [best_multiplier] + [
            torch.rand(r, n, generator=generator).to(values) * max_multiplier for _ in range(random_starts)
        ]
        multiplier = torch.stack(starts).detach().clone().requires_grad_(True)  # [S, R, n]
        optimizer = torch.optim.Adam([multiplier], lr=lr)
        for _ in range(ascent_steps + 1):
            clamped = multiplier.clamp(0, max_multiplier)
            u = own_utility(mechanism, values, clamped)
            top, arg = u.detach().max(0)
            improved = top > best_utility
            best_utility = torch.where(improved, top, best_utility)
            best_multiplier = torch.where(improved, clamped.detach().gather(0, arg[None])[0], best_multiplier)
            if not u.requires_grad:  # utility does not move continuously with the own bid
                break
            optimizer.zero_grad()
            (-u.sum()).backward(inputs=[multiplier])
            optimizer.step()
    return MisreportSearch(truthful, grid_utility, best_utility, best_multiplier, surplus)
