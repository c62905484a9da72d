"""The decoder loop: constrained beam search in candidates and lists modes."""

from .beam_search import beam_search
from .config import DecodeConfig, DecodeSpec, ListScore

__all__ = ["beam_search", "DecodeConfig", "DecodeSpec", "ListScore"]
