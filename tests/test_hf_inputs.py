"""Bad input to the Hugging Face path, class by class: every public constructor and loader of
``ega_infer.hf`` refuses it with the project's own error naming the field, never runs silently
wrong, never allocates what the catalog cannot fill.

Each test generates many members of one class of input (random, seeded) and checks the error
type and field for each. The checkpoints are written here with safetensors from the engine's own
shape table (no transformers needed); the equality with transformers is ``test_hf_models.py``.
Searches run on the PyTorch references (``backend="torch"``): what is checked is the input
handling, not the kernels.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ega_infer.catalog.trie import DeviceTrie, TrieArrays
from ega_infer.exceptions import (
    CatalogError, CheckpointError, ConfigError, EgaInferError, FieldError, SidCollisionWarning,
)
from ega_infer.hf import (
    DEFAULT_MAX_BEAMS, CausalLM, CausalLMConfig, CausalLMEngine, SidLayout, disambiguate_sids,
)
from ega_infer.hf.weights import hf_shapes

VOCAB = 48
MAX_POSITIONS = 20
LAYOUT = SidLayout((8, 16, 24), (8, 8, 8))  # token ids 8 .. 31
LIMIT = MAX_POSITIONS - (LAYOUT.levels - 1)  # the longest prompt: 18 tokens
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
    "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "dtype": "float32",
}


def write_checkpoint(path: Path, config: dict, tensors: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if tensors is None:
        tensors = random_tensors(config)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def random_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = hf_shapes(CausalLMConfig.from_dict(config))
    return {name: (1.0 if "norm" in name else 0.0) + 0.4 * torch.randn(shape, generator=gen)
            for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("llama"), CONFIG)


@pytest.fixture(scope="module")
def engine(model_dir) -> CausalLMEngine:
    return CausalLMEngine.from_hf(model_dir, LAYOUT, backend="torch")


def full_catalog(layout: SidLayout = LAYOUT) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in layout.sizes], indexing="ij"), -1)
    return grid.reshape(-1, layout.levels)


def random_catalog(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """``n`` distinct IDs of LAYOUT, in random order (collisions: ``colliding_catalog``)."""
    n = int(rng.integers(1, 60)) if n is None else n
    full = full_catalog()
    return full[rng.choice(len(full), size=n, replace=False)]


def random_prompts(rng: np.random.Generator, count: int | None = None) -> list[list[int]]:
    count = int(rng.integers(1, 5)) if count is None else count
    return [rng.integers(0, VOCAB, size=int(rng.integers(1, LIMIT + 1))).tolist()
            for _ in range(count)]


def raises_field(error: type, field: str, call, *args, **kwargs) -> EgaInferError:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    assert info.value.field == field, (info.value.field, str(info.value))
    return info.value


SIDS = np.array([[0, 1, 2], [3, 4, 5], [7, 7, 7]])


# --- prompts ----------------------------------------------------------------------------------

BAD_TOKENS = ["3", b"3", 2.0, 2.5, float("nan"), float("inf"), True, False, np.bool_(True), None,
              {}, {"id": 1}, [1], (2,), [], 1j, np.float32(1), np.float64(2), torch.tensor(1.5),
              torch.tensor([1, 2]), np.array([1, 2]), object(), -1, -(2**70), VOCAB, VOCAB + 7,
              2**31, 2**63 - 1, 2**63, 2**70, np.int64(-3), np.uint64(2**64 - 1)]
BAD_PROMPTS = ["abc", b"ab", 5, 3.0, None, True, {}, {"ids": [1]}, set(), frozenset({1}), [], (),
               np.array([], dtype=np.int64), torch.zeros(0, dtype=torch.long),
               np.zeros((2, 2), dtype=np.int64), torch.zeros(2, 2, dtype=torch.long),
               np.array([1.0, 2.0]), np.array([1, 2], dtype=np.float32),
               torch.tensor([1.0, 2.0]), torch.tensor([True, False]), np.array([True]),
               np.array(["1", "2"]), np.array([1, None], dtype=object), np.int64(4),
               iter([1, 2]), range(3), np.array(7), torch.tensor(7),
               np.array([1, VOCAB]), torch.tensor([0, -1]), [[1, 2], [3]], [[1], 2]]
BAD_BATCHES = ["abc", b"abc", 5, 2.5, None, True, {}, {0: [1]}, set(), iter([[1]]),
               (p for p in [[1]]), np.arange(4), torch.arange(4), np.zeros((2, 3, 4), np.int64),
               torch.zeros(1, 2, 3, dtype=torch.long), np.zeros((2, 3)), torch.zeros(2, 3),
               torch.zeros(2, 3, dtype=torch.bool), np.zeros((2, 3), dtype=np.bool_),
               np.array([["1", "2"]]), np.zeros((2, 3), dtype=np.complex64), np.array(3),
               torch.tensor(3), [1, 2, 3], (4, 5), [np.int64(1), 2]]


def bad_prompt_batches(rng: np.random.Generator):
    """(prompts, field): valid batches with one prompt (or one token) broken."""
    for token in BAD_TOKENS:
        for _ in range(3):
            prompts = random_prompts(rng)
            i = int(rng.integers(len(prompts)))
            j = int(rng.integers(len(prompts[i]) + 1))
            prompts[i] = prompts[i][:j] + [token] + prompts[i][j:]
            if rng.random() < 0.3:
                prompts[i] = tuple(prompts[i])
            yield prompts, f"prompts[{i}]"
    for prompt in BAD_PROMPTS:
        for _ in range(3):
            prompts = random_prompts(rng)
            i = int(rng.integers(len(prompts) + 1))
            prompts.insert(i, prompt)
            yield prompts, f"prompts[{i}]"
    for batch in BAD_BATCHES:
        yield batch, "prompts"
    for _ in range(20):  # 2-D batches with one bad token
        batch = rng.integers(0, VOCAB, size=(int(rng.integers(1, 5)), int(rng.integers(1, LIMIT))))
        i, j = int(rng.integers(batch.shape[0])), int(rng.integers(batch.shape[1]))
        batch[i, j] = rng.choice([-1, VOCAB, VOCAB + 100, -(2**40), 2**40])
        yield (torch.from_numpy(batch) if rng.random() < 0.5 else batch), f"prompts[{i}]"
    yield np.zeros((3, 0), dtype=np.int64), "prompts[0]"
    yield torch.zeros(2, 0, dtype=torch.int32), "prompts[0]"


def test_bad_prompts_name_the_prompt(engine) -> None:
    rng = np.random.default_rng(1)
    count = 0
    for prompts, field in bad_prompt_batches(rng):
        raises_field(FieldError, field, engine.beam_search, prompts, SIDS, 2)
        count += 1
    assert count >= 240


@pytest.mark.parametrize("form", ["list", "array", "tensor", "batch"])
def test_prompts_too_long_for_the_positions(form, engine) -> None:
    # prompt length + levels - 1 positions must fit max_position_embeddings
    rng = np.random.default_rng(2)
    for _ in range(25):
        prompts = random_prompts(rng)
        i = int(rng.integers(len(prompts)))
        length = LIMIT + int(rng.integers(1, 40))
        prompts[i] = rng.integers(0, VOCAB, size=length).tolist()
        if form == "batch":
            prompts, i = rng.integers(0, VOCAB, size=(len(prompts), length)), 0
        elif form == "array":
            prompts = [np.asarray(p, dtype=np.int32) for p in prompts]
        elif form == "tensor":
            prompts = [torch.tensor(p) for p in prompts]
        error = raises_field(FieldError, f"prompts[{i}]", engine.beam_search, prompts, SIDS, 2)
        assert f"max_position_embeddings {MAX_POSITIONS}" in str(error) and str(LIMIT) in str(error)
    # exactly at the limit: served
    assert len(engine.beam_search([list(range(LIMIT))], SIDS, 2)[0]) == 2


def equivalent_forms(prompts: list[list[int]], rng: np.random.Generator):
    """The same batch in every accepted form."""
    yield "tuples", tuple(tuple(p) for p in prompts)
    yield "numpy ints", [[np.int64(t) for t in p] for p in prompts]
    yield "0-d tensors", [[torch.tensor(t) for t in p] for p in prompts]
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32):
        yield f"1-D {dtype.__name__}", [np.asarray(p, dtype=dtype) for p in prompts]
    for dtype in (torch.int16, torch.int32, torch.int64, torch.uint8):
        yield f"1-D {dtype}", [torch.tensor(p, dtype=dtype) for p in prompts]
    strided = [torch.tensor([t for t in p for _ in (0, 1)])[::2] for p in prompts]
    yield "strided tensors", strided
    if len({len(p) for p in prompts}) == 1:
        for dtype in (np.int8, np.int32, np.int64, np.uint16):
            yield f"2-D {dtype.__name__}", np.asarray(prompts, dtype=dtype)
        for dtype in (torch.int32, torch.int64):
            yield f"2-D {dtype}", torch.tensor(prompts, dtype=dtype)
        yield "2-D transposed view", torch.tensor(prompts).T.contiguous().T
        yield "2-D Fortran order", np.asfortranarray(np.asarray(prompts))


@pytest.mark.parametrize("seed", range(4))
def test_every_prompt_form_gives_the_same_beams(seed, engine) -> None:
    rng = np.random.default_rng(seed)
    sids = random_catalog(rng, 40)
    ragged = random_prompts(rng, 3)
    length = int(rng.integers(1, LIMIT + 1))
    square = [rng.integers(0, VOCAB, size=length).tolist() for _ in range(3)]
    for prompts in (ragged, square):
        want = engine.beam_search(prompts, sids, 5)
        assert len(want) == len(prompts) and all(want)
        for name, form in equivalent_forms(prompts, rng):
            assert engine.beam_search(form, sids, 5) == want, name


def test_empty_batch_returns_nothing(engine) -> None:
    for batch in ([], (), np.zeros((0, 4), dtype=np.int64), torch.zeros(0, 3, dtype=torch.long)):
        assert engine.beam_search(batch, SIDS, 3) == []


# --- the catalog ------------------------------------------------------------------------------

def bad_catalogs(rng: np.random.Generator):
    """(sids, error, field)."""
    for _ in range(10):
        rows = random_catalog(rng).tolist()
        i = int(rng.integers(len(rows)))
        rows[i] = rows[i][:-1] if rng.random() < 0.5 else rows[i] + [0]
        yield rows, FieldError, "sids"  # ragged
    for value in (0.5, 1.0, float("nan"), "1", b"1", None, True, np.bool_(False), [1], {}, 1j,
                  2**70, -(2**70), object(), torch.tensor(0.5), np.float64(3)):
        rows = random_catalog(rng).tolist()
        i, j = int(rng.integers(len(rows))), int(rng.integers(LAYOUT.levels))
        rows[i][j] = value
        yield rows, FieldError, "sids"
    for value in ("abc", b"abc", 5, 2.5, None, True, {}, {"sids": SIDS}, set(), iter(SIDS),
                  [], (), [[]], [[], []], np.zeros(0), np.zeros((0, 3), dtype=np.int64),
                  torch.zeros(0, 3, dtype=torch.long), np.arange(3), torch.arange(3),
                  np.zeros((2, 3, 1), dtype=np.int64), torch.zeros(1, 1, 3, dtype=torch.long),
                  np.zeros((4, 2), dtype=np.int64), np.zeros((4, 4), dtype=np.int64),
                  torch.zeros(3, 5, dtype=torch.long), np.zeros((2, 3)), torch.zeros(2, 3),
                  np.zeros((2, 3), dtype=np.bool_), torch.zeros(2, 3, dtype=torch.bool),
                  np.array([["a", "b", "c"]]), np.array([[1, None, 2]], dtype=object),
                  [[True, False, True]], [1, 2, 3], [[0, 1, 2], 3], [[[0, 1, 2]]],
                  TrieArrays.build(SIDS, np.zeros(3, bool), np.zeros(3, np.float32), (8, 8, 8))):
        yield value, FieldError, "sids"
    for _ in range(25):  # codes outside their level: CatalogError naming the code
        sids = random_catalog(rng)
        i, level = int(rng.integers(len(sids))), int(rng.integers(LAYOUT.levels))
        size = LAYOUT.sizes[level]
        sids[i, level] = rng.choice([-1, -(2**40), size, size + 1, 2**40])
        form = rng.integers(3)
        value = sids if form == 0 else torch.from_numpy(sids) if form == 1 else sids.tolist()
        yield value, CatalogError, f"sids[{i}, {level}]"


def test_bad_catalogs_name_the_field(engine) -> None:
    rng = np.random.default_rng(3)
    count = 0
    for sids, error, field in bad_catalogs(rng):
        for call in (lambda s: engine.beam_search([[1, 2]], s, 2), engine.build_trie):
            raises_field(error, field, call, sids)
            count += 1
    assert count > 160


class ArrayLike:
    """A foreign array type (pandas, jax): only ``__array__``."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __array__(self, dtype=None, copy=None):
        return self.array


