"""Ahead-of-time compilation of the Triton kernels (``ega-infer compile``) and serving from it.

Prepare a directory once, on any machine with the same Triton build (no GPU needed)::

    ega-infer compile --arch sm_80,sm_90 --out /opt/ega/kernels

and point the engine at it on the GPU host, before the first request::

    from ega_infer.compile import use_compiled
    use_compiled("/opt/ega/kernels")          # or EGA_INFER_COMPILED=/opt/ega/kernels and
                                              # use_compiled_from_env()

What is compiled (every kernel launch the presets make) is described in ``_specs``; how, and
what Triton allows offline, in ``_build``; the loading path in ``_load``.
"""

from ._build import check_cuda_archs, compile_kernels, parse_archs
from ._cubin import cubin_arch, cubin_resources
from ._load import CompiledKernels, read_manifest, use_compiled, use_compiled_from_env
from ._specs import GPUS, Coverage

__all__ = [
    "compile_kernels",
    "use_compiled",
    "use_compiled_from_env",
    "CompiledKernels",
    "Coverage",
    "GPUS",
    "parse_archs",
    "check_cuda_archs",
    "cubin_arch",
    "cubin_resources",
    "read_manifest",
]
