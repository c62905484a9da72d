"""The in-process server: requests from many threads (or an event loop) merged into batches
for one engine.

``submit`` queues a request and returns a ``Future[Slate]`` at once; one dispatcher thread owns
the engine and serves the queue in batches of requests with an equal ``DecodeConfig``:

* a request arriving when the engine has been idle for ``max_wait_ms`` (no batch running or
  just ended) is dispatched at once: at low load nothing waits;
* otherwise requests accumulate. A batch is released as soon as it fills ``max_batch_size``,
  or when it fills a preferred size (default: the CUDA-graph buckets) and, at the arrival rate
  seen recently, the next preferred size would not fill before the oldest request has waited
  ``max_wait_ms``; and at the latest when the oldest request has waited ``max_wait_ms``
  (counted from when the engine freed up, for a request queued behind a running batch: the
  callers that batch answers come back within moments and join the next one).

A body of requests given to ``submit_many`` stays in one batch. The queue depth behind a batch
drives the engine's load-aware beam controller. Admission is bounded: past ``max_queue``
waiting requests ``submit`` raises ``QueueFullError`` at once (backpressure). A request past its
deadline (``deadline_ms``, or the server's default) is answered with a deadline-error slate,
when its batch would start or when it finishes late. A bad request fails alone (the engine's
per-request validation); an engine failure fails only its batch, as error slates. Slates are
``Engine.generate``'s, with ``queue_ms`` (time queued) and ``cache_hit`` filled.

torch's intra-op thread count is process-wide: pass ``torch_threads`` (on a 2-core machine an
oversubscribed pool was measured 50x slower), or set it before starting the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable, Sequence

import torch

from ..decoding import DecodeConfig
from ..engine import Engine
from ..exceptions import ConfigError, QueueFullError, ServerClosedError
from ..request import Request
from ..runtime.graphs import BUCKETS
from ..slate import Slate
from .cache import ResultCache

__all__ = ["Server", "ServerOptions", "DEADLINE_ERROR", "is_deadline_error"]

log = logging.getLogger(__name__)

DEADLINE_ERROR = "deadline_ms"  # the field a deadline-error slate names first
MAX_DEADLINE_MS = 3_600_000.0


def is_deadline_error(slate: Slate) -> bool:
    return slate.error is not None and slate.error.startswith(DEADLINE_ERROR + ":")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """The batching knobs (see the module docstring). ``max_batch_size`` None: the engine's
    ``max_batch``; ``preferred_batch_sizes`` None: the CUDA-graph buckets up to it."""

    max_batch_size: int | None = None
    max_wait_ms: float = 4.0
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue: int = 1024
    default_deadline_ms: float | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "torch_threads"):
            value = getattr(self, name)
            if value is not None and (not _int(value) or not 1 <= value <= 65536):
                raise ConfigError(name, f"is {value!r}", "None or an int in [1, 65536]")
        if not _int(self.max_queue) or not 1 <= self.max_queue <= 10**7:
            raise ConfigError("max_queue", f"is {self.max_queue!r}", "an int in [1, 1e7]")
        if not _number(self.max_wait_ms) or not 0 <= self.max_wait_ms <= 60_000:
            raise ConfigError("max_wait_ms", f"is {self.max_wait_ms!r}", "a number of ms in [0, 60000]")
        check_deadline("default_deadline_ms", self.default_deadline_ms)
        sizes = self.preferred_batch_sizes
        if sizes is not None:
            if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (tuple, list)):
                raise ConfigError("preferred_batch_sizes", f"is {sizes!r}", "None or a tuple of batch sizes")
            for i, size in enumerate(sizes):
                if not _int(size) or not 1 <= size <= 65536:
                    raise ConfigError(f"preferred_batch_sizes[{i}]", f"is {size!r}", "an int in [1, 65536]")
            object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))


def check_deadline(name: str, value: object) -> float | None:
    if value is not None and (not _number(value) or not 0 < value <= MAX_DEADLINE_MS):
        raise ConfigError(name, f"is {value!r}", f"None or a number of ms in (0, {MAX_DEADLINE_MS:g}]")
    return None if value is None else float(value)


@dataclasses.dataclass
class _Pending:
    request: Request
    future: Future
    enqueued: float
    deadline: float | None  # time.monotonic() seconds
    key: tuple | None  # result-cache key, when caching
    index: int = 0  # position in its submit_many call: what its errors name


@dataclasses.dataclass
class _Group:
    """Requests that go into one batch together (one ``submit`` or ``submit_many``)."""

    config: DecodeConfig
    items: list[_Pending]
    enqueued: float


class Server:
    """Batches requests for ``engine`` on one dispatcher thread. Keyword knobs are
    ``ServerOptions``' fields; ``cache`` turns on result caching."""

    def __init__(self, engine: Engine, *, cache: ResultCache | None = None, **options) -> None:
        if not isinstance(engine, Engine):
            raise ConfigError("engine", f"is a {type(engine).__name__}", "an ega_infer.Engine")
        if cache is not None and not isinstance(cache, ResultCache):
            raise ConfigError("cache", f"is a {type(cache).__name__}", "None or a ResultCache")
        self.options = opts = ServerOptions(**options)
        self.engine = engine
        self.cache = cache
        self.max_batch_size = min(opts.max_batch_size or engine.max_batch, engine.max_batch)
        sizes = opts.preferred_batch_sizes if opts.preferred_batch_sizes is not None else BUCKETS
        self.preferred_batch_sizes = tuple(s for s in sizes if s <= self.max_batch_size)
        if opts.torch_threads is not None:
            torch.set_num_threads(opts.torch_threads)
        self._queue: deque[_Group] = deque()
        self._queued = 0  # requests in the queue
        self._cond = threading.Condition()
        self._closing = False
        self._drain = True
        self._running = False
        self._last_end = -math.inf
        self._arrivals: deque[float] = deque(maxlen=64)
        self._listeners: list[Callable[[int, list[Slate]], None]] = []
        self._counts = {"submitted": 0, "served": 0, "errors": 0, "deadline": 0, "rejected": 0, "cache_hits": 0,
                        "batches": 0, "batched_requests": 0}
        self._batch_sizes: dict[int, int] = {}
        self._thread = threading.Thread(target=self._dispatch, name="ega-infer-dispatcher", daemon=True)
        self._thread.start()

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, request: Request, config: DecodeConfig | None = None,
               deadline_ms: float | None = None) -> Future[Slate]:
        """Queue one request; its future resolves to its ``Slate``. Raises ``ConfigError`` for
        a bad config or deadline, ``QueueFullError`` when the queue is full and
        ``ServerClosedError`` after ``close``."""
        return self.submit_many([request], config, deadline_ms)[0]

    def submit_many(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                    deadline_ms: float | None = None) -> list[Future[Slate]]:
        """Queue requests that are served in one batch (at most ``max_batch_size``), all or
        none admitted."""
        config = self.engine.check_config(config)
        deadline_ms = check_deadline("deadline_ms", deadline_ms)
        if deadline_ms is None:
            deadline_ms = self.options.default_deadline_ms
        if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
            raise ConfigError("requests", f"is a {type(requests).__name__}", "a list of ega_infer.Request")
        if not 1 <= len(requests) <= self.max_batch_size:
            raise ConfigError("requests", f"holds {len(requests)} requests",
                              f"1 to {self.max_batch_size} (the server's max_batch_size)")
        now = time.monotonic()
        deadline = None if deadline_ms is None else now + deadline_ms / 1e3
        futures: list[Future] = []
        pending: list[_Pending] = []
        hits: list[tuple[Future, Slate]] = []
        versions = (self.engine.catalog_version, self.engine.model_version)
        for index, request in enumerate(requests):
            future: Future = Future()
            futures.append(future)
            key = ResultCache.key(request, config, *versions) if self.cache is not None and isinstance(
                request, Request) else None
            hit = self.cache.lookup(key) if key is not None else None
            if hit is not None:
                hits.append((future, dataclasses.replace(hit, request_id=_request_id(request), cache_hit=True,
                                                         queue_ms=0.0, latency_ms={"total": 0.0})))
            else:
                pending.append(_Pending(request, future, now, deadline, key, index))
        with self._cond:
            if self._closing:
                raise ServerClosedError("the server is closed; expected submits before close()")
            if self._queued + len(pending) > self.options.max_queue:
                self._counts["rejected"] += len(requests)
                raise QueueFullError(f"the queue holds {self._queued} of {self.options.max_queue} requests; "
                                     f"retry later (backpressure)")
            self._counts["submitted"] += len(requests)
            self._counts["cache_hits"] += len(hits)
            computing = []
            for p in pending:  # identical requests in flight share one computation
                if p.key is not None and self.cache.join(p.key, p):
                    continue
                computing.append(p)
            if computing:
                self._queue.append(_Group(config, computing, now))
                self._queued += len(computing)
                self._arrivals.append(now)
                self._cond.notify()
        for future, slate in hits:  # admitted: answered from the cache
            future.set_result(slate)
        return futures

    async def asubmit(self, request: Request, config: DecodeConfig | None = None,
                      deadline_ms: float | None = None) -> Slate:
        """``submit`` for an event loop: awaits the slate."""
        return await asyncio.wrap_future(self.submit(request, config, deadline_ms))

    async def asubmit_many(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                           deadline_ms: float | None = None) -> list[Slate]:
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in
                                           self.submit_many(requests, config, deadline_ms))))

    def add_listener(self, listener: Callable[[int, list[Slate]], None]) -> None:
        """Call ``listener(batch_size, slates)`` on the dispatcher thread after each batch
        (metrics); its exceptions are logged, never raised."""
        self._listeners.append(listener)

    # -- state -------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    def stats(self) -> dict:
        """Counts (submitted, served, errors, deadline, rejected, cache hits, batches), the mean
        batch size and batch sizes seen, the queue depth, the cache's and the engine's stats."""
        with self._cond:
            counts = dict(self._counts)
            sizes = dict(sorted(self._batch_sizes.items()))
            depth = self._queued
        batches = counts.pop("batches")
        batched = counts.pop("batched_requests")
        return {**counts, "batches": batches, "mean_batch_size": batched / batches if batches else 0.0,
                "batch_sizes": sizes, "queue_depth": depth, "max_queue": self.options.max_queue,
                "max_batch_size": self.max_batch_size, "preferred_batch_sizes": self.preferred_batch_sizes,
                "cache": None if self.cache is None else self.cache.stats(), "engine": self.engine.stats()}

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; ``drain`` serves what is queued first, otherwise queued requests
        are answered with a "server closed" error slate. Waits for the dispatcher."""
        with self._cond:
            self._closing, self._drain = True, drain
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the dispatcher ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            config, items, depth = batch
            try:
                self._serve(config, items, depth)
            except Exception:  # noqa: BLE001 - the dispatcher never dies
                log.exception("ega-infer server: a batch failed")
                for p in items:
                    if not p.future.done():
                        p.future.set_result(Slate(_request_id(p.request), error="server: internal error"))
            finally:
                with self._cond:
                    self._running = False
                    self._last_end = time.monotonic()

    def _next_batch(self) -> tuple[DecodeConfig, list[_Pending], int] | None:
        with self._cond:
            while True:
                if self._closing and (not self._drain or not self._queue):
                    self._fail_queued("server: closed before this request was served")
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                head = self._queue[0]
                same = [g for g in self._queue if g.config == head.config]
                n = sum(len(g.items) for g in same)
                wait_s = self.options.max_wait_ms / 1e3
                idle = head.enqueued - self._last_end >= wait_s
                # a request queued behind a running batch waits from when the engine freed up:
                # the callers that batch answers come back within moments and join it
                until = max(head.enqueued, self._last_end) + wait_s
                release = (self._closing or idle or n >= self.max_batch_size or now >= until
                           or self._fills_preferred(n, until - now))
                if not release:
                    self._cond.wait(max(until - now, 1e-4))
                    continue
                items: list[_Pending] = []
                for group in same:
                    if len(items) + len(group.items) > self.max_batch_size:
                        break
                    self._queue.remove(group)
                    self._queued -= len(group.items)
                    items += group.items
                self._running = True
                return head.config, items, self._queued

    def _fills_preferred(self, n: int, left_s: float) -> bool:
        """Whether ``n`` is a preferred size that waiting ``left_s`` more would not grow into
        the next one, at the recent arrival rate."""
        sizes = self.preferred_batch_sizes
        if n not in sizes:
            return False
        larger = [s for s in sizes if s > n]
        if not larger:
            return True
        arrivals = self._arrivals
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        rate = (len(arrivals) - 1) / span if span > 0 else 0.0
        return rate * left_s < larger[0] - n

    def _fail_queued(self, error: str) -> None:
        while self._queue:
            for p in self._queue.popleft().items:
                self._finish(p, Slate(_request_id(p.request), error=error))
        self._queued = 0

    def _serve(self, config: DecodeConfig, items: list[_Pending], queue_depth: int) -> None:
        start = time.monotonic()
        live: list[_Pending] = []
        for p in items:
            if not p.future.set_running_or_notify_cancel():
                self._release_waiters(p, None)  # the caller gave up; sharers compute on their own
                continue
            if p.deadline is not None and start > p.deadline:
                self._finish(p, self._late(p, start))
                continue
            live.append(p)
        if not live:
            return
        try:
            slates = self.engine.generate([p.request for p in live], config, queue_depth=queue_depth)
        except Exception as exc:  # noqa: BLE001 - e.g. no catalog set: every request of the batch is told
            message = str(exc) if isinstance(exc, ConfigError) or hasattr(exc, "field") else (
                f"server: the batch failed ({type(exc).__name__}: {exc})")
            slates = [Slate(_request_id(p.request), error=message) for p in live]
        end = time.monotonic()
        with self._cond:
            self._counts["batches"] += 1
            self._counts["batched_requests"] += len(live)
            self._batch_sizes[len(live)] = self._batch_sizes.get(len(live), 0) + 1
        for j, (p, slate) in enumerate(zip(live, slates)):
            slate = dataclasses.replace(slate, queue_ms=(start - p.enqueued) * 1e3)
            if slate.error is not None and slate.error.startswith(f"requests[{j}]"):  # the caller's index
                slate = dataclasses.replace(slate, error=f"requests[{p.index}]" + slate.error[len(f"requests[{j}]"):])
            if p.deadline is not None and end > p.deadline:
                slate = self._late(p, end)
            self._finish(p, slate)
        for listener in self._listeners:
            try:
                listener(len(live), slates)
            except Exception:  # noqa: BLE001
                log.exception("ega-infer server: a batch listener failed")

    def _late(self, p: _Pending, now: float) -> Slate:
        budget = (p.deadline - p.enqueued) * 1e3
        return Slate(_request_id(p.request), error=f"{DEADLINE_ERROR}: the slate was not ready within the "
                     f"deadline of {budget:.1f} ms ({(now - p.enqueued) * 1e3:.1f} ms since submit); "
                     "expected a deadline the server can meet at this load",
                     queue_ms=(now - p.enqueued) * 1e3)

    def _finish(self, p: _Pending, slate: Slate) -> None:
        if p.future.done():
            return
        p.future.set_result(slate)
        self._count("served" if slate.ok else ("deadline" if is_deadline_error(slate) else "errors"))
        self._release_waiters(p, slate)

    def _release_waiters(self, p: _Pending, slate: Slate | None) -> None:
        """Hand ``p``'s slate to the identical requests that waited on it. When ``p`` gave none
        (cancelled, past its deadline) they are queued to be served on their own."""
        if p.key is None or self.cache is None:
            return
        # a slate, or the validation error identical content gets too; not a deadline or batch failure
        shareable = slate is not None and (slate.ok or slate.error.startswith("requests["))
        waiters = self.cache.complete(p.key, slate if shareable else Slate("", error="not served"))
        now = time.monotonic()
        for w in waiters:
            if not shareable:
                with self._cond:
                    self._queue.append(_Group(p.key[1], [dataclasses.replace(w, key=None)], w.enqueued))
                    self._queued += 1
                    self._cond.notify()
            elif w.deadline is not None and now > w.deadline:
                self._finish(w, self._late(w, now))
            elif w.future.set_running_or_notify_cancel():
                self._finish(w, dataclasses.replace(slate, request_id=_request_id(w.request), cache_hit=slate.ok,
                                                    queue_ms=(now - w.enqueued) * 1e3))
                if slate.ok:
                    self._count("cache_hits")

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1


def _request_id(request: object) -> str:
    rid = getattr(request, "request_id", "")
    return rid if isinstance(rid, str) else ""


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
