"""Loading of the compiled modules ``ega_infer._C`` (always built) and ``ega_infer._cuda`` (optional).

Importing ``ega_infer`` never needs either: ``_C`` is imported on first use, and ``_cuda`` through
:func:`cuda_module_or_none`, which answers ``None`` where the module was not built (no nvcc at
build time, ``EGA_INFER_CUDA=OFF``). A call that needs a missing module raises
:class:`~ega_infer.exceptions.BackendUnavailableError` saying how to rebuild. The Python wrappers
of the CUDA kernels live with their ops (``ops/beam_step_cuda.py``, ``ops/decode_attention_cuda.py``).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from .exceptions import BackendUnavailableError

__all__ = ["c_module", "cuda_module", "cuda_module_or_none", "native_info"]

_REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .` or `make install`"
_CUDA_NOT_BUILT = (
    "ega_infer._cuda is not built: rebuild on a machine with nvcc "
    "(EGA_INFER_CUDA=ON pip install --no-build-isolation -e . , or make install; "
    "EGA_INFER_CUDA_ARCHS='80;90' picks the GPU architectures)"
)


@functools.cache
def _c_module_or_error() -> ModuleType | ImportError:
    try:
        return importlib.import_module(f"{__package__}._C")
    except ImportError as exc:
        return exc


def c_module() -> ModuleType:
    """The ``ega_infer._C`` module; raises ``BackendUnavailableError`` if it is not built."""
    found = _c_module_or_error()
    if isinstance(found, ImportError):
        raise BackendUnavailableError(
            f"ega_infer._C is not built or does not load ({found}); {_REBUILD_HINT}"
        ) from found
    return found


@functools.cache
def _cuda_state() -> tuple[ModuleType | None, str | None]:
    """(the ``_cuda`` module if built, why it cannot run here or None)."""
    try:
        _cuda = importlib.import_module(f"{__package__}._cuda")
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError):
            return None, _CUDA_NOT_BUILT
        return None, f"ega_infer._cuda does not load ({exc}); {_REBUILD_HINT}"
    runtime, driver = int(_cuda.cuda_runtime_version()), int(_cuda.cuda_driver_version())
    if driver and driver // 1000 < runtime // 1000:
        problem = (
            f"ega_infer._cuda was built with CUDA {runtime // 1000}.{runtime % 1000 // 10} (cudart "
            f"linked statically) but the driver supports CUDA {driver // 1000}."
            f"{driver % 1000 // 10}: update the driver or rebuild with an older nvcc"
        )
        return _cuda, problem
    return _cuda, None


def cuda_module_or_none() -> ModuleType | None:
    """The ``ega_infer._cuda`` module, or ``None`` where it was not built or cannot run.

    "Cannot run": the driver is older than the CUDA major version the module was built with.
    Without any driver (a CPU machine) the built module is still returned.
    """
    module, problem = _cuda_state()
    return module if problem is None else None


def cuda_module() -> ModuleType:
    """The ``ega_infer._cuda`` module; raises ``BackendUnavailableError`` with rebuild steps."""
    module = cuda_module_or_none()
    if module is None:
        _, problem = _cuda_state()
        raise BackendUnavailableError(problem or _CUDA_NOT_BUILT)
    return module


def native_info() -> dict[str, Any]:
    """What native code this install carries (for ``ega-infer info``)."""
    c_found = not isinstance(_c_module_or_error(), ImportError)
    cuda, problem = _cuda_state()
    info: dict[str, Any] = {
        "c_module": c_found,
        "cuda_module": cuda is not None,
        "cuda_usable": cuda is not None and problem is None,
        "cuda_problem": problem if cuda is not None else None,
        "cuda_archs": [],
        "cuda_runtime_version": None,
        "cuda_driver_version": None,
    }
    if cuda is not None:
        info["cuda_archs"] = [f"sm_{arch // 10}" for arch in cuda.compiled_archs()]
        info["cuda_runtime_version"] = int(cuda.cuda_runtime_version())
        info["cuda_driver_version"] = int(cuda.cuda_driver_version())
    return info
