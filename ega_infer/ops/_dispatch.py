"""Backend choice for every public op: one rule, written once.

``auto`` picks the CUDA C++ module, then Triton, on a CUDA tensor, and the PyTorch reference
everywhere else. An explicit backend that cannot run raises ``BackendUnavailableError`` saying
what is missing, never silently falls back.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from ..exceptions import BackendUnavailableError, ConfigError

Backend = Literal["auto", "torch", "triton", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "cuda")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Return the concrete backend ("torch" | "triton" | "cuda") for ``op`` on ``device``."""
    if backend not in BACKENDS:
        raise ConfigError("backend", f"unknown backend {backend!r} for {op}", f"one of {BACKENDS}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        from .._native import cuda_module_or_none

        if cuda_module_or_none() is not None:
            return "cuda"
        return "triton" if triton_available() else "torch"
    if backend == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}"
            )
        from .._native import cuda_module

        cuda_module()  # raises with rebuild instructions when the module is absent
    if backend == "triton":
        if not triton_available():
            raise BackendUnavailableError(f"{op}: backend 'triton' needs the triton package")
        if device.type != "cuda" and not triton_interpreted():
            raise BackendUnavailableError(
                f"{op}: backend 'triton' on {device} tensors needs TRITON_INTERPRET=1"
            )
    return backend
