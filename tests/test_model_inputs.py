"""Hostile model configs and checkpoints: every bad value gives the project's own error.

``ModelConfig`` (built directly, from a dict, from JSON text) and
``GenerativeAdModel.from_pretrained`` are fed generated members of each class of bad input:
null/list/string/number sections, unknown and missing keys, strings/floats/bools/null where
integers are expected, out-of-range and absurd values (bounded, so nothing allocates in
proportion to them), invalid JSON, missing files, weights missing a tensor, extra tensors,
tensors of the wrong shape or dtype, non-finite weights. Each raises ConfigError naming the
field (``"decoder.n_heads"``) or CheckpointError naming the file and tensor.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from ega_infer.exceptions import CheckpointError, ConfigError, ConfigFileError, EgaInferError, FieldError
from ega_infer.model import config as C
from ega_infer.model.ad_model import GenerativeAdModel
from ega_infer.model.config import (
    CreativeHeadConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    PaymentConfig,
    RewardConfig,
)
from ega_infer.presets import PRESETS, Preset, get_preset

SECTIONS = {"encoder": EncoderConfig, "decoder": DecoderConfig, "creative": CreativeHeadConfig,
            "reward": RewardConfig, "payment": PaymentConfig}
TUPLE_FIELDS = {"poi_codebook_sizes", "creative_codebook_sizes", "tower_hidden", "hidden"}
# the largest value each integer setting takes
BOUNDS = {
    "d_model": C.MAX_WIDTH, "n_layers": C.MAX_LAYERS, "n_heads": C.MAX_WIDTH, "n_kv_heads": C.MAX_WIDTH,
    "ffn_hidden": C.MAX_HIDDEN, "max_history": C.MAX_HISTORY, "n_actions": C.MAX_EMBEDDINGS,
    "n_time_buckets": C.MAX_EMBEDDINGS, "split": C.MAX_LAYERS - 1, "max_slots": C.MAX_SLOTS,
}


def json_config(name: str = "tiny") -> dict:
    return json.loads(PRESETS[name].model.to_json())


def paths(data: dict) -> list[str]:
    """Every setting's path in a config dict: "d_model", "decoder.n_heads", ..."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += [f"{key}.{sub}" for sub in value]
        else:
            out.append(key)
    return out


def set_path(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    if "." in path:
        section, key = path.split(".")
        data[section][key] = value
    else:
        data[path] = value
    return data


def del_path(data: dict, path: str) -> dict:
    data = copy.deepcopy(data)
    if "." in path:
        section, key = path.split(".")
        del data[section][key]
    else:
        del data[path]
    return data


def bad_values(path: str) -> list[tuple[str, object]]:
    """Wrong types and out-of-range values for the setting at ``path``."""
    key = path.split(".")[-1]
    common = [("null", None), ("dict", {}), ("nested-dict", {"a": {"b": 1}}), ("str-empty", "")]
    if key == "name":
        return common + [("int", 3), ("float", 1.5), ("bool", True), ("list", ["tiny"]), ("long", "x" * (C.MAX_NAME + 1))]
    if key == "norm_eps":
        return common + [("str", "1e-6"), ("zero", 0), ("zero-float", 0.0), ("negative", -1e-6), ("nan", float("nan")),
                         ("inf", float("inf")), ("above-one", 2.0), ("bool", True), ("list", [1e-6])]
    if key in TUPLE_FIELDS:
        cases = common + [("str", "128"), ("int", 128), ("float", 1.5), ("bool", True),
                          ("too-long", [8] * (C.MAX_MLP_DEPTH + 1 if key in ("tower_hidden", "hidden") else C.MAX_LEVELS + 1))]
        high = C.MAX_HIDDEN if key in ("tower_hidden", "hidden") else C.MAX_CODEBOOK_SIZE
        for name, v in [("zero", 0), ("negative", -8), ("float", 8.0), ("frac", 8.5), ("str", "8"), ("null", None),
                        ("bool", True), ("list", [8]), ("above", high + 1), ("1e12", 10**12), ("huge", 2**300)]:
            cases.append((f"entry-{name}", [8, v]))
        if key in ("poi_codebook_sizes", "creative_codebook_sizes"):
            cases.append(("empty", []))
        return cases
    high = BOUNDS[key]
    low = 0 if key == "split" else 1
    return common + [
        ("str", "4"), ("str-word", "four"), ("float", 4.0), ("frac", 4.5), ("nan", float("nan")), ("inf", float("inf")),
        ("bool-true", True), ("bool-false", False), ("list", [4]), ("below", low - 1), ("negative", -4),
        ("above", high + 1), ("1e12", 10**12), ("huge", 2**300), ("neg-huge", -(2**300)),
    ]


def _config_cases(name: str = "tiny") -> list:
    data = json_config(name)
    return [pytest.param(path, value, id=f"{path}-{vid}") for path in paths(data) for vid, value in bad_values(path)]


def assert_config_error(info, field: str) -> ConfigError:
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, FieldError) and isinstance(err, ValueError)
    assert err.field == field or err.field.startswith(field + "["), (err.field, str(err))
    assert str(err).startswith(f"{err.field}: ")
    return err


