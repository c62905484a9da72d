"""beam_step (ega_infer.ops): median / p20 / p80 latency, GB/s and the roofline fraction, per backend.

Each beam sits at its own trie node with ``children`` sorted codes (``full``: every code); ``k``
beams (0: as many as ``beams``) are kept per request. Bytes counted are what the step must move
at least: the logits at the child codes, the child codes (not for ``full`` nodes, whose codes
are implied), the child bids when ``alpha != 0``, row_node + child_ptr pair + beam score per
beam, and the five ``[N, k]`` outputs. Every backend is first checked against the PyTorch
reference: scores to 1e-4, and each kept entry's score, logp and child recomputed from the
reference log-softmax (entries may differ only between near-tied scores; the share that match
exactly is recorded as ``exact_entry_fraction``).

    python bench/bench_beam_step.py [--size full] [--save]          # 512 beams, vocab 8192, 64 children and full
    python bench/bench_beam_step.py --shape requests=8 vocab=16384 dtype=bfloat16
    pytest bench/bench_beam_step.py [--device cuda]                 # pytest-benchmark, small shapes
"""

from __future__ import annotations

import math

import torch
from _harness import Case, Suite

from ega_infer.ops import BeamStep, beam_step, trie_log_softmax_torch

_BASE = dict(requests=1, beams=512, vocab=8192, children=64, k=0, alpha=1.0, beta=0.5, dtype="float32")
SHAPES = {
    "small": [dict(_BASE, requests=2, beams=32, vocab=1024, children=32),
              dict(_BASE, requests=2, beams=32, vocab=1024, children="full")],
    "full": [_BASE, dict(_BASE, children="full")],
}


def make_inputs(requests: int, beams: int, vocab: int, children: int | None, device, dtype=torch.float32,
                seed: int = 0) -> dict:
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


def call(inputs: dict, backend: str, k: int, alpha: float, beta: float) -> BeamStep:
    return beam_step(inputs["logits"], inputs["beam_scores"], inputs["row_node"], inputs["child_ptr"],
                     inputs["child_code"], inputs["child_max_bid"], k=k, alpha=alpha, beta=beta, backend=backend)


def check(got: BeamStep, want: BeamStep, inputs: dict, alpha: float, beta: float) -> float:
    """Raise if ``got`` is not a correct top-k; return the share of entries equal to ``want``."""
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-5)
    requests, beams = inputs["beam_scores"].shape
    logp = trie_log_softmax_torch(
        inputs["logits"], inputs["row_node"], inputs["child_ptr"], inputs["child_code"], inputs["child_max_bid"],
        alpha=alpha, log_beta=math.log(beta) if beta > 0 else -math.inf,
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


def cases(shape: dict, device: torch.device):
    children = None if shape["children"] == "full" else int(shape["children"])
    k, alpha, beta = shape["k"] or shape["beams"], shape["alpha"], shape["beta"]
    inputs = make_inputs(shape["requests"], shape["beams"], shape["vocab"], children, device,
                         getattr(torch, shape["dtype"]))
    want = call(inputs, "torch", k, alpha, beta)
    for backend in ("torch", "triton", "cuda"):
        yield Case("beam_step", backend, lambda b=backend: call(inputs, b, k, alpha, beta),
                   check=lambda got: {"exact_entry_fraction": check(got, want, inputs, alpha, beta)},
                   bytes=bytes_moved(inputs, k, alpha))


SUITE = Suite("beam_step", __doc__, SHAPES, cases, entries=tuple(("beam_step", b) for b in ("torch", "triton", "cuda")))
test_bench = SUITE.pytest_test()

if __name__ == "__main__":
    SUITE.main()
