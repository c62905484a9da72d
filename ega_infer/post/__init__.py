"""Stages after decoding, each filling its fields of the batch's ``CandidateLists``: creative
choice, reward-model scoring, payments."""

from .creatives import choose_creatives
from .pricing import network_prices
from .reward import score_lists

__all__ = ["choose_creatives", "score_lists", "network_prices"]