# -- from_dict / from_json --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name].model
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_json(cfg.to_json().encode()) == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("path", "value"), _config_cases())
def test_from_dict_bad_value(path, value):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(set_path(json_config(), path, value))
    assert_config_error(info, path)


@pytest.mark.parametrize(("path", "value"), [p for p in _config_cases("gr4ad-base") if "name" not in p.id][::7])
def test_from_dict_bad_value_other_preset(path, value):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(set_path(json_config("gr4ad-base"), path, value))
    assert_config_error(info, path)


@pytest.mark.parametrize("path", paths(json_config()) + list(SECTIONS))
@pytest.mark.parametrize("preset", ["tiny", "gr4ad-base"])
def test_from_dict_missing_key(path, preset):
    with pytest.raises(ConfigError, match="is missing") as info:
        ModelConfig.from_dict(del_path(json_config(preset), path))
    assert info.value.field == path or info.value.field.startswith(path + ".")


@pytest.mark.parametrize("section", [None, *SECTIONS])
@pytest.mark.parametrize("key", ["heads", "n_experts", "N_LAYERS", "", "1", "d_model "])
def test_from_dict_unknown_key(section, key):
    data = json_config()
    (data[section] if section else data)[key] = 1
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert info.value.field == (f"{section}.{key}" if section else "config.json")
    assert repr(key) in str(info.value) or key in str(info.value)


@pytest.mark.parametrize("section", list(SECTIONS))
@pytest.mark.parametrize("value", [None, [], [1, 2], "encoder", "", 3, 0, 1.5, True, [{"n_layers": 2}]],
                         ids=["null", "empty-list", "list", "str", "empty-str", "int", "zero", "float", "bool", "list-of-dict"])
def test_from_dict_section_of_wrong_type(section, value):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({**json_config(), section: value})
    assert info.value.field == section


@pytest.mark.parametrize("data", [None, [], [1], "config", 3, 1.5, True, ModelConfig()], ids=["null", "list", "list1", "str", "int", "float", "bool", "config"])
def test_from_dict_not_a_dict(data):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert info.value.field == "config.json"


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "{not json", "[", "]", "{'d_model': 64}", '{"d_model": 64,}', "nan", "-Inf", '{"d_model": 6 4}',
     '{"d_model": 64, "d_model": 64}', '{"encoder": {"n_layers": 2, "n_layers": 2}}', "[" * 100000 + "]" * 100000,
     '{"a": "\\ud800"', "\x00", "{} {}"],
    ids=lambda t: repr(t[:20]),
)
def test_from_json_not_json(text):
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        ModelConfig.from_json(text)
    assert info.value.field == "config.json"


@pytest.mark.parametrize("text", ["null", "[]", '"tiny"', "3", "true", "[{}]", "NaN", "Infinity"])
def test_from_json_not_an_object(text):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_json(text)
    assert info.value.field == "config.json"


@pytest.mark.parametrize("text", [None, 3, ["{}"], {"d_model": 64}, b"\xff\xfe", bytearray(b"\x80")])
def test_from_json_not_text(text):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_json(text)
    assert info.value.field == "config.json"


@pytest.mark.parametrize(("path", "constant"), [("d_model", "NaN"), ("norm_eps", "Infinity"), ("encoder.max_history", "-Infinity")])
def test_from_json_constants_name_their_field(path, constant):
    text = json.dumps(set_path(json_config(), path, "@@")).replace('"@@"', constant)
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_json(text)
    assert info.value.field == path


def test_from_json_huge_number():
    text = json.dumps(json_config()).replace('"d_model": 64', '"d_model": ' + "9" * 5000, 1)
    with pytest.raises(ConfigError):
        ModelConfig.from_json(text)


