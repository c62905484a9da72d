"""Triton kernels of ega_infer, shipped in the wheel as ``ega_infer.kernels``.

Backends and where they run (``ega_infer.ops`` picks one per call, see ``ops/_dispatch.py``):

* ``torch``  -- PyTorch reference (``ega_infer.ops.*_torch``): any device, the CPU default.
* ``triton`` -- the kernels in this package: CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1`` (Triton's interpreter, used by CPU CI).
* ``cuda``   -- CUDA C++ in the compiled ``ega_infer._cuda`` module: CUDA tensors only.

This package imports nothing heavy: ``triton`` is imported inside each kernel module, on first use.
"""

__all__: list[str] = []
