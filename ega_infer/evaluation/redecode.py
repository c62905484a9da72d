"""Full re-decode regret of each pricing rule, batched: the whole engine re-run on misreports.

For every request, every ad in any of its live beam lists is a bidder (winners and losers),
and each bids ``gamma x value`` for gamma on EGA's grid while the others bid truthfully. A
misreport is one decode row: the request with that ad's bid replaced (``ItemOverrides``), so
token weights, leaf resolution, list selection and prices all see it, exactly as on a catalog
with that bid (tested equal to ``Catalog.with_bids``). All rows of all requests are decoded in
batches of ``chunk`` rows. The bidder's utility is ``(value - price) x pCTR`` where it lands in
the winning slate, 0 if it does not.

One decode of the rows serves every rule that prices the same allocation (network, VCG, GSP,
Clarke); Clarke also needs, per (request, bidder), the request decoded without the bidder:
its best welfare does not depend on the bidder's own bid, so one more row per bidder covers
every gamma. ``mir`` (bid-blind lists, VCG) is evaluated on its own decodes.

Reported per rule: expected revenue and ad CTR of the truthful slates under the world's true
click model, Psi (EGA-V2's, with a bootstrap interval over requests) and regret / surplus
(summed regret of every bidder over the summed truthful surplus ``value x pCTR`` of the
winning ads: unlike Psi it counts every bidder, so mechanisms compare).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..auction import EGA_GAMMAS, RegretReport
from ..auction.lists import CandidateLists, clarke_prices, list_gsp_prices, list_vcg_prices
from ..decoding import DecodeConfig, ItemOverrides
from ..engine import EncodedBatch, Engine
from ..pipeline import decode_lists
from ..post import network_prices

__all__ = ["RuleResult", "redecode_rules", "bootstrap_psi"]

SHARED_RULES = ("network", "vcg", "gsp", "clarke")


@dataclass
class RuleResult:
    """One pricing rule: ``regret`` (per request x bidder, grid regret under full re-decode),
    the truthful winners' ``items`` / ``creatives`` / ``prices`` ``[R, K]`` (catalog rows,
    -1 none) and how many decode rows it took."""

    regret: RegretReport
    items: np.ndarray
    creatives: np.ndarray
    prices: np.ndarray
    decode_rows: int

    def regret_per_surplus(self) -> float:
        surplus = float(self.regret.surplus[self.regret.bidders].sum())
        return float(self.regret.grid[self.regret.bidders].sum()) / surplus if surplus > 0 else 0.0


def _prices(rule: str, model, lists: CandidateLists, without: torch.Tensor | None) -> torch.Tensor:
    if rule == "network":
        return network_prices(model.payment, lists, lists.winner)
    if rule in ("vcg", "mir"):
        return list_vcg_prices(lists, lists.winner)
    if rule == "gsp":
        return list_gsp_prices(lists, lists.winner)
    return clarke_prices(lists, lists.winner, without)


def _rows(batch: EncodedBatch, rows: torch.Tensor, overrides: ItemOverrides) -> CandidateLists:
    """Decode request rows ``rows`` of ``batch`` with per-row ``overrides`` (its exclusions kept)."""
    if batch.exclude is not None:
        overrides = ItemOverrides.exclusions(batch.exclude[rows]).cat(overrides)
    lists = decode_lists(batch.model, batch.memory[rows], batch.mask[rows], batch.organic[rows], batch.spec,
                         batch.backends, batch.catalog, overrides=overrides)
    return dataclasses.replace(lists, bids=lists.bids.double(), probs=lists.probs.double())


def _in_winner(lists: CandidateLists, items: torch.Tensor, prices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Price per click and pCTR of ``items [R]`` in each row's winner (0, 0 where absent)."""
    won = lists.at(lists.items, lists.winner)
    at = (won == items[:, None]) & (items[:, None] >= 0)
    pctr = lists.at(lists.pctr, lists.winner).double()
    return (at * prices.double()).sum(1), (at * pctr).sum(1)


