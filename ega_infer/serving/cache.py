"""The result cache: slates of recent identical requests, and one computation per key in flight.

GR4AD serves a one-minute result cache (+27.8% QPS). A key is the request's content (every
field but ``request_id``), the decode config and the catalog and model versions the slate is
served with, so a catalog or weight update never returns a slate of the old one; seeing a new
version also drops every older entry. Entries live ``ttl_s`` seconds; at most ``max_entries``
are kept (least recently used evicted). Only slates without an error are stored.

A cached slate is the one first served for that content: its payments are what the auction
charged then, against the catalog version it reports (the same bids and competitors), so a
hit within the TTL prices the same as a fresh decode of that version would, except where the
load-aware beam controller would now choose another beam schedule (``beam_schedule`` says which
one it was served with).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np

from ..decoding import DecodeConfig
from ..exceptions import ConfigError
from ..request import Request
from ..slate import Slate

__all__ = ["ResultCache"]

Key = tuple[bytes, DecodeConfig, str, str]


class ResultCache:
    def __init__(self, ttl_s: float = 60.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s < math.inf:
            raise ConfigError("ttl_s", f"is {ttl_s!r}", "a positive number of seconds")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or not 1 <= max_entries <= 10**8:
            raise ConfigError("max_entries", f"is {max_entries!r}", "an int in [1, 1e8]")
        self.ttl_s = float(ttl_s)
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, Slate]] = OrderedDict()
        self._inflight: dict[Key, list[Hashable]] = {}
        self._versions: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self.hits = self.misses = self.shared = 0

    @staticmethod
    def key(request: Request, config: DecodeConfig, catalog_version: str, model_version: str) -> Key | None:
        """The cache key of ``request`` served with ``config`` on those versions; None when its
        content cannot be read as arrays (it fails validation anyway: not cached)."""
        if not isinstance(request.request_id, str):  # refused by validation: never served from here
            return None
        digest = hashlib.blake2b(digest_size=20)
        for f in dataclasses.fields(Request):
            if f.name == "request_id":
                continue
            value = getattr(request, f.name)
            digest.update(f.name.encode())
            if value is None:
                digest.update(b"\0none")
                continue
            try:
                a = np.asarray(value)
            except Exception:  # noqa: BLE001 - ragged or hostile content: never cached
                return None
            if a.dtype == object or a.dtype.kind not in "biuf" or a.size > 1 << 24:
                return None
            if a.dtype.kind in "iu":  # the same ids as int32 or int64 are the same request (bools are not ids)
                a = a.astype(np.int64) if a.dtype.kind != "u" or a.size == 0 or a.max() < 2**63 else a
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.digest(), config, catalog_version, model_version

    def lookup(self, key: Key) -> Slate | None:
        """The slate stored under ``key`` if it is younger than the TTL."""
        with self._lock:
            self._see_versions(key)
            entry = self._entries.get(key)
            if entry is not None and self._clock() - entry[0] < self.ttl_s:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None

    def join(self, key: Key, waiter: Hashable) -> bool:
        """True if ``key`` is being computed (``waiter`` is handed its slate by ``complete``);
        False if the caller is the first and must compute it."""
        with self._lock:
            waiters = self._inflight.get(key)
            if waiters is None:
                self._inflight[key] = []
                return False
            waiters.append(waiter)
            self.shared += 1
            return True

    def complete(self, key: Key, slate: Slate) -> list[Hashable]:
        """Store ``slate`` (unless it has an error) under the versions it was served with, end
        the computation of ``key`` and return the waiters that joined it."""
        with self._lock:
            waiters = self._inflight.pop(key, [])
            if slate.ok:
                stored = (key[0], key[1], slate.catalog_version, slate.model_version)
                self._see_versions(stored)
                self._entries[stored] = (self._clock(), slate)
                self._entries.move_to_end(stored)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return waiters

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                    "shared_in_flight": self.shared, "in_flight": len(self._inflight)}

    def _see_versions(self, key: Key) -> None:
        versions = (key[2], key[3])
        if versions != self._versions:  # an update: entries of older versions can never hit again
            if self._versions is not None:
                self._entries = OrderedDict((k, v) for k, v in self._entries.items() if (k[2], k[3]) == versions)
            self._versions = versions
