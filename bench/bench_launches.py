"""Kernel launches per batch on the engine's GPU path, counted on any machine through
``Engine.generate`` (no GPU needed).

At batch 1 the GPU is nearly idle: a request's latency is the chain of kernels it runs one after
another. A CUDA graph removes the host's cost of launching them, not the chain: each graph node
still takes a microsecond or two even when its kernel has almost nothing to do. So the number
of launches in the captured stages (decode to payment) is a floor under batch-1 latency that
this machine can measure, and the encoder's launches (eager, outside the graph) each also cost
the host a few microseconds.

What is counted: one ``Engine.generate`` call of one batch with ``backend="torch"`` (the same
model path as the kernel backends; only inside the ops does it differ), under a
``TorchDispatchMode`` and a profile hook on the public ops:

* every aten call that launches a kernel; views, ``empty`` allocations and the host-scalar
  wrappers of Python numbers (``scalar_tensor``) launch none and are not counted;
* a call of a public kernel op counts as the launches of the GPU backend ``auto`` serves it
  with, and the aten calls of its PyTorch reference inside are not counted: ``beam_step`` 2
  (CUDA: rows, merge), ``decode_attention`` 1 (CUDA; +1 combine when it splits the context, not
  counted), ``prefill_attention`` 1 (Triton); ``F.rms_norm`` 1 (``aten._fused_rms_norm`` on
  CUDA; it decomposes on a CPU);
* per stage: each launch is stamped with the wall clock and falls in the stage whose window it
  lies in; the windows are the ``latency_ms`` stages of the returned slate laid end to end from
  the first call of ``prepare_request`` (which opens ``validate``). Launches outside every
  window are ``between``. The CPU path's batch-invariance measures run other aten calls than
  the GPU's: a ``model.layers.Linear`` counts as its one matrix product and
  ``model.layers.math_attention`` as one SDPA kernel; ``rowwise`` (a few elementwise ops on
  padded rows) adds a pad per call, so counts here are a little above the GPU's. Against a
  stage-aware count through the engine's
  internals (tiny preset, both modes, AMD EPYC CPU, 2026-12-03) the totals were equal and each
  stage within 2 launches (a launch at a stage's very end can fall in the next window).

Approximate, then, where CUDA differs from the CPU decomposition (SDPA's mask handling, fused
elementwise ops); exact for the engine's own Python. Shapes: small the tiny preset (lists and
candidates), full also ega-base and gr4ad-base; ``--shape preset=ega-base batch=8``.

    python bench/bench_launches.py [--size full] [--save]
    pytest bench/bench_launches.py              # the tiny preset is counted, every stage launches
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import _harness

from ega_infer import Engine, ops
from ega_infer.model import layers
from ega_infer.benchmark import result, row
from ega_infer.request import prepare_request
from ega_infer.testing import synthetic_catalog, synthetic_requests

SHAPES = {
    "small": [dict(preset="tiny", mode="lists", batch=1), dict(preset="tiny", mode="candidates", batch=1)],
    "full": [dict(preset="tiny", mode="lists", batch=1), dict(preset="tiny", mode="candidates", batch=1),
             dict(preset="ega-base", mode="lists", batch=1), dict(preset="gr4ad-base", mode="candidates", batch=1)],
}
# launches of the GPU backend that serves each public op, and of F.rms_norm on CUDA
# (a Linear is one matrix product, and attention one SDPA kernel, on a GPU: on the CPU they pad
# rows or spell attention out for batch invariance, see ega_infer/model/layers.py)
_OP_LAUNCHES = {ops.beam_step.__code__: 2, ops.decode_attention.__code__: 1, ops.prefill_attention.__code__: 1,
                F.rms_norm.__code__: 1, layers.Linear.forward.__code__: 1, layers.math_attention.__code__: 1}
_FREE = {
    "view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "expand", "permute", "slice",
    "select", "as_strided", "alias", "detach", "split", "unbind", "_reshape_alias", "split_with_sizes",
    "unflatten", "narrow", "diagonal", "reshape", "lift_fresh", "empty", "empty_strided", "empty_like",
    "new_empty", "scalar_tensor", "_local_scalar_dense", "sym_size", "resolve_conj", "resolve_neg",
}
_VALIDATE_START = prepare_request.__code__  # the first call opens the "validate" stage
CAPTURED = ("decode", "creative", "reward", "payment")  # one CUDA graph on a GPU


class LaunchCounter(TorchDispatchMode):
    """The wall-clock time of every launch while active (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []
        self.validate_start: float | None = None  # the first call of prepare_request
        self._inside = None  # the frame of the kernel op being counted as a whole

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._inside is None and func.overloadpacket.__name__ not in _FREE:
            self.stamps.append(time.perf_counter())
        return func(*args, **(kwargs or {}))

    def _profile(self, frame, event, arg) -> None:
        if event == "call" and self._inside is None and frame.f_code in _OP_LAUNCHES:
            self._inside = frame
            self.stamps += [time.perf_counter()] * _OP_LAUNCHES[frame.f_code]
        elif event == "return" and frame is self._inside:
            self._inside = None
        elif event == "call" and frame.f_code is _VALIDATE_START and self.validate_start is None:
            self.validate_start = time.perf_counter()

    def __enter__(self):
        sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(None)
        return super().__exit__(*exc)


def by_stage(stamps: list[float], latency_ms: dict[str, float], start: float) -> dict[str, int]:
    """Launches per stage: the stages' windows laid end to end from ``start`` (the opening of
    the first stage); the launches outside every window are ``between``."""
    counts: dict[str, int] = {}
    stamps = sorted(stamps)
    for name, ms in latency_ms.items():
        if name == "total":
            continue
        end = start + ms * 1e-3
        inside = bisect.bisect_right(stamps, end) - bisect.bisect_left(stamps, start)
        if inside:
            counts[name] = inside
        start = end
    between = len(stamps) - sum(counts.values())
    return counts | ({"between": between} if between else {})


@torch.no_grad()
def count_launches(preset: str, mode: str | None = None, batch: int = 1, n_items: int = 3000) -> dict:
    engine = Engine.from_pretrained(preset)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=n_items, seed=0))
    config = dataclasses.replace(engine.default_config, backend="torch")
    if mode is not None and mode != config.mode:
        config = dataclasses.replace(config, mode=mode, max_ads=None, min_gap=0, forbidden_ad_slots=())
    requests = synthetic_requests(engine.catalog, engine.config, n=batch, seed=1)
    engine.generate(requests, config)  # warm-up: first calls load modules and fill caches
    counter = LaunchCounter()
    with counter:
        slates = engine.generate(requests, config)
    assert all(s.ok for s in slates), [s.error for s in slates if not s.ok]
    stages = by_stage(counter.stamps, slates[0].latency_ms, counter.validate_start)
    slots = config.num_slots if config.mode == "lists" else 1
    steps = slots * engine.config.levels
    return {
        "beams": list(config.spec().beam_schedule(engine.config.levels)), "num_slots": slots, "decode_steps": steps,
        "launches": len(counter.stamps), "launches_by_stage": stages,
        "captured_launches": sum(stages.get(s, 0) for s in CAPTURED), "encoder_launches": stages.get("encode", 0),
        "decode_launches_per_step": round(stages.get("decode", 0) / steps, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = _harness.options(__doc__).parse_args(argv)
    device = _harness.setup(args)  # counting runs on the CPU whatever --device says
    shapes = [dict(SHAPES[args.size][0], **dict(p)) for p in args.shape] or SHAPES[args.size]
    rows = []
    for shape in shapes:
        counted = count_launches(shape["preset"], shape["mode"], shape["batch"])
        rows.append(row("generate", "gpu launches", shape, None, **counted))
        s = counted["launches_by_stage"]
        print(f"{shape['preset']:>10} {shape['mode']:<10} batch {shape['batch']} beams {counted['beams']} "
              f"slots {counted['num_slots']}: {counted['captured_launches']} launches captured (decode "
              f"{s.get('decode', 0)}, {counted['decode_launches_per_step']}/step over {counted['decode_steps']} "
              f"steps), encoder {counted['encoder_launches']} eager; {counted['launches']} in all {s}")
    if args.save:
        _harness.save(result("launches", torch.device("cpu"), rows, {"size": args.size, "counted_on": "cpu",
                                                                     "asked_device": str(device)}))
    return rows


def test_launch_count_runs():
    """The tiny preset is counted and every stage of the captured part launches."""
    counted = count_launches("tiny", batch=1, n_items=500)
    assert {"encode", "decode", "reward", "payment"} <= set(counted["launches_by_stage"])
    assert counted["captured_launches"] > counted["decode_steps"]


if __name__ == "__main__":
    main()
