"""Catalog and weight administration behind a bearer token.

The token comes from a file or the ``EGA_INFER_ADMIN_TOKEN`` environment variable; with none
configured the admin endpoints are off (404). Files are loaded only from the configured catalog
(and weights) directory: a path is resolved (symlinks followed) and refused unless it lies
inside it. Updates run one at a time (each reads the current catalog and swaps in a new one
with a new version); in-flight batches finish on the catalog they started with.
"""

from __future__ import annotations

import hmac
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Catalog, load_catalog_file
from ..exceptions import ConfigError, show_value

__all__ = ["AdminConfig", "TOKEN_ENV", "read_token", "inside"]

TOKEN_ENV = "EGA_INFER_ADMIN_TOKEN"
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class AdminConfig:
    """``token`` None: admin off. ``catalog_dir`` / ``weights_dir``: the only places files are
    loaded from (None: that kind of load is off)."""

    token: str | None = None
    catalog_dir: Path | None = None
    weights_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16
                                       or not self.token.isprintable() or " " in self.token):
            raise ConfigError("admin token", "is shorter than 16 characters or not printable",
                              "a printable token of at least 16 characters without spaces")
        for name in ("catalog_dir", "weights_dir"):
            value = getattr(self, name)
            if value is not None:
                path = Path(value).resolve()
                if not path.is_dir():
                    raise ConfigError(name, f"{show_value(str(value))} is not a directory", "an existing directory")
                object.__setattr__(self, name, path)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def authorized(self, header: str | None) -> int:
        """200 for the right bearer token, 401 without one, 403 for a wrong one."""
        if not header or not header.startswith("Bearer "):
            return 401
        given = header[len("Bearer "):].strip().encode()
        return 200 if hmac.compare_digest(given, self.token.encode()) else 403


def read_token(token_file: str | None) -> str | None:
    """The admin token from ``token_file`` (first line) or ``EGA_INFER_ADMIN_TOKEN``; None if neither."""
    if token_file:
        path = Path(token_file)
        if not path.is_file() or path.stat().st_size > MAX_TOKEN_BYTES:
            raise ConfigError("--admin-token-file", f"{show_value(token_file)} is not a readable token file",
                              f"a file of at most {MAX_TOKEN_BYTES} bytes holding the token")
        lines = path.read_text(errors="replace").splitlines()
        return lines[0].strip() if lines else ""
    return os.environ.get(TOKEN_ENV) or None


def inside(root: Path | None, name: object, field: str) -> Path:
    """``name`` (relative to ``root``, or absolute) resolved, if it lies inside ``root``."""
    if root is None:
        raise ConfigError(field, "cannot be loaded: the server has no directory configured for it",
                          "a server started with the directory option")
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 4096:
        raise ConfigError(field, f"is {show_value(name)}", f"the name of a file or directory inside {root}")
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(field, f"{show_value(name)} lies outside the configured directory",
                          f"a path inside {root}")
    if not path.exists():
        raise ConfigError(field, f"{show_value(name)} does not exist in {root}", "an existing file or directory")
    return path


class CatalogUpdates:
    """The read-modify-write catalog updates, one at a time."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()

    def load(self, root: Path | None, name: object) -> tuple[str, Catalog]:
        path = inside(root, name, "path")
        catalog = load_catalog_file(path)
        with self._lock:
            return self.backend.set_catalog(catalog), catalog

    def bids(self, item_ids: object, bids: object) -> tuple[str, Catalog]:
        with self._lock:
            catalog = self._current().with_bids(item_ids, bids)
            return self.backend.set_catalog(catalog), catalog

    def remove(self, item_ids: object) -> tuple[str, Catalog]:
        with self._lock:
            catalog = self._current().without_items(item_ids)
            return self.backend.set_catalog(catalog), catalog

    def _current(self) -> Catalog:
        catalog = self.backend.catalog()
        if catalog is None:
            raise ConfigError("catalog", "is not set", "a catalog loaded first (POST /admin/catalog/load)")
        return catalog
