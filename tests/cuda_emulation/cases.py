"""Inputs and result checks shared by the CUDA tests on a GPU (``tests/test_beam_step_cuda.py``)
and the emulation of the same kernels on the CPU (``tests/test_cuda_emulation.py``), so both check
the kernels on the same cases against the same PyTorch references.

Scores are compared with a tolerance, since the backends sum the softmax in different orders;
(parent, token) must match the reference exactly wherever its score is separated from its
neighbours, exact ties must come out in (parent, token) order, and the CUDA result must itself be
in the exact (score, parent, token) order.
"""

from __future__ import annotations

import math

import torch

from ega_infer.ops import beam_step_torch, decode_attention_torch, trie_log_softmax_torch

NEG_INF = float("-inf")
NEAR_TIE = 1e-4  # reference scores closer than this (or 1e-6 relative) may come out in either order

# (dtype, atol, rtol) of decode attention against the float32 reference (tests/test_decode_attention.py)
ATTENTION_TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (1e-2, 1e-2),
}


def log_beta(beta: float) -> float:
    """What the kernels take instead of beta (the public op computes it the same way)."""
    return math.log(beta) if beta > 0 else NEG_INF


# --- beam_step ----------------------------------------------------------------------------------


def make_beam_case(requests: int, beams: int, vocab: int, *, seed: int, dtype=torch.float32,
                   nodes: int = 7, with_allowed: bool = False, ties: bool = False,
                   strided: bool = False, children: int | None = None, bids=None,
                   device="cpu") -> dict:
    """A random depth-l level: node 0 holds every code, node 1 one code, node 2 none, the rest
    random sorted subsets (``children`` codes each when given). Beams are spread over the nodes,
    with dead ones (node -1, and a live node whose score is -inf); ``ties`` makes integer logits,
    equal beam scores and duplicated rows; ``bids``: the values child_max_bid is drawn from."""
    gen = torch.Generator().manual_seed(seed)
    per_node = []
    for node in range(nodes):
        if node == 0:
            codes = torch.arange(vocab)
        elif node == 1:
            codes = torch.randint(vocab, (1,), generator=gen)
        elif node == 2:
            codes = torch.zeros(0, dtype=torch.int64)
        else:
            size = children
            if size is None:
                size = int(torch.randint(1, vocab + 1, (1,), generator=gen))
            codes = torch.randperm(vocab, generator=gen)[: min(size, vocab)].sort().values
        per_node.append(codes)
    sizes = torch.tensor([len(c) for c in per_node])
    child_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    child_code = torch.cat(per_node).to(torch.int32)
    bid_choices = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0] if bids is None else bids, dtype=torch.float32)
    child_max_bid = bid_choices[torch.randint(len(bid_choices), (len(child_code),), generator=gen)]

    rows = requests * beams
    row_node = torch.randint(nodes, (rows,), generator=gen)
    row_node[torch.rand(rows, generator=gen) < 0.15] = -1
    row_node[: min(rows, 3)] = torch.tensor([0, 1, 2])[: min(rows, 3)]
    if ties:
        logits = torch.randint(0, 3, (rows, vocab), generator=gen).float()
        beam_scores = torch.zeros(requests, beams)
    else:
        logits = torch.randn(rows, vocab, generator=gen) * 3
        beam_scores = -4 * torch.rand(requests, beams, generator=gen)
    allowed = torch.rand(rows, vocab, generator=gen) < 0.7 if with_allowed else None
    if with_allowed and rows > 3:
        allowed[3] = False  # every child of row 3 removed
    if ties and beams >= 4:  # beam 2 repeats beam 0: candidates tie exactly across parents
        for n in range(requests):
            row_node[n * beams + 2] = row_node[n * beams]
            logits[n * beams + 2] = logits[n * beams]
            if allowed is not None:
                allowed[n * beams + 2] = allowed[n * beams]
    beam_scores[(row_node < 0).view(requests, beams)] = NEG_INF
    if beams > 3:
        beam_scores[0, beams - 1] = NEG_INF  # a live node whose beam is dead
    logits = logits.to(dtype)
    if strided:
        wide = torch.zeros(rows, vocab + 9, dtype=dtype)
        wide[:, 4 : 4 + vocab] = logits
        logits = wide[:, 4 : 4 + vocab]
    case = {
        "logits": logits, "beam_scores": beam_scores, "row_node": row_node, "child_ptr": child_ptr,
        "child_code": child_code, "child_max_bid": child_max_bid, "allowed": allowed,
    }
    return {name: (t.to(device) if t is not None else None) for name, t in case.items()}


