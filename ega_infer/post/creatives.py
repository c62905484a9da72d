"""Creative choice: for each placed POI, the creative head's best creative among those the
POI owns (a masked argmax over the owned creatives' code paths)."""

from __future__ import annotations

import torch

from ..model.ad_model import GenerativeAdModel
from ..model.decoder import DecoderContext

__all__ = ["choose_creatives"]


@torch.no_grad()
def choose_creatives(
    model: GenerativeAdModel,
    ctx: DecoderContext,
    items: torch.Tensor,
    poi_codes: torch.Tensor,
    hidden: torch.Tensor,
    creative_ptr: torch.Tensor,
    creative_codes: torch.Tensor,
    max_creatives: int,
) -> torch.Tensor:
    """Creative row chosen for each placed item.

    items [N, L, K] catalog rows (-1 = empty), poi_codes [N, L, K, C], hidden [N, L, K, d];
    creative_ptr [n_items + 1] and creative_codes [n_creatives, Cc] from the catalog;
    max_creatives: the most creatives any item owns (a host int: shapes stay fixed, no sync).
    Returns [N, L, K] creative rows, -1 where the slot is empty or the item has no creative.
    """
    n, lists, k = items.shape
    placed = items >= 0
    safe = items.clamp(min=0)
    start = creative_ptr[safe]
    count = torch.where(placed, creative_ptr[safe + 1] - start, 0)
    width = max_creatives
    if width == 0:
        return torch.full_like(items, -1)
    offset = torch.arange(width, device=items.device)
    owned = offset < count[..., None]  # [N, L, K, M]
    rows = (start[..., None] + offset).clamp(max=creative_codes.shape[0] - 1)
    if width == 1:  # nothing to choose
        best = torch.zeros_like(items)
    else:
        codes = torch.where(owned[..., None], creative_codes[rows].long(), -1)
        logp = model.creative.score(
            ctx,
            hidden.reshape(n, lists * k, -1),
            model.decoder.poi_embedding(poi_codes.reshape(n, lists * k, -1)),
            codes.reshape(n, lists * k, width, -1),
        ).reshape(n, lists, k, width)
        best = logp.argmax(-1)
    return torch.where(count > 0, rows.gather(-1, best[..., None]).squeeze(-1), -1)
