"""``ega-infer compile``: the Triton kernels compiled ahead of time on a machine without a GPU,
and served from the prepared directory by ``use_compiled``.

The CPU tests compile a reduced set (the tiny preset's first decode position, float32) for
sm_80 and sm_90, check the manifest and the cubins, and check the loading path as far as it runs
without a GPU: Triton's own JIT entry point (``JITFunction.run`` in warm-up mode, behind a
stand-in driver that reports an sm_90 device) finds every kernel, launcher stub and
``cuda_utils`` module in a moved copy of the directory and compiles nothing. A drift test checks
that every kernel call a real engine batch makes is among the enumerated specialisations. The
GPU test runs the kernels from the prepared cache and compares them with the references.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from ega_infer.compile import (  # noqa: E402
    Coverage,
    check_cuda_archs,
    compile_kernels,
    cubin_arch,
    cubin_resources,
    parse_archs,
    read_manifest,
    use_compiled,
)
from ega_infer.exceptions import BackendUnavailableError, CompiledKernelsError, ConfigError  # noqa: E402

ARCHS = ("sm_80", "sm_90")
# The tiny preset's first (slot, level) position, one batch size and context length, float32:
# one specialisation of each kernel per arch.
REDUCED = Coverage(dtypes=("float32",), batch_sizes=(1,), context_lengths=(65,), graph_buckets=(1,),
                   max_positions=1)
KERNELS = {"_beam_step_rows_kernel", "_decode_attention_kernel",
           "_prefill_attention_kernel"}
ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER", "EGA_INFER_COMPILED")}
    env.update(extra)
    return env


def _run(code: str, *args: str, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (compiled, not interpreted, Triton kernels)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    return done.stdout


def _cuda_module_built() -> bool:
    from ega_infer._native import native_info

    return bool(native_info()["cuda_module"])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aot") / "kernels"
    compile_kernels(out, archs=ARCHS, presets=["tiny"], coverage=REDUCED, jobs=2,
                    check_cuda=_cuda_module_built())
    return out


# -- arguments and checks -------------------------------------------------------------------------
def test_parse_archs_accepts_sm_lists_and_rejects_unknown_archs():
    assert parse_archs("sm_80,sm_90") == (80, 90)
    assert parse_archs([" sm_90 ", "sm_90"]) == (90,)
    for bad in ("sm_7x", "sm_75", "90", "sm90", ""):
        with pytest.raises(ConfigError, match="arch") as info:
            parse_archs(bad)
        assert info.value.field == "arch"


def test_compile_refuses_an_unknown_arch_before_compiling(tmp_path):
    with pytest.raises(ConfigError, match="'sm_7x' is not a known GPU architecture"):
        compile_kernels(tmp_path / "out", archs="sm_80,sm_7x", presets=["tiny"], check_cuda=False)
    assert not (tmp_path / "out").exists()


def test_compile_refuses_a_cuda_module_without_the_arch(tmp_path, monkeypatch):
    with pytest.raises(BackendUnavailableError, match=r"no code for sm_90 .*EGA_INFER_CUDA_ARCHS='80;90'"):
        check_cuda_archs((80, 90), built=["sm_80"])
    assert check_cuda_archs((80,), built=["sm_80", "sm_90"]) == ["sm_80", "sm_90"]

    import ega_infer._native as native

    def info(archs, built=True):
        return lambda: {"cuda_module": built, "cuda_archs": archs}

    monkeypatch.setattr(native, "native_info", info(["sm_80"]))
    with pytest.raises(BackendUnavailableError, match="no code for sm_90"):
        compile_kernels(tmp_path / "out", archs="sm_80,sm_90", presets=["tiny"])
    monkeypatch.setattr(native, "native_info", info([], built=False))
    with pytest.raises(BackendUnavailableError, match="_cuda is not built.*EGA_INFER_CUDA_ARCHS"):
        compile_kernels(tmp_path / "out", archs="sm_90", presets=["tiny"])
    assert not (tmp_path / "out").exists()


def _elf(abi: int, flags: int, machine: int = 190) -> bytes:
    header = bytearray(64)
    header[:4], header[4], header[8] = b"\x7fELF", 2, abi
    header[18:20] = machine.to_bytes(2, "little")
    header[48:52] = flags.to_bytes(4, "little")
    return bytes(header)


def test_cubin_arch_reads_the_elf_header():
    assert cubin_arch(_elf(7, 0x500550)) == "sm_80"  # what ptxas 12.8 writes for sm_80
    assert cubin_arch(_elf(7, 0x5A0D5A)) == "sm_90a"
    assert cubin_arch(_elf(8, 0x5A00)) == "sm_90"
    with pytest.raises(ValueError, match="EM_CUDA"):
        cubin_arch(_elf(7, 0x50, machine=62))
    with pytest.raises(ValueError, match="ELF"):
        cubin_arch(b"PK\x03\x04" + bytes(60))


# -- what a compile writes ------------------------------------------------------------------------
def test_manifest_lists_every_kernel_for_every_arch(compiled):
    import triton

    manifest = read_manifest(compiled)
    assert manifest["triton"] == triton.__version__ and manifest["archs"] == list(ARCHS)
    assert manifest["presets"] == ["tiny"] and manifest["errors"] == []
    found = {(k["kernel"], k["arch"]) for k in manifest["kernels"]}
    assert found == {(kernel, arch) for kernel in KERNELS for arch in ARCHS}
    for entry in manifest["kernels"]:
        data = (compiled / entry["cubin"]).read_bytes()
        assert len(data) == entry["cubin_bytes"] > 0
        assert cubin_arch(data) == entry["cubin_arch"] == {"sm_80": "sm_80", "sm_90": "sm_90a"}[entry["arch"]]
        assert entry["seconds"] > 0 and entry["cache_key"] and entry["calls"] >= 1
        assert (compiled / entry["launcher"]).stat().st_size > 0
        assert entry["specialization"]["num_warps"] >= 1
        assert cubin_resources(data) == {"registers": entry["registers"], "stack_bytes": entry["stack_bytes"]}
        assert 0 < entry["registers"] <= 255
        assert entry["stack_bytes"] == 0, f"{entry['kernel']} {entry['arch']} spills: the tiles do not fit"
    assert (compiled / manifest["cuda_utils"]).stat().st_size > 0


def test_cubins_carry_their_arch_and_resources_per_cuobjdump(compiled):
    import re

    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    tool = shutil.which("cuobjdump") or (str(bundled) if bundled.is_file() else None)
    if tool is None:
        pytest.skip("no cuobjdump on PATH or in Triton's backends/nvidia/bin")
    for entry in read_manifest(compiled)["kernels"]:
        cubin = str(compiled / entry["cubin"])
        listing = subprocess.run([tool, "--list-elf", cubin], capture_output=True, text=True, check=True).stdout
        assert f".{entry['cubin_arch']}.cubin" in listing, listing
        usage = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
        assert found, usage
        assert (entry["registers"], entry["stack_bytes"]) == (int(found[1]), int(found[2]))


def test_use_compiled_rejects_a_manifest_from_another_triton(compiled, tmp_path):
    manifest = read_manifest(compiled)
    for field, value, message in (
        ("triton", "3.5.0", r"compiled with Triton 3\.5\.0, this process runs Triton " + manifest["triton"]),
        ("triton_key", "0" * 64, "another build of Triton"),
        ("ext_suffix", ".cpython-39-x86_64-linux-gnu.so", "Python extension ABI"),
    ):
        other = tmp_path / field
        other.mkdir()
        (other / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(CompiledKernelsError, match=message):
            use_compiled(other, arch="sm_90")
    with pytest.raises(CompiledKernelsError, match="not for this GPU's sm_86"):
        use_compiled(compiled, arch="sm_86")
    with pytest.raises(CompiledKernelsError, match="does not exist"):
        use_compiled(tmp_path / "nothing", arch="sm_90")


def test_use_compiled_from_env_reads_ega_infer_compiled(tmp_path, monkeypatch):
    from ega_infer.compile import use_compiled_from_env

    monkeypatch.delenv("EGA_INFER_COMPILED", raising=False)
    assert use_compiled_from_env() is None
    monkeypatch.setenv("EGA_INFER_COMPILED", str(tmp_path / "nothing"))
    with pytest.raises(CompiledKernelsError, match="nothing.*does not exist"):
        use_compiled_from_env()


# -- the loading path, as far as it runs without a GPU --------------------------------------------
_JIT_FROM_PREPARED = """
import json, shutil, sys, types
from pathlib import Path

