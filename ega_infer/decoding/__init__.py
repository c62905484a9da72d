"""The decoder loop: constrained beam search in candidates and lists modes."""

from .beam_search import BeamResult, beam_search
from .config import DecodeConfig, ListScore
from .topk import full_topk, two_stage_topk

__all__ = ["BeamResult", "beam_search", "DecodeConfig", "ListScore", "two_stage_topk", "full_topk"]
