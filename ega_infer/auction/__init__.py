"""Auction references and incentive measurements: GSP and VCG position auctions, and the
offline ex-post regret evaluator."""

from .position import PositionOutcome, position_auction
from .regret import EGA_GAMMAS, Mechanism, MisreportSearch, RegretReport, ex_post_regret, find_misreports

__all__ = ["PositionOutcome", "position_auction", "EGA_GAMMAS", "Mechanism", "RegretReport", "MisreportSearch", "ex_post_regret", "find_misreports"]
