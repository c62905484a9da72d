"""Dynamic beam serving: a load-aware choice among a config's beam schedules.

A config lists schedules widest first (``DecodeConfig.schedules()``: ``beams`` then
``fallback_beams``; for example 128 -> 256 -> 512, then 64 -> 128 -> 256, then 32 -> 64 -> 128).
For each batch the controller starts from the widest and moves narrower

* one step per batch already waiting behind this one (``queue_depth / batch size``), so a
  backlog drains on cheaper decodes; and
* while the schedule's recent p99 batch latency (the last ``window`` batches served with it)
  exceeds ``latency_target_ms``.

It returns to wider schedules as soon as the queue and the latencies allow. Each choice and
each served batch's latency is recorded; ``stats()`` reports them per schedule.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from ..decoding.config import DecodeConfig

__all__ = ["BeamController"]

Schedule = tuple[int, ...]


class BeamController:
    def __init__(self, window: int = 64) -> None:
        self.window = window
        self._latency: dict[Schedule, deque[float]] = {}
        self._batches: dict[Schedule, int] = {}
        self._requests: dict[Schedule, int] = {}
        self._lock = threading.Lock()

    def choose(self, config: DecodeConfig, batch_size: int, queue_depth: int = 0) -> Schedule:
        options = config.schedules()
        index = min(len(options) - 1, max(queue_depth, 0) // max(batch_size, 1))
        if config.latency_target_ms is not None:
            with self._lock:
                while index < len(options) - 1 and self._p99(options[index]) > config.latency_target_ms:
                    index += 1
        return options[index]

    def record(self, schedule: Schedule, batch_size: int, latency_ms: float) -> None:
        with self._lock:
            self._latency.setdefault(schedule, deque(maxlen=self.window)).append(latency_ms)
            self._batches[schedule] = self._batches.get(schedule, 0) + 1
            self._requests[schedule] = self._requests.get(schedule, 0) + batch_size

    def stats(self) -> dict[str, dict[str, float]]:
        """Per schedule (``"128-256-512"``): batches and requests served, p50/p99 batch latency
        over the recent window."""
        with self._lock:
            return {
                "-".join(map(str, s)): {
                    "batches": self._batches[s], "requests": self._requests[s],
                    "p50_ms": float(np.percentile(list(self._latency[s]), 50)),
                    "p99_ms": float(np.percentile(list(self._latency[s]), 99)),
                }
                for s in self._batches
            }

    def _p99(self, schedule: Schedule) -> float:
        recent = self._latency.get(schedule)
        return float(np.percentile(list(recent), 99)) if recent else 0.0  # unseen: try it
