"""Serving around the engine: dynamic beam schedules, decode-stage CUDA graphs, one-copy
host-device transfers, and the end-to-end benchmark."""

from .controller import BeamController

__all__ = ["BeamController"]
