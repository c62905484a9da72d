"""beam_step: the CUDA C++ backend against the PyTorch reference (``backend="torch"``).

Cases cover one beam and one request, odd sizes, ``k`` above the number of candidates, dead beams
(node -1, or a live node with score -inf), nodes with no child, one child and every code, masks
that remove all children of a row, exact ties (integer logits, duplicated rows), strided logits,
the shared-memory limits (rows of > 16384 children, the sort past 2048 keys) and the goal shape.

Scores are compared with a tolerance, since the two backends sum the softmax in different orders;
(parent, token) must match the reference exactly wherever its score is separated from its
neighbours, and the CUDA result must itself be in the exact (score, parent, token) order.
"""

from __future__ import annotations

import pytest
import torch

from ega_infer import _native
from ega_infer.exceptions import BackendUnavailableError, FieldError

beam_step = pytest.importorskip(
    "ega_infer.ops.beam_step", reason="ega_infer.ops.beam_step is not there"
).beam_step

NEG_INF = float("-inf")
NEAR_TIE = 1e-4

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _native.cuda_module_or_none() is not None),
    reason="needs a CUDA GPU and the ega_infer._cuda module",
)
needs_cuda_module = pytest.mark.skipif(
    _native.cuda_module_or_none() is None,
    reason="needs the ega_infer._cuda module (built with nvcc)",
)

# (dtype, atol, rtol): the logits are upcast before any arithmetic, so one tolerance fits all.
DTYPES = [
    pytest.param((torch.float32, 1e-5, 1e-5), id="fp32"),
    pytest.param((torch.bfloat16, 1e-5, 1e-5), id="bf16"),
    pytest.param((torch.float16, 1e-5, 1e-5), id="fp16"),
]


def make_case(requests: int, beams: int, vocab: int, *, seed: int, dtype=torch.float32,
              nodes: int = 7, with_allowed: bool = False, ties: bool = False,
              strided: bool = False, children: int | None = None, device="cuda") -> dict:
    """A random depth-l level: node 0 holds every code, node 1 one code, node 2 none, the rest
    random sorted subsets (``children`` codes each when given). Beams are spread over the nodes,
    with dead ones; ``ties`` makes integer logits, equal beam scores and duplicated rows."""
    gen = torch.Generator().manual_seed(seed)
    per_node = []
    for node in range(nodes):
        if node == 0:
            codes = torch.arange(vocab)
        elif node == 1:
            codes = torch.randint(vocab, (1,), generator=gen)
        elif node == 2:
            codes = torch.zeros(0, dtype=torch.int64)
        else:
            size = children
            if size is None:
                size = int(torch.randint(1, vocab + 1, (1,), generator=gen))
            codes = torch.randperm(vocab, generator=gen)[: min(size, vocab)].sort().values
        per_node.append(codes)
    sizes = torch.tensor([len(c) for c in per_node])
    child_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    child_code = torch.cat(per_node).to(torch.int32)
    bid_choices = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0])
    child_max_bid = bid_choices[torch.randint(len(bid_choices), (len(child_code),), generator=gen)]

    rows = requests * beams
    row_node = torch.randint(nodes, (rows,), generator=gen)
    row_node[torch.rand(rows, generator=gen) < 0.15] = -1
    row_node[: min(rows, 3)] = torch.tensor([0, 1, 2])[: min(rows, 3)]
    if ties:
        logits = torch.randint(0, 3, (rows, vocab), generator=gen).float()
        beam_scores = torch.zeros(requests, beams)
    else:
        logits = torch.randn(rows, vocab, generator=gen) * 3
        beam_scores = -4 * torch.rand(requests, beams, generator=gen)
    allowed = torch.rand(rows, vocab, generator=gen) < 0.7 if with_allowed else None
    if with_allowed and rows > 3:
        allowed[3] = False  # every child of row 3 removed
    if ties and beams >= 4:  # beam 2 repeats beam 0: candidates tie exactly across parents
        for n in range(requests):
            row_node[n * beams + 2] = row_node[n * beams]
            logits[n * beams + 2] = logits[n * beams]
            if allowed is not None:
                allowed[n * beams + 2] = allowed[n * beams]
    beam_scores[(row_node < 0).view(requests, beams)] = NEG_INF
    if beams > 3:
        beam_scores[0, beams - 1] = NEG_INF  # a live node whose beam is dead
    logits = logits.to(dtype)
    if strided:
        wide = torch.zeros(rows, vocab + 9, dtype=dtype)
        wide[:, 4 : 4 + vocab] = logits
        logits = wide[:, 4 : 4 + vocab]
    case = {
        "logits": logits, "beam_scores": beam_scores, "row_node": row_node, "child_ptr": child_ptr,
        "child_code": child_code, "child_max_bid": child_max_bid, "allowed": allowed,
    }
    return {name: (t.to(device) if t is not None else None) for name, t in case.items()}


