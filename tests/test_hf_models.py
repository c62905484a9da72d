"""Hugging Face Llama / Qwen3 causal LMs: weights load into the engine's modules and its
catalog-constrained beam search equals transformers' ``generate`` beam search.

The oracle is transformers 5.23.0 itself (a test dependency only), run offline on tiny random
models built from configs and saved with ``save_pretrained``. Their ``initializer_range`` (0.3 to
0.5) spreads the log-probabilities so that no two candidates tie within float noise. Norm weights
are randomised too, so a swapped or dropped norm cannot pass. The reference model runs with
``attn_implementation="eager"``; "sdpa" (transformers' default) differs from eager by ~3e-6 in
the logits and is checked on the logits. The engine runs the backends its ``"auto"`` resolves to
(the PyTorch references, or Triton's interpreter under ``TRITON_INTERPRET=1``): same items in the
same order, scores within ``ATOL + RTOL * |score|``.

transformers' ``num_beams=1`` is greedy search (no ``sequences_scores``): its score is summed from
the returned per-step scores / logits under the same normalisation. Its filler rows (scored
``-1e9`` when fewer catalog items than beams are reachable) are dropped before comparing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")

from ega_infer import CausalLMEngine, SidLayout  # noqa: E402
from ega_infer.exceptions import (  # noqa: E402
    CatalogError, CheckpointError, ConfigError, FieldError, SidCollisionWarning,
)
from ega_infer.hf import CausalLMConfig  # noqa: E402

transformers.logging.set_verbosity_error()

FILLER = -1e8  # transformers' filler rows score -1e9
# Scores agree to ATOL + RTOL * |score|. Both sides are float32 sums computed in different
# orders (the attention ops accumulate in their own order); on these models each is up to
# ~1e-5 away from the float64 value for scores near -15, so the two can be ~2e-5 apart: RTOL is
# 1e-6 (8 float32 ulps), ATOL covers scores near 0.
ATOL = 1e-5
RTOL = 1e-6

# name -> (architecture, tie_word_embeddings, initializer_range, layout, vocab, seed)
MODELS = {
    "llama": ("llama", False, 0.4, SidLayout((3, 20, 40), (4, 5, 6)), 96, 1),
    "llama-tied": ("llama", True, 0.3, SidLayout((50, 3, 12), (6, 5, 4)), 80, 2),
    # Qwen3 (q/k norms, tied like the small Qwen3 checkpoints); both levels share token ids
    "qwen3": ("qwen3", True, 0.5, SidLayout((10, 10), (9, 7), shared_tokens=True), 64, 3),
}


def build_model(arch: str, tie: bool, init: float, vocab: int, seed: int, **extra):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=init,
                  bos_token_id=0, eos_token_id=None, pad_token_id=2, tie_word_embeddings=tie,
                  **extra)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=8, **common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn_like(param))
    return model.eval()


def save(model, path: Path, attn: str = "eager"):
    model.save_pretrained(path)
    cls = type(model)
    return cls.from_pretrained(path, attn_implementation=attn, local_files_only=True).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model with eager attention, model directory, layout)."""
    out = {}
    for name, (arch, tie, init, layout, vocab, seed) in MODELS.items():
        path = tmp_path_factory.mktemp(name)
        out[name] = (save(build_model(arch, tie, init, vocab, seed), path), path, layout)
    return out


