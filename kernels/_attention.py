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
