"""Stage 2: the reward model by binary cross entropy on simulated feedback (POI click,
creative click, conversion) of shown slates: logged slates, the same slates shuffled (so the
model must learn position and neighbour effects) and slates the trained generator serves."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..model import GenerativeAdModel
from ..world import AdWorld, feedback
from .batches import cosine_schedule

__all__ = ["train_reward"]


def train_reward(
    model: GenerativeAdModel,
    world: AdWorld,
    slates: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    """``slates``: (users [R], pois [R, K], creatives [R, K]) groups shown to users; fresh
    feedback is sampled for every batch, so the model fits click probabilities, not one draw."""
    rng = np.random.default_rng(seed)
    users = np.concatenate([s[0] for s in slates])
    pois = np.concatenate([s[1] for s in slates])
    creatives = np.concatenate([s[2] for s in slates])
    poi_codes = torch.as_tensor(world.poi_codes)
    creative_codes = torch.as_tensor(world.creative_codes)
    is_ad = torch.as_tensor(world.is_ad)
    params = list(model.reward.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = cosine_schedule(optimizer, steps)
    model.reward.train()
    for step in range(steps):
        rows = rng.integers(0, len(users), batch_size)
        p, c = pois[rows], creatives[rows]
        labels = torch.as_tensor(np.stack(feedback(world, users[rows], p, c, rng), axis=-1), dtype=torch.float32)
        filled = torch.ones(p.shape, dtype=torch.bool)
        probs, _ = model.reward(poi_codes[p], creative_codes[c], is_ad[p], filled)
        loss = F.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"reward    step {step:5d}  bce {loss.item():.4f}")
    model.reward.eval()