@pytest.mark.parametrize("seed", range(3))
def test_every_catalog_form_gives_the_same_beams(seed, engine) -> None:
    rng = np.random.default_rng(seed)
    sids = random_catalog(rng, int(rng.integers(1, 80)))
    prompts = random_prompts(rng)
    want = engine.beam_search(prompts, sids.tolist(), 6)
    forms = {"tuples": tuple(map(tuple, sids.tolist())), "rows of arrays": list(sids),
             "rows of tensors": list(torch.from_numpy(sids)), "numpy ints": [
                 [np.int32(c) for c in row] for row in sids.tolist()],
             "Fortran": np.asfortranarray(sids), "array-like": ArrayLike(sids),
             "strided": np.repeat(sids, 2, axis=0)[::2], "tensor view": torch.from_numpy(
                 np.ascontiguousarray(sids.T)).T}
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64):
        forms[dtype.__name__] = sids.astype(dtype)
    for dtype in (torch.int8, torch.uint8, torch.int32, torch.int64):
        forms[str(dtype)] = torch.from_numpy(sids).to(dtype)
    for name, form in forms.items():
        assert engine.beam_search(prompts, form, 6) == want, name
    trie = engine.build_trie(forms["tensor view"])
    assert engine.beam_search(prompts, trie, 6) == want


