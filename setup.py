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
import platform
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension, include_paths

ROOT = os.path.dirname(os.path.abspath(__file__))

# The CPU ISA copies (csrc/cpu/isa.h): sources named *_<level>.cpp get these flags, the rest the defaults.
# -DCPU_CAPABILITY puts ATen's Vectorized in its per-capability inline namespace, as ATen's own builds do.
# Keep in step with PYOPS_ISA_FLAGS in CMakeLists.txt.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
               # GCC 12's avx512fintrin.h (`__m512 __Y = __Y;`) trips -Wall once inlined (GCC PR 105593).
               "-Wno-uninitialized", "-Wno-maybe-uninitialized"],
    # The VQ int8 scores (vq_int8_avx512vnni.cpp), called only on CPUs with VNNI at the AVX-512 level.
    "avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-Wno-uninitialized",
                   "-Wno-maybe-uninitialized"],
    # The VQ int8 tile kernel (vq_int8_amx.cpp), called only at the "amx" level.
    "amx": ["-mamx-tile", "-mamx-int8", "-mavx512f", "-mavx512bw", "-mavx512vl", "-Wno-uninitialized",
            "-Wno-maybe-uninitialized"],
}
# x86-64 with GCC or Clang (the Unix compilers setuptools drives): base + AVX2 + AVX-512; else base only.
ISA_COPIES = platform.machine().lower() in ("x86_64", "amd64") and os.name == "posix"


def isa_level(source: str):
    """The ISA level a source is compiled for ("avx2", "avx512"), or None for default flags."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return next((level for level in ISA_FLAGS if stem.endswith("_" + level)), None)


class BuildExtensionWithIsa(BuildExtension):
    """BuildExtension plus per-source ISA flags, which setuptools lacks: the *_avx2.cpp / *_avx512.cpp
    sources are compiled (ninja too) into build_temp/isa-<level>/ with the extension's flags plus
    ISA_FLAGS[level] and linked in as extra objects; the other sources build as usual."""

    def build_extension(self, ext):
        sources, extra_objects, depends = ext.sources, ext.extra_objects, ext.depends
        isa_objects = []
        for level, flags in ISA_FLAGS.items():
            level_sources = [s for s in sources if isa_level(s) == level]
            if not level_sources:
                continue
            args = ext.extra_compile_args
            args = {**args, "cxx": args["cxx"] + flags} if isinstance(args, dict) else args + flags
            isa_objects += self.compiler.compile(
                level_sources, output_dir=os.path.join(self.build_temp, "isa-" + level), macros=ext.define_macros,
                include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=args, depends=ext.depends)
        ext.sources = [s for s in sources if isa_level(s) is None]
        ext.extra_objects = extra_objects + isa_objects
        ext.depends = depends + [s for s in sources if isa_level(s)]  # a newer ISA source still relinks
        try:
            super().build_extension(ext)
        finally:
            ext.sources, ext.extra_objects, ext.depends = sources, extra_objects, depends


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
    sources = [s for s in rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp") if ISA_COPIES or isa_level(s) is None]
    opt = ["-O0", "-g"] if os.environ.get("PYOPS_DEBUG") == "1" else ["-O3"]
    # cpp_extension adds the -std= this torch needs (C++17 or C++20); CMakeLists.txt uses the same standard
    # and warnings. -fopenmp: at::parallel_for is header code that only runs in parallel when the extension
    # itself is compiled with OpenMP.
    # -isystem: torch's headers are system headers, as CMake treats libtorch's, so -Wall sees our code only.
    # -Wno-psabi: GCC notes that passing the base copy's 32-byte Vectorized by value changed ABI in GCC 4.6.
    cxx = opt + ["-Wall", "-Wno-unused-function", "-Wno-psabi"] + [f"-isystem{p}" for p in include_paths()]
    cxx += ["-DPYOPS_CPU_ISA_X86=1"] if ISA_COPIES else []
    cxx += ["-fopenmp"] if sys.platform.startswith("linux") else []
    link = ["-fopenmp"] if sys.platform.startswith("linux") else []
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # Headers too: setuptools skips the whole extension when no listed file is newer than the library.
    depends = rel("csrc/include/pyops/*.h") + rel("csrc/cpu/*.h")
    if not want_cuda():
        return CppExtension("pyops._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                            extra_link_args=link, depends=depends)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_arch_list())
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo",
                  f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
    return CUDAExtension("pyops._C", sources + rel("csrc/cuda/*.cu"), include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx + ["-DPYOPS_WITH_CUDA"], "nvcc": nvcc}, extra_link_args=link,
                         depends=depends)


setup(
    name="pyops",
    version="0.1.0",
    description="Fused PyTorch ops (Derf, VQ search, Gaussian rasterization) in CUDA, Triton and C++",
    packages=["pyops", "pyops.reference", "pyops.models", "pyops.triton_kernels"],
    # Installed under pyops: a top-level `triton_kernels` would shadow Triton's own kernel library.
    package_dir={"pyops.triton_kernels": "triton_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionWithIsa},
    python_requires=">=3.9",
    install_requires=["torch>=2.6"],
    extras_require={"triton": ["triton>=3.2"], "metrics": ["opencv-python-headless>=4.5"]},
)
