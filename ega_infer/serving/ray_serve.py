"""Scale-out on Ray Serve: the HTTP front (``http.create_app``) stays in this process and serves
from ``RayBackend``, which sends each body to one of N ``SlateReplica`` deployment replicas
(an engine and a batching ``Server`` each; one GPU each where GPUs exist).

Catalog and weight updates travel as the deployment's ``user_config`` (``catalog_path``,
``catalog_version``, ``weights_path``, ``model_version``): Serve calls ``reconfigure`` on the
running replicas, and a replica started later (after a crash) gets the current one, so every
replica serves the same versions. ``set_catalog`` writes the catalog as an immutable snapshot
(``catalog-v{n}.safetensors`` in the backend's snapshot directory, which must be visible to the
replicas: ``start_ray_backend`` starts a local Ray), redeploys and returns once every replica
reports it; a replica that could not load it keeps its old state and reports the error, which
rolls the update back and is raised here. ``set_weights`` works the same on a model directory,
read in place (keep it unchanged while it serves).

Errors cross the Ray boundary as markers: a replica returns ``{"error": ...}`` for the
engine's own errors (``QueueFullError``, ``ConfigError``, ...) and the backend raises them
again. A call that finds its replica dead is retried on another one (slates are a pure function
of the request and the versions); when none answers, ``NoReplicaError`` (HTTP 503).

Ray is imported only when a backend is started or a replica runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .. import exceptions
from ..catalog import Catalog, load_catalog_file
from ..decoding import DecodeConfig
from ..exceptions import (CatalogError, ConfigError, EgaInferError, FieldError, QueueFullError, ServerClosedError,
                          ServingError)
from ..request import Request
from ..slate import Candidate, Slate, SlotResult
from .schemas import config_from_json, request_from_json, request_to_json, slate_to_json

__all__ = ["SlateReplica", "RayBackend", "NoReplicaError", "start_ray_backend", "slate_from_json"]

log = logging.getLogger(__name__)

APP_NAME = "ega-infer"
DEPLOYMENT_NAME = "SlateReplica"
# Serve's imperative serve.run gives every call a fresh random code version, so a redeploy that
# changes only user_config restarts every replica (measured on Ray 2.58). A fixed version makes
# it the lightweight update the Serve docs describe: reconfigure() on the running replicas.
_CODE_VERSION = "ega-infer-replica-1"


class NoReplicaError(ServerClosedError):
    """No replica answered the call (they died, or none came back in time): HTTP 503."""


class SlateReplica:
    """One Ray Serve replica: an engine of ``model`` and its batching ``Server``. Wrapped by
    ``serve.deployment`` when a backend is started (plain class here: importing needs no ray)."""

    def __init__(self, model: str, device: str, max_beams: int, server_options: dict, threads: int,
                 cache_ttl: float = 0.0, cache_size: int = 10_000, warmup: bool = True) -> None:
        from ..engine import Engine
        from .cache import ResultCache
        from .server import Server

        self.engine = Engine.from_pretrained(model, device=device, max_beams=max_beams)
        cache = ResultCache(cache_ttl, cache_size) if cache_ttl > 0 else None
        self.server = Server(self.engine, cache=cache, torch_threads=threads, **server_options)
        self.warmup, self.warmed = warmup, False
        self.errors: dict[str, dict] = {}  # what the last reconfigure could not load
        self._lock: asyncio.Lock | None = None

    async def reconfigure(self, user_config: dict) -> None:
        # loading runs off the event loop: slates keep being served on the old versions meanwhile
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            await asyncio.to_thread(self._apply, dict(user_config or {}))

    def _apply(self, config: dict) -> None:
        errors = {}
        version = config.get("catalog_version")
        if config.get("catalog_path") and version != self.engine.catalog_version:
            try:
                self.engine.set_catalog(load_catalog_file(config["catalog_path"]), version)
            except Exception as exc:  # noqa: BLE001 - a raise here would make Serve restart the replica forever
                errors["catalog"] = {"version": version, **error_to_json(exc)}
        version = config.get("model_version")
        if config.get("weights_path") and version != self.engine.model_version:
            try:
                self.engine.set_weights(config["weights_path"], version)
            except Exception as exc:  # noqa: BLE001
                errors["weights"] = {"version": version, **error_to_json(exc)}
        if self.warmup and not self.warmed and self.engine.catalog is not None:
            try:
                self.engine.warmup(self.engine.default_config)
                self.warmed = True
            except Exception as exc:  # noqa: BLE001 - reported by versions(), the batches compile instead
                errors["warmup"] = error_to_json(exc)
        self.errors = errors

    async def slates(self, requests_json: list[dict], config: DecodeConfig | dict | None,
                     deadline_ms: float | None) -> dict:
        """``{"slates": [slate JSON], **versions}``, or ``{"error": marker}`` for an error of
        the whole body (queue full, a bad config or deadline)."""
        try:
            requests = [request_from_json(r) for r in requests_json]
            if not isinstance(config, DecodeConfig):
                config = config_from_json(config, self.engine.default_config)
            futures = self.server.submit_many(requests, config, deadline_ms)
        except EgaInferError as exc:
            return {"error": error_to_json(exc)}
        slates = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return {"slates": [slate_to_json(s) for s in slates], **self._ids()}

    def versions(self) -> dict:
        """The versions served, the replica's id, its load errors and its server's stats."""
        return {**self._ids(), "errors": self.errors, "warmed_up": self.warmed, "stats": self.server.stats()}

    def info(self) -> dict:
        return {**self._ids(), "default_config": self.engine.default_config,
                "max_batch_size": self.server.max_batch_size}

    def check_health(self) -> None:
        # the dispatcher thread is what serves; a replica without it is replaced by Serve
        if not self.server._thread.is_alive():
            raise ServingError("the server's dispatcher thread has stopped")

    def _ids(self) -> dict:
        from ray import serve

        return {"replica_id": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                "catalog_version": self.engine.catalog_version, "model_version": self.engine.model_version}


class RayBackend:
    """The ``Backend`` of ``http.create_app`` over a Serve deployment of ``replicas``
    ``SlateReplica`` (see the module docstring). ``replica_args``: ``SlateReplica``'s keyword
    arguments; ``timeout_s``: how long a call without a deadline may wait for a replica."""

    def __init__(self, replica_args: dict, replicas: int, catalog: Catalog, *, ray_actor_options: dict,
                 max_queue: int = 1024, snapshot_dir: str | Path | None = None, timeout_s: float = 60.0,
                 owns_ray: bool = False) -> None:
        from ray import serve

        self.timeout_s, self._owns_ray = timeout_s, owns_ray
        self._own_dir = snapshot_dir is None
        self.snapshot_dir = Path(snapshot_dir or tempfile.mkdtemp(prefix="ega-infer-catalogs-"))
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        # max_ongoing_requests at the queue bound: each replica's Server batches the concurrent
        # bodies and refuses past max_queue itself; the handle's own queue is bounded alike
        deployment = serve.deployment(SlateReplica, name=DEPLOYMENT_NAME).options(
            num_replicas=replicas, ray_actor_options=ray_actor_options, max_ongoing_requests=max_queue,
            max_queued_requests=max_queue, max_constructor_retry_count=3)
        try:
            self._deployment = deployment.options(version=_CODE_VERSION, _internal=True)
        except (TypeError, ValueError):  # a Ray without it: updates still work, by restarting the replicas
            log.warning("ega-infer: Ray Serve takes no deployment version; updates restart replicas")
            self._deployment = deployment
        self._init_args = replica_args
        self._lock = threading.Lock()  # one update at a time
        self._counts_lock = threading.Lock()  # apart: slates must not wait for an update
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="ega-infer-ray")
        # the next versions, numbered as the engine numbers them; a refused update takes none
        self._numbers = {"catalog": 1, "model": 2}
        self._counts = {"calls": 0, "requests": 0, "retries": 0, "replica_failures": 0, "timeouts": 0,
                        "rejected": 0}
        self._served_by: dict[str, int] = {}
        self._status: tuple[float, int] = (-1.0, 0)
        self._user_config: dict = {}
        self._catalog = catalog
        self.model_version = "1"
        try:
            version, path = self._snapshot(catalog)
            self._handle = self._deploy({"catalog_path": str(path), "catalog_version": version})
            self._commit({"catalog_path": str(path), "catalog_version": version})
            info = self._call(lambda: self._handle.info.remote().result(timeout_s=self.timeout_s))
        except BaseException:
            self._pool.shutdown(wait=False)
            if self._own_dir:
                shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            raise
        self._numbers["catalog"] += 1
        self.default_config: DecodeConfig = info["default_config"]
        self.max_batch_size: int = info["max_batch_size"]

    # -- serving -----------------------------------------------------------------------------
    async def slates(self, requests: Sequence[Request], config: DecodeConfig,
                     deadline_ms: float | None) -> list[Slate]:
        from ray import exceptions as ray_errors
        from ray.serve import exceptions as serve_errors

        body = [request_to_json(r) for r in requests]
        loop = asyncio.get_running_loop()
        # past a deadline the HTTP layer answers first; this bounds a call that hangs
        end = loop.time() + (self.timeout_s if deadline_ms is None else deadline_ms / 1e3 + 2.0)
        self._count("calls")
        self._count("requests", len(requests))
        for attempt in itertools.count():
            response = self._handle.slates.remote(body, config, deadline_ms)
            try:
                out = await asyncio.wait_for(_awaited(response), max(end - loop.time(), 1e-3))
                break
            except asyncio.TimeoutError:
                response.cancel()
                self._count("timeouts")
                raise NoReplicaError("no replica answered in time (timeout_s or the deadline)") from None
            except serve_errors.BackPressureError as exc:
                self._count("rejected", len(requests))
                raise QueueFullError(f"the replicas' queues are full ({exc}); retry later (backpressure)") from None
            except (ray_errors.RayActorError, ray_errors.ActorUnavailableError, serve_errors.ReplicaUnavailableError,
                    serve_errors.DeploymentUnavailableError) as exc:
                self._count("replica_failures")
                if attempt >= 3 or loop.time() > end:
                    raise NoReplicaError(f"no replica could serve the request ({type(exc).__name__})") from None
                self._count("retries")
                await asyncio.sleep(0.1 * (attempt + 1))  # the router drops the dead replica meanwhile
        if "error" in out:
            if out["error"]["type"] == "QueueFullError":
                self._count("rejected", len(requests))
            raise error_from_json(out["error"])
        with self._counts_lock:
            self._served_by[out["replica_id"]] = self._served_by.get(out["replica_id"], 0) + 1
        return [slate_from_json(s) for s in out["slates"]]

    def ready(self) -> tuple[bool, dict]:
        running = self._running_replicas()
        detail = {"weights": True, "catalog": True, "warmed_up": running > 0, "replicas": running,
                  "catalog_version": self.catalog_version, "model_version": self.model_version}
        return running > 0, detail

    def stats(self) -> dict:
        """The backend's counts, and each replica's versions and server stats (queue depth and
        batch sizes summed over them)."""
        reports = self._broadcast("versions")
        sizes: dict[int, int] = {}
        for r in reports:
            for size, n in r["stats"]["batch_sizes"].items():
                sizes[size] = sizes.get(size, 0) + n
        with self._counts_lock:
            counts, served_by = dict(self._counts), dict(self._served_by)
        return {**counts, "served_by_replica": served_by,
                "queue_depth": sum(r["stats"]["queue_depth"] for r in reports),
                "batch_sizes": dict(sorted(sizes.items())), "replicas": reports,
                "catalog_version": self.catalog_version, "model_version": self.model_version}

    def retry_after_s(self) -> int:
        return 1

    # -- updates -----------------------------------------------------------------------------
    @property
    def catalog_version(self) -> str:
        return self._user_config.get("catalog_version", "")

    def catalog(self) -> Catalog | None:
        return self._catalog

    def set_catalog(self, catalog: Catalog) -> str:
        if not isinstance(catalog, Catalog):
            raise CatalogError("catalog", f"is a {type(catalog).__name__}", "an ega_infer.Catalog")
        with self._lock:
            version, path = self._snapshot(catalog)
            try:
                self._update({"catalog_path": str(path), "catalog_version": version})
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self._numbers["catalog"] += 1
            self._catalog = catalog
            for old in self.snapshot_dir.glob("catalog-v*.safetensors"):  # replicas load only the current one
                if old != path:
                    old.unlink(missing_ok=True)
            return version

    def set_weights(self, path: str | Path) -> str:
        with self._lock:
            version = str(self._numbers["model"])
            self._update({"weights_path": str(Path(path).resolve()), "model_version": version})
            self._numbers["model"] += 1
            self.model_version = version
            return version

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        if self._owns_ray:
            ray.shutdown()
        self._pool.shutdown(wait=False)
        if self._own_dir:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def _snapshot(self, catalog: Catalog) -> tuple[str, Path]:
        version = str(self._numbers["catalog"])
        path = self.snapshot_dir / f"catalog-v{version}.safetensors"
        tmp = self.snapshot_dir / f".catalog-v{version}.tmp"
        catalog.save(tmp)
        os.replace(tmp, path)  # a replica never reads a half-written snapshot
        return version, path

    def _update(self, changes: dict) -> None:
        previous = self._user_config
        config = {**previous, **changes}
        try:
            self._deploy(config)
            self._commit(config)
        except EgaInferError:
            self._deploy(previous)  # replicas kept their state; replacements must get the old config too
            raise

    def _deploy(self, config: dict):
        from ray import serve

        app = self._deployment.options(user_config=config).bind(**self._init_args)
        try:
            return self._call(lambda: serve.run(app, name=APP_NAME, route_prefix=None,
                                                logging_config={"log_level": "WARNING"}))
        except RuntimeError as exc:  # the application failed to deploy: replicas that could not start
            raise ServingError(f"Ray Serve could not deploy the replicas: {exc}") from None

    def _commit(self, config: dict, timeout_s: float = 60.0) -> None:
        """Wait until every replica serves ``config``'s versions; raise the error of one that
        could not load them."""
        end = time.monotonic() + timeout_s
        while True:
            reports = self._broadcast("versions")
            for r in reports:
                for what, key in (("catalog", "catalog_version"), ("weights", "model_version")):
                    error = r["errors"].get(what)
                    if error is not None and error["version"] == config.get(key):
                        raise error_from_json(error)
            if reports and all(r["catalog_version"] == config.get("catalog_version", r["catalog_version"]) and
                               r["model_version"] == config.get("model_version", r["model_version"]) for r in reports):
                self._user_config = config
                return
            if time.monotonic() > end:
                raise NoReplicaError(f"the replicas did not all report {config} within {timeout_s:g} s")
            time.sleep(0.2)

    def _broadcast(self, method: str) -> list[dict]:
        out = self._call(lambda: self._handle.broadcast(method).results(timeout_s=10, return_exceptions=True))
        return [r for r in out if isinstance(r, dict)]  # a dying replica's exception: not a report

    def _running_replicas(self) -> int:
        when, running = self._status
        if time.monotonic() - when > 1.0:  # /ready runs on every request: ask the controller once a second
            from ray import serve

            try:
                app = self._call(serve.status).applications.get(APP_NAME)
                states = app.deployments[DEPLOYMENT_NAME].replica_states if app else {}
                running = int(states.get("RUNNING", 0))
            except Exception:  # noqa: BLE001 - the controller is away: not ready
                running = 0
            self._status = (time.monotonic(), running)
        return running

    def _call(self, fn):
        # Ray's sync calls refuse to run on an event loop thread (the HTTP app's): hop off it
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn()
        return self._pool.submit(fn).result()

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n


async def _awaited(response):
    return await response


def start_ray_backend(args) -> RayBackend:
    """Start a local Ray (unless one is connected) and Serve without its HTTP proxy (the
    FastAPI app is the front), deploy ``args.replicas`` replicas and wait until they serve."""
    import ray
    import torch
    from ray import serve

    from ..presets import PRESETS

    if args.replicas < 1:
        raise ConfigError("--replicas", f"is {args.replicas}", "a positive int")
    gpu = str(args.device).startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise ConfigError("--device", f"is {args.device!r} but torch sees no CUDA GPU", "cpu, or a host with GPUs")
    if args.catalog is not None:
        catalog = load_catalog_file(args.catalog)
    elif args.model in PRESETS:
        from ..world import AdWorld, WorldConfig

        catalog = AdWorld(WorldConfig(seed=0), PRESETS[args.model].model).catalog()
    else:
        raise ConfigError("--catalog", "is missing", "a catalog file for a model directory")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its per-deploy INFO lines, on the server's stderr
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        cpus = ray.cluster_resources().get("CPU", 1.0)
        # half the CPUs for the replicas: room to start a replacement beside them
        actor = {"num_gpus": 1} if gpu else {"num_cpus": min(1.0, cpus / (2 * args.replicas))}
        server_options = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                          "max_queue": args.max_queue, "default_deadline_ms": args.deadline_ms}
        replica_args = {"model": args.model, "device": "cuda" if gpu else args.device, "max_beams": args.max_beams,
                        "server_options": server_options, "threads": args.threads, "cache_ttl": args.cache_ttl,
                        "cache_size": args.cache_size, "warmup": not args.no_warmup}
        return RayBackend(replica_args, args.replicas, catalog, ray_actor_options=actor, max_queue=args.max_queue,
                          owns_ray=owns_ray)
    except BaseException:
        if owns_ray:
            serve.shutdown()
            ray.shutdown()
        raise


# -- across the Ray boundary ---------------------------------------------------------------------
def error_to_json(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, FieldError):
        out.update(field=exc.field, problem=exc.problem, expected=exc.expected)
    return out


def error_from_json(error: dict) -> EgaInferError:
    """The exception a replica's error marker stands for (``ServingError`` for any other)."""
    cls = getattr(exceptions, error["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, EgaInferError)):
        return ServingError(error["message"])
    if issubclass(cls, FieldError):
        return cls(error["field"], error["problem"], error["expected"])
    return cls(error["message"])


def slate_from_json(value: dict) -> Slate:
    """The ``Slate`` of ``slate_to_json``'s object (a null score, non-finite there, as NaN)."""
    nan = float("nan")
    return Slate(
        value["request_id"], tuple(SlotResult(**s) for s in value["slots"]),
        tuple(Candidate(tuple(c["item_ids"]), nan if c["score"] is None else c["score"], c["list_score"])
              for c in value["candidates"]),
        dict(value["latency_ms"]), value["error"], value["catalog_version"], value["model_version"],
        tuple(value["beam_schedule"]), value["queue_ms"], value["cache_hit"])