import triton
import triton.runtime.build as build
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import driver as nv
from triton.compiler.compiler import ASTSource
from triton.runtime.driver import driver

from ega_infer.compile import Coverage, read_manifest, use_compiled
from ega_infer.compile._build import _launcher_source
from ega_infer.compile._specs import launches
from ega_infer.exceptions import CompiledKernelsError

source, moved = sys.argv[1:3]
shutil.copytree(source, moved)  # the prepared directory is relocatable
stale = moved + "-stale"  # a kernel's source changed since it was prepared
Path(stale).mkdir()
manifest = read_manifest(moved)
manifest["kernels"][0]["source_key"] = "0" * 64
Path(stale, "manifest.json").write_text(json.dumps(manifest))
try:
    use_compiled(stale, arch="sm_90")
    raise AssertionError("a stale directory was accepted")
except CompiledKernelsError as exc:
    assert "changed since" in str(exc), exc
info = use_compiled(moved, arch="sm_90")

def refuse(*args, **kwargs):
    raise AssertionError("Triton compiled something")
ASTSource.make_ir = refuse  # the first stage of every kernel compilation
build._build = refuse  # gcc for the launcher stubs and cuda_utils
hits = []
knobs.compilation.listener = (lambda prev: lambda **kw: (hits.append(kw["cache_hit"]), prev(**kw)))(
    knobs.compilation.listener)
