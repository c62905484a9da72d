"""Two-stage top-k (per-beam, then global) equals a one-stage full top-k exactly, ties included."""

import pytest
import torch

from ega_infer.decoding.topk import full_topk, two_stage_topk


def _finite_equal(a, b):
    (va, pa, ta), (vb, pb, tb) = a, b
    assert torch.equal(va, vb)  # values, -inf included
    finite = va > float("-inf")
    assert torch.equal(pa[finite], pb[finite])
    assert torch.equal(ta[finite], tb[finite])


@pytest.mark.parametrize("n,p,v,k", [(1, 1, 1, 1), (2, 3, 7, 5), (3, 5, 33, 17), (1, 16, 130, 16), (2, 4, 5, 64)])
def test_two_stage_equals_full_on_random_scores(n, p, v, k):
    scores = torch.randn(n, p, v)
    _finite_equal(two_stage_topk(scores, k), full_topk(scores, k))


@pytest.mark.parametrize("n,p,v,k", [(2, 4, 9, 6), (1, 7, 3, 21), (3, 2, 50, 40)])
def test_ties_break_by_parent_then_token(n, p, v, k):
    # few distinct values: most candidates tie
    scores = torch.randint(0, 3, (n, p, v)).float()
    two = two_stage_topk(scores, k)
    _finite_equal(two, full_topk(scores, k))
    values, parent, token = two
    flat = parent * v + token
    for row in range(n):
        for i in range(k - 1):
            if values[row, i] == values[row, i + 1]:
                assert flat[row, i] < flat[row, i + 1]


def test_dead_candidates_and_short_pools():
    scores = torch.full((2, 3, 4), float("-inf"))
    scores[0, 1, 2] = -1.0
    scores[0, 2, 0] = -0.5
    scores[1, 0, 3] = 0.0
    values, parent, token = two_stage_topk(scores, 5)
    assert values[0, :2].tolist() == [-0.5, -1.0]
    assert (parent[0, :2].tolist(), token[0, :2].tolist()) == ([2, 1], [0, 2])
    assert torch.isinf(values[0, 2:]).all() and torch.isinf(values[1, 1:]).all()
    # fewer candidates than k: padded with -inf
    values, parent, token = two_stage_topk(torch.randn(1, 2, 3), 10)
    assert values.shape == (1, 10) and torch.isinf(values[0, 6:]).all()
