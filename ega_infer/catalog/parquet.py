"""Catalogs as Parquet tables, the format ad pipelines produce (``Catalog.to_parquet`` and
``Catalog.from_parquet``).

A catalog is two tables. ``items.parquet``: ``item_id`` (integer), ``poi_codes`` (list of C
integers, one per POI codebook level), ``is_ad`` (bool), ``bid`` (float32 or float64, 0 for
organic items). ``creatives.parquet``: ``item_id`` (the owning item), ``creative_id``
(integer), ``creative_codes`` (list of Cc integers). The items table's schema metadata holds
``ega_infer.format`` (``"ega_infer.catalog.parquet/1"``) and ``ega_infer.codebook_sizes`` /
``ega_infer.creative_codebook_sizes`` (JSON lists).

Reading checks the schema, the metadata and the row count from the file footer before any
column is read, then nulls and list lengths before any column becomes a numpy array; content
rules (ranges, unique ids, owners) are ``Catalog.from_arrays``'. pyarrow is imported only here,
so ``import ega_infer`` works without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..exceptions import CatalogError, CatalogFileError, CheckpointError, EgaInferError, show_value
from .catalog import MAX_ITEMS, Catalog, _file_path, _sizes

__all__ = ["read_catalog", "write_catalog", "PARQUET_FORMAT", "ITEMS_FILE", "CREATIVES_FILE"]

PARQUET_FORMAT = "ega_infer.catalog.parquet/1"
ITEMS_FILE = "items.parquet"
CREATIVES_FILE = "creatives.parquet"
_FORMAT_KEY = "ega_infer.format"
_SIZES_KEYS = {"codebook_sizes": "ega_infer.codebook_sizes", "creative_codebook_sizes": "ega_infer.creative_codebook_sizes"}

# column -> kind of Arrow type accepted (see _type_ok), in the order to_parquet writes them
_ITEM_COLUMNS = {"item_id": "int", "poi_codes": "int_list", "is_ad": "bool", "bid": "float"}
_CREATIVE_COLUMNS = {"item_id": "int", "creative_id": "int", "creative_codes": "int_list"}
_KIND_TEXT = {
    "int": "an integer column (int64)",
    "int_list": "a list<int32 or int64> column",
    "bool": "a bool column",
    "float": "a float32 or float64 column",
}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CheckpointError(f"Parquet catalogs need pyarrow, which is not installed ({exc}): pip install pyarrow") from None
    return pa, pc, pq


def write_catalog(catalog: Catalog, path: str | os.PathLike) -> None:
    """Write ``catalog`` as ``path/items.parquet`` and ``path/creatives.parquet`` (``path`` is
    a directory, created if missing). Raises CheckpointError when they cannot be written."""
    pa, _, pq = _pyarrow()
    path = _file_path(path, "the catalog directory to write")
    meta = {
        _FORMAT_KEY: PARQUET_FORMAT,
        _SIZES_KEYS["codebook_sizes"]: json.dumps(list(catalog.codebook_sizes)),
        _SIZES_KEYS["creative_codebook_sizes"]: json.dumps(list(catalog.creative_codebook_sizes)),
    }
    items = pa.table(
        {
            "item_id": pa.array(catalog.item_ids, pa.int64()),
            "poi_codes": _list_array(pa, catalog.poi_codes),
            "is_ad": pa.array(catalog.is_ad, pa.bool_()),
            "bid": pa.array(catalog.bids, pa.float32()),
        }
    ).replace_schema_metadata(meta)
    creatives = pa.table(
        {
            "item_id": pa.array(np.repeat(catalog.item_ids, np.diff(catalog.creative_ptr)), pa.int64()),
            "creative_id": pa.array(catalog.creative_ids, pa.int64()),
            "creative_codes": _list_array(pa, catalog.creative_codes),
        }
    )
    try:
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(items, str(path / ITEMS_FILE))
        pq.write_table(creatives, str(path / CREATIVES_FILE))
    except Exception as exc:  # noqa: BLE001 - a file in the way, no permission, a full disk
        raise CheckpointError(f"{path}: cannot write the Parquet catalog ({exc})") from None


def _list_array(pa, codes: np.ndarray):
    """Rows of ``codes`` [R, L] as a list<int32> column (large_list past int32 offsets)."""
    rows, levels = codes.shape
    large = rows * levels >= 2**31
    offsets = np.arange(rows + 1, dtype=np.int64 if large else np.int32) * levels
    cls = pa.LargeListArray if large else pa.ListArray
    return cls.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(codes).reshape(-1), pa.int32()))


def read_catalog(
    cls: type[Catalog],
    path: str | os.PathLike,
    creatives: str | os.PathLike | None = None,
    *,
    codebook_sizes=None,
    creative_codebook_sizes=None,
) -> Catalog:
    """The catalog of a Parquet directory or items file (``Catalog.from_parquet`` documents
    the arguments and errors)."""
    pa, pc, pq = _pyarrow()
    path = _file_path(path, "a Parquet catalog (a directory or an items file)")
    items_path = path / ITEMS_FILE if path.is_dir() else path
    if creatives is None:
        creatives_path = items_path.parent / CREATIVES_FILE
        if not creatives_path.is_file():
            creatives_path = None  # an items file alone: a catalog without creatives
    else:
        creatives_path = _file_path(creatives, "a Parquet creatives file")
    explicit = {
        "codebook_sizes": None if codebook_sizes is None else _sizes("codebook_sizes", codebook_sizes),
        "creative_codebook_sizes": None if creative_codebook_sizes is None else _sizes("creative_codebook_sizes", creative_codebook_sizes),
    }

    schema, rows = _footer(pq, items_path, "items")
    _check_columns(pa, items_path, schema, _ITEM_COLUMNS, _CREATIVE_COLUMNS, "creatives")
    sizes = _metadata_sizes(items_path, schema.metadata or {}, explicit)
    arrays = _read_columns(pa, pc, pq, items_path, _ITEM_COLUMNS, rows, len(sizes["codebook_sizes"]))
    if creatives_path is not None:
        schema, rows = _footer(pq, creatives_path, "creatives")
        _check_columns(pa, creatives_path, schema, _CREATIVE_COLUMNS, _ITEM_COLUMNS, "items")
        got = _read_columns(pa, pc, pq, creatives_path, _CREATIVE_COLUMNS, rows, len(sizes["creative_codebook_sizes"]))
        arrays.update(creative_item_ids=got["item_id"], creative_ids=got["creative_id"], creative_codes=got["creative_codes"])
    try:
        return cls.from_arrays(
            arrays["item_id"], arrays["poi_codes"], arrays["is_ad"], arrays["bid"], **sizes,
            creative_item_ids=arrays.get("creative_item_ids"), creative_ids=arrays.get("creative_ids"),
            creative_codes=arrays.get("creative_codes"),
        )
    except CatalogError as exc:
        in_creatives = exc.field.startswith(("creative_item_ids", "creative_ids", "creative_codes"))
        raise CatalogFileError(exc.field, f"{exc.problem} (in {creatives_path if in_creatives else items_path})", exc.expected) from None


def _footer(pq, path: Path, what: str):
    """The Arrow schema and row count of a Parquet file, from its footer alone."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such Parquet {what} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is a directory or a special file, not a Parquet {what} file")
    try:
        schema = pq.read_schema(str(path))
        rows = pq.read_metadata(str(path)).num_rows
    except Exception as exc:  # noqa: BLE001 - whatever pyarrow says of a file it cannot read
        raise CheckpointError(f"{path}: not a readable Parquet file ({exc})") from None
    if not 0 <= rows <= MAX_ITEMS:  # the trie numbers rows in int32; refuse before allocating
        raise CatalogFileError("rows", f"= {rows} in the {what} file {path}", f"at most {MAX_ITEMS} rows")
    return schema, rows


