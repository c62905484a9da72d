"""``load_catalog_file``: a catalog from a file, its format chosen by the path."""

from __future__ import annotations

import os

from ..exceptions import CatalogFileError
from .catalog import Catalog, _file_path

__all__ = ["load_catalog_file"]

ACCEPTED = (
    "a .safetensors file (Catalog.save), a .parquet items file, or a directory of "
    "items.parquet and creatives.parquet (Catalog.to_parquet)"
)


def load_catalog_file(path: str | os.PathLike) -> Catalog:
    """The catalog at ``path``: a ``.safetensors`` file by ``Catalog.load``; a ``.parquet``
    file or a directory by ``Catalog.from_parquet``. Raises CatalogFileError (field ``path``)
    on any other path, and whatever the chosen loader raises."""
    path = _file_path(path, "a catalog file")
    if path.is_dir():
        return Catalog.from_parquet(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return Catalog.load(path)
    if suffix == ".parquet":
        return Catalog.from_parquet(path)
    raise CatalogFileError("path", f"is {path}, of neither format", ACCEPTED)
