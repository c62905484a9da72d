"""The serving front end: load a model, set a catalog, turn ad requests into slates.

``generate`` runs the whole pipeline for a batch: validate each request on its own (a bad one
gets a ``Slate`` whose error names the field; the rest are served as if alone), encode the
histories (once per request), then ``pipeline.decode_to_payments`` (constrained beam search,
creatives, reward-model list selection, payments; one CUDA graph on a GPU). The backend of
every op is resolved once per batch. Catalog swaps are atomic: a batch decodes against the
catalog it started with.

Memory is bounded per batch: at most ``max_batch`` requests run together (larger calls are
served in chunks), each with at most ``encoder.max_history`` behaviours and ``num_slots``
organic items, and at most ``max_beams`` beams per request (widths beyond what the catalog can
fill are served at what it can fill).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .auction.lists import CandidateLists
from .catalog import Catalog, DeviceCatalog
from .decoding import DecodeConfig, DecodeSpec
from .exceptions import CatalogError, ConfigError, EgaInferError, RequestError
from .model import GenerativeAdModel
from .model.fp8 import quantize_fp8
from .ops import OpBackends, resolve_backends
from .pipeline import decode_to_payments
from .presets import PRESETS, get_preset
from .request import PreparedRequest, Request, collate, prepare_request
from .runtime.controller import BeamController
from .runtime.graphs import BUCKETS, DecodeGraphs
from .runtime.transfer import to_host
from .slate import Slate, build_slates

__all__ = ["Engine", "DEFAULT_MAX_BEAMS"]

DEFAULT_MAX_BEAMS = 4096  # beams per request at any level (gr4ad-base serves 512)


class Engine:
    """A model served on one device.

    max_beams : the widest beam schedule a config may ask for (``ConfigError`` above it).
    max_batch : requests decoded together; a larger ``generate`` call is served in chunks.
    """

    def __init__(self, model: GenerativeAdModel, device: str | torch.device = "cpu",
                 default_config: DecodeConfig | None = None, cuda_graphs: bool = True,
                 max_beams: int = DEFAULT_MAX_BEAMS, max_batch: int = BUCKETS[-1]) -> None:
        if not isinstance(model, GenerativeAdModel):
            raise ConfigError("model", f"is a {type(model).__name__}", "a GenerativeAdModel")
        if default_config is not None and not isinstance(default_config, DecodeConfig):
            raise ConfigError("default_config", f"is a {type(default_config).__name__}", "a DecodeConfig or None")
        for name, value in (("max_beams", max_beams), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"is {value!r}", "a positive int")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.default_config = default_config or DecodeConfig()
        self.max_beams = max_beams
        self.max_batch = max_batch
        self._catalog: Catalog | None = None
        self._device_catalog: DeviceCatalog | None = None
        self._lock = threading.Lock()
        self.beam_controller = BeamController()
        # post-encode CUDA graphs (kernel backends on a GPU); None elsewhere
        self.decode_graphs = (DecodeGraphs(1 + self.config.encoder.max_history)
                              if cuda_graphs and self.device.type == "cuda" else None)
        self._graph_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
        fp8: bool = False,
        compiled: str | Path | None = None,
        max_beams: int = DEFAULT_MAX_BEAMS,
    ) -> Engine:
        """A preset name (``tiny``, ``ega-base``, ``gr4ad-base``) or a directory written by
        ``GenerativeAdModel.save_pretrained``. ``tiny`` loads its shipped trained weights; the
        other presets start from deterministic random weights (seeded). ``cuda_graphs``: capture
        the post-encode stage in CUDA graphs on a GPU (``runtime/graphs.py``). ``fp8``: FP8
        weights with per-channel scales for the sequence model's matrix products
        (``model/fp8.py``). ``compiled``: a directory from ``ega-infer compile`` whose Triton
        kernels are served without compiling (default: ``EGA_INFER_COMPILED`` when set, on a
        GPU)."""
        if not isinstance(path_or_preset, (str, Path)):
            raise ConfigError("path_or_preset", f"is a {type(path_or_preset).__name__}",
                              f"a preset name {tuple(PRESETS)} or a model directory")
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError("dtype", f"is {dtype!r}", "None, torch.float32, torch.bfloat16 or torch.float16")
        device = _device(device)
        if compiled is not None:
            from .compile import use_compiled

            use_compiled(compiled)
        elif device.type == "cuda":
            from .compile import use_compiled_from_env

            use_compiled_from_env()
        if str(path_or_preset) in PRESETS:
            preset = get_preset(str(path_or_preset))
            if preset.weights_dir is not None:
                model = GenerativeAdModel.from_pretrained(preset.weights_dir, device="cpu")
            else:
                model = GenerativeAdModel.from_config(preset.model, seed=preset.seed)
            default = preset.decode
        else:
            model = GenerativeAdModel.from_pretrained(path_or_preset, device="cpu")
            default = None
        if dtype is not None:
            model = model.to(dtype)
        if fp8:  # after the dtype cast, which would turn FP8 buffers back into dtype
            quantize_fp8(model)
        return cls(model, device, default, cuda_graphs, max_beams=max_beams)

    # -- catalog -----------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a catalog (checked against the model's codebooks, its device arrays built
        first); in-flight batches keep theirs."""
        state = self._catalog_state(catalog)
        with self._lock:
            self._catalog, self._device_catalog = state

    def _catalog_state(self, catalog: Catalog) -> tuple[Catalog, DeviceCatalog]:
        if not isinstance(catalog, Catalog):
            raise CatalogError("catalog", f"is a {type(catalog).__name__}", "an ega_infer.Catalog")
        if tuple(catalog.codebook_sizes) != self.config.poi_codebook_sizes:
            raise CatalogError(
                "codebook_sizes", f"is {catalog.codebook_sizes}", f"{self.config.poi_codebook_sizes} (the model's POI codebooks)"
            )
        if tuple(catalog.creative_codebook_sizes) != self.config.creative_codebook_sizes:
            raise CatalogError(
                "creative_codebook_sizes", f"is {catalog.creative_codebook_sizes}",
                f"{self.config.creative_codebook_sizes} (the model's creative codebooks)",
            )
        return catalog, catalog.on_device(self.device)

    def _current(self, catalog: Catalog | None) -> tuple[Catalog, DeviceCatalog]:
        if catalog is not None:
            return self._catalog_state(catalog)
        with self._lock:
            current, arrays = self._catalog, self._device_catalog
        if current is None or arrays is None:
            raise CatalogError("catalog", "is not set", "a Catalog given to Engine.set_catalog first")
        return current, arrays

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    def stats(self) -> dict:
        """Serving statistics: per beam schedule, batches and requests served and recent p50/p99
        batch latency (dynamic beam serving); CUDA graphs captured and replayed."""
        graphs = self.decode_graphs
        return {"beam_schedules": self.beam_controller.stats(),
                "cuda_graphs": None if graphs is None else {"captured": graphs.captures, "replays": graphs.replays}}

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                 catalog: Catalog | None = None, queue_depth: int = 0) -> list[Slate]:
        """Serve a batch of requests; returns one ``Slate`` per request, in order.

        ``catalog`` serves this batch against another catalog than the engine's (what-if
        evaluation). ``queue_depth`` (requests waiting behind this batch) drives dynamic beam
        serving when the config has ``fallback_beams`` or a ``latency_target_ms``. More than
        ``max_batch`` requests are served in chunks of ``max_batch``."""
        config = self._config(config)
        if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
            raise RequestError("requests", f"is a {type(requests).__name__}", "a list of ega_infer.Request")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
            raise ConfigError("queue_depth", f"is {queue_depth!r}", "an int >= 0")
        catalog, arrays = self._current(catalog)
        slates: list[Slate] = []
        for start in range(0, len(requests), self.max_batch):
            chunk = requests[start:start + self.max_batch]
            waiting = queue_depth + len(requests) - start - len(chunk)
            slates += self._generate(chunk, start, config, catalog, arrays, waiting)
        return slates

    def _generate(self, requests: Sequence[Request], offset: int, config: DecodeConfig, catalog: Catalog,
                  arrays: DeviceCatalog, queue_depth: int) -> list[Slate]:
        schedule = self.beam_controller.choose(config, len(requests), queue_depth)
        spec = config.spec(schedule)
        backends = self._backends(config, spec)
        timer = _StageTimer(self.device)
        with timer("validate"):
            prepared: list[PreparedRequest] = []
            errors: dict[int, str] = {}
            for i, request in enumerate(requests):
                try:
                    prepared.append(prepare_request(request, self.config, catalog, spec.mode == "lists", spec.num_slots))
                except EgaInferError as exc:
                    errors[i] = f"requests[{offset + i}].{exc}"
                except Exception as exc:  # noqa: BLE001 - one request's input never fails its batch
                    errors[i] = f"requests[{offset + i}]: could not be read ({type(exc).__name__}: {exc})"
            if len(catalog) == 0:
                errors = {i: f"requests[{offset + i}]: the catalog has no items to serve" for i in range(len(requests))}
        ids = [_request_id(r) for r in requests]
        served = [i for i in range(len(requests)) if i not in errors]
        if served:
            lists = self._serve(prepared, spec, backends, arrays, timer)
            with timer("respond"):
                out = to_host(lists.tensors())  # one device-to-host copy for every field
                built = iter(build_slates(out, catalog, spec.mode, spec.num_slots, config.num_candidates,
                                          [ids[i] for i in served]))
            self.beam_controller.record(schedule, len(served), timer.ms["total"])
        latency = timer.ms
        return [Slate(ids[i], error=errors[i], latency_ms=latency) if i in errors
                else dataclasses.replace(next(built), latency_ms=latency) for i in range(len(requests))]

    @torch.no_grad()
    def serve_batch(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                    catalog: Catalog | None = None) -> CandidateLists:
        """The pipeline's tensors for a batch (for evaluation and re-pricing); unlike
        ``generate`` it raises ``RequestError`` on the first bad request."""
        config = self._config(config)
        catalog, arrays = self._current(catalog)
        spec = config.spec()
        prepared = [prepare_request(r, self.config, catalog, spec.mode == "lists", spec.num_slots) for r in requests]
        return self._serve(prepared, spec, self._backends(config, spec), arrays, _StageTimer(self.device))

    @torch.no_grad()
    def warmup(self, config: DecodeConfig | None = None, batch_sizes: Sequence[int] | None = None) -> dict:
        """Compile the kernels and capture the CUDA graphs of every beam schedule of ``config``
        (``beams`` and each fallback) at every batch bucket, before serving: otherwise the first
        batch of each (bucket, schedule) pays for them, and a controller switching to a fallback
        under load would pay exactly when latency matters. The batch is built from shapes (the
        longest history, the first organic items); it needs a catalog, and a catalog swap
        captures again on its first batch. Returns what was run and how long it took."""
        config = self._config(config)
        catalog, arrays = self._current(None)
        if batch_sizes is None:
            batch_sizes = self.decode_graphs.buckets if self.decode_graphs is not None else (1,)
        if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes or any(
                isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= self.max_batch for b in batch_sizes):
            raise ConfigError("batch_sizes", f"is {batch_sizes!r}", f"one or more ints in [1, {self.max_batch}]")
        if len(catalog) == 0:
            raise CatalogError("catalog", "has no items", "a catalog with items to warm up on")
        start = time.perf_counter()
        runs = 0
        for schedule in config.schedules():  # the specs generate() builds, so the graph keys match
            spec = config.spec(schedule)
            backends = self._backends(config, spec)
            request = self._shaped_request(catalog, spec)
            for size in batch_sizes:
                self._serve([request] * size, spec, backends, arrays, _StageTimer(self.device))
                runs += 1
        return {"schedules": len(config.schedules()), "batch_sizes": tuple(batch_sizes), "runs": runs,
                "seconds": time.perf_counter() - start, **(self.stats()["cuda_graphs"] or {})}

    def _shaped_request(self, catalog: Catalog, spec: DecodeSpec) -> PreparedRequest:
        """A request of the largest shapes a batch can have: ``max_history`` behaviours, and in
        lists mode ``num_slots`` organic items (as many as the catalog has)."""
        history = self.config.encoder.max_history
        organic = np.flatnonzero(~catalog.is_ad)[: spec.num_slots] if spec.mode == "lists" else np.zeros(0, np.int64)
        return PreparedRequest(
            np.zeros((history, self.config.levels), np.int64), np.full((history, self.config.creative_levels), -1, np.int64),
            np.zeros(history, np.int64), np.zeros(history, np.int64), organic.astype(np.int64),
        )

    def _config(self, config: DecodeConfig | None) -> DecodeConfig:
        config = self.default_config if config is None else config
        if not isinstance(config, DecodeConfig):
            raise ConfigError("config", f"is a {type(config).__name__}", "an ega_infer.DecodeConfig")
        config.spec().beam_schedule(self.config.levels)
        if config.num_slots > self.config.decoder.max_slots:
            raise ConfigError("num_slots", f"is {config.num_slots}", f"at most {self.config.decoder.max_slots} (the model's max_slots)")
        names = ["beams"] + [f"fallback_beams[{i}]" for i in range(len(config.fallback_beams))]
        for name, schedule in zip(names, config.schedules()):
            for j, width in enumerate(schedule):
                if width > self.max_beams:
                    raise ConfigError(f"{name}[{j}]", f"is {width}", f"at most {self.max_beams} (the engine's max_beams)")
        return config

    def _backends(self, config: DecodeConfig, spec: DecodeSpec) -> OpBackends:
        """Every op's concrete backend for one batch of ``spec``."""
        cfg = self.config
        return resolve_backends(
            config.backend, self.device, head_dim=cfg.d_model // cfg.decoder.n_heads,
            prefill_head_dim=cfg.d_model // cfg.encoder.n_heads, vocab=max(cfg.poi_codebook_sizes),
            beams=max(spec.beams),
        )

    def _serve(self, prepared: Sequence[PreparedRequest], spec: DecodeSpec, backends: OpBackends,
               arrays: DeviceCatalog, timer: _StageTimer) -> CandidateLists:
        with timer("encode"):
            history, organic = collate(prepared, self.device, self.config.encoder.max_history)
            memory, mask = self.model.encoder(history, backends.prefill_attention)
        graphs = self.decode_graphs
        if graphs is None or not graphs.supports(len(prepared), backends):
            return decode_to_payments(self.model, memory, mask, organic, spec, backends, arrays, timer)
        # one captured graph from the decode loop to the payments; its stages are not timed apart
        with timer("decode to payment (CUDA graph)"), self._graph_lock:  # static buffers: one batch at a time
            return graphs.run(self.model, memory, mask, organic, spec, backends, arrays)


def _device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this host has (a ``ConfigError`` naming it otherwise)."""
    expected = "'cpu' or a CUDA device this host has"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", f"is {device!r} ({exc})", expected) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError("device", f"is {str(device)!r} but this host has {count} CUDA devices", expected)
    elif device.type != "cpu":
        raise ConfigError("device", f"is {str(device)!r}", expected)
    return device


def _request_id(request: object) -> str:
    """The id a slate carries: the request's own when it is a str (a non-str one is refused by
    ``prepare_request``, and its error slate carries ``""``)."""
    rid = getattr(request, "request_id", "")
    return rid if isinstance(rid, str) else ""


class _StageTimer:
    """Wall time per stage in ms; synchronises the device so GPU stages are attributed right."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()
        self._end = self._start

    @property
    def ms(self) -> dict[str, float]:
        return {**self.stages, "total": (self._end - self._start) * 1e3}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        begin = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._end = time.perf_counter()
        self.stages[stage] = (self._end - begin) * 1e3
