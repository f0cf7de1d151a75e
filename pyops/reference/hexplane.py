"""Pure-PyTorch HexPlane features (4DGS / K-Planes deformation fields): the specification every backend is
tested against.

A point (x, y, z) at time t is normalised to the box, ``p' = (p - aabb[0]) * 2 / (aabb[1] - aabb[0]) - 1``
(4DGS's normalize_aabb; the time is used as given), giving q = (x', y', z', t). Each resolution level has six
feature planes over the coordinate pairs (a, b) in (xy, xz, xt, yz, yt, zt) order; plane (a, b) is (F, R_b, R_a)
(4DGS's (1, F, R_b, R_a) is accepted too), so coordinate a indexes its last dim and b the one before. A plane is
read with bilinear interpolation, align_corners=True and a border clamp: ``u = (q + 1) / 2 * (R - 1)`` clamped to
[0, R - 1] (gradient 1 on it, ends included, 0 outside), cell ``i0 = clamp(floor(u), 0, R - 2)``, weight
``u - i0`` on i0 + 1. The six F-vectors of a level are multiplied together; the levels' products are
concatenated, (N, sum of F). This is what 4DGS's grid_sample composition computes, except exactly on the far
border where grid_sample's gradient takes an out-of-range corner as 0 and this one the last cell's slope.
"""

from itertools import combinations
from typing import List, Sequence, Union

import torch
from torch import Tensor

PLANE_AXES = tuple(combinations(range(4), 2))  # (0,1) xy, (0,2) xt... in 4DGS's order: xy xz xt yz yt zt


def plane_view(plane: Tensor) -> Tensor:
    """(F, R_b, R_a) view of a plane given as (F, R_b, R_a) or 4DGS's (1, F, R_b, R_a)."""
    return plane[0] if plane.dim() == 4 else plane


def _lerp_coords(q: Tensor, size: int):
    """Cell index i0 (int64), its neighbour i1 and the weight of i1, for normalised coordinates q."""
    u = (q + 1) * 0.5 * (size - 1)
    # Border clamp with gradient 1 on [0, R - 1] including its ends (grid_sample's rule; torch >= 2.13's clamp
    # gives 0 on the ends, older ones 1), 0 outside.
    inside = (u >= 0) & (u <= size - 1)
    u = torch.where(inside, u, u.detach().clamp(0, size - 1))
    i0 = u.detach().floor().clamp(0, max(size - 2, 0)).long()
    return i0, (i0 + 1).clamp(max=size - 1), u - i0.to(u.dtype)


def bilinear(plane: Tensor, qa: Tensor, qb: Tensor) -> Tensor:
    """(N, F) samples of plane (F, R_b, R_a) at normalised coordinates qa (along R_a) and qb (along R_b)."""
    _, rb, ra = plane.shape
    a0, a1, wa = _lerp_coords(qa, ra)
    b0, b1, wb = _lerp_coords(qb, rb)
    wa, wb = wa[:, None], wb[:, None]
    at = lambda b, a: plane[:, b, a].t()  # noqa: E731  (N, F)
    return (at(b0, a0) * (1 - wa) + at(b0, a1) * wa) * (1 - wb) + (at(b1, a0) * (1 - wa) + at(b1, a1) * wa) * wb


def hexplane_features(points: Tensor, times: Union[float, Tensor], planes: Sequence[Tensor], aabb: Tensor) -> Tensor:
    """(N, sum of F) features of points (N, 3) at times (N,) (or one float for all); planes: 6 * levels tensors,
    level-major in PLANE_AXES order. Math in fp32 (fp64 for fp64 points); returned in points' dtype."""
    math = torch.float64 if points.dtype == torch.float64 else torch.float32
    aabb = aabb.to(math)
    p = (points.to(math) - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1.0
    t = times.to(math) if isinstance(times, Tensor) else torch.full_like(p[:, 0], float(times))
    q = torch.cat([p, t.reshape(-1, 1)], dim=1)  # (N, 4)
    levels: List[Tensor] = []
    for level in range(len(planes) // 6):
        product = None
        for i, (a, b) in enumerate(PLANE_AXES):
            sample = bilinear(plane_view(planes[6 * level + i]).to(math), q[:, a], q[:, b])
            product = sample if product is None else product * sample
        levels.append(product)
    return torch.cat(levels, dim=1).to(points.dtype)