# a stand-in for the CUDA driver: device 0 is an sm_90 GPU (nothing is launched)
driver.set_active(types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 0,
                                        get_current_target=lambda: GPUTarget("cuda", 90, 32)))
coverage = Coverage(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in read_manifest(moved)["coverage"].items()})
loaded = []
build._load_module_from_path = lambda name, path: (loaded.append(path), types.SimpleNamespace(launch=None))[1]
kernels, count = set(), 0
for label, launch in launches("tiny", 90, coverage):
    count += 1
    compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)  # JITFunction.run
    kernels.add(compiled.hash)
    build.compile_module_from_src(_launcher_source(compiled), "__triton_launcher", [], nv.include_dirs,
                                  nv.libraries)
build.compile_module_from_src(Path(nv.dirname, "driver.c").read_text(), "cuda_utils", [], nv.include_dirs,
                              nv.libraries)
assert hits and all(hits), hits
assert all(p.startswith(moved) for p in loaded), loaded
print(count, len(hits), len(kernels), info.kernels, len(loaded))
"""


def test_jit_finds_every_prepared_kernel_in_a_moved_directory(compiled, tmp_path):
    out = _run(_JIT_FROM_PREPARED, str(compiled), str(tmp_path / "moved"),
               env=_clean_env(TRITON_CACHE_DIR=str(tmp_path / "cache")))
    launched, compiles, kernels, prepared, loaded = map(int, out.split())
    in_manifest = [k for k in read_manifest(compiled)["kernels"] if k["arch"] == "sm_90"]
    # every distinct specialisation went through triton.compile once (then the JIT's memory)
    assert compiles == kernels == prepared == len(in_manifest) >= len(KERNELS)
    assert loaded == launched + 1  # the launcher stub of every launch, then cuda_utils


_RECORD_ENGINE = """
import dataclasses, json, sys

import torch

import ega_infer.ops._dispatch as dispatch
from ega_infer import Engine
from ega_infer.compile import Coverage
from ega_infer.compile._specs import Call, enumerate_jobs, launches_of, spec_key, specialize
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.kernels import beam_step, decode_attention, prefill_attention
from ega_infer.ops import beam_step_torch, decode_attention_torch, prefill_attention_torch

dispatch.triton_interpreted = lambda: True  # let the ops pick "triton" for CPU tensors
recorded = []

def meta(x):
    if not isinstance(x, torch.Tensor):
        return x
    base = torch.empty(x.untyped_storage().nbytes() // x.element_size() + 1, dtype=x.dtype, device="meta")
    return base.as_strided(x.shape, x.stride(), x.storage_offset())

def recorder(op, reference):
    def call(*args, **kwargs):  # what the op hands its Triton wrapper, on meta tensors
        recorded.append(Call(op, op, tuple(meta(a) for a in args), {k: meta(v) for k, v in kwargs.items()}, 132))
        out = reference(*args, **kwargs)
        return (out.scores, out.parent, out.token, out.child, out.logp) if op == "beam_step" else out
    return call

for module, name, reference in (
    (beam_step, "beam_step", beam_step_torch),
    (decode_attention, "decode_attention", decode_attention_torch),
    (prefill_attention, "prefill_attention", prefill_attention_torch),
):
    setattr(module, f"{name}_triton", recorder(name, reference))

engine = Engine.from_pretrained("tiny")
engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=3))
config = dataclasses.replace(engine.default_config, backend="triton")
for n, seed in ((5, 4), (1, 5)):
    engine.generate(synthetic_requests(engine.catalog, engine.config, n=n, seed=seed), config)