# -- direct construction ----------------------------------------------------------------------
def _direct_cases() -> list:
    cases = []
    for path in paths(json_config()):
        for vid, value in bad_values(path):
            if isinstance(value, list) and path.split(".")[-1] in TUPLE_FIELDS:
                value = tuple(value)  # the tuple form: what a direct caller passes
            cases.append(pytest.param(path, value, id=f"{path}-{vid}"))
    return cases


@pytest.mark.parametrize(("path", "value"), _direct_cases())
def test_model_config_direct_bad_value(path, value):
    if "." in path:
        section, key = path.split(".")
        kwargs = {section: SECTIONS[section](**{key: value})}
    else:
        kwargs = {path: value}
    with pytest.raises(ConfigError) as info:
        ModelConfig(**kwargs)
    assert_config_error(info, path)


@pytest.mark.parametrize("section", list(SECTIONS))
@pytest.mark.parametrize("value", [None, {}, "x", 3, [1], EncoderConfig, object()], ids=["null", "dict", "str", "int", "list", "class", "object"])
def test_model_config_section_of_wrong_type(section, value):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{section: value})
    assert info.value.field == section


@pytest.mark.parametrize("section", ["encoder", "decoder", "creative", "reward", "payment"])
def test_model_config_section_of_another_class(section):
    other = {"encoder": DecoderConfig(), "decoder": EncoderConfig(), "creative": RewardConfig(),
             "reward": PaymentConfig(), "payment": CreativeHeadConfig()}[section]
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{section: other})
    assert info.value.field == section


@pytest.mark.parametrize("sizes", [[32, 32], (32, 32.0), ("32",), (), (0,), (True, 2)])
def test_codebook_sizes_must_be_tuple_of_ints(sizes):
    with pytest.raises(ConfigError) as info:
        ModelConfig(poi_codebook_sizes=sizes)
    assert info.value.field.startswith("poi_codebook_sizes")


# -- memory: absurd values are refused before anything is built -------------------------------
@pytest.mark.parametrize(
    ("path", "value"),
    [("encoder.max_history", 10**12), ("poi_codebook_sizes", [10**12, 32, 32]), ("creative_codebook_sizes", [16, 2**40]),
     ("d_model", 2**40), ("encoder.n_layers", 10**9), ("decoder.n_layers", 10**9), ("reward.n_layers", 10**9),
     ("decoder.max_slots", 10**12), ("encoder.n_actions", 10**12), ("encoder.n_time_buckets", 10**12),
     ("encoder.ffn_hidden", 10**12), ("reward.tower_hidden", [10**12]), ("payment.hidden", [8] * 10**6),
     ("reward.d_model", 10**12), ("creative.ffn_hidden", 10**12)],
)
def test_absurd_sizes_refused_at_once(path, value):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(set_path(json_config(), path, value))
    assert time.perf_counter() - start < 1.0
    assert_config_error(info, path)


@pytest.mark.parametrize("key", ["max_history", "n_actions", "n_time_buckets", "ffn_hidden", "n_layers"])
def test_bounds_are_inclusive(key):
    """The documented bound itself is accepted (built on the meta device: no memory)."""
    value = BOUNDS[key] if key != "n_layers" else 4
    cfg = ModelConfig(encoder=dataclasses.replace(EncoderConfig(), **{key: value}))
    with torch.device("meta"):
        GenerativeAdModel(cfg)
    with pytest.raises(ConfigError):
        ModelConfig(encoder=dataclasses.replace(EncoderConfig(), **{key: BOUNDS[key] + 1}))


# -- model constructors -----------------------------------------------------------------------
@pytest.mark.parametrize("config", [None, {}, "tiny", 3, json_config(), PRESETS["tiny"]])
def test_model_needs_a_model_config(config):
    for build in (GenerativeAdModel, GenerativeAdModel.from_config):
        with pytest.raises(ConfigError) as info:
            build(config)
        assert info.value.field == "config"


@pytest.mark.parametrize("seed", [-1, 2**64, "0", 0.0, 1.5, None, True, [0]])
def test_from_config_bad_seed(seed):
    with pytest.raises(ConfigError) as info:
        GenerativeAdModel.from_config(PRESETS["tiny"].model, seed=seed)
    assert info.value.field == "seed"