OVERRIDE_BIDS = (0.0, 0.3, 1.7, 6.0, 50.0, 1e3)


def add_override(case: dict, entries: int, *, seed: int, dtype=torch.int64, bids=OVERRIDE_BIDS) -> dict:
    """``case`` with a per-request bid override of ``entries`` columns (``override_child`` /
    ``override_bid``, on the case's device): mostly children of the request's own live rows,
    some children of any node (most of them never scored by the request), -1 pads, and with
    ``entries >= 3`` one of the request's children named twice with different bids (the smaller
    counts). ``bids``: the values the override bids are drawn from."""
    gen = torch.Generator().manual_seed(seed)
    row_node = case["row_node"].cpu().long()
    child_ptr = case["child_ptr"].cpu().long()
    requests, beams = case["beam_scores"].shape
    total = int(child_ptr[-1])
    choices = torch.tensor(bids, dtype=torch.float32)
    child = torch.full((requests, entries), -1, dtype=torch.int64)
    bid = choices[torch.randint(len(choices), (requests, entries), generator=gen)]
    for n in range(requests):
        nodes = row_node[n * beams : (n + 1) * beams]
        ranges = [torch.arange(int(child_ptr[m]), int(child_ptr[m + 1]))
                  for m in nodes[nodes >= 0].unique().tolist()]
        own = torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.int64)
        for e in range(entries):
            u = float(torch.rand((), generator=gen))
            if u < 0.15 or total == 0:
                continue  # a pad
            pool = own if own.numel() and u >= 0.35 else torch.arange(total)
            child[n, e] = pool[int(torch.randint(pool.numel(), (), generator=gen))]
        if entries >= 3 and own.numel():
            twice = own[int(torch.randint(own.numel(), (), generator=gen))]
            child[n, 0] = child[n, entries - 1] = twice
            bid[n, 0], bid[n, entries - 1] = 6.0, 0.3
    device = case["logits"].device
    return dict(case, override_child=child.to(dtype).to(device), override_bid=bid.to(device))


def beam_inputs(case: dict) -> tuple:
    return (case["logits"], case["beam_scores"], case["row_node"], case["child_ptr"],
            case["child_code"], case["child_max_bid"])


def beam_override(case: dict) -> dict:
    """The case's override as keyword arguments (both None without one). E == 0 is passed as no
    override, which is what the kernels make of it (the reference's amin cannot reduce E == 0)."""
    child, bid = case.get("override_child"), case.get("override_bid")
    if child is None or child.shape[1] == 0:
        return {"override_child": None, "override_bid": None}
    return {"override_child": child, "override_bid": bid}


def beam_reference(case: dict, k: int, alpha: float, log_beta: float):
    return beam_step_torch(*beam_inputs(case), k=k, alpha=alpha, log_beta=log_beta,
                           allowed=case["allowed"], **beam_override(case))


