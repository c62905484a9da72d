"""trie_log_softmax backends: median / p20 / p80 latency, GB/s and share of a 3.0 TB/s roofline.

Each row sits at its own trie node with ``--children`` children (or every code with ``full``).
Bytes counted: logits read at the child codes + the full float32 output written + the child
arrays (code, max bid) + row_node and child_ptr entries. Every backend is first checked against
the PyTorch reference.

    python bench/bench_trie_log_softmax.py [--rows 512 --vocab 8192 --children 64 full] [--save]
    pytest bench/bench_trie_log_softmax.py          # pytest-benchmark, torch backend, small shape
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from _timing import available_backends, time_us

from ega_infer.ops.trie_log_softmax import trie_log_softmax, trie_log_softmax_torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOFLINE_BYTES_PER_S = 3.0e12


def make_inputs(rows: int, vocab: int, children: int | None, device, dtype=torch.float32,
                seed: int = 0) -> dict:
    """One node per row, ``children`` sorted distinct codes each (None: the whole vocab)."""
    gen = torch.Generator().manual_seed(seed)
    per_node = vocab if children is None else min(children, vocab)
    if per_node == vocab:
        codes = torch.arange(vocab).repeat(rows, 1)
    else:
        codes = torch.rand(rows, vocab, generator=gen).argsort(dim=1)[:, :per_node].sort(dim=1).values
    bids = torch.rand(rows * per_node, generator=gen) * 5
    bids[torch.rand(rows * per_node, generator=gen) < 0.2] = 0.0
    return {
        "logits": (torch.randn(rows, vocab, generator=gen) * 3).to(device=device, dtype=dtype),
        "row_node": torch.randperm(rows, generator=gen).to(device),
        "child_ptr": (torch.arange(rows + 1) * per_node).to(device),
        "child_code": codes.reshape(-1).to(torch.int32).to(device),
        "child_max_bid": bids.to(device),
        "per_node": per_node,
    }


def bytes_moved(inputs: dict) -> int:
    rows, vocab = inputs["logits"].shape
    touched = rows * inputs["per_node"]
    return (touched * inputs["logits"].element_size()  # logits at the child codes
            + rows * vocab * 4  # float32 output
            + touched * (4 + 4)  # child_code + child_max_bid
            + rows * (8 + 2 * 8))  # row_node + child_ptr pair


def call(inputs: dict, backend: str, alpha: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    return trie_log_softmax(inputs["logits"], inputs["row_node"], inputs["child_ptr"],
                            inputs["child_code"], inputs["child_max_bid"], alpha=alpha, beta=beta,
                            backend=backend)


def test_bench_trie_log_softmax_torch(benchmark) -> None:
    inputs = make_inputs(64, 1024, 32, torch.device("cpu"))
    out = benchmark(call, inputs, "torch")
    assert out.shape == (64, 1024)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(rows=64, vocab=1024, children=32, backend="torch", device="cpu",
                                gb_per_s=bytes_moved(inputs) / median_s / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--children", nargs="+", default=["64", "full"],
                        help="children per node: integers and/or 'full'")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
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
    print(f"device: {gpu}, logits {args.dtype}, roofline {ROOFLINE_BYTES_PER_S / 1e12:.1f} TB/s")

    results = []
    for spec in args.children:
        children = None if spec == "full" else int(spec)
        inputs = make_inputs(args.rows, args.vocab, children, device, dtype)
        want = call(inputs, "torch")
        nbytes = bytes_moved(inputs)
        for backend in backends:
            got = call(inputs, backend)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=False)
            median, p20, p80 = time_us(lambda b=backend: call(inputs, b), device)
            gbps = nbytes / (median * 1e-6) / 1e9
            frac = nbytes / (median * 1e-6) / ROOFLINE_BYTES_PER_S
            print(f"rows {args.rows:5d} vocab {args.vocab:6d} children {spec:>5}  {backend:6s} "
                  f"median {median:9.1f} us  [p20 {p20:9.1f}, p80 {p80:9.1f}]  "
                  f"{gbps:8.1f} GB/s  {100 * frac:5.1f}% of roofline")
            results.append({"backend": backend, "rows": args.rows, "vocab": args.vocab,
                            "children": spec, "dtype": args.dtype, "median_us": median,
                            "p20_us": p20, "p80_us": p80, "bytes": nbytes, "gb_per_s": gbps,
                            "roofline_fraction": frac})
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        tag = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")
        path = RESULTS_DIR / f"trie_log_softmax_{tag}_{stamp}.json"
        path.write_text(json.dumps({"bench": "trie_log_softmax", "device": gpu,
                                    "roofline_bytes_per_s": ROOFLINE_BYTES_PER_S,
                                    "timestamp": stamp, "results": results}, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
