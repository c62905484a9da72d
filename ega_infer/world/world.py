"""A deterministic synthetic advertising world, generated from a seed.

* POIs belong to categories; a POI's feature vector is its category centre plus noise, and its
  semantic ID comes from residual k-means over those features, so codes carry meaning.
* Each POI owns 1..max_creatives creatives with their own features, codes and appeal.
* A share of POIs are ads; each advertiser has a private per-click value and bids it.
* Users have a few latent interest categories; their histories and next interactions are
  drawn from those interests; each request carries a pre-ranked organic list.
* Clicks: position bias x relevance x creative appeal x neighbour effects (an item next to one
  of the same category, or an ad next to an ad, is clicked less).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalog import Catalog
from ..exceptions import ConfigError
from ..model.config import ModelConfig
from ..request import Request
from .semantic_ids import residual_kmeans

__all__ = ["WorldConfig", "AdWorld", "feedback"]


@dataclass(frozen=True, slots=True)
class WorldConfig:
    seed: int = 0
    n_categories: int = 16
    n_pois: int = 2000
    ad_fraction: float = 0.35
    max_creatives: int = 4
    feature_dim: int = 16
    n_users: int = 3000
    test_fraction: float = 0.2
    max_interests: int = 3
    min_history: int = 8
    organic_per_request: int = 8
    value_sigma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("n_categories", "n_pois", "max_creatives", "feature_dim", "n_users", "max_interests",
                     "min_history", "organic_per_request"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"world.{name}", f"is {value!r}", "a positive integer")
        for name in ("ad_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"world.{name}", f"is {value!r}", "a number in (0, 1)")


class AdWorld:
    """All arrays are numpy; rows index POIs (``poi_*``), creatives (``creative_*``) and users."""

    def __init__(self, config: WorldConfig, model: ModelConfig) -> None:
        self.config = config
        self.model_config = model
        rng = np.random.default_rng(config.seed)
        c, f, p = config.n_categories, config.feature_dim, config.n_pois

        self.category_centers = rng.normal(0, 1, (c, f))
        self.category_popularity = rng.dirichlet(np.full(c, 2.0))
        self.poi_category = rng.choice(c, size=p, p=self.category_popularity)
        self.poi_features = self.category_centers[self.poi_category] + rng.normal(0, 0.35, (p, f))
        self.poi_quality = rng.beta(2, 2, p)
        self.is_ad = rng.random(p) < config.ad_fraction
        self.values = np.where(self.is_ad, np.round(rng.lognormal(0, config.value_sigma, p), 2).clip(0.05), 0.0)
        self.bids = self.values.copy()  # truthful by default

        counts = rng.integers(1, config.max_creatives + 1, p)
        self.creative_poi = np.repeat(np.arange(p), counts)
        m = len(self.creative_poi)
        self.creative_features = 0.5 * self.poi_features[self.creative_poi] + rng.normal(0, 0.5, (m, f))
        self.creative_appeal = rng.uniform(0.6, 1.4, m)

        self.poi_codes = residual_kmeans(self.poi_features, model.poi_codebook_sizes, seed=config.seed)
        self.creative_codes = residual_kmeans(self.creative_features, model.creative_codebook_sizes, seed=config.seed + 1)
        self.poi_ids = 100_000 + np.arange(p)
        self.creative_ids = 500_000 + np.arange(m)

        u = config.n_users
        self.user_interest = np.zeros((u, c))
        for user in range(u):
            k = int(rng.integers(1, config.max_interests + 1))
            cats = rng.choice(c, size=k, replace=False, p=self.category_popularity)
            self.user_interest[user, cats] = rng.dirichlet(np.full(k, 1.0))
        self.is_test_user = rng.random(u) < config.test_fraction
        self._affinity = self._affinity_matrix()

        self.histories = [self._behaviours(rng, user, int(rng.integers(config.min_history, model.encoder.max_history + 1)))
                          for user in range(u)]
        self.next_items = np.array([self._sample_items(rng, user, 1)[0] for user in range(u)])
        self.organic_lists = [self._organic_list(rng, user) for user in range(u)]

    # -- the world's ground truth ------------------------------------------------------------
    def _affinity_matrix(self) -> np.ndarray:
        """User x POI affinity: interest weight of the POI's category plus taste similarity."""
        taste = self.user_interest @ self.category_centers
        taste /= np.linalg.norm(taste, axis=1, keepdims=True) + 1e-9
        feats = self.poi_features / np.linalg.norm(self.poi_features, axis=1, keepdims=True)
        return self.user_interest[:, self.poi_category] + 0.3 * taste @ feats.T

    def relevance(self, users: np.ndarray, pois: np.ndarray) -> np.ndarray:
        """Click probability of a POI in the top slot with a neutral creative."""
        z = 5.0 * self._affinity[users, pois] + 1.5 * (self.poi_quality[pois] - 0.5) - 3.0
        return 1 / (1 + np.exp(-z))

    def click_prob(self, users: np.ndarray, pois: np.ndarray, creatives: np.ndarray) -> np.ndarray:
        """Click probabilities of slates ``pois [R, K]`` with ``creatives [R, K]`` (-1 = none)."""
        p = self.relevance(users[:, None], pois) * self.position_bias(pois.shape[1])
        p = p * np.where(creatives >= 0, self.creative_appeal[np.maximum(creatives, 0)], 1.0)
        cat, ad = self.poi_category[pois], self.is_ad[pois]
        same = np.zeros_like(p, dtype=bool)
        ad_next = np.zeros_like(p, dtype=bool)
        same[:, 1:] |= cat[:, 1:] == cat[:, :-1]
        same[:, :-1] |= cat[:, :-1] == cat[:, 1:]
        ad_next[:, 1:] |= ad[:, 1:] & ad[:, :-1]
        ad_next[:, :-1] |= ad[:, :-1] & ad[:, 1:]
        return np.clip(p * np.where(same, 0.75, 1.0) * np.where(ad_next, 0.85, 1.0), 0, 0.95)

    @staticmethod
    def position_bias(k: int) -> np.ndarray:
        """Click-probability discount of slots ``0..k-1``."""
        return 1.0 / (1.0 + 0.3 * np.arange(k))

    def interest_hit(self, users: np.ndarray, pois: np.ndarray) -> np.ndarray:
        """Whether each POI ``[R, K]`` (-1 = none) is in one of its user's interest categories."""
        hit = self.user_interest[users[:, None], self.poi_category[np.maximum(pois, 0)]] > 0
        return hit & (pois >= 0)

    # -- sampling ----------------------------------------------------------------------------
    def _sample_items(self, rng: np.random.Generator, user: int, n: int) -> np.ndarray:
        logits = 4.0 * self._affinity[user] + np.log(self.poi_quality + 1e-3)
        prob = np.exp(logits - logits.max())
        return rng.choice(len(prob), size=n, p=prob / prob.sum())

    def _creative_of(self, rng: np.random.Generator, pois: np.ndarray) -> np.ndarray:
        starts = np.searchsorted(self.creative_poi, pois)
        ends = np.searchsorted(self.creative_poi, pois, side="right")
        return starts + (rng.random(len(pois)) * (ends - starts)).astype(np.int64)

    def _behaviours(self, rng: np.random.Generator, user: int, length: int):
        pois = self._sample_items(rng, user, length)
        creatives = self._creative_of(rng, pois)
        actions = rng.choice(self.model_config.encoder.n_actions, size=length, p=_action_probs(self.model_config.encoder.n_actions))
        times = np.sort(rng.integers(0, self.model_config.encoder.n_time_buckets, length))
        return pois, creatives, actions, times

    def _organic_list(self, rng: np.random.Generator, user: int) -> np.ndarray:
        organic = np.flatnonzero(~self.is_ad)
        logits = 3.0 * self._affinity[user, organic]
        prob = np.exp(logits - logits.max())
        pool = rng.choice(organic, size=min(4 * self.config.organic_per_request, len(organic)), replace=False, p=prob / prob.sum())
        gmv = self.relevance(np.full(len(pool), user), pool) * self.poi_quality[pool]
        return pool[np.argsort(-gmv, kind="stable")][: self.config.organic_per_request]

    # -- views for the engine ----------------------------------------------------------------
    def users(self, split: str) -> np.ndarray:
        if split not in ("train", "test"):
            raise ConfigError("split", f"is {split!r}", "'train' or 'test'")
        return np.flatnonzero(self.is_test_user == (split == "test"))

    def catalog(self) -> Catalog:
        return Catalog.from_arrays(
            self.poi_ids, self.poi_codes, self.is_ad, self.bids,
            codebook_sizes=self.model_config.poi_codebook_sizes,
            creative_codebook_sizes=self.model_config.creative_codebook_sizes,
            creative_item_ids=self.poi_ids[self.creative_poi], creative_ids=self.creative_ids,
            creative_codes=self.creative_codes,
        )

    def request(self, user: int) -> Request:
        pois, creatives, actions, times = self.histories[user]
        return Request(
            history_poi_codes=self.poi_codes[pois],
            history_creative_codes=self.creative_codes[creatives],
            history_actions=actions,
            history_time_buckets=times,
            organic_items=self.poi_ids[self.organic_lists[user]],
            request_id=f"user-{user}",
        )

    def popularity(self) -> np.ndarray:
        """How often each POI appears in the training users' histories."""
        counts = np.zeros(self.config.n_pois)
        for user in self.users("train"):
            np.add.at(counts, self.histories[user][0], 1)
        return counts


def _action_probs(n: int) -> np.ndarray:
    # mostly clicks (action 0), then rarer deeper actions
    p = 0.5 ** np.arange(n)
    return p / p.sum()


def feedback(world: AdWorld, users: np.ndarray, pois: np.ndarray, creatives: np.ndarray, rng: np.random.Generator):
    """Simulated feedback on shown slates ``[R, K]``: POI clicks, creative clicks (a click on
    the image itself, likelier for appealing creatives) and conversions (likelier for
    high-quality POIs). Returns three bool arrays ``[R, K]``."""
    click = rng.random(pois.shape) < world.click_prob(users, pois, creatives)
    appeal = np.where(creatives >= 0, world.creative_appeal[np.maximum(creatives, 0)], 1.0) / 1.4
    creative_click = click & (rng.random(pois.shape) < appeal)
    conversion = click & (rng.random(pois.shape) < 0.3 * world.poi_quality[pois])
    return click, creative_click, conversion
