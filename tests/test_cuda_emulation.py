"""The CUDA kernels of ``csrc/`` run on the CPU, on every test run, against the PyTorch references.

``tests/cuda_emulation/`` compiles ``csrc/beam_step.cuh`` and ``csrc/decode_attention.cuh`` as host
code (``EGA_INFER_EMULATE_KERNELS``) with the system C++ compiler, no nvcc: every CUDA thread is a
fiber, so ``__syncthreads`` and the warp intrinsics have their real semantics (no lane gets a
result before every lane of the mask has arrived), blocks run one after another (a legal CUDA
schedule, under which the merge tree's tickets work), and the PTX primitives of decode attention
are emulated from the PTX ISA's fragment layouts (``mma.m16n8k16.row.col`` with f32 accumulators,
``ldmatrix.x4`` and ``.x4.trans``, ``cp.async`` that zero-fills for ``src_bytes == 0`` and whose
destination reads as NaN until the thread's ``cp.async.wait_group`` covers it). The kernels go
through the same ``run_beam_step`` / ``run_decode_attention`` as the ``.cu`` launchers (argument
checks, plan, workspace layout, which kernel runs), and the inputs through the wrappers'
``kernel_inputs``. The emulator also stops a launch on a barrier not reached by the whole block
the same number of times, a warp operation not reached by every lane of its mask in the same
order, a shuffle from a lane outside the mask, an ldmatrix / cp.async outside the dynamic shared
memory or misaligned, cp.async copies never waited for, a write past the dynamic shared memory,
the workspace or an output, and a deadlock (``test_emulator_stops_kernel_bugs`` checks that it
does). Every case runs three times: threads and blocks in order with memory the kernels must not
rely on (dynamic shared memory, workspace, outputs) filled with 0xff (NaN), then reversed with it
zeroed, then in a pseudo-random order with random bytes; the three results must be bit-identical
and match the reference. Context padding (positions >= ctx_len) is NaN, since it must never be read.

Cases: the shapes of the GPU tests (``tests/test_beam_step_cuda.py``, the CUDA cases of
``tests/test_decode_attention.py``), with the shared-memory capacities of beam_step shrunk to reach
its fallback paths (rows scored without shared memory, streamed merges, a deep merge tree, the
sort in global memory) on small inputs, plus token weights that would overflow in float32, and
self-tests of the emulator. The stall of a missing barrier before the parent's ticket in the merge
tree (a cross-block hazard) is one of the bugs this cannot see: see below.

Not checked here, because the emulation cannot reproduce it faithfully:
  * the inline PTX text itself and the ``__CUDACC__``-only code (the ``extern __shared__``
    buffer, ``__cvta_generic_to_shared``): its semantics are emulated, the strings run on a GPU only;
  * concurrency across blocks and the memory model: blocks run one at a time and memory is
    sequentially consistent, so a missing ``__threadfence`` or a stale L1 read (what ``__ldcg``
    avoids) in the merge tree cannot show; races *within* a block do show (schedules);
  * float rounding of the device: host libm ``expf`` / ``logf`` / ``exp2f`` instead of CUDA's, no
    FMA contraction, and the emulated mma sums each 16-term dot product in float64 where tensor
    cores accumulate in float32 (results within the tolerances, not bit-identical to a GPU);
  * resource limits: registers, spills, occupancy, the static shared memory size, launch bounds,
    bank conflicts and speed (only the dynamic shared memory bound of 227 KiB is checked);
  * reads past the end of global inputs (writes to outputs and workspace are checked), and reads
    of a static ``__shared__`` variable before the block wrote it (those keep the previous block's
    values; only the dynamic shared memory is refilled with garbage per block).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from cuda_emulation import harness
from cuda_emulation.cases import (
    NEG_INF, add_override, assert_attention_matches, assert_logp_matches_float64, assert_step_matches,
    attention_inputs, beam_inputs, beam_override, log_beta, make_attention_case, make_beam_case,
    token_weight_float64,
)
from ega_infer.exceptions import FieldError
from ega_infer.ops import decode_attention_cuda, trie_log_softmax_torch

REPO = Path(__file__).resolve().parent.parent
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@pytest.fixture(scope="session")
def emu(tmp_path_factory: pytest.TempPathFactory) -> harness.Emulator:
    compiler = harness.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++ or clang++) to build the CUDA emulation")
    cache = REPO / "build" / "cuda_emulation"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError(cache)
    except OSError:
        cache = tmp_path_factory.mktemp("cuda_emulation")
    return harness.Emulator(harness.build(cache, compiler))


SCHEDULES = ((1, 0), (2, 12345))  # reversed, pseudo-random: run after the in-order schedule


def every_schedule(emu: harness.Emulator, call):
    """call() under the in-order schedule, then under the others, which must give bit-identical
    outputs (a race between the threads of a block, such as a stage refilled while another warp
    still reads it, would not); returns the first result."""
    emu.set_schedule(0)
    first, launched = call()
    try:
        for schedule, seed in SCHEDULES:
            emu.set_schedule(schedule, seed)
            again, _ = call()
            for a, b in zip(first if isinstance(first, tuple) else (first,),
                            again if isinstance(again, tuple) else (again,)):
                assert torch.equal(_bits(a), _bits(b)), f"schedule {schedule} changed the result"
    finally:
        emu.set_schedule(0)
    return first, launched


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# --- beam_step ----------------------------------------------------------------------------------


def run_beam(emu, case, k, alpha=1.2, beta=2.0, limits=(0, 0, 0)):
    # the case's override as given (E == 0 included): the kernels see what beam_step_cuda passes
    override = {"override_child": case.get("override_child"), "override_bid": case.get("override_bid")}
    return every_schedule(emu, lambda: emu.beam_step(*beam_inputs(case), k=k, alpha=alpha,
                                                     log_beta=log_beta(beta), allowed=case["allowed"],
                                                     limits=limits, **override))


def check_beam(emu, case, k, alpha=1.2, beta=2.0, limits=(0, 0, 0)):
    got, launched = run_beam(emu, case, k, alpha, beta, limits)
    assert launched.kernels == ("beam_step_rows_kernel", "beam_step_merge_kernel")
    assert_step_matches(got, case, k, alpha, log_beta(beta))
    return got, launched


def _matrix_cases() -> list:
    """test_beam_step_cuda.test_cuda_matches_reference's grid, the dtype cycling through the cases."""
    params = []
    i = 0
    for requests, beams in [(1, 1), (1, 5), (3, 37)]:
        for vocab in [1, 7, 130, 4097]:
            for k in [1, 16, 111]:
                for with_allowed in [False, True]:
                    dtype = DTYPES[i % 3]
                    i += 1
                    params.append(pytest.param(
                        requests, beams, vocab, k, with_allowed, dtype,
                        id=f"N{requests}P{beams}V{vocab}k{k}{'-allowed' if with_allowed else ''}-{DTYPE_IDS[dtype]}"))
    return params


