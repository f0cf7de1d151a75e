"""Triton kernels of the Gaussian-splatting stage ops (gsplat 1.5.3 conventions), registered as
torch.library.triton_op under pyops::gs_<stage>_triton so torch.compile sees them; same signatures and outputs
as the native schemas in csrc/ops.cpp.

- Projection: one program per block of Gaussians of one camera; every lane runs the whole EWA chain in
  fp32 scalars (quat + scale -> covariance, world -> camera, pinhole Jacobian, eps2d dilation, conic, per-axis
  3.33-sigma radii (opacity-aware when opacities are given), culling). The backward recomputes that chain and runs its VJP; per-Gaussian gradients
  are summed over cameras with atomics, culled pairs add nothing.
- Spherical harmonics: one program per block of rows, the bases as per-row scalars, colors as [rows, 4].
- Tile intersection keys are built with torch ops and sorted with torch.sort (stable), as gsplat's
  radix sort orders them; tile offsets are a torch.searchsorted over the sorted keys.
- Rasterize forward: one program per (tile, camera); the tile's pixels are the lanes of a [P] vector, the
  tile's depth-sorted Gaussians are walked in chunks of BLOCK_G loaded as vectors. Per chunk, [P, BLOCK_G]
  alphas, transmittance by a cumulative product along the chunk started from the pixel's carried T, and
  colors accumulated with one [P, BLOCK_G] x [BLOCK_G, D] fp32 dot.
- Rasterize backward: the same tile walked back to front in chunks. The transmittance before each Gaussian is
  replayed as T_after_chunk / (suffix product of (1 - alpha)) and the colour of what lies behind as a suffix
  sum, both along the chunk; per-Gaussian gradients are summed over the tile's pixels in the program and
  added to global memory with one atomic per Gaussian and tile.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# gsplat's constants (cuda/include/Common.h, the projection and rasterization kernels).
ALPHA_THRESHOLD: tl.constexpr = tl.constexpr(1.0 / 255.0)
MAX_ALPHA: tl.constexpr = tl.constexpr(0.999)
T_EPS: tl.constexpr = tl.constexpr(1e-4)  # a pixel stops before a Gaussian that would take T to <= T_EPS
SMALL_D = 8  # the rasterizer backward loops over channels up to this many, above it uses fp32 dots
EXTEND: tl.constexpr = tl.constexpr(3.33)  # radius in standard deviations
SH_C0: tl.constexpr = tl.constexpr(0.2820947917738781)
SH_C1: tl.constexpr = tl.constexpr(0.48860251190292)


# ----------------------------------------------------------------------------------------------------------
# Small 3x3 helpers on per-lane scalars (row-major argument order a00, a01, ..., a22).
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _mm3(a00, a01, a02, a10, a11, a12, a20, a21, a22, b00, b01, b02, b10, b11, b12, b20, b21, b22):
    return (a00 * b00 + a01 * b10 + a02 * b20, a00 * b01 + a01 * b11 + a02 * b21, a00 * b02 + a01 * b12 + a02 * b22,
            a10 * b00 + a11 * b10 + a12 * b20, a10 * b01 + a11 * b11 + a12 * b21, a10 * b02 + a11 * b12 + a12 * b22,
            a20 * b00 + a21 * b10 + a22 * b20, a20 * b01 + a21 * b11 + a22 * b21, a20 * b02 + a21 * b12 + a22 * b22)


@triton.jit
def _quat_to_rotmat(qw, qx, qy, qz):
    inv = 1.0 / tl.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    w = qw * inv
    x = qx * inv
    y = qy * inv
    z = qz * inv
    return (1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
            2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
            2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
            w, x, y, z, inv)


@triton.jit
def _load_pair(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask):
    """Loads one (camera, Gaussian) pair per lane; returns the world rotation R, scales, the camera-space
    mean and covariance and the camera's rotation W."""
    mx = tl.load(means_ptr + g * 3 + 0, mask=mask, other=0.0)
    my = tl.load(means_ptr + g * 3 + 1, mask=mask, other=0.0)
    mz = tl.load(means_ptr + g * 3 + 2, mask=mask, other=0.0)
    qw = tl.load(quats_ptr + g * 4 + 0, mask=mask, other=1.0)
    qx = tl.load(quats_ptr + g * 4 + 1, mask=mask, other=0.0)
    qy = tl.load(quats_ptr + g * 4 + 2, mask=mask, other=0.0)
    qz = tl.load(quats_ptr + g * 4 + 3, mask=mask, other=0.0)
    sx = tl.load(scales_ptr + g * 3 + 0, mask=mask, other=1.0)
    sy = tl.load(scales_ptr + g * 3 + 1, mask=mask, other=1.0)
    sz = tl.load(scales_ptr + g * 3 + 2, mask=mask, other=1.0)
    v = view_ptr + cam * 16
    w00 = tl.load(v + 0)
    w01 = tl.load(v + 1)
    w02 = tl.load(v + 2)
    t0 = tl.load(v + 3)
    w10 = tl.load(v + 4)
    w11 = tl.load(v + 5)
    w12 = tl.load(v + 6)
    t1 = tl.load(v + 7)
    w20 = tl.load(v + 8)
    w21 = tl.load(v + 9)
    w22 = tl.load(v + 10)
    t2 = tl.load(v + 11)
    return (mx, my, mz, qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1, t2)


@triton.jit
def _covariances(qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22):
    """World covariance R S S R^T and its camera-space version W cov W^T (both symmetric, 6 values), the
    rotation R and the normalized quaternion."""
    r00, r01, r02, r10, r11, r12, r20, r21, r22, w, x, y, z, inv = _quat_to_rotmat(qw, qx, qy, qz)
    m00 = r00 * sx
    m01 = r01 * sy
    m02 = r02 * sz
    m10 = r10 * sx
    m11 = r11 * sy
    m12 = r12 * sz
    m20 = r20 * sx
    m21 = r21 * sy
    m22 = r22 * sz
    s00 = m00 * m00 + m01 * m01 + m02 * m02
    s01 = m00 * m10 + m01 * m11 + m02 * m12
    s02 = m00 * m20 + m01 * m21 + m02 * m22
    s11 = m10 * m10 + m11 * m11 + m12 * m12
    s12 = m10 * m20 + m11 * m21 + m12 * m22
    s22 = m20 * m20 + m21 * m21 + m22 * m22
    # W S
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _mm3(w00, w01, w02, w10, w11, w12, w20, w21, w22,
                                                       s00, s01, s02, s01, s11, s12, s02, s12, s22)
    # (W S) W^T, upper triangle
    c00 = a00 * w00 + a01 * w01 + a02 * w02
    c01 = a00 * w10 + a01 * w11 + a02 * w12
    c02 = a00 * w20 + a01 * w21 + a02 * w22
    c11 = a10 * w10 + a11 * w11 + a12 * w12
    c12 = a10 * w20 + a11 * w21 + a12 * w22
    c22 = a20 * w20 + a21 * w21 + a22 * w22
    return (s00, s01, s02, s11, s12, s22, c00, c01, c02, c11, c12, c22,
            r00, r01, r02, r10, r11, r12, r20, r21, r22, w, x, y, z, inv)


@triton.jit
def _pinhole(px, py, pz, fx, fy, cx, cy, width, height):
    """EWA Jacobian entries (j00, j02, j11, j12) with gsplat's 1.3x-FOV clamp of x/z and y/z, the clamped
    tx, ty, the in-range flags, and the projected mean."""
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / pz
    xr = px * rz
    yr = py * rz
    tx = pz * tl.minimum(lim_x_pos, tl.maximum(-lim_x_neg, xr))
    ty = pz * tl.minimum(lim_y_pos, tl.maximum(-lim_y_neg, yr))
    x_in = (xr <= lim_x_pos) & (xr >= -lim_x_neg)
    y_in = (yr <= lim_y_pos) & (yr >= -lim_y_neg)
    j00 = fx * rz
    j11 = fy * rz
    j02 = -fx * tx * rz * rz
    j12 = -fy * ty * rz * rz
    return j00, j02, j11, j12, tx, ty, x_in, y_in, fx * xr + cx, fy * yr + cy, rz


