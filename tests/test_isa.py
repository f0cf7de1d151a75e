"""The CPU ISA copies of the native kernels (csrc/cpu/isa.h): the PYOPS_CPU_ISA override, the pyops::cpu_isa
op, and a disassembly check that no AVX code escapes the per-ISA namespaces."""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CPU_ISA_LEVELS, supported_cpu_isa_levels

import pyops
from pyops import _backend

pytestmark = pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")

SUPPORTED = supported_cpu_isa_levels()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, **env):
    """Runs `code` in a fresh interpreter with extra environment variables; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


# A Derf forward on the CPU backend, then the level that ran it.
PROBE = ("import torch, pyops; x = torch.randn(4, 33); "
         "y = pyops.derf(x, torch.ones(1), torch.zeros(1), None, None, channel_dim=-1, backend='cpu'); "
         "assert torch.allclose(y, torch.erf(x), atol=1e-6); print(torch.ops.pyops.cpu_isa())")


@pytest.mark.subprocess
@pytest.mark.parametrize("level", CPU_ISA_LEVELS)
def test_env_override_forces_the_level(level):
    if level not in SUPPORTED:
        pytest.skip(f"this host cannot run {level}")
    out = run_python(PROBE, PYOPS_CPU_ISA=level)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == level


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["sse9"] + [level for level in CPU_ISA_LEVELS if level not in SUPPORTED])
def test_env_override_rejects_what_it_cannot_run(value):
    out = run_python(PROBE, PYOPS_CPU_ISA=value)
    assert out.returncode != 0  # an error, never an illegal instruction (that would be a signal: < 0)
    assert out.returncode > 0 and "PYOPS_CPU_ISA" in out.stderr and value in out.stderr, out.stderr


def test_default_is_the_best_level_and_the_op_switches():
    if os.environ.get("PYOPS_CPU_ISA"):
        assert torch.ops.pyops.cpu_isa() == os.environ["PYOPS_CPU_ISA"]
    else:
        assert torch.ops.pyops.cpu_isa() == SUPPORTED[-1]
    active = torch.ops.pyops.cpu_isa()
    try:
        for level in SUPPORTED:
            assert torch.ops.pyops.cpu_isa(level) == level and torch.ops.pyops.cpu_isa() == level
        with pytest.raises(ValueError, match="not a CPU ISA level"):
            torch.ops.pyops.cpu_isa("sse9")
        for level in set(CPU_ISA_LEVELS) - set(SUPPORTED):
            with pytest.raises(ValueError, match="supported levels"):
                torch.ops.pyops.cpu_isa(level)
    finally:
        torch.ops.pyops.cpu_isa(active)


# ----------------------------------------------------------------------------------------------------------
# Disassembly: baseline code must run on any x86-64 CPU, so outside the AVX2/AVX-512 copies no function may
# use a VEX/EVEX instruction (every one has a v-prefixed mnemonic; baseline SSE code has none) or a
# ymm/zmm/mask register. A leak is typically a library inline function (TORCH_CHECK's message builder, a
# std::vector member) that an ISA copy instantiated out of line under its shared mangled name: the linker
# keeps one of the same-named copies, and baseline callers may then run AVX-512 code (see csrc/cpu/isa.h).

# A function belongs to an ISA copy when its name mentions a per-ISA namespace (pyops::<op>::avx2::...,
# also as a template argument, e.g. at::parallel_for<lambda in pyops::derf::avx2::...>), or ATen's
# per-capability namespace at::vec::AVX2/AVX512 (-DCPU_CAPABILITY): such names exist in one copy only.
# The VQ int8 scores (vq_int8_avx512vnni.cpp, vq_int8_amx.cpp) are the VNNI and AMX copies, in pyops::vq::int8
# (after a return type, if any). AMX tile instructions count as AVX code here.
ISA_NAME = re.compile(r"pyops::\w+::avx(2|512)::|at::vec::AVX(2|512)::|(^|[\s*&])pyops::vq::int8::")
AVX = re.compile(r"^v[a-z0-9]+$|^(tdp\w+|tile\w+|ldtilecfg|sttilecfg)$|%[yz]mm\d+|%k[0-7]\b|%tmm\d\b")


def avx_functions_outside_isa_copies(path):
    """{function: first offending instruction} for the functions in `path` that break the rule above."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", path], check=True, capture_output=True,
                          text=True).stdout
    bad, name = {}, None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$", line)
        if not insn or name is None or name in bad or ISA_NAME.search(name):
            continue
        mnemonic, operands = insn.groups()
        if AVX.search(mnemonic) or AVX.search(operands):
            bad[name] = f"{mnemonic} {operands}".strip()
    return bad


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("objdump") is None or not sys.platform.startswith("linux"),
                    reason="needs objdump (binutils) and an ELF build")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 builds only")
def test_no_avx_code_outside_the_isa_copies():
    libs = glob.glob(os.path.join(os.path.dirname(pyops.__file__), "_C*.so"))
    assert libs, "pyops._C was not found next to the package"
    bad = avx_functions_outside_isa_copies(libs[0])
    assert not bad, "AVX code outside the ISA copies' namespaces:\n" + "\n".join(
        f"  {name}: {insn}" for name, insn in sorted(bad.items()))
