"""Deterministic synthetic catalogs and requests for a model config: the fixtures of the tests
and the inputs of the benchmarks (``ega_infer.world`` is the full synthetic ad world with a
click model, which the demo and the trained default use)."""

from __future__ import annotations

import numpy as np

from .catalog import Catalog
from .model.config import ModelConfig
from .request import Request

__all__ = ["synthetic_catalog", "synthetic_requests"]


def synthetic_catalog(
    config: ModelConfig,
    n_items: int = 2000,
    ad_fraction: float = 0.3,
    max_creatives: int = 4,
    seed: int = 0,
) -> Catalog:
    """Items whose codes cluster (so prefixes are shared and some SIDs collide), lognormal
    bids for ads, and 1..max_creatives creatives per item."""
    rng = np.random.default_rng(seed)
    sizes = config.poi_codebook_sizes
    codes = np.empty((n_items, len(sizes)), np.int64)
    for level, size in enumerate(sizes):
        # a skewed first level and narrow deeper levels make a realistic, collision-prone trie
        spread = max(1, size // (4 if level else 1))
        codes[:, level] = np.minimum(rng.zipf(1.3, n_items) - 1, spread - 1) if level == 0 else rng.integers(0, spread, n_items)
    is_ad = rng.random(n_items) < ad_fraction
    bids = np.where(is_ad, np.round(rng.lognormal(0.0, 0.6, n_items), 2), 0.0)
    counts = rng.integers(1, max_creatives + 1, n_items)
    creative_item = np.repeat(np.arange(n_items), counts)
    creative_codes = np.stack(
        [rng.integers(0, size, len(creative_item)) for size in config.creative_codebook_sizes], axis=1
    )
    item_ids = 100_000 + np.arange(n_items)
    return Catalog.from_arrays(
        item_ids, codes, is_ad, bids,
        codebook_sizes=sizes, creative_codebook_sizes=config.creative_codebook_sizes,
        creative_item_ids=item_ids[creative_item], creative_ids=500_000 + np.arange(len(creative_item)),
        creative_codes=creative_codes,
    )


def synthetic_requests(
    catalog: Catalog,
    config: ModelConfig,
    n: int = 4,
    n_organic: int = 8,
    seed: int = 0,
) -> list[Request]:
    """Requests with histories of catalog behaviours (random lengths) and pre-ranked organic items."""
    rng = np.random.default_rng(seed)
    organic_ids = catalog.item_ids[~catalog.is_ad]
    requests = []
    for r in range(n):
        length = int(rng.integers(0, config.encoder.max_history + 1))
        rows = rng.integers(0, len(catalog), length)
        first_creative = catalog.creative_ptr[rows]
        owns = catalog.creative_ptr[rows + 1] > first_creative
        creative = np.where(owns[:, None], catalog.creative_codes[np.minimum(first_creative, max(len(catalog.creative_codes) - 1, 0))], -1) if len(catalog.creative_codes) else np.full((length, config.creative_levels), -1)
        organic = rng.choice(organic_ids, size=min(n_organic, len(organic_ids)), replace=False)
        requests.append(Request(
            history_poi_codes=catalog.poi_codes[rows],
            history_creative_codes=creative,
            history_actions=rng.integers(0, config.encoder.n_actions, length),
            history_time_buckets=np.sort(rng.integers(0, config.encoder.n_time_buckets, length)),
            organic_items=organic,
            request_id=f"req-{r}",
        ))
    return requests
