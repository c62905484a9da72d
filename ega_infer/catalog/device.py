"""A catalog's arrays on one device: what decoding and the post-stages read.

Built once per (catalog, device) and cached on the catalog (``Catalog.on_device``), so an
engine swapping catalogs builds the device copy before the swap and every batch of a catalog
shares it. Shapes that depend on the data (the widest node per trie level, the largest leaf,
the most creatives of an item) are host ints read here, once, so serving never synchronises
with the device to size a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .trie import DeviceTrie

__all__ = ["DeviceCatalog"]


@dataclass(frozen=True, eq=False)
class DeviceCatalog:
    """trie: the POI trie; is_ad [N] bool, bids [N] float32 (0 for organic items);
    creative_ptr [N + 1] int64 (item i owns creative rows ``creative_ptr[i] ..
    creative_ptr[i+1] - 1``); creative_codes [M + 1, Cc] int64 whose last row is all -1, so the
    gather of row -1 ("no creative") reads "no codes" even in a catalog without creatives;
    max_creatives: the most creatives any item owns."""

    trie: DeviceTrie
    is_ad: torch.Tensor
    bids: torch.Tensor
    creative_ptr: torch.Tensor
    creative_codes: torch.Tensor
    max_creatives: int

    @classmethod
    def build(cls, catalog, device: torch.device) -> DeviceCatalog:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.ascontiguousarray(a), device=device)  # a copy: catalog arrays are read-only

        none = np.full((1, len(catalog.creative_codebook_sizes)), -1, np.int64)
        return cls(
            trie=DeviceTrie(catalog.trie, catalog.codebook_sizes, device),
            is_ad=t(catalog.is_ad),
            bids=t(catalog.bids),
            creative_ptr=t(catalog.creative_ptr),
            creative_codes=t(np.concatenate([catalog.creative_codes.astype(np.int64), none])),
            max_creatives=int(np.diff(catalog.creative_ptr).max(initial=0)),
        )
