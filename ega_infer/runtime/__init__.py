"""The engine's own runtime pieces, below it: the load-aware beam controller (dynamic beam
serving), the CUDA graphs of the post-encode stage, and the one-copy host-device transfers."""

from .controller import BeamController
from .graphs import BUCKETS, DecodeGraphs
from .transfer import to_device, to_host

__all__ = ["BeamController", "DecodeGraphs", "BUCKETS", "to_device", "to_host"]