@triton.jit
def _gs_project_fwd_kernel(means_ptr, quats_ptr, scales_ptr, opac_ptr, view_ptr, k_ptr, radii_ptr, means2d_ptr,
                           depths_ptr, conics_ptr, comp_ptr, N, width, height, eps2d, near_plane, far_plane,
                           radius_clip, ANTIALIASED: tl.constexpr, HAS_OPACITY: tl.constexpr,
                           BLOCK: tl.constexpr):
    cam = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = g < N
    (mx, my, mz, qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1,
     t2) = _load_pair(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask)
    (s00, s01, s02, s11, s12, s22, c00, c01, c02, c11, c12, c22, r00, r01, r02, r10, r11, r12, r20, r21, r22,
     w, x, y, z, inv) = _covariances(qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22)
    pcx = w00 * mx + w01 * my + w02 * mz + t0
    pcy = w10 * mx + w11 * my + w12 * mz + t1
    pcz = w20 * mx + w21 * my + w22 * mz + t2
    fx = tl.load(k_ptr + cam * 9 + 0)
    cx = tl.load(k_ptr + cam * 9 + 2)
    fy = tl.load(k_ptr + cam * 9 + 4)
    cy = tl.load(k_ptr + cam * 9 + 5)
    j00, j02, j11, j12, tx, ty, x_in, y_in, u, v, rz = _pinhole(pcx, pcy, pcz, fx, fy, cx, cy, width, height)
    # cov2d = J C J^T with J = [[j00, 0, j02], [0, j11, j12]]
    jc00 = j00 * c00 + j02 * c02
    jc01 = j00 * c01 + j02 * c12
    jc02 = j00 * c02 + j02 * c22
    jc11 = j11 * c11 + j12 * c12
    jc12 = j11 * c12 + j12 * c22
    a = jc00 * j00 + jc02 * j02
    b = jc01 * j11 + jc02 * j12
    c = jc11 * j11 + jc12 * j12
    det_orig = a * c - b * b
    a = a + eps2d
    c = c + eps2d
    det = a * c - b * b
    comp = tl.sqrt(tl.maximum(0.0, det_orig / det))
    # Positive conditions, so NaNs cull too.
    ok = mask & (pcz >= near_plane) & (pcz <= far_plane) & (det > 0.0)
    extend = tl.full((BLOCK,), EXTEND, tl.float32)
    if HAS_OPACITY:  # gsplat's rasterization(): cull what can never reach 1/255, shrink the radius to it
        opac = tl.load(opac_ptr + g, mask=mask, other=1.0)
        if ANTIALIASED:
            opac = opac * comp
        ok = ok & (opac >= ALPHA_THRESHOLD)
        extend = tl.minimum(extend, tl.sqrt(2.0 * tl.log(tl.maximum(opac, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)))
    rx = tl.ceil(tl.sqrt(tl.maximum(a, 0.0)) * extend)
    ry = tl.ceil(tl.sqrt(tl.maximum(c, 0.0)) * extend)
    ok = ok & ((rx > radius_clip) | (ry > radius_clip))
    ok = ok & (u + rx > 0.0) & (u - rx < width) & (v + ry > 0.0) & (v - ry < height)
    out = cam * N + g
    tl.store(radii_ptr + out * 2 + 0, tl.where(ok, rx, 0.0).to(tl.int32), mask=mask)
    tl.store(radii_ptr + out * 2 + 1, tl.where(ok, ry, 0.0).to(tl.int32), mask=mask)
    tl.store(means2d_ptr + out * 2 + 0, tl.where(ok, u, 0.0), mask=mask)
    tl.store(means2d_ptr + out * 2 + 1, tl.where(ok, v, 0.0), mask=mask)
    tl.store(depths_ptr + out, tl.where(ok, pcz, 0.0), mask=mask)
    inv_det = 1.0 / det
    tl.store(conics_ptr + out * 3 + 0, tl.where(ok, c * inv_det, 0.0), mask=mask)
    tl.store(conics_ptr + out * 3 + 1, tl.where(ok, -b * inv_det, 0.0), mask=mask)
    tl.store(conics_ptr + out * 3 + 2, tl.where(ok, a * inv_det, 0.0), mask=mask)
    if ANTIALIASED:
        tl.store(comp_ptr + out, tl.where(ok, comp, 0.0), mask=mask)
    else:
        tl.store(comp_ptr + out, tl.full((BLOCK,), 1.0, tl.float32), mask=mask)


@triton.jit
def _gs_project_bwd_kernel(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, radii_ptr, conics_ptr, comp_ptr,
                           v_means2d_ptr, v_depths_ptr, v_conics_ptr, v_comp_ptr, v_means_ptr, v_quats_ptr,
                           v_scales_ptr, N, width, height, eps2d, ANTIALIASED: tl.constexpr,
                           BLOCK: tl.constexpr):
    cam = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pair = cam * N + g
    in_range = g < N
    rxi = tl.load(radii_ptr + pair * 2 + 0, mask=in_range, other=0)
    ryi = tl.load(radii_ptr + pair * 2 + 1, mask=in_range, other=0)
    mask = in_range & (rxi > 0) & (ryi > 0)
    # d conic -> d cov2d: -P V P, V symmetric with half the off-diagonal gradient on each side.
    p0 = tl.load(conics_ptr + pair * 3 + 0, mask=mask, other=0.0)
    p1 = tl.load(conics_ptr + pair * 3 + 1, mask=mask, other=0.0)
    p2 = tl.load(conics_ptr + pair * 3 + 2, mask=mask, other=0.0)
    vc0 = tl.load(v_conics_ptr + pair * 3 + 0, mask=mask, other=0.0)
    vc1 = tl.load(v_conics_ptr + pair * 3 + 1, mask=mask, other=0.0) * 0.5
    vc2 = tl.load(v_conics_ptr + pair * 3 + 2, mask=mask, other=0.0)
    pv00 = p0 * vc0 + p1 * vc1
    pv01 = p0 * vc1 + p1 * vc2
    pv10 = p1 * vc0 + p2 * vc1
    pv11 = p1 * vc1 + p2 * vc2
    g00 = -(pv00 * p0 + pv01 * p1)
    g01 = -(pv00 * p1 + pv01 * p2)
    g11 = -(pv10 * p1 + pv11 * p2)
    if ANTIALIASED:
        # comp = sqrt(det(cov) / det(cov + eps I)): d comp^2 / d cov = (1 - comp^2) P - eps det(P) I.
        comp = tl.load(comp_ptr + pair, mask=mask, other=1.0)
        v_comp = tl.load(v_comp_ptr + pair, mask=mask, other=0.0)
        det_p = p0 * p2 - p1 * p1
        v_sq = tl.where(comp > 0.0, v_comp * 0.5 / comp, 0.0)
        one_m = 1.0 - comp * comp
        g00 += v_sq * (one_m * p0 - eps2d * det_p)
        g01 += v_sq * one_m * p1
        g11 += v_sq * (one_m * p2 - eps2d * det_p)

    (mx, my, mz, qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1,
     t2) = _load_pair(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask)
    (s00, s01, s02, s11, s12, s22, c00, c01, c02, c11, c12, c22, r00, r01, r02, r10, r11, r12, r20, r21, r22,
     w, x, y, z, inv) = _covariances(qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22)
    pcx = w00 * mx + w01 * my + w02 * mz + t0
    pcy = w10 * mx + w11 * my + w12 * mz + t1
    pcz = w20 * mx + w21 * my + w22 * mz + t2
    fx = tl.load(k_ptr + cam * 9 + 0)
    cx = tl.load(k_ptr + cam * 9 + 2)
    fy = tl.load(k_ptr + cam * 9 + 4)
    cy = tl.load(k_ptr + cam * 9 + 5)
    j00, j02, j11, j12, tx, ty, x_in, y_in, u, v, rz = _pinhole(pcx, pcy, pcz, fx, fy, cx, cy, width, height)
    vm0 = tl.load(v_means2d_ptr + pair * 2 + 0, mask=mask, other=0.0)
    vm1 = tl.load(v_means2d_ptr + pair * 2 + 1, mask=mask, other=0.0)
    vdep = tl.load(v_depths_ptr + pair, mask=mask, other=0.0)

    # d cov_cam = J^T G J
    gj00 = g00 * j00
    gj01 = g01 * j11
    gj11 = g11 * j11
    gj02 = g00 * j02 + g01 * j12
    gj12 = g01 * j02 + g11 * j12
    vc_00 = j00 * gj00
    vc_01 = j00 * gj01
    vc_02 = j00 * gj02
    vc_11 = j11 * gj11
    vc_12 = j11 * gj12
    vc_22 = j02 * gj02 + j12 * gj12
    # d J = (G + G^T) J C = 2 G (J C); only the non-constant entries of J matter.
    jc00 = j00 * c00 + j02 * c02
    jc01 = j00 * c01 + j02 * c12
    jc02 = j00 * c02 + j02 * c22
    jc10 = j11 * c01 + j12 * c02
    jc11 = j11 * c11 + j12 * c12
    jc12 = j11 * c12 + j12 * c22
    vj00 = 2.0 * (g00 * jc00 + g01 * jc10)
    vj02 = 2.0 * (g00 * jc02 + g01 * jc12)
    vj11 = 2.0 * (g01 * jc01 + g11 * jc11)
    vj12 = 2.0 * (g01 * jc02 + g11 * jc12)
    rz2 = rz * rz
    rz3 = rz2 * rz
    vpx = fx * rz * vm0
    vpy = fy * rz * vm1
    vpz = -(fx * pcx * vm0 + fy * pcy * vm1) * rz2 + vdep
    # j02 = -fx tx / z^2 with tx = x (in the FOV) or z * limit (clamped).
    vpx += tl.where(x_in, -fx * rz2 * vj02, 0.0)
    vpz += tl.where(x_in, 0.0, -fx * rz3 * vj02 * tx)
    vpy += tl.where(y_in, -fy * rz2 * vj12, 0.0)
    vpz += tl.where(y_in, 0.0, -fy * rz3 * vj12 * ty)
    vpz += -fx * rz2 * vj00 - fy * rz2 * vj11 + 2.0 * fx * tx * rz3 * vj02 + 2.0 * fy * ty * rz3 * vj12
    # world mean: W^T d p
    v_mx = w00 * vpx + w10 * vpy + w20 * vpz
    v_my = w01 * vpx + w11 * vpy + w21 * vpz
    v_mz = w02 * vpx + w12 * vpy + w22 * vpz
    # world covariance: W^T dC W (symmetric)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = _mm3(w00, w10, w20, w01, w11, w21, w02, w12, w22,
                                                       vc_00, vc_01, vc_02, vc_01, vc_11, vc_12, vc_02, vc_12, vc_22)
    vs00, vs01, vs02, vs10, vs11, vs12, vs20, vs21, vs22 = _mm3(a00, a01, a02, a10, a11, a12, a20, a21, a22,
                                                                w00, w01, w02, w10, w11, w12, w20, w21, w22)
    # cov = M M^T, M = R S: dM = (dS + dS^T) M
    m00 = r00 * sx
    m01 = r01 * sy
    m02 = r02 * sz
    m10 = r10 * sx
    m11 = r11 * sy
    m12 = r12 * sz
    m20 = r20 * sx
    m21 = r21 * sy
    m22 = r22 * sz
    vm00, vm01, vm02, vm10, vm11, vm12, vm20, vm21, vm22 = _mm3(
        vs00 + vs00, vs01 + vs10, vs02 + vs20, vs10 + vs01, vs11 + vs11, vs12 + vs21, vs20 + vs02, vs21 + vs12,
        vs22 + vs22, m00, m01, m02, m10, m11, m12, m20, m21, m22)
    v_sx = r00 * vm00 + r10 * vm10 + r20 * vm20
    v_sy = r01 * vm01 + r11 * vm11 + r21 * vm21
    v_sz = r02 * vm02 + r12 * vm12 + r22 * vm22
    vr00 = vm00 * sx
    vr01 = vm01 * sy
    vr02 = vm02 * sz
    vr10 = vm10 * sx
    vr11 = vm11 * sy
    vr12 = vm12 * sz
    vr20 = vm20 * sx
    vr21 = vm21 * sy
    vr22 = vm22 * sz
    # rotation matrix of the unit quaternion (w, x, y, z), then through the normalization.
    vqw = 2.0 * (x * (vr21 - vr12) + y * (vr02 - vr20) + z * (vr10 - vr01))
    vqx = 2.0 * (-2.0 * x * (vr11 + vr22) + y * (vr10 + vr01) + z * (vr20 + vr02) + w * (vr21 - vr12))
    vqy = 2.0 * (x * (vr10 + vr01) - 2.0 * y * (vr00 + vr22) + z * (vr21 + vr12) + w * (vr02 - vr20))
    vqz = 2.0 * (x * (vr20 + vr02) + y * (vr21 + vr12) - 2.0 * z * (vr00 + vr11) + w * (vr10 - vr01))
    dot = vqw * w + vqx * x + vqy * y + vqz * z
    vqw = (vqw - dot * w) * inv
    vqx = (vqx - dot * x) * inv
    vqy = (vqy - dot * y) * inv
    vqz = (vqz - dot * z) * inv

    tl.atomic_add(v_means_ptr + g * 3 + 0, v_mx, mask=mask, sem="relaxed")
    tl.atomic_add(v_means_ptr + g * 3 + 1, v_my, mask=mask, sem="relaxed")
    tl.atomic_add(v_means_ptr + g * 3 + 2, v_mz, mask=mask, sem="relaxed")
    tl.atomic_add(v_quats_ptr + g * 4 + 0, vqw, mask=mask, sem="relaxed")
    tl.atomic_add(v_quats_ptr + g * 4 + 1, vqx, mask=mask, sem="relaxed")
    tl.atomic_add(v_quats_ptr + g * 4 + 2, vqy, mask=mask, sem="relaxed")
    tl.atomic_add(v_quats_ptr + g * 4 + 3, vqz, mask=mask, sem="relaxed")
    tl.atomic_add(v_scales_ptr + g * 3 + 0, v_sx, mask=mask, sem="relaxed")
    tl.atomic_add(v_scales_ptr + g * 3 + 1, v_sy, mask=mask, sem="relaxed")
    tl.atomic_add(v_scales_ptr + g * 3 + 2, v_sz, mask=mask, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# Spherical harmonics (gsplat's real basis, Sloan's evaluation order; dirs normalized inside).
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _sh_dirs(dirs_ptr, rows, rmask):
    dx = tl.load(dirs_ptr + rows * 3 + 0, mask=rmask, other=1.0)
    dy = tl.load(dirs_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    dz = tl.load(dirs_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    inv = 1.0 / tl.sqrt(dx * dx + dy * dy + dz * dz)
    return dx * inv, dy * inv, dz * inv, inv


@triton.jit
def _sh_bases(x, y, z, DEGREE: tl.constexpr):
    """The (DEGREE + 1)^2 <= 16 bases and their partial derivatives in x, y, z (unit-direction coordinates
    taken as independent, as the chain rule through the normalization expects). Unused ones are 0."""
    zero = x * 0.0
    b1 = y * -SH_C1
    b2 = z * SH_C1
    b3 = x * -SH_C1
    b4 = zero
    b5 = zero
    b6 = zero
    b7 = zero
    b8 = zero
    b9 = zero
    b10 = zero
    b11 = zero
    b12 = zero
    b13 = zero
    b14 = zero
    b15 = zero
    # d b_k / d (x, y, z), only the nonzero ones; degree 1: b1 = -C1 y, b2 = C1 z, b3 = -C1 x.
    d4x = zero
    d4y = zero
    d5y = zero
    d5z = zero
    d6z = zero
    d7x = zero
    d7z = zero
    d8x = zero
    d8y = zero
    d9x = zero
    d9y = zero
    d10x = zero
    d10y = zero
    d10z = zero
    d11y = zero
    d11z = zero
    d12z = zero
    d13x = zero
    d13z = zero
    d14x = zero
    d14y = zero
    d14z = zero
    d15x = zero
    d15y = zero
    if DEGREE >= 2:
        z2 = z * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        k2a = 1.092548430592079
        k2b = 0.5462742152960395
        b4 = k2b * s1
        b5 = -k2a * z * y
        b6 = 0.9461746957575601 * z2 - 0.3153915652525201
        b7 = -k2a * z * x
        b8 = k2b * c1
        d4x = 2.0 * k2b * y
        d4y = 2.0 * k2b * x
        d5y = -k2a * z
        d5z = -k2a * y
        d6z = 2.0 * 0.9461746957575601 * z
        d7x = -k2a * z
        d7z = -k2a * x
        d8x = 2.0 * k2b * x
        d8y = -2.0 * k2b * y
        if DEGREE >= 3:
            k3c = -2.285228997322329
            k3b = 1.445305721320277
            k3a = -0.5900435899266435
            tmp_c = k3c * z2 + 0.4570457994644658
            tmp_b = k3b * z
            c2 = x * c1 - y * s1
            s2 = x * s1 + y * c1
            b9 = k3a * s2
            b10 = tmp_b * s1
            b11 = tmp_c * y
            b12 = z * (1.865881662950577 * z2 - 1.119528997770346)
            b13 = tmp_c * x
            b14 = tmp_b * c1
            b15 = k3a * c2
            d9x = k3a * 6.0 * x * y
            d9y = k3a * 3.0 * c1
            d10x = tmp_b * 2.0 * y
            d10y = tmp_b * 2.0 * x
            d10z = k3b * s1
            d11y = tmp_c
            d11z = 2.0 * k3c * z * y
            d12z = 3.0 * 1.865881662950577 * z2 - 1.119528997770346
            d13x = tmp_c
            d13z = 2.0 * k3c * z * x
            d14x = tmp_b * 2.0 * x
            d14y = -tmp_b * 2.0 * y
            d14z = k3b * c1
            d15x = k3a * 3.0 * c1
            d15y = -k3a * 6.0 * x * y
    return (b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15,
            d4x, d4y, d5y, d5z, d6z, d7x, d7z, d8x, d8y, d9x, d9y, d10x, d10y, d10z, d11y, d11z, d12z, d13x, d13z,
            d14x, d14y, d14z, d15x, d15y)


@triton.jit
def _sh_coef(coeffs_ptr, rows, K, k: tl.constexpr, mask2):
    ch = tl.arange(0, 4)[None, :]
    return tl.load(coeffs_ptr + rows[:, None] * (K * 3) + k * 3 + ch, mask=mask2, other=0.0)


@triton.jit
def _gs_sh_fwd_kernel(dirs_ptr, coeffs_ptr, out_ptr, M, K, DEGREE: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < M
    ch = tl.arange(0, 4)[None, :]
    mask2 = rmask[:, None] & (ch < 3)
    acc = _sh_coef(coeffs_ptr, rows, K, 0, mask2) * SH_C0
    if DEGREE >= 1:
        x, y, z, inv = _sh_dirs(dirs_ptr, rows, rmask)
        (b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, d4x, d4y, d5y, d5z, d6z, d7x, d7z,
         d8x, d8y, d9x, d9y, d10x, d10y, d10z, d11y, d11z, d12z, d13x, d13z, d14x, d14y, d14z, d15x,
         d15y) = _sh_bases(x, y, z, DEGREE)
        acc += b1[:, None] * _sh_coef(coeffs_ptr, rows, K, 1, mask2)
        acc += b2[:, None] * _sh_coef(coeffs_ptr, rows, K, 2, mask2)
        acc += b3[:, None] * _sh_coef(coeffs_ptr, rows, K, 3, mask2)
        if DEGREE >= 2:
            acc += b4[:, None] * _sh_coef(coeffs_ptr, rows, K, 4, mask2)
            acc += b5[:, None] * _sh_coef(coeffs_ptr, rows, K, 5, mask2)
            acc += b6[:, None] * _sh_coef(coeffs_ptr, rows, K, 6, mask2)
            acc += b7[:, None] * _sh_coef(coeffs_ptr, rows, K, 7, mask2)
            acc += b8[:, None] * _sh_coef(coeffs_ptr, rows, K, 8, mask2)
            if DEGREE >= 3:
                acc += b9[:, None] * _sh_coef(coeffs_ptr, rows, K, 9, mask2)
                acc += b10[:, None] * _sh_coef(coeffs_ptr, rows, K, 10, mask2)
                acc += b11[:, None] * _sh_coef(coeffs_ptr, rows, K, 11, mask2)
                acc += b12[:, None] * _sh_coef(coeffs_ptr, rows, K, 12, mask2)
                acc += b13[:, None] * _sh_coef(coeffs_ptr, rows, K, 13, mask2)
                acc += b14[:, None] * _sh_coef(coeffs_ptr, rows, K, 14, mask2)
                acc += b15[:, None] * _sh_coef(coeffs_ptr, rows, K, 15, mask2)
    tl.store(out_ptr + rows[:, None] * 3 + ch, acc, mask=mask2)


@triton.jit
def _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, k: tl.constexpr, b, vcol, mask2):
    """Writes d coeffs[:, k, :] = b_k * v_colors; returns d b_k = <coeffs[:, k, :], v_colors>."""
    ch = tl.arange(0, 4)[None, :]
    tl.store(v_coeffs_ptr + rows[:, None] * (K * 3) + k * 3 + ch, b[:, None] * vcol, mask=mask2)
    return tl.sum(_sh_coef(coeffs_ptr, rows, K, k, mask2) * vcol, axis=1)


@triton.jit
def _gs_sh_bwd_kernel(dirs_ptr, coeffs_ptr, v_colors_ptr, v_coeffs_ptr, v_dirs_ptr, M, K, DEGREE: tl.constexpr,
                      BLOCK: tl.constexpr):
    # v_coeffs is zero-filled by the host: coefficients past (DEGREE + 1)^2 get no gradient.
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < M
    ch = tl.arange(0, 4)[None, :]
    mask2 = rmask[:, None] & (ch < 3)
    vcol = tl.load(v_colors_ptr + rows[:, None] * 3 + ch, mask=mask2, other=0.0)
    ones = tl.full((BLOCK,), 1.0, tl.float32)
    _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 0, ones * SH_C0, vcol, mask2)
    if DEGREE >= 1:
        x, y, z, inv = _sh_dirs(dirs_ptr, rows, rmask)
        (b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, d4x, d4y, d5y, d5z, d6z, d7x, d7z,
         d8x, d8y, d9x, d9y, d10x, d10y, d10z, d11y, d11z, d12z, d13x, d13z, d14x, d14y, d14z, d15x,
         d15y) = _sh_bases(x, y, z, DEGREE)
        v1 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 1, b1, vcol, mask2)
        v2 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 2, b2, vcol, mask2)
        v3 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 3, b3, vcol, mask2)
        vx = v3 * -SH_C1
        vy = v1 * -SH_C1
        vz = v2 * SH_C1
        if DEGREE >= 2:
            v4 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 4, b4, vcol, mask2)
            v5 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 5, b5, vcol, mask2)
            v6 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 6, b6, vcol, mask2)
            v7 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 7, b7, vcol, mask2)
            v8 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 8, b8, vcol, mask2)
            vx += v4 * d4x + v7 * d7x + v8 * d8x
            vy += v4 * d4y + v5 * d5y + v8 * d8y
            vz += v5 * d5z + v6 * d6z + v7 * d7z
            if DEGREE >= 3:
                v9 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 9, b9, vcol, mask2)
                v10 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 10, b10, vcol, mask2)
                v11 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 11, b11, vcol, mask2)
                v12 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 12, b12, vcol, mask2)
                v13 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 13, b13, vcol, mask2)
                v14 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 14, b14, vcol, mask2)
                v15 = _sh_vjp_term(coeffs_ptr, v_coeffs_ptr, rows, K, 15, b15, vcol, mask2)
                vx += v9 * d9x + v10 * d10x + v13 * d13x + v14 * d14x + v15 * d15x
                vy += v9 * d9y + v10 * d10y + v11 * d11y + v14 * d14y + v15 * d15y
                vz += v10 * d10z + v11 * d11z + v12 * d12z + v13 * d13z + v14 * d14z
        # through the normalization: (I - n n^T) / |d|
        dot = vx * x + vy * y + vz * z
        tl.store(v_dirs_ptr + rows * 3 + 0, (vx - dot * x) * inv, mask=rmask)
        tl.store(v_dirs_ptr + rows * 3 + 1, (vy - dot * y) * inv, mask=rmask)
        tl.store(v_dirs_ptr + rows * 3 + 2, (vz - dot * z) * inv, mask=rmask)