@pytest.mark.parametrize(("requests", "beams", "vocab", "k", "with_allowed", "dtype"), _matrix_cases())
def test_beam_step_matches_reference(emu, requests, beams, vocab, k, with_allowed, dtype) -> None:
    case = make_beam_case(requests, beams, vocab, seed=requests * 1000 + beams * 10 + vocab, dtype=dtype,
                          with_allowed=with_allowed)
    check_beam(emu, case, k)


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (1.0, 0.0), (0.5, 0.25)])
def test_beam_step_bid_weights(emu, alpha: float, beta: float) -> None:
    check_beam(emu, make_beam_case(2, 9, 33, seed=21, with_allowed=True), 12, alpha, beta)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (1e30, 2.0), (3.0, 1e300), (1e30, 1e300), (1e36, 0.0)])
def test_beam_step_huge_token_weights(emu, alpha: float, beta: float) -> None:
    # bid ** alpha + beta overflows float32 here (inf - inf = NaN in the old formula).
    case = make_beam_case(2, 9, 33, seed=32, with_allowed=True, bids=[0.0, 0.5, 1.0, 1e33, 3e38])
    got, _ = check_beam(emu, case, 12, alpha, beta)
    assert_logp_matches_float64(got, case, alpha, log_beta(beta))


@pytest.mark.parametrize(("a", "beta"), [(0.0, 0.0), (0.0, 2.0), (NEG_INF, 0.0), (NEG_INF, 3.5), (-1e30, 1e300),
                                         (7.6e31, 2.0), (88.0, 1e-30), (-3.0, 1.0)])
