"""Pure-PyTorch 3D Gaussian splatting: the specification a future CUDA/Triton/C++ rasterizer is tested against.

It reproduces gsplat 1.5.3's `rasterization()` for a pinhole camera and no batch dimensions, in plain
autograd-differentiable torch, in the input dtype (float32 or float64). Readable first, fast never: the
renderer builds a [C, H*W, N] tensor, so keep scenes small. gsplat's CUDA path computes in float32 (and
uses __expf); its _torch_impl twins, our oracle in tests, compute in the input dtype like this file.
packed=True (rasterization()'s default) and packed=False give the same images: the packed projection
(ProjectionEWA3DGSPacked.cu) applies the same culls and lists Gaussians in the same (camera, gaussian) order.

Semantics verified in gsplat 1.5.3's source (file / function read), which kernels must keep:

Covariance (cuda/include/Utils.cuh `quat_to_rotmat`, `quat_scale_to_covar_preci`; cuda/_torch_impl.py
`_quat_to_rotmat`):
  - quats are (w, x, y, z), normalised inside; Sigma = (R S)(R S)^T with S = diag(scales), so a scale's sign
    does not matter and a zero scale gives a flat Gaussian. A zero quaternion normalises to zero here
    (F.normalize, as _torch_impl does) and gives R = I; gsplat's CUDA rsqrt would give NaN.

Projection (cuda/csrc/ProjectionEWA3DGSFused.cu `projection_ewa_3dgs_fused_fwd_kernel`, Utils.cuh
`persp_proj`, `add_blur`; rendering.py `rasterization`):
  - viewmats are world-to-camera, row-major [R | t]; camera looks down +z (OpenCV). depth = camera-space z.
  - Culled first by depth: z < near_plane or z > far_plane (so z == near_plane is kept; _torch_impl keeps only
    near < z < far, which differs only on the boundary).
  - EWA Jacobian uses x/z and y/z clamped to [-(cx/fx + 0.3 tan_fovx), (W-cx)/fx + 0.3 tan_fovx] (and the same
    in y), tan_fovx = 0.5 W / fx; the projected mean uses the unclamped x/z.
  - eps2d is added to both diagonal entries of the 2D covariance (the blur); culled if the blurred det <= 0.
    compensation = sqrt(max(0, det_before_blur / det_after_blur)) (antialiased mode multiplies opacities by it).
  - conic = inverse of the blurred 2D covariance, stored as (a, b, c) = (inv00, inv01, inv11).
  - Radius is per axis, radii [C, N, 2] int32: r_x = ceil(extend * sqrt(cov2d_blur[0][0])),
    r_y = ceil(extend * sqrt(cov2d_blur[1][1])), with extend = 3.33. rasterization() passes opacities to the
    projection, which then (a) culls when opacity (times compensation in antialiased mode) < 1/255 and
    (b) uses the opacity-aware extend = min(3.33, sqrt(2 ln(opacity / (1/255)))). _torch_impl's projection
    knows neither (always 3.33): `project_ewa(..., opacities=None)` reproduces that, `rasterize_gaussians`
    passes opacities like rasterization() does.
  - Then culled if r_x <= radius_clip and r_y <= radius_clip (both), then culled if the box misses the image:
    mean_x + r_x <= 0 or mean_x - r_x >= W or mean_y + r_y <= 0 or mean_y - r_y >= H.
  - A culled Gaussian has radii (0, 0); gsplat leaves its means2d/depths/conics uninitialised (torch.empty)
    and compensation 0. Here all of them are 0, with zero gradient.

Spherical harmonics (rendering.py `rasterization`, cuda/csrc/SphericalHarmonicsCUDA.cu, _torch_impl
`_eval_sh_bases_fast`):
  - dirs = means - camera centre, camera centre = inverse(viewmat)[:3, 3]; normalised inside; coefficients
    [..., K, 3], K >= (degree + 1)^2, only the first (degree + 1)^2 are used; real SH basis in Sloan's
    ordering with gsplat's signs (degree 1: -C1 y, C1 z, -C1 x). Degrees 0..4.
  - rasterization() then uses colors = clamp_min(sh + 0.5, 0).

Tile intersection (cuda/csrc/IntersectTile.cu `intersect_tile_kernel`, `intersect_offset_kernel`,
`radix_sort_double_buffer`; Intersect.cpp):
  - Tile box: tile_min = floor((mean - r) / tile_size), tile_max = ceil((mean + r) / tile_size) per axis,
    clamped to [0, tile_width] / [0, tile_height]; tile_min inclusive, tile_max exclusive. gsplat's kernel
    computes it in float32; here and in the native kernels (gaussians_math.h) float64 inputs use float64, as
    gsplat's _torch_impl does.
    Gaussians with r_x <= 0 or r_y <= 0 get no tiles. tiles_per_gauss [C, N] int32.
  - Key (int64) = image_id << (32 + tile_bits) | tile_id << 32 | depth_bits, tile_id = ty * tile_width + tx,
    tile_bits = bit_length(tile_width * tile_height), image bits = bit_length(C), their sum must be <= 32;
    depth_bits = the float32 bit pattern of the depth, zero-extended (orders like the depth for depth >= 0).
  - Intersections are emitted per Gaussian in flatten-id order (c * N + n), tiles row-major, then sorted by a
    stable radix sort (CUB), so equal keys keep the lower flatten id first. (_torch_impl's `_isect_tiles`
    uses torch.sort, which is not stable and was seen to reorder ties; the CUDA order is the spec.)
    flatten_ids are int32 in gsplat, int64 here.
  - isect_offsets [C, tile_height, tile_width] int32: index of the first intersection of each tile in the
    sorted list = exclusive cumulative count (empty tiles point to the next non-empty one; all 0 if none).

Blending (cuda/csrc/RasterizeToPixels3DGSFwd.cu `rasterize_to_pixels_3dgs_fwd_kernel`, Common.h):
  - Pixel centre (x + 0.5, y + 0.5); delta = mean - centre; sigma = 0.5 (a dx^2 + c dy^2) + b dx dy.
  - alpha = min(0.999, opacity * exp(-sigma)); the Gaussian is skipped if sigma < 0 or alpha < 1/255.
  - next_T = T * (1 - alpha); if next_T <= 1e-4 the pixel is done and this Gaussian is NOT blended
    (exclusive); otherwise color += alpha * T * c, T = next_T.
  - Only Gaussians listed for the pixel's tile are visited, front to back in key order (depth, then lower
    index). render_alphas = 1 - T; with backgrounds, color += T * background.
  - The backward (RasterizeToPixels3DGSBwd.cu) gives zero gradient through a clamped (0.999) alpha, which is
    what autograd of min() gives here.

Render modes (rendering.py `rasterization`):
  - "D": colors = depths [C, N, 1]; "RGB+D": colors + depths as an extra last channel. Backgrounds, if given,
    become zeros for "D"/"ED" and get a 0 appended for "RGB+D"/"RGB+ED".
  - "ED"/"RGB+ED": the accumulated depth channel is divided by render_alphas.clamp(min=1e-10).
  - "antialiased": opacities [C, N] = opacities * compensations; "classic": no compensation.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # alphas below this are skipped; opacities below it are culled in projection
MAX_ALPHA = 0.999  # alpha is clamped to this, so T never reaches 0
T_EPS = 1e-4  # a pixel is done when the next transmittance would be <= this; that Gaussian is not blended
EXTEND = 3.33  # radius in standard deviations, before the opacity-aware bound
ED_EPS = 1e-10  # expected depth = accumulated depth / max(alpha, ED_EPS)
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")
_INT32_MAX = 2 ** 31 - 1


# ----------------------------------------------------------------------------------------------------------
# Covariances.


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] (w, x, y, z), any norm -> [..., 3, 3]
    """Rotation matrix of a quaternion after normalisation (a zero quaternion gives the identity)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def quat_scale_to_covar(
    quats: Tensor,  # [N, 4] (w, x, y, z), unnormalised
    scales: Tensor,  # [N, 3]
) -> Tensor:  # [N, 3, 3]
    """World-space covariance Sigma = R S S R^T, S = diag(scales)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R S: column j scaled by scales[j]
    return m @ m.transpose(-1, -2)


# ----------------------------------------------------------------------------------------------------------
# Projection.


def project_ewa(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
    opacities: Optional[Tensor] = None,  # [N]; enables the opacity cull and the opacity-aware radius
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """EWA perspective projection of 3D Gaussians with gsplat's culling (fully fused projection, pinhole).

    Args:
        means, covars: world-space Gaussians.
        viewmats, Ks: world-to-camera matrices and pinhole intrinsics.
        width, height: image size in pixels.
        eps2d: added to the diagonal of every 2D covariance (the screen-space blur).
        near_plane, far_plane: Gaussians with camera z outside [near_plane, far_plane] are culled.
        radius_clip: Gaussians with both radii <= radius_clip are culled.
        antialiased: also return the compensations sqrt(det(cov2d) / det(cov2d + eps2d I)).
        opacities: as gsplat's `opacities=` argument: cull opacity (times compensation when antialiased)
            < 1/255 and shrink the radius to where alpha can reach 1/255.

    Returns:
        radii [C, N, 2] int32 (0 = culled), means2d [C, N, 2], depths [C, N] (camera z), conics [C, N, 3]
        (inverse blurred 2D covariance, (a, b, c) = (inv00, inv01, inv11)), compensations [C, N] or None.
        Culled entries are zero.
    """
    C, N = viewmats.shape[0], means.shape[0]
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = R[:, None] @ covars[None] @ R[:, None].transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)  # [C, N]

    in_depth = (z >= near_plane) & (z <= far_plane)
    # Culled entries still flow through the math below; a safe z keeps them (and their gradients) finite.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [C, N, 2]

    # The Jacobian is evaluated at a point pulled back to 1.3x the field of view, which keeps off-screen
    # Gaussians from being stretched into huge splats.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    u = torch.minimum(torch.maximum(x / z, -(cx / fx + 0.3 * tan_fovx)), (width - cx) / fx + 0.3 * tan_fovx)
    v = torch.minimum(torch.maximum(y / z, -(cy / fy + 0.3 * tan_fovy)), (height - cy) / fy + 0.3 * tan_fovy)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * u / z, zero, fy / z, -fy * v / z], dim=-1).unflatten(-1, (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]

    a, d = cov2d[..., 0, 0], cov2d[..., 1, 1]
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det_orig = a * d - b * b
    a, d = a + eps2d, d + eps2d  # the blur
    det = a * d - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([d / det, -b / det, a / det], dim=-1)  # [C, N, 3]
    compensations = None
    if antialiased:
        ratio = det_orig / det
        pos = ratio > 0  # sqrt'(0) is infinite: keep zero-compensation entries out of the graph
        compensations = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), zero)

    with torch.no_grad():  # radii are integers: no gradient
        extend = torch.full_like(z, EXTEND)
        if opacities is not None:
            op = opacities.detach()[None, :].expand(C, N)
            if antialiased:
                op = op * compensations
            valid = valid & (op >= ALPHA_THRESHOLD)  # never in place: where() above saved valid
            extend = torch.minimum(extend, torch.sqrt(2 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)))
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(d.clamp_min(0)))
        valid = valid & ((rx > radius_clip) | (ry > radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        # gsplat casts the float radius to int32 unchecked; clamping keeps absurd splats representable.
        radii = torch.stack([rx, ry], dim=-1).clamp_max(_INT32_MAX).to(torch.int32)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii))

    def cull(value: Tensor) -> Tensor:
        return torch.where(valid.reshape(valid.shape + (1,) * (value.dim() - 2)), value, torch.zeros_like(value))

    comps = cull(compensations) if compensations is not None else None
    return radii, cull(means2d), cull(means_c[..., 2]), cull(conics), comps


# ----------------------------------------------------------------------------------------------------------
# Spherical harmonics.


def _sh_basis(degree: int, dirs: Tensor) -> Tensor:  # unit [..., 3] -> [..., (degree + 1)^2]
    """Real spherical harmonics, gsplat's ordering and signs, polynomial forms valid for unit vectors."""
    pi = math.pi
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.5 / math.sqrt(pi))]
    if degree >= 1:
        c1 = math.sqrt(3 / (4 * pi))
        out += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        x2, y2, z2 = x * x, y * y, z * z
        c2a, c2b = 0.5 * math.sqrt(15 / pi), 0.25 * math.sqrt(5 / pi)
        out += [c2a * x * y, -c2a * y * z, c2b * (3 * z2 - 1), -c2a * x * z, 0.5 * c2a * (x2 - y2)]
    if degree >= 3:
        c3a, c3b = 0.25 * math.sqrt(35 / (2 * pi)), 0.5 * math.sqrt(105 / pi)
        c3c, c3d = 0.25 * math.sqrt(21 / (2 * pi)), 0.25 * math.sqrt(7 / pi)
        out += [
            -c3a * y * (3 * x2 - y2), c3b * x * y * z, -c3c * y * (5 * z2 - 1), c3d * z * (5 * z2 - 3),
            -c3c * x * (5 * z2 - 1), 0.5 * c3b * z * (x2 - y2), -c3a * x * (x2 - 3 * y2),
        ]
    if degree >= 4:
        c4a, c4b = 0.75 * math.sqrt(35 / pi), 0.75 * math.sqrt(35 / (2 * pi))
        c4c, c4d = 0.75 * math.sqrt(5 / pi), 0.75 * math.sqrt(5 / (2 * pi))
        c4e = 3 / (16 * math.sqrt(pi))
        out += [
            c4a * x * y * (x2 - y2), -c4b * y * z * (3 * x2 - y2), c4c * x * y * (7 * z2 - 1),
            -c4d * y * z * (7 * z2 - 3), c4e * (35 * z2 * z2 - 30 * z2 + 3), -c4d * x * z * (7 * z2 - 3),
            0.5 * c4c * (x2 - y2) * (7 * z2 - 1), -c4b * x * z * (x2 - 3 * y2),
            0.25 * c4a * (x2 * (x2 - 3 * y2) - y2 * (3 * x2 - y2)),
        ]
    if degree > 4:
        raise ValueError(f"sh degree {degree} > 4 is not supported (gsplat supports 0..4)")
    return torch.stack(out, dim=-1)