wanted = {job["key"]: job for job in enumerate_jobs("tiny", 90, Coverage(dtypes=("float32",)))}
missing = {}
for call in recorded:
    for launch in launches_of(call):
        key = spec_key(specialize(launch, 90), 90)
        if key not in wanted:
            missing[key] = call.op + " " + str([(tuple(a.shape), a.stride(), a.dtype) for a in call.args
                                                 if isinstance(a, torch.Tensor)])
print(json.dumps({"calls": len(recorded), "ops": sorted({c.op for c in recorded}), "missing": missing}))
"""


@pytest.mark.slow
def test_every_kernel_call_of_an_engine_batch_is_enumerated(tmp_path):
    """Drift check: the tensors a real tiny engine batch hands the Triton wrappers (shapes,
    strides, dtypes, offsets) specialise to kernels that ``ega-infer compile`` enumerates."""
    out = json.loads(_run(_RECORD_ENGINE, env=_clean_env(TRITON_CACHE_DIR=str(tmp_path / "cache"))))
    assert out["ops"] == ["beam_step", "decode_attention", "prefill_attention"]
    assert out["calls"] > 0 and out["missing"] == {}, out["missing"]


_SWEEP_VS_BRUTE_FORCE = """
import dataclasses, json

from ega_infer.compile import Coverage
from ega_infer.compile._specs import enumerate_jobs
from ega_infer.decoding.config import DecodeConfig
from ega_infer.presets import PRESETS, Preset

tiny = PRESETS["tiny"]
model = dataclasses.replace(
    tiny.model, name="split", poi_codebook_sizes=(32,), creative_codebook_sizes=(16,), d_model=256,
    encoder=dataclasses.replace(tiny.model.encoder, max_history=600),
    decoder=dataclasses.replace(tiny.model.decoder, n_heads=16, n_kv_heads=8),
)
PRESETS["split"] = Preset(model, DecodeConfig(mode="candidates", beams=(64,), num_slots=2))
ops = ("decode_attention",)
smart = enumerate_jobs("split", 80, Coverage(dtypes=("float32",), ops=ops))
brute = enumerate_jobs("split", 80, Coverage(dtypes=("float32",), ops=ops, batch_sizes=tuple(range(1, 64)),
                                              context_lengths=tuple(range(2, 602))))
print(json.dumps({"smart": sorted(j["key"] for j in smart), "brute": sorted(j["key"] for j in brute),
                  "kernels": sorted({j["kernel"] for j in smart})}))
"""


@pytest.mark.slow
def test_decode_sweep_finds_what_a_brute_force_sweep_finds(tmp_path):
    """The eager-path sweep of decode_attention stops at the batch size whose grid fills two
    waves and sweeps every context length only where the split-K heuristic splits; on a model
    whose long contexts split, that finds exactly the specialisations of every (batch, context)."""
    out = json.loads(_run(_SWEEP_VS_BRUTE_FORCE, env=_clean_env(TRITON_CACHE_DIR=str(tmp_path / "cache"))))
    assert out["kernels"] == ["_combine_splits_kernel", "_decode_attention_kernel"]  # splits happen
    assert out["smart"] == out["brute"]


# -- on a GPU -------------------------------------------------------------------------------------
_GPU_FIRST_CALLS = """
import json, sys

import torch
import triton.runtime.build as build
from triton import knobs
from triton.compiler.compiler import ASTSource

from ega_infer.compile import Coverage, use_compiled
from ega_infer.compile._specs import calls
from ega_infer.kernels.beam_step import beam_step_triton
from ega_infer.kernels.decode_attention import decode_attention_triton
from ega_infer.kernels.prefill_attention import prefill_attention_triton
from ega_infer.ops import beam_step_torch, decode_attention_torch, prefill_attention_torch

