"""Catalog-constrained beam search on a Hugging Face Llama: ``CausalLMEngine.beam_search``
against transformers' ``generate`` on the same random weights: the run of ``ega-infer bench
--hf`` (``ega_infer.benchmark.run_hf_bench``), with the harness's options.

Both run one random ``LlamaForCausalLM`` saved with ``save_pretrained``; a semantic ID is 3
levels x 256 codes (token ids 256 + c, 512 + c, 768 + c). transformers runs
``generate(num_beams=B, num_return_sequences=B, prefix_allowed_tokens_fn=<dict trie>,
length_penalty=0.0, max_new_tokens=3, do_sample=False)`` (default attention, "sdpa"). Each width
is checked first: the same items in the same order, scores within 1e-4. The engine is timed
with the catalog trie built once (as transformers' prefix table is) and with the trie built
inside each call.

The shape keys are ``HFBenchConfig``'s fields. Full: hidden 256, 4 layers, 8 query / 2 key-value
heads, intermediate 1024, vocab 1024, 100,000 items, a 256-token prompt, beams 16, 64, 256.
Small: hidden 64, 2 layers, intermediate 128, 10,000 items, a 64-token prompt, beams 16 and 64.
transformers builds the checkpoint and is the baseline, so it must be installed (a test and
benchmark dependency, never needed to serve).

    python bench/bench_hf_beam_search.py [--size full] [--threads 2] [--save]
    python bench/bench_hf_beam_search.py --device cuda --size full --save
    pytest bench/bench_hf_beam_search.py [--device cuda]        # pytest-benchmark, small shape
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import _harness

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ega_infer import CausalLMEngine  # noqa: E402
from ega_infer.benchmark import (  # noqa: E402
    HF_LAYOUT, HFBenchConfig, check_same_beams, hf_beam_search, make_hf_model, make_sids, prefix_table,
    run_hf_bench,
)

PRESETS = {
    "small": dict(beams=(16, 64), items=10_000, prompt_len=64, repeat=5, hf_repeat=3, hidden_size=64, layers=2,
                  intermediate_size=128),
    "full": dict(beams=(16, 64, 256), items=100_000, prompt_len=256, repeat=10, hf_repeat=3),
}


def main(argv: list[str] | None = None) -> dict:
    args = _harness.options(__doc__).parse_args(argv)
    device = _harness.setup(args)
    config = _harness.config_from(args, PRESETS)
    if not isinstance(config["beams"], (list, tuple)):
        config["beams"] = [config["beams"]]
    config["beams"] = tuple(config["beams"])
    res = run_hf_bench(HFBenchConfig(device=str(device), **config))
    if args.save:
        _harness.save(res)
    return res


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory, request):
    pytest.importorskip("transformers", reason="builds the checkpoint with transformers")
    device = request.config.getoption("--device")
    small = HFBenchConfig(**PRESETS["small"])
    path = tmp_path_factory.mktemp("llama")
    model = make_hf_model(path, small.shape).to(device)
    engine = CausalLMEngine.from_hf(path, HF_LAYOUT, device=device)
    sids = make_sids(small.items, HF_LAYOUT)
    prompt = np.random.default_rng(1).integers(0, HF_LAYOUT.offsets[0], size=small.prompt_len).tolist()
    return model, engine, sids, prompt


@pytest.mark.parametrize("provider", ["engine", "transformers"])
def test_bench_beam_search(benchmark, device, hf_pair, provider):
    model, engine, sids, prompt = hf_pair
    beams = 16
    table = prefix_table(HF_LAYOUT, sids)
    trie = engine.build_trie(sids)
    theirs = hf_beam_search(model, prompt, table, HF_LAYOUT, beams, device)
    ours = engine.beam_search([prompt], trie, beams, renormalize=False)[0]
    figures = check_same_beams(ours, theirs)
    if provider == "engine":
        fn = lambda: engine.beam_search([prompt], trie, beams, renormalize=False)  # noqa: E731
    else:
        fn = lambda: hf_beam_search(model, prompt, table, HF_LAYOUT, beams, device)  # noqa: E731
    _harness.pytest_record(benchmark, fn, device, op="beam_search", provider=provider,
                           shape={"beams": beams, "items": len(sids), "prompt_len": len(prompt)}, **figures)


if __name__ == "__main__":
    main()
