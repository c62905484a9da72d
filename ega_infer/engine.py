"""The serving front end: load a model, set a catalog, turn ad requests into slates.

``generate`` runs the whole pipeline for a batch: validate each request on its own (a bad one
gets a ``Slate`` whose error names the field; the rest are served as if alone), encode the
histories (once per request), then ``pipeline.decode_to_payments`` (constrained beam search,
creatives, reward-model list selection, payments; one CUDA graph on a GPU). The backend of
every op is resolved once per batch. Catalog swaps are atomic: a batch decodes against the
catalog it started with.

Catalog and weight updates are atomic too (``set_catalog``, ``set_weights``): each gets a new
version, which every slate reports, and a batch runs start to end on the catalog and the weights
it started with.

Memory is bounded per batch: at most ``max_batch`` requests run together (larger calls are
served in chunks), each with at most ``encoder.max_history`` behaviours and ``num_slots``
organic items, and at most ``max_beams`` beams per request (widths beyond what the catalog can
fill are served at what it can fill).
"""

from __future__ import annotations

import dataclasses
import itertools
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
from .exceptions import CatalogError, ConfigError, ConfigFileError, EgaInferError, RequestError, show_value
from .model import GenerativeAdModel
from .model.fp8 import FP8Linear, quantize_fp8
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
        self.config = model.config
        self.default_config = default_config or DecodeConfig()
        self.max_beams = max_beams
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self._catalog: Catalog | None = None
        self._device_catalog: DeviceCatalog | None = None
        self._catalog_version = ""
        # versions given when an update names none: catalogs 1, 2, ...; weights 1 (these), 2, ...
        self._catalog_versions, self._model_versions = itertools.count(1), itertools.count(2)
        self._lock = threading.Lock()
        self._weights_lock = threading.Lock()  # one set_weights at a time
        self.beam_controller = BeamController()
        self._weights = self._weights_state(model.to(self.device).eval(), "1")
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

    # -- weights -----------------------------------------------------------------------------
    @property
    def model(self) -> GenerativeAdModel:
        """The model serving new batches (``set_weights`` swaps it)."""
        return self._weights.model

    @property
    def model_version(self) -> str:
        return self._weights.version

    @property
    def decode_graphs(self) -> DecodeGraphs | None:
        """The CUDA graphs of the current weights (None off a GPU or with ``cuda_graphs=False``)."""
        return self._weights.graphs

    @decode_graphs.setter
    def decode_graphs(self, graphs: DecodeGraphs | None) -> None:
        self._weights = dataclasses.replace(self._weights, graphs=graphs)

    def set_weights(self, path: str | Path, version: str | None = None) -> str:
        """Serve the weights of the model directory at ``path`` (``save_pretrained``'s), of the
        same architecture as the model served now, from the next batch; returns the new model
        version (``version``, or the next number). The checkpoint is read, checked (every
        config field but ``name``, then every tensor's name and shape), cast to the served
        dtype and FP8-quantized like the served model before the swap, and the CUDA graphs
        are captured again for it; in-flight batches finish on the weights they started with.
        A bad checkpoint raises ``CheckpointError`` (``ConfigFileError`` naming the config
        field that differs) and leaves the old weights serving."""
        version = _version("version", version)
        with self._weights_lock:
            model = GenerativeAdModel.from_pretrained(path, device="cpu")
            _same_architecture(model.config, self.config, path)
            current = self._weights.model
            model = model.to(next(current.parameters()).dtype)
            if any(isinstance(m, FP8Linear) for m in current.modules()):
                quantize_fp8(model)
            state = self._weights_state(model.to(self.device).eval(), version or str(next(self._model_versions)))
            self._weights = state  # one assignment: a batch reads the old state or the new one whole
        return state.version

    def _weights_state(self, model: GenerativeAdModel, version: str) -> _Weights:
        # post-encode CUDA graphs (kernel backends on a GPU); None elsewhere. The graphs read
        # the weights in place, so each model has its own.
        graphs = (DecodeGraphs(1 + self.config.encoder.max_history)
                  if self.cuda_graphs and self.device.type == "cuda" else None)
        return _Weights(model, version, graphs)

    # -- catalog -----------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog, version: str | None = None) -> str:
        """Swap in a catalog (checked against the model's codebooks, its device arrays built
        first); in-flight batches keep theirs. Returns its version: ``version``, or the next
        number when None."""
        version = _version("version", version)
        state = self._catalog_state(catalog)
        with self._lock:
            self._catalog, self._device_catalog = state
            self._catalog_version = version or str(next(self._catalog_versions))
            return self._catalog_version

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

    def _current(self, catalog: Catalog | None) -> tuple[Catalog, DeviceCatalog, str]:
        """The catalog a batch is served on, its device arrays and its version (``"what-if"``
        for a catalog passed to one call)."""
        if catalog is not None:
            return *self._catalog_state(catalog), "what-if"
        with self._lock:
            current, arrays, version = self._catalog, self._device_catalog, self._catalog_version
        if current is None or arrays is None:
            raise CatalogError("catalog", "is not set", "a Catalog given to Engine.set_catalog first")
        return current, arrays, version

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    @property
    def catalog_version(self) -> str:
        """The version of the catalog serving new batches ("" before ``set_catalog``)."""
        return self._catalog_version

    def stats(self) -> dict:
        """Serving statistics: per beam schedule, batches and requests served and recent p50/p99
        batch latency (dynamic beam serving); CUDA graphs captured and replayed; the catalog
        and model versions."""
        graphs = self.decode_graphs
        return {"beam_schedules": self.beam_controller.stats(),
                "cuda_graphs": None if graphs is None else {"captured": graphs.captures, "replays": graphs.replays},
                "catalog_version": self.catalog_version, "model_version": self.model_version}

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                 catalog: Catalog | None = None, queue_depth: int = 0) -> list[Slate]:
        """Serve a batch of requests; returns one ``Slate`` per request, in order.

        ``catalog`` serves this batch against another catalog than the engine's (what-if
        evaluation). ``queue_depth`` (requests waiting behind this batch) drives dynamic beam
        serving when the config has ``fallback_beams`` or a ``latency_target_ms``. More than
        ``max_batch`` requests are served in chunks of ``max_batch``."""
        config = self.check_config(config)
        if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
            raise RequestError("requests", f"is a {type(requests).__name__}", "a list of ega_infer.Request")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
            raise ConfigError("queue_depth", f"is {queue_depth!r}", "an int >= 0")
        served_on = self._current(catalog)
        weights = self._weights  # the whole call runs on one catalog and one set of weights
        slates: list[Slate] = []
        for start in range(0, len(requests), self.max_batch):
            chunk = requests[start:start + self.max_batch]
            waiting = queue_depth + len(requests) - start - len(chunk)
            slates += self._generate(chunk, start, config, served_on, weights, waiting)
        return slates

    def _generate(self, requests: Sequence[Request], offset: int, config: DecodeConfig,
                  served_on: tuple[Catalog, DeviceCatalog, str], weights: _Weights, queue_depth: int) -> list[Slate]:
        catalog, arrays, catalog_version = served_on
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
            lists = self._serve(prepared, spec, backends, arrays, timer, weights)
            with timer("respond"):
                out = to_host(lists.tensors())  # one device-to-host copy for every field
                built = iter(build_slates(out, catalog, spec.mode, spec.num_slots, config.num_candidates,
                                          [ids[i] for i in served]))
            self.beam_controller.record(schedule, len(served), timer.ms["total"])
        served_with = dict(latency_ms=timer.ms, catalog_version=catalog_version, model_version=weights.version,
                           beam_schedule=tuple(schedule))
        return [Slate(ids[i], error=errors[i], **served_with) if i in errors
                else dataclasses.replace(next(built), **served_with) for i in range(len(requests))]

    @torch.no_grad()
    def serve_batch(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                    catalog: Catalog | None = None) -> CandidateLists:
        """The pipeline's tensors for a batch (for evaluation and re-pricing); unlike
        ``generate`` it raises ``RequestError`` on the first bad request."""
        config = self.check_config(config)
        catalog, arrays, _ = self._current(catalog)
        spec = config.spec()
        prepared = [prepare_request(r, self.config, catalog, spec.mode == "lists", spec.num_slots) for r in requests]
        return self._serve(prepared, spec, self._backends(config, spec), arrays, _StageTimer(self.device),
                           self._weights)

    @torch.no_grad()
    def encode_batch(self, requests: Sequence[Request], config: DecodeConfig | None = None) -> EncodedBatch:
        """The encoder's output for ``requests`` and everything the stages after it read (for
        evaluations that decode the same requests many ways); raises ``RequestError`` on the
        first bad request."""
        config = self.check_config(config)
        catalog, arrays, _ = self._current(None)
        spec = config.spec()
        backends = self._backends(config, spec)
        prepared = [prepare_request(r, self.config, catalog, spec.mode == "lists", spec.num_slots) for r in requests]
        model = self._weights.model
        history, organic, exclude = collate(prepared, self.device, self.config.encoder.max_history)
        memory, mask = model.encoder(history, backends.prefill_attention)
        return EncodedBatch(model, memory, mask, organic, exclude, spec, backends, arrays)

    @torch.no_grad()
    def warmup(self, config: DecodeConfig | None = None, batch_sizes: Sequence[int] | None = None) -> dict:
        """Compile the kernels and capture the CUDA graphs of every beam schedule of ``config``
        (``beams`` and each fallback) at every batch bucket, before serving: otherwise the first
        batch of each (bucket, schedule) pays for them, and a controller switching to a fallback
        under load would pay exactly when latency matters. The batch is built from shapes (the
        longest history, the first organic items); it needs a catalog, and a catalog swap
        captures again on its first batch. Returns what was run and how long it took."""
        config = self.check_config(config)
        catalog, arrays, _ = self._current(None)
        weights = self._weights
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
                self._serve([request] * size, spec, backends, arrays, _StageTimer(self.device), weights)
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

    def check_config(self, config: DecodeConfig | None) -> DecodeConfig:
        """``config`` (None: the default) checked against this engine: beam widths within
        ``max_beams``, ``num_slots`` within the model's ``max_slots``; ``ConfigError`` otherwise."""
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
               arrays: DeviceCatalog, timer: _StageTimer, weights: _Weights) -> CandidateLists:
        model, graphs = weights.model, weights.graphs
        with timer("encode"):
            history, organic, exclude = collate(prepared, self.device, self.config.encoder.max_history)
            memory, mask = model.encoder(history, backends.prefill_attention)
        if graphs is None or not graphs.supports(len(prepared), backends):
            return decode_to_payments(model, memory, mask, organic, spec, backends, arrays, timer, exclude)
        # one captured graph from the decode loop to the payments; its stages are not timed apart
        with timer("decode to payment (CUDA graph)"), self._graph_lock:  # static buffers: one batch at a time
            return graphs.run(model, memory, mask, organic, spec, backends, arrays, exclude)


