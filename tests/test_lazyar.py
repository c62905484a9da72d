"""The LazyAR decoder against independently written references.

* split = 0 equals a plain autoregressive decoder written here from the raw weights.
* For any split, incremental per-beam decoding (tail cache, beams as cross-attention queries)
  equals teacher forcing over the whole sequence.
"""

import dataclasses
import math

import pytest
import torch

from ega_infer.model import DecoderConfig, GenerativeAdModel, ModelConfig
from ega_infer.model.encoder import History


def _model(split: int, n_layers: int = 3) -> GenerativeAdModel:
    config = ModelConfig(
        poi_codebook_sizes=(11, 7, 5), creative_codebook_sizes=(3,), d_model=32,
        decoder=DecoderConfig(n_layers=n_layers, split=split, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_slots=3),
    )
    return GenerativeAdModel.from_config(config, seed=split + 7)


def _context(model, n=3, max_len=9):
    lengths = torch.tensor([0, max_len, 4][:n])
    sizes = model.config.poi_codebook_sizes
    poi = torch.stack([torch.randint(0, s, (n, max_len)) for s in sizes], dim=-1)
    history = History(poi, torch.full((n, max_len, 1), -1), torch.zeros(n, max_len, dtype=torch.long),
                      torch.zeros(n, max_len, dtype=torch.long), lengths)
    memory, mask = model.encoder(history)
    return memory, mask


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _attention(x_q, x_kv, attn, mask):
    """Explicit multi-head attention with repeated KV heads and a boolean mask."""
    n_rep = attn.n_heads // attn.n_kv_heads
    hd = attn.head_dim
    q = (x_q @ attn.q_proj.weight.T).unflatten(-1, (attn.n_heads, hd)).transpose(1, 2)
    k = (x_kv @ attn.k_proj.weight.T).unflatten(-1, (attn.n_kv_heads, hd)).transpose(1, 2)
    v = (x_kv @ attn.v_proj.weight.T).unflatten(-1, (attn.n_kv_heads, hd)).transpose(1, 2)
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).flatten(-2) @ attn.o_proj.weight.T


def _plain_ar_logits(model, memory, mask, tokens):
    """A textbook AR decoder over positions 0..T-1: input = fuse(query_t, emb(prev token))."""
    dec, eps = model.decoder, model.config.norm_eps
    n, t = tokens.shape
    levels = dec.levels
    prev = [dec.bos.expand(n, -1)] + [dec.tok_emb[(p - 1) % levels].weight[tokens[:, p - 1]] for p in range(1, t)]
    prev = torch.stack(prev, 1)
    q = dec.queries[:t].expand(n, -1, -1)
    x = torch.cat([q * (prev @ dec.fuse_gate.weight.T), prev], -1) @ dec.fuse_out.weight.T
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    ctx_mask = mask[:, None, None, :]
    for block in dec.blocks:
        x = x + _attention(_rms(x, block.self_norm.weight, eps), _rms(x, block.self_norm.weight, eps), block.self_attn, causal)
        x = x + _attention(_rms(x, block.cross_norm.weight, eps), memory, block.cross_attn, ctx_mask)
        h = _rms(x, block.ffn_norm.weight, eps)
        f = block.ffn
        x = x + (torch.nn.functional.silu(h @ f.gate.weight.T) * (h @ f.up.weight.T)) @ f.down.weight.T
    x = _rms(x, dec.norm.weight, eps)
    return [x[:, p] @ dec.heads[p % levels].weight.T for p in range(t)]


def _tokens(model, n, t):
    sizes = model.config.poi_codebook_sizes
    return torch.stack([torch.randint(0, sizes[p % len(sizes)], (n,)) for p in range(t)], 1)


@torch.no_grad()
@pytest.mark.parametrize("t", [1, 3, 7])
def test_split_zero_is_a_plain_autoregressive_decoder(t):
    model = _model(split=0)
    memory, mask = _context(model)
    tokens = _tokens(model, 3, t)
    hidden = model.decoder(model.decoder.context(memory, mask), tokens)
    expected = _plain_ar_logits(model, memory, mask, tokens)
    for p in range(t):
        got = model.decoder.logits(hidden[:, p], p % 3)
        torch.testing.assert_close(got, expected[p], atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("split", [0, 1, 2])
def test_incremental_beams_equal_teacher_forcing(split):
    model = _model(split=split)
    dec = model.decoder
    memory, mask = _context(model)
    ctx = dec.context(memory, mask)
    n, beams, t = 3, 5, 7
    tokens = _tokens(model, n * beams, t).reshape(n, beams, t)
    # teacher forcing: every (request, beam) sequence on its own, context repeated per beam
    rep = dataclasses.replace(
        ctx, keys=[k.repeat_interleave(beams, 0) for k in ctx.keys],
        values=[v.repeat_interleave(beams, 0) for v in ctx.values], mask=ctx.mask.repeat_interleave(beams, 0),
    )
    reference = dec(rep, tokens.reshape(n * beams, t)).reshape(n, beams, t, -1)
    # incremental: beams are queries of one cross-attention call per request
    trunk = dec.trunk(ctx, t)
    cache = dec.empty_cache(n, memory.device, memory.dtype)
    cache = type(cache)([k.expand(n, beams, *k.shape[2:]) for k in cache.keys],
                        [v.expand(n, beams, *v.shape[2:]) for v in cache.values])
    prev = torch.zeros(n, beams, dtype=torch.long)
    for p in range(t):
        x = dec.fuse(trunk[:, p, None].expand(n, beams, -1), dec.token_embedding(prev, p - 1))
        hidden, cache = dec.tail_step(x, ctx, cache)
        torch.testing.assert_close(hidden, reference[:, :, p], atol=1e-5, rtol=1e-5)
        prev = tokens[:, :, p]


@torch.no_grad()
def test_trunk_does_not_depend_on_later_positions():
    model = _model(split=2)
    memory, mask = _context(model)
    ctx = model.decoder.context(memory, mask)
    torch.testing.assert_close(model.decoder.trunk(ctx, 3), model.decoder.trunk(ctx, 9)[:, :3])
