"""Kernel launches per batch on the engine's GPU path, counted on any machine (no GPU needed).

At batch 1 the GPU is nearly idle: a request's latency is the chain of kernels it runs one after
another. A CUDA graph removes the host's cost of launching them, not the chain: each graph node
still takes a microsecond or two even when its kernel has almost nothing to do. So the number
of launches in the captured stage (decode to payments) is a floor under batch-1 latency that
this machine can measure, and the encoder's launches (eager, outside the graph) each also cost
the host a few microseconds.

Counting: a dispatch mode over ``Engine._serve`` (one batch, kernel backend), per stage:

* every aten call that launches a kernel; views, ``empty`` allocations and the host-scalar
  wrappers of Python numbers (``scalar_tensor``) launch none and are not counted;
* ``F.rms_norm`` as one launch (``aten._fused_rms_norm`` on CUDA; it decomposes on a CPU);
* the kernel ops as the launches of their GPU backend: ``beam_step`` 2 (CUDA: rows, merge),
  ``decode_attention`` 1 (CUDA; +1 combine when it splits the context, not counted),
  ``prefill_attention`` 1 (Triton). Their results come from the PyTorch reference, run
  unwatched, so no Triton kernel is interpreted and the count takes seconds.

Approximate, then, where CUDA differs from the CPU decomposition (SDPA's mask handling, fused
elementwise ops); exact for the engine's own Python.

    python bench/bench_launches.py [--presets tiny,ega-base,gr4ad-base] [--batch 1] [--save]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets the model take its kernel paths on CPU tensors

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

import importlib  # noqa: E402

from ega_infer import Engine  # noqa: E402
from ega_infer.demo import synthetic_catalog, synthetic_requests  # noqa: E402
from ega_infer.request import prepare_request  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_FREE = {
    "view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "expand", "permute", "slice",
    "select", "as_strided", "alias", "detach", "split", "unbind", "_reshape_alias", "split_with_sizes",
    "unflatten", "narrow", "diagonal", "reshape", "lift_fresh", "empty", "empty_strided", "empty_like",
    "new_empty", "scalar_tensor", "_local_scalar_dense", "sym_size", "resolve_conj", "resolve_neg",
}
# launches of the GPU backend of each kernel op: (the module its caller looks it up in, name, launches)
_KERNEL_OPS = tuple((importlib.import_module(module), name, launches) for module, name, launches in (
    ("ega_infer.decoding.beam_search", "beam_step", 2),  # bound at import by the beam loop
    ("ega_infer.ops.decode_attention", "decode_attention", 1),  # imported per call by the model
    ("ega_infer.ops.prefill_attention", "prefill_attention", 1),
))


class LaunchCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.stage = "other"
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, launches: int) -> None:
        self.counts[self.stage] += launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in _FREE:
            self.add(1)
        return func(*args, **(kwargs or {}))

    @contextmanager
    def __call__(self, stage: str):  # the engine's stage timer interface
        previous, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = previous


@contextmanager
def _kernel_ops_counted(counter: LaunchCounter):
    """Each kernel op counts its GPU launches and computes its result with the reference."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in _KERNEL_OPS]
    saved.append((F, "rms_norm", F.rms_norm))

    def counted(fn, launches):
        def run(*args, **kwargs):
            counter.add(launches)
            kwargs["backend"] = "torch"
            with _disable_current_modes():
                return fn(*args, **kwargs)
        return run

    def rms_norm(*args, **kwargs):
        counter.add(1)
        with _disable_current_modes():
            return saved[-1][2](*args, **kwargs)

    try:
        for (module, name, launches), (_, _, fn) in zip(_KERNEL_OPS, saved):
            setattr(module, name, counted(fn, launches))
        F.rms_norm = rms_norm
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


@torch.no_grad()
def count_launches(preset: str, mode: str | None = None, batch: int = 1, n_items: int = 3000) -> dict:
    engine = Engine.from_pretrained(preset)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=n_items, seed=0))
    config = dataclasses.replace(engine.default_config, backend="triton")
    if mode is not None and mode != config.mode:
        config = dataclasses.replace(config, mode=mode, max_ads=None, min_gap=0)
    catalog, tensors = engine._current(None)
    requests = synthetic_requests(catalog, engine.config, n=batch, seed=1)
    prepared = [prepare_request(r, engine.config, catalog, config.mode == "lists") for r in requests]
    counter = LaunchCounter()
    with _kernel_ops_counted(counter), counter:
        engine._serve(prepared, config, catalog, tensors, counter)
    stages = dict(counter.counts)
    captured = sum(v for k, v in stages.items() if k != "encode")
    slots = config.num_slots if config.mode == "lists" else 1
    steps = slots * engine.config.levels
    return {
        "preset": preset, "mode": config.mode, "beams": list(config.beam_schedule(engine.config.levels)),
        "num_slots": slots, "batch": batch, "decode_steps": steps, "launches_by_stage": stages,
        "captured_launches": captured, "decode_launches_per_step": round(stages.get("decode", 0) / steps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,ega-base,gr4ad-base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        for mode in ([None, "candidates"] if preset == "tiny" else [None]):
            row = count_launches(preset, mode, args.batch)
            rows.append(row)
            print(f"{row['preset']:>10} {row['mode']:<10} beams {row['beams']} slots {row['num_slots']}: "
                  f"{row['captured_launches']} launches captured (decode {row['launches_by_stage'].get('decode', 0)}, "
                  f"{row['decode_launches_per_step']}/step over {row['decode_steps']} steps), "
                  f"encoder {row['launches_by_stage'].get('encode', 0)} eager; {row['launches_by_stage']}")
    if args.save:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS_DIR / f"launches_{stamp}.json"
        RESULTS_DIR.mkdir(exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "kernel launches per batch (counted on the CPU, GPU backends' launch counts)",
            "date": stamp, "machine": platform.machine(), "torch": torch.__version__, "rows": rows,
        }, indent=2) + "\n")
        print(f"wrote {out}")


def test_launch_count_runs():
    """pytest bench/bench_launches.py: the tiny preset is counted, every stage launches."""
    row = count_launches("tiny", batch=1, n_items=500)
    assert {"encode", "decode", "reward", "payment"} <= set(row["launches_by_stage"])
    assert row["captured_launches"] > row["decode_steps"]


if __name__ == "__main__":
    main()
