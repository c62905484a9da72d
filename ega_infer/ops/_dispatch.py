"""Backend choice for every op: each op's capability table, and one resolver that reads it.

An op lists what each of its backends can run (``Capabilities``): for every backend a check
that returns why it cannot take a call with the given features (head dim, vocabulary,
normalisation), or None when it can. Whether a backend can run here at all (the ``_cuda``
module built, the triton package, CUDA tensors or Triton's interpreter) is decided once, here.

``auto`` picks, on CUDA tensors, the first backend of ``AUTO_ORDER`` that can run the call (CUDA
C++, then Triton, then the PyTorch reference), and the PyTorch reference everywhere else (also
under ``TRITON_INTERPRET=1``, where Triton runs only when asked for). An explicit backend that cannot run
raises ``BackendUnavailableError`` saying why, never silently falls back.

The engine resolves once per batch with :func:`resolve_backends` and passes the concrete names
down; the modules below it never resolve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from ..exceptions import BackendUnavailableError, ConfigError

__all__ = ["Backend", "BACKENDS", "Capabilities", "OpBackends", "head_dim_up_to", "resolve", "resolve_backends",
           "triton_available", "triton_interpreted"]

Backend = Literal["auto", "torch", "triton", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "cuda")
AUTO_ORDER: tuple[str, ...] = ("cuda", "triton", "torch")

Check = Callable[..., "str | None"]  # features -> why this backend cannot take them, or None


def _always(**features) -> None:
    return None


@dataclass(frozen=True)
class Capabilities:
    """What each backend of one op runs. A backend missing from ``checks`` has no
    implementation of the op; its check gets the call's features as keywords."""

    op: str
    checks: dict[str, Check] = field(default_factory=dict)

    def why_not(self, backend: str, **features) -> str | None:
        if backend not in self.checks:
            return f"{self.op} has no {backend} implementation"
        return self.checks[backend](**features)


def head_dim_up_to(limit: int) -> Check:
    """A capability check for kernels that take attention head dims up to ``limit``."""
    def check(*, head_dim: int = 1, **_) -> str | None:
        return None if head_dim <= limit else f"takes head dims up to {limit}, got {head_dim}"

    return check


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _why_not_here(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` tensors at all (None: it can)."""
    if backend == "torch":
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"needs CUDA tensors, got tensors on {device}"
        from .._native import cuda_module

        try:
            cuda_module()  # cached: the module is loaded once
        except BackendUnavailableError as exc:
            return f"is not available: {exc}"
        return None
    if not triton_available():
        return "needs the triton package"
    if device.type != "cuda" and not triton_interpreted():
        return f"on {device} tensors needs TRITON_INTERPRET=1"
    return None


def resolve(capabilities: Capabilities, backend: str, device: torch.device, **features) -> str:
    """The concrete backend ("torch" | "triton" | "cuda") that runs this call of the op."""
    if backend not in BACKENDS:
        raise ConfigError("backend", f"is {backend!r}", f"one of {BACKENDS}")
    if backend == "auto":
        if device.type != "cuda":  # kernels only where they are fast: the interpreter is a test tool
            return "torch"
        for name in AUTO_ORDER:
            if _why_not_here(name, device) is None and capabilities.why_not(name, **features) is None:
                return name
        raise BackendUnavailableError(f"{capabilities.op}: no backend runs this call")  # torch always does
    reason = _why_not_here(backend, device) or capabilities.why_not(backend, **features)
    if reason is not None:
        raise BackendUnavailableError(f"{capabilities.op}: backend {backend!r} {reason}")
    return backend


@dataclass(frozen=True, slots=True)
class OpBackends:
    """The concrete backend of each op for one batch (what the engine passes down)."""

    beam_step: str = "torch"
    decode_attention: str = "torch"
    prefill_attention: str = "torch"

    @property
    def kernels(self) -> bool:
        """Whether anything runs on a kernel backend (the CUDA-graph path)."""
        return any(name != "torch" for name in (self.beam_step, self.decode_attention, self.prefill_attention))


def resolve_backends(backend: str, device: torch.device, *, head_dim: int, prefill_head_dim: int | None = None,
                     vocab: int = 1, beams: int = 1, renormalize: bool = True) -> OpBackends:
    """Every op's backend for one batch: attention head dims ``head_dim`` (decode) and
    ``prefill_head_dim`` (default: the same), level vocabularies up to ``vocab``, up to
    ``beams`` beams per request. ``"auto"`` resolves per op; ``"torch"`` and ``"triton"`` apply to
    every op (``BackendUnavailableError`` where one cannot run); ``"cuda"`` means "the CUDA C++
    kernels where they exist": an op without one for this call (``prefill_attention`` has none,
    ``beam_step`` none for ``renormalize=False``) takes its own ``auto`` choice."""
    from .beam_step import CAPABILITIES as beam_step_caps
    from .decode_attention import CAPABILITIES as decode_caps
    from .prefill_attention import CAPABILITIES as prefill_caps

    def pick(caps: Capabilities, **features) -> str:
        if backend == "cuda" and caps.why_not("cuda", **features) is not None:
            return resolve(caps, "auto", device, **features)  # no CUDA C++ kernel for this call
        return resolve(caps, backend, device, **features)

    return OpBackends(
        beam_step=pick(beam_step_caps, vocab=vocab, beams=beams, renormalize=renormalize),
        decode_attention=pick(decode_caps, head_dim=head_dim),
        prefill_attention=pick(prefill_caps, head_dim=head_dim if prefill_head_dim is None else prefill_head_dim),
    )