def run(case: dict, k: int, backend: str, alpha: float = 1.2, beta: float = 2.0):
    return beam_step(
        case["logits"], case["beam_scores"], case["row_node"], case["child_ptr"], case["child_code"],
        case["child_max_bid"], k=k, alpha=alpha, beta=beta, allowed=case["allowed"], backend=backend,
    )


def assert_step_matches(case: dict, k: int, alpha: float = 1.2, beta: float = 2.0,
                        atol: float = 1e-5, rtol: float = 1e-5) -> None:
    got = run(case, k, "cuda", alpha, beta)
    want = run(case, k, "torch", alpha, beta)
    requests, beams = case["beam_scores"].shape
    vocab = case["logits"].shape[1]
    for name in ("scores", "parent", "token", "child", "logp"):
        t = getattr(got, name)
        assert t.shape == (requests, k) and t.device == case["logits"].device, name
    assert got.scores.dtype == got.logp.dtype == torch.float32
    assert got.parent.dtype == got.token.dtype == got.child.dtype == torch.int64

    # Same missing entries, filled the same way.
    alive = got.scores > NEG_INF
    assert torch.equal(alive, want.scores > NEG_INF), "finite counts differ"
    assert torch.equal(got.parent[~alive], torch.zeros_like(got.parent[~alive]))
    assert torch.equal(got.token[~alive], torch.zeros_like(got.token[~alive]))
    assert torch.equal(got.child[~alive], torch.full_like(got.child[~alive], -1))
    assert torch.isneginf(got.logp[~alive]).all()
    torch.testing.assert_close(got.scores[alive], want.scores[alive], atol=atol, rtol=rtol)

    # Self-consistency: score = beam score + logp exactly; child is the token's CSR child.
    beam = case["beam_scores"].gather(1, got.parent)
    assert torch.equal((beam + got.logp)[alive], got.scores[alive])
    rows = torch.arange(requests, device=got.parent.device)[:, None] * beams + got.parent
    node = case["row_node"][rows]
    child = got.child.clamp(min=0)
    assert torch.equal(case["child_code"].long()[child][alive], got.token[alive])
    assert (child >= case["child_ptr"][node.clamp(min=0)])[alive].all()
    assert (child < case["child_ptr"][node.clamp(min=0) + 1])[alive].all()

    # Exact order of the CUDA result: score desc, then parent asc, then token asc.
    s0, s1 = got.scores[:, :-1], got.scores[:, 1:]
    p0, p1, t0, t1 = got.parent[:, :-1], got.parent[:, 1:], got.token[:, :-1], got.token[:, 1:]
    ordered = (s0 > s1) | ((s0 == s1) & ((p0 < p1) | ((p0 == p1) & (t0 < t1))))
    assert ordered[alive[:, 1:]].all(), "CUDA entries are not in (score, parent, token) order"

    # Against the reference: logp at the chosen entry, and the entry itself away from near-ties.
    from ega_infer.ops.trie_log_softmax import trie_log_softmax_torch

    logp = trie_log_softmax_torch(
        case["logits"], case["row_node"], case["child_ptr"], case["child_code"],
        case["child_max_bid"], alpha=alpha, beta=beta, allowed=case["allowed"],
    ).view(requests, beams * vocab)
    flat = got.parent * vocab + got.token
    torch.testing.assert_close(got.logp[alive], logp.gather(1, flat)[alive], atol=atol, rtol=rtol)
    full = (case["beam_scores"][..., None] + logp.view(requests, beams, vocab)).view(requests, -1)
    full_scores, full_index = torch.sort(full, dim=1, descending=True, stable=True)
    _assert_same_entries(got, flat, full_scores.cpu(), full_index.cpu(), k)


