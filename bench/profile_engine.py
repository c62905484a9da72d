"""Where a batch-1 request's time goes: torch.profiler over a few served batches, after warm-up.

Writes ``bench/results/profile_<preset>_<device>_<stamp>.json``: the device's kernels grouped by
name (calls, total and mean time, share), how many kernel launches and host-device copies one
batch makes, and the host-side time of the engine's stages. On a GPU the kernels come from the
CUDA activity (kernels replayed inside CUDA graphs included); on a CPU only host-side operator
times exist, which still shows the script works.

    python bench/profile_engine.py --preset gr4ad-base --device cuda --dtype bfloat16 [--mode candidates]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ega_infer import Engine
from ega_infer.demo import synthetic_catalog, synthetic_requests
from ega_infer.serving.bench import device_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def profile_batch1(preset: str, device: str, dtype: str | None, mode: str | None, n_items: int,
                   batches: int = 5, top: int = 25) -> dict:
    engine = Engine.from_pretrained(preset, device=device, dtype=None if dtype is None else getattr(torch, dtype))
    engine.set_catalog(synthetic_catalog(engine.config, n_items=n_items, seed=0))
    config = engine.default_config
    if mode is not None and mode != config.mode:
        config = dataclasses.replace(config, mode=mode, max_ads=None, min_gap=0, forbidden_ad_slots=())
    requests = synthetic_requests(engine.catalog, engine.config, n=batches, seed=1)
    engine.warmup(config, batch_sizes=(1,))
    for r in requests:  # first calls of each history length compile the encoder's kernels
        engine.generate([r], config)
    on_gpu = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    stages: dict[str, float] = collections.defaultdict(float)
    if on_gpu:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for r in requests:
            slate = engine.generate([r], config)[0]
            for stage, ms in slate.latency_ms.items():
                stages[stage] += ms / batches
        if on_gpu:
            torch.cuda.synchronize()
    events = prof.events()
    device_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA] if on_gpu else []
    kernels = [e for e in device_events if "Memcpy" not in e.name and "Memset" not in e.name]
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in kernels:
        by_name[e.name].append(e.device_time if hasattr(e, "device_time") else e.cuda_time)
    total_us = sum(sum(v) for v in by_name.values())
    rows = sorted(({"kernel": name[:160], "calls_per_batch": len(v) / batches, "total_us_per_batch": sum(v) / batches,
                    "mean_us": sum(v) / len(v), "share": sum(v) / total_us if total_us else 0.0}
                   for name, v in by_name.items()), key=lambda row: -row["total_us_per_batch"])
    return {
        "preset": preset, "mode": config.mode, "beams": list(config.beams), "device": device_name(engine.device),
        "dtype": str(next(engine.model.parameters()).dtype), "n_items": n_items, "batches_profiled": batches,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
        "host_stage_ms": {k: round(v, 3) for k, v in stages.items()},
        "kernel_launches_per_batch": len(kernels) / batches,
        "device_kernel_us_per_batch": total_us / batches,
        "copies_per_batch": {kind: sum(kind in e.name for e in device_events) / batches for kind in ("HtoD", "DtoH", "DtoD")},
        "top_kernels": rows[:top],
        "top_host_ops": [{"op": a.key, "calls": a.count, "self_cpu_us": a.self_cpu_time_total}
                         for a in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    parser.add_argument("--mode", default=None, choices=[None, "lists", "candidates"])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    result = profile_batch1(args.preset, args.device, args.dtype, args.mode, args.items, args.batches)
    print(f"{result['preset']} {result['mode']} on {result['device']}: host stages {result['host_stage_ms']}")
    print(f"kernels per batch {result['kernel_launches_per_batch']:.0f}, device kernel time "
          f"{result['device_kernel_us_per_batch']:.0f} us, copies {result['copies_per_batch']}")
    for row in result["top_kernels"][:12]:
        print(f"  {row['total_us_per_batch']:9.1f} us  {row['calls_per_batch']:6.1f} calls  {row['share']:6.1%}  {row['kernel'][:90]}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"profile_{args.preset}_{'gpu' if args.device.startswith('cuda') else 'cpu'}_{stamp}.json"
    RESULTS_DIR.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