def test_trie_of_another_layout_or_device_is_refused(model_dir, engine) -> None:
    for sizes in ((8, 8), (8, 8, 7), (4, 8, 8), (8, 8, 8, 2), (9,)):
        offsets = tuple(8 + 8 * level for level in range(len(sizes)))
        other = CausalLMEngine.from_hf(model_dir, SidLayout(offsets, sizes), backend="torch")
        trie = other.build_trie(full_catalog(other.layout)[:5])
        raises_field(FieldError, "sids", engine.beam_search, [[1]], trie, 2)
    arrays = TrieArrays.build(SIDS, np.zeros(3, bool), np.zeros(3, np.float32), LAYOUT.sizes)
    meta = DeviceTrie(arrays, LAYOUT.sizes, torch.device("meta"))
    error = raises_field(FieldError, "sids", engine.beam_search, [[1]], meta, 2)
    assert "meta" in str(error)
    # the same layout on the same device: accepted
    same = DeviceTrie(arrays, LAYOUT.sizes, torch.device("cpu"))
    assert engine.beam_search([[1]], same, 2) == engine.beam_search([[1]], SIDS, 2)


# --- num_beams, flags, max_beams --------------------------------------------------------------

BAD_BEAMS = [0, -1, -(10**9), 1.0, 2.5, float("nan"), float("inf"), True, False, np.bool_(True),
             "4", b"4", None, [4], (4,), {}, np.float64(4), np.float32(2), torch.tensor(4.0),
             torch.tensor([4]), np.array([4]), 1j, DEFAULT_MAX_BEAMS + 1, 10**9, 10**30,
             np.int64(-2), np.int64(10**12), torch.tensor(10**9)]
