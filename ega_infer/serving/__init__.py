"""Serving policy around the engine: dynamic beam schedules and the end-to-end benchmark."""

from .controller import BeamController

__all__ = ["BeamController"]
