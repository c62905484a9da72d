"""beam_step: the CUDA C++ backend (``ega_infer.ops.beam_step_cuda``) against the PyTorch
reference, on a GPU.

Cases cover one beam and one request, odd sizes, ``k`` above the number of candidates, dead beams
(node -1, or a live node with score -inf), nodes with no child, one child and every code, masks
that remove all children of a row, exact ties (integer logits, duplicated rows), strided logits,
the shared-memory limits (rows of > 16384 children, the sort past 2048 keys), the goal shape,
token weights that would overflow ``bid ** alpha + beta`` in float32, and per-request bid
overrides (a child named twice, -1 pads, up to 17 entries). The same kernels run on the
CPU on every test run in ``tests/test_cuda_emulation.py``, on the same cases
(``tests/cuda_emulation/cases.py``).

Only a missing ``ega_infer._cuda`` or a missing GPU skips; an import error of the package's own
code fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from cuda_emulation.cases import (
    NEG_INF, add_override, assert_logp_matches_float64, assert_step_matches, beam_inputs, log_beta,
    make_beam_case,
)
from ega_infer import _native
from ega_infer.exceptions import BackendUnavailableError, FieldError
from ega_infer.ops import beam_step
from ega_infer.ops.beam_step_cuda import beam_step_cuda, kernel_inputs

needs_cuda = pytest.mark.skipif(
    _native.cuda_module_or_none() is None or not torch.cuda.is_available(),
    reason="needs a CUDA GPU and the ega_infer._cuda module (built with nvcc)",
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


def run(case: dict, k: int, alpha: float = 1.2, beta: float = 2.0):
    return beam_step_cuda(*beam_inputs(case), k=k, alpha=alpha, log_beta=log_beta(beta),
                          allowed=case["allowed"], override_child=case.get("override_child"),
                          override_bid=case.get("override_bid"))


def check(case: dict, k: int, alpha: float = 1.2, beta: float = 2.0, atol=1e-5, rtol=1e-5) -> None:
    got = run(case, k, alpha, beta)
    for t in got:
        assert t.device == case["logits"].device
    assert_step_matches(got, case, k, alpha, log_beta(beta), atol=atol, rtol=rtol)


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
    case = make_beam_case(requests, beams, vocab, seed=requests * 1000 + beams * 10 + vocab,
                          dtype=dtype, with_allowed=with_allowed, device="cuda")
    check(case, k, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (1.0, 0.0), (0.5, 0.25)])
def test_cuda_bid_weights(alpha: float, beta: float) -> None:
    check(make_beam_case(2, 9, 33, seed=21, with_allowed=True, device="cuda"), 12, alpha, beta)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (1e30, 2.0), (3.0, 1e300), (1e30, 1e300)])
def test_cuda_huge_token_weights_do_not_overflow(alpha: float, beta: float) -> None:
    # bid ** alpha + beta is inf in float32 here; the log-space weight is finite (never NaN).
    case = make_beam_case(2, 9, 33, seed=32, with_allowed=True, bids=[0.0, 0.5, 1.0, 1e33, 3e38],
                          device="cuda")
    got = run(case, 12, alpha, beta)
    assert_step_matches(got, case, 12, alpha, log_beta(beta), atol=1e-5, rtol=1e-5)
    assert_logp_matches_float64(got, case, alpha, log_beta(beta))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("with_allowed", [False, True])
@pytest.mark.parametrize("k", [3, 40])
def test_cuda_exact_ties_follow_the_stable_sort(with_allowed: bool, k: int) -> None:
    case = make_beam_case(2, 8, 40, seed=22, ties=True, with_allowed=with_allowed, device="cuda")
    check(case, k, 0.0, 0.0)  # exact ties must come out in the reference's order
    scores = run(case, k, 0.0, 0.0)[0]
    alive = scores[:, 1:] > NEG_INF
    assert (scores[:, 1:] == scores[:, :-1])[alive].any(), "the case has no exact tie"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype_tol", DTYPES)
def test_cuda_strided_logits(dtype_tol) -> None:
    dtype, atol, rtol = dtype_tol
    case = make_beam_case(3, 11, 130, seed=23, dtype=dtype, with_allowed=True, strided=True, device="cuda")
    assert not case["logits"].is_contiguous()
    check(case, 20, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("beams", "vocab", "k"), [(1, 5, 9), (3, 4, 100), (2, 1, 3)])
def test_cuda_k_beyond_the_candidates(beams: int, vocab: int, k: int) -> None:
    check(make_beam_case(2, beams, vocab, seed=24, device="cuda"), k)


@pytest.mark.gpu
@needs_cuda
def test_cuda_all_beams_dead() -> None:
    case = make_beam_case(2, 6, 17, seed=25, device="cuda")
    case["row_node"].fill_(-1)
    case["beam_scores"].fill_(NEG_INF)
    scores, parent, token, child, logp = run(case, 4)
    assert torch.isneginf(scores).all() and torch.isneginf(logp).all()
    assert (parent == 0).all() and (token == 0).all() and (child == -1).all()


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
    case = make_beam_case(requests, beams, vocab, seed=26, dtype=torch.bfloat16, children=children,
                          device="cuda")
    check(case, k)


@pytest.mark.gpu
@needs_cuda
def test_cuda_non_default_stream() -> None:
    case = make_beam_case(2, 16, 257, seed=27, with_allowed=True, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = run(case, 24)
    stream.synchronize()
    assert_step_matches(got, case, 24, 1.2, log_beta(2.0))


@pytest.mark.gpu
@needs_cuda
def test_public_op_dispatches_to_cuda() -> None:
    case = make_beam_case(2, 9, 33, seed=28, with_allowed=True, device="cuda")
    step = beam_step(*beam_inputs(case), k=12, alpha=1.2, beta=2.0, allowed=case["allowed"], backend="cuda")
    want = run(case, 12)
    for name, t in zip(("scores", "parent", "token", "child", "logp"), want):
        assert torch.equal(getattr(step, name), t), name


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    ("requests", "beams", "vocab", "k", "entries", "alpha", "beta", "dtype", "with_allowed", "index_dtype"),
    [
        (1, 1, 1, 1, 1, 1.2, 2.0, torch.float32, False, torch.int64),
        (1, 5, 7, 16, 3, 1.0, 0.0, torch.float32, False, torch.int32),
        (2, 9, 33, 12, 5, 1.0, 0.0, torch.float32, True, torch.int64),
        (3, 37, 130, 111, 17, 1.2, 2.0, torch.bfloat16, True, torch.int32),
        (2, 7, 131, 1, 2, 0.5, 0.25, torch.float16, False, torch.int64),
        (3, 37, 4097, 16, 17, 1.2, 2.0, torch.float32, False, torch.int64),
        (2, 64, 20000, 32, 17, 1.2, 2.0, torch.bfloat16, False, torch.int64),  # rows streamed
        (1, 40, 300, 2500, 9, 1.0, 0.0, torch.bfloat16, True, torch.int32),    # sort in global memory
    ],
)
def test_cuda_override_matches_reference(requests, beams, vocab, k, entries, alpha, beta, dtype, with_allowed,
                                         index_dtype) -> None:
    case = make_beam_case(requests, beams, vocab, seed=40 + vocab, dtype=dtype, with_allowed=with_allowed,
                          device="cuda")
    check(add_override(case, entries, seed=41 + entries, dtype=index_dtype), k, alpha, beta)


@pytest.mark.gpu
@needs_cuda
def test_public_op_passes_the_override_to_cuda() -> None:
    case = add_override(make_beam_case(2, 9, 33, seed=28, with_allowed=True, device="cuda"), 6, seed=48)
    step = beam_step(*beam_inputs(case), k=12, alpha=1.2, beta=2.0, allowed=case["allowed"],
                     override_child=case["override_child"], override_bid=case["override_bid"], backend="cuda")
    want = run(case, 12)
    for name, t in zip(("scores", "parent", "token", "child", "logp"), want):
        assert torch.equal(getattr(step, name), t), name
    assert not torch.equal(step.scores, run(dict(case, override_child=None, override_bid=None), 12)[0])


# --- without a GPU ------------------------------------------------------------------------------


def test_cuda_backend_without_module_says_how_to_rebuild(monkeypatch) -> None:
    monkeypatch.setattr(_native, "cuda_module_or_none", lambda: None)
    case = make_beam_case(1, 2, 7, seed=29)
    with pytest.raises(BackendUnavailableError, match=r"ega_infer\._cuda is not built.*EGA_INFER_CUDA=ON"):
        beam_step_cuda(*beam_inputs(case), k=2, alpha=0.0, log_beta=NEG_INF)


@needs_cuda_module
def test_cuda_workspace_size() -> None:
    module = _native.cuda_module_or_none()
    small = module.beam_step_workspace_bytes(1, 4, 7, 3)
    goal = module.beam_step_workspace_bytes(1, 512, 8192, 512)
    assert 0 < small < goal and goal % 256 == 0
    # per-row lists of k keys dominate: 512 rows * 512 keys * 8 bytes
    assert goal >= 512 * 512 * 8
    with pytest.raises(ValueError, match=r"beam_step\.cuh:\d+: beam_step_rows_kernel.*2\^32"):
        module.beam_step_workspace_bytes(1, 2**20, 2**13, 4)
    with pytest.raises(ValueError, match=">= 1"):
        module.beam_step_workspace_bytes(1, 4, 7, 0)


@needs_cuda_module
def test_cuda_wrapper_rejects_cpu_tensors() -> None:
    case = make_beam_case(1, 2, 7, seed=30)
    with pytest.raises(FieldError, match="CUDA tensor"):
        beam_step_cuda(*beam_inputs(case), k=2, alpha=0.0, log_beta=NEG_INF)


def test_kernel_inputs_are_what_the_kernels_read() -> None:
    case = make_beam_case(2, 3, 7, seed=31, with_allowed=True, strided=True)
    case["row_node"] = case["row_node"].int()
    case["child_ptr"] = case["child_ptr"].int()
    case["child_max_bid"] = case["child_max_bid"].repeat_interleave(2)[::2]  # a strided view
    got = kernel_inputs(*beam_inputs(case), case["allowed"])
    assert got["logits"].data_ptr() == case["logits"].data_ptr()  # rows strided: read in place
    assert got["row_node"].dtype == got["child_ptr"].dtype == torch.int64
    assert got["child_code"].dtype == torch.int32
    for name in ("beam_scores", "row_node", "child_ptr", "child_code", "child_max_bid", "allowed"):
        assert got[name].is_contiguous(), name
        assert torch.equal(got[name].long(), case[name].long()), name
    columns = case["logits"].t().contiguous().t()  # unit row stride: copied
    assert kernel_inputs(columns, *beam_inputs(case)[1:], None)["logits"].stride(1) == 1
    assert got["override_child"] is None and got["override_bid"] is None


def test_kernel_inputs_override() -> None:
    case = make_beam_case(2, 3, 7, seed=31)
    child = torch.tensor([[3, -1, 5, 3], [-1, -1, 0, 2]], dtype=torch.int32)[:, ::2]  # strided int32
    bid = torch.tensor([[0.5, 2.0, 1.0, 9.0], [0.0, 0.0, 3.0, 4.0]])[:, 1::2]
    got = kernel_inputs(*beam_inputs(case), None, override_child=child, override_bid=bid)
    assert got["override_child"].dtype == torch.int64 and got["override_bid"].dtype == torch.float32
    assert got["override_child"].is_contiguous() and got["override_bid"].is_contiguous()
    assert torch.equal(got["override_child"], child.long()) and torch.equal(got["override_bid"], bid)
    empty = kernel_inputs(*beam_inputs(case), None, override_child=child[:, :0], override_bid=bid[:, :0])
    assert empty["override_child"] is None and empty["override_bid"] is None  # E == 0: no override
    for kwargs, name in [(dict(override_child=child), "override_bid"),
                         (dict(override_child=child[:1], override_bid=bid[:1]), "override_child"),
                         (dict(override_child=child.flatten(), override_bid=bid.flatten()), "override_child"),
                         (dict(override_child=child, override_bid=bid[:, :1]), "override_bid")]:
        with pytest.raises(FieldError, match=name):
            kernel_inputs(*beam_inputs(case), None, **kwargs)
    assert math.isinf(log_beta(0.0)) and log_beta(math.e) == 1.0
