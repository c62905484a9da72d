"""DecodeConfig / ModelConfig validation: every bad value raises ConfigError naming its field."""

from __future__ import annotations

import dataclasses

import pytest

from ega_infer import ConfigError, DecodeConfig, ListScore, ModelConfig
from ega_infer.exceptions import FieldError
from ega_infer.model.config import (
    CreativeHeadConfig,
    DecoderConfig,
    EncoderConfig,
    PaymentConfig,
    RewardConfig,
)
from ega_infer.presets import PRESETS


def _raises_config(field: str, match: str, build):
    with pytest.raises(ConfigError, match=match) as info:
        build()
    assert info.value.field == field
    assert isinstance(info.value, FieldError) and isinstance(info.value, ValueError)
    return info.value


# -- DecodeConfig ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        (dict(beams=0), "beams[0]", "positive integer"),
        (dict(beams=(4, 0, 2)), "beams[1]", "positive integer"),
        (dict(beams=(4, -3)), "beams[1]", "positive integer"),
        (dict(beams=()), "beams", "positive int or a tuple"),
        (dict(beams=(True,)), "beams[0]", "positive integer"),
        (dict(mode="greedy"), "mode", "one of"),
        (dict(num_slots=0), "num_slots", "positive integer"),
        (dict(num_candidates=0), "num_candidates", "positive integer"),
        (dict(alpha=-0.5), "alpha", "finite number >= 0"),
        (dict(beta=float("inf")), "beta", "finite number >= 0"),
        (dict(alpha=float("nan")), "alpha", "finite number >= 0"),
        (dict(max_ads=-1), "max_ads", "None or an integer >= 0"),
        (dict(min_gap=-1), "min_gap", "integer >= 0"),
        (dict(num_slots=4, forbidden_ad_slots=(0, 4)), "forbidden_ad_slots[1]", r"\[0, 4\)"),
        (dict(num_slots=4, forbidden_ad_slots=(-1,)), "forbidden_ad_slots[0]", r"\[0, 4\)"),
        (dict(mode="candidates", max_ads=1), "mode", "need mode='lists'"),
        (dict(mode="candidates", min_gap=1), "mode", "need mode='lists'"),
        (dict(mode="candidates", forbidden_ad_slots=(0,)), "mode", "need mode='lists'"),
        (dict(backend="tpu"), "backend", "one of"),
        (dict(list_score={"revenue": 1.0}), "list_score", "a ListScore"),
    ],
)
def test_decode_config_rejects(kwargs, field, match):
    _raises_config(field, match, lambda: DecodeConfig(**kwargs))


@pytest.mark.parametrize("name", ["revenue", "ctr", "creative_ctr", "cvr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1"])
def test_list_score_rejects(name, value):
    _raises_config(f"list_score.{name}", "finite number", lambda: ListScore(**{name: value}))


def test_decode_config_accepts_rules_in_lists_mode():
    cfg = DecodeConfig(mode="lists", num_slots=5, max_ads=0, min_gap=2, forbidden_ad_slots=[0, 4])
    assert cfg.forbidden_ad_slots == (0, 4)
    assert cfg.max_ads == 0


@pytest.mark.parametrize(("beams", "expected"), [(8, (8,)), (1, (1,)), ([3, 5, 7], (3, 5, 7))])
def test_beams_normalised_to_tuple(beams, expected):
    assert DecodeConfig(beams=beams).beams == expected


@pytest.mark.parametrize(("beams", "levels", "schedule"), [((8,), 3, (8, 8, 8)), ((8,), 1, (8,)), ((2, 4, 9), 3, (2, 4, 9))])
def test_beam_schedule(beams, levels, schedule):
    assert DecodeConfig(beams=beams).spec().beam_schedule(levels) == schedule


@pytest.mark.parametrize(("beams", "levels"), [((4, 8), 3), ((4, 8, 16), 2), ((1, 2, 3, 4), 1)])
def test_beam_schedule_wrong_length(beams, levels):
    _raises_config("beams", f"1 or {levels}", lambda: DecodeConfig(beams=beams).spec().beam_schedule(levels))


