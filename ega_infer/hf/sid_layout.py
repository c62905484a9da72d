"""Where a semantic ID's codes live in a causal LM's vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigError

__all__ = ["SidLayout"]


@dataclass(frozen=True, slots=True)
class SidLayout:
    """Level ``l``'s code ``c`` is token id ``offsets[l] + c``, for ``c in range(sizes[l])``.

    Levels may share token ranges (the trie decides which codes are allowed at each step).

    Parameters
    ----------
    offsets : one non-negative int per level, the token id of the level's code 0.
    sizes : one positive int per level, the level's codebook size.

    Raises
    ------
    ConfigError
        Empty or mismatched lengths, a negative offset or a size below 1.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        offsets, sizes = _ints("offsets", self.offsets), _ints("sizes", self.sizes)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "sizes", sizes)
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


def _ints(name: str, values) -> tuple[int, ...]:
    try:
        items = tuple(values)
    except TypeError:
        raise ConfigError(name, f"is {values!r}", "a sequence of integers") from None
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise ConfigError(f"{name}[{i}]", f"is {v!r}", "an integer")
        out.append(int(v.__index__()))
    return tuple(out)