# ----------------------------------------------------------------------------------------------------------
# Rasterization
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width, height, TILE: tl.constexpr,
                TILE_P2: tl.constexpr):
    """The tile's pixel lanes (row-major over a TILE_P2 x TILE_P2 square, lanes outside the tile or the image
    masked), and its range [start, end) of the sorted intersections."""
    tile = tl.program_id(0)
    cam = tl.program_id(1).to(tl.int64)
    ty = tile // tile_w
    tx = tile % tile_w
    p = tl.arange(0, TILE_P2 * TILE_P2)
    li = p // TILE_P2
    lj = p % TILE_P2
    i = ty * TILE + li
    j = tx * TILE + lj
    inside = (li < TILE) & (lj < TILE) & (i < height) & (j < width)
    pix = cam * height * width + tl.where(inside, i * width + j, 0).to(tl.int64)
    n_tiles_total = tile_w * tile_h * tl.num_programs(1)
    flat = cam * tile_w * tile_h + tile
    start = tl.load(offsets_ptr + flat)
    nxt = tl.load(offsets_ptr + tl.minimum(flat + 1, n_tiles_total - 1))
    end = tl.where(flat + 1 >= n_tiles_total, n_isects, nxt)
    return cam, inside, pix, j.to(tl.float32) + 0.5, i.to(tl.float32) + 0.5, start, end


