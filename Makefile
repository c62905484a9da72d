# ega_infer developer entry points.
#
#   make test                  venv in .venv (first run), build + install the package, run pytest
#   make demo                  run the end-to-end demo (`python -m ega_infer demo`)
#   make bench                 every benchmark (bench/*.py) on the CPU at its small shapes, a few
#                              minutes; providers a CPU cannot run are skipped with the reason.
#                              BENCH_OPTS="--device cuda --size full --save" for a GPU host
#   make test PYTHON=python3   use an existing interpreter (e.g. a GPU host without network that
#                              already has torch, triton, pybind11, scikit-build-core): no venv,
#                              no dependency install, only the package is (re)built
#   make test TRITON_INTERPRET=0   on a GPU host: Triton tests run compiled on the GPU
#
# The package is installed editable (`pip install --no-build-isolation --no-deps -e .`):
# scikit-build-core rebuilds incrementally in build/{wheel_tag}, so every `make test` picks up
# C++/CUDA changes while Python and Triton sources are used in place.
# Knobs reach CMake through the environment: EGA_INFER_CUDA=AUTO|ON|OFF, EGA_INFER_CUDA_ARCHS.

PYTHON ?=
TRITON_INTERPRET ?= 1
export TRITON_INTERPRET
# Device-generic tests use the CPU while Triton is interpreted, the GPU otherwise.
TEST_DEVICE ?= $(if $(filter 1,$(TRITON_INTERPRET)),cpu,cuda)
PYTEST_ARGS ?=
BENCH_OPTS ?= --device cpu --size small

VENV := .venv
# torch is pinned EXACTLY: 2.13.0 is the CPU build that lies on local disk; a looser pin makes
# pip pull a multi-GB CUDA build.
# Serving: FastAPI + uvicorn + pydantic (HTTP, OpenAPI), prometheus-client (/metrics), pyarrow
# (Parquet catalogs), httpx (HTTP tests, load generator), Ray Serve (more than one process).
DEPS := torch==2.13.0 numpy pybind11 scikit-build-core safetensors pytest pytest-benchmark matplotlib \
        triton==3.6.0 transformers==5.23.0 \
        fastapi==0.142.2 uvicorn==0.54.0 prometheus-client==0.26.0 pyarrow==25.0.1 httpx==0.28.1 \
        "ray[serve]==2.58.0"
MIN_CMAKE := 3.25

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.ega-infer-deps
else
PY := $(PYTHON)
DEPS_STAMP :=
endif

.PHONY: all install test demo bench clean distclean

all: test

$(VENV)/.ega-infer-deps: Makefile
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(DEPS)
	@# The build uses the system cmake/ninja when recent enough, else PyPI's.
	@if ! cmake --version 2>/dev/null | awk 'NR==1 { split($$3, v, "."); ok = v[1] > 3 || (v[1] == 3 && v[2] >= 25) } END { exit !ok }'; then \
		echo "system cmake missing or older than $(MIN_CMAKE): installing cmake and ninja from PyPI"; \
		$(VENV)/bin/python -m pip install "cmake>=$(MIN_CMAKE)" ninja; \
	fi
	touch $@

install: $(DEPS_STAMP)
	$(PY) -m pip install --no-build-isolation --no-deps -e .

test: install
	$(PY) -m pytest -q --device=$(TEST_DEVICE) $(PYTEST_ARGS)

demo: install
	$(PY) -m ega_infer demo

bench: install
	@# Triton compiled, never interpreted. The end-to-end run saves its JSON + PNG (its CPU result counts)
	TRITON_INTERPRET=0 $(PY) bench/bench_catalog_build.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_device_trie.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_beam_step.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_decode_attention.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_prefill_attention.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_hf_beam_search.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_launches.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/profile_engine.py $(BENCH_OPTS)
	TRITON_INTERPRET=0 $(PY) bench/bench_engine.py --save $(BENCH_OPTS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
