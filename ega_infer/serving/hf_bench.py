"""Catalog-constrained beam search on a Hugging Face Llama: the engine against transformers.

Both run the same random ``LlamaForCausalLM`` (hidden 256, 4 layers, 8 query / 2 key-value heads,
intermediate 1024, vocab 1024) saved with ``save_pretrained``; a semantic ID is 3 levels x 256
codes (token ids 256 + c, 512 + c, 768 + c), the catalog holds 100,000 random distinct IDs, the
prompt is 256 tokens. transformers runs ``generate(num_beams=B, num_return_sequences=B,
prefix_allowed_tokens_fn=<dict trie>, length_penalty=0.0, max_new_tokens=3, do_sample=False)``
(default attention, "sdpa"); the engine runs ``CausalLMEngine.beam_search`` on the weights it
loaded from the same directory. Each width is checked first: the same item sequences, scores
within 1e-4 (sdpa's logits differ from the engine's by ~1e-6). Times are medians with a p20/p80
band; the engine is timed with the catalog trie built once (``engine.build_trie``, as
transformers' prefix table is built once), and also with the trie built inside each call.

    ega-infer bench --hf [--device cuda]                             # JSON under bench/results/
    python bench/bench_hf_beam_search.py [--beams 16 64 256] [--items 100000] [--save]
    pytest bench/bench_hf_beam_search.py                             # pytest-benchmark, small shape

transformers builds the random checkpoint and is the baseline, so it must be installed (it is a
test and benchmark dependency, never needed to serve).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ..hf import CausalLMEngine, SidLayout  # noqa: E402
from .bench import cpu_name  # noqa: E402

RESULTS_DIR = Path("bench") / "results"
SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2)
LAYOUT = SidLayout((256, 512, 768), (256, 256, 256))
INIT_RANGE = 0.1  # attention logits of a few units: no float underflow, no near-tied beams


def make_model(path: Path, shape: dict, seed: int = 0):
    """A random Llama saved under ``path``; returns the transformers model."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(initializer_range=INIT_RANGE, bos_token_id=0,
                                      eos_token_id=None, pad_token_id=0, **shape)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def make_catalog(items: int, layout: SidLayout, seed: int = 0) -> np.ndarray:
    """``items`` distinct random semantic IDs ``[items, levels]``."""
    rng = np.random.default_rng(seed)
    sizes = np.array(layout.sizes, dtype=np.int64)
    total = int(np.prod(sizes))
    flat = np.unique(rng.integers(0, total, size=2 * items))
    flat = rng.permutation(flat)[:items]
    codes = np.empty((len(flat), len(sizes)), dtype=np.int64)
    for level in range(len(sizes) - 1, -1, -1):
        flat, codes[:, level] = np.divmod(flat, sizes[level])
    return codes


