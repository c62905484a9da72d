"""Triton backend of ``trie_log_softmax``: one program per row (beam).

out[r, c] = logits[r, c] + w_c - logsumexp over the admissible children of row r's trie node,
w_c = log(max_bid_c ** alpha + beta); -inf for every other code and for dead rows (node < 0).
Semantics and the PyTorch reference: ``ega_infer/ops/trie_log_softmax.py``.

Each program writes -inf over its row, streams its node's children (a dynamic range
``child_ptr[n] .. child_ptr[n+1]``) in BLOCK_C chunks with a per-lane online max / sum of exp,
then streams them again to write ``v - lse`` at the admissible codes. Runs on CUDA tensors, and on
CPU tensors under ``TRITON_INTERPRET=1``.

The loops over children are ``while`` loops: Triton's interpreter cannot take a loaded value as a
``range`` bound with NumPy >= 2.4, and a ``while`` compiles to the same loop on the GPU.
``pow`` is written as ``exp2(alpha * log2(bid))`` (with ``bid ** 0 == 1``) since libdevice's
``pow`` has no interpreter implementation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import Launch

__all__ = ["trie_log_softmax_triton", "trie_log_softmax_launch"]

_BLOCK_C = 128  # children per chunk
_BLOCK_V = 1024  # vocab entries per -inf store


@triton.jit
def _child_scores(
    logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
    j, end, vocab, alpha, beta, HAS_ALLOWED: tl.constexpr,
):
    """Scores of children ``j`` (a block of indices), -inf where a child is not admissible."""
    in_range = j < end
    code = tl.load(child_code_ptr + j, mask=in_range, other=0)
    bid = tl.load(child_bid_ptr + j, mask=in_range, other=1.0)
    powed = tl.where(alpha == 0.0, 1.0, tl.exp2(alpha * tl.log2(bid)))
    weight = tl.log(powed + beta)
    keep = in_range & (code >= 0) & (code < vocab) & (weight > float("-inf"))
    if HAS_ALLOWED:
        ok = tl.load(allowed_row + code.to(tl.int64) * stride_av, mask=keep, other=0)
        keep = keep & (ok != 0)
    x = tl.load(logits_row + code.to(tl.int64) * stride_lv, mask=keep, other=0.0).to(tl.float32)
    return tl.where(keep, x + weight, float("-inf")), code, keep


@triton.jit
def _trie_log_softmax_kernel(
    logits_ptr, stride_lr, stride_lv,
    row_node_ptr, child_ptr_ptr, child_code_ptr, child_bid_ptr,
    allowed_ptr, stride_ar, stride_av,
    out_ptr, vocab, alpha, beta,
    HAS_ALLOWED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    out_row = out_ptr + row * vocab
    v0 = 0
    while v0 < vocab:
        offs = v0 + tl.arange(0, BLOCK_V)
        tl.store(out_row + offs, float("-inf"), mask=offs < vocab)
        v0 += BLOCK_V

    node = tl.load(row_node_ptr + row).to(tl.int64)
    if node >= 0:
        logits_row = logits_ptr + row * stride_lr
        allowed_row = allowed_ptr + row * stride_ar
        start = tl.load(child_ptr_ptr + node).to(tl.int64)
        end = tl.load(child_ptr_ptr + node + 1).to(tl.int64)

        # Pass 1: per-lane running max and sum of exp, merged once at the end.
        m_i = tl.full([BLOCK_C], float("-inf"), tl.float32)
        s_i = tl.zeros([BLOCK_C], tl.float32)
        c0 = start
        while c0 < end:
            j = c0 + tl.arange(0, BLOCK_C)
            v, code, keep = _child_scores(
                logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
                j, end, vocab, alpha, beta, HAS_ALLOWED,
            )
            m_new = tl.maximum(m_i, v)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_i = s_i * tl.exp(m_i - m_safe) + tl.exp(v - m_safe)
            m_i = m_new
            c0 += BLOCK_C
        m = tl.max(m_i, axis=0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        lse = m_safe + tl.log(tl.sum(s_i * tl.exp(m_i - m_safe), axis=0))

        # The -inf stores above and the stores below may hit one address from different threads.
        tl.debug_barrier()
        if m > float("-inf"):
            c0 = start
            while c0 < end:
                j = c0 + tl.arange(0, BLOCK_C)
                v, code, keep = _child_scores(
                    logits_row, stride_lv, allowed_row, stride_av, child_code_ptr, child_bid_ptr,
                    j, end, vocab, alpha, beta, HAS_ALLOWED,
                )
                tl.store(out_row + code.to(tl.int64), v - lse, mask=keep)
                c0 += BLOCK_C


def trie_log_softmax_triton(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton backend: same arguments and result as ``trie_log_softmax_torch``.

    ``logits`` may be any strided [rows, vocab] view; the 1-D trie arrays are made contiguous.
    Returns a new contiguous [rows, vocab] float32 tensor.
    """
    rows, vocab = logits.shape
    out = torch.empty((rows, vocab), dtype=torch.float32, device=logits.device)
    if rows == 0 or vocab == 0:
        return out
    launch = trie_log_softmax_launch(
        logits, row_node, child_ptr, child_code, child_max_bid, out,
        alpha=alpha, beta=beta, allowed=allowed,
    )
    if logits.device.type == "cuda":
        with torch.cuda.device(logits.device):
            launch()
    else:
        launch()
    return out


def trie_log_softmax_launch(
    logits: torch.Tensor,
    row_node: torch.Tensor,
    child_ptr: torch.Tensor,
    child_code: torch.Tensor,
    child_max_bid: torch.Tensor,
    out: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    allowed: torch.Tensor | None,
) -> Launch:
    """The launch that fills ``out`` (contiguous float32 [rows, vocab], rows and vocab > 0);
    shared by :func:`trie_log_softmax_triton` and ``ega_infer.compile``."""
    rows, vocab = logits.shape
    if allowed is not None:
        allowed_arg = allowed.view(torch.uint8) if allowed.dtype == torch.bool else allowed
        stride_ar, stride_av = allowed_arg.stride()
    else:
        allowed_arg, stride_ar, stride_av = out, 0, 0  # never read: HAS_ALLOWED=False
    args = (
        logits, logits.stride(0), logits.stride(1),
        row_node.contiguous(), child_ptr.contiguous(), child_code.contiguous(),
        child_max_bid.contiguous(),
        allowed_arg, stride_ar, stride_av,
        out, vocab, float(alpha), float(beta),
    )
    meta = dict(HAS_ALLOWED=allowed is not None, BLOCK_C=_BLOCK_C, BLOCK_V=_BLOCK_V, num_warps=4)
    return Launch(_trie_log_softmax_kernel, (rows,), args, meta)