@pytest.mark.parametrize("name", [None, 3, ["tiny"], {"tiny": 1}, "Tiny", "", "tiny ", b"tiny"])
def test_get_preset_bad_name(name):
    with pytest.raises(ConfigError) as info:
        get_preset(name)
    assert info.value.field == "preset"


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", None), ("model", {}), ("decode", None), ("decode", "lists"), ("seed", -1), ("seed", "0"), ("seed", 1.0),
     ("seed", True), ("seed", 2**64), ("weights", 3), ("weights", ""), ("weights", "../tiny"), ("weights", "a/b"), ("weights", "..")],
)
def test_preset_bad_field(field, value):
    good = PRESETS["tiny"]
    kwargs = dict(model=good.model, decode=good.decode, seed=good.seed, weights=good.weights)
    kwargs[field] = value
    with pytest.raises(ConfigError) as info:
        Preset(**kwargs)
    assert info.value.field == field


# -- from_pretrained --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_inputs")
    GenerativeAdModel.from_config(PRESETS["tiny"].model, seed=0).save_pretrained(path)
    return path


@pytest.fixture
def copy_of(saved, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((saved / name).read_bytes())
    return tmp_path


def checkpoint_fails(path, *, field: str | None = None, names: tuple[str, ...] = ()) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        GenerativeAdModel.from_pretrained(path)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, EgaInferError)
    if field is not None:
        assert isinstance(err, ConfigFileError) and isinstance(err, ConfigError)
        assert err.field == field or err.field.startswith(field + "[") or err.field.startswith(field + "."), (err.field, str(err))
        assert "config.json" in str(err)
    for name in names:
        assert name in str(err), str(err)
    return err


def test_loads(copy_of):
    model = GenerativeAdModel.from_pretrained(copy_of)
    assert model.config == PRESETS["tiny"].model


@pytest.mark.parametrize(("path", "value"), _config_cases()[::3])
def test_config_json_bad_value(copy_of, path, value):
    (copy_of / "config.json").write_text(json.dumps(set_path(json_config(), path, value)))
    checkpoint_fails(copy_of, field=path)


@pytest.mark.parametrize("path", paths(json_config()) + list(SECTIONS))
def test_config_json_missing_key(copy_of, path):
    (copy_of / "config.json").write_text(json.dumps(del_path(json_config(), path)))
    checkpoint_fails(copy_of, field=path, names=("is missing",))


@pytest.mark.parametrize("section", list(SECTIONS))
@pytest.mark.parametrize("value", [None, [], "x", 3])
def test_config_json_null_or_wrong_section(copy_of, section, value):
    (copy_of / "config.json").write_text(json.dumps({**json_config(), section: value}))
    checkpoint_fails(copy_of, field=section)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"null", b"[]", b"\xff\xfe\x00", b'{"d_model": 64', b"{" + b'"a": 1, ' * 10 + b"}", b"[" * 200000],
    ids=["empty", "open", "null", "list", "not-utf8", "nan", "trailing", "deep"],
)
def test_config_json_not_a_config(copy_of, content):
    (copy_of / "config.json").write_bytes(content)
    checkpoint_fails(copy_of, field="config.json")


def test_config_json_too_large(copy_of):
    (copy_of / "config.json").write_text(json.dumps(json_config()) + " " * (2 << 20))
    checkpoint_fails(copy_of, names=("config.json", "bytes"))


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("how", ["deleted", "directory"])
def test_missing_file(copy_of, name, how):
    (copy_of / name).unlink()
    if how == "directory":
        (copy_of / name).mkdir()
    checkpoint_fails(copy_of, names=(name,))


@pytest.mark.parametrize("path", [None, 3, ["dir"], {"a": 1}, b"/tmp", 1.5])
def test_bad_path_type(path):
    with pytest.raises(CheckpointError):
        GenerativeAdModel.from_pretrained(path)


@pytest.mark.parametrize("device", ["nonsense", "cuda:99", "meta", 3, None, ["cpu"], "cpu:x", "tpu"])
def test_bad_device(copy_of, device):
    with pytest.raises(ConfigError) as info:
        GenerativeAdModel.from_pretrained(copy_of, device=device)
    assert info.value.field == "device"


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e4m3fn, torch.complex64, "float32", float, 32])
def test_bad_dtype(copy_of, dtype):
    with pytest.raises(ConfigError) as info:
        GenerativeAdModel.from_pretrained(copy_of, dtype=dtype)
    assert info.value.field == "dtype"


def _state(saved) -> dict[str, torch.Tensor]:
    return load_file(str(saved / "model.safetensors"))


def _names(saved) -> list[str]:
    return sorted(_state(saved))


@pytest.fixture(scope="module")
def tensor_names(saved) -> list[str]:
    return _names(saved)