def test_token_weight(emu, a: float, beta: float) -> None:
    got = emu.token_weight(a, log_beta(beta))
    lb = log_beta(beta)
    want = NEG_INF if a == lb == NEG_INF else max(a, lb) + math.log1p(math.exp(-abs(a - lb)))
    assert not math.isnan(got)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    bid = torch.tensor([0.0, 1e33, 3e38])
    assert not torch.isnan(token_weight_float64(bid, 1e30, lb)).any()


@pytest.mark.parametrize("with_allowed", [False, True])
@pytest.mark.parametrize("k", [3, 40])
def test_beam_step_exact_ties_follow_the_stable_sort(emu, with_allowed: bool, k: int) -> None:
    case = make_beam_case(2, 8, 40, seed=22, ties=True, with_allowed=with_allowed)
    (scores, *_), _ = check_beam(emu, case, k, 0.0, 0.0)
    alive = scores[:, 1:] > NEG_INF
    assert (scores[:, 1:] == scores[:, :-1])[alive].any(), "the case has no exact tie"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_beam_step_strided_logits(emu, dtype) -> None:
    case = make_beam_case(3, 11, 130, seed=23, dtype=dtype, with_allowed=True, strided=True)
    assert not case["logits"].is_contiguous()
    check_beam(emu, case, 20)


@pytest.mark.parametrize(("beams", "vocab", "k"), [(1, 5, 9), (3, 4, 100), (2, 1, 3)])
def test_beam_step_k_beyond_the_candidates(emu, beams: int, vocab: int, k: int) -> None:
    check_beam(emu, make_beam_case(2, beams, vocab, seed=24), k)


def test_beam_step_all_beams_dead(emu) -> None:
    case = make_beam_case(2, 6, 17, seed=25)
    case["row_node"].fill_(-1)
    case["beam_scores"].fill_(NEG_INF)
    (scores, parent, token, child, logp), _ = run_beam(emu, case, 4)
    assert torch.isneginf(scores).all() and torch.isneginf(logp).all()
    assert (parent == 0).all() and (token == 0).all() and (child == -1).all()


# The paths test_beam_step_cuda.test_cuda_large_shapes reaches with the launcher's capacities,
# reached here on small inputs by shrinking them: (row_smem_children, merge_smem_keys, sort_smem_keys).
PATH_CASES = [
    # rows with more children than shared memory holds: scored and selected from global memory
    pytest.param(2, 9, 300, 20, None, (64, 0, 0), id="rows-streamed"),
    # k > keys one merge node stages: level 0 of one row per node, lists streamed on every pass
    pytest.param(2, 7, 130, 100, None, (0, 64, 0), id="merge-streamed"),
    # a deep merge tree (fan-in 2 above level 0) and the final sort in global memory
    pytest.param(2, 37, 33, 90, 5, (0, 256, 32), id="deep-tree-global-sort"),
    pytest.param(1, 40, 300, 300, None, (0, 0, 64), id="global-sort"),
    # everything shrunk at once
    pytest.param(3, 21, 130, 111, None, (16, 128, 64), id="all-limits"),
    # the launcher's own capacities: rows of > 16384 children, and k > 2048 (global sort)
    pytest.param(1, 3, 20000, 32, None, (0, 0, 0), id="default-rows-over-16384"),
    pytest.param(1, 40, 300, 2500, None, (0, 0, 0), id="default-k-over-2048"),
    # k = 1 over many beams, and a level of the goal shape's kind (sparse children), scaled down
    pytest.param(1, 300, 64, 1, None, (0, 0, 0), id="k1-300-beams"),
    pytest.param(1, 128, 512, 128, 16, (0, 0, 0), id="goal-like-sparse"),
]


