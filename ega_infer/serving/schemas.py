"""The JSON of the HTTP API: pydantic models for its OpenAPI schema, and the conversions between
JSON and ``Request`` / ``DecodeConfig`` / ``Slate``.

A request's JSON keys are ``Request``'s field names and a slate's are ``Slate``'s (slots and
candidates with ``SlotResult``'s and ``Candidate``'s). Request values are not coerced here: the
engine's ``prepare_request`` reads them and names the field of any problem, so one bad request
fails alone instead of failing the whole body. The config overrides are checked here (unknown
keys, the ``list_score`` object) and by ``DecodeConfig`` itself (values).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, get_type_hints

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..decoding import PRICING, DecodeConfig, ListScore
from ..exceptions import ConfigError, RequestError, show_value
from ..request import Request
from ..slate import Slate, SlotResult

__all__ = [
    "RequestJSON", "ConfigJSON", "SlatesBody", "SlateJSON", "SlatesResponse", "ErrorResponse",
    "CONFIG_FIELDS", "REQUEST_FIELDS", "request_from_json", "request_to_json", "config_from_json",
    "slate_to_json",
]

REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(Request))
# What a body's "config" may override: every DecodeConfig field but the kernel backend, which is
# the operator's choice (``ega-infer serve --backend``), not a caller's.
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeConfig) if f.name != "backend")
LIST_SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(ListScore))


class RequestJSON(BaseModel):
    """One ad request (``ega_infer.Request``); codes and ids are JSON integers."""

    model_config = ConfigDict(extra="forbid")
    history_poi_codes: list[list[int]] = Field(default_factory=list, description="[S, C] POI codes, oldest first")
    history_creative_codes: list[list[int]] | None = Field(None, description="[S, Cc] creative codes; -1 unknown")
    history_actions: list[int] | None = Field(None, description="[S] action type ids (null = 0)")
    history_time_buckets: list[int] | None = Field(None, description="[S] time bucket ids (null = 0)")
    organic_items: list[int] = Field(default_factory=list, description="catalog ids of the page's organic items")
    request_id: str = Field("", description="returned with the slate as given")
    exclude_items: list[int] = Field(default_factory=list, description="catalog ids this request must not show")


class ListScoreJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revenue: float = 1.0
    ctr: float = 0.0
    creative_ctr: float = 0.0
    cvr: float = 0.0


class ConfigJSON(BaseModel):
    """Overrides of the server's default ``DecodeConfig`` (see its docstring for each field)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["candidates", "lists"] | None = None
    beams: list[int] | None = Field(None, description="beam width per SID level (or one for all)")
    num_slots: int | None = None
    alpha: float | None = None
    beta: float | None = None
    max_ads: int | None = None
    min_gap: int | None = None
    forbidden_ad_slots: list[int] | None = None
    list_score: ListScoreJSON | None = None
    choose_creatives: bool | None = None
    pricing: Literal[PRICING] | None = None  # type: ignore[valid-type]
    num_candidates: int | None = None
    fallback_beams: list[list[int]] | None = None
    latency_target_ms: float | None = None


class SlatesBody(BaseModel):
    """``POST /v1/slates``: requests served together, one config, one deadline."""

    model_config = ConfigDict(extra="forbid")
    requests: list[RequestJSON]
    config: ConfigJSON | None = None
    deadline_ms: float | None = Field(None, gt=0, description="answer within this many ms (else a deadline error)")


# a slot's JSON is SlotResult's fields as they are (one definition, not a copy)
SlotJSON = create_model("SlotJSON", **{name: (hint, ...) for name, hint in get_type_hints(SlotResult).items()})


class CandidateJSON(BaseModel):
    item_ids: list[int]
    score: float | None
    list_score: float | None = None


class SlateJSON(BaseModel):
    request_id: str
    slots: list[SlotJSON]
    candidates: list[CandidateJSON]
    latency_ms: dict[str, float]
    error: str | None
    catalog_version: str
    model_version: str
    beam_schedule: list[int]
    queue_ms: float
    cache_hit: bool


class SlatesResponse(BaseModel):
    slates: list[SlateJSON]


class ErrorDetail(BaseModel):
    code: int
    field: str | None = Field(None, description="the offending field's path (config.beams[0])")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def request_from_json(value: object) -> Request:
    """A ``Request`` from one decoded JSON object; ``RequestError`` naming the key when it is
    not an object or has a key ``Request`` does not (values are checked when served)."""
    if not isinstance(value, dict):
        raise RequestError("request", f"is a JSON {_json_type(value)}", "a JSON object with Request's fields")
    for key in value:
        if key not in REQUEST_FIELDS:
            raise RequestError(_key(key), "is not a request field", f"one of {', '.join(REQUEST_FIELDS)}")
    return Request(**value)


def request_to_json(request: Request) -> dict[str, Any]:
    """The JSON object of a ``Request`` (numpy arrays as lists)."""
    out = {}
    for name in REQUEST_FIELDS:
        value = getattr(request, name)
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def config_from_json(value: object, base: DecodeConfig) -> DecodeConfig:
    """``base`` with the overrides of a body's ``config`` object; ``ConfigError`` naming
    ``config.<field>`` otherwise."""
    if value is None:
        return base
    if not isinstance(value, dict):
        raise ConfigError("config", f"is a JSON {_json_type(value)}", "a JSON object of DecodeConfig overrides")
    changes = {}
    for key, v in value.items():
        if key not in CONFIG_FIELDS:
            raise ConfigError(f"config.{_key(key)}", "is not a config field a request may set",
                              f"one of {', '.join(CONFIG_FIELDS)}")
        if key == "list_score" and v is not None:
            v = _list_score(v)
        changes[key] = v
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"config.{exc.field}", exc.problem, exc.expected) from None
    except (TypeError, ValueError, OverflowError) as exc:  # a value DecodeConfig could not even compare
        raise ConfigError("config", f"could not be read ({type(exc).__name__}: {exc})") from None


def _list_score(value: object) -> ListScore:
    if not isinstance(value, dict):
        raise ConfigError("config.list_score", f"is a JSON {_json_type(value)}", "an object of list-score weights")
    for key in value:
        if key not in LIST_SCORE_FIELDS:
            raise ConfigError(f"config.list_score.{_key(key)}", "is not a list-score weight",
                              f"one of {', '.join(LIST_SCORE_FIELDS)}")
    try:
        return ListScore(**value)
    except ConfigError as exc:  # ListScore names its fields list_score.<weight>
        raise ConfigError(f"config.{exc.field}", exc.problem, exc.expected) from None


def slate_to_json(slate: Slate) -> dict[str, Any]:
    """A slate's JSON object (non-finite scores as null: JSON has no infinities)."""
    return {
        "request_id": slate.request_id,
        "slots": [{f: getattr(s, f) for f in _SLOT_FIELDS} for s in slate.slots],
        "candidates": [{"item_ids": list(c.item_ids), "score": _finite(c.score), "list_score": _finite(c.list_score)}
                       for c in slate.candidates],
        "latency_ms": slate.latency_ms,
        "error": slate.error,
        "catalog_version": slate.catalog_version,
        "model_version": slate.model_version,
        "beam_schedule": list(slate.beam_schedule),
        "queue_ms": slate.queue_ms,
        "cache_hit": slate.cache_hit,
    }


_SLOT_FIELDS = tuple(SlotJSON.model_fields)


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _key(key: object) -> str:
    """A JSON key as a field name in an error (cut, printable)."""
    text = str(key)[:40]
    return text if text.isprintable() and text else show_value(key, 40)


def _json_type(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null", dict: "object"}.get(type(value), type(value).__name__)
