"""LazyAR decoder (GR4AD): a token-independent trunk shared by every beam, a per-beam tail.

Positions are the SID levels of each slot (``position = slot * levels + level``).

* Trunk, layers ``[0, split)``: runs once per request on the learned per-position queries
  (causal self-attention across positions, cross-attention to the context).
* Fusion at layer ``split``: ``h = W_f [m ⊙ (W_g e) ; e]`` with ``e`` the embedding of the
  previous generated token (a learned BOS at position 0).
* Tail, layers ``[split, n_layers)``: runs per beam, causal self-attention over the beam's own
  earlier positions (a small per-beam cache), cross-attention to the context in which a
  request's beams are the queries of one call, so the context is never copied per beam.

``split = 0`` is a plain autoregressive decoder whose input is the fused (query, token) pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .layers import DecoderBlock, Linear, RMSNorm

__all__ = ["LazyARDecoder", "DecoderContext", "TailCache"]


@dataclass
class DecoderContext:
    """A request batch's context, projected once: per-layer cross-attention keys/values."""

    keys: list[torch.Tensor]  # per layer [N, Hkv, S, hd]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [N, 1, 1, S] bool, True = real context position
    lengths: torch.Tensor  # [N] real positions, a prefix of each row (the kernels' view of mask)


@dataclass
class TailCache:
    """Per-beam self-attention keys/values of the tail layers, ``[N, B, Hkv, t, hd]`` each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def reorder(self, parent: torch.Tensor) -> TailCache:
        """Keep, for each new beam ``[N, B]``, its parent beam's cache."""
        rows = torch.arange(parent.shape[0], device=parent.device)[:, None]
        return TailCache([k[rows, parent] for k in self.keys], [v[rows, parent] for v in self.values])


class LazyARDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, dec = config.d_model, config.decoder
        self.levels = config.levels
        self.split = dec.split
        self.n_positions = dec.max_slots * config.levels
        self.queries = nn.Parameter(torch.randn(self.n_positions, d) * 0.02)
        self.tok_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.poi_codebook_sizes)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.fuse_gate = Linear(d, d, bias=False)
        self.fuse_out = Linear(2 * d, d, bias=False)
        self.blocks = nn.ModuleList(
            DecoderBlock(d, dec.n_heads, dec.n_kv_heads, dec.ffn_hidden, config.norm_eps)
            for _ in range(dec.n_layers)
        )
        self.norm = RMSNorm(d, config.norm_eps)
        self.heads = nn.ModuleList(Linear(d, v, bias=False) for v in config.poi_codebook_sizes)

    # -- pieces shared by teacher forcing and beam decoding -------------------------------
    def context(self, memory: torch.Tensor, mask: torch.Tensor) -> DecoderContext:
        kv = [block.context_kv(memory) for block in self.blocks]
        return DecoderContext([k for k, _ in kv], [v for _, v in kv], mask[:, None, None, :], mask.sum(-1))

    def trunk(self, ctx: DecoderContext, n_positions: int) -> torch.Tensor:
        """Trunk output for the first ``n_positions`` positions, ``[N, T, d]``, once per request."""
        n = ctx.mask.shape[0]
        x = self.queries[:n_positions].expand(n, -1, -1)
        causal = _causal(n_positions, x.device)
        for layer in range(self.split):
            x = self._block_seq(layer, x, ctx, causal)
        return x

    def token_embedding(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Embedding of tokens generated at ``position`` (``position = -1`` gives BOS)."""
        if position < 0:
            return self.bos.expand(*tokens.shape, -1)
        return self.tok_emb[position % self.levels](tokens)

    def fuse(self, trunk_out: torch.Tensor, prev_emb: torch.Tensor) -> torch.Tensor:
        return self.fuse_out(torch.cat([trunk_out * self.fuse_gate(prev_emb), prev_emb], dim=-1))

    def logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        return self.heads[level](self.norm(hidden))

    def poi_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the level embeddings of full POI codes ``[..., C] -> [..., d]``."""
        return sum(emb(codes[..., level]) for level, emb in enumerate(self.tok_emb))

    # -- beam decoding ---------------------------------------------------------------------
    def empty_cache(self, n: int, device: torch.device, dtype: torch.dtype) -> TailCache:
        keys, values = [], []
        for block in self.blocks[self.split:]:
            attn = block.self_attn
            shape = (n, 1, attn.n_kv_heads, 0, attn.head_dim)
            keys.append(torch.empty(shape, device=device, dtype=dtype))
            values.append(torch.empty(shape, device=device, dtype=dtype))
        return TailCache(keys, values)

    def tail_step(self, x: torch.Tensor, ctx: DecoderContext, cache: TailCache,
                  backend: str = "torch") -> tuple[torch.Tensor, TailCache]:
        """Run the tail layers for one position of every beam: ``x [N, B, d]`` (fused input).

        Both attentions go through the ``decode_attention`` op with the concrete ``backend``
        (``"torch"``: its PyTorch reference): self-attention over the beams' own positions (an
        empty context), cross-attention with the request's beams as the queries of one call."""
        no_len = torch.zeros_like(ctx.lengths)
        keys, values = [], []
        for i, block in enumerate(self.blocks[self.split:]):
            layer = self.split + i
            h = block.self_norm(x).unsqueeze(2)  # [N, B, 1, d]
            k_new, v_new = block.self_attn.project_kv(h)  # [N, B, Hkv, 1, hd]
            k = torch.cat([cache.keys[i], k_new], dim=3)
            v = torch.cat([cache.values[i], v_new], dim=3)
            keys.append(k)
            values.append(v)
            q = block.self_attn.project_q(h)  # [N, B, H, 1, hd]
            no_ctx = k.new_empty(k.shape[0], k.shape[2], 0, k.shape[4])
            x = x + block.self_attn.attend_beams(q.squeeze(3), no_ctx, no_ctx, no_len, k, v, backend)
            q = block.cross_attn.project_q(block.cross_norm(x)).transpose(1, 2)  # [N, B, H, hd]
            x = x + block.cross_attn.attend_beams(q, ctx.keys[layer], ctx.values[layer], ctx.lengths, backend=backend)
            x = x + block.ffn(block.ffn_norm(x))
        return x, TailCache(keys, values)

    # -- teacher forcing (training, and the oracle for beam decoding) ----------------------
    def forward(self, ctx: DecoderContext, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[N, T, d]`` for target tokens ``[N, T]`` (position t sees tokens < t)."""
        n, t = tokens.shape
        m = self.trunk(ctx, t)
        prev = [self.token_embedding(tokens[:, 0], -1)]
        prev += [self.token_embedding(tokens[:, p - 1], p - 1) for p in range(1, t)]
        x = self.fuse(m, torch.stack(prev, dim=1))
        causal = _causal(t, x.device)
        for layer in range(self.split, len(self.blocks)):
            x = self._block_seq(layer, x, ctx, causal)
        return x

    def trunk_logits(self, ctx: DecoderContext, n_positions: int) -> list[torch.Tensor]:
        """Trunk output read directly by each position's level head (LazyAR auxiliary loss)."""
        m = self.trunk(ctx, n_positions)
        return [self.logits(m[:, p], p % self.levels) for p in range(n_positions)]

    def _block_seq(self, layer: int, x: torch.Tensor, ctx: DecoderContext, causal: torch.Tensor) -> torch.Tensor:
        block = self.blocks[layer]
        h = block.self_norm(x)
        k, v = block.self_attn.project_kv(h)
        x = x + block.self_attn.attend(block.self_attn.project_q(h), k, v, causal)
        x = block.cross(x, ctx.keys[layer], ctx.values[layer], ctx.mask)
        return x + block.ffn(block.ffn_norm(x))


def _causal(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()
