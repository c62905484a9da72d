"""Triton backend of ``decode_attention``: flash-decoding where a request's beams share its context.

out[n, p, h] = softmax(scale * [ctx_k[n, g, :ctx_len[n]] ; own_k[n, p, g]] q[n, p, h])
               @ [ctx_v[n, g, :ctx_len[n]] ; own_v[n, p, g]],        g = h // (Hq // Hkv).
Semantics and the PyTorch reference: ``ega_infer/ops/decode_attention.py``.

Design
------
* One program per (request n, key/value head g, block of BLOCK_P beams), optionally split over
  the context (second grid axis). Its query tile stacks the BLOCK_P beams x the Hq/Hkv query
  heads of group g: BLOCK_M = BLOCK_P * GROUP_PAD rows (GROUP_PAD = the group size rounded up to
  a power of two; padded rows and beams past P are masked). So the request's context K/V for
  head g is streamed once for all its beams and heads, and each [BLOCK_S, D] key/value tile
  feeds two ``tl.dot``s of [BLOCK_M, D] x [D, BLOCK_S] and [BLOCK_M, BLOCK_S] x [BLOCK_S, D].
  Programs of one (n, g) are adjacent in the grid, so when P needs several beam blocks their
  context reads meet in L2.
* Online softmax in base 2 (scores pre-multiplied by scale * log2(e)), float32 max / sum /
  accumulator. Full context blocks run unmasked in a ``for`` loop that Triton's pipeliner can
  stage (``num_stages``); the ragged last block (``ctx_len`` not a multiple of BLOCK_S) runs once
  with the key mask. Blocks past ``ctx_len[n]`` are never read.
* Then each beam's own positions (T of them, a handful in LazyAR): one position at a time, a row-
  wise dot product (every row has its own key), the same online update. No ``tl.dot``: T is tiny.
* Split-K (flash-decoding): with few (n, g, beam block) programs and a long context, the context
  is cut into ``num_splits`` ranges of ``split_len`` (a multiple of BLOCK_S); each split writes
  its unnormalised float32 accumulator with its running max and sum, and
  ``_combine_splits_kernel`` merges them. The own positions go to split 0. Splitting is only
  chosen when those partials cost at most ~10% of the context bytes (64 beams x 16 heads of
  partials would cost more than a split saves).
* Head dims that are not a power of two (or below 16) are padded to BLOCK_D with masked loads;
  ``tl.dot`` needs every tile side >= 16, hence BLOCK_M, BLOCK_S, BLOCK_D >= 16.
* float32 inputs use ``input_precision="ieee"`` (no TF32) so results match the float32
  reference to ~1e-6; those dots run on FMAs, so float32 tiles are small (16-wide key tiles,
  BLOCK_M * D <= 2048, 8 warps: no register spills in the sm_90 cubins). bf16/fp16 feed the
  tensor cores and cast P to the input dtype for P @ V.

Goals on an H100 SXM (bf16, 16 requests, D = 128, Hq = 16, Hkv = 4, a 2048-token context, see
``bench/bench_decode_attention.py``): >= 75% of the 3.0 TB/s memory roofline at 64 beams per
request and >= 400 TFLOP/s at 512 beams per request. At 64 beams x 16 query heads the context
read sits at the H100's ridge point (~270 FLOP/byte), so 75% of the bandwidth also asks ~600
TFLOP/s of the matmuls: that is why the tiles are 128 query rows wide. The block sizes below are
starting points picked from the tile shapes, not tuned on hardware; measure before relying on
them.

Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) cannot take a runtime value as a
``range`` bound with NumPy >= 2.4, so under the interpreter the context loop is a ``while`` loop
(``PIPELINE=False``); compiled, it is a ``tl.range`` loop that can be software-pipelined. The
interpreter also multiplies bfloat16 ``tl.dot`` operands as their uint16 bit patterns (Triton
3.6, triton-lang/triton#11584), so there bf16 tiles are upcast to float32 first
(``UPCAST_DOT``; the products equal the tensor cores' exact bf16 products).
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

__all__ = ["decode_attention_triton", "decode_attention_launches"]


@triton.jit
def _ctx_block(
    q, k_base, v_base, stride_ks, stride_kd, stride_vs, stride_vd,
    s0, hi, offs_s, offs_d, d_ok, m_i, l_i, acc, qk_scale,
    MASK_S: tl.constexpr, EVEN_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Online-softmax update of the query tile by context positions ``s0 .. s0 + BLOCK_S``
    (those ``>= hi`` masked when MASK_S)."""
    s = s0 + offs_s
    kt_ptrs = k_base + s[None, :] * stride_ks + offs_d[:, None] * stride_kd  # [BLOCK_D, BLOCK_S]
    v_ptrs = v_base + s[:, None] * stride_vs + offs_d[None, :] * stride_vd  # [BLOCK_S, BLOCK_D]
    kt, v = load_kv_tile(kt_ptrs, v_ptrs, s < hi, d_ok, MASK_S, EVEN_D)
    score = dot(q, kt, None, DOT_PRECISION, UPCAST_DOT) * qk_scale
    if MASK_S:
        score = tl.where((s < hi)[None, :], score, float("-inf"))
    return online_softmax(score, v, m_i, l_i, acc, DOT_PRECISION, UPCAST_DOT)


