"""Serving from a directory written by ``ega-infer compile``.

``use_compiled(DIR)`` checks the manifest against this process (Triton version and build,
Python ABI, GPU architecture) and puts ``DIR/triton-cache`` in front of Triton's own cache:
Triton's cache manager becomes :class:`PreparedCacheManager`, which reads an entry from the
prepared directory when it has it and otherwise behaves as Triton's ``FileCacheManager``
(``TRITON_CACHE_DIR`` or ``~/.triton/cache``, where anything compiled later is written, so the
prepared directory may be read-only). It also resolves Triton's group files, which record
absolute paths, inside the prepared directory, so the directory can be copied or moved.

Triton then finds every prepared kernel binary, launcher stub and ``cuda_utils`` module in its
cache at first use and compiles none of them. A kernel launch that was not prepared is
compiled as usual and logged as a warning.

``EGA_INFER_COMPILED=DIR`` is read by :func:`use_compiled_from_env`, and only there.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import CompiledKernelsError

__all__ = ["CompiledKernels", "use_compiled", "use_compiled_from_env", "read_manifest", "ENV_VAR"]

ENV_VAR = "EGA_INFER_COMPILED"
_log = logging.getLogger(__name__)
_LAYERS: list[str] = []  # prepared cache roots, searched in order
_MANAGER: type | None = None


@dataclass(frozen=True, slots=True)
class CompiledKernels:
    """What :func:`use_compiled` enabled: the prepared directory, the GPU architecture it was
    checked against, how many kernel binaries and launcher stubs it holds for it."""

    path: Path
    arch: str
    kernels: int
    launchers: int
    triton: str
    cache_dir: Path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """``DIR/manifest.json`` as a dict; ``CompiledKernelsError`` when missing or unreadable."""
    from ._build import MANIFEST_FORMAT, MANIFEST_NAME

    file = Path(path) / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise CompiledKernelsError(f"{file} does not exist: prepare the directory with `ega-infer compile "
                                   f"--out {path}`") from None
    except (OSError, ValueError) as exc:
        raise CompiledKernelsError(f"{file} is not readable JSON ({exc})") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CompiledKernelsError(f"{file} has format {manifest.get('format')!r}, this ega_infer reads "
                                   f"{MANIFEST_FORMAT}: prepare it again with this version")
    return manifest


def _current_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        raise CompiledKernelsError("no CUDA GPU is visible to check the prepared kernels against "
                                   "(pass arch='sm_90' to check for another)")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def check_manifest(manifest: dict[str, Any], arch: str, path: str | os.PathLike = "DIR") -> None:
    """Raise ``CompiledKernelsError`` naming the first mismatch between ``manifest`` and this
    process: Triton version, Triton build (``triton_key``), Python ABI, platform, ``arch``."""
    from ._build import build_identity

    here = build_identity()
    rebuild = f"; prepare it again on this configuration: ega-infer compile --arch {arch} --out {path}"
    if manifest.get("triton") != here["triton"]:
        raise CompiledKernelsError(f"{path} was compiled with Triton {manifest.get('triton')}, this process "
                                   f"runs Triton {here['triton']}" + rebuild)
    if manifest.get("triton_key") != here["triton_key"]:
        raise CompiledKernelsError(f"{path} was compiled with another build of Triton {here['triton']} "
                                   f"(Triton's cache key {manifest.get('triton_key', '?')[:12]}..., here "
                                   f"{here['triton_key'][:12]}...; a different wheel or Python version)" + rebuild)
    for field, what in (("ext_suffix", "Python extension ABI"), ("platform", "platform")):
        if manifest.get(field) != here[field]:
            raise CompiledKernelsError(f"{path} was compiled for {what} {manifest.get(field)!r}, this process "
                                       f"has {here[field]!r}" + rebuild)
    if arch not in manifest.get("archs", []):
        raise CompiledKernelsError(f"{path} holds kernels for {', '.join(manifest.get('archs', [])) or 'no GPU'}, "
                                   f"not for this GPU's {arch}" + rebuild)
    need, here_libc = manifest.get("launchers_need_glibc"), here["libc"]
    if need and here_libc.startswith("glibc ") and _version(here_libc) < _version(f"glibc {need}"):
        _log.warning(
            "the launcher stubs in %s need glibc %s, this host has %s: Triton cannot load them and builds "
            "them again (about a second each)", path, need, here_libc,
        )
    if manifest.get("cache_env") != here["cache_env"]:
        _log.warning(
            "%s was compiled with Triton cache environment %s, this process has %s: Triton will not find "
            "the prepared kernels and compiles them again", path, manifest.get("cache_env"), here["cache_env"],
        )


def _version(libc: str) -> tuple[int, ...]:
    parts = libc.split()
    try:
        return tuple(int(x) for x in parts[1].split("."))
    except (IndexError, ValueError):
        return ()


def use_compiled(path: str | os.PathLike, *, arch: str | None = None) -> CompiledKernels:
    """Serve Triton kernels from ``path``, a directory written by ``ega-infer compile``.

    Checks the manifest against this process and the GPU (``arch``, default: the current CUDA
    device's, e.g. ``"sm_90"``) and puts the prepared cache in front of Triton's. Call it
    before the first kernel launch; calling it again adds another directory. Raises
    ``CompiledKernelsError`` naming the mismatch (Triton version or build, Python ABI,
    architecture) or a missing manifest.
    """
    root = Path(path).resolve()
    manifest = read_manifest(root)
    if arch is None:
        arch = _current_arch()
        _check_sm_count(manifest, arch)
    check_manifest(manifest, arch, root)
    _check_sources(manifest, root)
    cache_dir = root / manifest.get("cache_dir", "triton-cache")
    if not cache_dir.is_dir():
        raise CompiledKernelsError(f"{cache_dir} is missing: the directory holds only a manifest")
    _install(str(cache_dir))
    kernels = [k for k in manifest["kernels"] if k["arch"] == arch]
    launchers = {k["launcher"] for k in kernels if k.get("launcher")}
    _log.info("ega_infer: %d prepared Triton kernels for %s from %s", len(kernels), arch, root)
    return CompiledKernels(root, arch, len(kernels), len(launchers), manifest["triton"], cache_dir)


def _check_sources(manifest: dict[str, Any], path: Path) -> None:
    """Raise when a kernel's source changed since ``path`` was prepared (Triton's key hashes it)."""
    import importlib

    from triton.runtime.jit import JITFunction

    for module, name, key in sorted({(k["module"], k["kernel"], k["source_key"]) for k in manifest["kernels"]}):
        kernel = getattr(importlib.import_module(module), name, None)
        if isinstance(kernel, JITFunction) and kernel.cache_key != key:
            raise CompiledKernelsError(
                f"{module}.{name} changed since {path} was prepared (another ega_infer version?); prepare it "
                f"again: ega-infer compile --out {path}"
            )


def _check_sm_count(manifest: dict[str, Any], arch: str) -> None:
    import torch

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    prepared = manifest.get("sm_counts", {}).get(arch, [])
    if sms not in prepared:
        _log.warning(
            "this GPU has %d SMs; decode_attention's launch heuristics were prepared for %s SMs on %s, so "
            "some of its launches will be compiled on first use", sms, prepared, arch,
        )


def use_compiled_from_env() -> CompiledKernels | None:
    """:func:`use_compiled` on ``$EGA_INFER_COMPILED`` when it is set (else ``None``)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return use_compiled(value) if value else None


