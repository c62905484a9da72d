"""Benchmarks of the engine over its public API, and what every benchmark shares.

* ``run_bench`` (``ega-infer bench``): end-to-end ``Engine.generate``, latency at batch 1 (with
  each stage's median) and at larger batches, requests per second, on the engine's path
  (``backend="auto"``) and, on a GPU, on the PyTorch reference path (``backend="torch"``; on a
  CPU both paths are the same code and only the engine's runs). ``plot_bench`` draws it.
* ``run_hf_bench`` (``ega-infer bench --hf``): catalog-constrained beam search on a random
  Hugging Face Llama, ``CausalLMEngine.beam_search`` against transformers' ``generate``.
* The shared parts: ``machine`` (what a result ran on), ``wall_times`` and ``summary`` (timing,
  median with a p20/p80 band), ``row`` / ``result`` / ``save_result`` (one JSON layout).
  ``bench/_harness.py`` builds the kernel benchmarks on them.

The engine never imports this module; it imports the engine. Every result, here and under
``bench/``, has one layout::

    {"bench": name, "date": ISO-8601 UTC, "machine": machine(device), "config": {...},
     "rows": [{"op", "provider", "shape": {...}, "median_us", "p20_us", "p80_us", "runs", ...}]}

A row's further keys are its figures (``requests_per_s``, ``gb_per_s``, ``roofline_fraction``,
what its check found, ...).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .decoding import DecodeConfig
from .engine import Engine
from .exceptions import ConfigError
from .hf import CausalLMEngine, SidLayout
from .testing import synthetic_catalog, synthetic_requests

__all__ = [
    "BenchConfig", "run_bench", "plot_bench",
    "HFBenchConfig", "run_hf_bench", "HF_SHAPE", "HF_LAYOUT", "make_hf_model", "make_sids", "prefix_table", "hf_beam_search",
    "check_same_beams",
    "machine", "device_name", "cpu_name", "wall_times", "summary", "row", "result", "save_result", "RESULTS_DIR",
]

RESULTS_DIR = Path("bench") / "results"  # relative to the working directory: the repository root


# -- the machine -------------------------------------------------------------------------------
def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """What a benchmark ran on: the GPU's name, or the CPU's model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


