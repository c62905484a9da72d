"""The live inventory: items (POIs) with semantic IDs, ad flags, bids and creatives.

A ``Catalog`` is immutable: bid updates and removals return a new catalog that shares what did
not change, so the engine swaps catalogs atomically while requests decode against the old one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..exceptions import CatalogError, CatalogFileError, CheckpointError, EgaInferError, show_value
from .device import DeviceCatalog
from .trie import TrieArrays

__all__ = ["Catalog", "Item", "Creative", "MAX_LEVELS", "MAX_CODEBOOK_SIZE", "MAX_ITEMS"]

MAX_LEVELS = 8  # code levels of a semantic ID: what the C++ trie build compiles in
MAX_CODEBOOK_SIZE = 2**31 - 1  # codes are int32; the trie build's memory is O(N*C + 2**16) per level
MAX_ITEMS = 2**31 - 1  # the trie numbers its rows in int32


@dataclass(frozen=True, slots=True)
class Creative:
    """One creative of an item: its id (an int64) and its codes, 1 to ``MAX_LEVELS`` integers
    in ``[0, MAX_CODEBOOK_SIZE)`` (a list or an array is stored as a tuple of ints). Raises
    ``CatalogError`` naming the field (``"codes[1]"``) on anything else."""

    creative_id: int
    codes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "creative_id", _scalar_id("creative_id", self.creative_id))
        object.__setattr__(self, "codes", _code_tuple("codes", self.codes))


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog item. ``item_id``: an int64; ``poi_codes``: 1 to ``MAX_LEVELS`` integer codes
    (stored as a tuple of ints); ``is_ad``: a bool (or 0/1); ``bid``: a real number, finite,
    ``>= 0`` and within float32's range (the catalog stores an organic item's bid as 0);
    ``creatives``: a tuple (or list) of ``Creative``. Raises ``CatalogError`` naming the field."""

    item_id: int
    poi_codes: tuple[int, ...]
    is_ad: bool = False
    bid: float = 0.0
    creatives: tuple[Creative, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_id", _scalar_id("item_id", self.item_id))
        object.__setattr__(self, "poi_codes", _code_tuple("poi_codes", self.poi_codes))
        if not _is_flag(self.is_ad):
            raise CatalogError("is_ad", f"is {show_value(self.is_ad)} (a {type(self.is_ad).__name__})", "a boolean (True/False, or 0/1)")
        object.__setattr__(self, "is_ad", bool(self.is_ad))
        object.__setattr__(self, "bid", _scalar_bid("bid", self.bid))
        creatives = self.creatives
        if not isinstance(creatives, (list, tuple)):
            raise CatalogError("creatives", f"is {show_value(creatives)} (a {type(creatives).__name__})", "a tuple of Creative")
        for j, creative in enumerate(creatives):
            if not isinstance(creative, Creative):
                raise CatalogError(f"creatives[{j}]", f"is {show_value(creative)} (a {type(creative).__name__})", "a Creative")
        object.__setattr__(self, "creatives", tuple(creatives))


class Catalog:
    """Items and their trie. Build with ``from_arrays`` or ``from_items``.

    Arrays (read-only): ``item_ids`` int64 [N], ``poi_codes`` int32 [N, C], ``is_ad`` bool [N],
    ``bids`` float32 [N] (0 for organic items), ``creative_ptr`` int64 [N + 1] with
    ``creative_ids`` int64 [M] and ``creative_codes`` int32 [M, Cc] (item i owns creatives
    ``creative_ptr[i] .. creative_ptr[i+1] - 1``).
    """

    def __init__(
        self,
        *,
        item_ids: np.ndarray,
        poi_codes: np.ndarray,
        is_ad: np.ndarray,
        bids: np.ndarray,
        creative_ptr: np.ndarray,
        creative_ids: np.ndarray,
        creative_codes: np.ndarray,
        codebook_sizes: tuple[int, ...],
        creative_codebook_sizes: tuple[int, ...],
        trie: TrieArrays,
        id_order: np.ndarray | None = None,
        sorted_ids: np.ndarray | None = None,
    ) -> None:
        """Takes validated arrays; build with ``from_arrays``. ``id_order``/``sorted_ids``, the
        rows sorted by id and those ids, let updates pass on the id index instead of re-sorting."""
        self.item_ids = _frozen(item_ids)
        self.poi_codes = _frozen(poi_codes)
        self.is_ad = _frozen(is_ad)
        self.bids = _frozen(bids)
        self.creative_ptr = _frozen(creative_ptr)
        self.creative_ids = _frozen(creative_ids)
        self.creative_codes = _frozen(creative_codes)
        self.codebook_sizes = tuple(codebook_sizes)
        self.creative_codebook_sizes = tuple(creative_codebook_sizes)
        self.trie = trie
        if id_order is None:
            id_order = np.argsort(self.item_ids, kind="stable")
            sorted_ids = self.item_ids[id_order]
        self._id_order = _frozen(id_order)
        self._sorted_ids = _frozen(sorted_ids)
        self._device_cache: dict[torch.device, DeviceCatalog] = {}
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        item_ids: Sequence[int] | np.ndarray,
        poi_codes: Sequence[Sequence[int]] | np.ndarray,
        is_ad: Sequence[bool] | np.ndarray,
        bids: Sequence[float] | np.ndarray,
        *,
        codebook_sizes: Sequence[int],
        creative_codebook_sizes: Sequence[int],
        creative_item_ids: Sequence[int] | np.ndarray | None = None,
        creative_ids: Sequence[int] | np.ndarray | None = None,
        creative_codes: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> Catalog:
        """Validate the arrays and build the catalog and its trie.

        item_ids [N] unique integers (int64); poi_codes [N, C] integers, ``[i, l]`` in
        ``[0, codebook_sizes[l])``; is_ad [N] booleans (or 0/1 integers); bids [N] real
        numbers, finite, ``>= 0`` and at most float32's max (stored as float32; 0 for organic
        items); codebook_sizes / creative_codebook_sizes: 1 to ``MAX_LEVELS`` (8) integers in
        ``[1, MAX_CODEBOOK_SIZE]`` (``2**31 - 1``: codes are int32, and the trie build needs
        ``O(N*C)`` memory plus at most ``2**16 + 2**15`` counters per level, whatever the size).
        Creatives (all three or none; none is a catalog without creatives): creative_ids [M]
        unique integers, creative_item_ids [M] ids of catalog items (an item may own none),
        creative_codes [M, Cc] in ``[0, creative_codebook_sizes[l])``. N is at most
        ``MAX_ITEMS``. Lists and numpy arrays are accepted; bools, floats and strings where
        integers are expected, strings or bools as bids, ragged nesting and None are not.

        Raises
        ------
        CatalogError naming the field or entry (``"bids[3]"``, ``"creative_codes[2, 1]"``) and
        what was expected.
        """
        sizes = _sizes("codebook_sizes", codebook_sizes)
        creative_sizes = _sizes("creative_codebook_sizes", creative_codebook_sizes)
        item_ids = _int_array("item_ids", item_ids)
        n = len(item_ids)
        if n > MAX_ITEMS:
            raise CatalogError("item_ids", f"has {n} entries", f"at most {MAX_ITEMS} items")
        poi_codes = _codes("poi_codes", poi_codes, n, sizes)
        is_ad = _flags("is_ad", is_ad, n)
        bids = _bids(bids, n)
        bids = np.where(is_ad, bids, 0).astype(np.float32)
        id_order, sorted_ids = _unique("item_ids", item_ids)

        given = {"creative_item_ids": creative_item_ids, "creative_ids": creative_ids, "creative_codes": creative_codes}
        if any(v is not None for v in given.values()):
            missing = [k for k, v in given.items() if v is None]
            if missing:
                others = ", ".join(k for k in given if k not in missing)
                raise CatalogError(missing[0], f"is missing while {others} {'is' if len(missing) == 2 else 'are'} given", "creative_item_ids, creative_ids and creative_codes together, or none of them")
        else:
            creative_item_ids = np.zeros(0, np.int64)
            creative_ids = np.zeros(0, np.int64)
            creative_codes = np.zeros((0, len(creative_sizes)), np.int32)
        creative_ids = _int_array("creative_ids", creative_ids)
        m = len(creative_ids)
        creative_item_ids = _int_array("creative_item_ids", creative_item_ids)
        if len(creative_item_ids) != m:
            raise CatalogError("creative_item_ids", f"has {len(creative_item_ids)} entries", f"{m} (one per creative)")
        creative_codes = _codes("creative_codes", creative_codes, m, creative_sizes)
        _unique("creative_ids", creative_ids)
        owner = _lookup(item_ids, creative_item_ids, id_order, sorted_ids)
        unknown = np.flatnonzero(owner < 0)
        if len(unknown):
            j = unknown[0]
            raise CatalogError(
                f"creative_item_ids[{j}]", f"= {creative_item_ids[j]} names no item of the catalog",
                "the id of an item in item_ids",
            )
        order = np.argsort(owner * max(m, 1) + np.arange(m))  # by item, given order within an item
        creative_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=n), out=creative_ptr[1:])

        try:
            trie = TrieArrays.build(poi_codes, is_ad, bids, sizes)
        except ValueError as exc:  # unreachable: the arrays were checked above, as _C checks them
            raise CatalogError("poi_codes", f"the trie build refused the catalog ({exc})") from None
        return cls(
            item_ids=item_ids, poi_codes=poi_codes, is_ad=is_ad, bids=bids,
            creative_ptr=creative_ptr, creative_ids=creative_ids[order],
            creative_codes=creative_codes[order], codebook_sizes=sizes,
            creative_codebook_sizes=creative_sizes, trie=trie, id_order=id_order, sorted_ids=sorted_ids,
        )

    @classmethod
    def from_items(
        cls,
        items: Sequence[Item],
        *,
        codebook_sizes: Sequence[int],
        creative_codebook_sizes: Sequence[int],
    ) -> Catalog:
        """The catalog of ``items`` (a list or tuple of ``Item``, in row order), by the rules of
        ``from_arrays``. Raises CatalogError naming the item (``"items[3]"``) or the entry."""
        sizes = _sizes("codebook_sizes", codebook_sizes)
        creative_sizes = _sizes("creative_codebook_sizes", creative_codebook_sizes)
        if not isinstance(items, (list, tuple)):
            raise CatalogError("items", f"is {show_value(items)} (a {type(items).__name__})", "a list of Item")
        levels = len(sizes)
        for i, item in enumerate(items):
            if not isinstance(item, Item):
                raise CatalogError(f"items[{i}]", f"is {show_value(item)} (a {type(item).__name__})", "an Item")
            if len(item.poi_codes) != levels:
                raise CatalogError(f"items[{i}].poi_codes", f"has {len(item.poi_codes)} levels", f"{levels}")
        creatives = [(item.item_id, c.creative_id, tuple(c.codes)) for item in items for c in item.creatives]
        for j, (_, _, codes) in enumerate(creatives):
            if len(codes) != len(creative_sizes):
                raise CatalogError(f"creatives[{j}].codes", f"has {len(codes)} levels", f"{len(creative_sizes)}")
        return cls.from_arrays(
            [item.item_id for item in items],
            np.array([item.poi_codes for item in items], dtype=np.int64).reshape(len(items), levels),
            [item.is_ad for item in items],
            [item.bid for item in items],
            codebook_sizes=sizes,
            creative_codebook_sizes=creative_sizes,
            creative_item_ids=np.array([c[0] for c in creatives], dtype=np.int64),
            creative_ids=np.array([c[1] for c in creatives], dtype=np.int64),
            creative_codes=np.array([c[2] for c in creatives], dtype=np.int64).reshape(len(creatives), len(creative_sizes)),
        )

    # -- queries -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_ads(self) -> int:
        return int(self.is_ad.sum())

    def index_of(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row index of each id (a 1-D list or array of integers), -1 for ids not in the
        catalog. Raises CatalogError (field ``item_ids``) on anything else."""
        return _lookup(self.item_ids, _int_array("item_ids", item_ids), self._id_order, self._sorted_ids)

    def item(self, index: int) -> Item:
        """The item of row ``index`` (an integer in ``[0, len(self))``)."""
        if not _is_int(index) or not 0 <= index < len(self):
            raise CatalogError("index", f"is {show_value(index)}", f"a row in [0, {len(self)})")
        lo, hi = self.creative_ptr[index], self.creative_ptr[index + 1]
        return Item(
            int(self.item_ids[index]), tuple(int(c) for c in self.poi_codes[index]), bool(self.is_ad[index]),
            float(self.bids[index]),
            tuple(Creative(int(self.creative_ids[j]), tuple(int(c) for c in self.creative_codes[j])) for j in range(lo, hi)),
        )

    def on_device(self, device: torch.device | str) -> DeviceCatalog:
        """The catalog's arrays and trie as tensors on ``device``, built once per catalog and
        device (thread-safe)."""
        device = torch.device(device)
        with self._lock:
            arrays = self._device_cache.get(device)
            if arrays is None:
                arrays = self._device_cache[device] = DeviceCatalog.build(self, device)
            return arrays

    # -- updates (each returns a new catalog) -----------------------------------------------
    def with_bids(self, item_ids: Sequence[int] | np.ndarray, bids: Sequence[float] | np.ndarray) -> Catalog:
        """New catalog with the bids of ``item_ids`` replaced. The trie structure and the id
        index are shared; only the leaves of those items and their paths are redone.

        ``item_ids``: distinct ids of catalog items; ``bids``: one per id, by the rules of
        ``from_arrays`` (an organic item only takes 0). Raises CatalogError naming the entry."""
        item_ids = _int_array("item_ids", item_ids)
        new = _bids(bids, len(item_ids))
        _unique("item_ids", item_ids)  # one new bid per item: a repeat would be ambiguous
        rows = _lookup(self.item_ids, item_ids, self._id_order, self._sorted_ids)
        _known("item_ids", item_ids, rows)
        organic = np.flatnonzero(~self.is_ad[rows] & (new > 0))
        if len(organic):
            j = organic[0]
            raise CatalogError(f"item_ids[{j}]", f"= {item_ids[j]} is an organic item", "ad items only (organic items have no bid)")
        all_bids = self.bids.copy()
        all_bids[rows] = new
        trie = self.trie.with_bids(self.is_ad, all_bids, rows)
        return self._replace(bids=all_bids, trie=trie)

    def without_items(self, item_ids: Sequence[int] | np.ndarray) -> Catalog:
        """New catalog without ``item_ids`` (and their creatives). Linear time, no sort: the
        trie is pruned instead of rebuilt and the id index filtered instead of re-sorted.

        ``item_ids``: ids of catalog items (a repeat removes the item once; removing every item
        gives an empty catalog). Raises CatalogError naming an unknown id."""
        item_ids = _int_array("item_ids", item_ids)
        rows = _lookup(self.item_ids, item_ids, self._id_order, self._sorted_ids)
        _known("item_ids", item_ids, rows)
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        counts = np.diff(self.creative_ptr)
        keep_creative = np.repeat(keep, counts)
        creative_ptr = np.zeros(int(keep.sum()) + 1, np.int64)
        np.cumsum(counts[keep], out=creative_ptr[1:])
        trie = self.trie.without_items(keep, self.is_ad, self.bids)
        # The id index is filtered, not re-sorted: the removed ids leave their places in id
        # order (found by search, not by gathering keep in id order) and the rows are renumbered.
        kept_in_order = np.ones(len(self), dtype=bool)
        kept_in_order[np.searchsorted(self._sorted_ids, item_ids)] = False
        new_row = np.cumsum(keep)
        new_row -= 1
        return Catalog(
            item_ids=self.item_ids[keep], poi_codes=_rows(self.poi_codes, keep), is_ad=self.is_ad[keep],
            bids=self.bids[keep], creative_ptr=creative_ptr, creative_ids=self.creative_ids[keep_creative],
            creative_codes=_rows(self.creative_codes, keep_creative), codebook_sizes=self.codebook_sizes,
            creative_codebook_sizes=self.creative_codebook_sizes, trie=trie,
            id_order=new_row[self._id_order[kept_in_order]], sorted_ids=self._sorted_ids[kept_in_order],
        )

    def _replace(self, **changes) -> Catalog:
        """A copy with ``changes``; the rows and their ids stay, so the id index is shared."""
        fields = dict(
            item_ids=self.item_ids, poi_codes=self.poi_codes, is_ad=self.is_ad, bids=self.bids,
            creative_ptr=self.creative_ptr, creative_ids=self.creative_ids,
            creative_codes=self.creative_codes, codebook_sizes=self.codebook_sizes,
            creative_codebook_sizes=self.creative_codebook_sizes, trie=self.trie,
            id_order=self._id_order, sorted_ids=self._sorted_ids,
        )
        fields.update(changes)
        return Catalog(**fields)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the catalog as one safetensors file (the trie is rebuilt on load). Raises
        CheckpointError when the file cannot be written."""
        from safetensors.numpy import save_file

        path = _file_path(path, "the catalog file to write")

        tensors = {
            "item_ids": self.item_ids, "poi_codes": self.poi_codes, "is_ad": self.is_ad.astype(np.uint8),
            "bids": self.bids, "creative_item_ids": np.repeat(self.item_ids, np.diff(self.creative_ptr)),
            "creative_ids": self.creative_ids, "creative_codes": self.creative_codes,
        }
        meta = {
            "codebook_sizes": json.dumps(list(self.codebook_sizes)),
            "creative_codebook_sizes": json.dumps(list(self.creative_codebook_sizes)),
            "format": FILE_FORMAT,
        }
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
        except Exception as exc:  # noqa: BLE001 - a directory, no permission, a full disk
            raise CheckpointError(f"{path}: cannot write the catalog ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        """The catalog ``save`` wrote to ``path``.

        The file must hold exactly the tensors ``save`` writes (item_ids int64 [N], poi_codes
        int32 [N, C], is_ad uint8 [N] of 0/1, bids float32 [N], creative_item_ids int64 [M],
        creative_ids int64 [M], creative_codes int32 [M, Cc]) and the metadata ``format``
        (``"ega_infer.catalog/1"``), ``codebook_sizes`` and ``creative_codebook_sizes`` (JSON
        lists of integers); its content follows the rules of ``from_arrays``.

        Raises
        ------
        CheckpointError: the file is missing, a directory or not safetensors.
        CatalogFileError (a CheckpointError and a CatalogError): a tensor or metadata key is
        missing, extra or malformed, or the content is not a valid catalog; ``field`` names
        the tensor, key or entry (``"bids[3]"``).
        """
        path = _file_path(path, "a catalog file")
        if not path.exists():
            raise CheckpointError(f"{path}: no such catalog file")
        if not path.is_file():
            raise CheckpointError(f"{path}: is a directory or a special file, not a catalog file")
        arrays, (sizes, creative_sizes) = _read_catalog_file(path)
        try:
            return cls.from_arrays(
                arrays["item_ids"], arrays["poi_codes"], arrays["is_ad"], arrays["bids"],
                codebook_sizes=sizes, creative_codebook_sizes=creative_sizes,
                creative_item_ids=arrays["creative_item_ids"], creative_ids=arrays["creative_ids"],
                creative_codes=arrays["creative_codes"],
            )
        except CatalogError as exc:
            raise CatalogFileError(exc.field, f"{exc.problem} (in {path})", exc.expected) from None

    def to_parquet(self, path: str | Path) -> None:
        """Write the catalog as the Parquet tables ``path/items.parquet`` and
        ``path/creatives.parquet`` (``path``, a directory, is created if missing), the codebook
        sizes in the items table's metadata. Needs pyarrow. Raises CheckpointError when the
        files cannot be written or pyarrow is not installed."""
        from .parquet import write_catalog

        write_catalog(self, path)

    @classmethod
    def from_parquet(
        cls,
        path: str | Path,
        creatives: str | Path | None = None,
        *,
        codebook_sizes: Sequence[int] | None = None,
        creative_codebook_sizes: Sequence[int] | None = None,
    ) -> Catalog:
        """The catalog of Parquet tables, as ``to_parquet`` writes them or an ad pipeline does.

        ``path``: a directory holding ``items.parquet`` (and ``creatives.parquet``), or an items
        file. ``creatives``: the creatives file; by default ``creatives.parquet`` next to the
        items file, and without one the catalog has no creatives. Items columns: ``item_id``
        (integer), ``poi_codes`` (list of C integers), ``is_ad`` (bool), ``bid`` (float32 or
        float64); creatives columns: ``item_id``, ``creative_id`` (integers), ``creative_codes``
        (list of Cc integers); no nulls, no other columns. The codebook sizes come from the
        keyword arguments or the items table's metadata (``ega_infer.codebook_sizes``,
        ``ega_infer.creative_codebook_sizes``, JSON lists, with ``ega_infer.format`` =
        ``"ega_infer.catalog.parquet/1"``); both must agree where both are given. The content
        follows the rules of ``from_arrays``. Needs pyarrow.

        Raises
        ------
        CheckpointError: a file is missing, not Parquet or unreadable, or pyarrow is missing.
        CatalogFileError (a CheckpointError and a CatalogError): a column is missing, extra,
        of the wrong type, null (``"bid[3]"``) or of the wrong length (``"poi_codes[5]"``), a
        metadata key is missing or malformed, or the content is not a valid catalog.
        CatalogError: ``codebook_sizes`` or ``creative_codebook_sizes`` is malformed.
        """
        from .parquet import read_catalog

        return read_catalog(
            cls, path, creatives, codebook_sizes=codebook_sizes, creative_codebook_sizes=creative_codebook_sizes,
        )

    def __repr__(self) -> str:
        return (
            f"Catalog({len(self)} items, {self.num_ads} ads, {len(self.creative_ids)} creatives, "
            f"codebooks {self.codebook_sizes})"
        )


def _rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a[mask]`` for a C-contiguous 2-D array, each row taken as one opaque element: numpy's
    row-wise boolean indexing is several times slower (0.27 s against 0.04 s for 10M x 3)."""
    row = np.dtype((np.void, a.dtype.itemsize * a.shape[1]))
    return a.view(row)[:, 0][mask].view(a.dtype).reshape(-1, a.shape[1])


# -- validation helpers (each error names the field and what was expected) -------------------
def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_int64(v: object) -> bool:
    return _is_int(v) and -(2**63) <= v < 2**63


def _is_real(v: object) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _is_float64(v: object) -> bool:
    return _is_real(v) and not (isinstance(v, int) and abs(v) >= 2**1024)


def _is_flag(v: object) -> bool:
    return isinstance(v, (bool, np.bool_)) or (_is_int(v) and v in (0, 1))


def _first_bad(values: object, ok, depth: int) -> tuple[str, str] | None:
    """Where a list/tuple input (``depth`` 1: flat, 2: rows) first holds an entry ``ok`` refuses
    or a row of another length: ``("[i]" or "[i, j]", what is there)``. Only runs on the error
    path, to name the entry numpy would not say."""
    if not isinstance(values, (list, tuple)):
        return None
    width = None
    for i, v in enumerate(values):
        if depth == 1:
            if not ok(v):
                return f"[{i}]", f"is {show_value(v)} (a {type(v).__name__})"
            continue
        if not isinstance(v, (list, tuple, np.ndarray)) or (isinstance(v, np.ndarray) and v.ndim != 1):
            return f"[{i}]", f"is {show_value(v)} (a {type(v).__name__}), not a row"
        if width is None:
            width = len(v)
        elif len(v) != width:
            return f"[{i}]", f"has {len(v)} entries where row 0 has {width} (a ragged nesting)"
        for j, x in enumerate(v):
            if not ok(x):
                return f"[{i}, {j}]", f"is {show_value(x)} (a {type(x).__name__})"
    return None


def _int_type(t: type) -> bool:
    return issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_))


