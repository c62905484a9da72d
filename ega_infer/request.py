"""An ad request, and its validation into padded tensors for one batch.

``Request`` accepts anything (decoded JSON included); ``prepare_request`` reads each field
on its own and turns every problem (ragged nesting, wrong types or shapes, codes out of
range, unknown or ad organic items, a ``request_id`` that is not a str) into a
``RequestError`` naming the field. The engine calls it inside its per-request error net, so a
bad request gets a ``Slate`` with that error and the rest of its batch is served as if alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .catalog import Catalog
from .exceptions import RequestError
from .model.config import ModelConfig
from .model.encoder import History, packed_layout
from .runtime.transfer import to_device

__all__ = ["Request", "PreparedRequest", "prepare_request", "collate", "MAX_EXCLUDED_ITEMS"]

MAX_EXCLUDED_ITEMS = 1024  # per request: the exclusion work per decode step grows with it


@dataclass(frozen=True)
class Request:
    """One ad request (fields are checked when it is served, not here).

    history_poi_codes : [S, C] POI codes of the user's past behaviours, oldest first (S may
        be 0). Only the most recent ``encoder.max_history`` behaviours are used.
    history_creative_codes : [S, Cc] creative codes of those behaviours; -1 (or None for all)
        means unknown.
    history_actions, history_time_buckets : [S] action type and time bucket ids (None = 0).
    organic_items : catalog ids of the page's organic items, pre-ranked; lists mode keeps
        their order (only the first ``num_slots`` can be placed). Ignored in candidates mode.
    request_id : a str returned with the slate as given.
    exclude_items : catalog ids this request must not show (frequency caps, advertiser
        blocklists, ads the user hid, items already seen), at most ``MAX_EXCLUDED_ITEMS``: they
        are in no beam, and the token bid weights count only the ads that remain. Repeats count
        once; an id the catalog does not hold excludes nothing (it may have left the catalog).
        Excluded organic items are dropped from ``organic_items``.
    """

    history_poi_codes: Sequence[Sequence[int]] | np.ndarray = ()
    history_creative_codes: Sequence[Sequence[int]] | np.ndarray | None = None
    history_actions: Sequence[int] | np.ndarray | None = None
    history_time_buckets: Sequence[int] | np.ndarray | None = None
    organic_items: Sequence[int] | np.ndarray = ()
    request_id: str = ""
    exclude_items: Sequence[int] | np.ndarray = ()


@dataclass
class PreparedRequest:
    poi_codes: np.ndarray  # [S, C] int64
    creative_codes: np.ndarray  # [S, Cc] int64
    actions: np.ndarray  # [S]
    time_buckets: np.ndarray  # [S]
    organic_rows: np.ndarray  # [M] catalog rows, M <= num_slots
    excluded_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # [E] distinct


def prepare_request(request: object, config: ModelConfig, catalog: Catalog, lists_mode: bool,
                    num_slots: int | None = None) -> PreparedRequest:
    """Validate one request against the model and catalog; raise ``RequestError`` naming the
    field. Only the first ``num_slots`` organic items are kept (None: all of them)."""
    if not isinstance(request, Request):
        raise RequestError("request", f"is a {type(request).__name__}", "an ega_infer.Request")
    if not isinstance(request.request_id, str):
        raise RequestError("request_id", f"is a {type(request.request_id).__name__}", "a str")
    poi = _int_matrix("history_poi_codes", request.history_poi_codes, config.levels)
    s = len(poi)
    _in_range("history_poi_codes", poi, config.poi_codebook_sizes)
    if request.history_creative_codes is None:
        creative = np.full((s, config.creative_levels), -1, np.int64)
    else:
        creative = _int_matrix("history_creative_codes", request.history_creative_codes, config.creative_levels, s)
        _in_range("history_creative_codes", creative, config.creative_codebook_sizes, allow_unknown=True)
    poi, creative = poi.astype(np.int64), creative.astype(np.int64)
    actions = _int_vector("history_actions", request.history_actions, s, config.encoder.n_actions)
    times = _int_vector("history_time_buckets", request.history_time_buckets, s, config.encoder.n_time_buckets)
    keep = slice(max(0, s - config.encoder.max_history), s)

    excluded = _excluded_rows(request.exclude_items, catalog)
    organic_rows = np.zeros(0, np.int64)
    if lists_mode:
        ids = _array("organic_items", request.organic_items, "a list of catalog item ids")
        if ids.size == 0:
            ids = np.zeros(0, np.int64)
        if ids.ndim != 1 or not _integers(ids):
            raise RequestError("organic_items", f"has shape {ids.shape} and dtype {ids.dtype}", "a list of item ids")
        organic_rows = catalog.index_of(ids.astype(np.int64))
        unknown = np.flatnonzero((organic_rows < 0) | (ids > np.iinfo(np.int64).max))
        if len(unknown):
            j = int(unknown[0])
            raise RequestError(f"organic_items[{j}]", f"= {ids[j]} is not in the catalog", "ids of catalog items")
        ads = np.flatnonzero(catalog.is_ad[organic_rows])
        if len(ads):
            j = int(ads[0])
            raise RequestError(f"organic_items[{j}]", f"= {ids[j]} is an ad", "organic items only")
        _, first = np.unique(organic_rows, return_index=True)
        if len(first) != len(organic_rows):
            j = int(np.setdiff1d(np.arange(len(organic_rows)), first)[0])
            raise RequestError(f"organic_items[{j}]", f"= {ids[j]} appears twice", "each organic item once")
        organic_rows = organic_rows[~np.isin(organic_rows, excluded)]
        organic_rows = organic_rows[:num_slots]  # no slate places more: the batch stays small
    return PreparedRequest(poi[keep], creative[keep], actions[keep], times[keep], organic_rows, excluded)


def _excluded_rows(values: object, catalog: Catalog) -> np.ndarray:
    """The distinct catalog rows of ``exclude_items`` (None: none; ids the catalog lacks are
    skipped)."""
    if values is None:
        return np.zeros(0, np.int64)
    ids = _array("exclude_items", values, f"a list of at most {MAX_EXCLUDED_ITEMS} item ids")
    if ids.size == 0:
        return np.zeros(0, np.int64)
    if ids.ndim != 1 or not _integers(ids):
        raise RequestError("exclude_items", f"has shape {ids.shape} and dtype {ids.dtype}", "a list of item ids")
    if len(ids) > MAX_EXCLUDED_ITEMS:
        raise RequestError("exclude_items", f"has {len(ids)} ids", f"at most {MAX_EXCLUDED_ITEMS}")
    in_range = ids <= np.iinfo(np.int64).max  # uint64 ids past int64 cannot be catalog ids
    rows = catalog.index_of(ids[in_range].astype(np.int64))
    return np.unique(rows[rows >= 0]).astype(np.int64)


def collate(batch: Sequence[PreparedRequest], device: torch.device,
            width: int) -> tuple[History, torch.Tensor, torch.Tensor | None]:
    """Pad a batch: the encoder's ``History`` over ``width`` behaviours (the model's
    ``max_history``, whatever the batch holds: attention sums over the padded context round
    the same way in every batch, so a request's slate does not depend on its batch-mates),
    organic rows ``[N, M]`` and excluded rows ``[N, E]`` (-1 pad; None when no request
    excludes anything)."""
    n = len(batch)
    s = max([len(r.poi_codes) for r in batch] + [width, 1])
    m = max([len(r.organic_rows) for r in batch] + [0])
    levels, creative_levels = batch[0].poi_codes.shape[1], batch[0].creative_codes.shape[1]
    poi = np.zeros((n, s, levels), np.int64)
    creative = np.full((n, s, creative_levels), -1, np.int64)
    actions = np.zeros((n, s), np.int64)
    times = np.zeros((n, s), np.int64)
    organic = np.full((n, m), -1, np.int64)
    e = max(len(r.excluded_rows) for r in batch)
    excluded = np.full((n, e), -1, np.int64)
    lengths = np.zeros(n, np.int64)
    for i, r in enumerate(batch):
        length = len(r.poi_codes)
        lengths[i] = length
        poi[i, :length], creative[i, :length] = r.poi_codes, r.creative_codes
        actions[i, :length], times[i, :length] = r.actions, r.time_buckets
        organic[i, : len(r.organic_rows)] = r.organic_rows
        excluded[i, : len(r.excluded_rows)] = r.excluded_rows

    index, cu_seqlens = packed_layout(lengths, s + 1)  # the encoder's 1 + S positions, on the host
    fields = to_device([poi, creative, actions, times, lengths, organic, excluded, index.numpy(),
                        cu_seqlens.long().numpy()], device)  # one transfer for the whole batch
    poi, creative, actions, times, lengths, organic, excluded, index, cu_seqlens = fields
    history = History(poi, creative, actions, times, lengths, (index, cu_seqlens.int()))
    return history, organic, excluded if e else None


# -- field readers: each error names the field and what was expected ------------------------
def _array(name: str, values: object, expected: str) -> np.ndarray:
    """``values`` as a numpy array of numbers, or a RequestError (ragged nesting, strings, None
    inside, mappings, objects numpy cannot read)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if values is None or isinstance(values, (str, bytes, dict, set, frozenset)):
        raise RequestError(name, f"is a {type(values).__name__}", expected)
    try:
        a = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged rows, unreadable entries
        raise RequestError(name, f"cannot be read as an array ({_first_line(exc)})", expected) from None
    if a.dtype == object or a.dtype.kind in "USVMmc":
        raise RequestError(name, f"holds {_what(a)}", expected)
    return a


