"""Per-request exclusions and replaced bids against rebuilt catalogs.

The oracle of "request n decoded without items X" is request n alone on
``catalog.without_items(X)`` (a pruned trie, recomputed max bids, renumbered rows), and of
"with ad j bidding b" request n alone on ``catalog.with_bids([j], [b])``. The batched decode on
the original trie (torch reference, and Triton in its interpreter) must give the same live beams: the same items in the same order, scores
within float rounding (the token weights are the same float bids, logged in another place).
"""

import math

import numpy as np
import pytest
import torch

from ega_infer import DecodeConfig
from ega_infer.decoding import ItemOverrides, beam_search
from ega_infer.ops import OpBackends
from test_beam_search import _catalog, _context, _model

MODES = {
    "lists": dict(mode="lists", beams=(3, 6, 9), num_slots=4, max_ads=2, min_gap=0),
    "candidates": dict(mode="candidates", beams=(4, 8, 12), num_slots=12),
}


def _beams(lists, catalog):
    """Live beams of request 0 as (item ids per slot, score)."""
    out = []
    for b in torch.nonzero(lists.beam_scores[0] > -math.inf).flatten().tolist():
        ids = tuple(int(catalog.item_ids[r]) if r >= 0 else -1 for r in lists.beam_items[0, b].tolist())
        out.append((ids, float(lists.beam_scores[0, b])))
    return out


def _organic_rows(catalog, ids, width):
    rows = torch.full((1, width), -1)
    rows[0, : len(ids)] = torch.as_tensor(catalog.index_of(np.asarray(ids, np.int64)), dtype=torch.long)
    return rows


def _assert_same_beams(got, want):
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-4)


def _setup(seed, mode):
    rng = np.random.default_rng(seed)
    model = _model(split=seed % 3, max_slots=4)
    catalog = _catalog(int(rng.integers(8, 60)), ad_fraction=float(rng.uniform(0.3, 0.8)), seed=seed)
    n = 3
    _, _, ctx = _context(model, n, seed=seed)
    organic_ids = catalog.item_ids[~catalog.is_ad]
    organic = [list(rng.permutation(organic_ids)[: int(rng.integers(0, min(len(organic_ids), 5) + 1))])
               for _ in range(n)]
    config = DecodeConfig(**MODES[mode], alpha=[0.0, 1.2, 1.0][seed % 3], beta=[2.0, 2.0, 0.0][seed % 3],
                          backend="torch")
    return rng, model, catalog, ctx, organic, config


def _alone(model, ctx, request):
    return type(ctx)([k[request:request + 1] for k in ctx.keys], [v[request:request + 1] for v in ctx.values],
                     ctx.mask[request:request + 1], ctx.lengths[request:request + 1])


def _backends(backend, device):
    if backend == "triton":
        import os

        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
        if device.type != "cpu":
            pytest.skip("these decodes run on CPU tensors")
    return OpBackends(backend, "torch", "torch")


BACKEND_CASES = [("torch", seed) for seed in range(6)] + [pytest.param("triton", seed, marks=pytest.mark.interpreter)
                                                          for seed in (1, 2)]


@torch.no_grad()
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(("backend", "seed"), BACKEND_CASES)
def test_exclusions_equal_decoding_without_the_items(mode, backend, seed, device):
    rng, model, catalog, ctx, organic, config = _setup(seed, mode)
    n = len(organic)
    backends = _backends(backend, device)
    excluded = []
    for i in range(n):
        size = int(rng.integers(0, min(len(catalog) - 1, 6) + 1))
        pick = list(rng.choice(catalog.item_ids, size=size, replace=False))
        if organic[i] and rng.random() < 0.7:  # an excluded organic item of the page itself
            pick = list(dict.fromkeys(pick + [organic[i][0]]))
        excluded.append(pick)
    width = max(map(len, excluded)) or 1
    exclude = torch.full((n, width), -1)
    for i, ids in enumerate(excluded):
        exclude[i, : len(ids)] = torch.as_tensor(catalog.index_of(np.asarray(ids, np.int64)), dtype=torch.long)
    m = max(map(len, organic)) or 1
    organic_rows = torch.cat([_organic_rows(catalog, o, m) for o in organic])
    got = beam_search(model.decoder, ctx, catalog.on_device("cpu"), config.spec(), backends,
                      organic_rows if mode == "lists" else None, exclude=exclude)
    for i in range(n):
        smaller = catalog.without_items(excluded[i])
        kept = [o for o in organic[i] if o not in set(excluded[i])]
        want = beam_search(model.decoder, _alone(model, ctx, i), smaller.on_device("cpu"), config.spec(), backends,
                           _organic_rows(smaller, kept, m) if mode == "lists" else None)
        _assert_same_beams(_beams(got.take(torch.tensor([i])), catalog), _beams(want, smaller))


@torch.no_grad()
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(("backend", "seed"), BACKEND_CASES)
def test_replaced_bids_equal_decoding_with_those_bids(mode, backend, seed, device):
    rng, model, catalog, ctx, organic, config = _setup(seed + 10, mode)
    n = len(organic)
    backends = _backends(backend, device)
    ads = catalog.item_ids[catalog.is_ad]
    if len(ads) == 0:
        pytest.skip("no ads in this catalog")
    chosen = [int(rng.choice(ads)) for _ in range(n)]
    values = [float(catalog.bids[catalog.index_of(np.array([a]))[0]]) for a in chosen]
    new_bids = [round(v * float(rng.choice([0.2, 1.4, 2.0])), 3) for v in values]
    rows = torch.as_tensor(catalog.index_of(np.asarray(chosen, np.int64)), dtype=torch.long)[:, None]
    m = max(map(len, organic)) or 1
    organic_rows = torch.cat([_organic_rows(catalog, o, m) for o in organic])
    overrides = ItemOverrides.rebids(rows, torch.tensor(new_bids)[:, None])
    got = beam_search(model.decoder, ctx, catalog.on_device("cpu"), config.spec(), backends,
                      organic_rows if mode == "lists" else None, overrides=overrides)
    for i in range(n):
        what_if = catalog.with_bids([chosen[i]], [new_bids[i]])
        want = beam_search(model.decoder, _alone(model, ctx, i), what_if.on_device("cpu"), config.spec(), backends,
                           _organic_rows(what_if, organic[i], m) if mode == "lists" else None)
        mine = got.take(torch.tensor([i]))
        _assert_same_beams(_beams(mine, catalog), _beams(want, what_if))
        torch.testing.assert_close(mine.bids, want.bids)  # the lists carry the bid the request sees


@torch.no_grad()
def test_excluding_every_item_leaves_no_live_beam():
    model = _model(max_slots=4)
    catalog = _catalog(12, seed=1)
    _, _, ctx = _context(model, 2, seed=1)
    exclude = torch.arange(len(catalog)).expand(2, -1)
    for mode, options in MODES.items():
        config = DecodeConfig(**options, backend="torch")
        organic = torch.full((2, 1), -1) if mode == "lists" else None
        lists = beam_search(model.decoder, ctx, catalog.on_device("cpu"), config.spec(),
                            OpBackends("torch", "torch", "torch"), organic, exclude=exclude)
        assert not (lists.beam_scores > -math.inf).any()
