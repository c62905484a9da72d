"""prefill_attention backends: median / p20 / p80 latency, TFLOP/s, GB/s and share of the roofline.

Default shapes: 8 sequences of 2048 tokens packed (T = 16384), 16 query / 4 key-value heads,
head dim 128, bf16, causal and bidirectional. FLOPs: 4 Hq D sum_b L_b^2 (bidirectional) or
4 Hq D sum_b L_b (L_b + 1) / 2 (causal), the two matmuls over the attended pairs only. Bytes: q,
k, v read once + output written. Roofline (H100 SXM): 3.0 TB/s and 800 TFLOP/s bf16; "roofline" is
max(bytes / 3.0 TB/s, flops / 800 TFLOP/s) over the measured time. Goal: >= 450 TFLOP/s bf16 at
2048-token sequences, head dim 128. Every backend is first checked against the PyTorch reference.

    python bench/bench_prefill_attention.py [--lengths 2048 --batch 8 --causal both] [--save]
    python bench/bench_prefill_attention.py --lengths 1500 17 900 0 2048   # a ragged batch
    pytest bench/bench_prefill_attention.py        # pytest-benchmark, torch backend, small shape
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from _timing import available_backends, time_us

from ega_infer.ops.prefill_attention import prefill_attention

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOFLINE_BYTES_PER_S = 3.0e12
ROOFLINE_FLOPS = 800e12


def make_inputs(lengths: list[int], heads: int, kv_heads: int, head_dim: int, device,
                dtype=torch.bfloat16, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(),
                      dtype=torch.int32, device=device)
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
    out = prefill_attention(inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens"],
                            causal=causal, backend=backend)
    return out


def test_bench_prefill_attention_torch(benchmark) -> None:
    inputs = make_inputs([64, 17, 100], 4, 2, 32, torch.device("cpu"), dtype=torch.float32)
    out = benchmark(call, inputs, "torch", True)
    assert out.shape == (181, 4, 32)
    flops, nbytes = flops_and_bytes(inputs, True)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(lengths=[64, 17, 100], heads=4, kv_heads=2, head_dim=32,
                                causal=True, backend="torch", device="cpu",
                                gb_per_s=nbytes / median_s / 1e9,
                                tflop_per_s=flops / median_s / 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048],
                        help="sequence lengths of one batch (repeated --batch times)")
    parser.add_argument("--batch", type=int, default=8, help="repeats of --lengths")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--backends", default="", help="comma list; default: all available")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backends = args.backends.split(",") if args.backends else available_backends(device, has_cuda_twin=False)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 is set; Triton timings would be the interpreter's")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}, {args.dtype}, roofline {ROOFLINE_BYTES_PER_S / 1e12:.1f} TB/s, "
          f"{ROOFLINE_FLOPS / 1e12:.0f} TFLOP/s")
    atol = 1e-4 if dtype == torch.float32 else 2e-2
    lengths = args.lengths * args.batch
    inputs = make_inputs(lengths, args.heads, args.kv_heads, args.head_dim, device, dtype)
    modes = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]

    results = []
    for causal in modes:
        want = call(inputs, "torch", causal).float()
        flops, nbytes = flops_and_bytes(inputs, causal)
        for backend in backends:
            got = call(inputs, backend, causal)
            torch.testing.assert_close(got.float(), want, atol=atol, rtol=atol)
            median, p20, p80 = time_us(lambda b=backend, c=causal: call(inputs, b, c), device)
            seconds = median * 1e-6
            tflops = flops / seconds / 1e12
            gbps = nbytes / seconds / 1e9
            frac = max(nbytes / ROOFLINE_BYTES_PER_S, flops / ROOFLINE_FLOPS) / seconds
            print(f"T {sum(lengths):6d} ({len(lengths)} seqs) causal {causal!s:5}  {backend:6s} "
                  f"median {median:9.1f} us  [p20 {p20:9.1f}, p80 {p80:9.1f}]  "
                  f"{tflops:7.1f} TFLOP/s  {gbps:8.1f} GB/s  {100 * frac:5.1f}% of roofline")
            results.append({"backend": backend, "lengths": lengths, "heads": args.heads,
                            "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                            "causal": causal, "dtype": args.dtype, "median_us": median,
                            "p20_us": p20, "p80_us": p80, "flops": flops, "bytes": nbytes,
                            "tflop_per_s": tflops, "gb_per_s": gbps, "roofline_fraction": frac})
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        tag = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")
        path = RESULTS_DIR / f"prefill_attention_{tag}_{stamp}.json"
        path.write_text(json.dumps({"bench": "prefill_attention", "device": gpu,
                                    "roofline_bytes_per_s": ROOFLINE_BYTES_PER_S,
                                    "roofline_flops": ROOFLINE_FLOPS,
                                    "timestamp": stamp, "results": results}, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
