"""Exact two-stage top-k over beams x vocabulary (GR4AD "TopK pre-cut").

A parent can place at most ``k`` children in the global top-``k``, so a per-beam top-``k``
followed by a global top-``k`` over the ``beams x k`` survivors is exact. Ties are broken the
same way as a full stable sort of the flattened ``[beams * vocab]`` scores: by score
descending, then parent ascending, then token ascending, so both stages agree to the last beam.
"""

from __future__ import annotations

import torch

__all__ = ["two_stage_topk", "full_topk"]


def two_stage_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``scores [N, P, V]`` per request.

    Returns ``(values, parent, token)``, each ``[N, k]``, best first. When ``P * V < k`` the
    missing entries are ``-inf`` with parent 0 and token 0.
    """
    n, p, v = scores.shape
    per_beam = min(k, v)
    local_values, local_tokens = torch.sort(scores, dim=-1, descending=True, stable=True)
    local_values = local_values[..., :per_beam].reshape(n, p * per_beam)
    local_tokens = local_tokens[..., :per_beam].reshape(n, p * per_beam)
    values, flat = torch.sort(local_values, dim=-1, descending=True, stable=True)
    values, flat = values[:, :k], flat[:, :k]
    parent = torch.div(flat, per_beam, rounding_mode="floor")
    token = local_tokens.gather(1, flat)
    return _pad(values, parent, token, k)


def full_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one-stage reference: stable sort of all ``P * V`` candidates of each request."""
    n, p, v = scores.shape
    values, flat = torch.sort(scores.reshape(n, p * v), dim=-1, descending=True, stable=True)
    values, flat = values[:, :k], flat[:, :k]
    return _pad(values, torch.div(flat, v, rounding_mode="floor"), flat % v, k)


def _pad(values, parent, token, k):
    missing = k - values.shape[1]
    if missing > 0:
        n = values.shape[0]
        values = torch.cat([values, values.new_full((n, missing), float("-inf"))], dim=1)
        parent = torch.cat([parent, parent.new_zeros(n, missing)], dim=1)
        token = torch.cat([token, token.new_zeros(n, missing)], dim=1)
    return values, parent, token
