"""The embedded default has learned the synthetic world: on held-out users its top items fall
in the users' true interests far more often than random or popular items.

Margins come from the committed run (ega_infer/weights/tiny/training.json: engine 0.99,
popularity 0.23, random 0.14 on 600 held-out users); the asserts leave room for float noise
across torch versions, not for a broken decoder or trie."""

import json

import pytest

from ega_infer import Engine
from ega_infer.evaluation import interest_hit_rates
from ega_infer.presets import get_preset
from ega_infer.world import AdWorld, WorldConfig


@pytest.fixture(scope="module")
def trained():
    preset = get_preset("tiny")
    assert preset.weights_dir is not None, "the tiny preset's trained weights are missing"
    engine = Engine.from_pretrained("tiny")
    world = AdWorld(WorldConfig(seed=0), engine.config)
    engine.set_catalog(world.catalog())
    return engine, world, preset


def test_beats_random_and_popularity_on_held_out_users(trained):
    engine, world, _ = trained
    hits = interest_hit_rates(engine, world, world.users("test")[:150])
    assert hits["engine"] >= 0.9
    assert hits["engine"] >= hits["popularity"] + 0.5
    assert hits["engine"] >= hits["random"] + 0.6


def test_training_record_is_committed(trained):
    _, _, preset = trained
    record = json.loads((preset.weights_dir / "training.json").read_text())
    assert record["command"].startswith("ega-infer train")
    assert record["training"]["seed"] == 0 and record["world"]["seed"] == 0
    assert record["metrics"]["interest_hit_rate"]["engine"] > record["metrics"]["interest_hit_rate"]["popularity"]


def test_same_slates_priced_three_ways(trained):
    from ega_infer.evaluation import incentive_report

    engine, world, _ = trained
    report = incentive_report(engine, [world.request(int(u)) for u in world.users("test")[:30]], ascent_steps=5)
    assert set(report) == {"payment network", "GSP", "VCG"}
    assert report["VCG"]["psi"] < 1e-6  # Clarke payments over the beam lists: truthful selection
    assert report["GSP"]["psi_grid"] > 0
    for row in report.values():
        assert row["revenue"] >= 0 and row["psi"] >= row["psi_grid"] - 1e-9
