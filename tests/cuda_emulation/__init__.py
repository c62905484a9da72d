"""CPU emulation of the CUDA kernels in csrc/ (the C++ harness, its ctypes front in harness.py)
and the cases both the GPU tests and the emulation tests run (cases.py)."""
