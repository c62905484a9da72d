"""CUDA graphs of everything after the encoder (``pipeline.decode_to_payments``): the decode
loop (every level, both modes), the creative choice, the reward model's list selection and the
payments, captured once per (batch bucket, decode spec, op backends) and replayed as one launch.

That stage has fixed shapes and no host synchronisation, which is what capture needs. A batch
of ``n`` requests runs in the smallest bucket ``>= n``: its encoder memory is copied into the
bucket's static buffers (padded to the model's longest history; spare rows hold an empty
history), its organic lists too (cut to ``num_slots``: no slate can place more), and the first
``n`` rows of the static outputs are returned. The catalog's device arrays are read in place,
so a graph belongs to one catalog: after ``Engine.set_catalog`` the next batch captures again
(a new catalog is never served by an old graph). A batch's exclusion lists are padded to the
next power of two (a graph per width; none without exclusions). The key holds only what the
graph depends on: the engine's load-control and reporting knobs (``DecodeConfig.fallback_beams``,
``latency_target_ms``, ``num_candidates``) never capture a new graph.

``capture=False`` runs the same bucketed, padded function eagerly (on any device): tests use it
on a CPU to check that bucketing and padding change nothing.
"""

from __future__ import annotations

import torch

from ..auction.lists import CandidateLists
from ..catalog.device import DeviceCatalog
from ..decoding import DecodeSpec
from ..model import GenerativeAdModel
from ..ops import OpBackends
from ..pipeline import decode_to_payments

__all__ = ["DecodeGraphs", "BUCKETS"]

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DecodeGraphs:
    def __init__(self, context_width: int, buckets: tuple[int, ...] = BUCKETS, capture: bool = True) -> None:
        self.context_width = context_width  # the encoder's 1 + max_history positions
        self.buckets = tuple(sorted(buckets))
        self.capture = capture
        self._entries: dict[tuple, _Entry] = {}
        self._catalog: DeviceCatalog | None = None
        self._pool = None
        self.captures = 0
        self.replays = 0

    def supports(self, n: int, backends: OpBackends) -> bool:
        """Whether a batch of ``n`` runs here: it fits a bucket, and (when capturing) its ops
        run on kernel backends (the PyTorch reference path syncs by design and runs eagerly)."""
        return n <= self.buckets[-1] and (not self.capture or backends.kernels)

    def run(self, model: GenerativeAdModel, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
            spec: DecodeSpec, backends: OpBackends, catalog: DeviceCatalog,
            exclude: torch.Tensor | None = None) -> CandidateLists:
        """``decode_to_payments`` on the bucket's padded inputs; returns the first ``n`` rows,
        copied out of the static buffers (the next replay overwrites them). Not thread-safe:
        the caller runs one batch at a time."""
        if catalog is not self._catalog:  # another catalog: its graphs read other arrays
            self._entries.clear()
            self._catalog = catalog
        n = memory.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        width = 0 if exclude is None else 1 << max(exclude.shape[1] - 1, 0).bit_length()
        key = (bucket, width, spec, backends)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(memory, organic, bucket, self.context_width, spec.num_slots, width)
        entry.load(memory, mask, organic, exclude)

        def stage(memory, mask, organic, exclude=None):
            return decode_to_payments(model, memory, mask, organic, spec, backends, catalog, exclude=exclude).tensors()

        if entry.graph is None and self.capture:
            self._capture(entry, stage)
        if entry.graph is not None:
            entry.graph.replay()
            self.replays += 1
        else:
            entry.out = stage(*entry.inputs)
        return CandidateLists(weights=spec.list_score, **{name: t[:n].clone() for name, t in entry.out.items()})

    def _capture(self, entry: _Entry, stage) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: compiles kernels, sets up libraries
            stage(*entry.inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        entry.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(entry.graph, pool=self._pool):
            entry.out = stage(*entry.inputs)
        self.captures += 1


class _Entry:
    """A bucket's static inputs, its graph (None when not capturing) and its static outputs."""

    def __init__(self, memory: torch.Tensor, organic: torch.Tensor, bucket: int, width: int, slots: int,
                 excluded: int) -> None:
        self.memory = memory.new_zeros(bucket, width, memory.shape[-1])
        self.mask = torch.zeros(bucket, width, dtype=torch.bool, device=memory.device)
        self.mask[:, 0] = True  # spare rows: an empty history still has the user token
        self.organic = torch.full((bucket, slots), -1, dtype=organic.dtype, device=organic.device)
        self.exclude = (torch.full((bucket, excluded), -1, dtype=torch.long, device=organic.device)
                        if excluded else None)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: dict[str, torch.Tensor] = {}

    @property
    def inputs(self) -> tuple:
        return (self.memory, self.mask, self.organic) + ((self.exclude,) if self.exclude is not None else ())

    def load(self, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor,
             exclude: torch.Tensor | None) -> None:
        n, s = mask.shape
        self.memory[:n].zero_()
        self.memory[:n, :s].copy_(memory)
        self.mask[:n].zero_()
        self.mask[:n, :s].copy_(mask)
        m = min(organic.shape[1], self.organic.shape[1])
        self.organic[:n].fill_(-1)
        self.organic[:n, :m].copy_(organic[:, :m])
        if self.exclude is not None:
            self.exclude.fill_(-1)
            self.exclude[:n, : exclude.shape[1]].copy_(exclude)