@pytest.mark.parametrize(("requests", "beams", "vocab", "k", "children", "limits"), PATH_CASES)
def test_beam_step_paths(emu, requests, beams, vocab, k, children, limits) -> None:
    case = make_beam_case(requests, beams, vocab, seed=26, dtype=torch.bfloat16, children=children)
    _, launched = check_beam(emu, case, k, limits=limits)
    row_smem = limits[0] or 16384
    merge_smem = limits[1] or 8192
    assert f"smem={min(vocab, row_smem) * 4}" in launched.of("beam_step_rows_kernel")
    assert f"smem={merge_smem * 8}" in launched.of("beam_step_merge_kernel")
    longest = int((case["child_ptr"][1:] - case["child_ptr"][:-1]).max())
    if limits[0]:
        assert longest > row_smem, "the case never leaves shared memory"


# --- per-request bid overrides

# (requests, beams, vocab, k, entries, alpha, beta, logits dtype, allowed, override_child dtype)
OVERRIDE_CASES = [
    pytest.param(1, 1, 1, 1, 1, 1.2, 2.0, torch.float32, False, torch.int64, id="N1P1V1k1E1"),
    pytest.param(1, 5, 7, 16, 3, 1.0, 0.0, torch.float32, False, torch.int32, id="N1P5V7k16E3-int32-beta0"),
    pytest.param(2, 9, 33, 12, 5, 1.0, 0.0, torch.float32, True, torch.int64, id="N2P9V33k12E5-allowed-beta0"),
    pytest.param(3, 37, 130, 111, 17, 1.2, 2.0, torch.bfloat16, True, torch.int32, id="N3P37V130k111E17-bf16"),
    pytest.param(2, 7, 131, 1, 2, 0.5, 0.25, torch.float16, False, torch.int64, id="N2P7V131k1E2-fp16"),
    pytest.param(3, 37, 4097, 16, 17, 1.2, 2.0, torch.float32, False, torch.int64, id="N3P37V4097k16E17"),
]


def _override_changes_the_step(case, alpha, beta) -> bool:
    """Whether the override moves any value of the trie log-softmax (else the test proves nothing)."""
    args = (case["logits"], case["row_node"], case["child_ptr"], case["child_code"], case["child_max_bid"])
    kw = dict(alpha=alpha, log_beta=log_beta(beta), allowed=case["allowed"])
    plain = trie_log_softmax_torch(*args, **kw)
    moved = trie_log_softmax_torch(*args, **kw, **beam_override(case))
    return not torch.equal(plain, moved)


@pytest.mark.parametrize(("requests", "beams", "vocab", "k", "entries", "alpha", "beta", "dtype", "with_allowed",
                          "index_dtype"), OVERRIDE_CASES)
def test_beam_step_override_matches_reference(emu, requests, beams, vocab, k, entries, alpha, beta, dtype,
                                              with_allowed, index_dtype) -> None:
    case = make_beam_case(requests, beams, vocab, seed=40 + vocab, dtype=dtype, with_allowed=with_allowed)
    case = add_override(case, entries, seed=41 + entries, dtype=index_dtype)
    if vocab > 1:
        assert _override_changes_the_step(case, alpha, beta)
    check_beam(emu, case, k, alpha, beta)


@pytest.mark.parametrize(("requests", "beams", "vocab", "k", "children", "limits"), [
    pytest.param(2, 9, 300, 20, None, (64, 0, 0), id="rows-streamed"),
    pytest.param(3, 21, 130, 111, None, (16, 128, 64), id="all-limits"),
])
def test_beam_step_override_paths(emu, requests, beams, vocab, k, children, limits) -> None:
    # Streamed rows recompute v on every select pass, and the root decodes logp again: all three
    # must weigh a child with the same (overridden) bid, or logp and the score disagree.
    case = make_beam_case(requests, beams, vocab, seed=42, dtype=torch.bfloat16, children=children)
    case = add_override(case, 9, seed=43)
    assert _override_changes_the_step(case, 1.2, 2.0)
    check_beam(emu, case, k, limits=limits)
    longest = int((case["child_ptr"][1:] - case["child_ptr"][:-1]).max())
    assert longest > limits[0], "the case never leaves shared memory"


