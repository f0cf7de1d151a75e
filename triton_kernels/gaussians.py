"""Triton backend of the Gaussian-splatting stage ops (gsplat 1.5.3 conventions): importing this module imports
every stage module, which registers the pyops::gs_<stage>_triton ops (same signatures and outputs as the native
schemas in csrc/ops.cpp).

- gaussians_project.py: EWA projection, forward and backward kernels.
- gaussians_sh.py: spherical harmonics, forward and backward kernels.
- gaussians_intersect.py: tile intersection and isect offsets (the reference's torch implementation, as ops).
- gaussians_raster.py: per-tile blending, forward and backward kernels, and their block sizes.
- gaussians_common.py: what they share (argument check, gsplat's alpha threshold).
"""

from . import gaussians_intersect, gaussians_project, gaussians_raster, gaussians_sh  # noqa: F401
from .gaussians_intersect import gs_intersect_tiles_triton, gs_isect_offsets_triton  # noqa: F401
from .gaussians_project import gs_project_bwd_triton, gs_project_fwd_triton  # noqa: F401
from .gaussians_raster import gs_rasterize_bwd_triton, gs_rasterize_fwd_triton  # noqa: F401
from .gaussians_sh import gs_sh_bwd_triton, gs_sh_fwd_triton  # noqa: F401
