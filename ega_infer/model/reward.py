"""Permutation-aware reward model (EGA-V2 Eq. 18-20).

Each slot is the sum of its POI-code and creative-code embeddings plus slot-position and
ad-flag embeddings; self-attention across the slots lets a slot's predictions depend on its
neighbours and position; three sigmoid towers give pCTR of the POI, pCTR of the creative and
pCVR per slot.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import MLP, EncoderBlock, RMSNorm, rowwise

__all__ = ["RewardModel", "REWARD_TASKS"]

REWARD_TASKS = ("pctr_poi", "pctr_creative", "pcvr")


class RewardModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = config.reward
        d = cfg.d_model
        self.poi_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.poi_codebook_sizes)
        self.creative_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.creative_codebook_sizes)
        self.slot_emb = nn.Embedding(config.decoder.max_slots, d)
        self.ad_emb = nn.Embedding(2, d)
        self.blocks = nn.ModuleList(
            EncoderBlock(d, cfg.n_heads, cfg.n_heads, cfg.ffn_hidden, config.norm_eps)
            for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps)
        self.towers = nn.ModuleList(MLP(d, cfg.tower_hidden) for _ in REWARD_TASKS)

    def forward(
        self,
        poi_codes: torch.Tensor,
        creative_codes: torch.Tensor,
        is_ad: torch.Tensor,
        filled: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score lists.

        poi_codes [L, K, C], creative_codes [L, K, Cc] (-1 = none), is_ad [L, K] bool,
        filled [L, K] bool (False = empty slot, ignored by attention).
        Returns probabilities ``[L, K, 3]`` (see ``REWARD_TASKS``) and slot representations
        ``[L, K, d]`` (the payment network's input).
        """
        k = poi_codes.shape[1]
        x = self.slot_emb(torch.arange(k, device=poi_codes.device)) + self.ad_emb(is_ad.long())
        for level, emb in enumerate(self.poi_emb):
            x = x + emb(poi_codes[..., level].clamp(min=0))
        for level, emb in enumerate(self.creative_emb):
            code = creative_codes[..., level]
            x = x + emb(code.clamp(min=0)) * (code >= 0).unsqueeze(-1).to(x.dtype)
        # a list with no filled slot still needs one key to attend to
        keys = filled.clone()
        keys[:, 0] |= ~filled.any(-1)
        mask = keys[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        probs = torch.stack([rowwise(torch.sigmoid, tower(x).float()) for tower in self.towers], dim=-1)
        return probs, x
