"""The decoder loop: constrained beam search in candidates and lists modes."""

from .beam_search import beam_search
from .config import PRICING, DecodeConfig, DecodeSpec, ListScore
from .overrides import ItemOverrides

__all__ = ["beam_search", "DecodeConfig", "DecodeSpec", "ListScore", "ItemOverrides", "PRICING"]
