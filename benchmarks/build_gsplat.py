#!/usr/bin/env python
"""Builds gsplat's CUDA extension ahead of time, as the module `gsplat.csrc` that its setup.py would build.

The PyPI wheel of gsplat has no compiled code and JIT-compiles its CUDA sources at the first GPU call, from inside
whichever benchmark happens to call it first; a GPU run compiles it here instead, in the background while the
tests run, and `import gsplat` then finds `gsplat.csrc` and skips the JIT.

    python benchmarks/build_gsplat.py [BUILD_DIR]     # writes <gsplat package>/csrc<ext suffix>
"""

import glob
import os
import shutil
import sys
import sysconfig
import tempfile

import gsplat
from torch.utils import cpp_extension


def main() -> None:
    cuda = os.path.join(os.path.dirname(gsplat.__file__), "cuda")
    build = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gsplat-build-")
    os.makedirs(build, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(cuda, "csrc", "*.cu")) + glob.glob(os.path.join(cuda, "csrc", "*.cpp")))
    # gsplat's own JIT flags (gsplat/cuda/_backend.py), under the module name its setup.py gives the extension.
    cpp_extension.load(name="csrc", sources=sources + [os.path.join(cuda, "ext.cpp")], build_directory=build,
                       extra_include_paths=[os.path.join(cuda, "include"),
                                            os.path.join(cuda, "csrc", "third_party", "glm")],
                       extra_cflags=["-O3", "-Wno-attributes"], extra_cuda_cflags=["-O3", "-use_fast_math"],
                       is_python_module=False, verbose=False)
    target = os.path.join(os.path.dirname(gsplat.__file__), "csrc" + sysconfig.get_config_var("EXT_SUFFIX"))
    shutil.copy(os.path.join(build, "csrc.so"), target)
    print(f"built {target}")


if __name__ == "__main__":
    main()
