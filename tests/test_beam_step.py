"""beam_step: the PyTorch reference against the unfused ops, and the Triton / CUDA backends
against the reference.

Tries come from ``ega_infer._C.build_trie`` (depth-1 nodes and their depth-2 children) plus one
extra node without children. Each case has a node holding every code, a node with one child,
beams that share a node (one of them with a copy of another beam's logits and score, so their
candidates tie exactly), dead beams (node -1, and score -inf on a live node), a row with no
admissible child, zero bids (weight -inf when alpha > 0 and beta == 0) and ``k`` above the number
of candidates.

Backends compute the log-softmax with different (correctly rounded, not bit-identical) float
code, so two candidates whose scores differ by a few ulps may swap. ``assert_same_step`` is exact
about everything else: entries and order wherever the reference's scores are more than
``TIE_TOL`` apart, exact ties broken by parent then token, child indices, and values to 1e-5.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from ega_infer import _C, _native
from ega_infer.exceptions import BackendUnavailableError, FieldError
from ega_infer.ops import BeamStep, beam_step, beam_step_torch, trie_log_softmax_torch
from ega_infer.ops.beam_step import log_beta

NEG_INF = float("-inf")
TIE_TOL = 1e-4  # reference scores closer than this may come out in either order
ALPHA_BETA = [(0.0, 0.0), (1.2, 2.0), (1.0, 0.0)]

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _native.cuda_module_or_none() is not None),
    reason="needs a CUDA GPU and the ega_infer._cuda module",
)


def full_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact top-k oracle: a stable descending sort of each request's ``P * V`` candidates
    (ties by parent, then token); entries past ``P * V`` are -inf with parent and token 0."""
    n, p, v = scores.shape
    values, flat = torch.sort(scores.reshape(n, p * v), dim=-1, descending=True, stable=True)
    values, flat = values[:, :k], flat[:, :k]
    parent, token = torch.div(flat, v, rounding_mode="floor"), flat % v
    missing = k - values.shape[1]
    if missing > 0:
        values = torch.cat([values, values.new_full((n, missing), NEG_INF)], dim=1)
        parent = torch.cat([parent, parent.new_zeros(n, missing)], dim=1)
        token = torch.cat([token, token.new_zeros(n, missing)], dim=1)
    return values, parent, token


def make_case(n: int, p: int, vocab: int, *, seed: int, device: torch.device,
              with_allowed: bool = False, dtype: torch.dtype = torch.float32,
              strided: bool = False) -> dict:
    """Inputs of one call: a random two-level trie, ``n`` requests of ``p`` beams each."""
    rng = np.random.default_rng(seed)
    prefixes = 6
    pairs = [(0, c) for c in range(vocab)]  # node 0: every code is a child
    pairs.append((1, int(rng.integers(vocab))))  # node 1: a single child
    pairs += [(int(rng.integers(2, prefixes)), int(rng.integers(vocab))) for _ in range(3 * vocab)]
    codes = np.array(pairs, dtype=np.int32)
    is_ad = rng.random(len(codes)) < 0.5
    bids = rng.choice(np.array([0.0, 0.5, 1.0, 2.5, 4.0], dtype=np.float32), size=len(codes))
    trie = _C.build_trie(codes, is_ad, bids.astype(np.float32), [prefixes, vocab])
    child_ptr = trie["child_ptr"][1]
    childless = len(child_ptr) - 1  # an extra node without children
    child_ptr = np.append(child_ptr, child_ptr[-1])

    rows = n * p
    row_node = rng.integers(-1, childless + 1, size=rows)
    special = [0, 1, -1, childless, 0]  # all codes, one child, dead, no child, shares row 0's node
    row_node[: min(rows, 5)] = special[: min(rows, 5)]
    scores = (-rng.random(rows) * 4).astype(np.float32)
    if rows > 5:
        scores[5] = NEG_INF  # a dead beam on a live node
    wide = torch.randn(rows, vocab + 7) * 3
    if rows > 4:
        wide[4] = wide[0]
        scores[4] = scores[0]  # row 4 repeats row 0: every candidate of row 4 ties one of row 0
    if strided:
        logits = wide.to(dtype=dtype, device=device)[:, 3 : 3 + vocab]
    else:
        logits = wide[:, 3 : 3 + vocab].contiguous().to(dtype=dtype, device=device)
    allowed = None
    if with_allowed:
        allowed = torch.from_numpy(rng.random((rows, vocab)) < 0.7)
        allowed[0] = True
        if rows > 4:
            allowed[4] = True
        if rows > 6:
            allowed[6] = False  # every child of row 6 disallowed
        allowed = allowed.to(device)
    return {
        "logits": logits,
        "beam_scores": torch.from_numpy(scores).view(n, p).to(device),
        "row_node": torch.from_numpy(row_node).to(device),
        "child_ptr": torch.from_numpy(child_ptr).to(device),
        "child_code": torch.from_numpy(trie["node_code"][1]).to(device),
        "child_max_bid": torch.from_numpy(trie["node_max_bid"][1]).to(device),
        "allowed": allowed,
    }


