"""GSP and VCG over the beam lists: second price in the one-slot case, and VCG is truthful for
the selection stage while GSP is not."""

import torch

from ega_infer.auction import ex_post_regret
from ega_infer import ListScore
from ega_infer.auction.lists import CandidateLists, list_gsp_prices, list_vcg_prices, selection_mechanism


def _lists(bids, pctr, is_ad, items, base):
    """Lists whose welfare is ``sum_ads bid * pctr + base`` (the bid-free part carried by the
    creative pCTRs under a creative_ctr weight of 1)."""
    n, num_lists, k = items.shape
    probs = torch.stack([pctr, (base / k)[..., None].expand(n, num_lists, k), torch.zeros_like(pctr)], dim=-1)
    return CandidateLists(items=items, is_ad=is_ad, bids=bids, alive=torch.ones(n, num_lists, dtype=torch.bool),
                          probs=probs, weights=ListScore(revenue=1.0, creative_ctr=1.0)).select()


def _random_lists(n=64, lists=6, k=3, pool=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.stack([torch.stack([torch.randperm(pool, generator=g)[:k] for _ in range(lists)]) for _ in range(n)])
    item_bid = torch.rand(n, pool, generator=g, dtype=torch.float64) * 3
    item_ad = torch.rand(n, pool, generator=g) < 0.7
    rows = torch.arange(n)[:, None, None]
    is_ad = item_ad[rows, items]
    bids = torch.where(is_ad, item_bid[rows, items], 0.0)
    pctr = torch.rand(n, lists, k, generator=g, dtype=torch.float64) * 0.5 + 0.05
    base = torch.rand(n, lists, generator=g, dtype=torch.float64) * 0.1
    return _lists(bids, pctr, is_ad, items, base)


def test_one_slot_lists_are_a_second_price_auction():
    bids = torch.tensor([[[3.0], [5.0], [2.0]]], dtype=torch.float64)
    pctr = torch.tensor([[[0.5], [0.2], [0.4]]], dtype=torch.float64)  # scores 1.5, 1.0, 0.8
    lists = _lists(bids, pctr, torch.ones(1, 3, 1, dtype=torch.bool), torch.tensor([[[0], [1], [2]]]),
                   torch.zeros(1, 3, dtype=torch.float64))
    winner = lists.winner
    assert winner.tolist() == [0]
    expected = torch.tensor([[1.0 / 0.5]], dtype=torch.float64)
    torch.testing.assert_close(list_vcg_prices(lists, winner), expected)
    torch.testing.assert_close(list_gsp_prices(lists, winner), expected)


def test_prices_within_bids_and_zero_for_organic():
    lists = _random_lists()
    winner = lists.winner
    for pricing in (list_vcg_prices, list_gsp_prices):
        price = pricing(lists, winner)
        bids = lists.at(lists.bids, winner)
        assert torch.all(price >= 0) and torch.all(price <= bids + 1e-12)
        assert torch.all(price[~lists.at(lists.is_ad, winner)] == 0)


def test_vcg_is_truthful_for_the_selection_stage_and_gsp_is_not():
    lists = _random_lists(n=128, seed=3)
    winner = lists.winner
    values = lists.at(lists.bids, winner)
    bidders = lists.at(lists.is_ad, winner)
    vcg = ex_post_regret(selection_mechanism(lists, list_vcg_prices), values, bidders, ascent_steps=0)
    gsp = ex_post_regret(selection_mechanism(lists, list_gsp_prices), values, bidders, ascent_steps=0)
    assert vcg.grid.max() < 1e-9
    assert gsp.grid.max() > 1e-3
    # the mechanism reproduces the truthful outcome at the truthful bids
    price, ctr = selection_mechanism(lists, list_vcg_prices)(values[None])
    torch.testing.assert_close(price[0], list_vcg_prices(lists, winner))
    torch.testing.assert_close(ctr[0], lists.at(lists.pctr, winner))
