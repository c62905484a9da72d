"""Input checks shared by the Hugging Face path: what counts as an int or a flag, and how a bad
value is shown in an error message (short, whatever its size)."""

from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["as_int", "int_matrix", "is_flag", "kind", "show"]


def as_int(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (int, numpy integer, 0-d integer array or
    tensor), else None. Bools are not integers here: ``True`` as a beam count is a bug."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 0 or value.dtype in (torch.bool, np.bool_):
            return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def is_flag(value: object) -> bool:
    """``True`` / ``False`` (Python or numpy bools only; 0 and 1 are not flags)."""
    return isinstance(value, (bool, np.bool_))


def kind(value: object) -> str:
    """``"a list"``, ``"an int"``: the value's type for a message."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def show(value: object, limit: int = 60) -> str:
    """A short repr of ``value`` (arrays and tensors by shape and dtype)."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim > 0:
        return f"{type(value).__name__} of shape {tuple(value.shape)} dtype {value.dtype}"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def int_matrix(value: object, field: str, columns: int | None = None):
    """``value`` as a 2-D integer matrix ``[rows, columns]``: a tensor stays a tensor (on its
    device), anything else becomes a numpy array. ``FieldError`` naming ``field`` for anything
    else: ragged or nested rows, non-integer values (floats, strings, bools, None, ints past
    int64), another rank, or another column count."""
    from ..exceptions import FieldError

    want = f"[n_items, {columns}]" if columns is not None else "[n_items, levels]"
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise FieldError(field, f"has dtype {value.dtype}", "integer codes")
        matrix = value
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise FieldError(field, f"has dtype {value.dtype}", "integer codes")
        matrix = value
    elif isinstance(value, (list, tuple)):
        matrix = _list_matrix(value, field)
    elif hasattr(value, "__array__") and not isinstance(value, (str, bytes)):  # pandas, jax...
        try:
            matrix = np.asarray(value)
        except Exception:  # a foreign __array__ that fails
            raise FieldError(field, f"is {show(value)} ({kind(value)})",
                             f"an integer array-like {want} of codes") from None
        if not np.issubdtype(matrix.dtype, np.integer):
            raise FieldError(field, f"has dtype {matrix.dtype}", "integer codes")
    else:
        raise FieldError(field, f"is {show(value)} ({kind(value)})",
                         f"an integer array-like {want} of codes")
    if matrix.ndim != 2:
        size = matrix.numel() if isinstance(matrix, torch.Tensor) else matrix.size
        problem = "is empty" if size == 0 else f"has shape {tuple(matrix.shape)}"
        raise FieldError(field, problem, f"a 2-D {want} array of codes")
    if columns is not None and matrix.shape[1] != columns:
        raise FieldError(field, f"has shape {tuple(matrix.shape)}", want)
    return matrix


def _list_matrix(rows: list | tuple, field: str) -> np.ndarray:
    from ..exceptions import FieldError

    if not rows:
        return np.zeros(0, dtype=np.int64)
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray, torch.Tensor)):
            raise FieldError(field, f"row {i} is {show(row)} ({kind(row)})",
                             "rows of integer codes (one per level)")
    try:
        matrix = np.asarray([r.tolist() if isinstance(r, (np.ndarray, torch.Tensor)) else r
                             for r in rows])
    except (ValueError, TypeError, OverflowError):
        matrix = None
    if matrix is None or matrix.ndim != 2:  # ragged, or rows nested deeper than codes
        width = _row_len(rows[0])
        for i, row in enumerate(rows):
            if _row_len(row) != width:
                raise FieldError(field, f"is ragged: row {i} has {_row_len(row)} codes, row 0 "
                                 f"has {width}", "rows of equal length (one code per level)")
            for j, v in enumerate(row):
                if as_int(v) is None:
                    raise FieldError(field, f"holds {show(v)} ({kind(v)}) at [{i}, {j}]",
                                     "integer codes")
        if matrix is None:
            raise FieldError(field, "cannot be read as an integer matrix", "integer codes")
    if matrix.size == 0:  # rows without codes: int_matrix names the shape
        return matrix.astype(np.int64)
    if not np.issubdtype(matrix.dtype, np.integer):
        raise FieldError(field, f"holds {_values(matrix)}", "integer codes")
    flat = (v for row in rows for v in row)
    if any(isinstance(v, (bool, np.bool_)) for v in flat):  # np.asarray turned them into ints
        raise FieldError(field, "holds bools", "integer codes")
    return matrix


def _row_len(row) -> int:
    return 0 if getattr(row, "ndim", 1) == 0 else len(row)


def _values(matrix: np.ndarray) -> str:
    if matrix.dtype == np.bool_:
        return "bools"
    if matrix.dtype.kind in "fc":
        return f"{matrix.dtype} values"
    if matrix.dtype.kind in "US":
        return "strings"
    return "values that are not int64 codes (None, objects or ints past int64)"
