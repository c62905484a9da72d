"""Parquet catalogs: ``Catalog.to_parquet`` / ``Catalog.from_parquet`` round trips, the ways of
naming the files, ``load_catalog_file``, and bad tables, each refused with the project's own
error naming the column, entry or metadata key (never a pyarrow exception)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="Parquet catalogs need pyarrow")
pq = pytest.importorskip("pyarrow.parquet", reason="Parquet catalogs need pyarrow")

from ega_infer.catalog import Catalog, load_catalog_file  # noqa: E402
from ega_infer.catalog.parquet import CREATIVES_FILE, ITEMS_FILE, PARQUET_FORMAT  # noqa: E402
from ega_infer.exceptions import CatalogError, CatalogFileError, CheckpointError  # noqa: E402
from ega_infer.presets import get_preset  # noqa: E402
from ega_infer.testing import synthetic_catalog  # noqa: E402

SIZES = (4, 3, 5)
CREATIVE_SIZES = (6, 7)
ARRAYS = ("item_ids", "poi_codes", "is_ad", "bids", "creative_ptr", "creative_ids", "creative_codes")


def small_catalog(creatives: bool = True) -> Catalog:
    """Six items, two of them without creatives, creatives not in item order."""
    extra = dict(
        creative_item_ids=[10, 11, 13, 10, 15],
        creative_ids=[100, 101, 102, 103, 104],
        creative_codes=[[0, 0], [5, 6], [1, 2], [3, 4], [2, 2]],
    ) if creatives else {}
    return Catalog.from_arrays(
        [10, 11, 12, 13, 14, 15],
        [[0, 0, 0], [1, 2, 3], [1, 2, 4], [3, 0, 1], [1, 2, 3], [2, 1, 0]],
        [True, False, True, True, False, True],
        [1.5, 0.0, 2.0, 0.25, 0.0, 3.0],
        codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES, **extra,
    )


def assert_same(got: Catalog, want: Catalog) -> None:
    for name in ARRAYS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.codebook_sizes == want.codebook_sizes
    assert got.creative_codebook_sizes == want.creative_codebook_sizes


def tables(tmp_path, catalog: Catalog | None = None):
    """A catalog written by to_parquet: its directory and its two tables as read back."""
    d = tmp_path / "cat"
    (catalog or small_catalog()).to_parquet(d)
    return d, pq.read_table(d / ITEMS_FILE), pq.read_table(d / CREATIVES_FILE)


def replaced(table, name: str, column):
    """``table`` with column ``name`` replaced by ``column``, its schema metadata kept."""
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, column).replace_schema_metadata(table.schema.metadata)


def refused(path, field: str, error=CatalogFileError, **kwargs):
    with pytest.raises(error) as info:
        Catalog.from_parquet(path, **kwargs)
    assert type(info.value) is error
    assert info.value.field == field, str(info.value)
    return info.value


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_items", [1, 37, 200])
def test_round_trip_synthetic(tmp_path, n_items):
    cat = synthetic_catalog(get_preset("tiny").model, n_items=n_items, seed=n_items)
    cat.to_parquet(tmp_path / "cat")
    assert sorted(p.name for p in (tmp_path / "cat").iterdir()) == [CREATIVES_FILE, ITEMS_FILE]
    assert_same(Catalog.from_parquet(tmp_path / "cat"), cat)
    assert_same(Catalog.from_parquet(str(tmp_path / "cat" / ITEMS_FILE)), cat)


def test_round_trip_small_and_empty(tmp_path):
    cat = small_catalog()
    cat.to_parquet(tmp_path / "a" / "b")  # parents are created
    assert_same(Catalog.from_parquet(tmp_path / "a" / "b"), cat)
    empty = cat.without_items(cat.item_ids)
    empty.to_parquet(tmp_path / "empty")
    assert_same(Catalog.from_parquet(tmp_path / "empty"), empty)


def test_metadata_written(tmp_path):
    _, items, creatives = tables(tmp_path)
    meta = items.schema.metadata
    assert meta[b"ega_infer.format"].decode() == PARQUET_FORMAT
    assert json.loads(meta[b"ega_infer.codebook_sizes"]) == list(SIZES)
    assert json.loads(meta[b"ega_infer.creative_codebook_sizes"]) == list(CREATIVE_SIZES)
    assert items.column_names == ["item_id", "poi_codes", "is_ad", "bid"]
    assert creatives.column_names == ["item_id", "creative_id", "creative_codes"]


def test_without_creatives(tmp_path):
    cat = small_catalog(creatives=False)
    cat.to_parquet(tmp_path / "cat")
    (tmp_path / "cat" / CREATIVES_FILE).unlink()  # an items file alone: no creatives
    for path in (tmp_path / "cat", tmp_path / "cat" / ITEMS_FILE):
        got = Catalog.from_parquet(path)
        assert_same(got, cat)
        assert len(got.creative_ids) == 0


def test_explicit_creatives_file(tmp_path):
    d, items, creatives = tables(tmp_path)
    pq.write_table(items, tmp_path / "pois.parquet")
    pq.write_table(creatives, tmp_path / "ads.parquet")
    assert_same(Catalog.from_parquet(tmp_path / "pois.parquet", tmp_path / "ads.parquet"), small_catalog())
    # a creatives file given explicitly wins over the one next to the items file
    got = Catalog.from_parquet(d / ITEMS_FILE, creatives=tmp_path / "ads.parquet")
    assert_same(got, small_catalog())
    with pytest.raises(CheckpointError, match="no such"):
        Catalog.from_parquet(d, creatives=tmp_path / "missing.parquet")


def test_pipeline_tables(tmp_path):
    """A pipeline's own types (uint ids, large_list/fixed-size lists of int64, float64 bids,
    columns in another order, several row groups) and sizes passed instead of metadata."""
    want = small_catalog()
    items = pa.table({
        "bid": pa.array([1.5, 0.0, 2.0, 0.25, 0.0, 3.0], pa.float64()),
        "is_ad": [True, False, True, True, False, True],
        "item_id": pa.array([10, 11, 12, 13, 14, 15], pa.uint64()),
        "poi_codes": pa.array([[0, 0, 0], [1, 2, 3], [1, 2, 4], [3, 0, 1], [1, 2, 3], [2, 1, 0]], pa.large_list(pa.int64())),
    })
    creatives = pa.table({
        "creative_codes": pa.array([[0, 0], [5, 6], [1, 2], [3, 4], [2, 2]], pa.list_(pa.int64(), 2)),
        "creative_id": pa.array([100, 101, 102, 103, 104], pa.int32()),
        "item_id": [10, 11, 13, 10, 15],
    })
    pq.write_table(items, tmp_path / "items.parquet", row_group_size=4)
    pq.write_table(creatives, tmp_path / "creatives.parquet", row_group_size=2)
    got = Catalog.from_parquet(tmp_path, codebook_sizes=list(SIZES), creative_codebook_sizes=CREATIVE_SIZES)
    assert_same(got, want)
    refused(tmp_path, "ega_infer.format")  # no metadata and no sizes passed
    refused(tmp_path, "ega_infer.format", codebook_sizes=SIZES)  # one size list is not enough


# -- load_catalog_file ------------------------------------------------------------------------
def test_load_catalog_file(tmp_path):
    cat = small_catalog()
    cat.save(tmp_path / "cat.safetensors")
    cat.to_parquet(tmp_path / "dir")
    assert_same(load_catalog_file(tmp_path / "cat.safetensors"), cat)
    assert_same(load_catalog_file(str(tmp_path / "dir")), cat)
    assert_same(load_catalog_file(tmp_path / "dir" / ITEMS_FILE), cat)
    (tmp_path / "cat.csv").write_text("item_id\n1\n")
    for bad in (tmp_path / "cat.csv", tmp_path / "noext"):
        with pytest.raises(CatalogFileError) as info:
            load_catalog_file(bad)
        assert info.value.field == "path" and ".parquet" in str(info.value)
    with pytest.raises(CatalogFileError) as info:
        load_catalog_file(3)
    assert info.value.field == "path"
    with pytest.raises(CheckpointError, match="no such"):
        load_catalog_file(tmp_path / "missing.parquet")


# -- bad tables -------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["item_id", "poi_codes", "is_ad", "bid"])
def test_missing_item_column(tmp_path, column):
    d, items, _ = tables(tmp_path)
    pq.write_table(items.drop_columns([column]), d / ITEMS_FILE)
    err = refused(d, column)
    assert "bid" in err.expected and "poi_codes" in err.expected


@pytest.mark.parametrize("column", ["item_id", "creative_id", "creative_codes"])
def test_missing_creative_column(tmp_path, column):
    d, _, creatives = tables(tmp_path)
    pq.write_table(creatives.drop_columns([column]), d / CREATIVES_FILE)
    refused(d, column)


def test_extra_and_repeated_columns(tmp_path):
    d, items, creatives = tables(tmp_path)
    pq.write_table(items.append_column("score", pa.array(np.zeros(6))), d / ITEMS_FILE)
    refused(d, "score")
    d, items, creatives = tables(tmp_path)
    twice = pa.Table.from_arrays(creatives.columns + [creatives.column("creative_id")], names=creatives.column_names + ["creative_id"])
    pq.write_table(twice, d / CREATIVES_FILE)
    refused(d, "creative_id")


@pytest.mark.parametrize(
    "column, values",
    [
        ("bid", pa.array(["1.5", "0", "2", "0.25", "0", "3"])),
        ("bid", pa.array([1, 0, 2, 0, 0, 3], pa.int64())),
        ("bid", pa.array(np.ones(6, np.float16))),
        ("item_id", pa.array([10.0, 11, 12, 13, 14, 15])),
        ("item_id", pa.array([str(i) for i in range(6)])),
        ("is_ad", pa.array([1, 0, 1, 1, 0, 1], pa.int8())),
        ("poi_codes", pa.array([1, 2, 3, 4, 5, 6])),
        ("poi_codes", pa.array([[0.0, 0, 0]] * 6)),
        ("poi_codes", pa.array([[[0], [0], [0]]] * 6)),
        ("poi_codes", pa.array(["0,0,0"] * 6)),
    ],
    ids=["bid-str", "bid-int", "bid-f16", "id-float", "id-str", "is_ad-int", "codes-int", "codes-float", "codes-nested", "codes-str"],
)
def test_wrong_type(tmp_path, column, values):
    d, items, _ = tables(tmp_path)
    pq.write_table(replaced(items, column, values), d / ITEMS_FILE)
    refused(d, column)


def test_wrong_creative_types(tmp_path):
    d, _, creatives = tables(tmp_path)
    pq.write_table(replaced(creatives, "creative_codes", pa.array([[0.5, 1.0]] * 5)), d / CREATIVES_FILE)
    refused(d, "creative_codes")


@pytest.mark.parametrize(
    "column, values, field",
    [
        ("bid", pa.array([1.5, 0.0, 2.0, None, 0.0, None], pa.float32()), "bid[3]"),
        ("item_id", pa.array([10, 11, None, 13, 14, 15], pa.int64()), "item_id[2]"),
        ("is_ad", pa.array([True, None, True, True, False, True]), "is_ad[1]"),
        ("poi_codes", pa.array([[0, 0, 0], [1, 2, 3], [1, 2, 4], [3, 0, 1], None, [2, 1, 0]], pa.list_(pa.int32())), "poi_codes[4]"),
        ("poi_codes", pa.array([[0, 0, 0], [1, 2, 3], [1, None, 4], [3, 0, 1], [1, 2, 3], [2, 1, 0]], pa.list_(pa.int32())), "poi_codes[2, 1]"),
    ],
)
def test_nulls(tmp_path, column, values, field):
    d, items, _ = tables(tmp_path)
    pq.write_table(replaced(items, column, values), d / ITEMS_FILE)
    refused(d, field)


def test_null_creative(tmp_path):
    d, _, creatives = tables(tmp_path)
    pq.write_table(replaced(creatives, "creative_id", pa.array([100, None, 102, 103, 104], pa.int64())), d / CREATIVES_FILE)
    refused(d, "creative_id[1]")


def test_list_lengths(tmp_path):
    d, items, creatives = tables(tmp_path)
    codes = [[0, 0, 0], [1, 2, 3], [1, 2, 4], [3, 0, 1], [1, 2, 3], [2, 1]]
    pq.write_table(replaced(items, "poi_codes", pa.array(codes, pa.list_(pa.int32()))), d / ITEMS_FILE)
    err = refused(d, "poi_codes[5]")
    assert "3" in err.expected
    # a hostile length is refused before the flat values become an array
    codes[5] = list(range(100_000))
    pq.write_table(replaced(items, "poi_codes", pa.array(codes, pa.list_(pa.int32()))), d / ITEMS_FILE)
    refused(d, "poi_codes[5]")
    d, items, creatives = tables(tmp_path)
    pq.write_table(replaced(creatives, "creative_codes", pa.array([[0]] + [[0, 0]] * 4, pa.list_(pa.int32()))), d / CREATIVES_FILE)
    refused(d, "creative_codes[0]")


@pytest.mark.parametrize(
    "change, field",
    [
        ({b"ega_infer.format": None}, "ega_infer.format"),
        ({b"ega_infer.format": b"ega_infer.catalog.parquet/2"}, "ega_infer.format"),
        ({b"ega_infer.codebook_sizes": None}, "ega_infer.codebook_sizes"),
        ({b"ega_infer.creative_codebook_sizes": None}, "ega_infer.creative_codebook_sizes"),
        ({b"ega_infer.codebook_sizes": b"[4, 3,"}, "ega_infer.codebook_sizes"),
        ({b"ega_infer.codebook_sizes": b"[" * 100_000}, "ega_infer.codebook_sizes"),
        ({b"ega_infer.codebook_sizes": b"{\"a\": 1}"}, "ega_infer.codebook_sizes"),
        ({b"ega_infer.codebook_sizes": b"[4, 0, 5]"}, "ega_infer.codebook_sizes[1]"),
        ({b"ega_infer.creative_codebook_sizes": b"[6, \"7\"]"}, "ega_infer.creative_codebook_sizes[1]"),
        ({b"\xff": b"\xfe"}, None),  # undecodable foreign keys are ignored
    ],
)
def test_bad_metadata(tmp_path, change, field):
    d, items, _ = tables(tmp_path)
    meta = dict(items.schema.metadata)
    for key, value in change.items():
        meta.pop(key) if value is None else meta.__setitem__(key, value)
    pq.write_table(items.replace_schema_metadata(meta), d / ITEMS_FILE)
    if field is None:
        assert_same(Catalog.from_parquet(d), small_catalog())
    else:
        refused(d, field)


def test_explicit_sizes(tmp_path):
    d, items, _ = tables(tmp_path)
    assert_same(Catalog.from_parquet(d, codebook_sizes=SIZES, creative_codebook_sizes=CREATIVE_SIZES), small_catalog())
    refused(d, "ega_infer.codebook_sizes", codebook_sizes=(4, 3, 6))
    refused(d, "ega_infer.creative_codebook_sizes", creative_codebook_sizes=(6,))
    refused(d, "codebook_sizes[0]", error=CatalogError, codebook_sizes=("4", 3, 5))
    # sizes that fit no code: the metadata is gone, so the content check names the entry
    pq.write_table(items.replace_schema_metadata({}), d / ITEMS_FILE)
    refused(d, "poi_codes[3, 0]", codebook_sizes=(3, 3, 5), creative_codebook_sizes=CREATIVE_SIZES)


def test_content_errors_name_the_file(tmp_path):
    d, items, creatives = tables(tmp_path)
    pq.write_table(replaced(items, "item_id", pa.array([10, 11, 12, 13, 14, 10], pa.int64())), d / ITEMS_FILE)
    err = refused(d, "item_ids[5]")
    assert ITEMS_FILE in err.problem
    d, items, creatives = tables(tmp_path)
    pq.write_table(replaced(creatives, "item_id", pa.array([10, 11, 99, 10, 15], pa.int64())), d / CREATIVES_FILE)
    err = refused(d, "creative_item_ids[2]")
    assert CREATIVES_FILE in err.problem
    d, items, creatives = tables(tmp_path)
    pq.write_table(replaced(items, "bid", pa.array([1.5, 0, 2, -1, 0, 3], pa.float64())), d / ITEMS_FILE)
    refused(d, "bids[3]")


def test_swapped_tables(tmp_path):
    d, _, _ = tables(tmp_path)
    err = refused(d / CREATIVES_FILE, "poi_codes", creatives=d / ITEMS_FILE)
    assert "creatives table" in err.problem


def test_file_problems(tmp_path):
    d, _, _ = tables(tmp_path)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(CheckpointError, match="not a readable Parquet") as info:
        Catalog.from_parquet(tmp_path / "junk.parquet")
    assert not isinstance(info.value, CatalogError)
    (d / CREATIVES_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable Parquet"):
        Catalog.from_parquet(d)
    with pytest.raises(CheckpointError, match="no such"):
        Catalog.from_parquet(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no such"):
        Catalog.from_parquet(tmp_path / "empty")
    with pytest.raises(CatalogFileError) as info:
        Catalog.from_parquet(None)
    assert info.value.field == "path"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        small_catalog().to_parquet(tmp_path / "file")


def test_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    with pytest.raises(CheckpointError, match="pip install pyarrow"):
        small_catalog().to_parquet(tmp_path / "cat")
    with pytest.raises(CheckpointError, match="pip install pyarrow"):
        Catalog.from_parquet(tmp_path / "cat")