def machine(device: str | torch.device) -> dict:
    """The machine block of a result: ``name`` (``device_name``), the CPU, torch's threads, the
    load when it ran, and the versions that matter."""
    device = torch.device(device)
    info = {"name": device_name(device), "device": device.type, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for package in ("ega_infer", "triton", "transformers"):
        try:
            info[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return info


def _tag(machine_info: dict) -> str:
    """A file-name tag: the GPU's name, or ``cpu_<threads>t``."""
    if machine_info["device"] == "cuda":
        return "".join(c if c.isalnum() else "_" for c in machine_info["gpu"]).strip("_")
    return f"cpu_{machine_info['torch_threads']}t"


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_times(fn: Callable[[], object], device: str | torch.device, *, runs: int | None = None, warmup: int = 1,
               min_runs: int = 5, min_seconds: float = 1.0, max_runs: int = 200) -> list[float]:
    """Seconds per call of ``fn`` by the wall clock, the device synchronised before and after
    each, after ``warmup`` calls: ``runs`` calls, or (``runs=None``) at least ``min_runs`` and
    until ``min_seconds`` have passed, at most ``max_runs``."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(seconds) < (runs or min_runs) or (runs is None and len(seconds) < max_runs
                                                  and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: Sequence[float]) -> dict:
    """``median_us``, ``p20_us``, ``p80_us`` and ``runs`` of per-call times in seconds."""
    p20, median, p80 = np.percentile(np.asarray(seconds, dtype=np.float64) * 1e6, [20, 50, 80])
    return {"median_us": float(median), "p20_us": float(p20), "p80_us": float(p80), "runs": len(seconds)}


# -- results -----------------------------------------------------------------------------------
def row(op: str, provider: str, shape: dict, timing: dict | None = None, **figures) -> dict:
    """One measurement: what ran (``op`` by ``provider`` at ``shape``), its timing (``summary``)
    and its figures."""
    return {"op": op, "provider": provider, "shape": dict(shape), **(timing or {}), **figures}


def result(bench: str, device: str | torch.device, rows: list[dict], config: dict | None = None) -> dict:
    """A whole result: ``rows`` measured on ``device`` under the bench-wide ``config``."""
    return {"bench": bench, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(device), "config": dict(config or {}), "rows": rows}


def save_result(res: dict, directory: str | Path = RESULTS_DIR) -> Path:
    """Write ``res`` as ``<directory>/<bench>_<gpu or cpu_<threads>t>_<UTC stamp>.json``."""
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{res['bench']}_{_tag(res['machine'])}_{stamp}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    return path


# -- end to end: Engine.generate ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BenchConfig:
    """``ega-infer bench``: the preset served on ``device`` (weights cast to ``dtype`` unless
    None) in ``mode`` (None: the preset's), against a synthetic catalog of ``n_items``;
    ``batch1_iters`` timed single requests, ``iters`` timed batches per size in ``batches``,
    each after ``warmup`` untimed ones."""

    preset: str = "tiny"
    device: str = "cpu"
    dtype: str | None = None
    mode: str | None = None
    n_items: int = 2000
    batch1_iters: int = 20
    batches: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    iters: int = 3
    warmup: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_items", "batch1_iters", "iters"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(name, f"is {getattr(self, name)!r}", "a positive integer")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError("batches", f"is {self.batches!r}", "positive batch sizes")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError("dtype", f"is {self.dtype!r}", "None, 'float32', 'bfloat16' or 'float16'")


def run_bench(config: BenchConfig, log=print) -> dict:
    """Rows ``("generate", path, {"batch": b})``: batch 1 over ``batch1_iters`` different
    requests (with ``p99_us`` and ``stages_ms``, each stage's median), then each batch size;
    every row has ``requests_per_s``. Every request of the first batch must be served."""
    dtype = None if config.dtype is None else getattr(torch, config.dtype)
    engine = Engine.from_pretrained(config.preset, device=config.device, dtype=dtype)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=config.n_items, seed=config.seed))
    requests = synthetic_requests(engine.catalog, engine.config, n=max(config.batches), seed=config.seed + 1)
    decode = engine.default_config
    if config.mode is not None and config.mode != decode.mode:
        rules = dict(max_ads=None, min_gap=0, forbidden_ad_slots=()) if config.mode == "candidates" else {}
        decode = dataclasses.replace(decode, mode=config.mode, **rules)
    paths = {"engine": dataclasses.replace(decode, backend="auto")}
    if engine.device.type == "cuda":
        paths["reference"] = dataclasses.replace(decode, backend="torch")

    rows = []
    for name, path_config in paths.items():
        failed = [s.error for s in engine.generate(requests, path_config) if not s.ok]
        if failed:
            raise AssertionError(f"{name} path: {len(failed)} of {len(requests)} requests failed: {failed[0]}")
        rows.append(_batch1(engine, requests, path_config, config, name))
        out = rows[-1]
        log(f"{name}: batch 1 p50 {out['median_us'] / 1e3:.2f} ms  p99 {out['p99_us'] / 1e3:.2f} ms  "
            f"stages {out['stages_ms']}")
        for batch in config.batches:
            seconds = wall_times(lambda b=batch: engine.generate(requests[:b], path_config), engine.device,
                                 runs=config.iters, warmup=config.warmup)
            out = row("generate", name, {"batch": batch}, summary(seconds),
                      p99_us=float(np.percentile(seconds, 99)) * 1e6,
                      requests_per_s=batch / statistics.median(seconds))
            rows.append(out)
            log(f"{name}: batch {batch:4d}  p50 {out['median_us'] / 1e3:8.2f} ms  p99 {out['p99_us'] / 1e3:8.2f} ms  "
                f"{out['requests_per_s']:9.1f} requests/s")
    return result(f"e2e_{config.preset}", engine.device, rows, dict(
        dataclasses.asdict(config), served_dtype=str(next(engine.model.parameters()).dtype),
        served_mode=decode.mode, beams=list(decode.beams), num_slots=decode.num_slots))


def _batch1(engine: Engine, requests, path_config: DecodeConfig, config: BenchConfig, name: str) -> dict:
    stages: dict[str, list[float]] = {}
    seconds = []
    for i in range(config.warmup + config.batch1_iters):
        start = time.perf_counter()
        slates = engine.generate([requests[i % len(requests)]], path_config)
        elapsed = time.perf_counter() - start
        if i >= config.warmup:
            seconds.append(elapsed)
            for stage, ms in slates[0].latency_ms.items():
                stages.setdefault(stage, []).append(ms)
    return row("generate", name, {"batch": 1}, summary(seconds), p99_us=float(np.percentile(seconds, 99)) * 1e6,
               requests_per_s=1 / statistics.median(seconds),
               stages_ms={k: round(statistics.median(v), 3) for k, v in stages.items()})


def plot_bench(res: dict, path: str | Path) -> bool:
    """Batch latency (p50, p99) against throughput per path as a PNG; False when matplotlib is
    absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for provider in dict.fromkeys(r["provider"] for r in res["rows"]):
        rows = sorted((r for r in res["rows"] if r["provider"] == provider), key=lambda r: r["shape"]["batch"])
        x = [r["requests_per_s"] for r in rows]
        ax.plot(x, [r["median_us"] / 1e3 for r in rows], "o-", label=f"{provider} p50")
        ax.plot(x, [r["p99_us"] / 1e3 for r in rows], "x--", label=f"{provider} p99")
        for r in rows:
            ax.annotate(str(r["shape"]["batch"]), (r["requests_per_s"], r["median_us"] / 1e3), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("batch latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{res['config']['preset']} ({res['config']['served_mode']}) on {res['machine']['name']}", fontsize=9)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- Hugging Face: the engine against transformers --------------------------------------------
HF_SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2)
HF_LAYOUT = SidLayout((256, 512, 768), (256, 256, 256))  # 3 levels x 256 codes: token ids 256 + c, 512 + c, 768 + c
_INIT_RANGE = 0.1  # attention logits of a few units: no float underflow, no near-tied beams


def make_hf_model(path: str | Path, shape: dict = HF_SHAPE, seed: int = 0):
    """A random ``LlamaForCausalLM`` of ``shape`` saved under ``path``; returns it."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(initializer_range=_INIT_RANGE, bos_token_id=0, eos_token_id=None,
                                      pad_token_id=0, **shape)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def make_sids(items: int, layout: SidLayout = HF_LAYOUT, seed: int = 0) -> np.ndarray:
    """``items`` distinct random semantic IDs ``[items, levels]``."""
    rng = np.random.default_rng(seed)
    sizes = np.array(layout.sizes, dtype=np.int64)
    flat = np.unique(rng.integers(0, int(np.prod(sizes)), size=2 * items))
    flat = rng.permutation(flat)[:items]
    codes = np.empty((len(flat), len(sizes)), dtype=np.int64)
    for level in range(len(sizes) - 1, -1, -1):
        flat, codes[:, level] = np.divmod(flat, sizes[level])
    return codes


def prefix_table(layout: SidLayout, sids: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    """transformers' constraint: the allowed next tokens after each generated prefix."""
    tokens = sids + np.array(layout.offsets)
    table: dict[tuple[int, ...], set[int]] = {}
    for codes in tokens.tolist():
        for level in range(layout.levels):
            table.setdefault(tuple(codes[:level]), set()).add(codes[level])
    return {key: sorted(value) for key, value in table.items()}


def hf_beam_search(model, prompt: list[int], table: dict, layout: SidLayout, beams: int, device,
                   renormalize: bool = False) -> list[tuple[tuple[int, ...], float]]:
    """transformers' constrained beam search: ``(codes, score)`` best first, without its
    ``-1e9`` filler beams."""
    n = len(prompt)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return table.get(tuple(sent[n:].tolist()), [0])

    ids = torch.tensor([prompt], device=device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=beams,
        prefix_allowed_tokens_fn=allowed, renormalize_logits=renormalize, length_penalty=0.0,
        max_new_tokens=layout.levels, do_sample=False, return_dict_in_generate=True, output_scores=True,
    )
    beams_out = []
    for seq, score in zip(out.sequences[:, n:].tolist(), out.sequences_scores.tolist()):
        if score > -1e8:
            beams_out.append((tuple(t - o for t, o in zip(seq, layout.offsets)), score))
    return beams_out


def check_same_beams(ours, theirs, atol: float = 1e-4) -> dict:
    """Raise unless both give the same items in the same order with scores within ``atol``."""
    same = [c for c, _ in ours] == [c for c, _ in theirs]
    diff = max((abs(a[1] - b[1]) for a, b in zip(ours, theirs)), default=0.0)
    if not same or diff > atol:
        raise AssertionError(f"engine and transformers differ: same items {same}, max score difference {diff:.2e}")
    return {"same_items_in_order": same, "max_abs_score_diff": diff, "beams_returned": len(ours)}


@dataclass(frozen=True, slots=True)
class HFBenchConfig:
    """``ega-infer bench --hf``: a random Llama of ``HF_SHAPE`` (``hidden_size``, ``layers``,
    ``intermediate_size`` overridable), ``items`` random semantic IDs of ``HF_LAYOUT``, a
    ``prompt_len``-token prompt, one search per width in ``beams``; ``repeat`` timed engine
    runs and ``hf_repeat`` transformers runs per width. ``renormalize=False`` is transformers'
    default (full-vocabulary log-softmax, masked)."""

    device: str = "cpu"
    beams: tuple[int, ...] = (16, 64, 256)
    items: int = 100_000
    prompt_len: int = 256
    repeat: int = 10
    hf_repeat: int = 3
    renormalize: bool = False
    hidden_size: int = HF_SHAPE["hidden_size"]
    layers: int = HF_SHAPE["num_hidden_layers"]
    intermediate_size: int = HF_SHAPE["intermediate_size"]

    def __post_init__(self) -> None:
        for name in ("items", "prompt_len", "repeat", "hf_repeat", "hidden_size", "layers", "intermediate_size"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(name, f"is {getattr(self, name)!r}", "a positive integer")
        if not self.beams or any(not isinstance(b, int) or b < 1 for b in self.beams):
            raise ConfigError("beams", f"is {self.beams!r}", "positive beam widths")

    @property
    def shape(self) -> dict:
        return dict(HF_SHAPE, hidden_size=self.hidden_size, num_hidden_layers=self.layers,
                    intermediate_size=self.intermediate_size)


def run_hf_bench(config: HFBenchConfig, log=print) -> dict:
    """Rows: ``("build_trie", "engine")``, then per width ``("beam_search", provider,
    {"beams": B})`` for ``transformers``, ``engine`` (the catalog trie built once, as
    transformers' prefix table is) and ``engine_with_trie_build`` (built inside each call). The
    engine's beams are first checked against transformers' (``check_same_beams``); its rows
    carry the check and ``speedup_vs_transformers``."""
    device = torch.device(config.device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = make_hf_model(Path(tmp), config.shape).to(device)
        engine = CausalLMEngine.from_hf(tmp, HF_LAYOUT, device=device)
    sids = make_sids(config.items, HF_LAYOUT)
    prompt = np.random.default_rng(1).integers(0, HF_LAYOUT.offsets[0], size=config.prompt_len).tolist()
    table = prefix_table(HF_LAYOUT, sids)
    renorm = config.renormalize
    trie = engine.build_trie(sids)
    rows = [row("build_trie", "engine", {"items": len(sids)}, summary(wall_times(lambda: engine.build_trie(sids),
                                                                                 device, runs=3)))]
    log(f"{config.shape} | {HF_LAYOUT.levels} levels x {HF_LAYOUT.sizes[0]} codes, {len(sids):,} items, "
        f"{config.prompt_len}-token prompt | {device_name(device)}, load {os.getloadavg()[0]:.1f} | "
        f"renormalize={renorm} | trie build {rows[0]['median_us'] / 1e3:.1f} ms")
    for beams in config.beams:
        theirs = hf_beam_search(model, prompt, table, HF_LAYOUT, beams, device, renorm)
        check = check_same_beams(engine.beam_search([prompt], trie, beams, renormalize=renorm)[0], theirs)
        hf = summary(wall_times(lambda: hf_beam_search(model, prompt, table, HF_LAYOUT, beams, device, renorm),
                                device, runs=config.hf_repeat, warmup=0))
        ours = summary(wall_times(lambda: engine.beam_search([prompt], trie, beams, renormalize=renorm), device,
                                  runs=config.repeat))
        full = summary(wall_times(lambda: engine.beam_search([prompt], sids, beams, renormalize=renorm), device,
                                  runs=max(3, config.repeat // 3)))
        shape = {"beams": beams}
        rows += [row("beam_search", "transformers", shape, hf),
                 row("beam_search", "engine", shape, ours, **check,
                     speedup_vs_transformers=hf["median_us"] / ours["median_us"]),
                 row("beam_search", "engine_with_trie_build", shape, full, **check,
                     speedup_vs_transformers=hf["median_us"] / full["median_us"])]
        log(f"  {beams:4d} beams: transformers {hf['median_us'] / 1e3:9.1f} ms [{hf['p20_us'] / 1e3:.1f}, "
            f"{hf['p80_us'] / 1e3:.1f}] | engine {ours['median_us'] / 1e3:7.2f} ms [{ours['p20_us'] / 1e3:.2f}, "
            f"{ours['p80_us'] / 1e3:.2f}] -> {rows[-2]['speedup_vs_transformers']:6.0f}x | with trie build "
            f"{full['median_us'] / 1e3:7.2f} ms -> {rows[-1]['speedup_vs_transformers']:5.0f}x | "
            f"max score diff {check['max_abs_score_diff']:.1e}")
    return result("hf_beam_search", device, rows, dict(
        dataclasses.asdict(config), model=dict(config.shape, architecture="LlamaForCausalLM", dtype="float32"),
        sid_layout={"offsets": list(HF_LAYOUT.offsets), "sizes": list(HF_LAYOUT.sizes)}))