BAD_FLAGS = [0, 1, 2, -1, "True", "False", "", None, 1.0, 0.0, [True], (False,), {}, np.int64(1),
             torch.tensor(True), np.array([True]), object()]


def test_bad_beam_counts_name_num_beams(engine) -> None:
    for beams in BAD_BEAMS:
        raises_field(FieldError, "num_beams", engine.beam_search, [[1]], SIDS, beams)


def test_integer_beam_counts_of_any_int_type(engine) -> None:
    want = engine.beam_search([[1, 2]], SIDS, 2)
    for beams in (np.int8(2), np.int16(2), np.int32(2), np.int64(2), np.uint8(2), np.uint64(2),
                  torch.tensor(2), torch.tensor(2, dtype=torch.int32), np.array(2)):
        assert engine.beam_search([[1, 2]], SIDS, beams) == want


def test_flags_must_be_bools(engine) -> None:
    for flag in BAD_FLAGS:
        raises_field(FieldError, "renormalize", engine.beam_search, [[1]], SIDS, 2, flag)
        raises_field(FieldError, "return_items", engine.beam_search, [[1]], SIDS, 2,
                     return_items=flag)
    assert (engine.beam_search([[1]], SIDS, 2, np.bool_(True))
            == engine.beam_search([[1]], SIDS, 2, True))


def test_renormalize_defaults_to_false(engine) -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        prompts, sids = random_prompts(rng), random_catalog(rng, 30)
        default = engine.beam_search(prompts, sids, 4)
        assert default == engine.beam_search(prompts, sids, 4, renormalize=False)
        assert default != engine.beam_search(prompts, sids, 4, renormalize=True)


def test_max_beams_is_configurable_and_checked(model_dir) -> None:
    for bad in (0, -3, 1.5, True, "8", None, [8], np.float64(8)):
        raises_field(FieldError, "max_beams", CausalLMEngine.from_hf, model_dir, LAYOUT,
                     max_beams=bad)
    engine = CausalLMEngine.from_hf(model_dir, LAYOUT, backend="torch", max_beams=np.int32(6))
    assert engine.max_beams == 6 and CausalLMEngine(engine.model, LAYOUT).max_beams == 4096
    raises_field(FieldError, "max_beams", CausalLMEngine, engine.model, LAYOUT, max_beams=0)
    error = raises_field(FieldError, "num_beams", engine.beam_search, [[1]], SIDS, 7)
    assert "max_beams=6" in str(error)
    assert len(engine.beam_search([[1]], full_catalog(), 6)[0]) == 6


def capacity_by_hand(sids: np.ndarray, beams: int) -> list[int]:
    """Per level, min(beams, distinct prefixes of that depth, previous width * widest node)."""
    widths, width = [], 1
    for level in range(sids.shape[1]):
        prefixes, parents = np.unique(sids[:, :level + 1], axis=0), {}
        for row in prefixes.tolist():
            parents[tuple(row[:-1])] = parents.get(tuple(row[:-1]), 0) + 1
        width = min(beams, len(prefixes), width * max(parents.values()))
        widths.append(width)
    return widths