def _check_columns(pa, path: Path, schema, columns: dict[str, str], other: dict[str, str], other_name: str) -> None:
    names = list(schema.names)
    listing = f"the columns {list(columns)}"
    # the other table's exact columns: the two files were most likely given the wrong way round
    hint = f" (these are the columns of a {other_name} table)" if sorted(names) == sorted(other) else ""
    for name in columns:
        if name not in names:
            raise CatalogFileError(name, f"column is missing in {path}{hint}", listing)
    for name in names:
        if name not in columns:
            raise CatalogFileError(name, f"is a column a catalog does not have, in {path}", f"only {listing}")
        if names.count(name) > 1:
            raise CatalogFileError(name, f"column appears {names.count(name)} times in {path}", f"{listing}, once each")
    for name, kind in columns.items():
        t = schema.field(name).type
        if not _type_ok(pa, kind, t):
            raise CatalogFileError(name, f"column has Arrow type {t} in {path}", _KIND_TEXT[kind])


def _type_ok(pa, kind: str, t) -> bool:
    types = pa.types
    if kind == "int":
        return types.is_integer(t)
    if kind == "bool":
        return types.is_boolean(t)
    if kind == "float":
        return types.is_float32(t) or types.is_float64(t)
    is_list = types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t)
    return is_list and types.is_integer(t.value_type)


