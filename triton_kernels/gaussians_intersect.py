"""The Triton backend's tile intersection and intersection offsets: registered ops pyops::gs_intersect_tiles_triton
and pyops::gs_isect_offsets_triton (so backend choice and torch.compile treat them like the other stages), whose
bodies are the torch implementation in pyops/reference/gaussians.py (key building, a stable torch.sort as
gsplat's radix sort, a bincount for the offsets): there is no Triton kernel, and one implementation to keep
right. They return gsplat's int32 flatten ids, where the reference returns int64."""

from typing import Tuple

import torch
from torch import Tensor

from ..reference import gaussians as _reference
from .gaussians_common import _check

_INT32_LIMIT = 2**31


@torch.library.custom_op("pyops::gs_intersect_tiles_triton", mutates_args=())
def gs_intersect_tiles_triton(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    tile_size: int, tile_width: int, tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(tiles_per_gauss [C, N] int32, isect_ids [M] int64 sorted, flatten_ids [M] int32 = c * N + g), keys
    camera | tile | depth bits as gsplat builds them (pyops.reference.gaussians.intersect_tiles)."""
    op = "gs_intersect_tiles_triton"
    _check(op, "depths", depths, (None, None))
    c, n = depths.shape
    like = ("depths", depths)
    _check(op, "means2d", means2d, (c, n, 2), like=like)
    _check(op, "radii", radii, (c, n, 2), dtype=torch.int32, like=like)
    if c * n > _INT32_LIMIT:
        raise ValueError(f"{op}: C * N = {c * n} does not fit the int32 flatten ids")
    tiles_per_gauss, isect_ids, flatten_ids = _reference.intersect_tiles(means2d, radii, depths, tile_size,
                                                                         tile_width, tile_height)
    return tiles_per_gauss, isect_ids, flatten_ids.int()


@gs_intersect_tiles_triton.register_fake
def _(means2d, radii, depths, tile_size, tile_width, tile_height):
    m = torch.library.get_ctx().new_dynamic_size()  # the number of (camera, Gaussian, tile) hits
    c, n = depths.shape
    return (depths.new_empty(c, n, dtype=torch.int32), depths.new_empty(m, dtype=torch.long),
            depths.new_empty(m, dtype=torch.int32))


@torch.library.custom_op("pyops::gs_isect_offsets_triton", mutates_args=())
def gs_isect_offsets_triton(
    isect_ids: Tensor,  # [M] int64, sorted
    n_cameras: int, tile_width: int, tile_height: int,
) -> Tensor:
    """First intersection of every (camera, tile), [C, tile_height, tile_width] int32; an empty tile points at
    the next run (pyops.reference.gaussians.isect_offsets)."""
    _check("gs_isect_offsets_triton", "isect_ids", isect_ids, (None,), dtype=torch.long)
    return _reference.isect_offsets(isect_ids, n_cameras, tile_width, tile_height)


@gs_isect_offsets_triton.register_fake
def _(isect_ids, n_cameras, tile_width, tile_height):
    return isect_ids.new_empty(n_cameras, tile_height, tile_width, dtype=torch.int32)
