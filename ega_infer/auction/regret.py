"""Offline ex-post regret of a mechanism (EGA-V2 section 10, RegretNet).

A mechanism maps bid profiles ``[R, n]`` to per-click prices and click probabilities
``[R, n]``; bidder i's utility is ``(v_i - p_i) * ctr_i``. Its ex-post regret is the best utility
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

__all__ = ["Mechanism", "RegretReport", "ex_post_regret", "EGA_GAMMAS"]

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

    def mean_regret(self, which: str = "ascent") -> float:
        """Mean regret over the counted bidders."""
        regret = getattr(self, which)
        return float(regret[self.bidders].mean()) if self.bidders.any() else 0.0

    def psi(self, which: str = "ascent", min_utility: float = 1e-9) -> float:
        """EGA-V2's Psi: mean over requests of the summed relative regret ``rgt_i / u_i`` of
        their bidders. Bidders with (near) zero truthful utility have no relative regret and are
        left out; requests left with no bidder are skipped."""
        regret = getattr(self, which)
        counted = self.bidders & (self.utility > min_utility)
        relative = torch.where(counted, regret / self.utility.clamp(min=min_utility), 0.0).sum(1)
        has = counted.any(1)
        return float(relative[has].mean()) if has.any() else 0.0


def _utility(mechanism: Mechanism, bids: torch.Tensor, values: torch.Tensor, who: torch.Tensor) -> torch.Tensor:
    """Utility of bidder ``who [P]`` in each profile ``bids [P, n]`` (values [P, n])."""
    price, ctr = mechanism(bids)
    rows = torch.arange(len(who), device=bids.device)
    return ((values[rows, who] - price[rows, who]) * ctr[rows, who])


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
    r, n = values.shape
    device = values.device
    bidders = torch.ones_like(values, dtype=torch.bool) if bidders is None else bidders
    with torch.no_grad():
        price, ctr = mechanism(values)
        truthful = (values - price) * ctr

        # grid: profile (request, bidder i, gamma) = truthful bids with bid i scaled
        g = torch.tensor(gammas, device=device, dtype=values.dtype)
        profiles = values[:, None, None, :].expand(r, n, len(gammas), n).clone()
        eye = torch.eye(n, dtype=torch.bool, device=device)[None, :, None, :]
        profiles = torch.where(eye, values[:, :, None, None] * g[None, None, :, None], profiles)
        who = torch.arange(n, device=device)[None, :, None].expand(r, n, len(gammas)).reshape(-1)
        flat_values = values[:, None, None, :].expand(r, n, len(gammas), n).reshape(-1, n)
        u_grid = _utility(mechanism, profiles.reshape(-1, n), flat_values, who).reshape(r, n, len(gammas))
        best_grid, best_gamma = u_grid.max(-1)
    grid = torch.where(bidders, (best_grid - truthful).clamp(min=0), 0.0)
    ascent = grid.clone()
    if ascent_steps > 0:
        best = _ascend(mechanism, values, g[best_gamma], ascent_steps, random_starts, lr, max_multiplier, seed)
        ascent = torch.where(bidders, torch.maximum(grid, (best - truthful).clamp(min=0)), 0.0)
    return RegretReport(truthful, grid, ascent, bidders)


def _ascend(mechanism, values, start_gamma, steps, random_starts, lr, max_multiplier, seed) -> torch.Tensor:
    """Best utility each bidder reaches by Adam on its own bid multiplier, ``[R, n]``."""
    r, n = values.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    starts = [start_gamma] + [
        torch.rand(r, n, generator=generator).to(values) * max_multiplier for _ in range(random_starts)
    ]
    s = len(starts)
    multiplier = torch.stack(starts, dim=0).detach().clone().requires_grad_(True)  # [S, R, n]
    optimizer = torch.optim.Adam([multiplier], lr=lr)
    base = values[None, :, None, :].expand(s, r, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=values.device)[None, None]
    who = torch.arange(n, device=values.device)[None, None, :].expand(s, r, n).reshape(-1)
    flat_values = base.reshape(-1, n)
    best = torch.full((r, n), float("-inf"), device=values.device, dtype=values.dtype)
    for _ in range(steps + 1):
        bid = (multiplier.clamp(0, max_multiplier) * values[None])[..., None]  # [S, R, n, 1]
        profiles = torch.where(eye, bid, base)
        utility = _utility(mechanism, profiles.reshape(-1, n), flat_values, who).reshape(s, r, n)
        best = torch.maximum(best, utility.detach().max(0).values)
        optimizer.zero_grad()
        (-utility.sum()).backward()
        optimizer.step()
    return best