def catalog(layout: SidLayout, kind: str, beams: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in layout.sizes], indexing="ij"), -1)
    full = grid.reshape(-1, layout.levels)
    if kind == "full":
        return full
    count = max(1, beams // 2) if kind == "few" else max(1, int(0.4 * len(full)))
    return full[rng.choice(len(full), size=min(count, len(full)), replace=False)]


def prefix_table(layout: SidLayout, sids: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    table: dict[tuple[int, ...], set[int]] = {}
    for row in sids.tolist():
        tokens = [o + c for o, c in zip(layout.offsets, row)]
        for level in range(layout.levels):
            table.setdefault(tuple(tokens[:level]), set()).add(tokens[level])
    return {key: sorted(value) for key, value in table.items()}


def hf_beams(model, prompt: list[int], layout: SidLayout, sids: np.ndarray, beams: int,
             renormalize: bool | None) -> list[tuple[tuple[int, ...], float]]:
    """transformers' constrained beam search, filler rows dropped, as (codes, score) rows
    (``renormalize=None``: ``renormalize_logits`` not passed, transformers' default)."""
    table = prefix_table(layout, sids)
    n = len(prompt)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return table.get(tuple(sent[n:].tolist()), [0])  # off-trie prefixes only in -inf rows

    ids = torch.tensor([prompt])
    options = {} if renormalize is None else {"renormalize_logits": renormalize}
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=beams,
        prefix_allowed_tokens_fn=allowed, **options, length_penalty=0.0,
        max_new_tokens=layout.levels, do_sample=False, return_dict_in_generate=True,
        output_scores=True, output_logits=True,
    )
    generated = out.sequences[:, n:]
    if beams == 1:  # greedy search: sum the chosen tokens' log-probabilities
        score = 0.0
        for step in range(layout.levels):
            token = int(generated[0, step])
            if renormalize:  # processed scores = log_softmax of the masked logits
                score += float(out.scores[step][0, token])
            else:
                score += float(torch.log_softmax(out.logits[step][0].float(), -1)[token])
        scores = torch.tensor([score])
    else:
        scores = out.sequences_scores
    rows = []
    for seq, score in zip(generated.tolist(), scores.tolist()):
        if score <= FILLER:
            continue
        codes = tuple(t - o for t, o in zip(seq, layout.offsets))
        assert all(0 <= c < s for c, s in zip(codes, layout.sizes)), seq
        rows.append((codes, score))
    return rows


def assert_same_beams(ours, theirs) -> None:
    assert [codes for codes, _ in ours] == [codes for codes, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=ATOL,
                               rtol=RTOL)


# --- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(("arch", "tie", "bias"), [("llama", False, False), ("llama", True, True),
                                                   ("qwen3", True, False),
                                                   ("qwen3", False, True)],
                         ids=["llama", "llama-tied-bias", "qwen3-tied", "qwen3-untied-bias"])
def test_logits_equal_transformers(arch, tie, bias, attn, tmp_path) -> None:
    extra = {"attention_bias": bias}
    if arch == "llama":
        extra["mlp_bias"] = bias
    model = save(build_model(arch, tie, 0.4, 72, 7, **extra), tmp_path, attn)
    engine = CausalLMEngine.from_hf(tmp_path, SidLayout((0,), (72,)))
    prompts = [[5, 9, 3, 44, 7, 1, 60, 2, 11], [70, 4], [8]]
    lengths = [len(p) for p in prompts]
    tokens = torch.tensor(sum(prompts, []))
    cu = torch.tensor([0, *np.cumsum(lengths)])
    positions = torch.cat([torch.arange(n) for n in lengths])
    hidden, _, _ = engine.model.prefill(tokens, positions, cu)
    ours = engine.model.logits(hidden)
    with torch.no_grad():
        want = torch.cat([model(torch.tensor([p])).logits[0] for p in prompts])
    torch.testing.assert_close(ours, want, atol=ATOL, rtol=0)