@pytest.mark.parametrize("pick", [0, 1, 7, 40, 77, 100, -2, -1])
def test_weights_missing_tensor(copy_of, tensor_names, pick):
    state = _state(copy_of)
    name = tensor_names[pick]
    del state[name]
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=("model.safetensors", name, "missing"))


@pytest.mark.parametrize("extra", ["decoder.blocks.99.weight", "lm_head.weight", "encoder.pos_emb.bias", "x"])
def test_weights_extra_tensor(copy_of, extra):
    state = _state(copy_of)
    state[extra] = torch.zeros(3)
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=("model.safetensors", extra))


@pytest.mark.parametrize("pick", [0, 3, 50, -1])
def test_weights_renamed_tensor(copy_of, tensor_names, pick):
    state = _state(copy_of)
    name = tensor_names[pick]
    state[name + ".renamed"] = state.pop(name)
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=(name,))


@pytest.mark.parametrize("pick", [0, 2, 9, 33, -1])
@pytest.mark.parametrize("change", ["transpose", "grow", "shrink", "flatten", "scalar", "extra-dim"])
def test_weights_wrong_shape(copy_of, tensor_names, pick, change):
    state = _state(copy_of)
    name = tensor_names[pick]
    t = state[name]
    new = {
        "transpose": lambda: t.T.contiguous() if t.dim() == 2 and t.shape[0] != t.shape[1] else torch.zeros(t.numel() + 1),
        "grow": lambda: torch.zeros(t.shape[0] + 1, *t.shape[1:]),
        "shrink": lambda: t[:-1].contiguous() if t.shape[0] > 1 else torch.zeros(0),
        "flatten": lambda: t.reshape(-1).contiguous() if t.dim() > 1 else t.reshape(1, -1).contiguous(),
        "scalar": lambda: torch.zeros(()),
        "extra-dim": lambda: t[None].contiguous(),
    }[change]()
    state[name] = new
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=("model.safetensors", name, "shape"))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float64, torch.float8_e4m3fn])
@pytest.mark.parametrize("pick", [0, -1])
def test_weights_wrong_dtype(copy_of, tensor_names, dtype, pick):
    state = _state(copy_of)
    name = tensor_names[pick]
    state[name] = state[name].to(dtype)
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=("model.safetensors", name, "dtype"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_mixed_dtypes(copy_of, tensor_names, dtype):
    state = _state(copy_of)
    state[tensor_names[5]] = state[tensor_names[5]].to(dtype)
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=("dtype",))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_in_one_half_dtype_load(copy_of, dtype):
    state = {k: v.to(dtype) for k, v in _state(copy_of).items()}
    save_file(state, str(copy_of / "model.safetensors"))
    model = GenerativeAdModel.from_pretrained(copy_of)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.dtype for p in GenerativeAdModel.from_pretrained(copy_of, dtype=torch.float32).parameters()} == {torch.float32}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("pick", [0, 17, -1])
def test_weights_not_finite(copy_of, tensor_names, value, pick):
    state = _state(copy_of)
    name = tensor_names[pick]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    save_file(state, str(copy_of / "model.safetensors"))
    checkpoint_fails(copy_of, names=(name, "finite"))


@pytest.mark.parametrize("cut", [0, 1, 8, 100, -1, -100])
def test_weights_not_safetensors(copy_of, cut):
    data = (copy_of / "model.safetensors").read_bytes()
    (copy_of / "model.safetensors").write_bytes(data[:cut] if cut else b"")
    checkpoint_fails(copy_of, names=("model.safetensors",))


@pytest.mark.parametrize("content", [b"garbage", b"\x00" * 16, b"\xff" * 8 + b"{}", json.dumps({"a": 1}).encode()])
def test_weights_garbage(copy_of, content):
    (copy_of / "model.safetensors").write_bytes(content)
    checkpoint_fails(copy_of, names=("model.safetensors",))


def test_weights_of_another_config(copy_of, saved):
    """The config and the weights disagree: the weights' shapes are checked from the header."""
    data = json_config()
    data["encoder"]["max_history"] = C.MAX_HISTORY  # allowed, and nothing allocated for it
    (copy_of / "config.json").write_text(json.dumps(data))
    checkpoint_fails(copy_of, names=("encoder.pos_emb.weight", "shape"))


@pytest.mark.parametrize("target", ["file", "bad-type"])
def test_save_pretrained_errors(tmp_path, target):
    model = GenerativeAdModel.from_config(PRESETS["tiny"].model)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError):
        model.save_pretrained(tmp_path / "f" if target == "file" else 3)