def _install(cache_dir: str) -> None:
    from triton import knobs

    manager = _manager_class()
    current = knobs.cache.manager_class
    if current is not None and current is not manager:
        raise CompiledKernelsError(
            f"Triton's cache manager is already {current.__module__}.{current.__qualname__} "
            "(TRITON_CACHE_MANAGER?): prepared kernels need Triton's file cache"
        )
    if cache_dir not in _LAYERS:
        _LAYERS.append(cache_dir)
    knobs.cache.manager_class = manager
    listener = knobs.compilation.listener
    if not getattr(listener, "_ega_infer", False):
        knobs.compilation.listener = _miss_listener(listener)


def _manager_class() -> type:
    """:class:`PreparedCacheManager` (built on first use: it subclasses a Triton class)."""
    global _MANAGER
    if _MANAGER is None:
        from triton.runtime.cache import FileCacheManager

        class PreparedCacheManager(FileCacheManager):
            """Triton's ``FileCacheManager`` behind read-only prepared cache directories."""

            def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
                super().__init__(key, override, dump)
                self._prepared = [] if override or dump else [os.path.join(d, key) for d in _LAYERS]

            def get_file(self, filename: str) -> str | None:
                for directory in self._prepared:
                    path = os.path.join(directory, filename)
                    if os.path.exists(path):
                        return path
                return super().get_file(filename)

            def get_group(self, filename: str) -> dict[str, str] | None:
                for directory in self._prepared:
                    group = os.path.join(directory, f"__grp__{filename}")
                    try:
                        with open(group) as f:
                            children = json.load(f).get("child_paths")
                    except (OSError, ValueError):
                        continue
                    if children is None:
                        continue
                    # the group records the absolute paths where it was written: rebase them here
                    found = {name: os.path.join(directory, os.path.basename(p)) for name, p in children.items()}
                    return {name: p for name, p in found.items() if os.path.exists(p)}
                return super().get_group(filename)

        _MANAGER = PreparedCacheManager
    return _MANAGER


def _miss_listener(previous):
    """A ``knobs.compilation.listener`` that warns when an ega_infer kernel was not prepared."""

    def listener(*, src, metadata, metadata_group, times, cache_hit) -> None:
        if previous is not None:
            previous(src=src, metadata=metadata, metadata_group=metadata_group, times=times, cache_hit=cache_hit)
        fn = getattr(src, "fn", None)
        module = getattr(fn, "module", "") or ""
        if not cache_hit and module.startswith(f"{__package__.rsplit('.', 1)[0]}.kernels"):
            _log.warning(
                "Triton compiled %s.%s on first use: this specialisation (%s) is not in the prepared "
                "kernels (%s); add its shapes to `ega-infer compile`", module, getattr(src, "name", "?"),
                getattr(src, "signature", "?"), ", ".join(_LAYERS),
            )

    listener._ega_infer = True  # type: ignore[attr-defined]
    return listener


def spec_from_json(entry: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """``(signature, constexprs, attrs, options)`` of a manifest kernel entry's ``spec`` (the
    ``triton.compile`` inputs), with JSON lists turned back into tuples as Triton's ``preload``
    does."""
    spec = entry["spec"]
    constexprs = {tuple(path): value for path, value in spec["constexprs"]}
    attrs = {tuple(path): value for path, value in spec["attrs"]}
    options = {k: _tuples(v) for k, v in spec["options"].items()}
    return dict(spec["signature"]), constexprs, attrs, options


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
