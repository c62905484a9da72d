"""CUDA graphs of everything after the encoder: the decode loop (every level, both modes), the
creative choice, the reward model's list selection and the payments, captured once per (batch
bucket, decode config, catalog) and replayed as one launch.

That stage has fixed shapes and no host synchronisation (see ``decoding/beam_search.py``),
which is what capture needs. A batch of ``n`` requests runs in the smallest bucket ``>= n``:
its encoder memory is copied into the bucket's static buffers (padded to the model's longest
history; spare rows hold an empty history), its organic lists too (cut to ``num_slots``: no
slate can place more), and the first ``n`` rows of the static outputs are returned. The
catalog's device arrays are read in place, so a graph belongs to one catalog: after
``Engine.set_catalog`` the next batch captures again (a new catalog is never served by an old
graph). Only kernel backends are captured; the PyTorch reference path runs eagerly.

``capture=False`` runs the same bucketed, padded function eagerly (on any device): tests use it
on a CPU to check that bucketing and padding change nothing.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..catalog.trie import DeviceTrie
from ..decoding import DecodeConfig

__all__ = ["DecodeGraphs", "BUCKETS"]

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Stage = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class DecodeGraphs:
    def __init__(self, context_width: int, buckets: tuple[int, ...] = BUCKETS, capture: bool = True) -> None:
        self.context_width = context_width  # the encoder's 1 + max_history positions
        self.buckets = tuple(sorted(buckets))
        self.capture = capture
        self._entries: dict[tuple, _Entry] = {}
        self._trie: DeviceTrie | None = None
        self._pool = None
        self.captures = 0
        self.replays = 0

    def supports(self, n: int, config: DecodeConfig, device: torch.device) -> bool:
        if n > self.buckets[-1]:
            return False
        if not self.capture:
            return True
        from ..ops._dispatch import resolve_backend

        return device.type == "cuda" and resolve_backend(config.backend, device, "beam_step") != "torch"

    def run(self, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor, config: DecodeConfig,
            trie: DeviceTrie, stage: Stage) -> dict[str, torch.Tensor]:
        """``stage(memory, mask, organic) -> {name: [N, ...] tensor}`` on the bucket's padded
        inputs; returns the first ``n`` rows of each output."""
        if trie is not self._trie:  # another catalog: its graphs read other arrays
            self._entries.clear()
            self._trie = trie
        n = memory.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        key = (bucket, config)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(memory, organic, bucket, self.context_width, config.num_slots)
            entry.load(memory, mask, organic)
            if self.capture:
                self._capture(entry, stage)
        else:
            entry.load(memory, mask, organic)
        if entry.graph is not None:
            entry.graph.replay()
            self.replays += 1
        else:
            entry.out = stage(*entry.inputs)
        return {name: t[:n] for name, t in entry.out.items()}

    def _capture(self, entry: _Entry, stage: Stage) -> None:
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

    def __init__(self, memory: torch.Tensor, organic: torch.Tensor, bucket: int, width: int, slots: int) -> None:
        self.memory = memory.new_zeros(bucket, width, memory.shape[-1])
        self.mask = torch.zeros(bucket, width, dtype=torch.bool, device=memory.device)
        self.mask[:, 0] = True  # spare rows: an empty history still has the user token
        self.organic = torch.full((bucket, slots), -1, dtype=organic.dtype, device=organic.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: dict[str, torch.Tensor] = {}

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.memory, self.mask, self.organic

    def load(self, memory: torch.Tensor, mask: torch.Tensor, organic: torch.Tensor) -> None:
        n, s = mask.shape
        self.memory[:n].zero_()
        self.memory[:n, :s].copy_(memory)
        self.mask[:n].zero_()
        self.mask[:n, :s].copy_(mask)
        m = min(organic.shape[1], self.organic.shape[1])
        self.organic[:n].fill_(-1)
        self.organic[:n, :m].copy_(organic[:, :m])