def spherical_harmonics(
    degree: int,
    dirs: Tensor,  # [..., 3], any length (normalised here; a zero direction gives the degree-0 term only)
    coeffs: Tensor,  # [..., K, 3], K >= (degree + 1)^2
) -> Tensor:  # [..., 3]
    """Color of SH coefficients seen along dirs, as gsplat.spherical_harmonics (no +0.5, no clamp)."""
    n_bases = (degree + 1) ** 2
    if not 0 <= degree or coeffs.shape[-2] < n_bases:
        raise ValueError(f"sh degree {degree} needs {n_bases} coefficients, got coeffs {tuple(coeffs.shape)}")
    bases = _sh_basis(degree, F.normalize(dirs, dim=-1))  # [..., n_bases]
    return (bases[..., None] * coeffs[..., :n_bases, :]).sum(dim=-2)


# ----------------------------------------------------------------------------------------------------------
# Tiles.


def depth_keys(depths: Tensor) -> Tensor:  # [...] -> [...] int64 in [0, 2^32)
    """The low 32 bits of the sort key: the float32 bit pattern of the depth, zero-extended (gsplat rounds
    depths to float32 even for float64 inputs in its torch reference). Orders like the depth for depths >= 0."""
    return depths.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def tile_rects(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tensor:  # [C, N, 4] int64 (x_min, y_min, x_max, y_max): tiles x_min <= tx < x_max, y_min <= ty < y_max
    """The tiles a Gaussian's box touches: [floor((mean - r) / ts), ceil((mean + r) / ts)) per axis, clamped to
    the grid; empty for a Gaussian with a zero radius.

    The same math as the native kernels (csrc/include/pyops/gaussians_math.h `tile_rect`): computed in the
    dtype of means2d (float32 for float32 and lower, as gsplat's kernel), a NaN bound clamps to 0 (an empty
    range), and x_max >= x_min, y_max >= y_min."""
    dtype = torch.float64 if means2d.dtype == torch.float64 else torch.float32
    m = means2d.detach().to(dtype) / tile_size
    r = radii.to(dtype) / tile_size
    lo, hi = torch.floor(m - r), torch.ceil(m + r)
    limit = torch.tensor([tile_width, tile_height], dtype=dtype, device=m.device)

    def clamp(v: Tensor) -> Tensor:  # to [0, limit] before the cast: radii may be huge
        return torch.minimum(v.nan_to_num(nan=0.0).clamp_min(0), limit).to(torch.int64)

    lo = clamp(lo)
    hi = torch.maximum(clamp(hi), lo)
    visible = (radii > 0).all(dim=-1, keepdim=True)
    return torch.where(visible, torch.cat([lo, hi], dim=-1), 0)


def _key_bits(n_images: int, tile_width: int, tile_height: int) -> int:
    tile_bits = (tile_width * tile_height).bit_length()
    if n_images.bit_length() + tile_bits > 32:
        raise ValueError(f"{n_images} images x {tile_width}x{tile_height} tiles do not fit the 32 key bits")
    return tile_bits


def intersect_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Every (Gaussian, tile) pair, sorted by key = camera | tile | depth bits (gsplat's isect_tiles).

    Returns:
        tiles_per_gauss [C, N] int32, isect_ids [M] int64 (sorted), flatten_ids [M] int64 (c * N + n);
        equal keys keep the lower flatten id first (stable sort).
    """
    C, N = depths.shape
    tile_bits = _key_bits(C, tile_width, tile_height)
    device = depths.device
    rect = tile_rects(means2d, radii, tile_size, tile_width, tile_height).reshape(C * N, 4)  # empty if culled
    widths = rect[:, 2] - rect[:, 0]
    counts = widths * (rect[:, 3] - rect[:, 1])  # [C * N]
    total = int(counts.sum())  # the one host sync: repeat_interleave below takes it as output_size
    if total > _INT32_MAX:  # checked before anything that size is allocated
        raise ValueError(f"intersect_tiles: {total} intersections do not fit the int32 isect_offsets")

    # Expand each Gaussian into its tiles, row-major inside its box, in flatten-id order.
    flat = torch.repeat_interleave(torch.arange(C * N, device=device), counts, output_size=total)  # [M]
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(flat.numel(), device=device) - first[flat]
    w = widths[flat].clamp_min(1)
    tx, ty = rect[flat, 0] + local % w, rect[flat, 1] + local // w
    tile_ids = ty * tile_width + tx
    keys = ((flat // N) << (32 + tile_bits)) | (tile_ids << 32) | depth_keys(depths).reshape(C * N)[flat]

    isect_ids, order = torch.sort(keys, stable=True)
    return counts.reshape(C, N).to(torch.int32), isect_ids, flat[order]


def isect_offsets(
    isect_ids: Tensor,  # [M] int64, sorted
    n_images: int,
    tile_width: int,
    tile_height: int,
) -> Tensor:  # [C, tile_height, tile_width] int32
    """Start of each tile's run in the sorted intersection list (an empty tile points at the next run)."""
    tile_bits = _key_bits(n_images, tile_width, tile_height)
    n_tiles = tile_width * tile_height
    hi = isect_ids >> 32
    slot = (hi >> tile_bits) * n_tiles + (hi & ((1 << tile_bits) - 1))
    counts = torch.bincount(slot, minlength=n_images * n_tiles)
    return (torch.cumsum(counts, 0) - counts).to(torch.int32).reshape(n_images, tile_height, tile_width)


# ----------------------------------------------------------------------------------------------------------
# Rasterization.


def _blend(
    means2d: Tensor,  # [B, G, 2], front to back
    conics: Tensor,  # [B, G, 3]
    colors: Tensor,  # [B, G, D]
    opacities: Tensor,  # [B, G]
    px: Tensor,  # [P] pixel columns
    py: Tensor,  # [P] pixel rows
    covered: Tensor,  # [B, P, G] bool: Gaussian g may reach pixel p (its tile list holds p's tile)
) -> Tuple[Tensor, Tensor]:  # render [B, P, D], final transmittance [B, P, 1]
    """gsplat's per-pixel blend loop, vectorised over the Gaussians in order (see the module notes)."""
    dtype = means2d.dtype
    dx = means2d[:, None, :, 0] - (px.to(dtype) + 0.5)[None, :, None]  # [B, P, G]
    dy = means2d[:, None, :, 1] - (py.to(dtype) + 0.5)[None, :, None]
    a, b, c = (conics[:, None, :, k] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    # clamp_min keeps exp finite (and its gradient defined) where sigma < 0; those entries are skipped anyway.
    alpha = torch.clamp_max(opacities[:, None, :] * torch.exp(-sigma.clamp_min(0)), MAX_ALPHA)
    blend = covered & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(blend, alpha, torch.zeros_like(alpha))

    # T after each Gaussian if nothing stopped; the first one to reach <= 1e-4 and all later ones are dropped.
    blend = blend & (torch.cumprod(1 - alpha, dim=-1) > T_EPS)  # not in place: where() saved blend
    alpha = torch.where(blend, alpha, torch.zeros_like(alpha))
    t_after = torch.cumprod(1 - alpha, dim=-1)  # sequential products, as the kernel's running T
    ones = t_after.new_ones(*t_after.shape[:2], 1)
    t_before = torch.cat([ones, t_after[..., :-1]], dim=-1)
    t_final = t_after[..., -1:] if t_after.shape[-1] > 0 else ones  # [B, P, 1]
    return (alpha * t_before) @ colors, t_final


def rasterize_dense(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D] (or [N, D])
    opacities: Tensor,  # [C, N] (or [N])
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int32
    width: int,
    height: int,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    *,
    tile_size: int = 16,
) -> Tuple[Tensor, Tensor]:
    """Front-to-back alpha blending of every pixel against every visible Gaussian, without tile lists.

    Equals gsplat's tiled rasterizer exactly (up to summation rounding) because it keeps the one thing tiles
    change: a Gaussian only reaches the pixels of the tiles its box touches (`tile_rects`), applied here as a
    per-pixel mask. Gaussians are blended in key order: by the float32 bit pattern of the depth, then lower
    index first (what gsplat's stable radix sort gives). Per pixel, with delta = mean - (x + 0.5, y + 0.5):
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, alpha = min(0.999, opacity exp(-sigma)); skip if sigma < 0 or
    alpha < 1/255; stop before a Gaussian that would take T to <= 1e-4 (it is not blended).

    Returns:
        render [C, H, W, D] = sum_i alpha_i T_i c_i + T * background, alphas [C, H, W, 1] = 1 - T.
    """
    C, N = depths.shape
    D = colors.shape[-1]
    device = means2d.device
    colors = colors.expand(C, N, D)
    opacities = opacities.expand(C, N)

    order = torch.sort(depth_keys(depths), dim=1, stable=True).indices  # [C, N] front to back

    def sort(value: Tensor) -> Tensor:
        return torch.gather(value, 1, order.reshape(order.shape + (1,) * (value.dim() - 2)).expand_as(value))

    means2d, conics, colors, opacities, radii = map(sort, (means2d, conics, colors, opacities, radii))
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    rect = tile_rects(means2d, radii, tile_size, tile_width, tile_height)  # [C, N, 4]

    # Pixels, row-major: centres and tile coordinates.
    py, px = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    py, px = py.reshape(-1), px.reshape(-1)  # [P]
    tx, ty = (px // tile_size)[None, :, None], (py // tile_size)[None, :, None]  # [1, P, 1]
    covered = ((radii > 0).all(dim=-1)[:, None, :]  # [C, P, N]
               & (tx >= rect[:, None, :, 0]) & (tx < rect[:, None, :, 2])
               & (ty >= rect[:, None, :, 1]) & (ty < rect[:, None, :, 3]))

    render, t_final = _blend(means2d, conics, colors, opacities, px, py, covered)  # [C, P, D], [C, P, 1]
    if backgrounds is not None:
        render = render + t_final * backgrounds[:, None, :]
    return render.reshape(C, height, width, D), (1 - t_final).reshape(C, height, width, 1)


def rasterize_tiles(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] (c * N + n), sorted by key
    backgrounds: Optional[Tensor] = None,  # [C, D]
) -> Tuple[Tensor, Tensor]:
    """The tiled rasterizer as gsplat runs it, one tile at a time from the sorted intersection lists (the
    "torch" backend of `pyops.rasterize_to_pixels`; slow, a Python loop over tiles). Same blend as
    `rasterize_dense`: render [C, H, W, D], alphas [C, H, W, 1]."""
    C, N = means2d.shape[:2]
    D = colors.shape[-1]
    tile_height, tile_width = isect_offsets.shape[1:]
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], starts.new_tensor([flatten_ids.numel()])])
    flat = (means2d.reshape(C * N, 2), conics.reshape(C * N, 3), colors.reshape(C * N, D), opacities.reshape(C * N))
    render = means2d.new_zeros(C, height, width, D)
    t_final = means2d.new_ones(C, height, width, 1)
    for tile, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        c, rest = divmod(tile, tile_height * tile_width)
        ty, tx = divmod(rest, tile_width)
        y0, x0 = ty * tile_size, tx * tile_size
        y1, x1 = min(y0 + tile_size, height), min(x0 + tile_size, width)
        ids = flatten_ids[start:end].long()
        if ids.numel() == 0:
            continue
        py, px = torch.meshgrid(torch.arange(y0, y1, device=means2d.device),
                                torch.arange(x0, x1, device=means2d.device), indexing="ij")
        m2, co, cl, op = (t[ids][None] for t in flat)
        covered = torch.ones(1, py.numel(), ids.numel(), dtype=torch.bool, device=means2d.device)
        out, t = _blend(m2, co, cl, op, px.reshape(-1), py.reshape(-1), covered)
        render = render.index_put((torch.tensor(c), py, px), out[0].reshape(y1 - y0, x1 - x0, D))
        t_final = t_final.index_put((torch.tensor(c), py, px), t[0].reshape(y1 - y0, x1 - x0, 1))
    if backgrounds is not None:
        render = render + t_final * backgrounds[:, None, None, :]
    return render, 1 - t_final