@triton.jit
def _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr, flat_ptr, k, km, px, py):
    """Loads a chunk's Gaussians; returns their ids and [P, BLOCK_G] deltas, exp(-sigma), alpha and the
    not-skipped mask (sigma >= 0 and alpha >= 1/255), plus the conic."""
    fid = tl.load(flat_ptr + k, mask=km, other=0).to(tl.int64)
    mx = tl.load(means2d_ptr + fid * 2 + 0, mask=km, other=0.0)
    my = tl.load(means2d_ptr + fid * 2 + 1, mask=km, other=0.0)
    ca = tl.load(conics_ptr + fid * 3 + 0, mask=km, other=0.0)
    cb = tl.load(conics_ptr + fid * 3 + 1, mask=km, other=0.0)
    cc = tl.load(conics_ptr + fid * 3 + 2, mask=km, other=0.0)
    op = tl.load(opac_ptr + fid, mask=km, other=0.0)
    dx = mx[None, :] - px[:, None]
    dy = my[None, :] - py[:, None]
    sigma = 0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + cb[None, :] * dx * dy
    vis = tl.exp(-sigma)
    raw = op[None, :] * vis
    alpha = tl.minimum(MAX_ALPHA, raw)
    ok = km[None, :] & (sigma >= 0.0) & (alpha >= ALPHA_THRESHOLD)
    return fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op


