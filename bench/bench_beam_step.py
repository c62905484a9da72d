"""beam_step backends: median / p20 / p80 latency, GB/s and share of a 3.0 TB/s roofline.

Each beam sits at its own trie node with ``--children`` sorted codes (or every code with
``full``); ``k`` (default: the beam count) beams are kept per request. Bytes counted are what the
step must move at least: the logits at the child codes, the child codes (not for ``full`` nodes,
whose codes are implied), the child bids when ``alpha != 0``, row_node + child_ptr pair + beam
score per beam, and the five ``[N, k]`` outputs. Every backend is first checked against the
PyTorch reference: scores to 1e-4, and each kept entry's score, logp and child recomputed from
the reference log-softmax (the entries themselves may differ only between near-tied scores; the
share that match exactly is printed).

    python bench/bench_beam_step.py [--requests 1 --beams 512 --vocab 8192 --children 64 full] [--save]
    python bench/bench_beam_step.py --requests 8 --beams 512 --vocab 16384 --dtype bfloat16
    pytest bench/bench_beam_step.py          # pytest-benchmark, torch backend, small shape
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from _timing import available_backends, time_us

from ega_infer.ops.beam_step import BeamStep, beam_step
from ega_infer.ops.trie_log_softmax import trie_log_softmax_torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOFLINE_BYTES_PER_S = 3.0e12


def make_inputs(requests: int, beams: int, vocab: int, children: int | None, device,
                dtype=torch.float32, seed: int = 0) -> dict:
    """One node per beam, ``children`` sorted distinct codes each (None: the whole vocab)."""
    gen = torch.Generator().manual_seed(seed)
    rows = requests * beams
    per_node = vocab if children is None else min(children, vocab)
    if per_node == vocab:
        codes = torch.arange(vocab).repeat(rows, 1)
    else:
        codes = torch.rand(rows, vocab, generator=gen).argsort(dim=1)[:, :per_node].sort(dim=1).values
    bids = torch.rand(rows * per_node, generator=gen) * 5
    bids[torch.rand(rows * per_node, generator=gen) < 0.2] = 0.0
    return {
        "logits": (torch.randn(rows, vocab, generator=gen) * 3).to(device=device, dtype=dtype),
        "beam_scores": (-10 * torch.rand(requests, beams, generator=gen)).to(device),
        "row_node": torch.randperm(rows, generator=gen).to(device),
        "child_ptr": (torch.arange(rows + 1) * per_node).to(device),
        "child_code": codes.reshape(-1).to(torch.int32).to(device),
        "child_max_bid": bids.to(device),
        "per_node": per_node,
    }


def bytes_moved(inputs: dict, k: int, alpha: float) -> int:
    rows, vocab = inputs["logits"].shape
    requests = inputs["beam_scores"].shape[0]
    touched = rows * inputs["per_node"]
    code_bytes = 0 if inputs["per_node"] == vocab else 4
    bid_bytes = 4 if alpha != 0.0 else 0
    return (touched * (inputs["logits"].element_size() + code_bytes + bid_bytes)
            + rows * (8 + 2 * 8 + 4)  # row_node + child_ptr pair + beam score
            + requests * k * (4 + 8 + 8 + 8 + 4))  # scores, parent, token, child, logp


def call(inputs: dict, backend: str, k: int, alpha: float = 1.0, beta: float = 0.5) -> BeamStep:
    return beam_step(inputs["logits"], inputs["beam_scores"], inputs["row_node"],
                     inputs["child_ptr"], inputs["child_code"], inputs["child_max_bid"], k=k,
                     alpha=alpha, beta=beta, backend=backend)


def check(got: BeamStep, want: BeamStep, inputs: dict, alpha: float, beta: float) -> float:
    """Raise if ``got`` is not a correct top-k; return the share of entries equal to ``want``."""
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-5)
    requests, beams = inputs["beam_scores"].shape
    logp = trie_log_softmax_torch(
        inputs["logits"], inputs["row_node"], inputs["child_ptr"], inputs["child_code"],
        inputs["child_max_bid"], alpha=alpha, beta=beta,
    ).view(requests, beams, -1)
    alive = got.alive
    req = torch.arange(requests, device=got.scores.device)[:, None].expand_as(got.parent)
    chosen = logp[req, got.parent, got.token]
    rebuilt = inputs["beam_scores"][req, got.parent] + chosen
    torch.testing.assert_close(got.scores[alive], rebuilt[alive], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.logp[alive], chosen[alive], atol=1e-4, rtol=1e-5)
    node = inputs["row_node"][req * beams + got.parent].long()
    child = got.child[alive]
    assert (inputs["child_code"][child].long() == got.token[alive]).all(), "child has another code"
    assert ((child >= inputs["child_ptr"][node[alive]])
            & (child < inputs["child_ptr"][node[alive] + 1])).all(), "child of another node"
    flat = got.parent * logp.shape[-1] + got.token
    for r in range(requests):
        kept = flat[r][alive[r]]
        assert kept.unique().numel() == kept.numel(), f"request {r} keeps a candidate twice"
    same = (got.parent == want.parent) & (got.token == want.token)
    return float(same.float().mean())


def test_bench_beam_step_torch(benchmark) -> None:
    inputs = make_inputs(2, 32, 1024, 32, torch.device("cpu"))
    step = benchmark(call, inputs, "torch", 32)
    assert step.scores.shape == (2, 32)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(requests=2, beams=32, vocab=1024, children=32, k=32,
                                backend="torch", device="cpu",
                                gb_per_s=bytes_moved(inputs, 32, 1.0) / median_s / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--beams", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--children", nargs="+", default=["64", "full"],
                        help="children per node: integers and/or 'full'")
    parser.add_argument("--k", type=int, default=0,
                        help="beams kept per request (default: --beams)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--backends", default="", help="comma list; default: all available")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    k = args.k or args.beams
    backends = args.backends.split(",") if args.backends else available_backends(device)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 is set; Triton timings would be the interpreter's")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}, logits {args.dtype}, roofline {ROOFLINE_BYTES_PER_S / 1e12:.1f} TB/s")

    results = []
    for spec in args.children:
        children = None if spec == "full" else int(spec)
        inputs = make_inputs(args.requests, args.beams, args.vocab, children, device, dtype)
        want = call(inputs, "torch", k, args.alpha, args.beta)
        nbytes = bytes_moved(inputs, k, args.alpha)
        for backend in backends:
            got = call(inputs, backend, k, args.alpha, args.beta)
            exact = check(got, want, inputs, args.alpha, args.beta)
            median, p20, p80 = time_us(
                lambda b=backend: call(inputs, b, k, args.alpha, args.beta), device)
            gbps = nbytes / (median * 1e-6) / 1e9
            frac = nbytes / (median * 1e-6) / ROOFLINE_BYTES_PER_S
            print(f"N {args.requests} P {args.beams:4d} V {args.vocab:6d} children {spec:>5} "
                  f"k {k:4d}  {backend:6s} median {median:9.1f} us  [p20 {p20:9.1f}, "
                  f"p80 {p80:9.1f}]  {gbps:8.1f} GB/s  {100 * frac:5.1f}% of roofline  "
                  f"({100 * exact:.1f}% entries as the reference)")
            results.append({"backend": backend, "requests": args.requests, "beams": args.beams,
                            "vocab": args.vocab, "children": spec, "k": k, "dtype": args.dtype,
                            "alpha": args.alpha, "beta": args.beta, "median_us": median,
                            "p20_us": p20, "p80_us": p80, "bytes": nbytes, "gb_per_s": gbps,
                            "roofline_fraction": frac, "exact_entry_fraction": exact})
    if args.save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        tag = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")
        path = RESULTS_DIR / f"beam_step_{tag}_{stamp}.json"
        path.write_text(json.dumps({"bench": "beam_step", "device": gpu,
                                    "roofline_bytes_per_s": ROOFLINE_BYTES_PER_S,
                                    "timestamp": stamp, "results": results}, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
