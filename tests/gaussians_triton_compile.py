"""Compiles the Gaussian-splatting Triton kernels for sm_90 without a GPU (Triton's front end, LLVM and the
ptxas Triton ships) and prints ptxas's register and spill report per kernel configuration. Exits non-zero if a
kernel fails to compile or a configuration with at most SMALL_D channels spills registers.

Run without TRITON_INTERPRET (the interpreter replaces the kernels), with pyops importable (installed, or
PYTHONPATH set to a checkout built in place): python tests/gaussians_triton_compile.py
"""

import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pyops.triton_kernels import gaussians_project, gaussians_raster, gaussians_sh


def jobs():
    out = [("project_fwd", gaussians_project._gs_project_fwd_kernel,
            {"ANTIALIASED": True, "HAS_OPACITY": True, "BLOCK": 128}, 4),
           ("project_bwd", gaussians_project._gs_project_bwd_kernel, {"ANTIALIASED": True, "BLOCK": 128}, 4),
           ("sh_fwd degree 3", gaussians_sh._gs_sh_fwd_kernel, {"DEGREE": 3, "BLOCK": 128}, 4),
           ("sh_bwd degree 3", gaussians_sh._gs_sh_bwd_kernel, {"DEGREE": 3, "BLOCK": 128}, 4)]
    for ts in (16, 8):
        for ch in (3, 32):
            for bwd in (False, True):
                tile_p2, block_g, block_d, warps = gaussians_raster._raster_settings(ts, ch, True, backward=bwd)
                ce = {"HAS_BG": True, "TILE": ts, "TILE_P2": tile_p2, "BLOCK_G": block_g, "BLOCK_D": block_d}
                if bwd:
                    ce.update(ABSGRAD=True, DC=ch if ch <= gaussians_raster.SMALL_D else 0)
                kernel = (gaussians_raster._gs_rasterize_bwd_kernel if bwd
                          else gaussians_raster._gs_rasterize_fwd_kernel)
                name = (f"rasterize_{'bwd' if bwd else 'fwd'} tile {ts} D {ch} (chunk {block_g}, "
                        f"{warps} warps)")
                out.append((name, kernel, ce, warps, ch))
    return [j if len(j) == 5 else j + (3,) for j in out]


def signature(kernel, constexprs):
    ints = {"radii_ptr", "offsets_ptr", "flat_ptr", "last_ids_ptr"}
    floats = {"eps2d", "near_plane", "far_plane", "radius_clip"}
    if "project" in kernel.fn.__name__:
        floats |= {"width", "height"}  # the projection launchers pass the image size as floats
    sig = {}
    for arg in inspect.signature(kernel.fn).parameters:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            sig[arg] = "*i32" if arg in ints else "*fp32"
        else:
            sig[arg] = "fp32" if arg in floats else "i32"
    return sig


def main():
    import triton.backends.nvidia as nvidia

    ptxas = Path(nvidia.__file__).parent / "bin" / "ptxas"
    failed = False
    for name, kernel, ce, warps, channels in jobs():
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, ce), constexprs=ce),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert compiled.asm["cubin"], name
        if not ptxas.exists():
            print(f"{name}: compiled (no ptxas for a register report)")
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(compiled.asm["ptx"])
            f.flush()
            res = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                                 capture_output=True, text=True)
        info = res.stdout + res.stderr
        spills = max([int(s.split()[0]) for s in info.split(",") if "bytes spill stores" in s] or [-1])
        regs = next((s.split("Used")[1].split(",")[0].strip() for s in info.splitlines() if "Used" in s), "?")
        print(f"{name}: {regs}, {spills} bytes spill stores, shared {compiled.metadata.shared} B")
        if res.returncode != 0 or spills < 0 or (spills > 0 and channels <= gaussians_raster.SMALL_D):
            print(info)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