@pytest.mark.parametrize("seed", range(3))
def test_widths_beyond_the_catalog_are_clamped(seed, engine, monkeypatch) -> None:
    from ega_infer.hf import engine as engine_module

    rng = np.random.default_rng(seed)
    ks, step = [], engine_module.beam_step

    def spy(*args, k, **kwargs):
        ks.append(k)
        return step(*args, k=k, **kwargs)

    monkeypatch.setattr(engine_module, "beam_step", spy)
    for _ in range(12):
        sids = random_catalog(rng, int(rng.integers(1, 80)))
        beams = int(rng.choice([1, 2, 3, 7, 50, 512, DEFAULT_MAX_BEAMS, rng.integers(1, 5000)]))
        beams = min(beams, DEFAULT_MAX_BEAMS)
        prompts = random_prompts(rng)
        want = capacity_by_hand(sids, beams)
        assert engine.beam_widths(engine.build_trie(sids), beams) == want
        ks.clear()
        results = engine.beam_search(prompts, sids, beams)
        assert ks == want  # what each level allocates, not num_beams
        items = {tuple(row) for row in sids.tolist()}
        for rows in results:
            assert len(rows) <= want[-1] and all(codes in items for codes, _ in rows)
            if beams >= len(items):  # every level keeps every candidate: all items come back
                assert len(rows) == len(items)
        if want == capacity_by_hand(sids, DEFAULT_MAX_BEAMS):  # beams at capacity everywhere
            assert results == engine.beam_search(prompts, sids, DEFAULT_MAX_BEAMS)


def test_huge_width_on_a_full_catalog_stays_small(engine) -> None:
    widths = engine.beam_widths(engine.build_trie(full_catalog()), DEFAULT_MAX_BEAMS)
    assert widths == [8, 64, 512]
    results = engine.beam_search([[1, 2, 3], [4]], full_catalog(), DEFAULT_MAX_BEAMS)
    assert [len(r) for r in results] == [512, 512]
    scores = [s for _, s in results[0]]
    assert scores == sorted(scores, reverse=True)
    # a bound raised to 10**12: a width of 10**12 is served at what the catalog fills
    wide = CausalLMEngine(engine.model, LAYOUT, backend="torch", max_beams=10**12)
    assert wide.beam_search([[1, 2, 3], [4]], full_catalog(), 10**12) == results
    assert len(wide.beam_search([[5]], SIDS, 10**12)[0]) == 3


# --- semantic-ID collisions -------------------------------------------------------------------

def colliding_catalog(rng: np.random.Generator) -> np.ndarray:
    base = random_catalog(rng, int(rng.integers(1, 30)))
    picks = rng.integers(0, len(base), size=int(rng.integers(1, 40)))
    sids = np.concatenate([base, base[picks]])
    return sids[rng.permutation(len(sids))]


@pytest.mark.parametrize("seed", range(3))
def test_collisions_warn_with_counts(seed, engine) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(15):
        sids = colliding_catalog(rng)
        _, inverse, counts = np.unique(sids, axis=0, return_inverse=True, return_counts=True)
        shared, distinct = int((counts[inverse.ravel()] > 1).sum()), len(counts)
        calls = (lambda: engine.build_trie(sids),
                 lambda: engine.beam_search([[1, 2]], sids, 4))
        for call in calls:
            if distinct == len(sids):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    call()
                continue
            with pytest.warns(SidCollisionWarning) as record:
                call()
            assert len(record) == 1
            message = str(record[0].message)
            assert f"{shared} of {len(sids)} items" in message
            assert f"{distinct} distinct IDs" in message and "disambiguate_sids" in message
            assert record[0].filename == __file__  # stacklevel: the caller's line