# -- ModelConfig and its sub-configs -----------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        (dict(poi_codebook_sizes=()), "poi_codebook_sizes", "non-empty tuple"),
        (dict(creative_codebook_sizes=()), "creative_codebook_sizes", "non-empty tuple"),
        (dict(poi_codebook_sizes=(32, 0, 32)), "poi_codebook_sizes[1]", "positive integer"),
        (dict(creative_codebook_sizes=(16, -2)), "creative_codebook_sizes[1]", "positive integer"),
        (dict(d_model=0), "d_model", "positive integer"),
        (dict(norm_eps=0.0), "norm_eps", "positive float"),
        (dict(encoder=EncoderConfig(n_layers=0)), "encoder.n_layers", "positive integer"),
        (dict(encoder=EncoderConfig(max_history=0)), "encoder.max_history", "positive integer"),
        (dict(encoder=EncoderConfig(n_actions=0)), "encoder.n_actions", "positive integer"),
        (dict(encoder=EncoderConfig(n_time_buckets=-1)), "encoder.n_time_buckets", "positive integer"),
        (dict(encoder=EncoderConfig(ffn_hidden=0)), "encoder.ffn_hidden", "positive integer"),
        (dict(d_model=60, encoder=EncoderConfig(n_heads=8, n_kv_heads=2)), "encoder.n_heads", "does not divide d_model 60"),
        (dict(encoder=EncoderConfig(n_heads=4, n_kv_heads=3)), "encoder.n_kv_heads", "does not divide n_heads 4"),
        (dict(encoder=EncoderConfig(n_heads=0)), "encoder.n_heads", "positive integer"),
        (dict(decoder=DecoderConfig(n_layers=3, split=3)), "decoder.split", r"\[0, 3\)"),
        (dict(decoder=DecoderConfig(n_layers=3, split=7)), "decoder.split", r"\[0, 3\)"),
        (dict(decoder=DecoderConfig(split=-1)), "decoder.split", r"\[0, 3\)"),
        (dict(decoder=DecoderConfig(max_slots=0)), "decoder.max_slots", "positive integer"),
        (dict(decoder=DecoderConfig(n_layers=0, split=0)), "decoder.n_layers", "positive integer"),
        (dict(decoder=DecoderConfig(n_heads=5, n_kv_heads=1)), "decoder.n_heads", "does not divide d_model 64"),
        (dict(creative=CreativeHeadConfig(n_heads=3, n_kv_heads=1)), "creative.n_heads", "does not divide d_model 64"),
        (dict(creative=CreativeHeadConfig(ffn_hidden=0)), "creative.ffn_hidden", "positive integer"),
        (dict(reward=RewardConfig(d_model=30, n_heads=4)), "reward.n_heads", "does not divide d_model 30"),
        (dict(reward=RewardConfig(n_layers=0)), "reward.n_layers", "positive integer"),
        (dict(reward=RewardConfig(tower_hidden=(128, 0))), "reward.tower_hidden[1]", "positive integer"),
        (dict(payment=PaymentConfig(hidden=(128, 32, -10))), "payment.hidden[2]", "positive integer"),
    ],
)
def test_model_config_rejects(kwargs, field, match):
    _raises_config(field, match, lambda: ModelConfig(**kwargs))


_FROZEN = [
    (DecodeConfig(), "beams", (2,)),
    (ListScore(), "ctr", 1.0),
    (ModelConfig(), "d_model", 128),
    (EncoderConfig(), "max_history", 3),
    (DecoderConfig(), "split", 0),
    (CreativeHeadConfig(), "n_heads", 2),
    (RewardConfig(), "n_layers", 2),
    (PaymentConfig(), "hidden", (8,)),
]


@pytest.mark.parametrize(("cfg", "attr", "value"), _FROZEN, ids=[type(c).__name__ for c, _, _ in _FROZEN])
def test_configs_are_frozen(cfg, attr, value):
    before = getattr(cfg, attr)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, attr, value)
    assert getattr(cfg, attr) == before


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_config_dict_round_trip(name):
    cfg = PRESETS[name].model
    data = cfg.to_dict()
    back = ModelConfig.from_dict(data)
    assert back == cfg
    assert back.to_dict() == data
    # the JSON form (lists instead of tuples) also comes back equal
    import json

    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_model_config_from_dict_unknown_key():
    data = ModelConfig().to_dict()
    data["n_experts"] = 8
    err = _raises_config("config.json", "unknown keys", lambda: ModelConfig.from_dict(data))
    assert "n_experts" in str(err)


def test_model_config_from_dict_validates_values():
    data = ModelConfig().to_dict()
    data["decoder"]["split"] = data["decoder"]["n_layers"]
    _raises_config("decoder.split", "an integer in", lambda: ModelConfig.from_dict(data))


def test_generate_num_slots_above_max_slots():
    from ega_infer import Engine, Request
    from ega_infer.testing import synthetic_catalog

    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=50))
    max_slots = engine.config.decoder.max_slots
    cfg = DecodeConfig(mode="lists", beams=(2,), num_slots=max_slots + 1)
    with pytest.raises(ConfigError, match=f"at most {max_slots}") as info:
        engine.generate([Request()], cfg)
    assert info.value.field == "num_slots"


def test_generate_beams_of_wrong_length():
    from ega_infer import Engine, Request
    from ega_infer.testing import synthetic_catalog

    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=50))
    with pytest.raises(ConfigError, match="1 or 3") as info:
        engine.generate([Request()], DecodeConfig(beams=(2, 4), num_slots=2))
    assert info.value.field == "beams"
