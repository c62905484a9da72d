"""What ``Engine.generate`` returns for each request, and how a served batch becomes slates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["Slate", "SlotResult", "Candidate", "build_slates"]


@dataclass(frozen=True, slots=True)
class SlotResult:
    """One slot of a served slate. Payment is per click, 0 for organic items, never above the bid."""

    slot: int
    item_id: int
    is_ad: bool
    creative_id: int | None
    bid: float
    payment: float
    pctr_poi: float
    pctr_creative: float
    pcvr: float
    alloc_prob: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """Another candidate the decoder produced: one item (candidates mode) or a whole list.

    score is the beam's bid-weighted log-probability; list_score the reward-model list score
    (lists mode) or None.
    """

    item_ids: tuple[int, ...]
    score: float
    list_score: float | None = None


@dataclass(frozen=True, slots=True)
class Slate:
    """The response to one request: slots, the other candidates, and per-stage latency (ms,
    measured for the whole batch the request was served in). ``error`` is set, and ``slots``
    empty, when this request could not be served; the rest of its batch is unaffected.

    What it was served with: ``catalog_version`` and ``model_version`` (the engine's, see
    ``Engine.set_catalog`` / ``set_weights``), ``beam_schedule`` (the beams per level the
    load-aware controller chose). Filled by ``ega_infer.serving``: ``queue_ms`` (time queued
    before its batch started) and ``cache_hit`` (served from the result cache)."""

    request_id: str
    slots: tuple[SlotResult, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    catalog_version: str = ""
    model_version: str = ""
    beam_schedule: tuple[int, ...] = ()
    queue_ms: float = 0.0
    cache_hit: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def expected_revenue(self) -> float:
        """Expected revenue of the slate: sum over ads of payment x pCTR."""
        return sum(s.payment * s.pctr_poi for s in self.slots if s.is_ad)


def build_slates(out: dict[str, np.ndarray], catalog: Catalog, mode: str, num_slots: int, num_candidates: int,
                 ids: list[str]) -> list[Slate]:
    """The slates of a served batch from its candidate lists on the host (``out``: the
    ``CandidateLists`` fields as arrays, one row per request of ``ids``)."""
    slates = []
    for n, request_id in enumerate(ids):
        w = out["winner"][n]
        if out["list_scores"][n, w] == -np.inf:
            reason = "the catalog has no item" if mode == "candidates" else (
                f"no slate of {num_slots} slots fits the catalog, organic_items and slot rules"
            )
            slates.append(Slate(request_id, error=f"request {request_id!r}: {reason}"))
            continue
        slots = []
        for k, row in enumerate(out["items"][n, w]):
            if row < 0:
                continue
            creative = out["creative_rows"][n, w, k]
            pctr, pctr_creative, pcvr = (float(x) for x in out["probs"][n, w, k])
            slots.append(SlotResult(
                slot=k, item_id=int(catalog.item_ids[row]), is_ad=bool(out["is_ad"][n, w, k]),
                creative_id=int(catalog.creative_ids[creative]) if creative >= 0 else None,
                bid=float(out["bids"][n, w, k]), payment=float(out["payment"][n, k]),
                pctr_poi=pctr, pctr_creative=pctr_creative, pcvr=pcvr,
                alloc_prob=float(np.exp(out["log_alloc"][n, w, k])),
            ))
        slates.append(Slate(request_id, tuple(slots), _candidates(out, catalog, mode, num_candidates, n)))
    return slates


def _candidates(out: dict[str, np.ndarray], catalog: Catalog, mode: str, num_candidates: int,
                n: int) -> tuple[Candidate, ...]:
    scores = out["beam_scores"][n]
    found = []
    for b in np.flatnonzero(scores > -np.inf)[:num_candidates]:
        ids = tuple(int(catalog.item_ids[r]) for r in out["beam_items"][n, b] if r >= 0)
        list_score = float(out["list_scores"][n, b]) if mode == "lists" else None
        found.append(Candidate(ids, float(scores[b]), list_score))
    return tuple(found)