@triton.jit
def _own_position(q, k_ptrs, v_ptrs, mask, m_i, l_i, acc, qk_scale):
    """Online-softmax update of every row by its own key/value (one per row, always valid)."""
    k = tl.load(k_ptrs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptrs, mask=mask, other=0.0).to(tl.float32)
    score = tl.sum(q.to(tl.float32) * k, 1) * qk_scale
    m_new = tl.maximum(m_i, score)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(score - m_new)
    l_i = l_i * alpha + p
    acc = acc * alpha[:, None] + p[:, None] * v
    return m_new, l_i, acc


@triton.jit
def _decode_attention_kernel(
    q_ptr, stride_qn, stride_qp, stride_qh, stride_qd,
    ck_ptr, stride_ckn, stride_ckh, stride_cks, stride_ckd,
    cv_ptr, stride_cvn, stride_cvh, stride_cvs, stride_cvd,
    ctx_len_ptr,
    ok_ptr, stride_okn, stride_okp, stride_okh, stride_okt, stride_okd,
    ov_ptr, stride_ovn, stride_ovp, stride_ovh, stride_ovt, stride_ovd,
    out_ptr, stride_os, stride_on, stride_op, stride_oh, stride_od,
    m_ptr, l_ptr, stride_ms, stride_mn, stride_mp,
    num_beams, num_kv_heads, ctx_size, own_len, head_dim, split_len, num_p_blocks, qk_scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, HAS_OWN: tl.constexpr,
    SPLIT: tl.constexpr, PIPELINE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    p_block = pid % num_p_blocks
    kv_head = (pid // num_p_blocks) % num_kv_heads
    req = (pid // num_p_blocks // num_kv_heads).to(tl.int64)
    split = tl.program_id(1)

    # Query rows: BLOCK_P beams x GROUP_PAD heads of this key/value head's group.
    rows = tl.arange(0, BLOCK_M)
    g = rows % GROUP_PAD
    beam = (p_block * BLOCK_P + rows // GROUP_PAD).to(tl.int64)
    head = (kv_head * GROUP + g).to(tl.int64)
    row_ok = (g < GROUP) & (beam < num_beams)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q_ptrs = (q_ptr + req * stride_qn + beam[:, None] * stride_qp + head[:, None] * stride_qh
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=tile_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Context positions [lo, hi) of this split; unmasked full blocks, then the ragged tail.
    length = tl.minimum(tl.load(ctx_len_ptr + req).to(tl.int64), ctx_size).to(tl.int32)
    if SPLIT:
        lo = split * split_len
        hi = tl.minimum(lo + split_len, length)
    else:
        lo = 0
        hi = length
    full_hi = lo + tl.maximum(hi - lo, 0) // BLOCK_S * BLOCK_S
    k_base = ck_ptr + req * stride_ckn + kv_head.to(tl.int64) * stride_ckh
    v_base = cv_ptr + req * stride_cvn + kv_head.to(tl.int64) * stride_cvh
    offs_s = tl.arange(0, BLOCK_S)
    if PIPELINE:
        for s0 in tl.range(lo, full_hi, BLOCK_S):
            m_i, l_i, acc = _ctx_block(
                q, k_base, v_base, stride_cks, stride_ckd, stride_cvs, stride_cvd,
                s0, hi, offs_s, offs_d, d_ok, m_i, l_i, acc, qk_scale,
                False, EVEN_D, DOT_PRECISION, UPCAST_DOT,
            )
    else:
        s0 = lo
        while s0 < full_hi:
            m_i, l_i, acc = _ctx_block(
                q, k_base, v_base, stride_cks, stride_ckd, stride_cvs, stride_cvd,
                s0, hi, offs_s, offs_d, d_ok, m_i, l_i, acc, qk_scale,
                False, EVEN_D, DOT_PRECISION, UPCAST_DOT,
            )
            s0 += BLOCK_S
    if full_hi < hi:
        m_i, l_i, acc = _ctx_block(
            q, k_base, v_base, stride_cks, stride_ckd, stride_cvs, stride_cvd,
            full_hi, hi, offs_s, offs_d, d_ok, m_i, l_i, acc, qk_scale,
            True, EVEN_D, DOT_PRECISION, UPCAST_DOT,
        )

    # The beams' own positions (split 0 only).
    if HAS_OWN:
        if split == 0:
            ko_ptrs = (ok_ptr + req * stride_okn + beam[:, None] * stride_okp
                       + kv_head.to(tl.int64) * stride_okh + offs_d[None, :] * stride_okd)
            vo_ptrs = (ov_ptr + req * stride_ovn + beam[:, None] * stride_ovp
                       + kv_head.to(tl.int64) * stride_ovh + offs_d[None, :] * stride_ovd)
            t = 0
            while t < own_len:
                m_i, l_i, acc = _own_position(
                    q, ko_ptrs + t * stride_okt, vo_ptrs + t * stride_ovt, tile_ok,
                    m_i, l_i, acc, qk_scale,
                )
                t += 1

    o_ptrs = (out_ptr + split.to(tl.int64) * stride_os + req * stride_on + beam[:, None] * stride_op
              + head[:, None] * stride_oh + offs_d[None, :] * stride_od)
    if SPLIT:
        tl.store(o_ptrs, acc, mask=tile_ok)
        ml = split.to(tl.int64) * stride_ms + req * stride_mn + beam * stride_mp + head
        tl.store(m_ptr + ml, m_i, mask=row_ok)
        tl.store(l_ptr + ml, l_i, mask=row_ok)
    else:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # no key: acc == 0, out == 0
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _combine_splits_kernel(
    acc_ptr, m_ptr, l_ptr, out_ptr, num_rows, head_dim,
    NUM_SPLITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the splits' (accumulator, max, sum) of ``num_rows`` query rows into ``out``.

    ``acc`` is [NUM_SPLITS, num_rows, head_dim], ``m`` / ``l`` [NUM_SPLITS, num_rows], all
    contiguous float32; ``out`` is a contiguous [num_rows, head_dim]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < num_rows
    offs_d = tl.arange(0, BLOCK_D)
    mask = r_ok[:, None] & (offs_d < head_dim)[None, :]
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for i in tl.static_range(NUM_SPLITS):
        m = tl.maximum(m, tl.load(m_ptr + i * num_rows + rows, mask=r_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for i in tl.static_range(NUM_SPLITS):
        w = tl.exp2(tl.load(m_ptr + i * num_rows + rows, mask=r_ok, other=float("-inf")) - m_safe)
        l_sum += w * tl.load(l_ptr + i * num_rows + rows, mask=r_ok, other=0.0)
        part = tl.load(acc_ptr + (i * num_rows + rows)[:, None] * head_dim + offs_d[None, :],
                       mask=mask, other=0.0)
        acc += w[:, None] * part
    out = acc / tl.where(l_sum > 0.0, l_sum, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] * head_dim + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)


def _on_device(device: torch.device):
    """``torch.cuda.device(device)`` for CUDA tensors; nothing for CPU (interpreter) tensors."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda" and not _interpreted():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _choose_config(q: torch.Tensor, num_kv_heads: int, ctx_size: int, block_d: int,
                   block_p: int | None, num_splits: int | None, sm_count: int | None = None) -> dict:
    """Tile sizes, warps, stages and split count for one call (starting points, see module doc).

    ``sm_count``: the GPU's multiprocessor count (default: asked from q's device)."""
    n, p, hq, _ = q.shape
    sms = _sm_count(q.device) if sm_count is None else sm_count
    group = hq // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    interpreted = _interpreted()
    fp32 = q.dtype == torch.float32
    if interpreted:
        block_s, max_m = 16, 64
    elif fp32:
        # "ieee" dots run on FMAs, each thread holding whole operand rows: ptxas (sm_90) keeps
        # 16-wide key tiles and BLOCK_M * D <= 2048 at 8 warps under 255 registers, no spills.
        block_s, max_m = 16, max(16, 2048 // block_d)
    elif block_d > 128:
        block_s, max_m = 32, 64
    else:
        block_s, max_m = 64, 128
    if block_p is None:
        max_m = max(max_m, 16, group_pad)
        block_p = max(1, min(triton.next_power_of_2(p), max_m // group_pad))
        # 128-row tiles feed the tensor cores best (at 64 beams x 16 heads the context read is
        # at the ridge point, so the matmuls must run near peak too); halve them only when the
        # grid would not fill one wave of the GPU.
        if (not interpreted and block_p * group_pad == 128
                and n * num_kv_heads * triton.cdiv(p, block_p) < sms):
            block_p //= 2
    block_p = max(block_p, triton.cdiv(16, group_pad))  # tl.dot needs >= 16 rows
    block_m = block_p * group_pad
    if block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two, got {block_p}")
    num_p_blocks = triton.cdiv(p, block_p)
    programs = n * num_kv_heads * num_p_blocks

    if num_splits is None:
        num_splits = 1
        if not interpreted and programs < 2 * sms and ctx_size >= 512:
            # Partials: float32 accumulator + max + sum per query row and split, written and read.
            partial_bytes = 2 * p * hq * (q.shape[3] + 2) * 4
            ctx_bytes = 2 * num_kv_heads * ctx_size * q.shape[3] * q.element_size()
            budget = max(1, int(0.1 * ctx_bytes / partial_bytes))
            num_splits = max(1, min(triton.cdiv(2 * sms, programs), ctx_size // 256, budget))
    split_len = triton.cdiv(triton.cdiv(max(ctx_size, 1), num_splits), block_s) * block_s
    num_splits = max(1, triton.cdiv(ctx_size, split_len))
    return dict(
        group=group, group_pad=group_pad, block_p=block_p, block_m=block_m, block_s=block_s,
        num_p_blocks=num_p_blocks, programs=programs, num_splits=num_splits, split_len=split_len,
        num_warps=8 if block_m >= 128 or fp32 else 4, num_stages=2 if fp32 or block_d > 128 else 3,
    )


def decode_attention_triton(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None = None,
    own_v: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_p: int | None = None,
) -> torch.Tensor:
    """Triton backend: same arguments and result as ``decode_attention_torch``, for
    inputs the public op has validated.

    Every tensor may be a strided view (no copies); head dims up to ``limits.ATTENTION_TRITON_MAX_HEAD_DIM``.
    ``num_splits`` (context splits) and ``block_p`` (beams per program, a power of two) override
    the heuristics; tests use them to reach the split-K and multi-block paths on tiny shapes.
    Returns a new contiguous [N, P, Hq, D] tensor in q's dtype.
    """
    n, p, hq, d = q.shape
    out = torch.empty((n, p, hq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    launches = decode_attention_launches(q, ctx_k, ctx_v, ctx_len, own_k, own_v, out, scale=scale,
                                         num_splits=num_splits, block_p=block_p)
    with _on_device(q.device):
        for launch in launches:
            launch()
    return out


def decode_attention_launches(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    ctx_len: torch.Tensor,
    own_k: torch.Tensor | None,
    own_v: torch.Tensor | None,
    out: torch.Tensor,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_p: int | None = None,
    sm_count: int | None = None,
) -> tuple[Launch, ...]:
    """The launches that fill ``out`` (contiguous, not empty, head dim <= ATTENTION_TRITON_MAX_HEAD_DIM): the
    attention kernel, then the split combine when the context is split. Allocates the split
    partials on q's device. Shared by :func:`decode_attention_triton` and ``ega_infer.compile``
    (which passes the target GPU's ``sm_count``)."""
    n, p, hq, d = q.shape
    hkv, ctx_size = ctx_k.shape[1], ctx_k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block_d = max(16, triton.next_power_of_2(d))
    cfg = _choose_config(q, hkv, ctx_size, block_d, block_p, num_splits, sm_count)
    has_own = own_k is not None and own_k.shape[3] > 0
    if not has_own:
        own_k = own_v = q.new_empty((1, 1, 1, 1, 1))  # never read: HAS_OWN=False
    splits = cfg["num_splits"]
    if splits > 1:
        acc = torch.empty((splits, n, p, hq, d), dtype=torch.float32, device=q.device)
        m_part = torch.empty((splits, n, p, hq), dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        target = acc
    else:
        m_part = l_part = torch.empty((1,), dtype=torch.float32, device=q.device)  # never used
        target = out.unsqueeze(0)
    args = (
        q, *q.stride(),
        ctx_k, *ctx_k.stride(),
        ctx_v, *ctx_v.stride(),
        ctx_len.contiguous(),
        own_k, *own_k.stride(),
        own_v, *own_v.stride(),
        target, *target.stride(),
        m_part, l_part, *(m_part.stride()[:3] if splits > 1 else (0, 0, 0)),
        p, hkv, ctx_size, own_k.shape[3] if has_own else 0, d, cfg["split_len"],
        cfg["num_p_blocks"], scale * LOG2E,
    )
    meta = dict(
        GROUP=cfg["group"], GROUP_PAD=cfg["group_pad"], BLOCK_P=cfg["block_p"],
        BLOCK_M=cfg["block_m"], BLOCK_S=cfg["block_s"], BLOCK_D=block_d, EVEN_D=block_d == d,
        HAS_OWN=has_own, SPLIT=splits > 1, PIPELINE=not _interpreted(),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOT=_interpreted() and q.dtype == torch.bfloat16,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    rows = n * p * hq
    block_r = 16
    launches = [Launch(_decode_attention_kernel, (cfg["programs"], splits), args, meta)]
    if splits > 1:
        launches.append(Launch(
            _combine_splits_kernel, (triton.cdiv(rows, block_r),),
            (acc, m_part, l_part, out, rows, d),
            dict(NUM_SPLITS=splits, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4),
        ))
    return tuple(launches)
