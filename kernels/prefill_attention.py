"""Triton backend of ``prefill_attention``: flash-attention forward over packed variable-length
sequences.

For sequence b (tokens ``cu_seqlens[b] .. cu_seqlens[b+1]``), query position i, query head h with
key/value head ``g = h // (Hq // Hkv)``:
out[i, h] = softmax_j(scale * q[i, h] . k[j, g]) @ v[j, g] over the positions j of the same
sequence (``j <= i`` when causal). Semantics and the PyTorch reference:
``ega_infer/ops/prefill_attention.py``.

Design
------
* Grid (query block, query head). A query block is BLOCK_M consecutive positions of one
  sequence; the block -> (sequence, first position) map is built on the device with
  ``torch.searchsorted`` (no host sync), for an upper bound of ``(T + B (BLOCK_M - 1)) / BLOCK_M``
  blocks; programs past the real block count see a zero-length sequence and store nothing.
* Each program keeps its [BLOCK_M, D] query tile in registers and streams [BLOCK_N, D] key/value
  tiles of its sequence with an online softmax in base 2 (float32 max / sum / accumulator), two
  ``tl.dot``s per tile. Key blocks that need no mask (strictly below the diagonal when causal,
  all but the ragged last block otherwise) run in an unmasked ``for`` loop that Triton's
  pipeliner can stage; the diagonal blocks (causal) or the ragged last block run masked.
  Causal blocks above the diagonal are never visited (BLOCK_M is a multiple of BLOCK_N).
* Grouped-query heads: query head h reads key/value head h // (Hq / Hkv); the query heads of a
  group re-read the same K/V tiles, which then come from L2.
* Head dims that are not a power of two (or below 16) are padded to BLOCK_D with masked loads.
  float32 inputs use ``input_precision="ieee"`` (no TF32): FMA dots, so float32 tiles are small
  (16-wide key tiles, BLOCK_M * D <= 2048, 8 warps; no register spills in the sm_90 cubins).

Goal on an H100 SXM: >= 450 TFLOP/s in bf16 at 2048-token sequences, head dim 128 (see
``bench/bench_prefill_attention.py``). The block sizes below are starting points picked from the
tile shapes, not tuned on hardware; measure before relying on them.

Under Triton's interpreter the unmasked loop is a ``while`` loop (a runtime ``range`` bound fails
there with NumPy >= 2.4) and bf16 ``tl.dot`` operands are upcast to float32 (the interpreter
multiplies bf16 bit patterns); see ``kernels/decode_attention.py``.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from ._attention import LOG2E, dot, load_kv_tile, online_softmax
from ._launch import Launch

__all__ = [
    "prefill_attention_triton", "prefill_attention_launch", "query_block_map",
]


@triton.jit
def _key_block(
    q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
    n0, seq_len, offs_m, offs_n, offs_d, d_ok, m_i, l_i, acc, qk_scale,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Online-softmax update of the query tile by keys ``n0 .. n0 + BLOCK_N`` of the sequence;
    MASK drops keys past ``seq_len`` and, when CAUSAL, keys after the query."""
    n = n0 + offs_n
    kt_ptrs = k_base + n[None, :].to(tl.int64) * stride_kt + offs_d[:, None] * stride_kd
    v_ptrs = v_base + n[:, None].to(tl.int64) * stride_vt + offs_d[None, :] * stride_vd
    kt, v = load_kv_tile(kt_ptrs, v_ptrs, n < seq_len, d_ok, MASK, EVEN_D)
    score = dot(q, kt, None, DOT_PRECISION, UPCAST_DOT) * qk_scale
    if MASK:
        keep = (n < seq_len)[None, :]
        if CAUSAL:
            keep = keep & (n[None, :] <= offs_m[:, None])
        score = tl.where(keep, score, float("-inf"))
    return online_softmax(score, v, m_i, l_i, acc, DOT_PRECISION, UPCAST_DOT)


