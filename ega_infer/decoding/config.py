"""Per-call decoding knobs, split by who reads them.

``DecodeSpec`` is what one decode computes: mode, beam schedule, token bidding, slot rules,
list score, creative choice. Everything below the engine (beam search, slate rules, the
post-stages, the CUDA graphs, keyed on it with the batch bucket and the backends) reads only
this. ``DecodeConfig`` is what a caller passes to ``Engine.generate``: a spec's fields plus the
engine's own knobs, which are never captured: ``backend`` (resolved once per batch),
``num_candidates`` (reporting) and ``fallback_beams`` / ``latency_target_ms`` (dynamic beam
serving).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal

from ..exceptions import ConfigError
from ..ops._dispatch import BACKENDS
from ..ops.beam_step import MAX_ALPHA

__all__ = ["DecodeConfig", "DecodeSpec", "ListScore", "MODES", "PRICING", "MAX_LIST_WEIGHT"]

MODES = ("candidates", "lists")
# network: EGA's payment network; vcg / gsp: over the decoded lists; clarke: against decodes of
# the request without each winning ad; mir: bid-blind lists (maximal in range) priced by VCG
PRICING = ("network", "vcg", "gsp", "clarke", "mir")
# list scores are summed in float64 over up to max_slots bids of up to float32's max (3.4e38)
MAX_LIST_WEIGHT = 1e200


@dataclass(frozen=True, slots=True)
class ListScore:
    """Score that picks the winning list among the beams (EGA-V2 Eq. 24)::

        revenue * sum_ads(bid * pctr_poi) + ctr * sum(pctr_poi)
            + creative_ctr * sum(pctr_creative) + cvr * sum(pcvr)

    Each weight is a finite number of magnitude at most ``MAX_LIST_WEIGHT``.
    """

    revenue: float = 1.0
    ctr: float = 0.0
    creative_ctr: float = 0.0
    cvr: float = 0.0

    def __post_init__(self) -> None:
        for name in ("revenue", "ctr", "creative_ctr", "cvr"):
            value = getattr(self, name)
            if not _number(value) or not abs(value) <= MAX_LIST_WEIGHT:
                raise ConfigError(f"list_score.{name}", f"is {value!r}",
                                  f"a finite number of magnitude <= {MAX_LIST_WEIGHT:g}")


@dataclass(frozen=True, slots=True)
class DecodeSpec:
    """What one decode computes (see ``DecodeConfig`` for the fields); ``beams`` is the schedule
    actually served. Hashable: with the batch bucket and the op backends it keys a CUDA graph."""

    mode: Literal["candidates", "lists"]
    beams: tuple[int, ...]
    num_slots: int
    alpha: float
    beta: float
    max_ads: int | None
    min_gap: int
    forbidden_ad_slots: tuple[int, ...]
    list_score: ListScore
    choose_creatives: bool
    pricing: str = "network"

    @property
    def bid_blind(self) -> bool:
        """Whether no bid may move the candidate lists (pricing ``"mir"``): leaves rank their
        ads by catalog row, and ``alpha`` is 0."""
        return self.pricing == "mir"

    @property
    def slots(self) -> int:
        """Slots each beam decodes: ``num_slots`` in lists mode, one item in candidates mode."""
        return self.num_slots if self.mode == "lists" else 1

    def beam_schedule(self, levels: int) -> tuple[int, ...]:
        """Beam width after each SID level of one item (validated against the model's levels)."""
        if len(self.beams) == 1:
            return self.beams * levels
        if len(self.beams) != levels:
            raise ConfigError("beams", f"has {len(self.beams)} entries", f"1 or {levels} (the model's SID levels)")
        return self.beams


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """How ``Engine.generate`` decodes a batch.

    mode : ``"candidates"`` (each beam is one item; the slate is the best ``num_slots`` of them)
        or ``"lists"`` (each beam is a whole slate of ``num_slots`` slots).
    beams : beam width per SID level (one value for every level, or one per level). In lists
        mode the first slot follows the schedule and later slots keep its last width. Widths
        above what the catalog can fill are served at what it can fill; the engine refuses
        widths above its ``max_beams``.
    alpha, beta : token bid weight ``log(max_bid ** alpha + beta)`` (computed in log space);
        ``0, 0`` turns bidding off. ``0 <= alpha <= 1e36``, ``beta`` finite and ``>= 0``.
    max_ads : at most this many ads per slate (lists mode); ``None`` = no limit.
    min_gap : at least this many non-ad slots between two ads (lists mode); 0 = adjacent allowed.
    forbidden_ad_slots : slot indices where no ad may go (lists mode).
    list_score : the reward-model list score that picks the winning list.
    choose_creatives : pick each POI's creative with the creative head (else none is chosen).
    pricing : per-click prices of the winning slate, one of ``PRICING``: ``"network"`` (EGA's
        payment network, the default), ``"vcg"`` and ``"gsp"`` over the decoded lists,
        ``"clarke"`` (against the decodes of the request without each winning ad: one more
        decode row per ad slot), ``"mir"`` (maximal in range: lists no bid can move, priced by
        VCG; exactly truthful; needs ``alpha == 0``). Never above the bid, 0 for organic items.
    num_candidates : how many of the other candidates each slate reports (with scores).
    backend : kernel backend of every op, ``"auto" | "torch" | "triton" | "cuda"``
        (``"torch"``: the ops' PyTorch references; ``"cuda"``: CUDA C++ where an op has it).
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
    pricing: str = "network"
    num_candidates: int = 8
    backend: str = "auto"
    fallback_beams: tuple[tuple[int, ...], ...] = ()
    latency_target_ms: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError("mode", f"is {self.mode!r}", f"one of {MODES}")
        object.__setattr__(self, "beams", _schedule("beams", self.beams))
        _positive_int("num_slots", self.num_slots)
        _positive_int("num_candidates", self.num_candidates)
        if not _number(self.alpha) or not 0 <= self.alpha <= MAX_ALPHA:
            raise ConfigError("alpha", f"is {self.alpha!r}", f"a finite number >= 0, at most {MAX_ALPHA:g}")
        if not _number(self.beta) or not 0 <= self.beta < math.inf:
            raise ConfigError("beta", f"is {self.beta!r}", "a finite number >= 0")
        if self.max_ads is not None and (not _int(self.max_ads) or self.max_ads < 0):
            raise ConfigError("max_ads", f"is {self.max_ads!r}", "None or an integer >= 0")
        if not _int(self.min_gap) or self.min_gap < 0:
            raise ConfigError("min_gap", f"is {self.min_gap!r}", "an integer >= 0")
        # a limit past the slate's length changes nothing: keep it within int64 for the device
        if self.max_ads is not None:
            object.__setattr__(self, "max_ads", min(self.max_ads, self.num_slots))
        object.__setattr__(self, "min_gap", min(self.min_gap, self.num_slots))
        slots = self.forbidden_ad_slots
        if isinstance(slots, (str, bytes)) or not isinstance(slots, (tuple, list)):
            raise ConfigError("forbidden_ad_slots", f"is {slots!r}", "a tuple of slot indices")
        object.__setattr__(self, "forbidden_ad_slots", tuple(slots))
        for i, slot in enumerate(self.forbidden_ad_slots):
            if not _int(slot) or not 0 <= slot < self.num_slots:
                raise ConfigError(f"forbidden_ad_slots[{i}]", f"is {slot!r}", f"a slot in [0, {self.num_slots})")
        if self.mode == "candidates" and (self.max_ads is not None or self.min_gap or self.forbidden_ad_slots):
            raise ConfigError("mode", "slot rules (max_ads, min_gap, forbidden_ad_slots) need mode='lists'")
        if not isinstance(self.list_score, ListScore):
            raise ConfigError("list_score", f"is {type(self.list_score).__name__}", "a ListScore")
        if not isinstance(self.choose_creatives, bool):
            raise ConfigError("choose_creatives", f"is {self.choose_creatives!r}", "True or False")
        if not isinstance(self.pricing, str) or self.pricing not in PRICING:
            raise ConfigError("pricing", f"is {self.pricing!r}", f"one of {PRICING}")
        if self.pricing == "mir" and self.alpha != 0:
            raise ConfigError("alpha", f"is {self.alpha!r} with pricing='mir'",
                              "0: token weights a bid can move would let bids move the candidate lists")
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ConfigError("backend", f"is {self.backend!r}", f"one of {BACKENDS}")
        fallbacks = self.fallback_beams
        if isinstance(fallbacks, (str, bytes)) or not isinstance(fallbacks, (tuple, list)):
            raise ConfigError("fallback_beams", f"is {fallbacks!r}", "a tuple of beam schedules (tuples of positive ints)")
        object.__setattr__(self, "fallback_beams", tuple(
            _schedule(f"fallback_beams[{i}]", schedule) for i, schedule in enumerate(fallbacks)))
        target = self.latency_target_ms
        if target is not None and (not _number(target) or not 0 < target < math.inf):
            raise ConfigError("latency_target_ms", f"is {target!r}", "None or a positive number of milliseconds")

    def schedules(self) -> tuple[tuple[int, ...], ...]:
        """The beam schedules the controller chooses among: ``beams`` first, then the fallbacks."""
        return (self.beams,) + self.fallback_beams

    def spec(self, beams: tuple[int, ...] | None = None) -> DecodeSpec:
        """What decoding computes for this config, served with schedule ``beams`` (default:
        ``self.beams``)."""
        return DecodeSpec(
            self.mode, self.beams if beams is None else beams, self.num_slots, float(self.alpha),
            float(self.beta), self.max_ads, self.min_gap, self.forbidden_ad_slots, self.list_score,
            self.choose_creatives, self.pricing,
        )



def _schedule(name: str, value: object) -> tuple[int, ...]:
    """A beam schedule: one positive int, or a non-empty tuple/list of them."""
    if _int(value):
        value = (value,)
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple) or not value:
        raise ConfigError(name, f"is {value!r}", "a positive int or a tuple of them (not empty)")
    for i, width in enumerate(value):
        _positive_int(f"{name}[{i}]", width)
    return tuple(int(width) for width in value)


def _int(value: object) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value: object) -> bool:
    """A real number (numpy's too), not a bool or NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _positive_int(name: str, value: object) -> None:
    if not _int(value) or value < 1:
        raise ConfigError(name, f"is {value!r}", "a positive integer")
