"""Build and call the CPU emulation of the CUDA kernels.

The C++ sources next to this file (``cuda_emu.h``: the CUDA stand-ins, ``emu_runtime.cpp``: the
block scheduler and PTX primitives, ``*_emu.cpp``: C entry points) include ``csrc/*.cuh`` with
``EGA_INFER_EMULATE_KERNELS`` and run the real kernels through the same ``run_*`` launch code as
the ``.cu`` launchers. :func:`build` compiles them with the system C++ compiler into a cached
shared library; :class:`Emulator` calls it through ctypes on CPU tensors, after the same input
preparation as the Python wrappers (``ega_infer.ops.*_cuda.kernel_inputs``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ega_infer.ops.beam_step_cuda import kernel_inputs as beam_step_inputs
from ega_infer.ops.decode_attention_cuda import kernel_inputs as decode_attention_inputs

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent.parent / "csrc"
SOURCES = ("emu_runtime.cpp", "beam_step_emu.cpp", "decode_attention_emu.cpp", "emu_selftest.cpp")
HEADERS = (HERE / "cuda_emu.h", HERE / "emu_entry.h", CSRC / "common.cuh", CSRC / "beam_step.cuh",
           CSRC / "decode_attention.cuh")
FLAGS = ("-std=c++17", "-O2", "-fPIC", "-DEGA_INFER_EMULATE_KERNELS", "-Wall", "-Wextra",
         "-Wno-unknown-pragmas", f"-I{CSRC}", f"-I{HERE}")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # csrc/common.cuh DType


class EmulationError(RuntimeError):
    """The emulated kernel stopped (a race, a divergent barrier, an out-of-bounds shared access)."""


def find_compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else c++, g++ or clang++ on PATH; None if none."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(cache_root: Path, compiler: str) -> Path:
    """The emulation library, compiled into ``cache_root/<hash of compiler, flags, sources>/``
    unless it is there already (so a change of any source or header rebuilds it)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256("\0".join([compiler, version, *FLAGS]).encode())
    for path in (*[HERE / s for s in SOURCES], *HEADERS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = cache_root / digest.hexdigest()[:16] / "libega_cuda_emulation.so"
    if target.exists():
        return target
    for old in cache_root.glob("*/libega_cuda_emulation.so"):  # builds of older sources
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old.parent, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = [Path(tmp) / (Path(s).stem + ".o") for s in SOURCES]
        jobs = [subprocess.Popen([compiler, *FLAGS, "-c", str(HERE / s), "-o", str(o)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for s, o in zip(SOURCES, objects)]
        logs = [job.communicate()[0] for job in jobs]
        for source, job, log in zip(SOURCES, jobs, logs):
            if job.returncode != 0:
                raise RuntimeError(f"compiling tests/cuda_emulation/{source} failed:\n{log}")
        linked = Path(tmp) / target.name
        link = subprocess.run([compiler, "-shared", "-o", str(linked), *map(str, objects), "-lm"],
                              capture_output=True, text=True)
        if link.returncode != 0:
            raise RuntimeError(f"linking the CUDA emulation failed:\n{link.stdout}{link.stderr}")
        os.replace(linked, target)  # atomic: a concurrent build either sees it whole or not at all
    return target


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


@dataclass(frozen=True)
class Launched:
    """What one emulated call launched: one ``name grid=(x,y) threads=t smem=b`` line per kernel."""

    lines: tuple[str, ...]

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(line.split()[0] for line in self.lines)

    def of(self, kernel: str) -> str:
        return next(line for line in self.lines if line.startswith(kernel + " "))


class Emulator:
    """ctypes front of the emulation library (CPU tensors in, CPU tensors out)."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        lib.ega_emu_beam_step.argtypes = [p, i32, i64, p, p, p, p, p, p, p, p, i64, i64, i64, i64, i64,
                                          f32, f32, p, p, p, p, p, p, ctypes.c_char_p, i64]
        lib.ega_emu_beam_step.restype = i32
        lib.ega_emu_beam_step_workspace_bytes.argtypes = [i64, i64, i64, i64, p, ctypes.c_char_p, i64]
        lib.ega_emu_beam_step_workspace_bytes.restype = i64
        lib.ega_emu_token_weight.argtypes = [f32, f32]
        lib.ega_emu_token_weight.restype = f32
        lib.ega_emu_decode_attention.argtypes = [i32, p, p, p, p, p, i32, p, p, p, f32, i32, i64, p,
                                                 ctypes.c_char_p, i64]
        lib.ega_emu_decode_attention.restype = i32
        lib.ega_emu_decode_attention_max_head_dim.restype = i64
        lib.ega_emu_decode_attention_mma_max_head_dim.restype = i64
        lib.ega_emu_selftest.argtypes = [i32, ctypes.c_char_p, i64]
        lib.ega_emu_selftest.restype = i32
        lib.ega_emu_set_schedule.argtypes = [i32, ctypes.c_uint]
        lib.ega_emu_stats.argtypes = [p]
        for name in ("float_to_bf16", "float_to_half", "bf16_to_float", "half_to_float"):
            getattr(lib, f"ega_emu_{name}").argtypes = [p, p, i64]
        self.lib = lib

    @staticmethod
    def _check(code: int, log: ctypes.Array) -> Launched:
        text = log.value.decode()
        if code == 1:
            raise ValueError(text)
        if code != 0:
            raise EmulationError(text)
        return Launched(tuple(line for line in text.splitlines() if line))

    def selftest(self, which: int) -> None:
        """Runs self-test kernel ``which`` of emu_selftest.cpp; raises what the launch raised."""
        log = ctypes.create_string_buffer(4096)
        self._check(self.lib.ega_emu_selftest(which, log, len(log)), log)

    def set_schedule(self, schedule: int, seed: int = 0) -> None:
        """0: threads and blocks in order; 1: reversed; 2: pseudo-random from ``seed``."""
        self.lib.ega_emu_set_schedule(schedule, seed)

    def stats(self) -> dict[str, int]:
        out = (ctypes.c_uint64 * 5)()
        self.lib.ega_emu_stats(out)
        return dict(zip(("blocks", "threads", "switches", "barriers", "warp_ops"), out))

    # --- beam_step ------------------------------------------------------------------------------

    def beam_step(self, logits, beam_scores, row_node, child_ptr, child_code, child_max_bid, *, k: int,
                  alpha: float, log_beta: float, allowed=None, override_child=None, override_bid=None,
                  limits=(0, 0, 0)):
        """``beam_step_cuda`` on the CPU: ``((scores, parent, token, child, logp), launched)``;
        ``limits`` = (row_smem_children, merge_smem_keys, sort_smem_keys), 0 = the launcher's."""
        inputs = beam_step_inputs(logits, beam_scores, row_node, child_ptr, child_code, child_max_bid,
                                  allowed, override_child=override_child, override_bid=override_bid)
        override_child = inputs["override_child"]
        entries = override_child.shape[1] if override_child is not None else 0
        requests, beams = beam_scores.shape
        out_f = [torch.empty(requests, k, dtype=torch.float32) for _ in range(2)]
        out_i = [torch.empty(requests, k, dtype=torch.int64) for _ in range(3)]
        lim = (ctypes.c_int64 * 3)(*limits)
        log = ctypes.create_string_buffer(1 << 14)
        code = self.lib.ega_emu_beam_step(
            _ptr(inputs["logits"]), DTYPE_CODES[logits.dtype], inputs["logits"].stride(0),
            _ptr(inputs["beam_scores"]), _ptr(inputs["row_node"]), _ptr(inputs["child_ptr"]),
            _ptr(inputs["child_code"]), _ptr(inputs["child_max_bid"]), _ptr(inputs["allowed"]),
            _ptr(override_child), _ptr(inputs["override_bid"]), entries,
            requests, beams, logits.shape[1], k, alpha, log_beta, lim,
            _ptr(out_f[0]), _ptr(out_i[0]), _ptr(out_i[1]), _ptr(out_i[2]), _ptr(out_f[1]),
            log, len(log))
        launched = self._check(code, log)
        return (out_f[0], out_i[0], out_i[1], out_i[2], out_f[1]), launched

    def beam_step_workspace_bytes(self, requests, beams, vocab, k, limits=(0, 0, 0)) -> int:
        log = ctypes.create_string_buffer(4096)
        got = self.lib.ega_emu_beam_step_workspace_bytes(requests, beams, vocab, k,
                                                         (ctypes.c_int64 * 3)(*limits), log, len(log))
        if got < 0:
            raise ValueError(log.value.decode())
        return int(got)

    def token_weight(self, a: float, log_beta: float) -> float:
        return float(self.lib.ega_emu_token_weight(a, log_beta))

    # --- decode_attention -----------------------------------------------------------------------

    def decode_attention(self, q, ctx_k, ctx_v, ctx_len, own_k=None, own_v=None, *, scale=None,
                         num_splits=None, num_sms: int = 132):
        """``decode_attention_cuda`` on the CPU (``num_sms``: the SM count the split choice
        assumes; 132 is an H100 / H200): ``(out, launched)``."""
        inputs = decode_attention_inputs(q, ctx_k, ctx_v, ctx_len, own_k, own_v)
        q, ctx_k, ctx_v = inputs["q"], inputs["ctx_k"], inputs["ctx_v"]
        own_k, own_v, ctx_len = inputs["own_k"], inputs["own_v"], inputs["ctx_len"]
        n, p, hq, d = q.shape
        hkv, s = ctx_k.shape[1], ctx_k.shape[2]
        t_len = own_k.shape[3] if own_k is not None else 0
        shape = (ctypes.c_int64 * 7)(n, p, hq, hkv, s, t_len, d)
        no_own = (0,) * 5
        strides = (ctypes.c_int64 * 22)(
            *q.stride(), *ctx_k.stride(), *ctx_v.stride(),
            *(own_k.stride() if own_k is not None else no_own),
            *(own_v.stride() if own_v is not None else no_own))
        out = torch.empty(n, p, hq, d, dtype=q.dtype)
        scale = 1.0 / d**0.5 if scale is None else float(scale)
        log = ctypes.create_string_buffer(1 << 14)
        code = self.lib.ega_emu_decode_attention(
            DTYPE_CODES[q.dtype], shape, _ptr(q), _ptr(ctx_k), _ptr(ctx_v), _ptr(ctx_len),
            int(ctx_len.dtype == torch.int64), _ptr(own_k), _ptr(own_v), strides, scale, num_sms,
            0 if num_splits is None else num_splits, _ptr(out), log, len(log))
        return out, self._check(code, log)

    def decode_attention_limits(self) -> tuple[int, int]:
        """(kDecodeAttentionMaxHeadDim, kDecodeAttentionMmaMaxHeadDim) from the header."""
        return (int(self.lib.ega_emu_decode_attention_max_head_dim()),
                int(self.lib.ega_emu_decode_attention_mma_max_head_dim()))

    # --- 16-bit conversions ---------------------------------------------------------------------

    def to_16bit(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """float32 -> bf16 / fp16 bits (as int16) by the emulation's __float2*_rn."""
        x = x.float().contiguous()
        out = torch.empty(x.shape, dtype=torch.int16)
        name = "float_to_bf16" if dtype == torch.bfloat16 else "float_to_half"
        getattr(self.lib, f"ega_emu_{name}")(x.data_ptr(), out.data_ptr(), x.numel())
        return out

    def from_16bit(self, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        bits = bits.to(torch.int16).contiguous()
        out = torch.empty(bits.shape, dtype=torch.float32)
        name = "bf16_to_float" if dtype == torch.bfloat16 else "half_to_float"
        getattr(self.lib, f"ega_emu_{name}")(bits.data_ptr(), out.data_ptr(), bits.numel())
        return out
