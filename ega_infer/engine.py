"""The serving front end: load a model, set a catalog, turn ad requests into slates.

``generate`` runs the whole pipeline for a batch: validate each request, encode histories
(once per request), constrained beam search, creative choice, reward-model list selection,
payments. Catalog swaps are atomic: a batch decodes against the catalog it started with.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .auction.lists import CandidateLists
from .catalog import Catalog
from .decoding import BeamResult, DecodeConfig, ListScore, beam_search
from .exceptions import CatalogError, ConfigError, RequestError
from .model import GenerativeAdModel
from .model.fp8 import quantize_fp8
from .post import choose_creatives, network_pricing, score_lists
from .presets import PRESETS, get_preset
from .request import PreparedRequest, Request, collate, prepare_request
from .serving.controller import BeamController
from .serving.graphs import DecodeGraphs
from .serving.transfer import to_host
from .slate import Candidate, Slate, SlotResult

__all__ = ["Engine", "ServedBatch"]


class Engine:
    def __init__(self, model: GenerativeAdModel, device: str | torch.device = "cpu",
                 default_config: DecodeConfig | None = None, cuda_graphs: bool = True) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.default_config = default_config or DecodeConfig()
        self._catalog: Catalog | None = None
        self._catalog_tensors: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        self.beam_controller = BeamController()
        # decode-stage CUDA graphs (kernel backends on a GPU); None elsewhere
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
    ) -> Engine:
        """A preset name (``tiny``, ``ega-base``, ``gr4ad-base``) or a directory written by
        ``GenerativeAdModel.save_pretrained``. ``tiny`` loads its shipped trained weights; the
        other presets start from deterministic random weights (seeded). ``cuda_graphs``: capture
        the decode stage in CUDA graphs on a GPU (see ``serving/graphs.py``). ``fp8``: FP8 weights
        with per-channel scales for the sequence model's matrix products (``model/fp8.py``).
        ``compiled``: a directory from ``ega-infer compile`` whose Triton kernels are served
        without compiling (default: ``EGA_INFER_COMPILED`` when set, on a GPU)."""
        if compiled is not None:
            from .compile import use_compiled

            use_compiled(compiled)
        elif torch.device(device).type == "cuda":
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
        return cls(model, device, default, cuda_graphs)

    @staticmethod
    def from_hf(model_dir: str | Path, sid_layout, device: str | torch.device = "cpu",
                dtype: torch.dtype | str | None = None, backend: str = "auto"):
        """A Hugging Face ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` checkpoint served as a
        generative recommender: returns a ``CausalLMEngine`` whose ``beam_search(prompts, sids,
        num_beams, renormalize)`` decodes catalog semantic IDs laid out by ``sid_layout``
        (``ega_infer.SidLayout``) on the engine's attention and beam-step ops."""
        from .hf import CausalLMEngine

        return CausalLMEngine.from_hf(model_dir, sid_layout, device, dtype, backend=backend)

    # -- catalog -----------------------------------------------------------------------------
    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a catalog (checked against the model's codebooks); in-flight batches keep theirs."""
        state = self._catalog_state(catalog)
        with self._lock:
            self._catalog, self._catalog_tensors = state

    def _catalog_state(self, catalog: Catalog) -> tuple[Catalog, dict]:
        if tuple(catalog.codebook_sizes) != self.config.poi_codebook_sizes:
            raise CatalogError(
                "codebook_sizes", f"is {catalog.codebook_sizes}", f"{self.config.poi_codebook_sizes} (the model's POI codebooks)"
            )
        if tuple(catalog.creative_codebook_sizes) != self.config.creative_codebook_sizes:
            raise CatalogError(
                "creative_codebook_sizes", f"is {catalog.creative_codebook_sizes}",
                f"{self.config.creative_codebook_sizes} (the model's creative codebooks)",
            )
        catalog.device_trie(self.device)  # build device arrays before the swap
        tensors = {
            "is_ad": torch.tensor(catalog.is_ad, device=self.device),
            "bids": torch.tensor(catalog.bids, device=self.device),
            "creative_ptr": torch.tensor(catalog.creative_ptr, device=self.device),
            "creative_codes": torch.tensor(catalog.creative_codes, device=self.device).long(),
        }
        tensors["max_creatives"] = int(np.diff(catalog.creative_ptr).max(initial=0))  # a host int
        return catalog, tensors

    def _current(self, catalog: Catalog | None) -> tuple[Catalog, dict]:
        if catalog is not None:
            return self._catalog_state(catalog)
        with self._lock:
            current, tensors = self._catalog, self._catalog_tensors
        if current is None or tensors is None:
            raise CatalogError("catalog", "is not set", "a Catalog given to Engine.set_catalog first")
        return current, tensors

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    def stats(self) -> dict:
        """Serving statistics: per beam schedule, batches and requests served and recent p50/p99
        batch latency (dynamic beam serving); CUDA graphs captured and replayed."""
        graphs = self.decode_graphs
        return {"beam_schedules": self.beam_controller.stats(),
                "cuda_graphs": None if graphs is None else {"captured": graphs.captures, "replays": graphs.replays}}

    @torch.no_grad()
    def warmup(self, config: DecodeConfig | None = None, batch_sizes: Sequence[int] | None = None) -> dict:
        """Compile the kernels and capture the CUDA graphs of every beam schedule of ``config``
        (``beams`` and each fallback) at every batch bucket, before serving: otherwise the first
        batch of each (bucket, schedule) pays for them, and a controller switching to a fallback
        under load would pay exactly when latency matters. Needs a catalog; a catalog swap
        captures again on its first batch. Returns what was run and how long it took."""
        config = config or self.default_config
        catalog, tensors = self._current(None)
        if batch_sizes is None:
            batch_sizes = self.decode_graphs.buckets if self.decode_graphs is not None else (1,)
        if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
            raise ConfigError("batch_sizes", f"is {tuple(batch_sizes)!r}", "one or more positive ints")
        if len(catalog) == 0:
            raise CatalogError("catalog", "has no items", "a catalog with items to warm up on")
        from .demo import synthetic_requests

        start = time.perf_counter()
        requests = synthetic_requests(catalog, self.config, n=max(batch_sizes), seed=0)
        runs = 0
        for schedule in config.schedules():  # the configs generate() builds, so the graph keys match
            schedule_config = config if schedule == config.beams else dataclasses.replace(config, beams=schedule)
            self._check(schedule_config)
            for size in batch_sizes:
                prepared = [prepare_request(r, self.config, catalog, config.mode == "lists") for r in requests[:size]]
                self._serve(prepared, schedule_config, catalog, tensors, _StageTimer(self.device))
                runs += 1
        return {"schedules": len(config.schedules()), "batch_sizes": tuple(batch_sizes), "runs": runs,
                "seconds": time.perf_counter() - start, **(self.stats()["cuda_graphs"] or {})}

    def _check(self, config: DecodeConfig) -> None:
        """What a config must satisfy against this model (its own fields check themselves)."""
        config.beam_schedule(self.config.levels)
        if config.num_slots > self.config.decoder.max_slots:
            raise ConfigError("num_slots", f"is {config.num_slots}", f"at most {self.config.decoder.max_slots} (the model's max_slots)")

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                 catalog: Catalog | None = None, queue_depth: int = 0) -> list[Slate]:
        """Serve a batch of requests; returns one ``Slate`` per request, in order.

        ``catalog`` serves this batch against another catalog than the engine's (what-if
        evaluation). ``queue_depth`` (requests waiting behind this batch) drives dynamic beam
        serving when the config has ``fallback_beams`` or a ``latency_target_ms``."""
        config = config or self.default_config
        catalog, tensors = self._current(catalog)
        schedule = self.beam_controller.choose(config, len(requests), queue_depth)
        if schedule != config.beams:
            config = dataclasses.replace(config, beams=schedule)
        self._check(config)
        lists_mode = config.mode == "lists"
        timer = _StageTimer(self.device)

        with timer("validate"):
            prepared: list[PreparedRequest] = []
            errors: dict[int, str] = {}
            for i, request in enumerate(requests):
                try:
                    prepared.append(prepare_request(request, self.config, catalog, lists_mode))
                except RequestError as exc:
                    errors[i] = f"requests[{i}].{exc}"
            if len(catalog) == 0:
                errors = {i: f"requests[{i}]: the catalog has no items to serve" for i in range(len(requests))}
            served = [i for i in range(len(requests)) if i not in errors]
        if not served:
            return [Slate(_rid(r, i), error=errors[i], latency_ms=timer.ms) for i, r in enumerate(requests)]

        batch = self._serve(prepared, config, catalog, tensors, timer)
        with timer("respond"):
            out = _to_numpy(
                winner=batch.winner, items=batch.items, is_ad=batch.is_ad, bids=batch.bids,
                creative=batch.creative_rows, probs=batch.probs, list_scores=batch.list_scores,
                log_alloc=batch.log_alloc, payment=batch.payment, beam_items=batch.beam_items,
                beam_scores=batch.beam_scores,
            )
            built = _build_slates(out, catalog, config, [_rid(requests[i], i) for i in served])
        latency = timer.ms
        self.beam_controller.record(schedule, len(served), latency["total"])
        served_slates = iter(built)
        slates: list[Slate] = []
        for i, request in enumerate(requests):
            if i in errors:
                slates.append(Slate(_rid(request, i), error=errors[i], latency_ms=latency))
            else:
                s = next(served_slates)
                slates.append(dataclasses.replace(s, latency_ms=latency))
        return slates


    @torch.no_grad()
    def serve_batch(self, requests: Sequence[Request], config: DecodeConfig | None = None,
                    catalog: Catalog | None = None) -> ServedBatch:
        """The pipeline's tensors for a batch (for evaluation and re-pricing); unlike
        ``generate`` it raises ``RequestError`` on the first bad request."""
        config = config or self.default_config
        catalog, tensors = self._current(catalog)
        prepared = [prepare_request(r, self.config, catalog, config.mode == "lists") for r in requests]
        return self._serve(prepared, config, catalog, tensors, _StageTimer(self.device))

    def _serve(self, prepared, config: DecodeConfig, catalog: Catalog, tensors, timer: _StageTimer) -> ServedBatch:
        with timer("encode"):
            history, organic = collate(prepared, self.device)
            memory, mask = self.model.encoder(history, config.backend)
        trie = catalog.device_trie(self.device)
        graphs = self.decode_graphs
        if graphs is None or not graphs.supports(len(prepared), config, self.device):
            return self._after_encode(memory, mask, organic, config, trie, tensors, timer)
        # one captured graph from the decode loop to the payments; its stages are not timed apart
        with timer("decode to payment (CUDA graph)"), self._graph_lock:  # static buffers: one batch at a time
            fields = graphs.run(memory, mask, organic, config, trie, lambda m, k, o: _fields(
                self._after_encode(m, k, o, config, trie, tensors, _NO_TIMER)))
            return ServedBatch(**{name: t.clone() for name, t in fields.items()})

    def _after_encode(self, memory, mask, organic, config: DecodeConfig, trie, tensors, timer) -> ServedBatch:
        """Decode, creatives, reward, payments: fixed shapes and no host synchronisation, so the
        whole stage can be captured in one CUDA graph."""
        with timer("decode"):
            ctx = self.model.decoder.context(memory, mask)
            beams = beam_search(self.model.decoder, ctx, trie, tensors["is_ad"], config, organic)
            lists = _candidate_lists(beams, config)
        with timer("creative"):
            creative_rows = torch.full_like(lists.items, -1)
            if config.choose_creatives:
                creative_ctx = self.model.creative.context(memory, mask)
                creative_rows = choose_creatives(
                    self.model, creative_ctx, lists.items, lists.poi_codes, lists.hidden,
                    tensors["creative_ptr"], tensors["creative_codes"], tensors["max_creatives"],
                )
        with timer("reward"):
            safe = lists.items.clamp(min=0)
            placed = lists.items >= 0
            is_ad = tensors["is_ad"][safe] & placed
            bids = torch.where(is_ad, tensors["bids"][safe], 0.0)
            creative_codes = torch.where(
                (creative_rows >= 0)[..., None], tensors["creative_codes"][creative_rows.clamp(min=0)], -1
            )
            scored = score_lists(
                self.model.reward, lists.poi_codes, creative_codes, lists.items, is_ad, bids,
                lists.alive, config.list_score,
            )
        batch = ServedBatch(
            items=lists.items, is_ad=is_ad, bids=bids, creative_rows=creative_rows, probs=scored.probs,
            slot_repr=scored.slot_repr, log_alloc=lists.log_alloc, alive=lists.alive,
            list_scores=scored.list_scores, winner=scored.winner, beam_items=beams.items,
            beam_scores=beams.scores,
        )
        with timer("payment"):
            batch.payment = network_pricing(self.model.payment)(batch.candidate_lists(config.list_score), batch.winner)
        return batch


@dataclass
class ServedBatch:
    """The post-stage tensors of a served batch: candidate lists ``[N, L, K]`` (items, is_ad,
    bids, creative_rows, probs [.., 3], slot_repr [.., d], log_alloc), alive and list_scores
    ``[N, L]``, the winning list ``winner [N]`` and its payments ``[N, K]``, and the raw beams."""

    items: torch.Tensor
    is_ad: torch.Tensor
    bids: torch.Tensor
    creative_rows: torch.Tensor
    probs: torch.Tensor
    slot_repr: torch.Tensor
    log_alloc: torch.Tensor
    alive: torch.Tensor
    list_scores: torch.Tensor
    winner: torch.Tensor
    beam_items: torch.Tensor
    beam_scores: torch.Tensor
    payment: torch.Tensor | None = None

    def candidate_lists(self, weights: ListScore) -> CandidateLists:
        """The beam lists as the auction references see them: welfare = revenue weight x
        sum_ads bid x pCTR + the bid-free rest of the list score."""
        p = self.probs
        base = weights.ctr * p[..., 0].sum(-1) + weights.creative_ctr * p[..., 1].sum(-1) + weights.cvr * p[..., 2].sum(-1)
        return CandidateLists(self.bids, p[..., 0], self.is_ad, self.items, self.alive, base,
                              weights.revenue, self.slot_repr, self.log_alloc)


class _Lists:
    """The candidate lists the reward model chooses among: ``[N, L, K]`` per field."""

    def __init__(self, items, poi_codes, hidden, log_alloc, alive):
        self.items, self.poi_codes, self.hidden, self.log_alloc, self.alive = items, poi_codes, hidden, log_alloc, alive


def _candidate_lists(beams: BeamResult, config: DecodeConfig) -> _Lists:
    if config.mode == "lists":
        return _Lists(beams.items, beams.poi_codes, beams.hidden, beams.log_alloc, beams.alive)
    # candidates: the slate is the best num_slots beams in beam order (one list per request)
    k = min(config.num_slots, beams.scores.shape[1])
    alive = beams.alive[:, :k]
    items = torch.where(alive, beams.items[:, :k, 0], -1)
    log_alloc = torch.where(alive, beams.scores[:, :k], float("-inf"))
    return _Lists(
        items[:, None], beams.poi_codes[:, None, :k, 0], beams.hidden[:, None, :k, 0],
        log_alloc[:, None], alive[:, :1].any(1, keepdim=True),
    )


def _fields(batch: ServedBatch) -> dict[str, torch.Tensor]:
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


class _NoTimer:
    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        yield


_NO_TIMER = _NoTimer()


def _to_numpy(**tensors: torch.Tensor) -> dict[str, np.ndarray]:
    return to_host(tensors)  # one device-to-host copy for every field


def _build_slates(out: dict[str, np.ndarray], catalog: Catalog, config: DecodeConfig, ids: list[str]) -> list[Slate]:
    slates = []
    for n, request_id in enumerate(ids):
        w = out["winner"][n]
        items = out["items"][n, w]
        if out["list_scores"][n, w] == -np.inf:
            reason = "the catalog has no item" if config.mode == "candidates" else (
                f"no slate of {config.num_slots} slots fits the catalog, organic_items and slot rules"
            )
            slates.append(Slate(request_id, error=f"request {request_id!r}: {reason}"))
            continue
        slots = []
        for k, row in enumerate(items):
            if row < 0:
                continue
            creative = out["creative"][n, w, k]
            pctr, pctr_creative, pcvr = (float(x) for x in out["probs"][n, w, k])
            slots.append(SlotResult(
                slot=k, item_id=int(catalog.item_ids[row]), is_ad=bool(out["is_ad"][n, w, k]),
                creative_id=int(catalog.creative_ids[creative]) if creative >= 0 else None,
                bid=float(out["bids"][n, w, k]), payment=float(out["payment"][n, k]),
                pctr_poi=pctr, pctr_creative=pctr_creative, pcvr=pcvr,
                alloc_prob=float(np.exp(out["log_alloc"][n, w, k])),
            ))
        slates.append(Slate(request_id, tuple(slots), _candidates(out, catalog, config, n)))
    return slates


def _candidates(out: dict[str, np.ndarray], catalog: Catalog, config: DecodeConfig, n: int) -> tuple[Candidate, ...]:
    scores = out["beam_scores"][n]
    found = []
    for b in np.flatnonzero(scores > -np.inf)[: config.num_candidates]:
        rows = out["beam_items"][n, b]
        ids = tuple(int(catalog.item_ids[r]) for r in rows if r >= 0)
        list_score = float(out["list_scores"][n, b]) if config.mode == "lists" else None
        found.append(Candidate(ids, float(scores[b]), list_score))
    return tuple(found)


def _rid(request: Request, index: int) -> str:
    rid = getattr(request, "request_id", "")
    return rid if isinstance(rid, str) and rid else str(index)


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
