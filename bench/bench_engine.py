"""End-to-end engine benchmarks under pytest-benchmark (the same runs as ``ega-infer bench``).

    pytest bench/bench_engine.py                     # tiny preset on the CPU
    pytest bench/bench_engine.py --device cuda       # and on a GPU (conftest option)

The 2-core CPU goal of the fast-path issue: the tiny preset serves a batch of 32 in under 1 s.
"""

from __future__ import annotations

import pytest

from ega_infer import Engine
from ega_infer.demo import synthetic_catalog, synthetic_requests


@pytest.fixture(scope="module")
def engine_and_requests():
    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=2000, seed=0))
    return engine, synthetic_requests(engine.catalog, engine.config, n=32, seed=1)


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_tiny_end_to_end(benchmark, engine_and_requests, batch, mode):
    import dataclasses

    engine, requests = engine_and_requests
    config = engine.default_config
    if mode == "candidates":
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0)
    engine.generate(requests[:batch], config)  # warm-up
    slates = benchmark(engine.generate, requests[:batch], config)
    assert all(s.ok for s in slates)