@dataclasses.dataclass(frozen=True)
class EncodedBatch:
    """``Engine.encode_batch``: the model, encoder ``memory [N, S, d]`` and ``mask``, organic
    ``[N, M]`` and excluded rows ``[N, E]`` (None: none), the spec, backends and catalog arrays."""

    model: GenerativeAdModel
    memory: torch.Tensor
    mask: torch.Tensor
    organic: torch.Tensor
    exclude: torch.Tensor | None
    spec: DecodeSpec
    backends: OpBackends
    catalog: DeviceCatalog


@dataclasses.dataclass(frozen=True)
class _Weights:
    """The model serving batches, its version and its CUDA graphs: replaced whole by
    ``set_weights``, read once per call."""

    model: GenerativeAdModel
    version: str
    graphs: DecodeGraphs | None


def _version(name: str, version: object) -> str | None:
    if version is None:
        return None
    if not isinstance(version, str) or not 1 <= len(version) <= 64 or not version.isprintable():
        raise ConfigError(name, f"is {show_value(version)}", "None or a printable str of 1 to 64 characters")
    return version


def _same_architecture(new, served, path: object, prefix: str = "") -> None:
    """Raise ``ConfigFileError`` naming the first config field (``"decoder.n_heads"``) where the
    checkpoint's architecture differs from the served model's (``name`` is a label: not compared)."""
    for f in dataclasses.fields(served):
        if not prefix and f.name == "name":
            continue
        a, b = getattr(new, f.name), getattr(served, f.name)
        if dataclasses.is_dataclass(b):
            _same_architecture(a, b, path, f"{prefix}{f.name}.")
        elif a != b:
            raise ConfigFileError(f"{prefix}{f.name}", f"is {show_value(a)} in {path}",
                                  f"{show_value(b)} (the served model's architecture)")


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
