"""GSP/VCG position auctions and the regret evaluator against closed forms
(../shared/research/oracles.md section 4)."""

import math

import pytest
import torch

from ega_infer.auction import ex_post_regret, position_auction


def _expected_revenue(n, alpha, mechanism, samples=200_000):
    values = torch.rand(samples, n, dtype=torch.float64)
    out = position_auction(values, torch.tensor(alpha, dtype=torch.float64), mechanism=mechanism)
    return float(out.expected_payment.sum(1).mean()), 3 * float(out.expected_payment.sum(1).std()) / math.sqrt(samples)


def test_textbook_example_prices():
    # values (10, 4, 2), alpha = (1, 0.9): VCG pays (2.2, 1.8) in total, GSP (4.0, 1.8)
    bids = torch.tensor([[10.0, 4.0, 2.0]], dtype=torch.float64)
    alpha = torch.tensor([1.0, 0.9], dtype=torch.float64)
    vcg = position_auction(bids, alpha, mechanism="vcg")
    gsp = position_auction(bids, alpha, mechanism="gsp")
    assert vcg.slot.tolist() == [[0, 1, -1]] and gsp.slot.tolist() == [[0, 1, -1]]
    torch.testing.assert_close(vcg.expected_payment, torch.tensor([[2.2, 1.8, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(gsp.expected_payment, torch.tensor([[4.0, 1.8, 0.0]], dtype=torch.float64))


def test_quality_scores_rank_and_price():
    bids = torch.tensor([[4.0, 3.0, 1.0]], dtype=torch.float64)
    quality = torch.tensor([[0.5, 1.0, 1.0]], dtype=torch.float64)  # scores 2, 3, 1
    gsp = position_auction(bids, torch.tensor([1.0, 0.5], dtype=torch.float64), quality, "gsp")
    assert gsp.slot.tolist() == [[1, 0, -1]]
    # bidder 1 pays s_2 / q_1 = 2 / 1; bidder 0 pays s_3 / q_0 = 1 / 0.5
    torch.testing.assert_close(gsp.price, torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(gsp.click_prob, torch.tensor([[0.25, 1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("n,alpha,vcg,gsp", [(3, (1.0, 0.5), 0.5, 0.625), (5, (1.0, 0.6, 0.3), 0.86667, 1.06667)])
def test_expected_revenue_closed_forms(n, alpha, vcg, gsp):
    for mechanism, expected in (("vcg", vcg), ("gsp", gsp)):
        got, err = _expected_revenue(n, alpha, mechanism)
        assert abs(got - expected) < err + 1e-3, (mechanism, got, expected)


def test_prices_never_exceed_bids_and_losers_pay_nothing():
    bids = torch.rand(500, 7) * torch.randint(0, 2, (500, 7))
    quality = torch.rand(500, 7) + 0.05
    for mechanism in ("gsp", "vcg"):
        out = position_auction(bids, torch.tensor([1.0, 0.7, 0.4, 0.2]), quality, mechanism)
        assert torch.all(out.price <= bids + 1e-6) and torch.all(out.price >= 0)
        assert torch.all(out.price[out.slot < 0] == 0) and torch.all(out.slot[bids == 0] == -1)
        assert torch.all(out.price <= position_auction(bids, torch.tensor([1.0, 0.7, 0.4, 0.2]), quality, "gsp").price + 1e-6)


# -- regret ---------------------------------------------------------------------------------

def _first_price(bids):
    win = torch.nn.functional.one_hot(bids.argmax(-1), bids.shape[-1]).to(bids.dtype)
    return bids * win, win


def _second_price(bids):
    win = torch.nn.functional.one_hot(bids.argmax(-1), bids.shape[-1]).to(bids.dtype)
    second = bids.topk(2, dim=-1).values[..., 1:2]
    return second.expand_as(bids) * win, win


@pytest.mark.parametrize("n", [2, 3])
def test_first_price_regret_is_one_over_n_n_plus_one(n):
    samples = 4000
    values = torch.rand(samples, n, dtype=torch.float64)
    report = ex_post_regret(_first_price, values, ascent_steps=300, lr=0.02)
    exact = 1 / (n * (n + 1))
    per_bidder = report.ascent.mean(0)
    err = 3 * float(report.ascent.std()) / math.sqrt(samples * n)
    assert abs(float(per_bidder.mean()) - exact) < err + 0.01 * exact
    # the coarse EGA grid finds only part of it (0.1331 of 1/6 for n = 2)
    assert report.mean_regret("grid") < 0.85 * exact
    if n == 2:
        assert abs(report.mean_regret("grid") - 0.1331) < 0.01


def _position(alpha, kind):
    alpha = torch.tensor(alpha, dtype=torch.float64)

    def mechanism(bids):
        out = position_auction(bids.reshape(-1, bids.shape[-1]), alpha, mechanism=kind)
        return out.price.reshape(bids.shape), out.click_prob.reshape(bids.shape)

    return mechanism


def test_truthful_mechanisms_have_no_regret():
    values = torch.rand(2000, 3, dtype=torch.float64)
    assert ex_post_regret(_second_price, values).mean_regret() < 1e-9
    assert ex_post_regret(_position((1.0, 0.5), "vcg"), values, ascent_steps=50).mean_regret() < 1e-9


def test_gsp_regret():
    # the deterministic example: bidder 1 shades below 4, takes slot 2 and gains 1.2
    eos = torch.tensor([[10.0, 4.0, 2.0]], dtype=torch.float64)
    report = ex_post_regret(_position((1.0, 0.9), "gsp"), eos, ascent_steps=0)
    assert report.grid[0].tolist() == pytest.approx([1.2, 0.0, 0.0])
    # 2 bidders U[0,1], alpha = (1, 0.5): expected regret 1/24 per bidder, all of it on the grid
    samples = 20000
    values = torch.rand(samples, 2, dtype=torch.float64)
    report = ex_post_regret(_position((1.0, 0.5), "gsp"), values, ascent_steps=0)
    err = 3 * float(report.grid.std()) / math.sqrt(samples * 2)
    assert abs(report.mean_regret("grid") - 1 / 24) < err + 1e-3


def test_psi_is_mean_summed_relative_regret():
    values = torch.tensor([[1.0, 0.5], [0.8, 0.2]], dtype=torch.float64)
    report = ex_post_regret(_second_price, values, ascent_steps=0)
    assert report.psi() == 0.0
    report.grid = torch.tensor([[0.1, 0.0], [0.0, 0.0]], dtype=torch.float64)
    report.utility = torch.tensor([[0.5, 0.0], [0.6, 0.0]], dtype=torch.float64)
    assert report.psi("grid") == pytest.approx((0.1 / 0.5 + 0.0) / 2)
    # a bidder paying (nearly) its whole value is left out rather than dividing by ~0
    report.utility = torch.tensor([[0.5, 0.001], [0.6, 0.0]], dtype=torch.float64)
    report.grid = torch.tensor([[0.1, 0.3], [0.0, 0.0]], dtype=torch.float64)
    report.surplus = torch.tensor([[1.0, 0.5], [0.8, 0.0]], dtype=torch.float64)
    assert report.psi("grid") == pytest.approx((0.1 / 0.5 + 0.0) / 2)
