"""End to end: ``Engine.generate`` latency at batch 1 (each stage's median) and at larger
batches, requests/s, on the engine's path and, on a GPU, the PyTorch reference path: the run of
``ega-infer bench`` (``ega_infer.benchmark.run_bench``), with the harness's options. Writes the
JSON and a latency-throughput PNG beside it.

The shape keys are ``BenchConfig``'s fields (preset, dtype, mode, n_items, batches, iters,
batch1_iters). Small: the tiny preset, batches 8 and 32; full: batches 8 to 256. The 2-core
CPU goal of the fast-path issue: the tiny preset serves a batch of 32 in under 1 s, so the CPU
result of the tiny preset is meaningful and worth keeping.

    python bench/bench_engine.py [--threads 2] [--size full] [--save]
    python bench/bench_engine.py --device cuda --shape preset=gr4ad-base dtype=bfloat16 mode=candidates n_items=1000000 --save
    pytest bench/bench_engine.py [--device cuda]     # pytest-benchmark: tiny, batch 1 and 32, both modes
"""

from __future__ import annotations

import dataclasses

import pytest
import _harness

from ega_infer import Engine
from ega_infer.benchmark import BenchConfig, plot_bench, run_bench
from ega_infer.testing import synthetic_catalog, synthetic_requests

PRESETS = {
    "small": dict(preset="tiny", n_items=2000, batch1_iters=10, batches=(8, 32), iters=3),
    "full": dict(preset="tiny", n_items=2000, batch1_iters=20, batches=(8, 16, 32, 64, 128, 256), iters=3),
}


def main(argv: list[str] | None = None) -> dict:
    args = _harness.options(__doc__).parse_args(argv)
    device = _harness.setup(args)
    config = _harness.config_from(args, PRESETS)
    if not isinstance(config["batches"], (list, tuple)):
        config["batches"] = [config["batches"]]
    config["batches"] = tuple(config["batches"])
    res = run_bench(BenchConfig(device=str(device), **config))
    if args.save:
        path = _harness.save(res)
        if plot_bench(res, path.with_suffix(".png")):
            print(f"saved {path.with_suffix('.png')}")
    return res


@pytest.fixture(scope="module")
def engine_and_requests(request):
    import torch

    engine = Engine.from_pretrained("tiny", device=torch.device(request.config.getoption("--device")))
    engine.set_catalog(synthetic_catalog(engine.config, n_items=2000, seed=0))
    return engine, synthetic_requests(engine.catalog, engine.config, n=32, seed=1)


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_bench_generate(benchmark, device, engine_and_requests, batch, mode):
    engine, requests = engine_and_requests
    config = engine.default_config
    if mode == "candidates":
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0)
    assert all(s.ok for s in engine.generate(requests[:batch], config))  # check and warm-up
    _harness.pytest_record(benchmark, lambda: engine.generate(requests[:batch], config), device, op="generate",
                           provider="engine", shape={"preset": "tiny", "mode": mode, "batch": batch}, items=batch)


if __name__ == "__main__":
    main()
