"""Where a semantic ID's codes live in a causal LM's vocabulary, and the disambiguation level
that gives every item of a catalog its own ID."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..exceptions import ConfigError
from ._checks import as_int, int_matrix, is_flag, kind, show

__all__ = ["SidLayout", "disambiguate_sids"]


@dataclass(frozen=True, slots=True)
class SidLayout:
    """Level ``l``'s code ``c`` is token id ``offsets[l] + c``, for ``c in range(sizes[l])``.

    Parameters
    ----------
    offsets : one int >= 0 per level, the token id of the level's code 0.
    sizes : one int >= 1 per level, the level's codebook size.
    shared_tokens : False (default): each level has its own token ids, and ranges that overlap
        raise (usually a wrong offset). True: levels may share token ids, for a model trained
        with one code vocabulary reused by every level (the trie still decides which codes are
        allowed at each step).

    Raises
    ------
    ConfigError
        Not sequences of ints (floats, strings, bools, None), empty or mismatched lengths, a
        negative offset, a size below 1, overlapping ranges without ``shared_tokens``, or a
        ``shared_tokens`` that is not a bool.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    shared_tokens: bool = False

    def __post_init__(self) -> None:
        offsets, sizes = _ints("offsets", self.offsets), _ints("sizes", self.sizes)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "sizes", sizes)
        if not is_flag(self.shared_tokens):
            raise ConfigError("shared_tokens", f"is {show(self.shared_tokens)}", "True or False")
        object.__setattr__(self, "shared_tokens", bool(self.shared_tokens))
        if not sizes:
            raise ConfigError("sizes", "is empty", "one codebook size per SID level")
        if len(offsets) != len(sizes):
            raise ConfigError("offsets", f"has {len(offsets)} entries for {len(sizes)} levels",
                              "one offset per level")
        for level, (offset, size) in enumerate(zip(offsets, sizes)):
            if offset < 0:
                raise ConfigError(f"offsets[{level}]", f"is {offset}", "a token id >= 0")
            if size < 1:
                raise ConfigError(f"sizes[{level}]", f"is {size}", "a codebook size >= 1")
        if not self.shared_tokens:
            spans = sorted((o, o + s, level) for level, (o, s) in enumerate(zip(offsets, sizes)))
            for (start, stop, a), (next_start, next_stop, b) in zip(spans, spans[1:]):
                if next_start < stop:
                    raise ConfigError(
                        f"offsets[{max(a, b)}]",
                        f"puts level {b}'s tokens [{next_start}, {next_stop}) over level {a}'s "
                        f"[{start}, {stop})",
                        "disjoint token ranges, one per level (or shared_tokens=True for a "
                        "model whose levels share code tokens)")

    @property
    def levels(self) -> int:
        return len(self.sizes)

    @property
    def end(self) -> int:
        """One past the largest token id of any level (the vocabulary must be at least this)."""
        return max(o + s for o, s in zip(self.offsets, self.sizes))

    def token_range(self, level: int) -> tuple[int, int]:
        """``[start, stop)`` token ids of ``level``'s codes."""
        return self.offsets[level], self.offsets[level] + self.sizes[level]

    def with_level(self, offset: int, size: int) -> SidLayout:
        """This layout with one more level at the end: codes ``0 .. size-1`` at token ids
        ``offset ..`` (the disambiguation level of :func:`disambiguate_sids`)."""
        return SidLayout(self.offsets + (offset,), self.sizes + (size,), self.shared_tokens)


def disambiguate_sids(sids) -> tuple[np.ndarray, int]:
    """Append a disambiguation level so that every catalog item has its own semantic ID.

    ``extended[i] = (*sids[i], k)`` where item ``i`` is the ``k``-th item (``k = 0, 1, ..``, in
    catalog order) whose ID is ``sids[i]``: items with a unique ID get code 0, colliding ones
    0, 1, 2, ... (TIGER's extra code). The new level's codebook size is the largest number of
    items sharing one ID; ``layout.with_level(offset, size)`` is the layout of the extended IDs.

    Only a model trained on the extended IDs (with tokens for that level) can decode them: for a
    model trained on ``sids`` alone, keep ``sids`` and map each returned ID back to all of its
    items (``beam_search(..., return_items=True)``).

    Parameters
    ----------
    sids : int array-like or tensor ``[n_items, levels]`` of codes.

    Returns
    -------
    (extended, size) : int64 numpy array ``[n_items, levels + 1]``, and the new level's size
    (1 when no two items collide).

    Raises
    ------
    FieldError : ``sids`` is not a 2-D integer matrix.
    """
    codes = int_matrix(sids, "sids")
    if isinstance(codes, torch.Tensor):
        codes = codes.cpu().numpy()
    codes = codes.astype(np.int64, copy=False)
    n = codes.shape[0]
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64), 1
    order = np.lexsort(codes.T[::-1])  # stable: equal IDs keep catalog order
    ranked = codes[order]
    first = np.ones(n, dtype=np.bool_)
    first[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    index = np.arange(n)
    rank = index - np.maximum.accumulate(np.where(first, index, 0))
    extra = np.empty(n, dtype=np.int64)
    extra[order] = rank
    return np.concatenate([codes, extra[:, None]], axis=1), int(rank.max()) + 1


def _ints(name: str, values) -> tuple[int, ...]:
    if isinstance(values, (str, bytes, dict, set)) or as_int(values) is not None:
        raise ConfigError(name, f"is {show(values)} ({kind(values)})", "a sequence of integers")
    try:
        items = tuple(values)
    except TypeError:
        raise ConfigError(name, f"is {show(values)} ({kind(values)})",
                          "a sequence of integers") from None
    out = []
    for i, v in enumerate(items):
        value = as_int(v)
        if value is None:
            raise ConfigError(f"{name}[{i}]", f"is {show(v)} ({kind(v)})", "an integer")
        out.append(value)
    return tuple(out)
