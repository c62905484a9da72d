"""CUDA graphs of the stage after the encoder: replay equals eager execution, odd batch sizes
use the next bucket, and a catalog swap between two replays is honoured (GPU, ``--device
cuda``). On the CPU the same bucketing and padding run eagerly (``capture=False``) and must not
change a slate."""

import dataclasses

import pytest
import torch

from ega_infer import Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.runtime.graphs import DecodeGraphs


def test_no_graphs_off_the_gpu():
    assert Engine.from_pretrained("tiny").decode_graphs is None


@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_bucketing_and_padding_change_no_slate(mode):
    padded = Engine.from_pretrained("tiny")
    padded.decode_graphs = DecodeGraphs(1 + padded.config.encoder.max_history, capture=False)
    plain = Engine.from_pretrained("tiny")
    catalog = synthetic_catalog(plain.config, n_items=400, seed=5)
    for engine in (padded, plain):
        engine.set_catalog(catalog)
    config = plain.default_config
    if mode == "candidates":
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0, beams=(8, 16, 16))
    requests = synthetic_requests(catalog, plain.config, n=5, seed=6)
    for batch in (requests[:3], requests, requests[4:]):  # buckets 4, 8 and 1
        _same(padded.generate(batch, config), plain.generate(batch, config))
    assert len(padded.decode_graphs._entries) == 3
    padded.set_catalog(catalog.with_bids(catalog.item_ids[catalog.is_ad][:5], [9.0] * 5))
    padded.generate(requests[:1], config)
    assert len(padded.decode_graphs._entries) == 1  # a new catalog starts afresh


@pytest.mark.parametrize("pricing", ["network", "clarke"])
def test_exclusion_widths_pad_into_their_own_entries(pricing):
    padded = Engine.from_pretrained("tiny")
    padded.decode_graphs = DecodeGraphs(1 + padded.config.encoder.max_history, capture=False)
    plain = Engine.from_pretrained("tiny")
    catalog = synthetic_catalog(plain.config, n_items=400, seed=5)
    for engine in (padded, plain):
        engine.set_catalog(catalog)
    config = dataclasses.replace(plain.default_config, pricing=pricing)
    requests = synthetic_requests(catalog, plain.config, n=4, seed=6)
    ads = catalog.item_ids[catalog.is_ad]
    excluding = [dataclasses.replace(r, exclude_items=list(ads[3 * i: 3 * i + 1 + 2 * i])) for i, r in enumerate(requests)]
    for batch in (requests[:2], excluding[:2], excluding):  # exclusion widths 0, 3 (-> 4) and 7 (-> 8)
        _same(padded.generate(batch, config), plain.generate(batch, config))
    assert {key[1] for key in padded.decode_graphs._entries} == {0, 4, 8}


@pytest.fixture
def engines(device):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need --device=cuda and a GPU")
    graphs = Engine.from_pretrained("tiny", device=device)
    eager = Engine.from_pretrained("tiny", device=device, cuda_graphs=False)
    catalog = synthetic_catalog(graphs.config, n_items=500, seed=1)
    for engine in (graphs, eager):
        engine.set_catalog(catalog)
    return graphs, eager


def _same(a, b):
    for x, y in zip(a, b):
        assert x.ok and y.ok
        assert [s.item_id for s in x.slots] == [s.item_id for s in y.slots]
        assert [s.creative_id for s in x.slots] == [s.creative_id for s in y.slots]
        torch.testing.assert_close(torch.tensor([s.payment for s in x.slots]), torch.tensor([s.payment for s in y.slots]),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_replay_equals_eager(engines, mode):
    graphs, eager = engines
    config = graphs.default_config
    if mode == "candidates":
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0, beams=(8, 16, 16))
    requests = synthetic_requests(graphs.catalog, graphs.config, n=5, seed=2)
    for batch in (requests[:3], requests[2:5], requests[:1]):  # 3 and 1 requests: buckets 4 and 1
        _same(graphs.generate(batch, config), eager.generate(batch, config))
    assert graphs.decode_graphs.captures == 2 and graphs.decode_graphs.replays == 3


def test_catalog_swap_between_replays_is_honoured(engines):
    graphs, eager = engines
    requests = synthetic_requests(graphs.catalog, graphs.config, n=2, seed=3)
    _same(graphs.generate(requests), eager.generate(requests))
    other = graphs.catalog.with_bids(graphs.catalog.item_ids[graphs.catalog.is_ad][:20], [50.0] * 20)
    for engine in (graphs, eager):
        engine.set_catalog(other)
    _same(graphs.generate(requests), eager.generate(requests))
    assert graphs.decode_graphs.captures == 2


def test_warmup_prepares_every_schedule_and_bucket_that_serving_uses():
    """``Engine.warmup`` runs each (bucket, beam schedule) once; serving afterwards, whatever
    schedule the controller picks, finds its entry (capture=False: the same keys as graphs)."""
    engine = Engine.from_pretrained("tiny")
    engine.decode_graphs = DecodeGraphs(1 + engine.config.encoder.max_history, buckets=(1, 2, 4), capture=False)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=1))
    config = dataclasses.replace(engine.default_config, fallback_beams=((8,), (4,)))
    report = engine.warmup(config)
    assert report["runs"] == 9 and report["schedules"] == 3 and report["batch_sizes"] == (1, 2, 4)
    assert len(engine.decode_graphs._entries) == 9
    assert engine.stats()["beam_schedules"] == {}  # warm-up is not traffic
    requests = synthetic_requests(engine.catalog, engine.config, n=4, seed=2)
    for queue_depth in (0, 3, 8):  # the controller picks 16, then 8, then 4 beams
        engine.generate(requests[:3], config, queue_depth=queue_depth)
    assert len(engine.decode_graphs._entries) == 9
    assert set(engine.stats()["beam_schedules"]) == {"16", "8", "4"}


def test_warmup_rejects_bad_input():
    from ega_infer.exceptions import CatalogError, ConfigError

    engine = Engine.from_pretrained("tiny")
    with pytest.raises(CatalogError, match="catalog"):
        engine.warmup()
    engine.set_catalog(synthetic_catalog(engine.config, n_items=100, seed=1))
    for bad in ((1, 0), (), (2.0,)):
        with pytest.raises(ConfigError, match="batch_sizes"):
            engine.warmup(batch_sizes=bad)
    with pytest.raises(ConfigError, match="num_slots"):
        engine.warmup(dataclasses.replace(engine.default_config, num_slots=99))


def test_warmup_captures_every_graph_before_traffic(engines):
    graphs, _ = engines
    config = dataclasses.replace(graphs.default_config, fallback_beams=((8,),))
    report = graphs.warmup(config, batch_sizes=(1, 4))
    assert report["captured"] == 4 and graphs.decode_graphs.captures == 4
    requests = synthetic_requests(graphs.catalog, graphs.config, n=3, seed=2)
    graphs.generate(requests, config)
    graphs.generate(requests[:1], config, queue_depth=5)
    assert graphs.decode_graphs.captures == 4 and graphs.stats()["cuda_graphs"]["replays"] >= 2