def test_no_warning_for_distinct_ids_or_a_prebuilt_trie(engine) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.beam_search([[1]], full_catalog(), 4)
    with pytest.warns(SidCollisionWarning):
        trie = engine.build_trie(np.concatenate([SIDS, SIDS]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.beam_search([[1]], trie, 4)  # warned once, at the build


@pytest.mark.parametrize("seed", range(3))
def test_return_items_maps_every_id_to_its_rows(seed, engine) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        sids = colliding_catalog(rng)
        rows_of: dict[tuple, list[int]] = {}
        for row, codes in enumerate(map(tuple, sids.tolist())):
            rows_of.setdefault(codes, []).append(row)
        prompts = random_prompts(rng)
        beams = int(rng.integers(1, 70))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SidCollisionWarning)
            plain = engine.beam_search(prompts, sids, beams)
            with_rows = engine.beam_search(prompts, sids, beams, return_items=True)
        assert [[(c, s) for c, s, _ in r] for r in with_rows] == plain
        for result in with_rows:
            for codes, _, rows in result:
                assert list(rows) == rows_of[codes]  # catalog order, collisions included
            if beams >= len(rows_of):
                assert sorted(r for _, _, rows in result for r in rows) == list(range(len(sids)))


@pytest.mark.parametrize("seed", range(4))
def test_disambiguate_sids(seed, model_dir) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        sids = colliding_catalog(rng)
        form = int(rng.integers(3))
        given = sids if form == 0 else torch.from_numpy(sids) if form == 1 else sids.tolist()
        extended, size = disambiguate_sids(given)
        assert extended.shape == (len(sids), sids.shape[1] + 1)
        np.testing.assert_array_equal(extended[:, :-1], sids)
        assert len({tuple(r) for r in extended.tolist()}) == len(sids)  # every item distinct
        seen: dict[tuple, int] = {}
        for row, codes in zip(extended[:, -1].tolist(), map(tuple, sids.tolist())):
            assert row == seen.get(codes, 0)  # the k-th item with an ID gets code k
            seen[codes] = row + 1
        assert size == max(seen.values())
        layout = SidLayout((8, 16, 24, 32), LAYOUT.sizes + (size,))
        assert LAYOUT.with_level(32, size) == layout
        if 32 + size <= VOCAB:  # a model with tokens for the level: no collision left
            engine = CausalLMEngine.from_hf(model_dir, layout, backend="torch")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                engine.build_trie(extended)
    extended, size = disambiguate_sids(full_catalog())
    assert size == 1 and not extended[:, -1].any()
    for bad in ("abc", None, [[0, 1], [2]], np.zeros((2, 2)), np.arange(3), [[0.5, 1]]):
        raises_field(FieldError, "sids", disambiguate_sids, bad)


# --- SidLayout --------------------------------------------------------------------------------

def bad_layouts(rng: np.random.Generator):
    """(offsets, sizes, shared_tokens, field)."""
    for value in (None, 3, 2.5, "012", b"01", {0: 1}, {1, 2}, True, object()):
        yield value, (4, 4), False, "offsets"
        yield (0, 8), value, False, "sizes"
    for value in (0.5, 1.0, "1", None, True, np.bool_(False), [1], np.float64(2), 1j,
                  torch.tensor(1.5)):
        for _ in range(2):
            levels = int(rng.integers(1, 5))
            offsets = [8 * level for level in range(levels)]
            sizes = [8] * levels
            i = int(rng.integers(levels))
            if rng.random() < 0.5:
                offsets[i] = value
                yield offsets, sizes, False, f"offsets[{i}]"
            else:
                sizes[i] = value
                yield offsets, sizes, False, f"sizes[{i}]"
    for _ in range(15):
        levels = int(rng.integers(1, 5))
        offsets, sizes = [8 * level for level in range(levels)], [8] * levels
        i = int(rng.integers(levels))
        kind = rng.integers(4)
        if kind == 0:
            offsets[i] = -int(rng.integers(1, 10**6))
            yield offsets, sizes, False, f"offsets[{i}]"
        elif kind == 1:
            sizes[i] = -int(rng.integers(0, 10**6))
            yield offsets, sizes, False, f"sizes[{i}]"
        elif kind == 2:
            yield offsets + [0] * int(rng.integers(1, 3)), sizes, False, "offsets"
        else:
            yield offsets[:-1], sizes, False, "offsets"
    yield (), (), False, "sizes"
    for _ in range(20):  # overlapping token ranges
        levels = int(rng.integers(2, 5))
        sizes = [int(rng.integers(1, 20)) for _ in range(levels)]
        offsets = list(np.cumsum([0] + sizes[:-1]))
        a, b = sorted(rng.choice(levels, size=2, replace=False).tolist())
        offsets[b] = offsets[a] + int(rng.integers(0, sizes[a]))
        yield offsets, sizes, False, None  # field: whichever level lands on another
    for flag in (0, 1, "yes", None, 1.0):
        yield (0, 4), (4, 4), flag, "shared_tokens"


def test_bad_layouts_name_the_field() -> None:
    rng = np.random.default_rng(5)
    count = 0
    for offsets, sizes, shared, field in bad_layouts(rng):
        with pytest.raises(ConfigError) as info:
            SidLayout(offsets, sizes, shared)
        if field is None:
            assert info.value.field.startswith("offsets[") and "over level" in str(info.value)
        else:
            assert info.value.field == field, (offsets, sizes, str(info.value))
        count += 1
    assert count >= 75


def test_layouts_that_are_fine() -> None:
    rng = np.random.default_rng(6)
    for _ in range(30):
        levels = int(rng.integers(1, 6))
        sizes = [int(rng.integers(1, 300)) for _ in range(levels)]
        gaps = rng.integers(0, 5, size=levels)
        offsets = (np.cumsum([0] + sizes[:-1]) + np.cumsum(gaps)).tolist()
        order = rng.permutation(levels)  # levels need not be in token order
        layout = SidLayout(np.asarray(offsets)[order], np.asarray(sizes)[order])
        assert layout.levels == levels and all(isinstance(o, int) for o in layout.offsets)
        shared = SidLayout([offsets[0]] * levels, sizes, shared_tokens=True)
        assert shared.end == offsets[0] + max(sizes)


def test_layouts_that_do_not_fit_the_model(model_dir, engine) -> None:
    for layout in (SidLayout((40,), (9,)), SidLayout((0, 47), (8, 2)), SidLayout((10**9,), (1,)),
                   SidLayout(tuple(range(0, 21)), (1,) * 21)):  # past the vocab / the positions
        raises_field(FieldError, "sid_layout", CausalLMEngine.from_hf, model_dir, layout)
        raises_field(FieldError, "sid_layout", CausalLMEngine, engine.model, layout)
    for layout in (None, (8, 16), {"offsets": (8,), "sizes": (8,)}, "layout"):
        raises_field(FieldError, "sid_layout", CausalLMEngine.from_hf, model_dir, layout)
        raises_field(FieldError, "sid_layout", CausalLMEngine, engine.model, layout)


# --- loading ----------------------------------------------------------------------------------

REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads")
WRONG_TYPED = {  # key -> values of the wrong type or out of range
    **{key: ["16", 16.0, 2.5, True, [16], {"n": 16}, 0, -4] for key in REQUIRED},
    "num_key_value_heads": ["1", 1.5, False, [1], 0, -1, 3],
    "head_dim": ["8", 8.0, True, 0, -8, 7],
    "max_position_embeddings": [None, "20", 20.5, True, 0, -1, [20]],
    "rms_norm_eps": [None, "1e-6", True, 0, -1e-6, [1e-6]],
    "tie_word_embeddings": [None, "false", 0, 1, [False]],
    "attention_bias": [None, "false", 0, 1.0],
    "mlp_bias": [None, "no", 1],
    "hidden_act": [None, 3, ["silu"], "gelu"],
    "architectures": [None, "LlamaForCausalLM", [], ["LlamaForCausalLM"] * 2, [["Llama"]], [3],
                      {"a": 1}, ["GPT2LMHeadModel"]],
    "dtype": [3, ["float32"], "float64", "int8"],
    "layer_types": ["full_attention", 3, {"a": 1}, ["full_attention", "sliding_attention"]],
    "use_sliding_window": ["no", 1, None, True],
    "rope_parameters": ["default", 3, [1], {"rope_type": 3}, {"rope_type": "yarn"},
                        {"rope_type": "default", "rope_theta": None},
                        {"rope_type": "default", "rope_theta": "1e4"},
                        {"rope_type": "default", "rope_theta": -1.0},
                        {"rope_type": "default", "rope_theta": True}],
}


def test_config_json_fields(tmp_path) -> None:
    count = 0
    cases = [(key, value) for key, values in WRONG_TYPED.items() for value in values]
    cases += [(key, None) for key in REQUIRED] + [(key, "<missing>") for key in REQUIRED]
    for key, value in cases:
        raw = copy.deepcopy(CONFIG)
        if value == "<missing>":
            del raw[key]
        else:
            raw[key] = value
        with pytest.raises(ConfigError) as info:
            CausalLMConfig.from_dict(raw)
        assert info.value.field.split(".")[0].split("[")[0] == key, (key, value, str(info.value))
        # from a file: a ConfigError that is also a CheckpointError, naming the file
        (tmp_path / "config.json").write_text(json.dumps(raw))
        with pytest.raises(ConfigError) as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert isinstance(info.value, CheckpointError) and str(tmp_path) in str(info.value)
        count += 1
    assert count > 100


def test_config_json_nulls_that_mean_absent() -> None:
    raw = dict(CONFIG, head_dim=None, num_key_value_heads=None, rope_parameters=None,
               rope_scaling=None, layer_types=None, dtype=None)
    config = CausalLMConfig.from_dict(raw)
    assert (config.head_dim, config.num_kv_heads, config.dtype) == (8, 2, None)
    raw = {k: v for k, v in CONFIG.items() if k != "max_position_embeddings"}
    assert CausalLMConfig.from_dict(raw).max_position_embeddings == 2048  # transformers' default


def test_config_files_that_are_not_json(tmp_path) -> None:
    rng = np.random.default_rng(7)
    texts = [b"", b"{", b"{'a': 1}", b"[1, 2]", b"3", b"null", b'"config"', b"\xff\xfe\x00",
             b"{" * 100000, json.dumps(CONFIG).encode()[:-5], b"NaN"]
    texts += [rng.integers(0, 256, size=int(rng.integers(1, 200))).astype(np.uint8).tobytes()
              for _ in range(20)]
    for text in texts:
        (tmp_path / "config.json").write_bytes(text)
        with pytest.raises(CheckpointError, match="config.json"):
            CausalLMEngine.from_hf(tmp_path, LAYOUT)


def test_missing_or_wrong_directories(tmp_path) -> None:
    raises = pytest.raises(CheckpointError, match="config.json")
    for path in (tmp_path / "nowhere", str(tmp_path / "a" / "b"), tmp_path / "file"):
        if Path(path).name == "file":
            Path(path).write_text("{}")
        with raises:
            CausalLMEngine.from_hf(path, LAYOUT)
    with raises:  # a directory without config.json
        CausalLMEngine.from_hf(tmp_path, LAYOUT)
    for path in (None, 5, 2.5, b"dir", ["dir"], {"path": "x"}):
        raises_field(FieldError, "model_dir", CausalLMEngine.from_hf, path, LAYOUT)


def test_missing_wrong_or_extra_tensors(tmp_path, model_dir) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    rng = np.random.default_rng(8)
    count = 0
    for name in sorted(tensors):
        broken = dict(tensors)
        del broken[name]
        write_checkpoint(tmp_path, CONFIG, broken)
        with pytest.raises(CheckpointError, match="missing") as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert name in str(info.value)
        broken = dict(tensors)
        shape = list(tensors[name].shape)
        axis = int(rng.integers(len(shape)))
        shape[axis] += int(rng.choice([-1, 1, 3]))
        broken[name] = torch.zeros([max(s, 1) for s in shape] + ([1] if rng.random() < 0.2 else []))
        write_checkpoint(tmp_path, CONFIG, broken)
        with pytest.raises(CheckpointError, match="shape") as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert name in str(info.value)
        broken = dict(tensors)
        broken[name] = tensors[name].to(torch.int32 if rng.random() < 0.5 else torch.bool)
        write_checkpoint(tmp_path, CONFIG, broken)
        with pytest.raises(CheckpointError, match="dtype") as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert name in str(info.value)
        count += 3
    for extra in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                  "model.extra", "lm_head.bias"):
        write_checkpoint(tmp_path, CONFIG, dict(tensors, **{extra: torch.zeros(2)}))
        with pytest.raises(CheckpointError, match="does not account") as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert extra in str(info.value)
        count += 1
    assert count >= 40


