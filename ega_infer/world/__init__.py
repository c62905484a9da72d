"""The synthetic advertising world: the embedded default's training data and evaluation bench."""

from .semantic_ids import residual_kmeans
from .world import AdWorld, WorldConfig, feedback

__all__ = ["AdWorld", "WorldConfig", "feedback", "residual_kmeans"]