@triton.jit
def _gs_rasterize_fwd_kernel(means2d_ptr, conics_ptr, colors_ptr, opac_ptr, bg_ptr, offsets_ptr, flat_ptr,
                             out_colors_ptr, out_alphas_ptr, last_ids_ptr, out_trans_ptr, n_isects, tile_w, tile_h,
                             width, height, D, HAS_BG: tl.constexpr, TILE: tl.constexpr, TILE_P2: tl.constexpr,
                             BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    P: tl.constexpr = TILE_P2 * TILE_P2
    cam, inside, pix, px, py, start, end = _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width,
                                                       height, TILE, TILE_P2)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    g_ar = tl.arange(0, BLOCK_G)
    T = tl.full((P,), 1.0, tl.float32)  # transmittance before the next Gaussian
    done = ~inside
    acc = tl.zeros((P, BLOCK_D), tl.float32)
    last = tl.full((P,), -1, tl.int32)
    n_done = tl.sum(done.to(tl.int32), axis=0)
    k0 = start
    while (k0 < end) & (n_done < P):
        k = k0 + g_ar
        km = k < end
        fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op = _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr,
                                                                        flat_ptr, k, km, px, py)
        ok = ok & (~done)[:, None]
        one_m = tl.where(ok, 1.0 - alpha, 1.0)
        # T after each Gaussian if every unskipped one blends. T only falls, so the Gaussians that do blend
        # are exactly the unskipped ones before the first with T_after <= T_EPS, i.e. those with T_after > T_EPS.
        t_after = T[:, None] * tl.cumprod(one_m, axis=1)
        blend = ok & (t_after > T_EPS)
        w = tl.where(blend, alpha * (t_after / one_m), 0.0)
        col = tl.load(colors_ptr + fid[:, None] * D + d[None, :], mask=km[:, None] & dmask[None, :], other=0.0)
        acc += tl.dot(w, col, input_precision="ieee")
        T = tl.minimum(T, tl.min(tl.where(blend, t_after, 1.0), axis=1))
        last = tl.maximum(last, tl.max(tl.where(blend, k[None, :], -1), axis=1))
        done = done | (tl.max((ok & (t_after <= T_EPS)).to(tl.int32), axis=1) > 0)
        n_done = tl.sum(done.to(tl.int32), axis=0)
        k0 += BLOCK_G
    if HAS_BG:
        bg = tl.load(bg_ptr + cam * D + d, mask=dmask, other=0.0)
        acc += T[:, None] * bg[None, :]
    tl.store(out_colors_ptr + pix[:, None] * D + d[None, :], acc, mask=inside[:, None] & dmask[None, :])
    tl.store(out_alphas_ptr + pix, 1.0 - T, mask=inside)
    tl.store(out_trans_ptr + pix, T, mask=inside)
    tl.store(last_ids_ptr + pix, last, mask=inside)