@triton.jit
def _prefill_attention_kernel(
    q_ptr, stride_qt, stride_qh, stride_qd,
    k_ptr, stride_kt, stride_kh, stride_kd,
    v_ptr, stride_vt, stride_vh, stride_vd,
    out_ptr, stride_ot, stride_oh, stride_od,
    cu_seqlens_ptr, block_seq_ptr, block_start_ptr, head_dim, qk_scale,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, CAUSAL: tl.constexpr, PIPELINE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    block = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP

    # This block's sequence and first query position; an idle block (seq < 0) gets length 0.
    seq = tl.load(block_seq_ptr + block)
    live = seq >= 0
    seq_c = tl.maximum(seq, 0)
    seq_start = tl.load(cu_seqlens_ptr + seq_c).to(tl.int64)
    seq_len = tl.where(live, (tl.load(cu_seqlens_ptr + seq_c + 1) - seq_start).to(tl.int32), 0)
    start_m = tl.where(live, tl.load(block_start_ptr + block), 0)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seq_len
    d_ok = offs_d < head_dim
    tile_ok = m_ok[:, None] & d_ok[None, :]
    rows = seq_start + offs_m.to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :] * stride_qd,
                mask=tile_ok, other=0.0)
    k_base = k_ptr + seq_start * stride_kt + kv_head * stride_kh
    v_base = v_ptr + seq_start * stride_vt + kv_head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Keys [0, full_hi) need no mask; [full_hi, hi) are the diagonal / ragged blocks.
    if CAUSAL:
        full_hi = tl.minimum(start_m, seq_len // BLOCK_N * BLOCK_N)
        hi = tl.minimum(start_m + BLOCK_M, seq_len)
    else:
        full_hi = seq_len // BLOCK_N * BLOCK_N
        hi = seq_len
    if PIPELINE:
        for n0 in tl.range(0, full_hi, BLOCK_N):
            m_i, l_i, acc = _key_block(
                q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                n0, seq_len, offs_m, offs_n, offs_d, d_ok, m_i, l_i, acc, qk_scale,
                False, CAUSAL, EVEN_D, DOT_PRECISION, UPCAST_DOT,
            )
    else:
        n0 = 0
        while n0 < full_hi:
            m_i, l_i, acc = _key_block(
                q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                n0, seq_len, offs_m, offs_n, offs_d, d_ok, m_i, l_i, acc, qk_scale,
                False, CAUSAL, EVEN_D, DOT_PRECISION, UPCAST_DOT,
            )
            n0 += BLOCK_N
    n0 = full_hi
    while n0 < hi:
        m_i, l_i, acc = _key_block(
            q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
            n0, seq_len, offs_m, offs_n, offs_d, d_ok, m_i, l_i, acc, qk_scale,
            True, CAUSAL, EVEN_D, DOT_PRECISION, UPCAST_DOT,
        )
        n0 += BLOCK_N

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=tile_ok)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def query_block_map(cu_seqlens: torch.Tensor, total: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(block_seq, block_start)`` int32 of the query blocks of packed sequences, on the device.

    Sequence b of length L_b owns ``ceil(L_b / block_m)`` consecutive blocks, block j of it
    starting at position ``j * block_m``. Both arrays have ``(total + B (block_m - 1)) // block_m``
    entries (an upper bound, no host sync); entries past the real blocks are ``(-1, 0)``.
    Needs at least one sequence.
    """
    num_seqs = cu_seqlens.numel() - 1
    bound = max((total + num_seqs * (block_m - 1)) // block_m, 1)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    blocks_end = torch.cumsum((lengths + block_m - 1) // block_m, 0)  # inclusive
    index = torch.arange(bound, device=cu_seqlens.device)
    seq = torch.searchsorted(blocks_end, index, right=True)
    live = seq < num_seqs
    seq_c = seq.clamp(max=num_seqs - 1)
    first_block = blocks_end[seq_c] - (lengths[seq_c] + block_m - 1) // block_m
    start = (index - first_block) * block_m
    block_seq = torch.where(live, seq, torch.full_like(seq, -1)).to(torch.int32)
    block_start = torch.where(live, start, torch.zeros_like(start)).to(torch.int32)
    return block_seq, block_start


def _choose_config(dtype: torch.dtype, block_d: int, causal: bool,
                   block_m: int | None, block_n: int | None) -> dict:
    """Tile sizes, warps and stages (starting points, see module doc)."""
    if _interpreted():
        bm, bn, warps, stages = 16, 16, 4, 1
    elif dtype == torch.float32:  # FMA dots: small tiles keep sm_90 cubins free of spills
        bm, bn, warps, stages = min(64, max(16, 2048 // block_d)), 16, 8, 2
    elif block_d > 128:
        bm, bn, warps, stages = 64, 32, 4, 2
    else:
        bm, bn, warps, stages = 128, 64, 8, 3
    bm = bm if block_m is None else block_m
    bn = bn if block_n is None else block_n
    for name, value in (("block_m", bm), ("block_n", bn)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    if causal and bm % bn:
        raise ValueError(f"causal attention needs block_m ({bm}) to be a multiple of block_n ({bn})")
    return dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)


def prefill_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton backend: same arguments and result as ``prefill_attention_torch``, for
    inputs the public op has validated.

    q, k, v may be strided views (no copies); head dims up to ``limits.ATTENTION_TRITON_MAX_HEAD_DIM``. ``cu_seqlens``
    is assumed valid (the public op checks it). ``block_m`` / ``block_n`` override the tile
    sizes (powers of two >= 16; tests use them to reach multi-block paths on tiny shapes).
    Returns a new contiguous [T, Hq, D] tensor in q's dtype.
    """
    total, hq, d = q.shape
    out = torch.empty((total, hq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    launch = prefill_attention_launch(q, k, v, cu_seqlens, out, causal=causal, scale=scale,
                                      block_m=block_m, block_n=block_n)
    device_ctx = torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext()
    with device_ctx:
        launch()
    return out


def prefill_attention_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    out: torch.Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> Launch:
    """The launch that fills ``out`` (a new [T, Hq, D], not empty, D <= ATTENTION_TRITON_MAX_HEAD_DIM); builds
    the query block map on q's device. Shared by :func:`prefill_attention_triton` and
    ``ega_infer.compile``."""
    total, hq, d = q.shape
    hkv = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block_d = max(16, triton.next_power_of_2(d))
    cfg = _choose_config(q.dtype, block_d, causal, block_m, block_n)
    block_seq, block_start = query_block_map(cu_seqlens, total, cfg["block_m"])
    grid = (block_seq.numel(), hq)
    args = (
        q, *q.stride(), k, *k.stride(), v, *v.stride(), out, *out.stride(),
        cu_seqlens.contiguous(), block_seq, block_start, d, scale * LOG2E,
    )
    meta = dict(
        GROUP=hq // hkv, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_D=block_d,
        EVEN_D=block_d == d, CAUSAL=bool(causal), PIPELINE=not _interpreted(),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOT=_interpreted() and q.dtype == torch.bfloat16,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return Launch(_prefill_attention_kernel, grid, args, meta)
