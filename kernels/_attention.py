"""Pieces shared by the Triton attention kernels (decode and prefill)."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # the kernels run their softmax in base 2


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a @ b (+ acc)`` in float32; UPCAST_DOT multiplies float32 copies (interpreter, bf16)."""
    if UPCAST_DOT:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return out


@triton.jit
def load_kv_tile(kt_ptrs, v_ptrs, pos_ok, d_ok, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """The ``K^T [BLOCK_D, BLOCK]`` and ``V [BLOCK, BLOCK_D]`` tiles of a block of key positions;
    positions off ``pos_ok`` (when MASK) and head dims off ``d_ok`` (unless EVEN_D) read 0."""
    if MASK:
        if EVEN_D:
            kt = tl.load(kt_ptrs, mask=pos_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=pos_ok[:, None], other=0.0)
        else:
            kt = tl.load(kt_ptrs, mask=pos_ok[None, :] & d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=pos_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        else:
            kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    return kt, v


@triton.jit
def online_softmax(score, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One block of the base-2 online softmax: the running max ``m_i``, sum ``l_i`` and output
    ``acc`` of the query tile after the block's ``score`` (already scaled and masked) and ``v``."""
    m_new = tl.maximum(m_i, tl.max(score, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(score - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST_DOT)
    return m_new, l_i, acc
