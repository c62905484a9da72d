"""Stages after decoding: creative choice, reward-model list selection, payments."""

from .creatives import choose_creatives
from .pricing import network_pricing
from .selection import ScoredLists, score_lists

__all__ = ["choose_creatives", "score_lists", "ScoredLists", "network_pricing"]
