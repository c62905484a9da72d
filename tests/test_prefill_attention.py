"""prefill_attention: the Triton backend against the PyTorch reference, the reference against a
naive loop and SDPA, the query-block map, input checks and backend dispatch.

Sequence lengths cover a single token, zero-length sequences (first, middle, last), lengths that
are whole blocks and ragged tails (the interpreter's blocks are 16 x 16; one case uses 32 x 16 so
the causal diagonal spans two key blocks), grouped-query heads with a group size that is not a
power of two, padded head dims (24 -> 32), and strided views.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from ega_infer.exceptions import BackendUnavailableError, FieldError
from ega_infer.ops import prefill_attention, prefill_attention_torch

# (sequence lengths, Hq, Hkv, D)
CASES = [
    ([1], 1, 1, 16),
    ([5, 0, 17], 4, 2, 32),
    ([33, 2], 2, 1, 24),
    ([0, 16, 3, 0], 3, 1, 16),
]
CASE_IDS = [f"L{'-'.join(map(str, c[0]))}H{c[1]}/{c[2]}D{c[3]}" for c in CASES]

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16"),
]


def make_case(lengths, hq, hkv, d, *, device, dtype=torch.float32) -> dict:
    total = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(),
                      dtype=torch.int32)
    return {
        "q": torch.randn(total, hq, d).to(device=device, dtype=dtype),
        "k": torch.randn(total, hkv, d).to(device=device, dtype=dtype),
        "v": torch.randn(total, hkv, d).to(device=device, dtype=dtype),
        "cu_seqlens": cu.to(device),
    }


def call(case: dict, causal: bool, **kwargs) -> torch.Tensor:
    return prefill_attention(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=causal,
                             **kwargs)


def reference_fp32(case: dict, causal: bool, scale: float | None = None) -> torch.Tensor:
    return prefill_attention_torch(case["q"].float(), case["k"].float(), case["v"].float(),
                                   case["cu_seqlens"], causal=causal, scale=scale)


def assert_matches(got: torch.Tensor, case: dict, causal: bool, atol: float, rtol: float,
                   scale: float | None = None) -> None:
    assert got.dtype == case["q"].dtype and got.shape == case["q"].shape
    torch.testing.assert_close(got.float().cpu(), reference_fp32(case, causal, scale).cpu(),
                               atol=atol, rtol=rtol)


# --- the PyTorch reference itself -------------------------------------------------------------


def naive_prefill_attention(q, k, v, cu_seqlens, causal, scale) -> torch.Tensor:
    """Per (token, head): the keys of its sequence, float64 softmax, weighted sum of values."""
    total, hq, d = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(total, hq, d, dtype=torch.float64)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        for i in range(start, end):
            keys = range(start, i + 1) if causal else range(start, end)
            for h in range(hq):
                g = h // group
                logits = [scale * float((q[i, h].double() * k[j, g].double()).sum()) for j in keys]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total_w = sum(weights)
                out[i, h] = sum((w / total_w) * v[j, g].double() for w, j in zip(weights, keys))
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("index", [1, 3])
def test_torch_reference_matches_naive_loop(index: int, causal: bool) -> None:
    case = make_case(*CASES[index], device=torch.device("cpu"))
    d = case["q"].shape[-1]
    want = naive_prefill_attention(case["q"], case["k"], case["v"], case["cu_seqlens"], causal,
                                   1.0 / math.sqrt(d))
    got = prefill_attention_torch(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=causal)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_torch_reference_matches_sdpa_per_sequence(causal: bool) -> None:
    case = make_case([6, 9], 4, 2, 16, device=torch.device("cpu"))
    got = prefill_attention_torch(case["q"], case["k"], case["v"], case["cu_seqlens"],
                                  causal=causal, scale=0.4)
    for start, end in ((0, 6), (6, 15)):
        want = F.scaled_dot_product_attention(
            case["q"][start:end].transpose(0, 1), case["k"][start:end].transpose(0, 1),
            case["v"][start:end].transpose(0, 1), is_causal=causal, scale=0.4, enable_gqa=True,
        ).transpose(0, 1)
        torch.testing.assert_close(got[start:end], want, atol=1e-5, rtol=1e-5)


def test_sequences_do_not_see_each_other() -> None:
    case = make_case([4, 5], 2, 2, 16, device=torch.device("cpu"))
    before = call(case, causal=False, backend="torch")
    case["k"][4:] += 10.0  # change only the second sequence's keys
    after = call(case, causal=False, backend="torch")
    assert torch.equal(before[:4], after[:4]) and not torch.equal(before[4:], after[4:])


@pytest.mark.parametrize("causal", [False, True])
def test_auto_backend_on_cpu_is_the_reference(causal: bool, device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("checks the CPU dispatch only")
    case = make_case(*CASES[1], device=device)
    want = prefill_attention_torch(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=causal)
    assert torch.equal(call(case, causal, backend="auto"), want)


def test_empty_batch() -> None:
    case = make_case([], 2, 1, 16, device=torch.device("cpu"))
    assert call(case, causal=True, backend="torch").shape == (0, 2, 16)
    case = make_case([0, 0], 2, 1, 16, device=torch.device("cpu"))
    assert call(case, causal=False, backend="torch").shape == (0, 2, 16)


# --- input checks -----------------------------------------------------------------------------


def _bad_inputs() -> list:
    def mk(**change):
        case = make_case([3, 4], 4, 2, 16, device=torch.device("cpu"))
        case.update(change)
        return case

    return [
        pytest.param(mk(q=torch.randn(7, 4)), "q", id="q-rank"),
        pytest.param(mk(q=torch.randn(7, 4, 16).double()), "q", id="q-dtype"),
        pytest.param(mk(k=torch.randn(6, 2, 16)), "k", id="k-tokens"),
        pytest.param(mk(k=torch.randn(7, 3, 16), v=torch.randn(7, 3, 16)), "k",
                     id="hq-not-multiple-of-hkv"),
        pytest.param(mk(v=torch.randn(7, 2, 8)), "v", id="v-shape"),
        pytest.param(mk(v=torch.randn(7, 2, 16).half()), "v", id="v-dtype"),
        pytest.param(mk(cu_seqlens=torch.tensor([[0, 7]])), "cu_seqlens", id="cu-rank"),
        pytest.param(mk(cu_seqlens=torch.tensor([0.0, 7.0])), "cu_seqlens", id="cu-dtype"),
        pytest.param(mk(cu_seqlens=torch.tensor([1, 7])), "cu_seqlens", id="cu-start"),
        pytest.param(mk(cu_seqlens=torch.tensor([0, 3, 6])), "cu_seqlens", id="cu-end"),
        pytest.param(mk(cu_seqlens=torch.tensor([0, 5, 3, 7])), "cu_seqlens[2]", id="cu-decreasing"),
    ]


@pytest.mark.parametrize(("case", "field"), _bad_inputs())
def test_bad_inputs_name_the_field(case: dict, field: str) -> None:
    with pytest.raises(FieldError) as info:
        call(case, causal=True, backend="torch")
    assert info.value.field == field


def test_check_seqlens_false_skips_only_the_value_check(monkeypatch) -> None:
    """Callers that built cu_seqlens (the encoder, once per layer) skip the one check that reads
    it on the host; the shape, dtype and device checks still run."""
    from ega_infer.ops.prefill_attention import _check_inputs

    cases = _bad_inputs()
    good = make_case([3, 4], 4, 2, 16, device=torch.device("cpu"))
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or tolist(t))
    for bad in cases:
        case, field = bad.values
        args = (case["q"], case["k"], case["v"], case["cu_seqlens"])
        if bad.id in ("cu-start", "cu-end", "cu-decreasing"):  # values: checked only on request
            _check_inputs(*args, check_seqlens=False)
        else:
            with pytest.raises(FieldError) as info:
                _check_inputs(*args, check_seqlens=False)
            assert info.value.field == field
    assert reads == []
    _check_inputs(good["q"], good["k"], good["v"], good["cu_seqlens"])
    assert reads == [1]  # the default reads cu_seqlens once


def test_no_cuda_implementation_in_the_capability_table() -> None:
    # "auto" never picks a CUDA C++ kernel for this op (the resolver reads the table); an engine
    # asked for "cuda" runs the op's own auto choice (Triton on a GPU).
    from ega_infer.ops import resolve_backends
    from ega_infer.ops.prefill_attention import CAPABILITIES

    assert "cuda" not in CAPABILITIES.checks
    assert CAPABILITIES.why_not("cuda") == "prefill_attention has no cuda implementation"
    assert resolve_backends("torch", torch.device("cpu"), head_dim=16).prefill_attention == "torch"


def test_cuda_backend_is_not_planned() -> None:
    case = make_case([3], 1, 1, 16, device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="prefill_attention: backend 'cuda'"):
        call(case, causal=True, backend="cuda")


# --- Triton -----------------------------------------------------------------------------------


@pytest.fixture
def triton_device(device: torch.device) -> torch.device:
    pytest.importorskip("triton", reason="the triton package is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        if torch.cuda.is_available():
            return torch.device("cuda")
        pytest.skip("Triton needs a CUDA GPU, or TRITON_INTERPRET=1 to run on CPU tensors")
    return device


def test_query_block_map() -> None:
    pytest.importorskip("triton", reason="the triton package is not installed")
    from ega_infer.kernels.prefill_attention import query_block_map

    # Lengths 5, 0, 17, 16 with 16-row blocks: seq 0 one block, seq 2 two, seq 3 one.
    block_seq, block_start = query_block_map(torch.tensor([0, 5, 5, 22, 38]), 38, 16)
    assert block_seq.tolist() == [0, 2, 2, 3, -1, -1]
    assert block_start.tolist() == [0, 0, 16, 0, 0, 0]


@pytest.mark.interpreter
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case_args", CASES, ids=CASE_IDS)
def test_triton_matches_reference(case_args, causal, dtype, atol, rtol, triton_device) -> None:
    case = make_case(*case_args, device=triton_device, dtype=dtype)
    assert_matches(call(case, causal, backend="triton"), case, causal, atol, rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_triton_block_m_larger_than_block_n(causal: bool, triton_device: torch.device) -> None:
    from ega_infer.kernels.prefill_attention import prefill_attention_triton

    case = make_case([37, 2], 2, 1, 16, device=triton_device)
    got = prefill_attention_triton(case["q"], case["k"], case["v"], case["cu_seqlens"],
                                   causal=causal, block_m=32, block_n=16)
    assert_matches(got, case, causal, 1e-5, 1e-5)


@pytest.mark.interpreter
def test_triton_strided_views_and_scale(triton_device: torch.device) -> None:
    # q, k, v as views of one fused [T, Hq + 2 Hkv, D] projection; int64 boundaries.
    total, hq, hkv, d = 21, 4, 2, 16
    qkv = torch.randn(total, hq + 2 * hkv, d, device=triton_device)
    case = {"q": qkv[:, :hq], "k": qkv[:, hq:hq + hkv], "v": qkv[:, hq + hkv:],
            "cu_seqlens": torch.tensor([0, 4, 21], device=triton_device)}
    assert not case["q"].is_contiguous()
    for causal in (False, True):
        got = call(case, causal, backend="triton", scale=0.3)
        assert_matches(got, case, causal, 1e-5, 1e-5, scale=0.3)


def test_triton_rejects_bad_blocks() -> None:
    pytest.importorskip("triton", reason="the triton package is not installed")
    from ega_infer.kernels.prefill_attention import prefill_attention_triton

    case = make_case([3], 1, 1, 16, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="multiple of block_n"):
        prefill_attention_triton(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=True,
                                 block_m=16, block_n=32)
    with pytest.raises(ValueError, match="power of two"):
        prefill_attention_triton(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=False,
                                 block_m=24)


def test_triton_rejects_huge_head_dim() -> None:
    pytest.importorskip("triton", reason="the triton package is not installed")
    from ega_infer.kernels.limits import ATTENTION_TRITON_MAX_HEAD_DIM

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    case = make_case([2], 1, 1, ATTENTION_TRITON_MAX_HEAD_DIM + 8, device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="head dims up to"):
        call(case, True, backend="triton")


# --- compiled on a GPU ------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", [[2048], [1000, 0, 1, 777, 130]])
def test_triton_gpu_model_shapes(lengths, causal, dtype, atol, rtol) -> None:
    # Real tile sizes (128 x 64), head dim 128, 16 query / 4 key-value heads.
    pytest.importorskip("triton", reason="the triton package is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1 would interpret these large shapes")
    case = make_case(lengths, 16, 4, 128, device=torch.device("cuda"), dtype=dtype)
    assert_matches(call(case, causal, backend="triton"), case, causal, atol, rtol)


@pytest.mark.gpu
@needs_gpu
def test_auto_backend_on_gpu_is_triton() -> None:
    pytest.importorskip("triton", reason="the triton package is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1: compare compiled kernels only")
    from ega_infer.kernels.prefill_attention import prefill_attention_triton

    case = make_case([70, 3], 4, 2, 64, device=torch.device("cuda"), dtype=torch.bfloat16)
    want = prefill_attention_triton(case["q"], case["k"], case["v"], case["cu_seqlens"], causal=True)
    assert torch.equal(call(case, True, backend="auto"), want)
