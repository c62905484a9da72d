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

__all__ = ["UserEncoder", "History", "packed_layout"]


class History:
    """A padded batch of behaviour histories (tensors on one device).

    poi_codes [N, S, C], creative_codes [N, S, Cc] (-1 = unknown creative), actions [N, S],
    time_buckets [N, S], lengths [N]. Rows are oldest first; positions ``>= lengths[n]`` are padding.

    ``packing`` (optional, built on the host by ``collate``): the packed layout of the encoder's
    ``1 + S`` positions without padding, ``(index [T] into the flattened [N, 1 + S] positions,
    cu_seqlens [N + 1] int32)``; derived from ``lengths`` (one host sync) when absent.
    """

    __slots__ = ("poi_codes", "creative_codes", "actions", "time_buckets", "lengths", "packing")

    def __init__(self, poi_codes, creative_codes, actions, time_buckets, lengths, packing=None) -> None:
        self.poi_codes = poi_codes
        self.creative_codes = creative_codes
        self.actions = actions
        self.time_buckets = time_buckets
        self.lengths = lengths
        self.packing = packing


def packed_layout(lengths, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, cu_seqlens)`` of rows holding ``1 + lengths[n]`` real positions out of ``width``."""
    counts = torch.as_tensor(lengths).long().cpu() + 1
    rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    index = rows * width + torch.arange(len(rows)) - first
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]).int()
    return index, cu_seqlens


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

    def forward(self, history: History, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the context memory ``[N, 1 + S, d]`` and its key mask ``[N, 1 + S]`` (True = real).

        ``backend=None`` (training, teacher forcing): the padded batch through PyTorch's SDPA,
        differentiable. A concrete op backend (``"torch" | "triton" | "cuda"``, serving): the
        histories packed without padding through the ``prefill_attention`` op with that
        backend (``"torch"`` its PyTorch reference); padding positions of the memory are then
        zeros (they are masked everywhere)."""
        tokens = self.embed(history)
        n = tokens.shape[0]
        user = self.user_token.to(tokens.dtype).expand(n, 1, -1)
        x = torch.cat([user, tokens], dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        mask = positions[None, :] <= history.lengths[:, None]
        if backend is not None:
            return self._forward_packed(x, history, backend), mask
        attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x), mask

    def _forward_packed(self, x: torch.Tensor, history: History, backend: str) -> torch.Tensor:
        n, width, d = x.shape
        index, cu_seqlens = history.packing or packed_layout(history.lengths, width)
        index, cu_seqlens = index.to(x.device), cu_seqlens.to(x.device)
        flat = x.reshape(n * width, d)
        packed = flat[index]
        for block in self.blocks:
            packed = block.forward_packed(packed, cu_seqlens, backend)
        return torch.zeros_like(flat).index_copy(0, index, self.norm(packed)).view(n, width, d)
