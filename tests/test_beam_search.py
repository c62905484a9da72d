"""Constrained beam search against independent oracles.

* Width 1 equals a greedy decoder written here (Python sets for the trie and the slate rules,
  teacher forcing for the logits).
* With a width at least the number of SIDs nothing is pruned: the beams are exactly the
  catalog's SIDs, each scored with its exact bid-weighted path log-probability.
* On random catalogs (fewer items than beams included) every emitted SID is in the catalog
  and every slate obeys the slate rules.
"""

import math

import numpy as np
import pytest
import torch

from ega_infer import Catalog, DecodeConfig
from ega_infer.decoding import beam_search
from ega_infer.model import DecoderConfig, EncoderConfig, GenerativeAdModel, ModelConfig
from ega_infer.model.encoder import History
from ega_infer.ops import OpBackends

SIZES = (6, 5, 4)


def _model(split=1, sizes=SIZES, max_slots=5):
    config = ModelConfig(
        poi_codebook_sizes=sizes, creative_codebook_sizes=(3, 2), d_model=32,
        encoder=EncoderConfig(n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=32, max_history=8),
        decoder=DecoderConfig(n_layers=3, split=split, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_slots=max_slots),
    )
    model = GenerativeAdModel.from_config(config, seed=3)
    # larger weights spread the log-probs so near-ties cannot flip under float noise
    with torch.no_grad():
        for head in model.decoder.heads:
            head.weight.mul_(8.0)
    return model


def _catalog(n_items, sizes=SIZES, ad_fraction=0.5, seed=0, collide=True):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s if collide else s, n_items) for s in sizes], 1)
    is_ad = rng.random(n_items) < ad_fraction
    bids = np.where(is_ad, np.round(rng.uniform(0.1, 5.0, n_items), 2), 0.0)
    ids = np.arange(n_items) + 1000
    return Catalog.from_arrays(ids, codes, is_ad, bids, codebook_sizes=sizes, creative_codebook_sizes=(3, 2))