def shade(
    means: Tensor,  # [N, 3]
    colors: Tensor,  # [(C,) N, D] features, or SH coefficients [(C,) N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4]
    depths: Tensor,  # [C, N]
    sh_degree: Optional[int],
    render_mode: str,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    sh=None,
) -> Tuple[Tensor, Optional[Tensor]]:  # features [C, N, D'], backgrounds [C, D'] or None
    """What rasterization() blends for a render mode: colors (SH evaluated towards each camera centre with
    `sh`, default `spherical_harmonics`, then + 0.5 and clamped at 0), depths, or both; and the matching
    backgrounds (depth channels blend against 0)."""
    C, N = depths.shape
    if sh_degree is None:
        colors = colors.expand(C, N, colors.shape[-1])
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        coeffs = colors.expand(C, N, colors.shape[-2], 3)
        colors = torch.clamp_min((sh or spherical_harmonics)(sh_degree, dirs, coeffs) + 0.5, 0.0)  # [C, N, 3]
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)
    return colors, backgrounds


def expected_depth(render: Tensor, alphas: Tensor, render_mode: str) -> Tensor:
    """"ED" modes: the accumulated depth channel (last) divided by the alpha, clamped at 1e-10."""
    if render_mode not in ("ED", "RGB+ED"):
        return render
    return torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=ED_EPS)], dim=-1)