# --- beam search ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["few", "subset", "full"])
@pytest.mark.parametrize("beams", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("renormalize", [True, False], ids=["renorm", "masked"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_beams_equal_transformers(name, renormalize, beams, kind, checkpoints) -> None:
    model, path, layout = checkpoints[name]
    rng = np.random.default_rng(beams * 10 + len(kind))
    sids = catalog(layout, kind, beams, rng)
    prompt = rng.integers(0, model.config.vocab_size, size=6).tolist()
    engine = CausalLMEngine.from_hf(path, layout)  # the public entry point
    ours = engine.beam_search([prompt], sids, beams, renormalize=renormalize)[0]
    theirs = hf_beams(model, prompt, layout, sids, beams, renormalize)
    if kind == "few":  # at most B prefixes at every level: every item survives
        assert len(ours) == len(sids)
    assert_same_beams(ours, theirs)
    items = {tuple(row) for row in sids.tolist()}
    assert all(codes in items for codes, _ in ours)


@pytest.mark.parametrize("renormalize", [True, False], ids=["renorm", "masked"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_prompts_of_different_lengths(name, renormalize, checkpoints) -> None:
    model, path, layout = checkpoints[name]
    rng = np.random.default_rng(11)
    sids = catalog(layout, "subset", 8, rng)
    prompts = [rng.integers(0, model.config.vocab_size, size=n).tolist() for n in (3, 11, 1, 7)]
    engine = CausalLMEngine.from_hf(path, layout)
    batched = engine.beam_search(prompts, sids, 8, renormalize=renormalize)
    assert len(batched) == len(prompts)
    for prompt, ours in zip(prompts, batched):
        theirs = hf_beams(model, prompt, layout, sids, 8, renormalize)
        assert_same_beams(ours, theirs)
        # alone, the prompt's float32 rounding differs (no padding, other shapes): each result
        # is held to transformers' within ATOL, not to the other
        alone = engine.beam_search([prompt], sids, 8, renormalize=renormalize)[0]
        assert [c for c, _ in alone] == [c for c, _ in ours]
        assert_same_beams(alone, theirs)


@pytest.mark.parametrize("renormalize", [True, False], ids=["renorm", "masked"])
def test_single_level_ids(renormalize, checkpoints) -> None:
    # One level: the items are scored from the prefill alone (no decode step).
    model, path, _ = checkpoints["llama-tied"]
    layout = SidLayout((30,), (40,))
    sids = np.arange(0, 40, 3)[:, None]
    engine = CausalLMEngine.from_hf(path, layout)
    for beams in (1, 5, 16):
        ours = engine.beam_search([[4, 8, 15]], sids, beams, renormalize=renormalize)[0]
        assert_same_beams(ours, hf_beams(model, [4, 8, 15], layout, sids, beams, renormalize))


def test_bfloat16_weights_decode_catalog_items(checkpoints) -> None:
    _, path, layout = checkpoints["qwen3"]
    engine = CausalLMEngine.from_hf(path, layout, dtype="bfloat16")
    assert engine.dtype == torch.bfloat16
    sids = catalog(layout, "subset", 8, np.random.default_rng(2))
    items = {tuple(row) for row in sids.tolist()}
    for renormalize in (True, False):
        beams = engine.beam_search([[1, 2, 3], [9]], sids, 8, renormalize=renormalize)
        for rows in beams:
            assert len(rows) == 8 and all(codes in items for codes, _ in rows)
            scores = [score for _, score in rows]
            assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))


def test_prompts_prefilled_once_and_beams_share_their_kv(checkpoints, monkeypatch) -> None:
    from ega_infer.hf import model as model_module

    _, path, layout = checkpoints["llama"]
    engine = CausalLMEngine.from_hf(path, layout)
    prefill_rows, decode_shapes = [], []
    prefill, decode = model_module.prefill_attention, model_module.decode_attention

    def spy_prefill(q, *args, **kwargs):
        prefill_rows.append(q.shape[0])
        return prefill(q, *args, **kwargs)

    def spy_decode(q, ctx_k, ctx_v, ctx_len, own_k, own_v, **kwargs):
        decode_shapes.append((tuple(q.shape), tuple(ctx_k.shape), ctx_len.tolist(), own_k.shape[3]))
        return decode(q, ctx_k, ctx_v, ctx_len, own_k, own_v, **kwargs)

    monkeypatch.setattr(model_module, "prefill_attention", spy_prefill)
    monkeypatch.setattr(model_module, "decode_attention", spy_decode)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    trie = engine.build_trie(catalog(layout, "full", 16, np.random.default_rng(0)))
    widths = engine.beam_widths(trie, 16)
    assert widths == [4, 16, 16]  # level 0 has only 4 codes: 4 beams, not 16
    engine.beam_search(prompts, trie, 16)
    layers = engine.config.num_layers
    assert prefill_rows == [8] * layers  # one packed pass over both prompts' 8 tokens
    hkv, hd = engine.config.num_kv_heads, engine.config.head_dim
    assert len(decode_shapes) == (layout.levels - 1) * layers
    for i, (q, ctx, ctx_len, own) in enumerate(decode_shapes):
        assert q[:2] == (2, widths[i // layers])
        assert ctx == (2, hkv, 5, hd)  # one context per prompt, not per beam
        assert ctx_len == [3, 5]
        assert own == i // layers + 1  # only the generated positions are per beam


def test_prebuilt_trie_equals_array(checkpoints) -> None:
    _, path, layout = checkpoints["qwen3"]
    engine = CausalLMEngine.from_hf(path, layout)
    sids = catalog(layout, "subset", 4, np.random.default_rng(5))
    trie = engine.build_trie(sids)
    for renormalize in (True, False):
        assert (engine.beam_search([[3, 4]], trie, 4, renormalize=renormalize)
                == engine.beam_search([[3, 4]], sids, 4, renormalize=renormalize))


def test_empty_catalog_raises_and_duplicate_items_warn(checkpoints) -> None:
    _, path, layout = checkpoints["llama"]
    engine = CausalLMEngine.from_hf(path, layout)
    with pytest.raises(FieldError, match="empty") as info:
        engine.beam_search([[1], [2, 3]], np.zeros((0, 3), dtype=np.int64), 4)
    assert info.value.field == "sids"
    one = engine.beam_search([[1, 2]], [[1, 2, 3]], 4)[0]
    with pytest.warns(SidCollisionWarning, match="3 of 3 items"):
        assert engine.beam_search([[1, 2]], [[1, 2, 3]] * 3, 4)[0] == one and len(one) == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_normalization_is_transformers_default(name, checkpoints) -> None:
    # Neither side is told how to normalise: both mask the full-vocabulary log-softmax.
    model, path, layout = checkpoints[name]
    rng = np.random.default_rng(3)
    sids = catalog(layout, "subset", 8, rng)
    prompt = rng.integers(0, model.config.vocab_size, size=5).tolist()
    engine = CausalLMEngine.from_hf(path, layout)
    ours = engine.beam_search([prompt], sids, 8)[0]
    assert_same_beams(ours, hf_beams(model, prompt, layout, sids, 8, renormalize=None))
    assert ours == engine.beam_search([prompt], sids, 8, renormalize=False)[0]
    assert ours != engine.beam_search([prompt], sids, 8, renormalize=True)[0]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("offsets", "sizes", "field"), [
    ((), (), "sizes"), ((0,), (3, 4), "offsets"), ((-1,), (3,), "offsets[0]"),
    ((0, 3), (3, 0), "sizes[1]"), ((0.5,), (3,), "offsets[0]"),
])
def test_sid_layout_validates(offsets, sizes, field) -> None:
    with pytest.raises(ConfigError) as info:
        SidLayout(offsets, sizes)
    assert info.value.field == field


def test_bad_requests_raise_field_errors(checkpoints) -> None:
    _, path, layout = checkpoints["llama"]
    engine = CausalLMEngine.from_hf(path, layout)
    sids = [[0, 0, 0]]
    cases = [(([[]], sids, 2), "prompts[0]"), (([[1, 96]], sids, 2), "prompts[0]"),
             (([[1]], sids, 0), "num_beams"), (([[1]], [[0, 0]], 2), "sids"),
             (([[1]], [[0.5, 0, 0]], 2), "sids")]
    for args, field in cases:
        with pytest.raises(FieldError) as info:
            engine.beam_search(*args)
        assert info.value.field == field
    with pytest.raises(CatalogError):
        engine.beam_search([[1]], [[0, 5, 0]], 2)  # code 5 outside level 1's 5 codes
    with pytest.raises(FieldError, match="vocab_size"):
        CausalLMEngine.from_hf(path, SidLayout((90,), (7,)))


@pytest.mark.parametrize(("change", "field"), [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rope_parameters.rope_type"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling.rope_type"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types[1]"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_configs_raise(change, field, checkpoints) -> None:
    raw = json.loads((checkpoints["qwen3"][1] / "config.json").read_text())
    raw.update(change)
    with pytest.raises(ConfigError) as info:
        CausalLMConfig.from_dict(raw)
    assert info.value.field == field


def test_transformers_4_config_layout(checkpoints) -> None:
    raw = json.loads((checkpoints["llama"][1] / "config.json").read_text())
    raw.pop("rope_parameters")
    raw.pop("head_dim")
    raw.pop("dtype")
    raw.update(rope_theta=5e5, rope_scaling=None, torch_dtype="bfloat16")
    config = CausalLMConfig.from_dict(raw)
    assert (config.rope_theta, config.head_dim, config.dtype) == (5e5, 8, "bfloat16")


def test_bad_checkpoints_raise(checkpoints, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    _, path, layout = checkpoints["llama"]
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        CausalLMEngine.from_hf(tmp_path, layout)
    tensors = load_file(str(path / "model.safetensors"))
    for edit, message in ((lambda t: t.pop("model.norm.weight"), "missing"),
                          (lambda t: t.update(extra=torch.zeros(1)), "does not account"),
                          (lambda t: t.update({"lm_head.weight": torch.zeros(3, 32)}), "shape")):
        broken = dict(tensors)
        edit(broken)
        save_file(broken, str(tmp_path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            CausalLMEngine.from_hf(tmp_path, layout)
    with pytest.raises(CheckpointError, match="config.json"):
        CausalLMEngine.from_hf(tmp_path / "nowhere", layout)
