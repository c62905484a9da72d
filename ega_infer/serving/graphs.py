"""CUDA graphs of the decode stage: captured once per (batch bucket, decode config, catalog)
and replayed, so a batch's whole beam search (every level, both modes) costs one launch.

The decode loop has fixed shapes and no host synchronisation (see ``decoding/beam_search.py``),
which is what capture needs. A batch of ``n`` requests runs in the smallest bucket ``>= n``:
its inputs are copied into the bucket's static buffers (context keys/values padded to the
model's longest history, organic lists to ``num_slots``, spare rows with an empty history) and
the first ``n`` rows of the static outputs are returned. The catalog's device trie is read by
the graph in place, so a graph belongs to one catalog: ``Engine.set_catalog`` makes the next
batch capture again (a new catalog is never served by an old graph). Only kernel backends are
captured; the PyTorch reference path (``backend="torch"``) always runs eagerly.
"""

from __future__ import annotations

import torch

from ..catalog.trie import DeviceTrie
from ..decoding import BeamResult, DecodeConfig, beam_search
from ..model.decoder import DecoderContext, LazyARDecoder

__all__ = ["DecodeGraphs", "BUCKETS"]

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DecodeGraphs:
    def __init__(self, decoder: LazyARDecoder, context_width: int, buckets: tuple[int, ...] = BUCKETS) -> None:
        self.decoder = decoder
        self.context_width = context_width  # the encoder's 1 + max_history positions
        self.buckets = tuple(sorted(buckets))
        self._graphs: dict[tuple, _Captured] = {}
        self._trie: DeviceTrie | None = None
        self._pool = None
        self.captures = 0
        self.replays = 0

    def supports(self, n: int, config: DecodeConfig, device: torch.device) -> bool:
        from ..ops._dispatch import resolve_backend

        return (device.type == "cuda" and n <= self.buckets[-1]
                and resolve_backend(config.backend, device, "beam_step") != "torch")

    def run(self, ctx: DecoderContext, trie: DeviceTrie, is_ad: torch.Tensor, config: DecodeConfig,
            organic: torch.Tensor) -> BeamResult:
        if trie is not self._trie:  # another catalog: its graphs read other arrays
            self._graphs.clear()
            self._trie = trie
        n = ctx.mask.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        key = (bucket, config)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(ctx, trie, is_ad, config, organic, bucket)
        captured.load(ctx, organic)
        captured.graph.replay()
        self.replays += 1
        out = captured.out
        return BeamResult(*(t[:n] for t in (out.scores, out.items, out.poi_codes, out.log_alloc, out.hidden)))

    def _capture(self, ctx, trie, is_ad, config, organic, bucket) -> _Captured:
        captured = _Captured.allocate(ctx, organic, bucket, self.context_width, config.num_slots)
        captured.load(ctx, organic)
        run = lambda: beam_search(self.decoder, captured.ctx, trie, is_ad, config, captured.organic)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: compiles kernels, sets up libraries
            run()
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        captured.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured.graph, pool=self._pool):
            captured.out = run()
        self.captures += 1
        return captured


class _Captured:
    """Static input buffers, the graph and its static outputs."""

    ctx: DecoderContext
    organic: torch.Tensor
    graph: torch.cuda.CUDAGraph
    out: BeamResult

    @classmethod
    def allocate(cls, ctx: DecoderContext, organic: torch.Tensor, bucket: int, width: int, slots: int) -> _Captured:
        self = cls()

        def padded(t: torch.Tensor) -> torch.Tensor:  # [N, Hkv, S, hd] -> [bucket, Hkv, width, hd]
            return t.new_zeros(bucket, t.shape[1], width, t.shape[3])

        mask = torch.zeros(bucket, 1, 1, width, dtype=torch.bool, device=ctx.mask.device)
        mask[..., 0] = True  # spare rows: an empty history still has the user token
        self.ctx = DecoderContext([padded(k) for k in ctx.keys], [padded(v) for v in ctx.values], mask,
                                  torch.ones(bucket, dtype=ctx.lengths.dtype, device=ctx.lengths.device))
        self.organic = torch.full((bucket, slots), -1, dtype=organic.dtype, device=organic.device)
        return self

    def load(self, ctx: DecoderContext, organic: torch.Tensor) -> None:
        n, s = ctx.mask.shape[0], ctx.mask.shape[-1]
        for static, new in zip(self.ctx.keys + self.ctx.values, ctx.keys + ctx.values):
            static[:n].zero_()
            static[:n, :, :s].copy_(new)
        self.ctx.mask[:n].zero_()
        self.ctx.mask[:n, ..., :s].copy_(ctx.mask)
        self.ctx.lengths[:n].copy_(ctx.lengths)
        m = min(organic.shape[1], self.organic.shape[1])  # at most num_slots organic items can be placed
        self.organic[:n].fill_(-1)
        self.organic[:n, :m].copy_(organic[:, :m])
