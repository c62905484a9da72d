"""Where a batch-1 request's time goes: torch.profiler over a few served batches, after warm-up.

With ``--save`` writes ``bench/results/profile_<gpu or cpu_<threads>t>_<stamp>.json`` (the
harness's layout, one row): the device's kernels grouped by name (calls, total and mean time,
share), how many kernel launches and host-device copies one batch makes, and the host-side time
of the engine's stages. On a GPU the kernels come from the CUDA activity (kernels replayed
inside CUDA graphs included); on a CPU only host-side operator times exist, which still shows
the script works. Shape keys: preset, dtype, mode, items, batches (batch-1 requests profiled);
small: tiny with 2,000 items; full: tiny with 100,000.

    python bench/profile_engine.py --device cuda --shape preset=gr4ad-base dtype=bfloat16 mode=candidates --save
"""

from __future__ import annotations

import collections
import dataclasses

import torch
from torch.profiler import ProfilerActivity, profile

import _harness

from ega_infer import Engine
from ega_infer.benchmark import result, row
from ega_infer.testing import synthetic_catalog, synthetic_requests

PRESETS = {"small": dict(preset="tiny", dtype=None, mode=None, items=2000, batches=5),
           "full": dict(preset="tiny", dtype=None, mode=None, items=100_000, batches=5)}


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
        "served_mode": config.mode, "beams": list(config.beams),
        "served_dtype": str(next(engine.model.parameters()).dtype), "batches_profiled": batches,
        "host_stage_ms": {k: round(v, 3) for k, v in stages.items()},
        "kernel_launches_per_batch": len(kernels) / batches,
        "device_kernel_us_per_batch": total_us / batches,
        "copies_per_batch": {kind: sum(kind in e.name for e in device_events) / batches for kind in ("HtoD", "DtoH", "DtoD")},
        "top_kernels": rows[:top],
        "top_host_ops": [{"op": a.key, "calls": a.count, "self_cpu_us": a.self_cpu_time_total}
                         for a in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:top]],
    }


def main(argv: list[str] | None = None) -> dict:
    args = _harness.options(__doc__).parse_args(argv)
    device = _harness.setup(args)
    shape = _harness.config_from(args, PRESETS)
    out = profile_batch1(shape["preset"], str(device), shape["dtype"], shape["mode"], shape["items"], shape["batches"])
    print(f"{shape['preset']} {out['served_mode']} on {device}: host stages {out['host_stage_ms']}")
    print(f"kernels per batch {out['kernel_launches_per_batch']:.0f}, device kernel time "
          f"{out['device_kernel_us_per_batch']:.0f} us, copies {out['copies_per_batch']}")
    for r in out["top_kernels"][:12]:
        print(f"  {r['total_us_per_batch']:9.1f} us  {r['calls_per_batch']:6.1f} calls  {r['share']:6.1%}  {r['kernel'][:90]}")
    res = result("profile", device, [row("generate", "engine", dict(shape, batch=1), None, **out)], {"size": args.size})
    if args.save:
        _harness.save(res)
    return res


if __name__ == "__main__":
    main()