def assert_step_matches(got: tuple, case: dict, k: int, alpha: float, log_beta: float,
                        atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """``got`` = (scores, parent, token, child, logp) of a CUDA beam step against the reference."""
    scores, parent, token, child, logp = (t.cpu() for t in got)
    case = {name: (t.cpu() if t is not None else None) for name, t in case.items()}
    want = beam_reference(case, k, alpha, log_beta)
    requests, beams = case["beam_scores"].shape
    vocab = case["logits"].shape[1]
    for name, t in zip(("scores", "parent", "token", "child", "logp"), (scores, parent, token, child, logp)):
        assert t.shape == (requests, k), name
    assert scores.dtype == logp.dtype == torch.float32
    assert parent.dtype == token.dtype == child.dtype == torch.int64
    assert not torch.isnan(scores).any() and not torch.isnan(logp).any(), "NaN in the result"

    # Same missing entries, filled the same way.
    alive = scores > NEG_INF
    assert torch.equal(alive, want.scores > NEG_INF), "finite counts differ"
    assert torch.equal(parent[~alive], torch.zeros_like(parent[~alive]))
    assert torch.equal(token[~alive], torch.zeros_like(token[~alive]))
    assert torch.equal(child[~alive], torch.full_like(child[~alive], -1))
    assert torch.isneginf(logp[~alive]).all()
    torch.testing.assert_close(scores[alive], want.scores[alive], atol=atol, rtol=rtol)

    # Self-consistency: score = beam score + logp exactly; child is the token's CSR child.
    beam = case["beam_scores"].gather(1, parent)
    assert torch.equal((beam + logp)[alive], scores[alive])
    rows = torch.arange(requests)[:, None] * beams + parent
    node = case["row_node"].long()[rows].clamp(min=0)
    chosen = child.clamp(min=0)
    child_ptr = case["child_ptr"].long()
    assert torch.equal(case["child_code"].long()[chosen][alive], token[alive])
    assert (chosen >= child_ptr[node])[alive].all()
    assert (chosen < child_ptr[node + 1])[alive].all()

    # Exact order of the CUDA result: score desc, then parent asc, then token asc.
    s0, s1 = scores[:, :-1], scores[:, 1:]
    p0, p1, t0, t1 = parent[:, :-1], parent[:, 1:], token[:, :-1], token[:, 1:]
    ordered = (s0 > s1) | ((s0 == s1) & ((p0 < p1) | ((p0 == p1) & (t0 < t1))))
    assert ordered[alive[:, 1:]].all(), "entries are not in (score, parent, token) order"

    # Against the reference: logp at the chosen entry, and the entry itself away from near-ties.
    dense = trie_log_softmax_torch(
        case["logits"], case["row_node"], case["child_ptr"], case["child_code"], case["child_max_bid"],
        alpha=alpha, log_beta=log_beta, allowed=case["allowed"], **beam_override(case),
    ).view(requests, beams * vocab)
    flat = parent * vocab + token
    torch.testing.assert_close(logp[alive], dense.gather(1, flat)[alive], atol=atol, rtol=rtol)
    full = (case["beam_scores"][..., None] + dense.view(requests, beams, vocab)).view(requests, -1)
    full_scores, full_index = torch.sort(full, dim=1, descending=True, stable=True)
    _assert_same_entries(scores, flat, full_scores, full_index, k)


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= max(NEAR_TIE, 1e-6 * max(abs(a), abs(b)))


def _assert_same_entries(got_scores, flat, full_scores, full_index, k: int) -> None:
    """Entry i must be the reference's entry i when its score is not near its neighbours';
    otherwise a member of its near-tie group, in the reference's order when the group is an exact
    tie in both results."""
    for n in range(got_scores.shape[0]):
        ref = full_scores[n].tolist()
        index = full_index[n].tolist()
        for i in range(min(k, len(ref))):
            if ref[i] == NEG_INF:
                break
            lo, hi = i, i
            while lo > 0 and _near(ref[lo - 1], ref[lo]):
                lo -= 1
            while hi + 1 < len(ref) and ref[hi + 1] > NEG_INF and _near(ref[hi], ref[hi + 1]):
                hi += 1
            entry = int(flat[n, i])
            if lo == hi:
                assert entry == index[i], f"request {n} entry {i}: {entry} vs reference {index[i]}"
                continue
            assert entry in index[lo : hi + 1], f"request {n} entry {i}: {entry} not in its tie group"
            exact_tie = len(set(ref[lo : hi + 1])) == 1 and hi < k
            if exact_tie and len(set(got_scores[n, lo : hi + 1].tolist())) == 1:
                assert entry == index[i], f"request {n} entry {i}: tie order {entry} vs {index[i]}"


def token_weight_float64(child_max_bid: torch.Tensor, alpha: float, log_beta: float) -> torch.Tensor:
    """The token weight ``logaddexp(alpha * log(bid), log_beta)`` in float64 (``0`` for the first
    term when alpha == 0), the oracle of the overflow cases."""
    bid = child_max_bid.double()
    a = torch.zeros_like(bid) if alpha == 0 else alpha * torch.log(bid)
    return torch.logaddexp(a, torch.full_like(a, log_beta))


def assert_logp_matches_float64(got: tuple, case: dict, alpha: float, log_beta: float) -> None:
    """The chosen entries' logp against a float64 trie log-softmax of the log-space weights, to a
    float32 rounding of the values' magnitude (huge weights swamp the logits)."""
    scores, parent, token, child, logp = (t.cpu() for t in got)
    case = {name: (t.cpu() if t is not None else None) for name, t in case.items()}
    requests, beams = case["beam_scores"].shape
    alive = scores > NEG_INF
    w = token_weight_float64(case["child_max_bid"], alpha, log_beta)
    row_node = case["row_node"].long()
    child_ptr = case["child_ptr"].long()
    for n in range(requests):
        for i in range(scores.shape[1]):
            if not alive[n, i]:
                continue
            r = n * beams + int(parent[n, i])
            begin, end = int(child_ptr[row_node[r]]), int(child_ptr[row_node[r] + 1])
            codes = case["child_code"][begin:end].long()
            v = case["logits"][r, codes].double() + w[begin:end]
            if case["allowed"] is not None:
                v = torch.where(case["allowed"][r, codes], v, torch.tensor(NEG_INF, dtype=torch.float64))
            lse = torch.logsumexp(v, 0)
            want = float(v[int(child[n, i]) - begin] - lse)
            scale = float(v[v > NEG_INF].abs().max())
            assert abs(float(logp[n, i]) - want) <= 1e-5 + 4 * 2.0**-23 * scale, (n, i, float(logp[n, i]), want)


# --- decode_attention ---------------------------------------------------------------------------


def make_attention_case(n, p, hq, hkv, s, t, d, ctx_len, *, dtype=torch.float32, own: bool = True,
                        seed: int = 0, device="cpu") -> dict:
    """Random inputs of one call; ``own=False`` passes no own positions at all."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "q": torch.randn(n, p, hq, d, generator=gen),
        "ctx_k": torch.randn(n, hkv, s, d, generator=gen),
        "ctx_v": torch.randn(n, hkv, s, d, generator=gen),
        "own_k": torch.randn(n, p, hkv, t, d, generator=gen) if own else None,
        "own_v": torch.randn(n, p, hkv, t, d, generator=gen) if own else None,
    }
    case = {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    case["ctx_len"] = torch.tensor(ctx_len, dtype=torch.int32, device=device)
    return case


def attention_inputs(case: dict) -> tuple:
    return (case["q"], case["ctx_k"], case["ctx_v"], case["ctx_len"], case["own_k"], case["own_v"])


def attention_reference(case: dict, scale: float | None = None, dtype=torch.float32) -> torch.Tensor:
    """The reference on copies of the inputs in ``dtype`` (float32: the tolerance target)."""
    up = {k: v.to(dtype) if v is not None and v.is_floating_point() else v for k, v in case.items()}
    return decode_attention_torch(*attention_inputs(up), scale=scale)


def _low_precision_attention(case: dict, scale: float | None) -> torch.Tensor:
    """A plain attention computed in the inputs' own dtype (scores, softmax, weighted sum), the
    "same-dtype PyTorch" error yardstick of FlashAttention's tests."""
    q, ctx_k, ctx_v, ctx_len, own_k, own_v = (x.cpu() if x is not None else None for x in attention_inputs(case))
    n, p, hq, d = q.shape
    hkv, s = ctx_k.shape[1], ctx_k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(n, p, hq, d, dtype=q.dtype)
    for req in range(n):
        length = max(0, min(int(ctx_len[req]), s))
        for g in range(hkv):
            keys = ctx_k[req, g, :length].expand(p, length, d)
            values = ctx_v[req, g, :length].expand(p, length, d)
            if own_k is not None and own_k.shape[3] > 0:
                keys = torch.cat([keys, own_k[req, :, g]], dim=1)
                values = torch.cat([values, own_v[req, :, g]], dim=1)
            if keys.shape[1] == 0:
                continue
            heads = q[req, :, g * group : (g + 1) * group]  # [P, G, D]
            score = torch.matmul(heads, keys.transpose(1, 2)) * scale
            weight = torch.softmax(score.float(), dim=-1).to(q.dtype)
            out[req, :, g * group : (g + 1) * group] = torch.matmul(weight, values)
    return out


def assert_attention_matches(got: torch.Tensor, case: dict, scale: float | None = None) -> None:
    """Against the float32 reference: the fixed tolerance of the dtype (as the GPU tests use), and
    for bf16 / fp16 also FlashAttention's rule, error <= 2x a same-dtype attention's + 1e-4."""
    q = case["q"]
    assert got.dtype == q.dtype and got.shape == q.shape
    want = attention_reference(case, scale).cpu()
    got = got.float().cpu()
    assert torch.isfinite(got).all(), "non-finite output"
    atol, rtol = ATTENTION_TOLERANCES[q.dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    if q.dtype != torch.float32:
        yardstick = (_low_precision_attention(case, scale).float() - want).abs().max().item()
        error = (got - want).abs().max().item()
        assert error <= 2 * yardstick + 1e-4, f"error {error:.3g} > 2 x same-dtype error {yardstick:.3g}"