def _assert_same_entries(got, flat, full_scores, full_index, k: int) -> None:
    """Entry i must be the reference's entry i when its score is more than NEAR_TIE from its
    neighbours; otherwise a member of its near-tie group, in the reference's order when the
    group is an exact tie in both results."""
    got_scores, flat = got.scores.cpu(), flat.cpu()
    for n in range(got_scores.shape[0]):
        ref = full_scores[n].tolist()
        index = full_index[n].tolist()
        for i in range(min(k, len(ref))):
            if ref[i] == NEG_INF:
                break
            lo, hi = i, i
            while lo > 0 and ref[lo - 1] - ref[lo] <= NEAR_TIE:
                lo -= 1
            while hi + 1 < len(ref) and ref[hi + 1] > NEG_INF and ref[hi] - ref[hi + 1] <= NEAR_TIE:
                hi += 1
            entry = int(flat[n, i])
            if lo == hi:
                assert entry == index[i], f"request {n} entry {i}: {entry} vs reference {index[i]}"
                continue
            assert entry in index[lo : hi + 1], f"request {n} entry {i}: {entry} not in its tie group"
            exact_tie = len(set(ref[lo : hi + 1])) == 1 and hi < k
            if exact_tie and len(set(got_scores[n, lo : hi + 1].tolist())) == 1:
                assert entry == index[i], f"request {n} entry {i}: tie order {entry} vs {index[i]}"


# --- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("requests", "beams"), [(1, 1), (1, 5), (3, 37)])
@pytest.mark.parametrize("vocab", [1, 7, 130, 4097])
@pytest.mark.parametrize("k", [1, 16, 111])
@pytest.mark.parametrize("with_allowed", [False, True])
@pytest.mark.parametrize("dtype_tol", DTYPES)
def test_cuda_matches_reference(requests, beams, vocab, k, with_allowed, dtype_tol) -> None:
    dtype, atol, rtol = dtype_tol
    case = make_case(requests, beams, vocab, seed=requests * 1000 + beams * 10 + vocab,
                     dtype=dtype, with_allowed=with_allowed)
    assert_step_matches(case, k, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (1.0, 0.0), (0.5, 0.25)])
def test_cuda_bid_weights(alpha: float, beta: float) -> None:
    case = make_case(2, 9, 33, seed=21, with_allowed=True)
    assert_step_matches(case, 12, alpha, beta)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("with_allowed", [False, True])
@pytest.mark.parametrize("k", [3, 40])
def test_cuda_exact_ties_follow_the_stable_sort(with_allowed: bool, k: int) -> None:
    case = make_case(2, 8, 40, seed=22, ties=True, with_allowed=with_allowed)
    assert_step_matches(case, k, 0.0, 0.0)  # exact ties must come out in the reference's order
    got = run(case, k, "cuda", 0.0, 0.0)
    alive = got.scores[:, 1:] > NEG_INF
    assert (got.scores[:, 1:] == got.scores[:, :-1])[alive].any(), "the case has no exact tie"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype_tol", DTYPES)
def test_cuda_strided_logits(dtype_tol) -> None:
    dtype, atol, rtol = dtype_tol
    case = make_case(3, 11, 130, seed=23, dtype=dtype, with_allowed=True, strided=True)
    assert not case["logits"].is_contiguous()
    assert_step_matches(case, 20, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("beams", "vocab", "k"), [(1, 5, 9), (3, 4, 100), (2, 1, 3)])
def test_cuda_k_beyond_the_candidates(beams: int, vocab: int, k: int) -> None:
    assert_step_matches(make_case(2, beams, vocab, seed=24), k)


@pytest.mark.gpu
@needs_cuda
def test_cuda_all_beams_dead() -> None:
    case = make_case(2, 6, 17, seed=25)
    case["row_node"].fill_(-1)
    case["beam_scores"].fill_(NEG_INF)
    got = run(case, 4, "cuda")
    assert torch.isneginf(got.scores).all() and torch.isneginf(got.logp).all()
    assert (got.parent == 0).all() and (got.token == 0).all() and (got.child == -1).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    ("requests", "beams", "vocab", "k", "children"),
    [
        (1, 512, 8192, 512, 64),     # the goal shape, a deeper level (sparse children)
        (1, 512, 8192, 512, None),   # the same with random node sizes (dense rows)
        (2, 64, 20000, 32, None),    # rows of > 16384 children: scored without shared memory
        (1, 40, 300, 2500, None),    # k > 2048: the final sort runs in global memory
        (1, 300, 64, 1, None),       # k = 1
        (2, 200, 33, 700, 5),        # k > the keys per level-0 node: a deep merge tree
    ],
)
def test_cuda_large_shapes(requests, beams, vocab, k, children) -> None:
    case = make_case(requests, beams, vocab, seed=26, dtype=torch.bfloat16, children=children)
    assert_step_matches(case, k)


