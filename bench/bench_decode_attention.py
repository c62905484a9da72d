"""decode_attention (ega_infer.ops): median / p20 / p80 latency, TFLOP/s, GB/s and the roofline fraction.

Full shapes (the LazyAR tail step): 16 requests, 64 and 512 beams per request, a full
2048-token context, 3 own positions per beam, 16 query / 4 key-value heads, head dim 128, bf16.
FLOPs: 4 N P Hq D (ctx_len + T) (two matmuls). Bytes: q read + output written + each request's
context K/V read once + the beams' own K/V. Goals: >= 75% of the memory ceiling at 64 beams,
>= 400 TFLOP/s at 512 beams (bf16). Every backend is first checked against the PyTorch
reference (1e-4 in float32, 2e-2 otherwise).

    python bench/bench_decode_attention.py [--size full] [--save]
    python bench/bench_decode_attention.py --shape beams=64 ctx=8192
    pytest bench/bench_decode_attention.py [--device cuda]        # pytest-benchmark, small shapes
"""

from __future__ import annotations

import torch
from _harness import Case, Suite

from ega_infer.ops import decode_attention

_FULL = dict(requests=16, beams=64, ctx=2048, own=3, heads=16, kv_heads=4, head_dim=128, dtype="bfloat16")
SHAPES = {
    "small": [dict(_FULL, requests=2, beams=8, ctx=64, heads=4, kv_heads=2, head_dim=32, dtype="float32"),
              dict(_FULL, requests=4, beams=64, ctx=512, heads=8, kv_heads=2, head_dim=64, dtype="float32")],
    "full": [_FULL, dict(_FULL, beams=512)],
}


def make_inputs(requests: int, beams: int, ctx: int, own: int, heads: int, kv_heads: int, head_dim: int, device,
                dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Full contexts (ctx_len = ctx for every request), ``own`` positions per beam."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return {
        "q": rand(requests, beams, heads, head_dim),
        "ctx_k": rand(requests, kv_heads, ctx, head_dim),
        "ctx_v": rand(requests, kv_heads, ctx, head_dim),
        "ctx_len": torch.full((requests,), ctx, dtype=torch.int32, device=device),
        "own_k": rand(requests, beams, kv_heads, own, head_dim),
        "own_v": rand(requests, beams, kv_heads, own, head_dim),
    }


def flops_and_bytes(inputs: dict) -> tuple[float, float]:
    n, p, hq, d = inputs["q"].shape
    hkv, s = inputs["ctx_k"].shape[1:3]
    t = inputs["own_k"].shape[3]
    elem = inputs["q"].element_size()
    flops = 4.0 * n * p * hq * d * (s + t)
    nbytes = (2 * n * p * hq * d  # q + out
              + 2 * n * hkv * s * d  # context K/V, once per request
              + 2 * n * p * hkv * t * d) * elem + n * 4  # own K/V, ctx_len
    return flops, float(nbytes)


def call(inputs: dict, backend: str) -> torch.Tensor:
    return decode_attention(inputs["q"], inputs["ctx_k"], inputs["ctx_v"], inputs["ctx_len"],
                            inputs["own_k"], inputs["own_v"], backend=backend)


def cases(shape: dict, device: torch.device):
    dtype = shape["dtype"]
    inputs = make_inputs(**{k: v for k, v in shape.items() if k != "dtype"}, device=device, dtype=getattr(torch, dtype))
    want = call(inputs, "torch").float()
    tol = 1e-4 if dtype == "float32" else 2e-2
    flops, nbytes = flops_and_bytes(inputs)
    for backend in ("torch", "triton", "cuda"):
        yield Case("decode_attention", backend, lambda b=backend: call(inputs, b),
                   check=lambda got: torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol),
                   bytes=nbytes, flops=flops, dtype=dtype)


SUITE = Suite("decode_attention", __doc__, SHAPES, cases,
              entries=tuple(("decode_attention", b) for b in ("torch", "triton", "cuda")))
test_bench = SUITE.pytest_test()

if __name__ == "__main__":
    SUITE.main()