def test_more_layers_than_the_checkpoint_holds(tmp_path, model_dir) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    for layers in (2, 3, 10**6, 10**12):  # refused at once, before listing every layer
        write_checkpoint(tmp_path, dict(CONFIG, num_hidden_layers=layers), tensors)
        with pytest.raises(CheckpointError, match="missing") as info:
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
        assert "model.layers.1.input_layernorm.weight" in str(info.value)


def test_unreadable_weight_files(tmp_path) -> None:
    rng = np.random.default_rng(9)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        CausalLMEngine.from_hf(tmp_path, LAYOUT)
    for _ in range(10):
        blob = rng.integers(0, 256, size=int(rng.integers(0, 300))).astype(np.uint8).tobytes()
        (tmp_path / "model.safetensors").write_bytes(blob)
        with pytest.raises(CheckpointError, match="safetensors"):
            CausalLMEngine.from_hf(tmp_path, LAYOUT)
    (tmp_path / "model.safetensors").unlink()
    index = tmp_path / "model.safetensors.index.json"
    for text in ("{", "[]", '{"weight_map": 3}', '{"weight_map": {"a": 3}}',
                 '{"weight_map": {"a": "../x.safetensors"}}', '{"weight_map": {"a": "gone.st"}}',
                 '{"no_map": {}}'):
        index.write_text(text)
        with pytest.raises(CheckpointError):
            CausalLMEngine.from_hf(tmp_path, LAYOUT)