@torch.no_grad()
def redecode_rules(engine: Engine, requests, config: DecodeConfig, rules: tuple[str, ...] = SHARED_RULES,
                   gammas: tuple[float, ...] = EGA_GAMMAS, chunk: int = 256) -> dict[str, RuleResult]:
    """Each rule of ``rules`` (all priced on ``config``'s allocation) under full re-decode."""
    batch = engine.encode_batch(requests, config)
    n = len(requests)
    everyone = torch.arange(n, device=batch.memory.device)
    no_change = ItemOverrides.exclusions(torch.full((n, 0), -1, dtype=torch.long, device=batch.memory.device))
    truthful = _rows(batch, everyone, no_change)

    # bidders: the distinct ads of each request's live lists, [R, A] catalog rows (-1 pad)
    ads = torch.where(truthful.is_ad & truthful.alive[..., None], truthful.items, -1).flatten(1)
    ads = torch.sort(ads, dim=1, descending=True).values
    ads = torch.where(torch.cat([torch.ones_like(ads[:, :1], dtype=torch.bool), ads[:, 1:] != ads[:, :-1]], 1), ads, -1)
    ads = torch.sort(ads, dim=1, descending=True).values
    width = max(int((ads >= 0).sum(1).max()) if n else 0, 1)
    bidders = ads[:, :width]
    has = bidders >= 0
    values = torch.where(has, batch.catalog.bids[bidders.clamp(min=0)].double(), 0.0)
    pairs = has.nonzero()  # [P, 2] (request, bidder slot)
    pair_item = bidders[pairs[:, 0], pairs[:, 1]]
    pair_value = values[pairs[:, 0], pairs[:, 1]]

    def decode_all(request_rows, overrides, fn):
        out = []
        for start in range(0, request_rows.numel(), chunk):
            part = slice(start, start + chunk)
            out.append(fn(_rows(batch, request_rows[part], overrides.take(torch.arange(
                start, min(start + chunk, request_rows.numel()), device=request_rows.device))), part))
        return torch.cat(out) if out else torch.zeros(0, len(rules), 2, dtype=torch.float64)

    # Clarke: each bidder's best welfare without it, independent of its own bid
    without = torch.full((n, width), float("-inf"), dtype=torch.float64, device=bidders.device)
    extra_rows = 0
    if "clarke" in rules and len(pairs):
        best = decode_all(pairs[:, 0], ItemOverrides.exclusions(pair_item[:, None]),
                          lambda lists, part: lists.list_scores.max(1).values)
        without[pairs[:, 0], pairs[:, 1]] = best
        extra_rows = len(pairs)

    def utilities(lists: CandidateLists, items: torch.Tensor, value: torch.Tensor, wo: torch.Tensor) -> torch.Tensor:
        cols = []
        for rule in rules:
            price, pctr = _in_winner(lists, items, _prices(rule, batch.model, lists, wo[:, None].expand(-1, lists.items.shape[2])))
            cols.append(torch.stack([(value - price) * pctr, value * pctr], -1))
        return torch.stack(cols, 1)  # [rows, rules, (utility, surplus)]

    # truthful utilities of every bidder (0 for those who do not win)
    truth = torch.zeros(n, width, len(rules), 2, dtype=torch.float64, device=bidders.device)
    for slot in range(width):
        truth[:, slot] = utilities(truthful, bidders[:, slot], values[:, slot], without[:, slot])
    # misreports: every (request, bidder, gamma) a row
    g = torch.tensor(gammas, dtype=torch.float64, device=bidders.device)
    rep_pair = torch.arange(len(pairs), device=bidders.device).repeat_interleave(len(gammas))
    rep_gamma = g.repeat(len(pairs))
    misreports = ItemOverrides.rebids(pair_item[rep_pair, None], (rep_gamma * pair_value[rep_pair])[:, None].float())
    reported = decode_all(pairs[rep_pair, 0], misreports, lambda lists, part: utilities(
        lists, pair_item[rep_pair[part]], pair_value[rep_pair[part]], without[pairs[rep_pair[part], 0],
                                                                               pairs[rep_pair[part], 1]]))
    best = torch.full((n, width, len(rules)), 0.0, dtype=torch.float64, device=bidders.device)
    if len(pairs):
        per_pair = reported[..., 0].view(len(pairs), len(gammas), len(rules)).amax(1)
        best[pairs[:, 0], pairs[:, 1]] = per_pair

    won = truthful.at(truthful.items, truthful.winner)
    creatives = truthful.at(truthful.creative_rows, truthful.winner)
    out = {}
    for r, rule in enumerate(rules):
        utility, surplus = truth[..., r, 0], truth[..., r, 1]
        grid = torch.where(has, (best[..., r] - utility).clamp(min=0), 0.0)
        prices = _prices(rule, batch.model, truthful, _winner_without(truthful, bidders, without))
        out[rule] = RuleResult(RegretReport(utility.cpu(), grid.cpu(), grid.cpu(), has.cpu(), surplus.cpu()),
                               won.cpu().numpy(), creatives.cpu().numpy(), prices.double().cpu().numpy(),
                               n + (extra_rows if rule == "clarke" else 0))
    return out


def _winner_without(lists: CandidateLists, bidders: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """``without`` of each winner slot ``[R, K]``: the bidder column holding that slot's ad."""
    won = lists.at(lists.items, lists.winner)
    match = (won[:, :, None] == bidders[:, None, :]) & (won[:, :, None] >= 0)
    return torch.where(match.any(-1), (match * torch.where(match, without[:, None, :], 0.0)).sum(-1), float("-inf"))


def bootstrap_psi(report: RegretReport, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """5% and 95% quantiles of Psi (grid) over requests resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = report.utility.shape[0]
    values = []
    for _ in range(samples):
        take = torch.as_tensor(rng.integers(0, n, n))
        values.append(RegretReport(*(t[take] for t in (report.utility, report.grid, report.ascent, report.bidders,
                                                        report.surplus))).psi("grid"))
    return float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))

