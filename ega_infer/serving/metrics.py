"""Prometheus metrics of the HTTP server (prometheus-client, one registry per app).

Counted from every response: slates by status, per-stage latency, queue latency, beam schedules
served, cache hits, HTTP responses by route and code. Read from the backend at each scrape:
queue depth, batch sizes, catalog and model versions.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import HistogramMetricFamily

from ..slate import Slate
from .server import is_deadline_error

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.slates = Counter("ega_slates", "Slates answered, by status (ok, error, deadline)", ["status"], registry=r)
        self.http = Counter("ega_http_responses", "HTTP responses by route and status code", ["route", "code"],
                            registry=r)
        self.http_latency = Histogram("ega_http_request_duration_seconds", "HTTP request wall time", ["route"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("ega_stage_latency_seconds", "Per-stage latency of the batch a slate was served in",
                               ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("ega_queue_latency_seconds", "Time a request waited for its batch",
                               buckets=_LATENCY_BUCKETS, registry=r)
        self.schedule = Counter("ega_beam_schedule_slates", "Slates served per beam schedule", ["schedule"],
                                registry=r)
        self.cache_hits = Counter("ega_cache_hits", "Slates answered from the result cache", registry=r)
        self.catalog = Info("ega_catalog", "The catalog serving new batches", registry=r)
        self.model = Info("ega_model", "The weights serving new batches", registry=r)
        self._depth = Gauge("ega_queue_depth", "Requests waiting for a batch", registry=r)
        self._stats = stats
        r.register(_BatchSizes(stats))

    def observe(self, slates: list[Slate]) -> None:
        """Count the slates of one response."""
        for slate in slates:
            status = "ok" if slate.ok else ("deadline" if is_deadline_error(slate) else "error")
            self.slates.labels(status).inc()
            if slate.cache_hit:
                self.cache_hits.inc()
            if not slate.ok:
                continue
            self.queue.observe(slate.queue_ms / 1e3)
            if slate.beam_schedule:
                self.schedule.labels("-".join(map(str, slate.beam_schedule))).inc()
            if not slate.cache_hit:
                for stage, ms in slate.latency_ms.items():
                    self.stage.labels(stage).observe(ms / 1e3)

    def render(self) -> bytes:
        stats = self._stats()
        self._depth.set(stats.get("queue_depth", 0))
        self.catalog.info({"version": str(stats.get("catalog_version", ""))})
        self.model.info({"version": str(stats.get("model_version", ""))})
        return generate_latest(self.registry)


class _BatchSizes:
    """``ega_batch_size``: the sizes of the batches the server ran, from its counts."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def describe(self):
        return [HistogramMetricFamily("ega_batch_size", "Requests per batch the engine ran")]

    def collect(self):
        sizes = self._stats().get("batch_sizes") or {}
        edges = (1, 2, 4, 8, 16, 32, 64, 128, 256)
        buckets = [(str(edge), sum(c for s, c in sizes.items() if s <= edge)) for edge in edges]
        buckets.append(("+Inf", sum(sizes.values())))
        total = float(sum(s * c for s, c in sizes.items()))
        yield HistogramMetricFamily("ega_batch_size", "Requests per batch the engine ran", buckets=buckets,
                                    sum_value=total)
