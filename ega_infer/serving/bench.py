"""End-to-end serving benchmark (``ega-infer bench``): latency at batch 1 and throughput at
larger batches, per stage, on the engine's path and on the PyTorch reference path.

* engine path: ``backend="auto"`` (CUDA / Triton kernels on a GPU; the PyTorch ops on a CPU,
  where both paths are the same code and only the engine path is run);
* reference path: ``backend="torch"``.

Requests and catalog are synthetic (``ega_infer.demo``), seeded. Each measurement is the wall
time of ``Engine.generate`` for one batch (the device is synchronised by the stage timer), after
warm-up; batch 1 reports p50/p99 over its iterations and the median of each stage.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..decoding import DecodeConfig
from ..demo import synthetic_catalog, synthetic_requests
from ..engine import Engine
from ..exceptions import ConfigError

__all__ = ["BenchConfig", "run_bench", "plot_bench", "device_name", "cpu_name"]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str | None = None  # "bfloat16" for the GPU runs; None keeps the weights' dtype
    mode: str | None = None  # None: the preset's decode mode
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

    result = {
        "preset": config.preset, "device": device_name(engine.device), "dtype": str(next(engine.model.parameters()).dtype),
        "mode": decode.mode, "beams": list(decode.beams), "num_slots": decode.num_slots, "n_items": config.n_items,
        "torch": torch.__version__, "host": platform.node(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "paths": {},
    }
    for name, path_config in paths.items():
        out = result["paths"][name] = {"batch1": _batch1(engine, requests, path_config, config), "throughput": []}
        log(f"{name}: batch 1 p50 {out['batch1']['p50_ms']:.2f} ms  p99 {out['batch1']['p99_ms']:.2f} ms  "
            f"stages {out['batch1']['stages_ms']}")
        for batch in config.batches:
            times = _times(engine, requests[:batch], path_config, config.iters, config.warmup)
            row = {"batch": batch, "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
                   "requests_per_s": batch / (statistics.median(times) / 1e3)}
            out["throughput"].append(row)
            log(f"{name}: batch {batch:4d}  p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
                f"{row['requests_per_s']:9.1f} requests/s")
    return result


def _batch1(engine: Engine, requests, path_config: DecodeConfig, config: BenchConfig) -> dict:
    stages: dict[str, list[float]] = {}
    times = []
    for i in range(config.warmup + config.batch1_iters):
        start = time.perf_counter()
        slates = engine.generate([requests[i % len(requests)]], path_config)
        elapsed = (time.perf_counter() - start) * 1e3
        if i >= config.warmup:
            times.append(elapsed)
            for stage, ms in slates[0].latency_ms.items():
                stages.setdefault(stage, []).append(ms)
    return {"p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
            "stages_ms": {k: round(statistics.median(v), 3) for k, v in stages.items()}}


def _times(engine: Engine, batch, path_config: DecodeConfig, iters: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        engine.generate(batch, path_config)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a benchmark ran on: the GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


def plot_bench(result: dict, path: str | Path) -> bool:
    """Latency (p50, p99) against throughput per path as a PNG; False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, out in result["paths"].items():
        rows = out["throughput"]
        x = [r["requests_per_s"] for r in rows]
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", label=f"{name} p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "x--", label=f"{name} p99")
        for r in rows:
            ax.annotate(str(r["batch"]), (r["requests_per_s"], r["p50_ms"]), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("batch latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{result['preset']} ({result['mode']}) on {result['device']}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
