"""What the HTTP layer serves from: one in-process ``Server`` (``LocalBackend``) or Ray Serve
replicas (``ray_serve.RayBackend``), behind the same few calls."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Protocol, Sequence

from ..catalog import Catalog
from ..decoding import DecodeConfig
from ..request import Request
from ..slate import Slate
from .server import Server

__all__ = ["Backend", "LocalBackend"]


class Backend(Protocol):
    default_config: DecodeConfig
    max_batch_size: int

    async def slates(self, requests: Sequence[Request], config: DecodeConfig,
                     deadline_ms: float | None) -> list[Slate]: ...

    def ready(self) -> tuple[bool, dict]: ...

    def stats(self) -> dict: ...

    def retry_after_s(self) -> int: ...

    def catalog(self) -> Catalog | None: ...

    def set_catalog(self, catalog: Catalog) -> str: ...

    def set_weights(self, path: Path) -> str: ...


class LocalBackend:
    """A ``Server`` in this process. ``warm()`` (run once before traffic) compiles and captures
    what the default config needs; ``/ready`` says ready only after it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.engine = server.engine
        self.default_config = server.engine.default_config
        self.max_batch_size = server.max_batch_size
        self.warmed = False
        self.warmup_error: str | None = None

    def warm(self) -> None:
        try:
            self.engine.warmup(self.default_config)
            self.warmed = True
        except Exception as exc:  # noqa: BLE001 - reported by /ready, never a crash
            self.warmup_error = f"{type(exc).__name__}: {exc}"

    async def slates(self, requests: Sequence[Request], config: DecodeConfig,
                     deadline_ms: float | None) -> list[Slate]:
        futures = self.server.submit_many(requests, config, deadline_ms)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def ready(self) -> tuple[bool, dict]:
        engine = self.engine
        checks = {"weights": True, "catalog": engine.catalog is not None, "warmed_up": self.warmed}
        detail = {**checks, "catalog_version": engine.catalog_version, "model_version": engine.model_version}
        if self.warmup_error:
            detail["warmup_error"] = self.warmup_error
        return all(checks.values()), detail

    def stats(self) -> dict:
        stats = self.server.stats()
        return {**stats, "catalog_version": self.engine.catalog_version, "model_version": self.engine.model_version}

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained at the recent batch rate (at least 1)."""
        schedules = self.engine.beam_controller.stats().values()
        p50 = max((s["p50_ms"] for s in schedules), default=100.0)
        batches = self.server.queue_depth / max(self.max_batch_size, 1) + 1
        return max(1, math.ceil(batches * p50 / 1e3))

    def catalog(self) -> Catalog | None:
        return self.engine.catalog

    def set_catalog(self, catalog: Catalog) -> str:
        return self.engine.set_catalog(catalog)

    def set_weights(self, path: Path) -> str:
        return self.engine.set_weights(path)

    def close(self) -> None:
        self.server.close()
