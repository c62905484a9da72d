"""trie_log_softmax: the Triton and CUDA backends against the PyTorch reference.

Tries come from ``ega_infer._C.build_trie`` (depth-1 nodes and their depth-2 children), with one
node holding every code, one holding a single code, dead rows (-1), rows whose children are all
disallowed, and zero bids (weight -inf when alpha > 0 and beta == 0).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from ega_infer import _C, _native
from ega_infer.exceptions import BackendUnavailableError
from ega_infer.ops.trie_log_softmax import trie_log_softmax, trie_log_softmax_torch

ROWS = [1, 5, 37]
VOCABS = [1, 7, 33, 130]
ALPHA_BETA = [(0.0, 0.0), (1.2, 2.0), (1.0, 0.0)]
NEG_INF = float("-inf")

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _native.cuda_module_or_none() is not None),
    reason="needs a CUDA GPU and the ega_infer._cuda module",
)


def make_case(rows: int, vocab: int, *, seed: int, with_allowed: bool, device: torch.device,
              dtype: torch.dtype = torch.float32, strided: bool = False) -> dict:
    """Inputs of one call: a random two-level trie, row nodes, logits and an optional mask."""
    rng = np.random.default_rng(seed)
    prefixes = 6
    pairs = [(0, c) for c in range(vocab)]  # node 0: every code is a child
    pairs.append((1, int(rng.integers(vocab))))  # node 1: a single child
    pairs += [(int(rng.integers(2, prefixes)), int(rng.integers(vocab))) for _ in range(3 * vocab)]
    codes = np.array(pairs, dtype=np.int32)
    is_ad = rng.random(len(codes)) < 0.5
    bids = rng.choice(np.array([0.0, 0.5, 1.0, 2.5, 4.0], dtype=np.float32), size=len(codes))
    trie = _C.build_trie(codes, is_ad, bids.astype(np.float32), [prefixes, vocab])
    depth1 = int(trie["level_sizes"][1])

    row_node = rng.integers(-1, depth1, size=rows)
    row_node[: min(rows, 3)] = [0, 1, -1][: min(rows, 3)]  # all children, one child, dead row
    if strided:
        wide = torch.randn(rows, vocab + 7, dtype=torch.float32) * 3
        logits = wide.to(dtype=dtype, device=device)[:, 3 : 3 + vocab]
    else:
        logits = (torch.randn(rows, vocab) * 3).to(dtype=dtype, device=device)
    allowed = None
    if with_allowed:
        allowed = torch.from_numpy(rng.random((rows, vocab)) < 0.7)
        if rows > 3:
            allowed[3] = False  # every child of row 3 disallowed
        allowed = allowed.to(device)
    return {
        "logits": logits,
        "row_node": torch.from_numpy(row_node).to(device),
        "child_ptr": torch.from_numpy(trie["child_ptr"][1]).to(device),
        "child_code": torch.from_numpy(trie["node_code"][1]).to(device),
        "child_max_bid": torch.from_numpy(trie["node_max_bid"][1]).to(device),
        "allowed": allowed,
    }


def assert_matches(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    got, want = got.cpu(), want.cpu()
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), "-inf positions differ"
    finite = torch.isfinite(want)
    assert torch.isfinite(got[finite]).all()
    torch.testing.assert_close(got[finite], want[finite], atol=atol, rtol=1e-5)


def run_backend(case: dict, alpha: float, beta: float, backend: str) -> torch.Tensor:
    return trie_log_softmax(
        case["logits"], case["row_node"], case["child_ptr"], case["child_code"],
        case["child_max_bid"], alpha=alpha, beta=beta, allowed=case["allowed"], backend=backend,
    )


def reference(case: dict, alpha: float, beta: float) -> torch.Tensor:
    return trie_log_softmax_torch(
        case["logits"], case["row_node"], case["child_ptr"], case["child_code"],
        case["child_max_bid"], alpha=alpha, beta=beta, allowed=case["allowed"],
    )


# --- the PyTorch reference itself -------------------------------------------------------------


def naive_trie_log_softmax(logits, row_node, child_ptr, child_code, child_max_bid, alpha, beta,
                           allowed=None) -> torch.Tensor:
    rows, vocab = logits.shape
    out = torch.full((rows, vocab), NEG_INF)
    for r in range(rows):
        node = int(row_node[r])
        if node < 0:
            continue
        scored = []
        for j in range(int(child_ptr[node]), int(child_ptr[node + 1])):
            code = int(child_code[j])
            power = 1.0 if alpha == 0 else float(child_max_bid[j]) ** alpha
            weight = math.log(power + beta) if power + beta > 0 else NEG_INF
            if weight == NEG_INF or (allowed is not None and not bool(allowed[r, code])):
                continue
            scored.append((code, float(logits[r, code]) + weight))
        if scored:
            top = max(v for _, v in scored)
            lse = top + math.log(sum(math.exp(v - top) for _, v in scored))
            for code, v in scored:
                out[r, code] = v - lse
    return out


@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA + [(0.5, 0.25)])
@pytest.mark.parametrize("with_allowed", [False, True])
def test_torch_reference_matches_naive_loop(alpha: float, beta: float, with_allowed: bool) -> None:
    logits = torch.randn(6, 7)
    child_ptr = torch.tensor([0, 3, 4, 4, 6])  # node 2 has no child
    child_code = torch.tensor([0, 2, 5, 4, 1, 6], dtype=torch.int32)
    child_max_bid = torch.tensor([1.0, 0.0, 3.0, 2.0, 0.0, 0.5])
    row_node = torch.tensor([0, 1, -1, 2, 3, 0])
    allowed = torch.rand(6, 7) < 0.6 if with_allowed else None
    got = trie_log_softmax_torch(logits, row_node, child_ptr, child_code, child_max_bid,
                                 alpha=alpha, beta=beta, allowed=allowed)
    want = naive_trie_log_softmax(logits, row_node, child_ptr, child_code, child_max_bid,
                                  alpha, beta, allowed)
    assert_matches(got, want)


def test_torch_reference_plain_constrained_decoding() -> None:
    # alpha = beta = 0: every weight is log(0**0 + 0) = 0, a log-softmax over the children alone.
    logits = torch.randn(1, 9)
    child_code = torch.tensor([1, 4, 8], dtype=torch.int32)
    got = trie_log_softmax_torch(logits, torch.tensor([0]), torch.tensor([0, 3]), child_code,
                                 torch.zeros(3))
    torch.testing.assert_close(got[0, child_code.long()], torch.log_softmax(logits[0, [1, 4, 8]], 0))
    assert torch.isneginf(got[0, [0, 2, 3, 5, 6, 7]]).all()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_auto_backend_on_cpu_is_the_reference(rows: int, vocab: int, device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("checks the CPU dispatch only")
    case = make_case(rows, vocab, seed=rows * 1000 + vocab, with_allowed=True, device=device)
    assert torch.equal(run_backend(case, 1.2, 2.0, "auto"), reference(case, 1.2, 2.0))


# --- Triton -----------------------------------------------------------------------------------


@pytest.fixture
def triton_device(device: torch.device) -> torch.device:
    pytest.importorskip("triton", reason="the triton package is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        if torch.cuda.is_available():
            return torch.device("cuda")
        pytest.skip("Triton needs a CUDA GPU, or TRITON_INTERPRET=1 to run on CPU tensors")
    return device


@pytest.mark.interpreter
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize("with_allowed", [False, True])
def test_triton_matches_reference(rows, vocab, alpha, beta, with_allowed, triton_device) -> None:
    case = make_case(rows, vocab, seed=rows * 1000 + vocab, with_allowed=with_allowed,
                     device=triton_device)
    assert_matches(run_backend(case, alpha, beta, "triton"), reference(case, alpha, beta))


@pytest.mark.interpreter
@pytest.mark.parametrize("with_allowed", [False, True])
def test_triton_strided_logits(with_allowed: bool, triton_device: torch.device) -> None:
    case = make_case(5, 33, seed=11, with_allowed=with_allowed, device=triton_device, strided=True)
    assert not case["logits"].is_contiguous()
    assert_matches(run_backend(case, 1.2, 2.0, "triton"), reference(case, 1.2, 2.0))


@pytest.mark.interpreter
def test_triton_int32_indices(triton_device: torch.device) -> None:
    case = make_case(5, 33, seed=12, with_allowed=True, device=triton_device)
    want = reference(case, 1.0, 0.0)
    case["row_node"] = case["row_node"].int()
    case["child_ptr"] = case["child_ptr"].int()
    assert_matches(run_backend(case, 1.0, 0.0, "triton"), want)


# --- CUDA C++ ---------------------------------------------------------------------------------

CUDA_DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize("with_allowed", [False, True])
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_matches_reference(rows, vocab, alpha, beta, with_allowed, dtype) -> None:
    case = make_case(rows, vocab, seed=rows * 1000 + vocab, with_allowed=with_allowed,
                     device=torch.device("cuda"), dtype=dtype)
    assert_matches(run_backend(case, alpha, beta, "cuda"), reference(case, alpha, beta))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_strided_logits(dtype: torch.dtype) -> None:
    case = make_case(37, 130, seed=13, with_allowed=True, device=torch.device("cuda"), dtype=dtype,
                     strided=True)
    assert not case["logits"].is_contiguous()
    assert_matches(run_backend(case, 1.2, 2.0, "cuda"), reference(case, 1.2, 2.0))


@pytest.mark.gpu
@needs_cuda
def test_cuda_large_vocab_full_node() -> None:
    # More children than threads per block, on a non-default stream.
    case = make_case(4, 5000, seed=14, with_allowed=False, device=torch.device("cuda"))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = run_backend(case, 1.2, 2.0, "cuda")
    stream.synchronize()
    assert_matches(got, reference(case, 1.2, 2.0))


@pytest.mark.gpu
@needs_cuda
def test_cuda_native_info_lists_archs() -> None:
    info = _native.native_info()
    assert info["cuda_module"] and info["cuda_archs"]
    major, minor = torch.cuda.get_device_capability()
    assert any(int(arch[3:]) <= major * 10 + minor for arch in info["cuda_archs"])


def test_cuda_backend_without_module_says_how_to_rebuild(monkeypatch) -> None:
    monkeypatch.setattr(_native, "cuda_module_or_none", lambda: None)
    case = make_case(2, 7, seed=15, with_allowed=False, device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match=r"ega_infer\._cuda is not built.*EGA_INFER_CUDA=ON"):
        _native.trie_log_softmax_cuda(
            case["logits"], case["row_node"], case["child_ptr"], case["child_code"],
            case["child_max_bid"],
        )
    with pytest.raises(BackendUnavailableError, match="cuda"):
        run_backend(case, 0.0, 0.0, "cuda")


def test_native_info_without_gpu_is_well_formed() -> None:
    info = _native.native_info()
    assert info["c_module"] is True
    assert set(info) >= {"c_module", "cuda_module", "cuda_archs", "cuda_runtime_version"}
    if info["cuda_module"]:
        archs = [int(arch[3:]) for arch in info["cuda_archs"]]
        assert archs == sorted(archs) and info["cuda_runtime_version"] > 0
