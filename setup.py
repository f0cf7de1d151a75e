"""Builds pyops and its one native extension, pyops._C.

Environment switches (all optional):
  PYOPS_BUILD_CUDA=0|1   force the CUDA kernels off or on (default: on when torch has CUDA and nvcc is found)
  TORCH_CUDA_ARCH_LIST   GPU architectures, e.g. "9.0" (default: the visible GPU, else "8.0;9.0")
  MAX_JOBS               parallel compile jobs (ninja)
  NVCC_THREADS           nvcc --threads per job (default 2)
  PYOPS_DEBUG=1          -O0 -g builds
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    forced = os.environ.get("PYOPS_BUILD_CUDA")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if forced == "1" and not available:
        raise RuntimeError("PYOPS_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")
    return available if forced is None else forced == "1"


def default_arch_list() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "8.0;9.0"


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    opt = ["-O0", "-g"] if os.environ.get("PYOPS_DEBUG") == "1" else ["-O3"]
    # cpp_extension adds the -std= this torch needs (C++17 or C++20). -fopenmp: at::parallel_for is
    # header code that only runs in parallel when the extension itself is compiled with OpenMP.
    cxx = opt + (["-fopenmp"] if sys.platform.startswith("linux") else [])
    link = ["-fopenmp"] if sys.platform.startswith("linux") else []
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if not want_cuda():
        return CppExtension("pyops._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                            extra_link_args=link)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_arch_list())
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo",
                  f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
    return CUDAExtension("pyops._C", sources + rel("csrc/cuda/*.cu"), include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx + ["-DPYOPS_WITH_CUDA"], "nvcc": nvcc}, extra_link_args=link)


setup(
    name="pyops",
    version="0.1.0",
    description="Fused PyTorch ops (Derf, VQ search, Gaussian rasterization) in CUDA, Triton and C++",
    packages=["pyops", "pyops.reference", "pyops.models", "pyops.triton_kernels"],
    # Installed under pyops: a top-level `triton_kernels` would shadow Triton's own kernel library.
    package_dir={"pyops.triton_kernels": "triton_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.6"],
    extras_require={"triton": ["triton>=3.2"]},
)