def _context(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.config.encoder.max_history
    poi = torch.stack([torch.randint(0, v, (n, s), generator=g) for v in model.config.poi_codebook_sizes], -1)
    lengths = torch.randint(0, s + 1, (n,), generator=g)
    history = History(poi, torch.full((n, s, 2), -1), torch.zeros(n, s, dtype=torch.long),
                      torch.zeros(n, s, dtype=torch.long), lengths)
    memory, mask = model.encoder(history)
    return memory, mask, model.decoder.context(memory, mask)


def _decode(model, ctx, catalog, config, organic=None, backend="torch", device="cpu"):
    """The final beams: ``(scores [N, B], items [N, B, K], codes [N, B, K, C])``. Candidates
    mode reports the list of the best ``num_slots`` beams, so its configs ask for as many
    slots as beams to see every beam."""
    backends = OpBackends(backend, backend, "torch" if backend == "cuda" else backend)
    lists = beam_search(model.decoder, ctx, catalog.on_device(device), config.spec(), backends, organic)
    if config.mode == "lists":
        return lists.beam_scores, lists.beam_items, lists.poi_codes
    k = lists.poi_codes.shape[2]
    return lists.beam_scores[:, :k], lists.beam_items[:, :k], lists.poi_codes[:, 0, :, None]


def _weight(catalog, prefix, alpha, beta):
    """log(max ad bid under prefix ** alpha + beta), straight from the item arrays."""
    match = np.all(catalog.poi_codes[:, : len(prefix)] == np.asarray(prefix, dtype=np.int64), axis=1) & catalog.is_ad
    max_bid = float(catalog.bids[match].max()) if match.any() else 0.0
    value = max_bid ** alpha + beta
    return math.log(value) if value > 0 else -math.inf


def _level_logits(model, memory, mask, request, tokens):
    """Teacher-forced logits of the next position after ``tokens`` for one request."""
    ctx = model.decoder.context(memory[request : request + 1], mask[request : request + 1])
    t = len(tokens)
    padded = torch.tensor([tokens + [0]], dtype=torch.long)
    hidden = model.decoder(ctx, padded)
    return model.decoder.logits(hidden[:, t], t % model.config.levels)[0]


def _greedy_lists(model, catalog, memory, mask, request, organic, config):
    """Width-1 decoding of a slate, written from the slate rules (the lists-mode contract of ``DecodeConfig``)."""
    levels = catalog.levels
    tokens, placed, last_ad = [], [], -(10**6)
    organic_rows = list(catalog.index_of(organic))
    next_organic = 0
    for slot in range(config.num_slots):
        ads_ok = (
            slot not in config.forbidden_ad_slots
            and slot - last_ad - 1 >= config.min_gap
            and (config.max_ads is None or sum(catalog.is_ad[r] for r in placed) < config.max_ads)
        )
        admissible = {int(r) for r in np.flatnonzero(catalog.is_ad) if ads_ok and r not in placed}
        if next_organic < len(organic_rows):
            admissible.add(int(organic_rows[next_organic]))
        prefix = []
        for level in range(levels):
            codes = {int(catalog.poi_codes[r, level]) for r in admissible if list(catalog.poi_codes[r, :level]) == prefix}
            if not codes:
                return None
            logits = _level_logits(model, memory, mask, request, tokens)
            scored = {c: float(logits[c]) + _weight(catalog, prefix + [c], config.alpha, config.beta) for c in sorted(codes)}
            best = max(scored, key=lambda c: (scored[c], -c))
            prefix.append(best)
            tokens.append(best)
        leaf = [r for r in admissible if list(catalog.poi_codes[r]) == prefix]
        ads = sorted((r for r in leaf if catalog.is_ad[r]), key=lambda r: (-catalog.bids[r], r))
        item = ads[0] if ads else leaf[0]
        placed.append(item)
        if catalog.is_ad[item]:
            last_ad = slot
        else:
            next_organic += 1
    return placed


@torch.no_grad()
@pytest.mark.parametrize("split", [0, 2])
@pytest.mark.parametrize("rules", [{}, {"max_ads": 1}, {"min_gap": 1, "forbidden_ad_slots": (0,)}])
def test_width_one_equals_greedy_lists(split, rules):
    model = _model(split=split)
    catalog = _catalog(60, seed=split)
    organic = catalog.item_ids[~catalog.is_ad][:4]
    config = DecodeConfig(mode="lists", beams=(1,), num_slots=4, alpha=1.2, beta=2.0, backend="torch", **rules)
    memory, mask, ctx = _context(model, 3)
    organic_rows = torch.tensor(catalog.index_of(organic)).expand(3, -1).contiguous()
    _, items, _ = _decode(model, ctx, catalog, config, organic_rows)
    for n in range(3):
        expected = _greedy_lists(model, catalog, memory, mask, n, organic, config)
        assert expected is not None
        assert items[n, 0].tolist() == expected


@torch.no_grad()
@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.2, 2.0), (1.0, 0.5)])
@pytest.mark.parametrize("split", [0, 1])
def test_wide_beams_find_every_sid_with_its_exact_score(alpha, beta, split):
    model = _model(split=split)
    catalog = _catalog(40, seed=7)
    sids = {tuple(int(c) for c in row) for row in catalog.poi_codes}
    config = DecodeConfig(mode="candidates", beams=(128,), num_slots=128, alpha=alpha, beta=beta, backend="torch")
    memory, mask, ctx = _context(model, 2, seed=1)
    scores, _, codes = _decode(model, ctx, catalog, config)
    for n in range(2):
        alive = scores[n] > -math.inf
        got = {tuple(codes[n, b, 0].tolist()): float(scores[n, b]) for b in torch.nonzero(alive).flatten()}
        assert set(got) == sids
        assert torch.all(scores[n, alive][:-1] >= scores[n, alive][1:])
        for sid, score in got.items():
            exact = 0.0
            for level in range(3):
                logits = _level_logits(model, memory, mask, n, list(sid[:level]))
                children = sorted({s[level] for s in sids if s[:level] == sid[:level]})
                v = {c: float(logits[c]) + _weight(catalog, list(sid[:level]) + [c], alpha, beta) for c in children}
                lse = math.log(sum(math.exp(x - max(v.values())) for x in v.values())) + max(v.values())
                exact += v[sid[level]] - lse
            assert score == pytest.approx(exact, abs=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("n_items,beams", [(1, 8), (3, 16), (25, (4, 8, 16)), (200, (2, 3, 5))])
def test_candidates_are_catalog_items(n_items, beams):
    model = _model()
    catalog = _catalog(n_items, seed=n_items)
    schedule = DecodeConfig(beams=beams).spec().beam_schedule(3)
    config = DecodeConfig(mode="candidates", beams=beams, num_slots=schedule[-1], backend="torch")
    _, _, ctx = _context(model, 3)
    trie = catalog.on_device("cpu").trie
    scores, items, codes = _decode(model, ctx, catalog, config)
    width = schedule[-1]
    n_sids = len({tuple(r) for r in catalog.poi_codes.tolist()})
    for n in range(3):
        alive = scores[n] > -math.inf
        if len(set(schedule)) == 1:
            assert int(alive.sum()) == min(width, n_sids)
        else:  # a narrower early level may cut subtrees
            assert 1 <= int(alive.sum()) <= min(width, n_sids)
        rows = items[n, alive, 0]
        assert (rows >= 0).all() and len(set(rows.tolist())) == len(rows)
        for b in torch.nonzero(alive).flatten():
            row = int(items[n, b, 0])
            assert catalog.poi_codes[row].tolist() == codes[n, b, 0].tolist()
            assert row == int(trie.resolve(torch.tensor(catalog.trie.item_nodes[row, -1])))


@torch.no_grad()
@pytest.mark.parametrize("seed", range(4))
def test_every_slate_obeys_the_rules(seed):
    rng = np.random.default_rng(seed)
    model = _model(split=seed % 3, max_slots=6)
    catalog = _catalog(int(rng.integers(5, 80)), ad_fraction=float(rng.uniform(0.2, 0.8)), seed=seed)
    organic_all = catalog.item_ids[~catalog.is_ad]
    slots = 6
    max_ads = [None, 2, 4][seed % 3]
    min_gap = seed % 2
    forbidden = (0, 3) if seed % 2 else ()
    config = DecodeConfig(mode="lists", beams=(3, 7, 12), num_slots=slots, max_ads=max_ads, min_gap=min_gap,
                          forbidden_ad_slots=forbidden, backend="torch")
    n = 3
    organic = [rng.permutation(organic_all)[: int(rng.integers(0, min(len(organic_all), 8) + 1))] for _ in range(n)]
    rows = torch.full((n, max(map(len, organic)) or 1), -1)
    for i, o in enumerate(organic):
        rows[i, : len(o)] = torch.as_tensor(catalog.index_of(o))
    _, _, ctx = _context(model, n, seed=seed)
    scores, beam_items, codes = _decode(model, ctx, catalog, config, rows)
    sids = {tuple(r) for r in catalog.poi_codes.tolist()}
    for i in range(n):
        organic_rows = list(catalog.index_of(organic[i]))
        for b in torch.nonzero(scores[i] > -math.inf).flatten():
            items = beam_items[i, b].tolist()
            assert len(items) == slots and min(items) >= 0
            assert len(set(items)) == slots
            ads = [k for k, r in enumerate(items) if catalog.is_ad[r]]
            placed_organic = [r for r in items if not catalog.is_ad[r]]
            assert placed_organic == organic_rows[: len(placed_organic)]
            assert max_ads is None or len(ads) <= max_ads
            assert not set(ads) & set(forbidden)
            assert all(b2 - a - 1 >= min_gap for a, b2 in zip(ads, ads[1:]))
            for k, r in enumerate(items):
                sid = tuple(codes[i, b, k].tolist())
                assert sid in sids and sid == tuple(catalog.poi_codes[r])


@torch.no_grad()
@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("mode", ["candidates", "lists"])
def test_kernel_backends_decode_the_same_beams(backend, mode, device):
    import os

    from ega_infer._native import cuda_module_or_none

    if backend == "cuda" and (device.type != "cuda" or cuda_module_or_none() is None):
        pytest.skip("needs --device=cuda, a CUDA GPU and the ega_infer._cuda module")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    model = _model(split=1).to(device)
    catalog = _catalog(50, seed=5)
    organic = torch.tensor(catalog.index_of(catalog.item_ids[~catalog.is_ad][:3]), device=device).expand(2, -1)
    _, _, ctx = _context(model.cpu(), 2, seed=4)
    model.to(device)
    ctx = type(ctx)([k.to(device) for k in ctx.keys], [v.to(device) for v in ctx.values], ctx.mask.to(device),
                    ctx.lengths.to(device))
    config = DecodeConfig(mode=mode, beams=(3, 5, 6), num_slots=3)
    ref_scores, ref_items, _ = _decode(model, ctx, catalog, config, organic, "torch", device)
    scores, items, _ = _decode(model, ctx, catalog, config, organic, backend, device)
    assert torch.equal(ref_items, items)
    torch.testing.assert_close(ref_scores, scores, atol=1e-4, rtol=1e-5)
