"""Creative choice: for each placed POI, the creative head's best creative among those the
POI owns (a masked argmax over the owned creatives' code paths)."""

from __future__ import annotations

import torch

from ..auction.lists import CandidateLists
from ..catalog.device import DeviceCatalog
from ..model.ad_model import GenerativeAdModel

__all__ = ["choose_creatives"]


@torch.no_grad()
def choose_creatives(model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor,
                     lists: CandidateLists, catalog: DeviceCatalog) -> torch.Tensor:
    """Creative row ``[N, L, K]`` chosen for each placed item of ``lists`` (its ``items``,
    ``poi_codes`` and ``hidden``), -1 where the slot is empty or the item owns no creative.
    Shapes depend only on the catalog's widest item (``max_creatives``): no host sync."""
    items = lists.items
    n, num_lists, k = items.shape
    width = catalog.max_creatives
    if width == 0:  # a catalog without creatives
        return torch.full_like(items, -1)
    placed = items >= 0
    safe = items.clamp(min=0)
    start = catalog.creative_ptr[safe]
    count = torch.where(placed, catalog.creative_ptr[safe + 1] - start, 0)
    owned = torch.arange(width, device=items.device) < count[..., None]  # [N, L, K, M]
    rows = torch.where(owned, start[..., None] + torch.arange(width, device=items.device), -1)
    if width == 1:  # nothing to choose
        best = torch.zeros_like(items)
    else:
        codes = catalog.creative_codes[rows]  # row -1 is the catalog's all -1 row
        logp = model.creative.score(
            model.creative.context(memory, mask),
            lists.hidden.reshape(n, num_lists * k, -1),
            model.decoder.poi_embedding(lists.poi_codes.reshape(n, num_lists * k, -1)),
            codes.reshape(n, num_lists * k, width, -1),
        ).reshape(n, num_lists, k, width)
        best = logp.argmax(-1)
    return rows.gather(-1, best[..., None]).squeeze(-1)
