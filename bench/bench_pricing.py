"""What each pricing rule costs to serve: ``Engine.generate`` latency at batch 1 (median and p99
over single requests) and at batch 64, and the extra decode rows per request, on the embedded
default and the held-out users of its synthetic world (seed 0).

``network``, ``vcg`` and ``gsp`` price the served lists and decode nothing more; ``clarke``
decodes the request once more per ad slot its winner can hold (``max_ads``), after the winner
is known; ``mir`` decodes bid-blind lists at alpha 0 (the same rows; the wider ranges that
earn more cost their beams). Rows: one per (rule, beams).

    python bench/bench_pricing.py [--threads 1] [--save]
    pytest bench/bench_pricing.py        # pytest-benchmark: batch 1 of network and clarke
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import _harness

from ega_infer import Engine
from ega_infer.benchmark import result, row, summary, wall_times
from ega_infer.world import AdWorld, WorldConfig

RULES = (("network", 16), ("vcg", 16), ("gsp", 16), ("clarke", 16), ("mir", 16), ("mir", 32))
SIZES = {"small": dict(batch1=8, batch=16), "full": dict(batch1=30, batch=64)}


def _engine(device: str) -> tuple[Engine, list]:
    engine = Engine.from_pretrained("tiny", device=device)
    world = AdWorld(WorldConfig(seed=0), engine.config)
    engine.set_catalog(world.catalog())
    return engine, [world.request(int(u)) for u in world.users("test")]


def config_of(engine: Engine, rule: str, beams: int):
    base = engine.default_config
    return dataclasses.replace(base, pricing=rule, beams=(beams,), alpha=0.0 if rule == "mir" else base.alpha)


def extra_rows(config) -> int:
    if config.pricing != "clarke":
        return 0
    return config.num_slots if config.max_ads is None else min(config.max_ads, config.num_slots)


def main(argv: list[str] | None = None) -> dict:
    args = _harness.options(__doc__).parse_args(argv)
    device = _harness.setup(args)
    size = SIZES[args.size]
    engine, requests = _engine(str(device))
    rows = []
    for rule, beams in RULES:
        config = config_of(engine, rule, beams)
        singles = requests[: size["batch1"]]
        engine.generate(singles[:1], config)  # warm-up
        one = []
        for request in singles:
            one += wall_times(lambda: engine.generate([request], config), device, runs=1, warmup=0)
        batch = requests[: size["batch"]]
        many = wall_times(lambda: engine.generate(batch, config), device, runs=3)
        p99 = float(np.percentile(np.asarray(one) * 1e6, 99))
        rows.append(row("generate", rule, {"beams": beams, "alpha": config.alpha, "batch": 1}, summary(one),
                        p99_us=p99, extra_decode_rows_per_request=extra_rows(config)))
        rows.append(row("generate", rule, {"beams": beams, "alpha": config.alpha, "batch": len(batch)}, summary(many),
                        extra_decode_rows_per_request=extra_rows(config)))
        print(f"{rule:<8} {beams:>3} beams  batch 1 p50 {rows[-2]['median_us'] / 1e3:7.1f} ms  p99 {p99 / 1e3:7.1f} ms"
              f"  batch {len(batch)} {rows[-1]['median_us'] / 1e3:8.1f} ms  extra rows {extra_rows(config)}")
    res = result("pricing", device, rows, {"preset": "tiny", "world_seed": 0, **size})
    if args.save:
        _harness.save(res)
    return res


@pytest.mark.parametrize("rule", ["network", "clarke"])
def test_bench(benchmark, rule):
    engine, requests = _engine("cpu")
    config = config_of(engine, rule, 16)
    slate = benchmark(lambda: engine.generate(requests[:1], config))[0]
    assert slate.ok and all(0 <= s.payment <= s.bid + 1e-6 for s in slate.slots)


if __name__ == "__main__":
    main()
