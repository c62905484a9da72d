"""User encoder: the behaviour history becomes the context memory every beam reads.

One token per behaviour (the sum of its POI-code, creative-code, action, time-bucket and
position embeddings) behind a learned user token, so a request with an empty history still
has one context position. Histories of different lengths are padded and masked.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import EncoderBlock, RMSNorm

__all__ = ["UserEncoder", "History"]


class History:
    """A padded batch of behaviour histories (tensors on one device).

    poi_codes [N, S, C], creative_codes [N, S, Cc] (-1 = unknown creative), actions [N, S],
    time_buckets [N, S], lengths [N]. Rows are oldest first; positions ``>= lengths[n]`` are padding.
    """

    __slots__ = ("poi_codes", "creative_codes", "actions", "time_buckets", "lengths")

    def __init__(self, poi_codes, creative_codes, actions, time_buckets, lengths) -> None:
        self.poi_codes = poi_codes
        self.creative_codes = creative_codes
        self.actions = actions
        self.time_buckets = time_buckets
        self.lengths = lengths


class UserEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, enc = config.d_model, config.encoder
        self.max_history = enc.max_history
        self.poi_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.poi_codebook_sizes)
        self.creative_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.creative_codebook_sizes)
        self.action_emb = nn.Embedding(enc.n_actions, d)
        self.time_emb = nn.Embedding(enc.n_time_buckets, d)
        self.pos_emb = nn.Embedding(enc.max_history, d)
        self.user_token = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(
            EncoderBlock(d, enc.n_heads, enc.n_kv_heads, enc.ffn_hidden, config.norm_eps)
            for _ in range(enc.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps)

    def embed(self, history: History) -> torch.Tensor:
        x = self.action_emb(history.actions) + self.time_emb(history.time_buckets)
        for level, emb in enumerate(self.poi_emb):
            x = x + emb(history.poi_codes[..., level])
        for level, emb in enumerate(self.creative_emb):
            code = history.creative_codes[..., level]
            x = x + emb(code.clamp(min=0)) * (code >= 0).unsqueeze(-1).to(x.dtype)
        positions = torch.arange(x.shape[1], device=x.device)
        return x + self.pos_emb(positions)

    def forward(self, history: History) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the context memory ``[N, 1 + S, d]`` and its key mask ``[N, 1 + S]`` (True = real)."""
        tokens = self.embed(history)
        n = tokens.shape[0]
        user = self.user_token.to(tokens.dtype).expand(n, 1, -1)
        x = torch.cat([user, tokens], dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        mask = positions[None, :] <= history.lengths[:, None]
        attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x), mask
