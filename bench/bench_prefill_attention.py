"""prefill_attention (ega_infer.ops): median / p20 / p80 latency, TFLOP/s, GB/s and the roofline fraction.

Full shapes: 8 sequences of 2048 tokens packed (T = 16384), 16 query / 4 key-value heads, head
dim 128, bf16, bidirectional and causal. ``lengths`` are one batch's sequence lengths, repeated
``batch`` times. FLOPs: 4 Hq D sum_b L_b^2 (bidirectional) or 4 Hq D sum_b L_b (L_b + 1) / 2
(causal), the two matmuls over the attended pairs only. Bytes: q, k, v read once + output
written. Goal: >= 450 TFLOP/s bf16 at 2048-token sequences, head dim 128. There is no CUDA C++
backend. Every backend is first checked against the PyTorch reference (1e-4 in float32, 2e-2
otherwise).

    python bench/bench_prefill_attention.py [--size full] [--save]
    python bench/bench_prefill_attention.py --shape lengths=1500,17,900,0,2048 batch=1   # a ragged batch
    pytest bench/bench_prefill_attention.py [--device cuda]       # pytest-benchmark, small shapes
"""

from __future__ import annotations

import torch
from _harness import Case, Suite

from ega_infer.ops import prefill_attention

_FULL = dict(lengths=[2048], batch=8, heads=16, kv_heads=4, head_dim=128, causal=False, dtype="bfloat16")
_SMALL = dict(lengths=[64, 17, 100], batch=1, heads=4, kv_heads=2, head_dim=32, causal=False, dtype="float32")
SHAPES = {
    "small": [_SMALL, dict(_SMALL, causal=True)],
    "full": [_FULL, dict(_FULL, causal=True)],
}


def make_inputs(lengths: list[int], heads: int, kv_heads: int, head_dim: int, device, dtype=torch.bfloat16,
                seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32,
                      device=device)
    return {"q": rand(total, heads, head_dim), "k": rand(total, kv_heads, head_dim),
            "v": rand(total, kv_heads, head_dim), "cu_seqlens": cu, "lengths": lengths}


def flops_and_bytes(inputs: dict, causal: bool) -> tuple[float, float]:
    total, hq, d = inputs["q"].shape
    hkv = inputs["k"].shape[1]
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in inputs["lengths"])
    flops = 4.0 * hq * d * pairs
    nbytes = (2 * total * hq * d + 2 * total * hkv * d) * inputs["q"].element_size()
    return flops, float(nbytes)


def call(inputs: dict, backend: str, causal: bool) -> torch.Tensor:
    return prefill_attention(inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens"], causal=causal,
                             backend=backend)


def cases(shape: dict, device: torch.device):
    dtype, causal = shape["dtype"], bool(shape["causal"])
    lengths = list(shape["lengths"] if isinstance(shape["lengths"], list) else [shape["lengths"]]) * shape["batch"]
    inputs = make_inputs(lengths, shape["heads"], shape["kv_heads"], shape["head_dim"], device, getattr(torch, dtype))
    want = call(inputs, "torch", causal).float()
    tol = 1e-4 if dtype == "float32" else 2e-2
    flops, nbytes = flops_and_bytes(inputs, causal)
    for backend in ("torch", "triton"):
        yield Case("prefill_attention", backend, lambda b=backend: call(inputs, b, causal),
                   check=lambda got: torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol),
                   bytes=nbytes, flops=flops, dtype=dtype)


SUITE = Suite("prefill_attention", __doc__, SHAPES, cases,
              entries=tuple(("prefill_attention", b) for b in ("torch", "triton")))
test_bench = SUITE.pytest_test()

if __name__ == "__main__":
    SUITE.main()
