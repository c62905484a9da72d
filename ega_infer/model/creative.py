"""Creative head in multi-token-prediction style (EGA-V2 MTP module).

For a chosen POI: ``m = W [RMSNorm(h) ; RMSNorm(g)]`` with ``h`` the decoder hidden state that
emitted the POI's last code and ``g`` the POI's embedding; ``m`` starts a short causal sequence
over the creative's code levels (one decoder block with cross-attention to the context), and a
head per level scores the next code. A creative's score is the sum of its level log-probs; the
caller restricts the choice to the creatives the POI owns.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .decoder import DecoderContext
from .layers import DecoderBlock, Linear, RMSNorm

__all__ = ["CreativeHead"]


class CreativeHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, cfg = config.d_model, config.creative
        self.levels = config.creative_levels
        self.norm_hidden = RMSNorm(d, config.norm_eps)
        self.norm_poi = RMSNorm(d, config.norm_eps)
        self.proj = Linear(2 * d, d, bias=False)
        self.code_emb = nn.ModuleList(nn.Embedding(v, d) for v in config.creative_codebook_sizes)
        self.pos = nn.Parameter(torch.randn(self.levels, d) * 0.02)
        self.block = DecoderBlock(d, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, config.norm_eps)
        self.norm = RMSNorm(d, config.norm_eps)
        self.heads = nn.ModuleList(Linear(d, v, bias=False) for v in config.creative_codebook_sizes)

    def context(self, memory: torch.Tensor, mask: torch.Tensor) -> DecoderContext:
        k, v = self.block.context_kv(memory)
        return DecoderContext([k], [v], mask[:, None, None, :], mask.sum(-1))

    def score(
        self,
        ctx: DecoderContext,
        hidden: torch.Tensor,
        poi_emb: torch.Tensor,
        codes: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probability of each creative.

        hidden, poi_emb : [N, P, d] for P chosen POIs of each request.
        codes : [N, P, M, Cc] codes of up to M candidate creatives per POI (-1 = padding).
        Returns [N, P, M]; padded creatives get ``-inf``.
        """
        n, p, m, levels = codes.shape
        start = self.proj(torch.cat([self.norm_hidden(hidden), self.norm_poi(poi_emb)], dim=-1))
        safe = codes.clamp(min=0)
        steps = [start[:, :, None, :].expand(n, p, m, -1)]
        steps += [self.code_emb[j - 1](safe[..., j - 1]) for j in range(1, levels)]
        x = torch.stack(steps, dim=3) + self.pos  # [N, P, M, Cc, d]

        block = self.block
        h = block.self_norm(x)
        k, v = block.self_attn.project_kv(h)
        causal = torch.ones(levels, levels, dtype=torch.bool, device=x.device).tril()
        x = x + block.self_attn.attend(block.self_attn.project_q(h), k, v, causal)
        # every (POI, creative, level) query of a request reads its context in one call
        x = block.cross(x.reshape(n, p * m * levels, -1), ctx.keys[0], ctx.values[0], ctx.mask)
        x = x.reshape(n, p, m, levels, -1)
        x = x + block.ffn(block.ffn_norm(x))

        x = self.norm(x)
        logp = torch.zeros(n, p, m, device=x.device, dtype=torch.float32)
        for j, head in enumerate(self.heads):
            level_logp = torch.log_softmax(head(x[..., j, :]).float(), dim=-1)
            logp = logp + level_logp.gather(-1, safe[..., j : j + 1]).squeeze(-1)
        return logp.masked_fill((codes < 0).any(-1), float("-inf"))