def _flag_type(t: type) -> bool:
    return issubclass(t, (int, np.integer, np.bool_))


def _real_type(t: type) -> bool:
    return issubclass(t, (int, float, np.integer, np.floating)) and not issubclass(t, (bool, np.bool_))


# dtype kinds accepted -> (accepted element type, accepted element value) of list inputs
_ELEMENTS = {"iu": (_int_type, _is_int64), "biu": (_flag_type, _is_flag), "iuf": (_real_type, _is_float64)}


def _element_types(values: list | tuple, depth: int) -> set[type]:
    """The types of a list input's entries (of its rows' entries for ``depth`` 2), at C speed
    for plain lists: numpy would turn a bool among integers or floats into a number."""
    if depth == 1:
        return set(map(type, values))
    types: set[type] = set()
    for row in values:
        if isinstance(row, np.ndarray):
            types.add(row.dtype.type)
        elif isinstance(row, (list, tuple)):
            types.update(map(type, row))
        else:
            types.add(type(row))
    return types


def _array(name: str, values: object, depth: int, expected: str, kinds: str) -> np.ndarray:
    """``np.asarray(values)``, refusing what is not an array of dtype kind in ``kinds`` with a
    CatalogError naming the field (or its first bad entry) instead of numpy's own errors. A list
    input may hold only entries of those kinds (no bool among numbers, no string, no None).
    Empty arrays of a numeric dtype are let through, whatever their kind (``[]`` is float64)."""
    type_ok, value_ok = _ELEMENTS[kinds]
    if values is None or isinstance(values, (str, bytes, dict, set, frozenset)):
        raise CatalogError(name, f"is {show_value(values)} (a {type(values).__name__})", expected)
    if isinstance(values, (list, tuple)) and not all(map(type_ok, _element_types(values, depth))):
        bad = _first_bad(values, value_ok, depth)
        if bad is not None:
            raise CatalogError(name + bad[0], bad[1], expected)
    try:
        a = np.asarray(values)
    except Exception as exc:  # noqa: BLE001 - ragged nesting, odd objects, tensors on a device
        bad = _first_bad(values, value_ok, depth)
        if bad is not None:
            raise CatalogError(name + bad[0], bad[1], expected) from None
        raise CatalogError(name, f"is not a rectangular array ({type(exc).__name__}: {show_value(str(exc), 120)})", expected) from None
    if a.dtype.kind == "O" and kinds == "iuf" and isinstance(values, (list, tuple)):
        try:  # Python ints past int64 among the numbers: numbers still, if float64 holds them
            a = np.asarray(values, dtype=np.float64)
        except (OverflowError, ValueError, TypeError):
            pass
    if a.dtype.kind not in kinds and not (a.size == 0 and a.dtype.kind in "biuf"):
        bad = _first_bad(values, value_ok, depth)
        if bad is not None:
            raise CatalogError(name + bad[0], bad[1], expected)
        raise CatalogError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    return a


