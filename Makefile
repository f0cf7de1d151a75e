# The two commands: `make bench` (the main job: benchmark suite on the best device present) and
# `make test` (the whole test suite: pytest + C++ ctest). Each creates .venv, installs the pinned
# dependencies, builds pyops from source and runs. See README.md for every switch.
PYTHON ?= python3
VENV ?= .venv
# PYOPS_SYSTEM_PYTHON=1 uses $(PYTHON) as it is (e.g. a GPU image with its own torch, no network).
ifeq ($(PYOPS_SYSTEM_PYTHON),1)
PY := $(PYTHON)
DEPS :=
else
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
endif
# CMake >= 3.26 (for C++20 with nvcc) comes from PyPI into the venv; fall back to the system's.
CMAKE = $(if $(wildcard $(dir $(PY))cmake),$(dir $(PY))cmake,cmake)
CTEST = $(if $(wildcard $(dir $(PY))ctest),$(abspath $(dir $(PY))ctest),ctest)
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
MAX_JOBS ?= $(shell nproc)
export CUDA_HOME MAX_JOBS
PYTEST_ARGS ?=
CMAKE_BUILD_DIR ?= build-cmake

.PHONY: build test test-python test-cpp bench clean

$(VENV)/.deps-installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements-dev.txt
	touch $@

build: $(DEPS)
	$(PY) -m pip install --no-build-isolation --no-deps -e .

test: test-python test-cpp

test-python: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

# CMake (libtorch) build of the same sources plus the C++ unit tests (CPU kernels; setup.py builds CUDA).
test-cpp: build
	$(CMAKE) -S . -B $(CMAKE_BUILD_DIR) -DPython_EXECUTABLE=$(abspath $(PY))
	$(CMAKE) --build $(CMAKE_BUILD_DIR) -j $(MAX_JOBS)
	cd $(CMAKE_BUILD_DIR) && $(CTEST) --output-on-failure

bench: build
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf build $(CMAKE_BUILD_DIR) *.egg-info pyops/_C*.so