def _integers(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer)


def _int_matrix(name: str, values, width: int, rows: int | None = None) -> np.ndarray:
    expected = f"integers of shape (S, {width})" if rows is None else f"integers of shape ({rows}, {width})"
    a = _array(name, values, expected)
    if a.size == 0 and (rows is None or rows == 0) and a.ndim <= 2:
        return np.zeros((0, width), np.int64)
    if a.ndim != 2 or not _integers(a):
        raise RequestError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    if a.shape[1] != width:
        raise RequestError(name, f"has {a.shape[1]} codes per behaviour", f"{width}")
    if rows is not None and a.shape[0] != rows:
        raise RequestError(name, f"has {a.shape[0]} rows", f"{rows} (one per behaviour of history_poi_codes)")
    return a


def _in_range(name: str, codes: np.ndarray, sizes: tuple[int, ...], allow_unknown: bool = False) -> None:
    """Check ``codes [S, C]`` against the codebooks, before any cast (so uint64 cannot wrap)."""
    low = -1 if allow_unknown else 0
    bad = (codes < low) | (codes >= np.asarray(sizes))
    if bad.any():
        i, level = np.argwhere(bad)[0]
        unknown = " (or -1 for unknown)" if allow_unknown else ""
        raise RequestError(
            f"{name}[{i}, {level}]", f"= {codes[i, level]} is out of range",
            f"a code in [0, {sizes[level]}){unknown}",
        )


def _int_vector(name: str, values, length: int, size: int) -> np.ndarray:
    if values is None:
        return np.zeros(length, np.int64)
    expected = f"{length} integers (one per behaviour)"
    a = _array(name, values, expected)
    if a.size == 0 and length == 0 and a.ndim <= 1:
        return np.zeros(0, np.int64)
    if a.shape != (length,) or not _integers(a):
        raise RequestError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    bad = np.flatnonzero((a < 0) | (a >= size))
    if len(bad):
        raise RequestError(f"{name}[{bad[0]}]", f"= {a[bad[0]]} is out of range", f"an id in [0, {size})")
    return a.astype(np.int64)


def _what(a: np.ndarray) -> str:
    if a.dtype == object:
        return "ragged rows or entries that are not numbers"
    return f"{a.dtype.name} values, not numbers" if a.dtype.kind in "USV" else f"{a.dtype} values"


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