def _metadata_sizes(path: Path, meta: dict[bytes, bytes], explicit: dict) -> dict[str, tuple[int, ...]]:
    """The codebook sizes: the keyword arguments where given, else the metadata; where both,
    they must agree. The format key is required only when the metadata supplies a size."""
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in meta.items()}
    fmt = meta.get(_FORMAT_KEY)
    if (fmt is not None and fmt != PARQUET_FORMAT) or (fmt is None and None in explicit.values()):
        problem = "metadata key is missing" if fmt is None else f"metadata is {show_value(fmt)}"
        raise CatalogFileError(_FORMAT_KEY, f"{problem} in {path}", f"{PARQUET_FORMAT!r} (or pass codebook_sizes and creative_codebook_sizes)")
    sizes = {}
    for arg, key in _SIZES_KEYS.items():
        given = explicit[arg]
        if key not in meta:
            if given is None:
                raise CatalogFileError(key, f"metadata key is missing in {path}", f"a JSON list of codebook sizes (or pass {arg}=)")
            sizes[arg] = given
            continue
        try:
            stored = _sizes(key, json.loads(meta[key]))
        except (ValueError, RecursionError) as exc:  # bad JSON, or a CatalogError on its content
            problem = f"{exc.problem} in {path}" if isinstance(exc, CatalogError) else f"metadata is {show_value(meta[key])}, not JSON, in {path}"
            raise CatalogFileError(getattr(exc, "field", key), problem, "a JSON list of codebook sizes") from None
        if given is not None and given != stored:
            raise CatalogFileError(key, f"= {list(stored)} in {path} disagrees with {arg}={list(given)}", f"{arg} equal to the metadata, or one of them")
        sizes[arg] = stored
    return sizes


def _read_columns(pa, pc, pq, path: Path, columns: dict[str, str], rows: int, levels: int) -> dict[str, np.ndarray]:
    """The columns of a checked file as numpy arrays (list columns as [rows, levels])."""
    try:
        table = pq.read_table(str(path), columns=list(columns))
        if table.num_rows != rows:
            raise CatalogFileError("rows", f"the table has {table.num_rows} rows where the footer says {rows}, in {path}")
        arrays = {}
        for name, kind in columns.items():
            col = table.column(name)
            if col.null_count:
                first = int(np.flatnonzero(col.is_null().to_numpy())[0])
                raise CatalogFileError(f"{name}[{first}]", f"is null in {path}", _KIND_TEXT[kind].replace(" column", " value") + ", not null")
            if kind != "int_list":
                arrays[name] = col.to_numpy()
                continue
            # lengths first: a hostile list length must not become a huge flat array
            lengths = pc.list_value_length(col).to_numpy()
            wrong = np.flatnonzero(lengths != levels)
            if len(wrong):
                i = int(wrong[0])
                raise CatalogFileError(f"{name}[{i}]", f"has {lengths[i]} codes in {path}", f"{levels} (one per codebook level)")
            values = pc.list_flatten(col)
            if values.null_count:
                k = int(np.flatnonzero(values.is_null().to_numpy())[0])
                raise CatalogFileError(f"{name}[{k // levels}, {k % levels}]", f"is null in {path}", "an integer code, not null")
            arrays[name] = values.to_numpy().reshape(rows, levels)
    except EgaInferError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt page, a footer that lies
        raise CheckpointError(f"{path}: cannot read the Parquet table ({exc})") from None
    return arrays
