"""Stages after decoding: creative choice, reward-model list selection, payments."""

from .creatives import choose_creatives
from .pricing import network_pricing, price_slates
from .selection import ScoredLists, score_lists

__all__ = ["choose_creatives", "score_lists", "ScoredLists", "price_slates", "network_pricing"]
