"""Semantic IDs from item features by residual k-means (RQ-KMeans).

Level l clusters the residual left by levels < l, so the first code is a coarse cluster (for
the synthetic world: mostly the category) and later codes refine it. Near-duplicate items
share all their codes, so SIDs collide sometimes, as real ones do.
"""

from __future__ import annotations

import numpy as np

__all__ = ["residual_kmeans"]


def residual_kmeans(features: np.ndarray, codebook_sizes: tuple[int, ...], seed: int = 0, iters: int = 25) -> np.ndarray:
    """Codes ``[N, len(codebook_sizes)]`` of ``features [N, F]``, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    residual = np.asarray(features, dtype=np.float64).copy()
    codes = np.zeros((len(residual), len(codebook_sizes)), np.int64)
    for level, k in enumerate(codebook_sizes):
        centers = _kmeans(residual, min(k, len(residual)), rng, iters)
        assign = _nearest(residual, centers)
        codes[:, level] = assign
        residual -= centers[assign]
    return codes


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    # k-means++ seeding, then Lloyd iterations; an emptied cluster is reseeded on the farthest point
    centers = [x[rng.integers(len(x))]]
    dist = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else np.full(len(x), 1 / len(x))
        centers.append(x[rng.choice(len(x), p=p)])
        dist = np.minimum(dist, ((x - centers[-1]) ** 2).sum(1))
    centers = np.stack(centers)
    for _ in range(iters):
        assign = _nearest(x, centers)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        empty = counts == 0
        centers = np.where(empty[:, None], centers, sums / np.maximum(counts, 1)[:, None])
        if empty.any():
            far = np.argsort(-((x - centers[assign]) ** 2).sum(1))[: int(empty.sum())]
            centers[empty] = x[far]
    return centers


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (x**2).sum(1)[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
    return d.argmin(1)