def tensors(case: dict) -> tuple:
    return (case["logits"], case["beam_scores"], case["row_node"], case["child_ptr"],
            case["child_code"], case["child_max_bid"])


def run_backend(case: dict, k: int, alpha: float, beta: float, backend: str,
                renormalize: bool = True, override: tuple | None = None) -> BeamStep:
    """``override``: ``(override_child, override_bid)`` as ``make_override`` returns them."""
    child, bid = override if override is not None else (None, None)
    return beam_step(*tensors(case), k=k, alpha=alpha, beta=beta, allowed=case["allowed"],
                     renormalize=renormalize, override_child=child, override_bid=bid,
                     backend=backend)


def reference(case: dict, k: int, alpha: float, beta: float, renormalize: bool = True,
              override: tuple | None = None) -> BeamStep:
    cpu = {key: None if t is None else t.cpu() for key, t in case.items()}
    child, bid = (t.cpu() for t in override) if override is not None else (None, None)
    return beam_step_torch(*tensors(cpu), k=k, alpha=alpha, log_beta=log_beta(beta), allowed=cpu["allowed"],
                           renormalize=renormalize, override_child=child, override_bid=bid)


def assert_missing_entries(step: BeamStep) -> None:
    dead = ~step.alive
    assert (step.parent[dead] == 0).all() and (step.token[dead] == 0).all()
    assert (step.child[dead] == -1).all() and torch.isneginf(step.logp[dead]).all()
    assert (step.child[~dead] >= 0).all() and torch.isfinite(step.logp[~dead]).all()


