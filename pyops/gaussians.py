"""Gaussian-splatting rasterizer ops (gsplat conventions): projection, spherical harmonics, tile
intersection, tile offsets and per-tile blending, forward and backward. `pyops/reference/gaussians.py` is
the spec; the native kernels register on the schemas in csrc/ops.cpp.

Work in progress (issue 4): this module holds the fake (meta) kernels of the stage ops so far.
"""

import importlib

import torch

from . import _backend

if _backend.HAS_TRITON:
    try:
        # registers pyops::gs_*_triton
        _triton = importlib.import_module(f"{__package__}.triton_kernels.gaussians")
    except ModuleNotFoundError as e:
        # An editable install made before triton_kernels/gaussians.py existed maps pyops.triton_kernels to a
        # checkout without it; the Triton backend is then just absent. Anything else is a real error.
        if e.name != f"{__package__}.triton_kernels.gaussians":
            raise


def _fake_project_fwd(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                      radius_clip, antialiased):
    c, n = viewmats.shape[0], means.shape[0]
    return (means.new_empty(c, n, 2, dtype=torch.int32), means.new_empty(c, n, 2), means.new_empty(c, n),
            means.new_empty(c, n, 3), means.new_empty(c, n))


def _fake_project_bwd(means, quats, scales, viewmats, Ks, width, height, eps2d, antialiased, radii, conics,
                      compensations, v_means2d, v_depths, v_conics, v_compensations):
    return torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales)


def _fake_sh_fwd(degree, dirs, coeffs):
    return coeffs.new_empty(dirs.shape[0], 3)


def _fake_sh_bwd(degree, dirs, coeffs, v_colors):
    return torch.empty_like(coeffs), torch.empty_like(dirs)


def _fake_intersect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height):
    m = torch.library.get_ctx().new_dynamic_size()  # the number of (camera, Gaussian, tile) hits
    c, n = depths.shape
    return (depths.new_empty(c, n, dtype=torch.int32), depths.new_empty(m, dtype=torch.long),
            depths.new_empty(m, dtype=torch.int32))


def _fake_tile_offsets(isect_ids, n_cameras, tile_width, tile_height):
    return isect_ids.new_empty(n_cameras, tile_height, tile_width, dtype=torch.int32)


def _fake_rasterize_fwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, tile_offsets,
                        flatten_ids):
    c, d = colors.shape[0], colors.shape[-1]
    return (colors.new_empty(c, height, width, d), colors.new_empty(c, height, width, 1),
            colors.new_empty(c, height, width, dtype=torch.int32))


def _fake_rasterize_bwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, tile_offsets,
                        flatten_ids, render_alphas, last_ids, v_render_colors, v_render_alphas, absgrad):
    v_bg = torch.empty_like(backgrounds) if backgrounds is not None else colors.new_empty(0)
    v_abs = torch.empty_like(means2d) if absgrad else means2d.new_empty(0)
    return (torch.empty_like(means2d), torch.empty_like(conics), torch.empty_like(colors),
            torch.empty_like(opacities), v_bg, v_abs)


if _backend._NATIVE_ERROR is None:
    for _name, _fake in (("gs_project_fwd", _fake_project_fwd), ("gs_project_bwd", _fake_project_bwd),
                         ("gs_sh_fwd", _fake_sh_fwd), ("gs_sh_bwd", _fake_sh_bwd),
                         ("gs_intersect_tiles", _fake_intersect_tiles), ("gs_tile_offsets", _fake_tile_offsets),
                         ("gs_rasterize_fwd", _fake_rasterize_fwd), ("gs_rasterize_bwd", _fake_rasterize_bwd)):
        torch.library.register_fake(f"pyops::{_name}")(_fake)
