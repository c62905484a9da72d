#!/usr/bin/env bash
# The GPU pass in two runs of under 10 minutes each on an H100/H200:
#
#   bash bench/gpu_check.sh tests [OUTDIR]   # build for the local GPU only, CUDA/Triton tests,
#                                            # every GPU benchmark's check at its small shapes
#   bash bench/gpu_check.sh bench [OUTDIR]   # end-to-end goals, profile, every GPU benchmark at
#                                            # its full shapes (bench/_harness.py), HF bench
#
# OUTDIR defaults to $OUT when set, else ./gpu_out. After every phase the log is there and
# bench/results is packed, with the log, into one archive (results_MODE.tgz: two files in all),
# so a run cut short keeps what finished. The same host keeps the build and Triton's cache
# between the two runs (the bench run rebuilds only what changed).
#
# Triton compiles every kernel specialisation on first use (dozens for gr4ad-base, seconds each).
# To spend the GPU time measuring instead, compile them first on any machine with the same
# Triton build and copy the result (an ignored path) into the repository root on the GPU host:
#
#   .venv/bin/ega-infer compile --arch sm_90 --out .aot --no-cuda-check    # ~70 s, ~18 MB
#   bash bench/gpu_check.sh bench                                          # on the GPU host, with .aot
#
# The script seeds Triton's cache from .aot/triton-cache; entries only hit when the GPU host's
# Triton build hashes the same (otherwise it compiles as usual).
#
# Each phase has its own time limit so a hang in one leaves the others' results; the table of
# pass/fail per phase is printed last. Run from the repository root on the GPU host (Python with
# torch, triton, pybind11, scikit-build-core, pytest, pytest-benchmark already installed).
set -u
MODE=${1:-tests}
OUTDIR=${2:-${OUT:-gpu_out}}
mkdir -p "$OUTDIR" bench/results
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/ega_triton_cache}
PY=${PYTHON:-python3}
LOG="$OUTDIR/gpu_check.log"
if [ -d .aot/triton-cache ]; then
  mkdir -p "$TRITON_CACHE_DIR" && cp -rn .aot/triton-cache/. "$TRITON_CACHE_DIR"/
fi
: > "$LOG"
declare -a SUMMARY

phase() {  # phase NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-28s rc=%-4s %4ss' "$name" "$rc" "$((SECONDS - start))")")
  tail -n 3 "$LOG"
  tar czf "$OUTDIR/results_$MODE.tgz" bench/results "$LOG" 2>/dev/null  # kept if a later phase runs out of time
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$LOG" 2>&1
ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
phase build 240 env EGA_INFER_CUDA=ON EGA_INFER_CUDA_ARCHS="$ARCH" \
  $PY -m pip install --no-build-isolation --no-deps -e .
if [ "$MODE" = tests ]; then
  phase kernel-tests 170 $PY -m pytest -q -p no:cacheprovider --device=cuda \
    tests/test_beam_step_cuda.py tests/test_decode_attention.py tests/test_beam_step.py \
    tests/test_prefill_attention.py tests/test_device_trie.py
  phase engine-tests 140 $PY -m pytest -q -p no:cacheprovider --device=cuda \
    tests/test_kernel_paths.py tests/test_host_sync.py tests/test_cuda_graphs.py tests/test_fp8.py tests/test_beam_search.py \
    tests/test_engine.py tests/test_hf_models.py tests/test_compile.py
  # each (op, provider, small shape) once, checked against its reference (no timing)
  phase bench-checks 60 $PY -m pytest -q -p no:cacheprovider --device=cuda --benchmark-disable -rs \
    bench/bench_beam_step.py bench/bench_decode_attention.py bench/bench_prefill_attention.py bench/bench_device_trie.py
else  # the goals first: if time runs out, the end-to-end numbers are what is left
  phase e2e-gr4ad 120 $PY -m ega_infer bench --preset gr4ad-base --device cuda --dtype bfloat16 \
    --mode candidates --items 1000000 --batches 8,32,128,256 --iters 5
  phase e2e-ega 80 $PY -m ega_infer bench --preset ega-base --device cuda --dtype bfloat16 \
    --items 100000 --batches 8,32,128 --iters 5
  phase profile-gr4ad 50 $PY bench/profile_engine.py --device cuda --save \
    --shape preset=gr4ad-base dtype=bfloat16 mode=candidates items=100000
  phase bench-beam-step 40 $PY bench/bench_beam_step.py --device cuda --size full --save
  phase bench-decode-attn 40 $PY bench/bench_decode_attention.py --device cuda --size full --save
  phase bench-prefill 40 $PY bench/bench_prefill_attention.py --device cuda --size full --save
  phase hf-bench 40 $PY bench/bench_hf_beam_search.py --device cuda --size full --save
  phase bench-device-trie 35 $PY bench/bench_device_trie.py --device cuda --size full --save
fi

echo
echo "phase                        rc      time"
printf '%s\n' "${SUMMARY[@]}"
