"""decode_attention: the Triton backend against the PyTorch reference, the reference against a
naive loop and SDPA, input checks and backend dispatch.

Cases cover one beam / one head / one context position, requests with no context (ctx_len 0),
queries with no key at all (zeros), context lengths that are whole key blocks and ragged tails
(the interpreter's key block is 16), grouped-query heads with a group size that is not a power of
two, padded head dims (24 -> 32), several beam blocks, split-K, and strided views.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from ega_infer import _native
from ega_infer.ops.decode_attention_cuda import decode_attention_cuda
from ega_infer.exceptions import BackendUnavailableError, FieldError
from ega_infer.ops import decode_attention, decode_attention_torch

# (N, P, Hq, Hkv, S, T, D, ctx_len)
CASES = [
    (1, 1, 1, 1, 1, 0, 16, [1]),
    (1, 1, 1, 1, 1, 0, 16, [0]),  # no key at all: zeros
    (1, 3, 4, 2, 7, 1, 32, [7]),
    (2, 3, 4, 2, 7, 1, 32, [7, 0]),  # request 1 sees its own position only
    (2, 5, 4, 1, 33, 3, 16, [33, 17]),  # two full blocks + tail, one full block + tail
    (2, 1, 4, 2, 33, 0, 16, [0, 32]),  # zeros for request 0; whole blocks only
    (1, 5, 4, 1, 33, 3, 24, [20]),  # head dim padded to 32
    (2, 3, 1, 1, 7, 3, 24, [3, 7]),
    (2, 5, 6, 2, 33, 1, 16, [33, 9]),  # group of 3 query heads, padded to 4 rows
    (1, 2, 2, 1, 0, 2, 16, [0]),  # an empty context tensor (S = 0)
]
CASE_IDS = [f"N{c[0]}P{c[1]}H{c[2]}/{c[3]}S{c[4]}T{c[5]}D{c[6]}L{'-'.join(map(str, c[7]))}"
            for c in CASES]

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16"),
]


def make_case(n, p, hq, hkv, s, t, d, ctx_len, *, device, dtype=torch.float32,
              own: bool = True) -> dict:
    """Random inputs of one call; ``own=False`` passes no own positions at all."""
    tensors = {
        "q": torch.randn(n, p, hq, d),
        "ctx_k": torch.randn(n, hkv, s, d),
        "ctx_v": torch.randn(n, hkv, s, d),
        "own_k": torch.randn(n, p, hkv, t, d) if own else None,
        "own_v": torch.randn(n, p, hkv, t, d) if own else None,
    }
    case = {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    case["ctx_len"] = torch.tensor(ctx_len, dtype=torch.int32, device=device)
    return case


def call(case: dict, **kwargs) -> torch.Tensor:
    return decode_attention(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                            case["own_k"], case["own_v"], **kwargs)


def reference_fp32(case: dict, scale: float | None = None) -> torch.Tensor:
    """The reference on float32 copies of the inputs (the tolerance target of every dtype)."""
    up = {k: v.float() if v is not None and v.is_floating_point() else v for k, v in case.items()}
    return decode_attention_torch(up["q"], up["ctx_k"], up["ctx_v"], up["ctx_len"], up["own_k"],
                                  up["own_v"], scale=scale)


def assert_matches(got: torch.Tensor, case: dict, atol: float, rtol: float,
                   scale: float | None = None) -> None:
    assert got.dtype == case["q"].dtype and got.shape == case["q"].shape
    torch.testing.assert_close(got.float().cpu(), reference_fp32(case, scale).cpu(),
                               atol=atol, rtol=rtol)


# --- the PyTorch reference itself -------------------------------------------------------------


def naive_decode_attention(q, ctx_k, ctx_v, ctx_len, own_k, own_v, scale) -> torch.Tensor:
    """Per (request, beam, head): list the keys, float64 softmax, weighted sum of the values."""
    n_req, n_beam, hq, d = q.shape
    group = hq // ctx_k.shape[1]
    out = torch.zeros(n_req, n_beam, hq, d, dtype=torch.float64)
    for n in range(n_req):
        for p in range(n_beam):
            for h in range(hq):
                g = h // group
                keys = [ctx_k[n, g, s] for s in range(min(int(ctx_len[n]), ctx_k.shape[2]))]
                values = [ctx_v[n, g, s] for s in range(min(int(ctx_len[n]), ctx_k.shape[2]))]
                if own_k is not None:
                    keys += [own_k[n, p, g, t] for t in range(own_k.shape[3])]
                    values += [own_v[n, p, g, t] for t in range(own_k.shape[3])]
                if not keys:
                    continue
                logits = [scale * float((q[n, p, h].double() * key.double()).sum()) for key in keys]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = sum(weights)
                out[n, p, h] = sum((w / total) * val.double() for w, val in zip(weights, values))
    return out


@pytest.mark.parametrize("index", [2, 4, 8])
def test_torch_reference_matches_naive_loop(index: int) -> None:
    case = make_case(*CASES[index], device=torch.device("cpu"))
    d = case["q"].shape[-1]
    want = naive_decode_attention(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                                  case["own_k"], case["own_v"], 1.0 / math.sqrt(d))
    got = decode_attention_torch(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                                 case["own_k"], case["own_v"])
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_torch_reference_matches_sdpa_without_own_positions() -> None:
    # SDPA with enable_gqa and a bool context mask: every request has at least one position.
    case = make_case(2, 3, 4, 2, 9, 0, 16, [9, 4], device=torch.device("cpu"), own=False)
    q = case["q"].transpose(1, 2)  # [N, Hq, P, D]
    mask = (torch.arange(9) < case["ctx_len"][:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q, case["ctx_k"], case["ctx_v"], attn_mask=mask,
                                          scale=0.3, enable_gqa=True).transpose(1, 2)
    got = decode_attention_torch(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"], scale=0.3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_torch_reference_no_key_gives_zeros() -> None:
    case = make_case(2, 2, 2, 1, 4, 0, 16, [0, 2], device=torch.device("cpu"))
    out = call(case, backend="torch")
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all() and out[1].abs().sum() > 0


@pytest.mark.parametrize("case_args", CASES[:5], ids=CASE_IDS[:5])
def test_auto_backend_on_cpu_is_the_reference(case_args, device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("checks the CPU dispatch only")
    case = make_case(*case_args, device=device)
    assert torch.equal(call(case, backend="auto"), call(case, backend="torch"))


# --- input checks -----------------------------------------------------------------------------


def _bad_inputs() -> list:
    def mk(**change):
        case = make_case(2, 3, 4, 2, 5, 2, 16, [5, 1], device=torch.device("cpu"))
        case.update(change)
        return case

    return [
        pytest.param(mk(q=torch.randn(2, 3, 16)), "q", id="q-rank"),
        pytest.param(mk(q=torch.randn(2, 3, 4, 16, dtype=torch.float64)), "q", id="q-dtype"),
        pytest.param(mk(ctx_k=torch.randn(2, 2, 5, 8)), "ctx_k", id="ctx_k-head-dim"),
        pytest.param(mk(ctx_k=torch.randn(2, 3, 5, 16), ctx_v=torch.randn(2, 3, 5, 16)), "ctx_k",
                     id="hq-not-multiple-of-hkv"),
        pytest.param(mk(ctx_v=torch.randn(2, 2, 4, 16)), "ctx_v", id="ctx_v-shape"),
        pytest.param(mk(ctx_len=torch.tensor([5])), "ctx_len", id="ctx_len-shape"),
        pytest.param(mk(ctx_len=torch.tensor([5.0, 1.0])), "ctx_len", id="ctx_len-dtype"),
        pytest.param(mk(own_v=None), "own_k/own_v", id="own-half-given"),
        pytest.param(mk(own_k=torch.randn(2, 3, 1, 2, 16)), "own_k", id="own_k-heads"),
        pytest.param(mk(own_v=torch.randn(2, 3, 2, 3, 16)), "own_v", id="own_v-shape"),
        pytest.param(mk(ctx_v=torch.randn(2, 2, 5, 16).half()), "ctx_v", id="ctx_v-dtype"),
    ]


@pytest.mark.parametrize(("case", "field"), _bad_inputs())
def test_bad_inputs_name_the_field(case: dict, field: str) -> None:
    with pytest.raises(FieldError) as info:
        call(case, backend="torch")
    assert info.value.field == field


def test_unknown_backend_lists_choices() -> None:
    case = make_case(*CASES[0], device=torch.device("cpu"))
    with pytest.raises(ValueError, match="one of"):
        call(case, backend="numpy")


def test_cuda_backend_on_cpu_tensors_raises() -> None:
    case = make_case(*CASES[0], device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="cuda"):
        call(case, backend="cuda")


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
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("case_args", CASES, ids=CASE_IDS)
def test_triton_matches_reference(case_args, dtype, atol, rtol, triton_device) -> None:
    case = make_case(*case_args, device=triton_device, dtype=dtype)
    assert_matches(call(case, backend="triton"), case, atol, rtol)


@pytest.mark.interpreter
def test_triton_without_own_positions(triton_device: torch.device) -> None:
    case = make_case(2, 3, 4, 2, 33, 0, 16, [33, 0], device=triton_device, own=False)
    out = call(case, backend="triton")
    assert_matches(out, case, 1e-5, 1e-5)
    assert torch.equal(out[1].cpu(), torch.zeros_like(out[1].cpu()))


@pytest.mark.interpreter
@pytest.mark.parametrize(("case_args", "num_splits", "block_p"), [
    ((2, 5, 4, 1, 33, 3, 16, [33, 17]), 3, None),  # request 1: third split is empty
    ((2, 5, 4, 2, 33, 1, 24, [33, 0]), 2, 4),  # two beam blocks; request 1 own positions only
    ((2, 1, 2, 1, 33, 0, 16, [0, 20]), 2, None),  # no key at all for request 0
])
def test_triton_split_k(case_args, num_splits, block_p, triton_device) -> None:
    from ega_infer.kernels.decode_attention import decode_attention_triton

    case = make_case(*case_args, device=triton_device)
    got = decode_attention_triton(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                                  case["own_k"], case["own_v"], num_splits=num_splits,
                                  block_p=block_p)
    assert_matches(got, case, 1e-5, 1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize(("case_args", "block_p"), [
    ((1, 17, 1, 1, 7, 1, 16, [6]), 16),  # 16 + 1 beams
    ((2, 5, 4, 2, 20, 2, 16, [20, 3]), 4),  # 4 + 1 beams of 4 heads
])
def test_triton_several_beam_blocks(case_args, block_p, triton_device) -> None:
    from ega_infer.kernels.decode_attention import decode_attention_triton

    case = make_case(*case_args, device=triton_device)
    got = decode_attention_triton(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                                  case["own_k"], case["own_v"], block_p=block_p)
    assert_matches(got, case, 1e-5, 1e-5)


@pytest.mark.interpreter
def test_triton_strided_views_and_scale(triton_device: torch.device) -> None:
    # Layouts as the model holds them: q [N, Hq, P, D] transposed, the context a prefix of a
    # longer cache, own positions [N, P, T, Hkv, D] transposed; int64 lengths.
    n, p, hq, hkv, s, t, d = 2, 3, 4, 2, 19, 2, 16
    dev = triton_device
    case = {
        "q": torch.randn(n, hq, p, d, device=dev).transpose(1, 2),
        "ctx_k": torch.randn(n, hkv, s + 6, d, device=dev)[:, :, :s],
        "ctx_v": torch.randn(n, s, hkv, d + 3, device=dev)[..., :d].transpose(1, 2),
        "ctx_len": torch.tensor([19, 11], device=dev),
        "own_k": torch.randn(n, p, t, hkv, d, device=dev).transpose(2, 3),
        "own_v": torch.randn(n, p, t, hkv, d, device=dev).transpose(2, 3),
    }
    assert not any(case[k].is_contiguous() for k in ("q", "ctx_k", "ctx_v", "own_k", "own_v"))
    assert_matches(call(case, backend="triton", scale=0.7), case, 1e-5, 1e-5, scale=0.7)


@pytest.mark.interpreter
def test_triton_ctx_len_beyond_s_counts_as_s(triton_device: torch.device) -> None:
    case = make_case(2, 2, 2, 1, 7, 1, 16, [40, 7], device=triton_device)
    got = call(case, backend="triton")
    assert torch.isfinite(got).all()
    case["ctx_len"] = torch.tensor([7, 7], dtype=torch.int32, device=triton_device)
    assert_matches(got, case, 1e-5, 1e-5)


def test_triton_rejects_huge_head_dim() -> None:
    pytest.importorskip("triton", reason="the triton package is not installed")
    from ega_infer.kernels.limits import ATTENTION_TRITON_MAX_HEAD_DIM

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    case = make_case(1, 1, 1, 1, 2, 0, ATTENTION_TRITON_MAX_HEAD_DIM + 8, [2], device=torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="head dims up to"):
        decode_attention(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"], backend="triton")


# --- compiled on a GPU ------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(("n", "p", "ctx_len"), [(2, 64, [2048, 1500]), (1, 512, [2048]),
                                                 (4, 4, [2048, 0, 77, 1024])])
def test_triton_gpu_model_shapes(n, p, ctx_len, dtype, atol, rtol) -> None:
    # Real tile sizes (BLOCK_S 64, 128-row tiles, split-K for few beams), D = 128, 16/4 heads.
    pytest.importorskip("triton", reason="the triton package is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1 would interpret these large shapes")
    case = make_case(n, p, 16, 4, 2048, 3, 128, ctx_len, device=torch.device("cuda"), dtype=dtype)
    assert_matches(call(case, backend="triton"), case, atol, rtol)


needs_cuda_module = pytest.mark.skipif(
    _native.cuda_module_or_none() is None,
    reason="ega_infer._cuda is not built (or has no decode_attention)")


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("case_args", CASES, ids=CASE_IDS)
def test_cuda_matches_reference(case_args, dtype, atol, rtol) -> None:
    case = make_case(*case_args, device=torch.device("cuda"), dtype=dtype)
    assert_matches(call(case, backend="cuda"), case, atol, rtol)


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(("n", "p", "ctx_len"), [(2, 64, [2048, 1500]), (1, 512, [2048]),
                                                 (4, 4, [2048, 0, 77, 1024])])
def test_cuda_gpu_model_shapes(n, p, ctx_len, dtype, atol, rtol) -> None:
    # D = 128 (the 8-tile tensor-core kernel), 16/4 heads: 4 and 32 row blocks per (request, kv
    # head); the 4-beam case has 16 CTAs, so the split-K heuristic and the merge kernel run.
    case = make_case(n, p, 16, 4, 2048, 3, 128, ctx_len, device=torch.device("cuda"), dtype=dtype)
    assert_matches(call(case, backend="cuda"), case, atol, rtol)


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(("case_args", "num_splits"), [
    ((2, 5, 4, 1, 200, 3, 16, [200, 17]), 4),  # request 1: splits 2 and 3 are empty
    ((2, 20, 4, 1, 130, 1, 64, [130, 65]), 2),  # 80 rows: two row blocks, split
    ((1, 17, 8, 2, 40, 3, 128, [40]), 1),  # 68 rows, D 128
    ((1, 3, 4, 4, 20, 1, 80, [20]), 1),  # D 80: 5 of the 8 head-dim tiles
    ((1, 2, 2, 1, 12, 2, 200, [12]), 1),  # D 200: the scalar kernel's widest accumulator
    ((2, 1, 2, 1, 130, 0, 16, [0, 100]), 2),  # no key at all for request 0
])
def test_cuda_split_k_row_blocks_head_dims(case_args, num_splits, dtype, atol, rtol) -> None:
    case = make_case(*case_args, device=torch.device("cuda"), dtype=dtype)
    got = decode_attention_cuda(case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"],
                                        case["own_k"], case["own_v"], num_splits=num_splits)
    assert_matches(got, case, atol, rtol)


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("pad", [3, 8])  # 3: odd strides (scalar kernel or a copy); 8: in place
def test_cuda_strided_views_and_scale(pad, dtype, atol, rtol) -> None:
    n, p, hq, hkv, s, t, d = 2, 3, 4, 2, 70, 2, 64
    dev = torch.device("cuda")
    case = {
        "q": torch.randn(n, hq, p, d, device=dev, dtype=dtype).transpose(1, 2),
        "ctx_k": torch.randn(n, hkv, s + 6, d, device=dev, dtype=dtype)[:, :, :s],
        "ctx_v": torch.randn(n, s, hkv, d + pad, device=dev, dtype=dtype)[..., :d].transpose(1, 2),
        "ctx_len": torch.tensor([70, 41], device=dev),  # int64
        "own_k": torch.randn(n, p, t, hkv, d, device=dev, dtype=dtype).transpose(2, 3),
        "own_v": torch.randn(n, p, t, hkv, d, device=dev, dtype=dtype).transpose(2, 3),
    }
    assert_matches(call(case, backend="cuda", scale=0.7), case, atol, rtol, scale=0.7)


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
def test_cuda_ctx_len_beyond_s_and_negative() -> None:
    dev = torch.device("cuda")
    case = make_case(3, 2, 2, 1, 7, 1, 16, [40, 7, -5], device=dev, dtype=torch.bfloat16)
    got = call(case, backend="cuda")
    case["ctx_len"] = torch.tensor([7, 7, 0], dtype=torch.int32, device=dev)
    assert_matches(got, case, 2e-2, 2e-2)


@pytest.mark.gpu
@needs_gpu
@needs_cuda_module
def test_cuda_rejects_huge_head_dim() -> None:
    case = make_case(1, 1, 1, 1, 2, 0, 264, [2], device=torch.device("cuda"))
    with pytest.raises(BackendUnavailableError, match="head dims up to"):
        call(case, backend="cuda")