@pytest.mark.gpu
@needs_cuda
def test_cuda_non_default_stream() -> None:
    case = make_case(2, 16, 257, seed=27, with_allowed=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = run(case, 24, "cuda")
    stream.synchronize()
    want = run(case, 24, "torch")
    torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=1e-5)


# --- without a GPU ------------------------------------------------------------------------------


def test_cuda_backend_without_module_says_how_to_rebuild(monkeypatch) -> None:
    monkeypatch.setattr(_native, "cuda_module_or_none", lambda: None)
    case = make_case(1, 2, 7, seed=28, device="cpu")
    not_built = r"ega_infer\._cuda is not built.*EGA_INFER_CUDA=ON"
    with pytest.raises(BackendUnavailableError, match=not_built):
        _native.beam_step_cuda(
            case["logits"], case["beam_scores"], case["row_node"], case["child_ptr"],
            case["child_code"], case["child_max_bid"], k=2,
        )


@needs_cuda_module
def test_cuda_workspace_size() -> None:
    module = _native.cuda_module_or_none()
    small = module.beam_step_workspace_bytes(1, 4, 7, 3)
    goal = module.beam_step_workspace_bytes(1, 512, 8192, 512)
    assert 0 < small < goal and goal % 256 == 0
    # per-row lists of k keys dominate: 512 rows * 512 keys * 8 bytes
    assert goal >= 512 * 512 * 8
    with pytest.raises(ValueError, match="2\\^32"):
        module.beam_step_workspace_bytes(1, 2**20, 2**13, 4)
    with pytest.raises(ValueError, match=">= 1"):
        module.beam_step_workspace_bytes(1, 4, 7, 0)


@needs_cuda_module
def test_cuda_wrapper_rejects_cpu_tensors() -> None:
    case = make_case(1, 2, 7, seed=29, device="cpu")
    with pytest.raises(FieldError, match="CUDA tensor"):
        _native.beam_step_cuda(
            case["logits"], case["beam_scores"], case["row_node"], case["child_ptr"],
            case["child_code"], case["child_max_bid"], k=2,
        )


def test_trie_row_checks_name_the_field() -> None:
    """The checks both CUDA trie wrappers run before launching, on CPU tensors (the wrappers
    themselves reject CPU tensors first, so without a GPU only this reaches them)."""
    case = make_case(1, 2, 7, seed=30, device="cpu", with_allowed=True)
    names = ("logits", "row_node", "child_ptr", "child_code", "child_max_bid", "allowed")

    def check(logits_shape="[rows, vocab]", **change):
        args = {name: change.get(name, case[name]) for name in names}
        return _native._check_trie_rows(*args.values(), logits_shape,
                                        beam_scores=change.get("beam_scores", case["beam_scores"]))

    assert torch.equal(check(), case["allowed"])
    assert check(allowed=None) is None
    bad = {
        "beam_scores": dict(beam_scores=case["beam_scores"].to("meta")),
        "logits": dict(logits=case["logits"][0]),
        "row_node": dict(row_node=case["row_node"][:1]),
        "child_ptr": dict(child_ptr=case["child_ptr"].float()),
        "child_code": dict(child_code=case["child_code"][::2]),
        "child_max_bid": dict(child_max_bid=case["child_max_bid"][:-1]),
        "allowed": dict(allowed=case["allowed"].int()),
    }
    for field, change in bad.items():
        with pytest.raises(FieldError) as info:
            check(**change)
        assert info.value.field == field, (field, info.value)
    with pytest.raises(FieldError, match="float32, bfloat16 or float16"):
        check(logits=case["logits"].double())
    with pytest.raises(FieldError, match=r"\[requests \* beams, vocab\]"):
        check("[requests * beams, vocab]", logits=case["logits"][0])
