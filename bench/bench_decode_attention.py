"""decode_attention backends: median / p20 / p80 latency, TFLOP/s, GB/s and share of the roofline.

Default shapes (the LazyAR tail step): 16 requests, 64 and 512 beams per request, a full
2048-token context, 3 own positions per beam, 16 query / 4 key-value heads, head dim 128, bf16.
FLOPs: 4 N P Hq D (ctx_len + T) (two matmuls). Bytes: q read + output written + each request's
context K/V read once + the beams' own K/V. Roofline (H100 SXM): 3.0 TB/s and 800 TFLOP/s bf16;
"roofline" is max(bytes / 3.0 TB/s, flops / 800 TFLOP/s) over the measured time. Goals: >= 75%
of the memory roofline at 64 beams, >= 400 TFLOP/s at 512 beams. Every backend is first checked
against the PyTorch reference.

    python bench/bench_decode_attention.py [--requests 16 --beams 64 512 --ctx 2048] [--save]
    pytest bench/bench_decode_attention.py        # pytest-benchmark, torch backend, small shape
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from _timing import available_backends, time_us

from ega_infer.ops.decode_attention import decode_attention

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOFLINE_BYTES_PER_S = 3.0e12
ROOFLINE_FLOPS = 800e12


def make_inputs(requests: int, beams: int, ctx: int, own: int, heads: int, kv_heads: int,
                head_dim: int, device, dtype=torch.bfloat16, seed: int = 0) -> dict:
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
    out = decode_attention(inputs["q"], inputs["ctx_k"], inputs["ctx_v"], inputs["ctx_len"],
                           inputs["own_k"], inputs["own_v"], backend=backend)
    return out


def test_bench_decode_attention_torch(benchmark) -> None:
    inputs = make_inputs(2, 8, 64, 3, 4, 2, 32, torch.device("cpu"), dtype=torch.float32)
    out = benchmark(call, inputs, "torch")
    assert out.shape == (2, 8, 4, 32)
    flops, nbytes = flops_and_bytes(inputs)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(requests=2, beams=8, ctx=64, own=3, heads=4, kv_heads=2,
                                head_dim=32, backend="torch", device="cpu",
                                gb_per_s=nbytes / median_s / 1e9,
                                tflop_per_s=flops / median_s / 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--beams", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--ctx", type=int, default=2048, help="context length (all valid)")
    parser.add_argument("--own", type=int, default=3, help="own positions per beam")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--backends", default="", help="comma list; default: all available")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backends = args.backends.split(",") if args.backends else available_backends(device)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 is set; Triton timings would be the interpreter's")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}, {args.dtype}, roofline {ROOFLINE_BYTES_PER_S / 1e12:.1f} TB/s, "
          f"{ROOFLINE_FLOPS / 1e12:.0f} TFLOP/s")
    atol = 1e-4 if dtype == torch.float32 else 2e-2

    results = []
    for beams in args.beams:
        shape = dict(requests=args.requests, beams=beams, ctx=args.ctx, own=args.own,
                     heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim)
        inputs = make_inputs(**shape, device=device, dtype=dtype)
        want = call(inputs, "torch").float()
        flops, nbytes = flops_and_bytes(inputs)
        for backend in backends:
            got = call(inputs, backend)
            torch.testing.assert_close(got.float(), want, atol=atol, rtol=atol)
            median, p20, p80 = time_us(lambda b=backend, x=inputs: call(x, b), device)
            seconds = median * 1e-6
            tflops = flops / seconds / 1e12
            gbps = nbytes / seconds / 1e9
            frac = max(nbytes / ROOFLINE_BYTES_PER_S, flops / ROOFLINE_FLOPS) / seconds
            print(f"N {args.requests:3d} beams {beams:4d} ctx {args.ctx:5d}  {backend:6s} "
                  f"median {median:9.1f} us  [p20 {p20:9.1f}, p80 {p80:9.1f}]  "
                  f"{tflops:7.1f} TFLOP/s  {gbps:8.1f} GB/s  {100 * frac:5.1f}% of roofline")
            results.append({"backend": backend, **shape, "dtype": args.dtype, "median_us": median,
                            "p20_us": p20, "p80_us": p80, "flops": flops, "bytes": nbytes,
                            "tflop_per_s": tflops, "gb_per_s": gbps, "roofline_fraction": frac})
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        tag = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")
        path = RESULTS_DIR / f"decode_attention_{tag}_{stamp}.json"
        path.write_text(json.dumps({"bench": "decode_attention", "device": gpu,
                                    "roofline_bytes_per_s": ROOFLINE_BYTES_PER_S,
                                    "roofline_flops": ROOFLINE_FLOPS,
                                    "timestamp": stamp, "results": results}, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
