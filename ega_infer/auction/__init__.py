"""Auction references and incentive measurements: GSP and VCG position auctions, and the
offline ex-post regret evaluator."""

from .position import PositionOutcome, position_auction
from .regret import EGA_GAMMAS, Mechanism, RegretReport, ex_post_regret

__all__ = ["PositionOutcome", "position_auction", "EGA_GAMMAS", "Mechanism", "RegretReport", "ex_post_regret"]