def test_dtypes_and_devices(model_dir) -> None:
    for dtype in ("float64", "fp32", "int8", "", "torch.float32", torch.int32, torch.float64,
                  torch.bool, np.float32, 32, True, [torch.float32], object()):
        raises_field(FieldError, "dtype", CausalLMEngine.from_hf, model_dir, LAYOUT, dtype=dtype)
    bad_devices = ["gpu", "", "cuda:x", "meta", "mps", 0, 1.5, None, True, ["cpu"],
                   torch.device("meta")]
    if not torch.cuda.is_available():
        bad_devices += ["cuda", "cuda:0", torch.device("cuda", 3)]
    else:
        bad_devices += [f"cuda:{torch.cuda.device_count()}"]
    for device in bad_devices:
        raises_field(FieldError, "device", CausalLMEngine.from_hf, model_dir, LAYOUT,
                     device=device)
    for dtype, want in (("bfloat16", torch.bfloat16), (torch.float16, torch.float16),
                        (None, torch.float32)):
        engine = CausalLMEngine.from_hf(model_dir, LAYOUT, "cpu", dtype, backend="torch")
        assert engine.dtype == want and engine.device == torch.device("cpu")


def test_constructor_arguments(engine) -> None:
    for model in (None, "model", engine, engine.config, torch.nn.Linear(2, 2)):
        raises_field(FieldError, "model", CausalLMEngine, model, LAYOUT)
    for backend in ("gpu", "", None, 3, "AUTO", ["torch"]):
        raises_field(ConfigError, "backend", CausalLMEngine, engine.model, LAYOUT,
                     backend=backend)
    for config in (None, {}, CONFIG, "config"):
        raises_field(FieldError, "config", CausalLM, config)