@triton.jit
def _gs_rasterize_bwd_kernel(means2d_ptr, conics_ptr, colors_ptr, opac_ptr, bg_ptr, offsets_ptr, flat_ptr,
                             trans_ptr, last_ids_ptr, v_out_colors_ptr, v_out_alphas_ptr, v_means2d_ptr,
                             v_conics_ptr, v_colors_ptr, v_opac_ptr, v_bg_ptr, v_abs_ptr, n_isects,
                             tile_w, tile_h, width, height, D, DC: tl.constexpr, HAS_BG: tl.constexpr,
                             ABSGRAD: tl.constexpr, TILE: tl.constexpr, TILE_P2: tl.constexpr,
                             BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    # DC: the channel count D as a constexpr when D <= SMALL_D (per-channel loops), else 0 (fp32 dots).
    cam, inside, pix, px, py, start, end = _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width,
                                                       height, TILE, TILE_P2)
    d = tl.arange(0, BLOCK_D)
    g_ar = tl.arange(0, BLOCK_G)
    t_final = tl.load(trans_ptr + pix, mask=inside, other=1.0)
    bin_final = tl.load(last_ids_ptr + pix, mask=inside, other=-1)
    v_a = tl.load(v_out_alphas_ptr + pix, mask=inside, other=0.0)
    # dL/dalpha_k has the term T_final / (1 - alpha_k) * (v_alpha - <bg, v_color>) from 1 - T_final and bg.
    extra = t_final * v_a
    if HAS_BG:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + d
            dm = dd < D
            v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :], mask=inside[:, None] & dm[None, :],
                          other=0.0)  # [P, BLOCK_D]
            bg = tl.load(bg_ptr + cam * D + dd, mask=dm, other=0.0)
            extra -= t_final * tl.sum(v_c * bg[None, :], axis=1)
            tl.atomic_add(v_bg_ptr + cam * D + dd, tl.sum(v_c * t_final[:, None], axis=0), mask=dm, sem="relaxed")
    T = t_final  # transmittance after the chunk being processed
    behind = tl.zeros_like(t_final)  # <colour blended behind the chunk, v_color>
    k_hi = tl.minimum(end, tl.max(bin_final, axis=0) + 1)
    while k_hi > start:
        k = k_hi - BLOCK_G + g_ar  # front to back inside the chunk
        km = k >= start
        fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op = _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr,
                                                                        flat_ptr, k, km, px, py)
        ok = ok & (k[None, :] <= bin_final[:, None])
        one_m = tl.where(ok, 1.0 - alpha, 1.0)
        t_before = T[:, None] / tl.cumprod(one_m, axis=1, reverse=True)
        w = tl.where(ok, alpha * t_before, 0.0)  # blend weight
        # q[p, k] = <colour_k, v_color[p]>: a channel loop for few channels (keeps v_color out of registers
        # across the loop; the [P, BLOCK_D] padded copy spills), an fp32 dot otherwise.
        if DC > 0:
            q = tl.zeros_like(alpha)
            for ch in tl.static_range(DC):
                vcd = tl.load(v_out_colors_ptr + pix * DC + ch, mask=inside, other=0.0)
                cd = tl.load(colors_ptr + fid * DC + ch, mask=km, other=0.0)
                q += vcd[:, None] * cd[None, :]
        else:
            # channel blocks re-read per chunk (cache hits), so no [P, D] block stays live across the loop.
            q = tl.zeros_like(alpha)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                dm = dd < D
                v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :],
                              mask=inside[:, None] & dm[None, :], other=0.0)
                col = tl.load(colors_ptr + fid[:, None] * D + dd[None, :], mask=km[:, None] & dm[None, :],
                              other=0.0)
                q += tl.dot(v_c, tl.trans(col), input_precision="ieee")
        wq = w * q
        buf = behind[:, None] + tl.cumsum(wq, axis=1, reverse=True) - wq  # behind each Gaussian
        ra = 1.0 / one_m
        v_alpha = tl.where(ok, q * t_before - buf * ra + extra[:, None] * ra, 0.0)
        # alpha = min(0.999, opacity * vis): no gradient through the clamp.
        live = ok & (raw <= MAX_ALPHA)
        v_sigma = tl.where(live, -raw * v_alpha, 0.0)
        gx = v_sigma * (ca[None, :] * dx + cb[None, :] * dy)
        gy = v_sigma * (cb[None, :] * dx + cc[None, :] * dy)
        tl.atomic_add(v_means2d_ptr + fid * 2 + 0, tl.sum(gx, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_means2d_ptr + fid * 2 + 1, tl.sum(gy, axis=0), mask=km, sem="relaxed")
        if ABSGRAD:
            tl.atomic_add(v_abs_ptr + fid * 2 + 0, tl.sum(tl.abs(gx), axis=0), mask=km, sem="relaxed")
            tl.atomic_add(v_abs_ptr + fid * 2 + 1, tl.sum(tl.abs(gy), axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 0, tl.sum(0.5 * v_sigma * dx * dx, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 1, tl.sum(v_sigma * dx * dy, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 2, tl.sum(0.5 * v_sigma * dy * dy, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_opac_ptr + fid, tl.sum(tl.where(live, vis * v_alpha, 0.0), axis=0), mask=km, sem="relaxed")
        if DC > 0:
            for ch in tl.static_range(DC):
                vcd = tl.load(v_out_colors_ptr + pix * DC + ch, mask=inside, other=0.0)
                tl.atomic_add(v_colors_ptr + fid * DC + ch, tl.sum(w * vcd[:, None], axis=0), mask=km,
                              sem="relaxed")
        else:
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                dm = dd < D
                v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :],
                              mask=inside[:, None] & dm[None, :], other=0.0)
                v_col = tl.dot(tl.trans(w), v_c, input_precision="ieee")  # [BLOCK_G, BLOCK_D]
                tl.atomic_add(v_colors_ptr + fid[:, None] * D + dd[None, :], v_col,
                              mask=km[:, None] & dm[None, :], sem="relaxed")
        T = tl.max(t_before, axis=1)
        behind += tl.sum(wq, axis=1)
        k_hi -= BLOCK_G


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------


def _check(op: str, name: str, t: Tensor, shape, dtype=torch.float32, device=None) -> None:
    """Validates one argument: dtype (float64 goes to the CPU and torch backends), shape (None: any size) and
    device."""
    if dtype == torch.float32 and t.dtype == torch.float64:
        raise TypeError(f"{op}: float64 {name} runs on the CPU and torch backends only")
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{op}: {name} must have shape {want}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {device}")


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


@torch.library.triton_op("pyops::gs_project_fwd_triton", mutates_args=())
def gs_project_fwd_triton(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3]
    opacities: Optional[Tensor],  # [N]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int, height: int, eps2d: float, near_plane: float, far_plane: float, radius_clip: float,
    antialiased: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """pyops::gs_project_fwd (csrc/ops.cpp) in Triton, fp32.

    Returns:
        radii [C, N, 2] int32 (0: culled), means2d [C, N, 2], depths [C, N], conics [C, N, 3] and
        compensations [C, N] (ones unless antialiased); the float outputs of culled pairs are 0.
    """
    op = "gs_project_fwd_triton"
    n, c, dev = means.shape[0], viewmats.shape[0], means.device
    _check(op, "means", means, (None, 3))
    _check(op, "quats", quats, (n, 4), device=dev)
    _check(op, "scales", scales, (n, 3), device=dev)
    if opacities is not None:
        _check(op, "opacities", opacities, (n,), device=dev)
    _check(op, "viewmats", viewmats, (None, 4, 4), device=dev)
    _check(op, "Ks", Ks, (c, 3, 3), device=dev)
    means, quats, scales, viewmats, Ks = (t.contiguous() for t in (means, quats, scales, viewmats, Ks))
    opac = opacities.contiguous() if opacities is not None else means  # a placeholder pointer when absent
    radii = means.new_empty(c, n, 2, dtype=torch.int32)
    means2d = means.new_empty(c, n, 2)
    depths = means.new_empty(c, n)
    conics = means.new_empty(c, n, 3)
    comps = means.new_empty(c, n)
    if n == 0 or c == 0:
        return radii, means2d, depths, conics, comps.fill_(1.0)
    block = _block(n, 128)
    torch.library.wrap_triton(_gs_project_fwd_kernel)[(triton.cdiv(n, block), c)](
        means, quats, scales, opac, viewmats, Ks, radii, means2d, depths, conics, comps, n, float(width),
        float(height), eps2d, near_plane, far_plane, radius_clip, ANTIALIASED=antialiased,
        HAS_OPACITY=opacities is not None, BLOCK=block, num_warps=4)
    return radii, means2d, depths, conics, comps


@torch.library.triton_op("pyops::gs_project_bwd_triton", mutates_args=())
def gs_project_bwd_triton(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int, height: int, eps2d: float, antialiased: bool,
    radii: Tensor,  # [C, N, 2] int32
    conics: Tensor,  # [C, N, 3]
    compensations: Tensor,  # [C, N] (read only if antialiased)
    v_means2d: Tensor,  # [C, N, 2]
    v_depths: Tensor,  # [C, N]
    v_conics: Tensor,  # [C, N, 3]
    v_compensations: Tensor,  # [C, N] (read only if antialiased)
) -> Tuple[Tensor, Tensor, Tensor]:
    """VJP of gs_project_fwd_triton: (v_means [N, 3], v_quats [N, 4], v_scales [N, 3]) summed over cameras;
    culled pairs (a radius <= 0) contribute nothing."""
    op = "gs_project_bwd_triton"
    n, c, dev = means.shape[0], viewmats.shape[0], means.device
    _check(op, "means", means, (None, 3))
    _check(op, "quats", quats, (n, 4), device=dev)
    _check(op, "scales", scales, (n, 3), device=dev)
    _check(op, "viewmats", viewmats, (None, 4, 4), device=dev)
    _check(op, "Ks", Ks, (c, 3, 3), device=dev)
    _check(op, "radii", radii, (c, n, 2), dtype=torch.int32, device=dev)
    _check(op, "conics", conics, (c, n, 3), device=dev)
    _check(op, "v_means2d", v_means2d, (c, n, 2), device=dev)
    _check(op, "v_depths", v_depths, (c, n), device=dev)
    _check(op, "v_conics", v_conics, (c, n, 3), device=dev)
    if antialiased:
        _check(op, "compensations", compensations, (c, n), device=dev)
        _check(op, "v_compensations", v_compensations, (c, n), device=dev)
        compensations, v_compensations = compensations.contiguous(), v_compensations.contiguous()
    else:
        compensations = v_compensations = conics  # unread
    tensors = (means, quats, scales, viewmats, Ks, radii, conics, v_means2d, v_depths, v_conics)
    means, quats, scales, viewmats, Ks, radii, conics, v_means2d, v_depths, v_conics = (t.contiguous()
                                                                                       for t in tensors)
    # Zero-filled: the kernel accumulates every camera's gradient with atomics.
    v_means = torch.zeros_like(means)
    v_quats = torch.zeros_like(quats)
    v_scales = torch.zeros_like(scales)
    if n == 0 or c == 0:
        return v_means, v_quats, v_scales
    block = _block(n, 128)
    torch.library.wrap_triton(_gs_project_bwd_kernel)[(triton.cdiv(n, block), c)](
        means, quats, scales, viewmats, Ks, radii, conics, compensations, v_means2d, v_depths, v_conics,
        v_compensations, v_means, v_quats, v_scales, n, float(width), float(height), eps2d,
        ANTIALIASED=antialiased, BLOCK=block, num_warps=4)
    return v_means, v_quats, v_scales


def _check_sh(op: str, degree: int, dirs: Tensor, coeffs: Tensor) -> None:
    if not 0 <= degree <= 3:
        raise ValueError(f"{op}: degree must be in [0, 3], got {degree}")
    _check(op, "dirs", dirs, (None, 3))
    _check(op, "coeffs", coeffs, (dirs.shape[0], None, 3), device=dirs.device)
    if coeffs.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"{op}: coeffs needs at least (degree + 1)^2 = {(degree + 1) ** 2} bases, got "
                         f"{coeffs.shape[1]}")


@torch.library.triton_op("pyops::gs_sh_fwd_triton", mutates_args=())
def gs_sh_fwd_triton(
    degree: int,
    dirs: Tensor,  # [M, 3] any norm
    coeffs: Tensor,  # [M, K, 3], K >= (degree + 1)^2
) -> Tensor:
    """Colors [M, 3] of gsplat's real SH basis of `degree` (0-3): no +0.5 offset, no clamp."""
    _check_sh("gs_sh_fwd_triton", degree, dirs, coeffs)
    dirs, coeffs = dirs.contiguous(), coeffs.contiguous()
    m, k = coeffs.shape[0], coeffs.shape[1]
    out = coeffs.new_empty(m, 3)
    if m == 0:
        return out
    block = 128 if dirs.is_cuda else 64
    torch.library.wrap_triton(_gs_sh_fwd_kernel)[(triton.cdiv(m, block),)](
        dirs, coeffs, out, m, k, DEGREE=degree, BLOCK=block, num_warps=4)
    return out


@torch.library.triton_op("pyops::gs_sh_bwd_triton", mutates_args=())
def gs_sh_bwd_triton(
    degree: int,
    dirs: Tensor,  # [M, 3]
    coeffs: Tensor,  # [M, K, 3]
    v_colors: Tensor,  # [M, 3]
) -> Tuple[Tensor, Tensor]:
    """(v_coeffs [M, K, 3] (zero past (degree + 1)^2), v_dirs [M, 3] (zero for degree 0))."""
    op = "gs_sh_bwd_triton"
    _check_sh(op, degree, dirs, coeffs)
    _check(op, "v_colors", v_colors, (dirs.shape[0], 3), device=dirs.device)
    dirs, coeffs, v_colors = dirs.contiguous(), coeffs.contiguous(), v_colors.contiguous()
    m, k = coeffs.shape[0], coeffs.shape[1]
    v_coeffs = torch.zeros_like(coeffs)
    v_dirs = torch.zeros_like(dirs)
    if m == 0:
        return v_coeffs, v_dirs
    block = 128 if dirs.is_cuda else 64
    torch.library.wrap_triton(_gs_sh_bwd_kernel)[(triton.cdiv(m, block),)](
        dirs, coeffs, v_colors, v_coeffs, v_dirs, m, k, DEGREE=degree, BLOCK=block, num_warps=4)
    return v_coeffs, v_dirs


# Tile intersection and offsets: torch ops (key building, a stable torch.sort, searchsorted).


@torch.library.custom_op("pyops::gs_intersect_tiles_triton", mutates_args=())
def gs_intersect_tiles_triton(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    tile_size: int, tile_width: int, tile_height: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(tiles_per_gauss [C, N] int32, isect_ids [M] int64 sorted, flatten_ids [M] int32 = c * N + g), keys
    camera | tile | depth bits as gsplat builds them; torch ops and a stable torch.sort (no Triton kernel)."""
    op = "gs_intersect_tiles_triton"
    _check(op, "depths", depths, (None, None))
    c, n = depths.shape
    _check(op, "means2d", means2d, (c, n, 2), device=depths.device)
    _check(op, "radii", radii, (c, n, 2), dtype=torch.int32, device=depths.device)
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    if max(c - 1, 0).bit_length() + tile_bits + 32 > 64:
        raise ValueError(f"{op}: {c} cameras x {n_tiles} tiles do not fit in a 64-bit key")
    # gsplat: tiles [floor((mean - r) / ts), ceil((mean + r) / ts)) per axis, clamped to the grid.
    tile_r = radii.float() / tile_size
    tile_m = means2d / tile_size
    lo = torch.floor(tile_m - tile_r)
    hi = torch.ceil(tile_m + tile_r)
    grid_max = torch.tensor([tile_width, tile_height], dtype=lo.dtype, device=lo.device)
    lo = torch.minimum(lo.clamp_min(0), grid_max).long()
    hi = torch.minimum(hi.clamp_min(0), grid_max).long()
    visible = (radii > 0).all(dim=-1)
    span = (hi - lo).clamp_min(0)
    tiles_per_gauss = torch.where(visible, span[..., 0] * span[..., 1], 0)  # [C, N]
    total = int(tiles_per_gauss.sum())
    if total >= 2**31:
        raise ValueError(f"{op}: {total} intersections do not fit in int32")
    counts = tiles_per_gauss.reshape(-1)
    src = torch.repeat_interleave(torch.arange(c * n, device=depths.device), counts)  # [M] = c * N + g
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=depths.device) - first[src]
    w = span[..., 0].reshape(-1)[src]
    tx = lo[..., 0].reshape(-1)[src] + local % w.clamp_min(1)
    ty = lo[..., 1].reshape(-1)[src] + local // w.clamp_min(1)
    cam = src // max(n, 1)
    depth_bits = depths.contiguous().view(torch.int32).reshape(-1)[src].long() & 0xFFFFFFFF
    keys = (cam << (32 + tile_bits)) | ((ty * tile_width + tx) << 32) | depth_bits
    isect_ids, order = torch.sort(keys, stable=True)
    return tiles_per_gauss.int(), isect_ids, src[order].int()


@gs_intersect_tiles_triton.register_fake
def _(means2d, radii, depths, tile_size, tile_width, tile_height):
    m = torch.library.get_ctx().new_dynamic_size()
    c, n = depths.shape
    return (depths.new_empty(c, n, dtype=torch.int32), depths.new_empty(m, dtype=torch.long),
            depths.new_empty(m, dtype=torch.int32))


@torch.library.custom_op("pyops::gs_isect_offsets_triton", mutates_args=())
def gs_isect_offsets_triton(
    isect_ids: Tensor,  # [M] int64, sorted
    n_cameras: int, tile_width: int, tile_height: int,
) -> Tensor:
    """First intersection of every (camera, tile), [C, tile_height, tile_width] int32 (searchsorted)."""
    _check("gs_isect_offsets_triton", "isect_ids", isect_ids, (None,), dtype=torch.long)
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    cam = torch.arange(n_cameras, device=isect_ids.device)[:, None]
    tiles = torch.arange(n_tiles, device=isect_ids.device)[None, :]
    targets = ((cam << tile_bits) | tiles).reshape(-1)
    offsets = torch.searchsorted((isect_ids >> 32).contiguous(), targets)
    return offsets.int().reshape(n_cameras, tile_height, tile_width)


@gs_isect_offsets_triton.register_fake
def _(isect_ids, n_cameras, tile_width, tile_height):
    return isect_ids.new_empty(n_cameras, tile_height, tile_width, dtype=torch.int32)


def _raster_settings(tile_size: int, channels: int, cuda: bool, backward: bool = False):
    """(TILE_P2, BLOCK_G, BLOCK_D, num_warps): pixels padded to a power-of-two square; Gaussian chunks sized so
    a [P, BLOCK_G] fp32 array is 16 values per thread in the forward and 8 in the backward, which holds about
    twice as many (no register spills on sm_90, see the report in tests/test_gaussians_triton.py); channels
    padded to a power of two >= 16 (tl.dot operands)."""
    tile_p2 = triton.next_power_of_2(tile_size)
    p = tile_p2 * tile_p2
    # The backward walks channels in blocks of 16; the forward keeps all of them as accumulators.
    block_d = 16 if backward else max(16, triton.next_power_of_2(channels))
    if not cuda:
        # Interpreter: small chunks so the tests walk several chunks per tile.
        return tile_p2, 16, block_d, 1
    warps = 8 if p >= 256 else 4
    block_g = max(16, min(64, 32 * warps * (8 if backward else 16) // p))
    return tile_p2, block_g, block_d, warps


def _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                  flatten_ids):
    _check(op, "means2d", means2d, (None, None, 2))
    c, n = means2d.shape[:2]
    dev = means2d.device
    _check(op, "conics", conics, (c, n, 3), device=dev)
    _check(op, "colors", colors, (c, n, None), device=dev)
    _check(op, "opacities", opacities, (c, n), device=dev)
    if backgrounds is not None:
        _check(op, "backgrounds", backgrounds, (c, colors.shape[2]), device=dev)
    if tile_size <= 0 or width < 0 or height < 0:
        raise ValueError(f"{op}: tile_size must be positive and width, height non-negative")
    tile_h, tile_w = triton.cdiv(height, tile_size), triton.cdiv(width, tile_size)
    _check(op, "isect_offsets", isect_offsets, (c, tile_h, tile_w), dtype=torch.int32, device=dev)
    _check(op, "flatten_ids", flatten_ids, (None,), dtype=torch.int32, device=dev)
    return c, n, colors.shape[2], tile_h, tile_w


@torch.library.triton_op("pyops::gs_rasterize_fwd_triton", mutates_args=())
def gs_rasterize_fwd_triton(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    backgrounds: Optional[Tensor],  # [C, D]
    width: int, height: int, tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    absgrad: bool = False,  # read by autograd only
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Front-to-back blending with gsplat's rules.

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1], last_ids [C, H, W] int32 (index into
        flatten_ids of the last blended Gaussian, -1: none) and final_transmittances [C, H, W, 1] (the T that
        render_alphas = 1 - T rounds, for the backward).
    """
    op = "gs_rasterize_fwd_triton"
    c, n, d, tile_h, tile_w = _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                            tile_size, isect_offsets, flatten_ids)
    means2d, conics, colors, opacities, isect_offsets, flatten_ids = (
        t.contiguous() for t in (means2d, conics, colors, opacities, isect_offsets, flatten_ids))
    bg = backgrounds.contiguous() if backgrounds is not None else colors
    out_colors = colors.new_empty(c, height, width, d)
    out_alphas = colors.new_empty(c, height, width, 1)
    last_ids = colors.new_empty(c, height, width, dtype=torch.int32)
    out_trans = colors.new_empty(c, height, width, 1)
    if c * tile_h * tile_w == 0 or d == 0:
        if d == 0 and c * height * width:
            out_alphas.zero_()
            out_trans.fill_(1.0)
            last_ids.fill_(-1)  # no channels: nothing to blend into
        return out_colors, out_alphas, last_ids, out_trans
    tile_p2, block_g, block_d, warps = _raster_settings(tile_size, d, colors.is_cuda)
    torch.library.wrap_triton(_gs_rasterize_fwd_kernel)[(tile_h * tile_w, c)](
        means2d, conics, colors, opacities, bg, isect_offsets, flatten_ids, out_colors, out_alphas, last_ids,
        out_trans, flatten_ids.shape[0], tile_w, tile_h, width, height, d, HAS_BG=backgrounds is not None,
        TILE=tile_size, TILE_P2=tile_p2, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=warps)
    return out_colors, out_alphas, last_ids, out_trans


@torch.library.triton_op("pyops::gs_rasterize_bwd_triton", mutates_args=())
def gs_rasterize_bwd_triton(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    backgrounds: Optional[Tensor],  # [C, D]
    width: int, height: int, tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    final_transmittances: Tensor,  # [C, H, W, 1]
    last_ids: Tensor,  # [C, H, W] int32
    v_render_colors: Tensor,  # [C, H, W, D]
    v_render_alphas: Tensor,  # [C, H, W, 1]
    absgrad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Back-to-front replay of gs_rasterize_fwd_triton.

    Returns:
        v_means2d, v_conics, v_colors, v_opacities, v_backgrounds (empty without backgrounds) and
        v_means2d_abs (|per-pixel v_means2d| summed; empty unless absgrad).
    """
    op = "gs_rasterize_bwd_triton"
    c, n, d, tile_h, tile_w = _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                            tile_size, isect_offsets, flatten_ids)
    dev = means2d.device
    _check(op, "final_transmittances", final_transmittances, (c, height, width, 1), device=dev)
    _check(op, "last_ids", last_ids, (c, height, width), dtype=torch.int32, device=dev)
    _check(op, "v_render_colors", v_render_colors, (c, height, width, d), device=dev)
    _check(op, "v_render_alphas", v_render_alphas, (c, height, width, 1), device=dev)
    tensors = (means2d, conics, colors, opacities, isect_offsets, flatten_ids, final_transmittances, last_ids,
               v_render_colors, v_render_alphas)
    (means2d, conics, colors, opacities, isect_offsets, flatten_ids, final_transmittances, last_ids, v_render_colors,
     v_render_alphas) = (t.contiguous() for t in tensors)
    bg = backgrounds.contiguous() if backgrounds is not None else colors
    # Zero-filled: every tile adds its Gaussians' gradients with atomics.
    v_means2d = torch.zeros_like(means2d)
    v_conics = torch.zeros_like(conics)
    v_colors = torch.zeros_like(colors)
    v_opacities = torch.zeros_like(opacities)
    v_bg = torch.zeros_like(backgrounds) if backgrounds is not None else colors.new_empty(0)
    v_abs = torch.zeros_like(means2d) if absgrad else means2d.new_empty(0)
    if c * tile_h * tile_w == 0 or d == 0:
        return v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs
    tile_p2, block_g, block_d, warps = _raster_settings(tile_size, d, colors.is_cuda, backward=True)
    torch.library.wrap_triton(_gs_rasterize_bwd_kernel)[(tile_h * tile_w, c)](
        means2d, conics, colors, opacities, bg, isect_offsets, flatten_ids, final_transmittances, last_ids,
        v_render_colors, v_render_alphas, v_means2d, v_conics, v_colors, v_opacities,
        v_bg if backgrounds is not None else v_means2d, v_abs if absgrad else v_means2d, flatten_ids.shape[0],
        tile_w, tile_h, width, height, d, DC=d if d <= SMALL_D else 0, HAS_BG=backgrounds is not None,
        ABSGRAD=absgrad,
        TILE=tile_size, TILE_P2=tile_p2, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=warps)
    return v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs
