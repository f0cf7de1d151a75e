import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter; it must be switched on before
# triton_kernels is imported (by pyops), which happens after this file is loaded.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CPU_ISA_LEVELS = ("base", "avx2", "avx512", "amx")


def pytest_configure(config):
    # Also in pyproject.toml; registered here too so the marker works whichever config pytest picks up.
    config.addinivalue_line("markers", "subprocess: starts a Python subprocess (slower; tests process-wide state)")


def supported_cpu_isa_levels():
    """The CPU ISA levels (csrc/cpu/isa.h) this host and build can run, lowest first; [] without pyops._C."""
    try:
        import pyops  # noqa: F401  (loads pyops._C, which registers pyops::cpu_isa)

        op = torch.ops.pyops.cpu_isa
    except (ImportError, AttributeError, RuntimeError):
        return []
    active = op()
    levels = []
    for level in CPU_ISA_LEVELS:
        try:
            op(level)
            levels.append(level)
        except ValueError:
            pass
    op(active)
    return levels


def pytest_generate_tests(metafunc):
    # A test that takes `cpu_isa_level` runs once per level this host supports, with the native CPU
    # kernels switched to that level (the env override PYOPS_CPU_ISA only sets the default level).
    if "cpu_isa_level" in metafunc.fixturenames:
        metafunc.parametrize("cpu_isa_level", supported_cpu_isa_levels(), indirect=True)


@pytest.fixture
def cpu_isa_level(request):
    op = torch.ops.pyops.cpu_isa
    active = op()
    op(request.param)
    yield request.param
    op(active)