def test_beam_step_override_min_of_duplicates_and_pads(emu) -> None:
    # A child named twice (the smaller bid counts, whichever entry comes first) among -1 pads is
    # the same step as that child named once with the smaller bid.
    case = make_beam_case(2, 4, 9, seed=44)
    j = int(case["child_ptr"][0]) + 3  # a child of node 0, which row 0 sits at
    last = int(case["child_ptr"][-1]) - 1
    child = torch.tensor([[-1, j, -1, j, last], [j, -1, -1, -1, -1]])
    bid = torch.tensor([[9.0, 50.0, 1.0, 0.3, 0.0], [0.0, 7.0, 7.0, 7.0, 7.0]])
    once = dict(case, override_child=torch.tensor([[j, last], [j, -1]]),
                override_bid=torch.tensor([[0.3, 0.0], [0.0, 0.0]]))
    want = run_beam(emu, once, 6, 1.0, 0.0)[0]
    plain = run_beam(emu, case, 6, 1.0, 0.0)[0]
    assert not torch.equal(want[4], plain[4]), "the override changes nothing"
    swapped = [0, 3, 2, 1, 4]  # the 0.3 entry of request 0 before the 50.0 one
    for c, b in ((child, bid), (child[:, swapped], bid[:, swapped])):
        got = check_beam(emu, dict(case, override_child=c, override_bid=b), 6, 1.0, 0.0)[0]
        for a, w in zip(got, want):
            assert torch.equal(a, w)


def test_beam_step_override_no_entries_or_alpha_zero_is_no_override(emu) -> None:
    case = make_beam_case(2, 9, 33, seed=45, with_allowed=True)
    plain = run_beam(emu, case, 12)[0]
    empty = dict(case, override_child=torch.zeros(2, 0, dtype=torch.int32), override_bid=torch.zeros(2, 0))
    for a, b in zip(plain, run_beam(emu, empty, 12)[0]):
        assert torch.equal(a, b)
    named = add_override(case, 6, seed=46)
    for a, b in zip(run_beam(emu, case, 12, 0.0, 2.0)[0], run_beam(emu, named, 12, 0.0, 2.0)[0]):
        assert torch.equal(a, b)  # alpha == 0: bids do not weigh, so neither do their overrides


def test_beam_step_override_bad_shapes_are_errors(emu) -> None:
    case = make_beam_case(2, 3, 7, seed=47)
    child, bid = torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4)
    for kwargs, name in [(dict(override_child=child), "override_bid"), (dict(override_bid=bid), "override_child"),
                         (dict(override_child=child[:1], override_bid=bid[:1]), "override_child"),
                         (dict(override_child=child, override_bid=bid[:, :3]), "override_bid")]:
        with pytest.raises(FieldError, match=name):
            emu.beam_step(*beam_inputs(case), k=2, alpha=1.0, log_beta=0.0, **kwargs)


def test_beam_step_workspace_layout(emu) -> None:
    small = emu.beam_step_workspace_bytes(1, 4, 7, 3)
    goal = emu.beam_step_workspace_bytes(1, 512, 8192, 512)
    assert 0 < small < goal and goal % 256 == 0 and goal >= 512 * 512 * 8
    with pytest.raises(ValueError, match=r"beam_step\.cuh:\d+: beam_step_rows_kernel/beam_step_merge_kernel: "
                                         r"beams \* vocab = .* must be < 2\^32"):
        emu.beam_step_workspace_bytes(1, 2**20, 2**13, 4)
    with pytest.raises(ValueError, match=">= 1"):
        emu.beam_step_workspace_bytes(1, 4, 7, 0)


# --- decode_attention ---------------------------------------------------------------------------

# (N, P, Hq, Hkv, S, T, D, ctx_len): tests/test_decode_attention.py's CASES
ATTENTION_CASES = [
    (1, 1, 1, 1, 1, 0, 16, [1]),
    (1, 1, 1, 1, 1, 0, 16, [0]),  # no key at all: zeros
    (1, 3, 4, 2, 7, 1, 32, [7]),
    (2, 3, 4, 2, 7, 1, 32, [7, 0]),  # request 1 sees its own position only
    (2, 5, 4, 1, 33, 3, 16, [33, 17]),
    (2, 1, 4, 2, 33, 0, 16, [0, 32]),
    (1, 5, 4, 1, 33, 3, 24, [20]),  # D not a multiple of 16: the scalar kernel
    (2, 3, 1, 1, 7, 3, 24, [3, 7]),
    (2, 5, 6, 2, 33, 1, 16, [33, 9]),  # group of 3 query heads
    (1, 2, 2, 1, 0, 2, 16, [0]),  # an empty context tensor (S = 0)
]