def assert_same_step(got: BeamStep, case: dict, k: int, alpha: float, beta: float,
                     atol: float = 1e-5, renormalize: bool = True, override: tuple | None = None) -> None:
    got = BeamStep(*(t.cpu() for t in (got.scores, got.parent, got.token, got.child, got.logp)))
    want = reference(case, k, alpha, beta, renormalize, override)
    n = want.scores.shape[0]
    for name in ("scores", "parent", "token", "child", "logp"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype and g.shape == w.shape == (n, k), name
    assert torch.equal(got.alive, want.alive), "different numbers of kept candidates"
    alive = want.alive
    torch.testing.assert_close(got.scores[alive], want.scores[alive], atol=atol, rtol=1e-5)
    torch.testing.assert_close(got.logp[alive], want.logp[alive], atol=atol, rtol=1e-5)
    assert_missing_entries(got)

    # Ties among got's own scores: by parent, then token.
    for req in range(n):
        live = int(got.alive[req].sum())
        for i in range(live - 1):
            a, b = float(got.scores[req, i]), float(got.scores[req, i + 1])
            assert a >= b, f"request {req}: scores not descending at {i}"
            if a == b:
                first = (int(got.parent[req, i]), int(got.token[req, i]))
                second = (int(got.parent[req, i + 1]), int(got.token[req, i + 1]))
                assert first < second, f"request {req}: tie at {i} not broken by (parent, token)"

    # Entries and order: exact between groups of reference scores closer than TIE_TOL.
    p, vocab = case["beam_scores"].shape[1], case["logits"].shape[1]
    every = reference(case, p * vocab, alpha, beta, renormalize, override)  # every candidate, ranked
    for req in range(n):
        ranked = every.scores[req]
        live = int(every.alive[req].sum())
        i = 0
        while i < min(live, k):
            j = i
            while j + 1 < live and float(ranked[j]) - float(ranked[j + 1]) <= TIE_TOL:
                j += 1
            stop = min(j + 1, k)
            got_group = {_entry(got, req, q) for q in range(i, stop)}
            want_group = {_entry(every, req, q) for q in range(i, j + 1)}
            if j + 1 <= k:
                assert got_group == want_group, f"request {req}, ranks {i}..{j}"
            else:
                assert got_group <= want_group, f"request {req}, ranks {i}..{k - 1}"
            i = j + 1


def _entry(step: BeamStep, req: int, q: int) -> tuple[int, int, int]:
    return int(step.parent[req, q]), int(step.token[req, q]), int(step.child[req, q])


# --- the PyTorch reference itself -------------------------------------------------------------


def naive_child(row_node, child_ptr, child_code, row: int, token: int) -> int:
    node = int(row_node[row])
    for j in range(int(child_ptr[node]), int(child_ptr[node + 1])):
        if int(child_code[j]) == token:
            return j
    raise AssertionError(f"row {row} has no child with code {token}")


@pytest.mark.parametrize(("n", "p", "vocab", "k"), [(1, 1, 1, 1), (3, 5, 7, 4), (3, 5, 33, 38),
                                                    (1, 5, 130, 9), (3, 1, 33, 36)])
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
def test_torch_reference_equals_one_stage_oracle(n, p, vocab, k, alpha, beta, device) -> None:
    case = make_case(n, p, vocab, seed=n * 100 + vocab, device=device, with_allowed=True)
    got = beam_step_torch(*tensors(case), k=k, alpha=alpha, log_beta=log_beta(beta), allowed=case["allowed"])
    logp = trie_log_softmax_torch(
        case["logits"], case["row_node"], case["child_ptr"], case["child_code"],
        case["child_max_bid"], alpha=alpha, log_beta=log_beta(beta), allowed=case["allowed"],
    ).view(n, p, vocab)
    scores, parent, token = full_topk(case["beam_scores"][..., None] + logp, k)
    assert torch.equal(got.scores, scores)
    alive = scores > NEG_INF
    assert torch.equal(got.parent[alive], parent[alive])
    assert torch.equal(got.token[alive], token[alive])
    assert_missing_entries(got)
    for req, q in alive.nonzero().tolist():
        row = req * p + int(parent[req, q])
        tok = int(token[req, q])
        assert float(got.logp[req, q]) == float(logp[req, int(parent[req, q]), tok])
        assert int(got.child[req, q]) == naive_child(case["row_node"], case["child_ptr"],
                                                     case["child_code"], row, tok)


@pytest.mark.parametrize(("n", "p", "vocab", "k"), [(1, 1, 1, 1), (3, 5, 7, 4), (3, 5, 33, 38),
                                                    (1, 5, 130, 9)])
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
def test_torch_reference_without_renormalization(n, p, vocab, k, alpha, beta, device) -> None:
    # renormalize=False: the logits (log-probabilities over a larger vocabulary, in practice)
    # plus the bid weight, masked to the admissible children, not normalised again.
    case = make_case(n, p, vocab, seed=n * 100 + vocab + 7, device=device, with_allowed=True)
    got = beam_step_torch(*tensors(case), k=k, alpha=alpha, log_beta=log_beta(beta), allowed=case["allowed"],
                          renormalize=False)
    rows, child_ptr = case["row_node"], case["child_ptr"]
    masked = torch.full((n * p, vocab), NEG_INF, device=device)
    for r in range(n * p):
        node = int(rows[r])
        if node < 0:
            continue
        for j in range(int(child_ptr[node]), int(child_ptr[node + 1])):
            c = int(case["child_code"][j])
            powered = float(case["child_max_bid"][j]) ** alpha + beta  # float64; 0.0 ** 0 == 1
            w = math.log(powered) if powered > 0 else NEG_INF
            if bool(case["allowed"][r, c]):
                masked[r, c] = float(case["logits"][r, c]) + w
    scores, parent, token = full_topk(case["beam_scores"][..., None] + masked.view(n, p, vocab), k)
    alive = scores > NEG_INF
    assert torch.equal(got.alive, alive)
    torch.testing.assert_close(got.scores[alive], scores[alive], atol=1e-5, rtol=1e-6)
    assert torch.equal(got.parent[alive], parent[alive])
    assert torch.equal(got.token[alive], token[alive])
    assert_missing_entries(got)
    for req, q in alive.nonzero().tolist():
        want = float(masked[req * p + int(parent[req, q]), int(token[req, q])])
        assert float(got.logp[req, q]) == pytest.approx(want, abs=1e-5)


def make_override(case: dict, entries: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-request bid overrides ``[N, entries]``: random depth-2 nodes (the all-codes node's
    children among them), some named twice with different bids, -1 pads, zero bids."""
    gen = torch.Generator().manual_seed(seed)
    n = case["beam_scores"].shape[0]
    nodes = case["child_code"].numel()
    child = torch.randint(-1, nodes, (n, entries), generator=gen)
    if entries > 1:
        child[:, 1] = child[:, 0]  # named twice: the smaller bid counts
    bid = torch.randint(0, 5, (n, entries), generator=gen).float() * 0.75
    device = case["logits"].device
    return child.to(device), bid.to(device)


@pytest.mark.parametrize(("n", "p", "vocab", "k", "entries"), [(1, 1, 1, 1, 1), (3, 5, 7, 4, 3),
                                                               (3, 5, 33, 38, 5), (2, 3, 130, 9, 17)])
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
def test_torch_reference_bid_override_is_a_per_request_max_bid(n, p, vocab, k, entries, alpha, beta,
                                                               device) -> None:
    # Oracle: each request alone, with child_max_bid rewritten where its overrides name a child.
    case = make_case(n, p, vocab, seed=n * 31 + vocab, device=device, with_allowed=True)
    child, bid = make_override(case, entries, seed=vocab)
    got = beam_step(*tensors(case), k=k, alpha=alpha, beta=beta, allowed=case["allowed"],
                    override_child=child, override_bid=bid, backend="torch")
    for req in range(n):
        rows = slice(req * p, (req + 1) * p)
        max_bid = case["child_max_bid"].clone()
        for j, b in sorted(zip(child[req].tolist(), bid[req].tolist()), key=lambda e: -e[1]):
            if j >= 0:
                max_bid[j] = b  # the smallest bid of a child named twice is written last
        want = beam_step(case["logits"][rows], case["beam_scores"][req:req + 1], case["row_node"][rows],
                         case["child_ptr"], case["child_code"], max_bid, k=k, alpha=alpha, beta=beta,
                         allowed=case["allowed"][rows], backend="torch")
        for name in ("scores", "parent", "token", "child", "logp"):
            assert torch.equal(getattr(got, name)[req], getattr(want, name)[0]), name


def test_bad_overrides_raise_field_error() -> None:
    case = make_case(2, 3, 7, seed=5, device=torch.device("cpu"))
    child, bid = make_override(case, 2, seed=1)
    bad = {"override_child": [(None, bid), (child[:1], bid[:1]), (child.float(), bid)],
           "override_bid": [(child, None), (child, bid.double()), (child, bid[:, :1])]}
    for field, pairs in bad.items():
        for c, b in pairs:
            with pytest.raises(FieldError, match=field):
                beam_step(*tensors(case), k=2, alpha=1.0, override_child=c, override_bid=b)


def test_torch_reference_by_hand() -> None:
    # Request 0: beam 0 at node 0 (codes 0, 2, 3), beam 1 at node 1 (no child); request 1: beam 0
    # at node 2 (code 1), beam 1 dead.
    logits = torch.tensor([[0.0, 9.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0],
                           [0.0, 7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    child_ptr = torch.tensor([0, 3, 3, 4])
    child_code = torch.tensor([0, 2, 3, 1], dtype=torch.int32)
    step = beam_step_torch(logits, torch.tensor([[0.0, 0.0], [-2.0, 0.0]]),
                           torch.tensor([0, 1, 2, -1]), child_ptr, child_code, torch.ones(4), k=4,
                           alpha=0.0, log_beta=NEG_INF)
    lse = torch.logsumexp(torch.tensor([0.0, 0.0, 1.0]), 0)
    torch.testing.assert_close(step.scores[0, :3], torch.stack([1 - lse, -lse, -lse]))
    assert step.parent[0].tolist() == [0, 0, 0, 0]
    assert step.token[0].tolist() == [3, 0, 2, 0]  # the tie of codes 0 and 2 by code
    assert step.child[0].tolist() == [2, 0, 1, -1]
    assert step.scores[1].tolist() == [-2.0, NEG_INF, NEG_INF, NEG_INF]
    assert (step.token[1].tolist(), step.child[1].tolist()) == ([1, 0, 0, 0], [3, -1, -1, -1])
    assert step.logp[1].tolist() == [0.0, NEG_INF, NEG_INF, NEG_INF]


def test_torch_reference_without_requests() -> None:
    step = beam_step_torch(torch.zeros(0, 5), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                           torch.tensor([0, 2]), torch.tensor([1, 3]), torch.ones(2), k=4,
                           alpha=0.0, log_beta=NEG_INF)
    assert step.scores.shape == step.child.shape == (0, 4)


@pytest.mark.parametrize(("n", "p", "vocab"), [(1, 1, 7), (3, 5, 33)])
def test_auto_backend_on_cpu_is_the_reference(n, p, vocab, device) -> None:
    if device.type != "cpu":
        pytest.skip("checks the CPU dispatch only")
    case = make_case(n, p, vocab, seed=3, device=device, with_allowed=True)
    got, want = run_backend(case, 4, 1.2, 2.0, "auto"), reference(case, 4, 1.2, 2.0)
    for name in ("scores", "parent", "token", "child", "logp"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def _bad(case: dict, what: str) -> tuple[dict, int, str]:
    case = dict(case)
    k, field = 3, what
    if what == "k":
        k = 0
    elif what == "logits":
        case["logits"] = case["logits"].int()
    elif what == "logits_stride":
        case["logits"] = case["logits"].t().contiguous().t()
        field = "logits"
    elif what == "beam_scores":
        case["beam_scores"] = case["beam_scores"].reshape(-1)[:-1]
    elif what == "beam_scores_dtype":
        case["beam_scores"] = case["beam_scores"].double()
        field = "beam_scores"
    elif what == "row_node":
        case["row_node"] = case["row_node"].float()
    elif what == "child_max_bid":
        case["child_max_bid"] = case["child_max_bid"][:-1]
    elif what == "allowed":
        case["allowed"] = torch.ones(1, 1, dtype=torch.bool)
    elif what == "device":
        case["child_code"] = case["child_code"].to("meta")
        field = "child_code"
    return case, k, field


@pytest.mark.parametrize("what", ["k", "logits", "logits_stride", "beam_scores",
                                  "beam_scores_dtype", "row_node", "child_max_bid", "allowed",
                                  "device"])
def test_bad_inputs_raise_field_error(what: str) -> None:
    case, k, field = _bad(make_case(2, 3, 7, seed=4, device=torch.device("cpu")), what)
    with pytest.raises(FieldError) as info:
        run_backend(case, k, 0.0, 0.0, "torch")
    assert info.value.field == field and info.value.expected


def test_renormalize_flag_on_cpu_dispatch(device) -> None:
    if device.type != "cpu":
        pytest.skip("checks the CPU dispatch only")
    case = make_case(3, 5, 33, seed=6, device=device, with_allowed=True)
    for renormalize in (True, False):
        got = run_backend(case, 4, 0.0, 0.0, "auto", renormalize=renormalize)
        want = reference(case, 4, 0.0, 0.0, renormalize)
        assert torch.equal(got.scores, want.scores) and torch.equal(got.child, want.child)
    assert not torch.equal(run_backend(case, 4, 0.0, 0.0, "torch", renormalize=False).scores,
                           reference(case, 4, 0.0, 0.0).scores)


def test_cuda_backend_on_cpu_tensors_is_unavailable() -> None:
    case = make_case(1, 2, 7, seed=5, device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="beam_step"):
        run_backend(case, 2, 0.0, 0.0, "cuda")


# --- Triton -----------------------------------------------------------------------------------


@pytest.fixture
def triton_device(device: torch.device) -> torch.device:
    pytest.importorskip("triton", reason="the triton package is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        if torch.cuda.is_available():
            return torch.device("cuda")
        pytest.skip("Triton needs a CUDA GPU, or TRITON_INTERPRET=1 to run on CPU tensors")
    return device


def ks_for(p: int, vocab: int) -> list[int]:
    return [1, 4, p * vocab + 3]


@pytest.mark.interpreter
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("p", [1, 5])
@pytest.mark.parametrize("vocab", [1, 7, 33, 130])
@pytest.mark.parametrize("k_index", [0, 1, 2], ids=["k1", "k4", "kall"])
def test_triton_matches_reference(n, p, vocab, k_index, triton_device) -> None:
    k = ks_for(p, vocab)[k_index]
    alpha, beta = ALPHA_BETA[(n + p + vocab + k_index) % 3]
    case = make_case(n, p, vocab, seed=n * 1000 + p * 100 + vocab, device=triton_device,
                     with_allowed=(vocab + k_index) % 2 == 1)
    assert_same_step(run_backend(case, k, alpha, beta, "triton"), case, k, alpha, beta)


@pytest.mark.interpreter
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_triton_weights_masks_dtypes(alpha, beta, dtype, triton_device) -> None:
    with_allowed = (alpha, dtype) != (0.0, torch.float32)  # both ways for fp32
    case = make_case(3, 5, 33, seed=21, device=triton_device, with_allowed=with_allowed,
                     dtype=dtype)
    assert_same_step(run_backend(case, 4, alpha, beta, "triton"), case, 4, alpha, beta)


@pytest.mark.interpreter
@pytest.mark.parametrize(("scale", "alpha", "beta"), [(1e33, 1.2, 2.0), (1.0, 1e30, 2.0), (1e-30, 1e36, 0.0),
                                                      (3e38 / 4, 1.2, 1e300), (1.0, 0.0, 1e300)])
def test_huge_token_weights_stay_finite_and_match(scale, alpha, beta, triton_device) -> None:
    # bids of 1e33 and exponents of 1e30 once overflowed max_bid ** alpha + beta in float32
    # (NaN logits, every beam dead); in log space every backend keeps finite, equal scores
    case = make_case(2, 5, 33, seed=8, device=triton_device, with_allowed=True)
    case["child_max_bid"] = case["child_max_bid"] * scale
    ref = reference(case, 6, alpha, beta)
    assert not torch.isnan(ref.scores).any() and ref.alive.any()
    assert torch.isfinite(ref.scores[ref.alive]).all()
    assert_same_step(run_backend(case, 6, alpha, beta, "triton"), case, 6, alpha, beta)


@pytest.mark.interpreter
@pytest.mark.parametrize(("n", "p", "vocab"), [(1, 1, 7), (3, 5, 33), (2, 3, 130)])
@pytest.mark.parametrize("k_index", [0, 1, 2], ids=["k1", "k4", "kall"])
def test_triton_without_renormalization(n, p, vocab, k_index, triton_device) -> None:
    k = ks_for(p, vocab)[k_index]
    alpha, beta = ALPHA_BETA[(n + vocab + k_index) % 3]
    case = make_case(n, p, vocab, seed=n * 1000 + p * 100 + vocab + 1, device=triton_device,
                     with_allowed=k_index == 1)
    got = run_backend(case, k, alpha, beta, "triton", renormalize=False)
    assert_same_step(got, case, k, alpha, beta, renormalize=False)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_strided_logits(dtype: torch.dtype, triton_device: torch.device) -> None:
    case = make_case(3, 5, 33, seed=22, device=triton_device, with_allowed=True, dtype=dtype,
                     strided=True)
    assert not case["logits"].is_contiguous()
    assert_same_step(run_backend(case, 6, 1.2, 2.0, "triton"), case, 6, 1.2, 2.0)


@pytest.mark.interpreter
@pytest.mark.parametrize("vocab", [7, 33])
@pytest.mark.parametrize("k_index", [0, 1, 2], ids=["k1", "k4", "kall"])
def test_triton_whole_row_tiles(vocab, k_index, triton_device, monkeypatch) -> None:
    # A 4-lane small tile sends nodes with more children through the whole-row tile, and
    # node 0 (every code) through the contiguous full-node path.
    from ega_infer.kernels import beam_step as kernel_module

    monkeypatch.setattr(kernel_module, "_SMALL_TILE", 4)
    k = ks_for(5, vocab)[k_index]
    case = make_case(3, 5, vocab, seed=23 + vocab, device=triton_device, with_allowed=True)
    for alpha, beta in ((0.0, 0.0), (1.2, 2.0)):
        assert_same_step(run_backend(case, k, alpha, beta, "triton"), case, k, alpha, beta)


def tie_case(p: int, row_node: list[int], beam_scores: list[float], device, *,
             same_rows: bool = True) -> dict:
    """Integer logits: most candidates of a row tie exactly. With ``same_rows`` one row is
    repeated for every beam, so beams at the same node or at single-child nodes (logp exactly 0)
    tie too."""
    vocab = 9
    if same_rows:
        logits = torch.randint(0, 3, (vocab,)).float().repeat(len(row_node), 1)
    else:
        logits = torch.randint(0, 3, (len(row_node), vocab)).float()
    return {
        "logits": logits.to(device),
        "beam_scores": torch.tensor(beam_scores, device=device).view(-1, p),
        "row_node": torch.tensor(row_node, device=device),
        # node 0: every code; nodes 1, 2: a single child; node 3: codes 1, 4, 5, 7
        "child_ptr": torch.tensor([0, 9, 10, 11, 15], device=device),
        "child_code": torch.tensor(list(range(9)) + [2, 5, 1, 4, 5, 7], dtype=torch.int32,
                                   device=device),
        "child_max_bid": torch.ones(15, device=device),
        "allowed": None,
    }


TIE_LAYOUTS = {
    "beams": (6, [0, 0, 1, 2, 3, 3, 3, 0, -1, 1, 0, 2],
              [0.0] * 6 + [0.0, 0.0, NEG_INF, -1.0, 0.0, -1.0]),
    "one-beam": (1, [0, 3, 0], [0.0, -0.5, 0.0]),
}


@pytest.mark.interpreter
@pytest.mark.parametrize("layout", sorted(TIE_LAYOUTS))
@pytest.mark.parametrize("k", [1, 2, 5, 57])
@pytest.mark.parametrize("small_tile", [256, 4])
def test_triton_ties_break_identically(layout, k, small_tile, triton_device, monkeypatch) -> None:
    from ega_infer.kernels import beam_step as kernel_module

    monkeypatch.setattr(kernel_module, "_SMALL_TILE", small_tile)
    case = tie_case(*TIE_LAYOUTS[layout], triton_device)
    got = run_backend(case, k, 0.0, 0.0, "triton")
    want = reference(case, k, 0.0, 0.0)
    assert torch.equal(got.parent.cpu(), want.parent)
    assert torch.equal(got.token.cpu(), want.token)
    assert torch.equal(got.child.cpu(), want.child)
    assert_same_step(got, case, k, 0.0, 0.0)


@pytest.mark.interpreter
@pytest.mark.parametrize("k", [1, 2, 3, 5, 9, 12])
@pytest.mark.parametrize("small_tile", [256, 4])
def test_triton_row_survivors_are_each_rows_top_k(k, small_tile, triton_device, monkeypatch):
    # The row kernel alone: row r keeps exactly its best min(k, admissible) candidates by
    # (score descending, token ascending), and pads the rest of its min(k, V) slots.
    from ega_infer.kernels import beam_step as kernel_module

    monkeypatch.setattr(kernel_module, "_SMALL_TILE", small_tile)
    p, row_node, scores = TIE_LAYOUTS["beams"]
    case = tie_case(p, row_node, scores, triton_device, same_rows=False)
    keys, child, logp = kernel_module._row_survivors(*tensors(case), k=k, alpha=0.0, log_beta=NEG_INF,
                                                     allowed=None)
    vocab = case["logits"].shape[1]
    assert keys.shape == (len(row_node), min(k, vocab))
    cpu = {key: None if t is None else t.cpu() for key, t in case.items()}
    dense = trie_log_softmax_torch(cpu["logits"], cpu["row_node"], cpu["child_ptr"],
                                   cpu["child_code"], cpu["child_max_bid"], alpha=0.0, log_beta=NEG_INF)
    dense = cpu["beam_scores"].reshape(-1, 1) + dense
    keys = keys.cpu()
    for row in range(len(row_node)):
        values, order = torch.sort(dense[row], descending=True, stable=True)
        want = order[values > NEG_INF][:k].tolist()
        stored = keys[row][keys[row] != kernel_module._PAD_KEY]
        flat = kernel_module._KEY_LOW - (stored & kernel_module._KEY_LOW)
        assert (flat // vocab == row % p).all()
        assert sorted((flat % vocab).tolist()) == sorted(want), f"row {row}"
        assert (keys[row][len(want):] == kernel_module._PAD_KEY).all()


@pytest.mark.interpreter
def test_triton_int32_indices(triton_device: torch.device) -> None:
    case = make_case(3, 5, 33, seed=24, device=triton_device, with_allowed=True)
    want = reference(case, 7, 1.0, 0.0)
    case["row_node"] = case["row_node"].int()
    case["child_ptr"] = case["child_ptr"].int()
    case["child_code"] = case["child_code"].long()
    got = run_backend(case, 7, 1.0, 0.0, "triton")
    for name in ("parent", "token", "child"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name


@pytest.mark.interpreter
def test_triton_without_requests(triton_device: torch.device) -> None:
    dev = triton_device
    step = beam_step(torch.zeros(0, 5, device=dev), torch.zeros(0, 3, device=dev),
                     torch.zeros(0, dtype=torch.long, device=dev), torch.tensor([0, 2], device=dev),
                     torch.tensor([1, 3], device=dev), torch.ones(2, device=dev), k=4,
                     backend="triton")
    assert step.scores.shape == step.parent.shape == (0, 4)


# --- CUDA C++ ---------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("n", "p", "vocab"), [(1, 1, 1), (3, 5, 7), (3, 5, 130), (2, 64, 1000)])
@pytest.mark.parametrize("k_index", [0, 1, 2], ids=["k1", "k4", "kall"])
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_cuda_matches_reference(n, p, vocab, k_index, alpha, beta, dtype) -> None:
    k = ks_for(p, vocab)[k_index]
    case = make_case(n, p, vocab, seed=n * 1000 + p * 100 + vocab, device=torch.device("cuda"),
                     with_allowed=k_index == 1, dtype=dtype, strided=k_index == 2)
    assert_same_step(run_backend(case, k, alpha, beta, "cuda"), case, k, alpha, beta)


@pytest.mark.gpu
@needs_cuda
def test_cuda_without_renormalization() -> None:
    # The CUDA backend has no renormalize=False mode: "auto" runs another backend, "cuda" raises.
    case = make_case(3, 5, 130, seed=31, device=torch.device("cuda"), with_allowed=True)
    got = run_backend(case, 9, 0.0, 0.0, "auto", renormalize=False)
    assert_same_step(got, case, 9, 0.0, 0.0, renormalize=False)
    with pytest.raises(BackendUnavailableError, match="renormalize"):
        run_backend(case, 9, 0.0, 0.0, "cuda", renormalize=False)


# --- Triton: per-request bid overrides ----------------------------------------------------------


@pytest.mark.interpreter
@pytest.mark.parametrize(("n", "p", "vocab", "k", "entries"), [(1, 1, 1, 1, 1), (3, 5, 7, 4, 3),
                                                               (3, 5, 33, 38, 5), (2, 3, 130, 9, 17)])
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize("with_allowed", [False, True], ids=["all", "allowed"])
def test_triton_bid_override_matches_reference(n, p, vocab, k, entries, alpha, beta, with_allowed,
                                               triton_device) -> None:
    case = make_case(n, p, vocab, seed=n * 37 + vocab, device=triton_device, with_allowed=with_allowed)
    override = make_override(case, entries, seed=vocab + 1)
    got = run_backend(case, k, alpha, beta, "triton", override=override)
    assert_same_step(got, case, k, alpha, beta, override=override)


@pytest.mark.interpreter
@pytest.mark.parametrize("child_dtype", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_triton_bid_override_whole_row_tiles(child_dtype, triton_device, monkeypatch) -> None:
    # A 4-lane small tile: the overrides also act in the whole-row and full-node tiles. The
    # all-codes node's children are named too, so the override changes the result.
    from ega_infer.kernels import beam_step as kernel_module

    monkeypatch.setattr(kernel_module, "_SMALL_TILE", 4)
    case = make_case(3, 5, 33, seed=41, device=triton_device, with_allowed=True)
    child, bid = make_override(case, 6, seed=2)
    child[:, 2:] = torch.tensor([3, 5, 8, 13], device=child.device)  # node 0's: child j has code j
    bid[:, 2:] = torch.tensor([0.0, 4.0, 0.25, 3.0], device=bid.device)
    override = (child.to(child_dtype), bid)
    assert not torch.equal(reference(case, 8, 1.2, 0.0, override=override).scores,
                           reference(case, 8, 1.2, 0.0).scores)
    assert_same_step(run_backend(case, 8, 1.2, 0.0, "triton", override=override), case, 8, 1.2, 0.0,
                     override=override)
