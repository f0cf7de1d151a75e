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

.PHONY: build test test-python test-cpp bench format lint clean

$(VENV)/.deps-installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements-dev.txt
	touch $@

build: $(DEPS)
	$(PY) -m pip install --no-build-isolation --no-deps -e .

test: test-python test-cpp

test-python: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

# C++ unit tests (ctest) against what `build` built: CMake compiles no csrc/ source, it links the op tests
# with pyops/_C*.so (so the sources compile once, with setup.py's flags). Without PYOPS_OPS_LIBRARY,
# CMakeLists.txt builds the sources itself as the op library for C++ users.
test-cpp: build
	$(CMAKE) -S . -B $(CMAKE_BUILD_DIR) -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -DPYOPS_OPS_LIBRARY=$(CURDIR)/pyops/_C$$($(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
	$(CMAKE) --build $(CMAKE_BUILD_DIR) -j $(MAX_JOBS)
	cd $(CMAKE_BUILD_DIR) && $(CTEST) --output-on-failure

bench: build
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Style: ruff (pyproject.toml) and clang-format (.clang-format), the pinned versions of requirements-dev.txt.
CXX_SOURCES = $(shell git ls-files 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.h' 'tests/cpp/*.cpp')
format: $(DEPS)
	$(dir $(PY))ruff check --fix pyops benchmarks tests triton_kernels setup.py
	$(dir $(PY))clang-format -i $(CXX_SOURCES)

lint: $(DEPS)
	$(dir $(PY))ruff check pyops benchmarks tests triton_kernels setup.py
	$(dir $(PY))clang-format --dry-run --Werror $(CXX_SOURCES)

clean:
	rm -rf build $(CMAKE_BUILD_DIR) *.egg-info pyops/_C*.so
