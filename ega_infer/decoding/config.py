"""Per-call decoding knobs: mode, beam schedule, token bidding, slot rules, list score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..exceptions import ConfigError
from ..ops._dispatch import BACKENDS

__all__ = ["DecodeConfig", "ListScore", "MODES"]

MODES = ("candidates", "lists")


@dataclass(frozen=True, slots=True)
class ListScore:
    """Score that picks the winning list among the beams (EGA-V2 Eq. 24)::

        revenue * sum_ads(bid * pctr_poi) + ctr * sum(pctr_poi)
            + creative_ctr * sum(pctr_creative) + cvr * sum(pcvr)
    """

    revenue: float = 1.0
    ctr: float = 0.0
    creative_ctr: float = 0.0
    cvr: float = 0.0

    def __post_init__(self) -> None:
        for name in ("revenue", "ctr", "creative_ctr", "cvr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ConfigError(f"list_score.{name}", f"is {value!r}", "a finite number")


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """How ``Engine.generate`` decodes a batch.

    mode : ``"candidates"`` (each beam is one item; the slate is the best ``num_slots`` of them)
        or ``"lists"`` (each beam is a whole slate of ``num_slots`` slots).
    beams : beam width per SID level (one value for every level, or one per level). In lists
        mode the first slot follows the schedule and later slots keep its last width.
    alpha, beta : token bid weight ``log(max_bid ** alpha + beta)``; ``0, 0`` turns bidding off.
    max_ads : at most this many ads per slate (lists mode); ``None`` = no limit.
    min_gap : at least this many non-ad slots between two ads (lists mode); 0 = adjacent allowed.
    forbidden_ad_slots : slot indices where no ad may go (lists mode).
    num_candidates : how many of the other candidates each slate reports (with scores).
    backend : kernel backend of the beam step and attention, ``"auto" | "torch" | "triton" | "cuda"``.
    fallback_beams : narrower beam schedules, widest first, that the engine's load-aware
        controller may serve instead of ``beams`` under load (dynamic beam serving).
    latency_target_ms : the batch latency the controller keeps p99 under (with fallbacks).
    """

    mode: Literal["candidates", "lists"] = "lists"
    beams: tuple[int, ...] = (16,)
    num_slots: int = 6
    alpha: float = 1.2
    beta: float = 2.0
    max_ads: int | None = None
    min_gap: int = 0
    forbidden_ad_slots: tuple[int, ...] = ()
    list_score: ListScore = field(default_factory=ListScore)
    choose_creatives: bool = True
    num_candidates: int = 8
    backend: str = "auto"
    fallback_beams: tuple[tuple[int, ...], ...] = ()
    latency_target_ms: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("mode", f"is {self.mode!r}", f"one of {MODES}")
        beams = self.beams
        if isinstance(beams, int) and not isinstance(beams, bool):
            object.__setattr__(self, "beams", (beams,))
        elif isinstance(beams, list):
            object.__setattr__(self, "beams", tuple(beams))
        if not self.beams or not isinstance(self.beams, tuple):
            raise ConfigError("beams", f"is {beams!r}", "a positive int or a tuple of them")
        for i, width in enumerate(self.beams):
            _positive_int(f"beams[{i}]", width)
        _positive_int("num_slots", self.num_slots)
        _positive_int("num_candidates", self.num_candidates)
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(name, f"is {value!r}", "a finite number >= 0")
        if self.max_ads is not None:
            if not isinstance(self.max_ads, int) or self.max_ads < 0:
                raise ConfigError("max_ads", f"is {self.max_ads!r}", "None or an integer >= 0")
        if not isinstance(self.min_gap, int) or self.min_gap < 0:
            raise ConfigError("min_gap", f"is {self.min_gap!r}", "an integer >= 0")
        object.__setattr__(self, "forbidden_ad_slots", tuple(self.forbidden_ad_slots))
        for i, slot in enumerate(self.forbidden_ad_slots):
            if not isinstance(slot, int) or not 0 <= slot < self.num_slots:
                raise ConfigError(f"forbidden_ad_slots[{i}]", f"is {slot!r}", f"a slot in [0, {self.num_slots})")
        if self.mode == "candidates" and (self.max_ads is not None or self.min_gap or self.forbidden_ad_slots):
            raise ConfigError("mode", "slot rules (max_ads, min_gap, forbidden_ad_slots) need mode='lists'")
        if not isinstance(self.list_score, ListScore):
            raise ConfigError("list_score", f"is {type(self.list_score).__name__}", "a ListScore")
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"is {self.backend!r}", f"one of {BACKENDS}")
        object.__setattr__(self, "fallback_beams", tuple(tuple(b) for b in self.fallback_beams))
        for i, schedule in enumerate(self.fallback_beams):
            if not schedule:
                raise ConfigError(f"fallback_beams[{i}]", "is empty", "a tuple of positive ints")
            for j, width in enumerate(schedule):
                _positive_int(f"fallback_beams[{i}][{j}]", width)
        target = self.latency_target_ms
        if target is not None and (not isinstance(target, (int, float)) or not 0 < target < float("inf")):
            raise ConfigError("latency_target_ms", f"is {target!r}", "None or a positive number of milliseconds")

    def schedules(self) -> tuple[tuple[int, ...], ...]:
        """The beam schedules the controller chooses among: ``beams`` first, then the fallbacks."""
        return (self.beams,) + self.fallback_beams

    def beam_schedule(self, levels: int) -> tuple[int, ...]:
        """Beam width after each SID level of one item (validated against the model's levels)."""
        if len(self.beams) == 1:
            return self.beams * levels
        if len(self.beams) != levels:
            raise ConfigError("beams", f"has {len(self.beams)} entries", f"1 or {levels} (the model's SID levels)")
        return self.beams


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"is {value!r}", "a positive integer")
