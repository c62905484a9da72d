"""Everything after the encoder, for one batch: decode the candidate lists, choose creatives,
score the lists with the reward model, select the winners, price them.

Fixed shapes and no host synchronisation, so ``runtime/graphs.py`` captures the whole stage in
one CUDA graph; the engine runs it eagerly (and times its stages) everywhere else.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from .auction.lists import CandidateLists
from .catalog.device import DeviceCatalog
from .decoding import DecodeSpec, beam_search
from .model import GenerativeAdModel
from .ops import OpBackends
from .post import choose_creatives, network_prices, score_lists

__all__ = ["decode_to_payments"]

Timer = Callable[[str], ContextManager]


def _untimed(stage: str) -> ContextManager:
    return nullcontext()


@torch.no_grad()
def decode_to_payments(model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
                       spec: DecodeSpec, backends: OpBackends, catalog: DeviceCatalog,
                       timer: Timer = _untimed) -> CandidateLists:
    """The batch's ``CandidateLists`` with every field filled, from the encoder's ``memory
    [N, S, d]`` and ``mask [N, S]`` and the requests' organic rows ``[N, M]`` (-1 pad)."""
    with timer("decode"):
        ctx = model.decoder.context(memory, mask)
        lists = beam_search(model.decoder, ctx, catalog, spec, backends, organic)
    with timer("creative"):
        lists.creative_rows = (choose_creatives(model, memory, mask, lists, catalog) if spec.choose_creatives
                               else torch.full_like(lists.items, -1))
    with timer("reward"):
        lists.probs, lists.slot_repr = score_lists(model.reward, lists, catalog)
        lists.select()
    with timer("payment"):
        lists.payment = network_prices(model.payment, lists, lists.winner)
    return lists
