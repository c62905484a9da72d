"""Stage 1: the encoder, LazyAR decoder and creative head by next-token cross entropy on the
POI codes and creative codes of logged slates, plus GR4AD's auxiliary loss asking the LazyAR
trunk to predict each level directly."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..model import GenerativeAdModel
from ..world import AdWorld
from .batches import HistoryBank, cosine_schedule, logged_slates

__all__ = ["generator_loss", "train_generator"]


def generator_loss(model: GenerativeAdModel, history, poi_codes: torch.Tensor, creative_codes: torch.Tensor,
                   trunk_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """poi_codes [R, K, C] and creative_codes [R, K, Cc] of target slates."""
    r, k, levels = poi_codes.shape
    memory, mask = model.encoder(history)
    ctx = model.decoder.context(memory, mask)
    tokens = poi_codes.reshape(r, k * levels)
    hidden = model.decoder(ctx, tokens)
    poi_loss = sum(
        F.cross_entropy(model.decoder.logits(hidden[:, t], t % levels).float(), tokens[:, t]) for t in range(k * levels)
    ) / (k * levels)
    trunk_loss = torch.zeros((), device=tokens.device)
    if model.decoder.split > 0:
        trunk = model.decoder.trunk_logits(ctx, k * levels)
        trunk_loss = sum(F.cross_entropy(trunk[t].float(), tokens[:, t]) for t in range(k * levels)) / (k * levels)
    creative_ctx = model.creative.context(memory, mask)
    last = hidden[:, levels - 1 :: levels]  # state that emitted each slot's last code
    logp = model.creative.score(creative_ctx, last, model.decoder.poi_embedding(poi_codes), creative_codes[:, :, None, :])
    creative_loss = -logp.mean()
    loss = poi_loss + trunk_weight * trunk_loss + creative_loss
    parts = {"poi": poi_loss.item(), "trunk": trunk_loss.item(), "creative": creative_loss.item()}
    return loss, parts


def train_generator(
    model: GenerativeAdModel,
    world: AdWorld,
    bank: HistoryBank,
    slots: int,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> None:
    rng = np.random.default_rng(seed)
    users = world.users("train")
    params = [p for name, p in model.named_parameters() if not name.startswith(("reward.", "payment."))]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = cosine_schedule(optimizer, steps)
    poi_codes = torch.as_tensor(world.poi_codes)
    creative_codes = torch.as_tensor(world.creative_codes)
    model.train()
    for step in range(steps):
        batch = rng.choice(users, size=batch_size, replace=False)
        pois, creatives = logged_slates(world, batch, slots, rng)
        loss, parts = generator_loss(model, bank.batch(batch, torch.device("cpu")), poi_codes[pois], creative_codes[creatives])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"generator step {step:5d}  loss {loss.item():.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    model.eval()
