"""What ``Engine.generate`` returns for each request."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Slate", "SlotResult", "Candidate"]


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
    empty, when this request could not be served; the rest of its batch is unaffected."""

    request_id: str
    slots: tuple[SlotResult, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def expected_revenue(self) -> float:
        """Expected revenue of the slate: sum over ads of payment x pCTR."""
        return sum(s.payment * s.pctr_poi for s in self.slots if s.is_ad)