def rasterize_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), unnormalised
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] post-activation, or SH coefficients [(C,) N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> Tuple[Tensor, Tensor, Dict]:
    """gsplat.rasterization() for a pinhole camera: project, shade, intersect tiles, blend.

    Returns:
        render_colors [C, H, W, D] ("RGB"), [C, H, W, 1] ("D", "ED") or [C, H, W, D + 1] ("RGB+D",
        "RGB+ED", depth last), render_alphas [C, H, W, 1], and meta with the intermediate results (radii,
        means2d, depths, conics, opacities, compensations, tiles_per_gauss, isect_ids, flatten_ids,
        isect_offsets, width, height, tile_size, tile_width, tile_height, n_cameras).
    """
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode {render_mode!r} is not one of {RENDER_MODES}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode {rasterize_mode!r} is not one of {RASTERIZE_MODES}")
    C, N = viewmats.shape[0], means.shape[0]
    antialiased = rasterize_mode == "antialiased"

    covars = quat_scale_to_covar(quats, scales)
    radii, means2d, depths, conics, compensations = project_ewa(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        radius_clip=radius_clip, antialiased=antialiased, opacities=opacities)
    view_opacities = opacities[None, :].expand(C, N)
    if antialiased:
        view_opacities = view_opacities * compensations

    colors, backgrounds = shade(means, colors, viewmats, depths, sh_degree, render_mode, backgrounds)

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = intersect_tiles(means2d, radii, depths, tile_size, tile_width,
                                                              tile_height)
    offsets = isect_offsets(isect_ids, C, tile_width, tile_height)

    render_colors, render_alphas = rasterize_dense(means2d, conics, colors, view_opacities, depths, radii, width,
                                                   height, backgrounds, tile_size=tile_size)
    render_colors = expected_depth(render_colors, render_alphas, render_mode)

    meta = {
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": view_opacities,
        "compensations": compensations, "tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids,
        "flatten_ids": flatten_ids, "isect_offsets": offsets, "width": width, "height": height,
        "tile_size": tile_size, "tile_width": tile_width, "tile_height": tile_height, "n_cameras": C,
    }
    return render_colors, render_alphas, meta