def _fit_int64(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` (integers) as int64; an unsigned value above int64's range is refused, not wrapped."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and a.max() > np.iinfo(np.int64).max:
        at = np.unravel_index(int(np.argmax(a > np.iinfo(np.int64).max)), a.shape)
        raise CatalogError(f"{name}[{', '.join(str(int(k)) for k in at)}]", f"= {a[at]} is out of range", "an integer that fits int64")
    return a.astype(np.int64)


def _sizes(name: str, sizes: object) -> tuple[int, ...]:
    """Codebook sizes: 1 to ``MAX_LEVELS`` integers in ``[1, MAX_CODEBOOK_SIZE]``."""
    expected = f"a list of 1 to {MAX_LEVELS} codebook sizes, each an integer in [1, {MAX_CODEBOOK_SIZE}]"
    if isinstance(sizes, np.ndarray):
        if sizes.ndim != 1:
            raise CatalogError(name, f"has shape {sizes.shape}", expected)
        sizes = sizes.tolist()
    elif isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise CatalogError(name, f"is {show_value(sizes)} (a {type(sizes).__name__})", expected)
    if not 1 <= len(sizes) <= MAX_LEVELS:
        raise CatalogError(name, f"has {len(sizes)} levels", expected)
    for level, size in enumerate(sizes):
        if not _is_int(size):
            raise CatalogError(f"{name}[{level}]", f"is {show_value(size)} (a {type(size).__name__})", f"an integer in [1, {MAX_CODEBOOK_SIZE}]")
        if not 1 <= size <= MAX_CODEBOOK_SIZE:
            raise CatalogError(f"{name}[{level}]", f"= {show_value(int(size))} is out of range", f"a codebook size in [1, {MAX_CODEBOOK_SIZE}]")
    return tuple(int(s) for s in sizes)


def _int_array(name: str, values) -> np.ndarray:
    """A 1-D array of integers (ids) as int64: no bools, floats, strings, or values past int64."""
    expected = "a 1-D array of integers"
    a = _array(name, values, 1, expected, "iu")
    if a.ndim != 1:
        raise CatalogError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    if a.size == 0:
        return np.zeros(0, np.int64)
    return _fit_int64(name, a)


def _codes(name: str, values, n: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Codes of ``n`` rows, one per level, ``[i, l]`` in ``[0, sizes[l])``, as int32."""
    levels = len(sizes)
    expected = f"integers of shape ({n}, {levels})"
    if values is None:
        raise CatalogError(name, "is missing", expected)
    a = _array(name, values, 2, expected, "iu")
    if a.size == 0 and n == 0 and a.shape in ((0,), (0, levels)):
        return np.zeros((0, levels), np.int32)
    if a.ndim != 2 or a.shape[0] != n or a.dtype.kind not in "iu":
        raise CatalogError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    if a.shape[1] != levels:
        raise CatalogError(name, f"has {a.shape[1]} levels per row", f"{levels} (one code per codebook level)")
    bad = (a < 0) | (a >= np.asarray(sizes))
    if bad.any():
        i, level = np.argwhere(bad)[0]
        raise CatalogError(
            f"{name}[{i}, {level}]", f"= {a[i, level]} is out of range",
            f"a code in [0, {sizes[level]}) for level {level}",
        )
    return a.astype(np.int32)


def _flags(name: str, values, n: int) -> np.ndarray:
    """``n`` ad flags: booleans, or integers that are all 0 or 1 (no 2, no floats, no strings)."""
    expected = f"{n} booleans (one per item)"
    a = _array(name, values, 1, expected, "biu")
    if n == 0 and a.size == 0 and a.ndim == 1:
        return np.zeros(0, np.bool_)
    if a.shape != (n,) or a.dtype.kind not in "biu":
        raise CatalogError(name, f"has shape {a.shape} and dtype {a.dtype}", expected)
    if a.dtype.kind != "b":
        bad = np.flatnonzero((a != 0) & (a != 1))
        if len(bad):
            raise CatalogError(f"{name}[{bad[0]}]", f"= {a[bad[0]]}", "a boolean (True/False, or 0/1)")
    return a.astype(np.bool_)


def _bids(values, n: int, name: str = "bids") -> np.ndarray:
    """``n`` bids as float32: real numbers (ints or floats; no bools, strings or None), finite,
    ``>= 0`` and within float32's range (``<= 3.4028235e38``: a larger float64 would become inf)."""
    a = _array(name, values, 1, f"({n},) (one bid per item), real numbers", "iuf")
    if a.size == 0:
        a = a.reshape(-1)
    if a.shape != (n,):
        raise CatalogError(name, f"has shape {a.shape}", f"({n},) (one bid per item)")
    with np.errstate(over="ignore", invalid="ignore"):
        wide = a.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(wide) | (wide < 0))
        if len(bad):
            raise CatalogError(f"{name}[{bad[0]}]", f"= {wide[bad[0]]}", "a finite number >= 0")
        narrow = wide.astype(np.float32)
    over = np.flatnonzero(np.isinf(narrow))
    if len(over):
        raise CatalogError(
            f"{name}[{over[0]}]", f"= {wide[over[0]]} is above float32's max {np.finfo(np.float32).max}",
            "a finite number >= 0 that float32 holds",
        )
    return narrow


def _scalar_bid(name: str, value: object) -> float:
    """One bid, by the rules of ``_bids``."""
    if not _is_real(value):
        raise CatalogError(name, f"is {show_value(value)} (a {type(value).__name__})", "a finite number >= 0")
    try:
        wide = float(value)
    except OverflowError:  # an int past float64's range
        raise CatalogError(name, f"= {show_value(value)}", "a finite number >= 0") from None
    if not np.isfinite(wide) or wide < 0:
        raise CatalogError(name, f"= {wide}", "a finite number >= 0")
    with np.errstate(over="ignore"):
        narrow = np.float32(wide)
    if np.isinf(narrow):
        raise CatalogError(name, f"= {wide} is above float32's max {np.finfo(np.float32).max}", "a finite number >= 0 that float32 holds")
    return wide


def _unique(name: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raise on a repeated id; return the sort ``(order, ids[order])`` for later lookups."""
    order = np.argsort(ids)  # unique ids need no stable sort, and the default one is ~8x faster
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        first, again = sorted((order[dup[0]], order[dup[0] + 1]))
        raise CatalogError(f"{name}[{again}]", f"= {ids[again]} repeats {name}[{first}]", "unique ids")
    return order, sorted_ids


def _lookup(ids: np.ndarray, query: np.ndarray, order: np.ndarray | None = None, sorted_ids: np.ndarray | None = None) -> np.ndarray:
    if order is None:
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
    if len(ids) == 0:
        return np.full(query.shape, -1, np.int64)
    # binary searches in query order are cache-friendly; random order costs 10x on large arrays
    query_order = np.argsort(query)
    pos = np.empty(len(query), np.int64)
    pos[query_order] = np.searchsorted(sorted_ids, query[query_order])
    pos = pos.clip(max=len(ids) - 1)
    return np.where(sorted_ids[pos] == query, order[pos], -1).astype(np.int64)


def _known(name: str, ids: np.ndarray, rows: np.ndarray) -> None:
    unknown = np.flatnonzero(rows < 0)
    if len(unknown):
        j = unknown[0]
        raise CatalogError(f"{name}[{j}]", f"= {ids[j]} is not in the catalog", "ids of catalog items")


def _scalar_id(name: str, value: object) -> int:
    if not _is_int(value) or not np.iinfo(np.int64).min <= value <= np.iinfo(np.int64).max:
        raise CatalogError(name, f"is {show_value(value)} (a {type(value).__name__})", "an integer that fits int64")
    return int(value)


def _code_tuple(name: str, codes: object) -> tuple[int, ...]:
    """An Item's or Creative's codes: 1 to ``MAX_LEVELS`` integers in ``[0, MAX_CODEBOOK_SIZE)``
    (the catalog checks them against its codebook sizes)."""
    expected = f"a tuple of 1 to {MAX_LEVELS} integer codes in [0, {MAX_CODEBOOK_SIZE})"
    if isinstance(codes, np.ndarray):
        if codes.ndim != 1:
            raise CatalogError(name, f"has shape {codes.shape}", expected)
        codes = codes.tolist()
    elif not isinstance(codes, (list, tuple)):
        raise CatalogError(name, f"is {show_value(codes)} (a {type(codes).__name__})", expected)
    if not 1 <= len(codes) <= MAX_LEVELS:
        raise CatalogError(name, f"has {len(codes)} codes", expected)
    for level, code in enumerate(codes):
        if not _is_int(code):
            raise CatalogError(f"{name}[{level}]", f"is {show_value(code)} (a {type(code).__name__})", "an integer code")
        if not 0 <= code < MAX_CODEBOOK_SIZE:
            raise CatalogError(f"{name}[{level}]", f"= {show_value(int(code))} is out of range", f"a code in [0, {MAX_CODEBOOK_SIZE})")
    return tuple(int(c) for c in codes)


# -- the catalog file (Catalog.save / Catalog.load) --------------------------------------------
FILE_FORMAT = "ega_infer.catalog/1"
# tensor -> (accepted dtypes, ndim); is_ad is saved as uint8 (0/1)
_FILE_TENSORS: dict[str, tuple[tuple[str, ...], int]] = {
    "item_ids": (("int64",), 1),
    "poi_codes": (("int32",), 2),
    "is_ad": (("uint8", "bool"), 1),
    "bids": (("float32",), 1),
    "creative_item_ids": (("int64",), 1),
    "creative_ids": (("int64",), 1),
    "creative_codes": (("int32",), 2),
}
_FILE_SIZES = ("codebook_sizes", "creative_codebook_sizes")


def _file_path(path: object, what: str) -> Path:
    import os

    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise CatalogFileError("path", f"is {show_value(path)} (a {type(path).__name__})", f"the path of {what} (a str or os.PathLike)")
    try:
        return Path(path)
    except TypeError as exc:  # an os.PathLike whose __fspath__ returns bytes or nonsense
        raise CatalogFileError("path", f"is {show_value(path)} ({exc})", f"the path of {what}") from None


def _not_catalog(path: Path, field: str, problem: str, expected: str | None = None) -> CatalogFileError:
    return CatalogFileError(field, f"{problem} in {path} (not a catalog saved by Catalog.save)", expected)


def _read_catalog_file(path: Path) -> tuple[dict[str, np.ndarray], list[object]]:
    """The tensors and the two codebook-size lists of a catalog file, every name, dtype and
    shape checked before any tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            missing = [k for k in _FILE_TENSORS if k not in names]
            if missing:
                raise _not_catalog(path, missing[0], "tensor is missing", f"the tensors {sorted(_FILE_TENSORS)}")
            extra = sorted(names - set(_FILE_TENSORS))
            if extra:
                raise _not_catalog(path, extra[0], "is a tensor a catalog does not have", f"only the tensors {sorted(_FILE_TENSORS)}")
            fmt = meta.get("format")
            if fmt != FILE_FORMAT:
                problem = "metadata key is missing" if fmt is None else f"metadata is {show_value(fmt)}"
                raise _not_catalog(path, "format", problem, repr(FILE_FORMAT))
            sizes = []
            for key in _FILE_SIZES:
                if key not in meta:
                    raise _not_catalog(path, key, "metadata key is missing", "a JSON list of codebook sizes")
                try:
                    sizes.append(json.loads(meta[key]))
                except (ValueError, RecursionError):
                    raise _not_catalog(path, key, f"metadata is {show_value(meta[key])}, not JSON", "a JSON list of codebook sizes") from None
            arrays = {}
            for name, (dtypes, ndim) in _FILE_TENSORS.items():
                tensor = f.get_slice(name)
                dtype, shape = _SAFETENSORS_DTYPES.get(tensor.get_dtype(), tensor.get_dtype()), tensor.get_shape()
                if dtype not in dtypes or len(shape) != ndim:
                    raise _not_catalog(
                        path, name, f"tensor has dtype {dtype} and shape {tuple(shape)}",
                        f"a {ndim}-D tensor of dtype {' or '.join(dtypes)}",
                    )
            for name in _FILE_TENSORS:
                arrays[name] = f.get_tensor(name)
    except EgaInferError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever safetensors says of a file it cannot read
        raise CheckpointError(f"{path}: not a catalog saved by Catalog.save (not a readable safetensors file: {exc})") from None
    return arrays, sizes


# safetensors' dtype names -> numpy's
_SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
    "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64",
}