prepared, arch = sys.argv[1], int(sys.argv[2])
use_compiled(prepared)

def refuse(*args, **kwargs):
    raise AssertionError("Triton compiled a kernel on first use")
ASTSource.make_ir = refuse
build._build = refuse
hits = []
knobs.compilation.listener = (lambda prev: lambda **kw: (hits.append(kw["cache_hit"]), prev(**kw)))(
    knobs.compilation.listener)

g = torch.Generator(device="cuda").manual_seed(0)

def real(x, fill):
    if not isinstance(x, torch.Tensor):
        return x
    t = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")
    return fill(t)

def randn(t):
    return t.normal_(generator=g) if t.is_floating_point() else t.random_(0, 2, generator=g)

def materialise(call):
    a, kw = call.args, dict(call.kwargs)
    if call.op == "beam_step":
        scores = (real(a[1], lambda t: t.zero_()),)
        node, ptr, code, bid = a[2:]
        vocab = a[0].shape[1]
        args = (real(a[0], randn), *scores, real(node, lambda t: t.zero_()),
                real(ptr, lambda t: t.copy_(torch.full(t.shape, vocab).index_fill_(0, torch.tensor([0]), 0))),
                real(code, lambda t: t.copy_(torch.arange(t.numel()) % vocab)),
                real(bid, lambda t: t.uniform_(0.1, 3.0, generator=g)))
        if kw.get("allowed") is not None:
            kw["allowed"] = real(kw["allowed"], lambda t: t.copy_(torch.rand(t.shape) < 0.7))
        return args, kw
    if call.op == "decode_attention":
        q, ck, cv, ln, ok, ov = a
        size = ck.shape[2]
        return (real(q, randn), real(ck, randn), real(cv, randn), real(ln, lambda t: t.fill_(size)),
                real(ok, randn), real(ov, randn)), kw
    q, k, v, cu = a
    total = q.shape[0]
    return (real(q, randn), real(k, randn), real(v, randn),
            real(cu, lambda t: t.copy_(torch.linspace(0, total, cu.numel()).round().int()))), kw

ops = {"beam_step": (beam_step_triton, beam_step_torch),
       "decode_attention": (decode_attention_triton, decode_attention_torch),
       "prefill_attention": (prefill_attention_triton, prefill_attention_torch)}
sms = torch.cuda.get_device_properties(0).multi_processor_count
checked = 0
for call in calls("tiny", arch, Coverage(dtypes=("float32",), batch_sizes=(1, 3), context_lengths=(20, 65))):
    if call.sm_count not in (None, sms):
        continue
    args, kw = materialise(call)
    triton_fn, torch_fn = ops[call.op]
    got, ref = triton_fn(*args, **kw), torch_fn(*args, **kw)
    if call.op == "beam_step":  # the Triton wrapper returns (scores, parent, token, child, logp)
        torch.testing.assert_close(got[0], ref.scores, atol=1e-4, rtol=1e-4)
        assert torch.equal(got[2], ref.token) and torch.equal(got[1], ref.parent)
    else:
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    checked += 1
assert hits and all(hits), hits
print(json.dumps({"checked": checked, "lookups": len(hits)}))
"""


@pytest.mark.gpu
@pytest.mark.slow
def test_first_calls_on_a_gpu_compile_nothing_and_match_the_reference(tmp_path):
    """After ``use_compiled``, the first call of every kernel of the tiny preset (float32) loads
    its prepared binary (no Triton compilation, no launcher build) and equals the reference."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the Triton kernels run in the interpreter")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: the prepared kernels are loaded and launched")
    from ega_infer.compile import GPUS

    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if arch not in GPUS or sms not in GPUS[arch][1]:
        pytest.skip(f"sm_{arch} with {sms} SMs is not in ega_infer.compile.GPUS")
    prepared = tmp_path / "kernels"
    coverage = Coverage(dtypes=("float32",), batch_sizes=(1, 3), context_lengths=(20, 65))
    compile_kernels(prepared, archs=f"sm_{arch}", presets=["tiny"], coverage=coverage, check_cuda=False)
    out = json.loads(_run(_GPU_FIRST_CALLS, str(prepared), str(arch),
                          env=_clean_env(TRITON_CACHE_DIR=str(tmp_path / "cache")), timeout=600))
    assert out["checked"] > 0 and out["lookups"] > 0