def _case_id(c) -> str:
    return f"N{c[0]}P{c[1]}H{c[2]}-{c[3]}S{c[4]}T{c[5]}D{c[6]}L{'-'.join(map(str, c[7]))}"


def expected_kernel(dtype, d: int) -> str:
    if dtype != torch.float32 and d % 16 == 0 and d <= 128:
        return "decode_attention_mma_kernel"
    return "decode_attention_scalar_kernel"


def nan_padded(t: torch.Tensor, ctx_len: torch.Tensor) -> torch.Tensor:
    """A copy of a context tensor with t's sizes and strides whose padding (positions >= ctx_len)
    and storage gaps between the strided elements are NaN: what the kernels must never read."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0
    out = torch.full((span,), float("nan"), dtype=t.dtype).as_strided(t.shape, t.stride())
    out.copy_(t)
    for n, length in enumerate(ctx_len.tolist()):
        out[n, :, max(0, min(length, t.shape[2])):] = float("nan")
    return out


def run_attention(emu, case, **kwargs):
    """The emulated kernels on ``case``, the context padding NaN (``case`` itself unchanged)."""
    padded = dict(case, ctx_k=nan_padded(case["ctx_k"], case["ctx_len"]),
                  ctx_v=nan_padded(case["ctx_v"], case["ctx_len"]))
    return every_schedule(emu, lambda: emu.decode_attention(*attention_inputs(padded), **kwargs))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case_args", ATTENTION_CASES, ids=_case_id)
def test_decode_attention_matches_reference(emu, case_args, dtype) -> None:
    case = make_attention_case(*case_args, dtype=dtype)
    out, launched = run_attention(emu, case)
    assert launched.kernels == (expected_kernel(dtype, case_args[6]),)
    assert_attention_matches(out, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(("case_args", "num_splits"), [
    ((2, 5, 4, 1, 200, 3, 16, [200, 17]), 4),  # request 1: splits 2 and 3 are empty
    ((2, 20, 4, 1, 130, 1, 64, [130, 65]), 2),  # 80 rows: two row blocks, split
    ((1, 17, 8, 2, 40, 3, 128, [40]), 1),  # 68 rows, D 128
    ((1, 3, 4, 4, 20, 1, 80, [20]), 1),  # D 80: 5 of the 8 head-dim tiles
    ((1, 2, 2, 1, 12, 2, 200, [12]), 1),  # D 200: the scalar kernel's widest accumulator
    ((2, 1, 2, 1, 130, 0, 16, [0, 100]), 2),  # no key at all for request 0
    ((1, 3, 4, 2, 300, 2, 64, [300]), 1),  # 5 key tiles: both stages refilled
    ((1, 40, 6, 2, 100, 2, 32, [100]), 2),  # groups of 3 heads over two row blocks, split
], ids=lambda v: _case_id(v) if isinstance(v, tuple) else f"splits{v}")
def test_decode_attention_split_k_row_blocks_head_dims(emu, case_args, num_splits, dtype) -> None:
    case = make_attention_case(*case_args, dtype=dtype)
    out, launched = run_attention(emu, case, num_splits=num_splits)
    main = expected_kernel(dtype, case_args[6])
    assert launched.kernels == ((main, "decode_attention_combine_kernel") if num_splits > 1 else (main,))
    n, p, hq, hkv = case_args[:4]
    programs = n * hkv * math.ceil(p * (hq // hkv) / 64)  # (request, kv head, 64-row block) per CTA
    assert f"grid=({programs},{num_splits})" in launched.of(main)
    assert_attention_matches(out, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(("n", "p", "s", "ctx_len"), [(4, 4, 2048, [2048, 0, 77, 1024]), (2, 64, 192, [192, 150])],
                         ids=["N4P4S2048-split-chosen", "N2P64S192-row-blocks"])
def test_decode_attention_model_shapes(emu, n, p, s, ctx_len, dtype) -> None:
    # D = 128, 16 / 4 heads: the 8-tile tensor-core kernel; at 4 beams 16 CTAs, so the split
    # heuristic (132 SMs) cuts the context and the merge kernel runs.
    case = make_attention_case(n, p, 16, 4, s, 3, 128, ctx_len, dtype=dtype)
    out, launched = run_attention(emu, case)
    if p == 4:
        assert launched.kernels[-1] == "decode_attention_combine_kernel"
    assert launched.kernels[0] == expected_kernel(dtype, 128)
    assert_attention_matches(out, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("pad", [3, 8])  # 3: odd strides (scalar kernel or a copy); 8: in place
def test_decode_attention_strided_views_and_scale(emu, pad, dtype) -> None:
    n, p, hq, hkv, s, t, d = 2, 3, 4, 2, 70, 2, 64
    gen = torch.Generator().manual_seed(pad)
    case = {
        "q": torch.randn(n, hq, p, d, generator=gen).to(dtype).transpose(1, 2),
        "ctx_k": torch.randn(n, hkv, s + 6, d, generator=gen).to(dtype)[:, :, :s],
        "ctx_v": torch.randn(n, s, hkv, d + pad, generator=gen).to(dtype)[..., :d].transpose(1, 2),
        "ctx_len": torch.tensor([70, 41]),  # int64
        "own_k": torch.randn(n, p, t, hkv, d, generator=gen).to(dtype).transpose(2, 3),
        "own_v": torch.randn(n, p, t, hkv, d, generator=gen).to(dtype).transpose(2, 3),
    }
    out, launched = run_attention(emu, case, scale=0.7)
    assert launched.kernels == (expected_kernel(dtype, d),)
    assert_attention_matches(out, case, scale=0.7)


def test_decode_attention_ctx_len_beyond_s_and_negative(emu) -> None:
    case = make_attention_case(3, 2, 2, 1, 7, 1, 16, [40, 7, -5], dtype=torch.bfloat16)
    out, _ = run_attention(emu, case)
    case["ctx_len"] = torch.tensor([7, 7, 0], dtype=torch.int32)
    assert_attention_matches(out, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_decode_attention_without_own_positions(emu, dtype) -> None:
    case = make_attention_case(2, 3, 4, 2, 33, 0, 32, [33, 0], dtype=dtype, own=False)
    out, _ = run_attention(emu, case)
    assert_attention_matches(out, case)
    assert torch.equal(out[1].float(), torch.zeros_like(out[1].float()))


def test_decode_attention_limits_match_the_wrapper(emu) -> None:
    assert emu.decode_attention_limits() == (decode_attention_cuda.MAX_HEAD_DIM,
                                             decode_attention_cuda.MMA_MAX_HEAD_DIM)
    case = make_attention_case(1, 1, 1, 1, 2, 0, 264, [2])
    with pytest.raises(ValueError, match=r"decode_attention\.cuh:\d+: decode_attention: head_dim = 264"):
        run_attention(emu, case)


# --- the emulation's own parts ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_16bit_conversions_round_like_torch(emu, dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([
        torch.randn(200_000, generator=gen) * 10.0 ** torch.randint(-9, 6, (200_000,), generator=gen),
        torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
                      2.0**-14, float("inf"), float("-inf"), 1e-40, 3e38]),
    ])
    bits = emu.to_16bit(x, dtype)
    assert torch.equal(bits, x.to(dtype).view(torch.int16))
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    finite = torch.isfinite(every.view(dtype))
    back = emu.from_16bit(every, dtype)
    assert torch.equal(back[finite], every.view(dtype).float()[finite])
    assert torch.isnan(back[torch.isnan(every.view(dtype))]).all()


def test_intrinsics_give_their_documented_results(emu) -> None:
    emu.selftest(0)


@pytest.mark.parametrize(("which", "message"), [
    (1, r"__syncthreads after \d+ threads of the block exited|exited while \d+ threads .* wait at __syncthreads"),
    (2, r"divergent warp: this lane calls __ballot_sync .* while other lanes wait in __shfl_xor_sync"),
    (3, r"exited while lanes of its warp wait|lane 7 of the mask has exited"),
    (4, r"a write past the 64 bytes of dynamic shared memory"),
], ids=["divergent-barrier", "divergent-warp", "exited-lane", "smem-overflow"])
def test_emulator_stops_kernel_bugs(emu, which: int, message: str) -> None:
    with pytest.raises(harness.EmulationError, match=message):
        emu.selftest(which)

