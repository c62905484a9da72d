"""Catalog-constrained beam search on a Hugging Face Llama: the engine against transformers
(the code lives in ``ega_infer.serving.hf_bench``, also behind ``ega-infer bench --hf``).

    python bench/bench_hf_beam_search.py [--beams 16 64 256] [--items 100000] [--save]
    python bench/bench_hf_beam_search.py --device cuda --save        # the same on a GPU
    pytest bench/bench_hf_beam_search.py                             # pytest-benchmark, small shape
"""

from __future__ import annotations

from ega_infer import CausalLMEngine
from ega_infer.serving.hf_bench import LAYOUT, SHAPE, main, make_catalog, make_model


# -- pytest-benchmark: small shape, engine only ----------------------------------------------


def test_bench_hf_beam_search_engine(benchmark, tmp_path) -> None:
    import pytest

    pytest.importorskip("transformers", reason="builds the checkpoint with transformers")
    shape = dict(SHAPE, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    make_model(tmp_path, shape)
    engine = CausalLMEngine.from_hf(tmp_path, LAYOUT)
    trie = engine.build_trie(make_catalog(10_000, LAYOUT))
    prompt = list(range(64))
    beams = benchmark(lambda: engine.beam_search([prompt], trie, 64, renormalize=False))
    assert len(beams[0]) == 64
    benchmark.extra_info.update(items=10_000, beams=64, prompt_len=64, shape=shape)


if __name__ == "__main__":
    main()
