"""Everything after the encoder, for one batch: decode the candidate lists, choose creatives,
score the lists with the reward model, select the winners, price them.

Fixed shapes and no host synchronisation, so ``runtime/graphs.py`` captures the whole stage in
one CUDA graph; the engine runs it eagerly (and times its stages) everywhere else. Clarke
pricing adds one batched counterfactual pass in the same stage: for every request, one decode
row per ad slot of its winning slate, the request again with that ad excluded.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from .auction.lists import CandidateLists, clarke_prices, list_gsp_prices, list_vcg_prices
from .catalog.device import DeviceCatalog
from .decoding import DecodeSpec, ItemOverrides, beam_search
from .model import GenerativeAdModel
from .ops import OpBackends
from .post import choose_creatives, network_prices, score_lists

__all__ = ["decode_to_payments", "decode_lists", "counterfactual_welfare", "ad_slots"]

Timer = Callable[[str], ContextManager]


def _untimed(stage: str) -> ContextManager:
    return nullcontext()


@torch.no_grad()
def decode_to_payments(model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
                       spec: DecodeSpec, backends: OpBackends, catalog: DeviceCatalog,
                       timer: Timer = _untimed, exclude: torch.Tensor | None = None) -> CandidateLists:
    """The batch's ``CandidateLists`` with every field filled, from the encoder's ``memory
    [N, S, d]`` and ``mask [N, S]``, the requests' organic rows ``[N, M]`` and excluded rows
    ``[N, E]`` (-1 pad; None: no exclusions), priced by ``spec.pricing``."""
    overrides = None if exclude is None else ItemOverrides.exclusions(exclude)
    lists = decode_lists(model, memory, mask, organic, spec, backends, catalog, timer, overrides)
    with timer("payment"):
        if spec.pricing == "network":
            lists.payment = network_prices(model.payment, lists, lists.winner)
        elif spec.pricing in ("vcg", "mir"):  # mir: the lists are bid-blind, so VCG is exact
            lists.payment = list_vcg_prices(lists, lists.winner)
        elif spec.pricing == "gsp":
            lists.payment = list_gsp_prices(lists, lists.winner)
        else:
            without = counterfactual_welfare(model, memory, mask, organic, spec, backends, catalog, lists, overrides)
            lists.payment = clarke_prices(lists, lists.winner, without)
    return lists


@torch.no_grad()
def decode_lists(model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
                 spec: DecodeSpec, backends: OpBackends, catalog: DeviceCatalog, timer: Timer = _untimed,
                 overrides: ItemOverrides | None = None) -> CandidateLists:
    """Decode, creatives, reward model and selection (every field but ``payment``)."""
    with timer("decode"):
        ctx = model.decoder.context(memory, mask)
        lists = beam_search(model.decoder, ctx, catalog, spec, backends, organic, overrides=overrides)
    with timer("creative"):
        lists.creative_rows = (choose_creatives(model, memory, mask, lists, catalog) if spec.choose_creatives
                               else torch.full_like(lists.items, -1))
    with timer("reward"):
        lists.probs, lists.slot_repr = score_lists(model.reward, lists, catalog)
        lists.select()
    return lists


def ad_slots(lists: CandidateLists, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` ad slots of each winner, in slot order: ``(slot [N, count], is_ad
    [N, count])`` (slot 0 and False where the winner holds fewer ads)."""
    won_ad = lists.at(lists.is_ad, lists.winner)
    k = won_ad.shape[1]
    position = torch.arange(k, device=won_ad.device)
    order = torch.sort(torch.where(won_ad, position, k + position), dim=1).indices[:, :count]
    held = won_ad.gather(1, order)
    return torch.where(held, order, 0), held


@torch.no_grad()
def counterfactual_welfare(model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
                           spec: DecodeSpec, backends: OpBackends, catalog: DeviceCatalog, lists: CandidateLists,
                           overrides: ItemOverrides | None = None) -> torch.Tensor:
    """``[N, K]`` float64: for each ad slot of each winner, the best welfare of the request
    decoded without that ad (its other exclusions kept); ``-inf`` elsewhere. One batched decode
    of ``N * A`` rows, ``A = min(K, max_ads)`` (the most ads a winner can hold)."""
    n, _, k = lists.items.shape
    count = k if spec.max_ads is None else max(min(k, spec.max_ads), 1)
    slot, held = ad_slots(lists, count)
    ad = torch.where(held, lists.at(lists.items, lists.winner).gather(1, slot), -1)  # [N, A]
    rows = torch.arange(n, device=memory.device).repeat_interleave(count)
    without = ItemOverrides.exclusions(ad.reshape(-1, 1))
    if overrides is not None:
        without = overrides.take(rows).cat(without)
    again = decode_lists(model, memory[rows], mask[rows], organic[rows] if organic is not None else None,
                         spec, backends, catalog, overrides=without)
    best = again.list_scores.max(1).values.view(n, count)
    out = torch.full((n, k + 1), float("-inf"), dtype=torch.float64, device=memory.device)
    return out.scatter_(1, torch.where(held, slot, k), best)[:, :k]  # the spare column takes the rest
