"""A Triton kernel launch as data.

Each kernel module has one function that turns its (already allocated) tensors into the
``Launch``es it runs: the kernel, the grid, the positional arguments and the launch keywords
(constexprs, ``num_warps``, ``num_stages``). The runtime wrapper calls it and runs the result;
``ega_infer.compile`` calls it with ``meta``-device tensors of the shapes the presets use and
compiles what Triton's JIT would compile for that call, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Launch"]


@dataclass(frozen=True, slots=True)
class Launch:
    """``kernel[grid](*args, **meta)``; ``meta`` holds the constexprs and num_warps/num_stages."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)