def prefix_table(layout: SidLayout, sids: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    tokens = sids + np.array(layout.offsets)
    table: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for level in range(layout.levels):
            table.setdefault(tuple(row[:level]), set()).add(row[level])
    return {key: sorted(value) for key, value in table.items()}


def hf_search(model, prompt: list[int], table: dict, layout: SidLayout, beams: int, device,
              renormalize: bool = False):
    n = len(prompt)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return table.get(tuple(sent[n:].tolist()), [0])

    ids = torch.tensor([prompt], device=device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=beams,
        prefix_allowed_tokens_fn=allowed, renormalize_logits=renormalize, length_penalty=0.0,
        max_new_tokens=layout.levels,
        do_sample=False, return_dict_in_generate=True, output_scores=True,
    )
    rows = []
    for seq, score in zip(out.sequences[:, n:].tolist(), out.sequences_scores.tolist()):
        if score > -1e8:
            rows.append((tuple(t - o for t, o in zip(seq, layout.offsets)), score))
    return rows


def timed(fn, repeat: int, device) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summary(seconds: list[float]) -> dict:
    p20, median, p80 = np.percentile(seconds, [20, 50, 80])
    return {"seconds": seconds, "median_s": float(median), "p20_s": float(p20), "p80_s": float(p80)}


def check(ours, theirs) -> dict:
    same = [c for c, _ in ours] == [c for c, _ in theirs]
    diff = max((abs(a[1] - b[1]) for a, b in zip(ours, theirs)), default=0.0)
    if not same or diff > 1e-4:
        raise AssertionError(f"engine and transformers differ: same items {same}, max score "
                             f"difference {diff:.2e}")
    return {"same_items_in_order": same, "max_abs_score_diff": diff, "beams_returned": len(ours)}


def machine(device) -> dict:
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=10, help="engine runs per width")
    parser.add_argument("--hf-repeat", type=int, default=3, help="transformers runs per width")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--renormalize", action="store_true",
                        help="log-softmax over the allowed children (renormalize_logits=True); "
                             "default: transformers' default, full-vocabulary log-softmax")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    renorm = args.renormalize

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp), SHAPE).to(device)
        engine = CausalLMEngine.from_hf(tmp, LAYOUT, device=device)
    sids = make_catalog(args.items, LAYOUT)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, LAYOUT.offsets[0], size=args.prompt_len).tolist()
    table = prefix_table(LAYOUT, sids)
    build_s, trie = timed(lambda: engine.build_trie(sids), 3, device)
    print(f"{SHAPE} | {LAYOUT.levels} levels x {LAYOUT.sizes[0]} codes, {len(sids):,} items, "
          f"{args.prompt_len}-token prompt | {device} ({cpu_name()}, {torch.get_num_threads()} "
          f"threads, load {os.getloadavg()[0]:.1f}) | renormalize={renorm} | trie build "
          f"{statistics.median(build_s) * 1e3:.1f} ms")

    results = {}
    hf_search(model, prompt, table, LAYOUT, min(args.beams), device, renorm)  # warm-up
    for beams in args.beams:
        hf_s, theirs = timed(lambda: hf_search(model, prompt, table, LAYOUT, beams, device, renorm),
                             args.hf_repeat, device)
        engine.beam_search([prompt], trie, beams, renormalize=renorm)  # warm-up
        ours_s, ours = timed(
            lambda: engine.beam_search([prompt], trie, beams, renormalize=renorm)[0],
            args.repeat, device)
        full_s, _ = timed(lambda: engine.beam_search([prompt], sids, beams, renormalize=renorm),
                          max(3, args.repeat // 3), device)
        entry = {"check": check(ours, theirs), "transformers": summary(hf_s),
                 "engine": summary(ours_s), "engine_with_trie_build": summary(full_s)}
        entry["ratio"] = entry["transformers"]["median_s"] / entry["engine"]["median_s"]
        entry["ratio_with_trie_build"] = (entry["transformers"]["median_s"]
                                          / entry["engine_with_trie_build"]["median_s"])
        results[str(beams)] = entry
        hf, ours_t, full = (entry[key] for key in ("transformers", "engine",
                                                   "engine_with_trie_build"))
        print(f"  {beams:4d} beams: transformers {hf['median_s'] * 1e3:9.1f} ms "
              f"[{hf['p20_s'] * 1e3:.1f}, {hf['p80_s'] * 1e3:.1f}] | engine "
              f"{ours_t['median_s'] * 1e3:7.2f} ms [{ours_t['p20_s'] * 1e3:.2f}, "
              f"{ours_t['p80_s'] * 1e3:.2f}] -> {entry['ratio']:6.0f}x | with trie build "
              f"{full['median_s'] * 1e3:7.2f} ms -> {entry['ratio_with_trie_build']:5.0f}x | "
              f"max score diff {entry['check']['max_abs_score_diff']:.1e}")
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        threads = torch.get_num_threads()
        path = RESULTS_DIR / f"hf_beam_search_{device.type}_{threads}t_{stamp}.json"
        path.write_text(json.dumps({
            "bench": "hf_beam_search", "device": str(device), "machine": machine(device),
            "model": dict(SHAPE, architecture="LlamaForCausalLM", dtype="float32"),
            "sid_layout": {"offsets": list(LAYOUT.offsets), "sizes": list(LAYOUT.sizes)},
            "items": len(sids), "prompt_len": args.prompt_len, "renormalize": renorm,
            "repeat": args.repeat, "hf_repeat": args.hf_repeat,
            "trie_build": summary(build_s), "results": results, "timestamp": stamp,
        }, indent=2) + "\n")
        print(f"saved {path}")
