"""Timing shared by the kernel benchmarks: medians with a p20/p80 band, and the backends a
device can run."""

from __future__ import annotations

import statistics
import time

import torch

from ega_infer._native import cuda_module_or_none


def time_us(fn, device: torch.device) -> tuple[float, float, float]:
    """(median, p20, p80) in microseconds: CUDA events through ``triton.testing.do_bench`` on a
    GPU (warm-up, then 200 ms of repeats), the wall clock on a CPU (at least 5 runs, up to 1 s)."""
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
        return tuple(1e3 * m for m in ms)
    fn()
    samples = []
    deadline = time.perf_counter() + 1.0
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 200):
        start = time.perf_counter()
        fn()
        samples.append(1e6 * (time.perf_counter() - start))
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def available_backends(device: torch.device, has_cuda_twin: bool = True) -> list[str]:
    """torch everywhere; on a GPU also triton (when installed) and cuda (when the op has a CUDA
    C++ version and ``ega_infer._cuda`` is built)."""
    if device.type != "cuda":
        return ["torch"]
    backends = ["torch"]
    try:
        import triton  # noqa: F401

        backends.append("triton")
    except ImportError:
        pass
    if has_cuda_twin and cuda_module_or_none() is not None:
        backends.append("cuda")
    return backends
