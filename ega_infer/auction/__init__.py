"""Auction references and incentive measurements: GSP and VCG position auctions, and the
offline ex-post regret evaluator."""

from .lists import CandidateLists, list_gsp_prices, list_vcg_prices, selection_mechanism
from .position import PositionOutcome, position_auction
from .regret import EGA_GAMMAS, Mechanism, MisreportSearch, RegretReport, ex_post_regret, find_misreports

__all__ = [
    "CandidateLists", "list_gsp_prices", "list_vcg_prices", "selection_mechanism",
    "PositionOutcome", "position_auction",
    "EGA_GAMMAS", "Mechanism", "RegretReport", "MisreportSearch", "ex_post_regret", "find_misreports",
]
