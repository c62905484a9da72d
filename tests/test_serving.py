"""Dynamic beam serving: the load-aware controller and the engine's statistics."""

import pytest

from ega_infer import DecodeConfig, Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.exceptions import ConfigError
from ega_infer.runtime import BeamController

WIDE, MID, NARROW = (8, 16, 16), (4, 8, 8), (2, 4, 4)


def _config(**kw):
    return DecodeConfig(mode="candidates", beams=WIDE, fallback_beams=(MID, NARROW), **kw)


def test_queue_pressure_moves_to_narrower_schedules():
    c = BeamController()
    config = _config()
    assert c.choose(config, batch_size=8, queue_depth=0) == WIDE
    assert c.choose(config, batch_size=8, queue_depth=7) == WIDE
    assert c.choose(config, batch_size=8, queue_depth=8) == MID  # one batch waiting
    assert c.choose(config, batch_size=8, queue_depth=100) == NARROW  # never past the narrowest
    assert c.choose(config, batch_size=8, queue_depth=0) == WIDE  # and back when it drains


def test_latency_over_target_moves_narrower_until_a_schedule_meets_it():
    c = BeamController(window=4)
    config = _config(latency_target_ms=10.0)
    for _ in range(4):
        c.record(WIDE, 8, 25.0)
        c.record(MID, 8, 12.0)
    assert c.choose(config, 8) == NARROW  # never served yet: tried
    for _ in range(4):
        c.record(NARROW, 8, 4.0)
        c.record(WIDE, 8, 9.0)  # the wide schedule recovered within its window
    assert c.choose(config, 8) == WIDE
    stats = c.stats()
    assert stats["8-16-16"]["batches"] == 8 and stats["8-16-16"]["requests"] == 64
    assert stats["2-4-4"]["p99_ms"] == pytest.approx(4.0)


@pytest.mark.parametrize("bad, field", [
    (dict(fallback_beams=((),)), "fallback_beams[0]"),
    (dict(fallback_beams=((4, 0),)), "fallback_beams[0][1]"),
    (dict(latency_target_ms=0), "latency_target_ms"),
    (dict(latency_target_ms=float("nan")), "latency_target_ms"),
])
def test_config_validates_the_dynamic_fields(bad, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        DecodeConfig(**bad)


def test_engine_serves_the_chosen_schedule_and_reports_it():
    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=200, seed=1))
    requests = synthetic_requests(engine.catalog, engine.config, n=2, seed=2)
    config = DecodeConfig(mode="candidates", beams=WIDE, fallback_beams=(NARROW,), num_slots=3)
    calm = engine.generate(requests, config)
    busy = engine.generate(requests, config, queue_depth=2)
    assert all(s.ok for s in calm + busy)
    assert len(busy[0].candidates) <= 4  # the narrow schedule keeps 4 beams
    stats = engine.stats()["beam_schedules"]
    assert stats["8-16-16"]["requests"] == 2 and stats["2-4-4"]["requests"] == 2
    narrow = engine.generate(requests, DecodeConfig(mode="candidates", beams=NARROW, num_slots=3))
    assert [s.item_id for s in busy[0].slots] == [s.item_id for s in narrow[0].slots]
