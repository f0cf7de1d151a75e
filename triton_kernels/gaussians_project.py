"""Triton kernels of the Gaussian projection (gsplat 1.5.3's fully fused EWA projection, pinhole), forward and
backward, registered as torch.library.triton_op pyops::gs_project_{fwd,bwd}_triton so torch.compile sees them;
same signatures and outputs as the native schemas in csrc/ops.cpp.

One program per block of Gaussians of one camera; every lane runs the whole EWA chain in fp32 scalars
(`_camera_space`: quat + scale -> covariance, world -> camera, pinhole Jacobian), then the forward adds the
eps2d dilation, conic, per-axis 3.33-sigma radii (opacity-aware when opacities are given) and culling. The
backward recomputes `_camera_space` and runs the VJP of the chain; per-Gaussian gradients are summed over cameras
with atomics, culled pairs add nothing.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gaussians_common import ALPHA_THRESHOLD, NORM_EPS, _block, _check

EXTEND: tl.constexpr = tl.constexpr(3.33)  # radius in standard deviations (gsplat's)


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
    # q / max(|q|, eps), as F.normalize and gaussians_math.h: a zero quaternion is the identity rotation.
    inv = 1.0 / tl.maximum(tl.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), NORM_EPS)
    w = qw * inv
    x = qx * inv
    y = qy * inv
    z = qz * inv
    return (1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
            2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
            2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
            w, x, y, z, inv)


@triton.jit
def _rot_scale(r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz):
    """M = R S, the covariance's factor (cov = M M^T), for the forward and the backward."""
    return r00 * sx, r01 * sy, r02 * sz, r10 * sx, r11 * sy, r12 * sz, r20 * sx, r21 * sy, r22 * sz


@triton.jit
def _load_pair(means_ptr, quats_ptr, scales_ptr, view_ptr, g, cam, mask):
    """Loads one (camera, Gaussian) pair per lane: the Gaussian's mean, quaternion and scales and the camera's
    world-to-camera rotation W and translation t."""
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
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = _rot_scale(r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz)
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
def _camera_space(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask, width, height):
    """The part of the EWA chain that the forward and the backward share, one (camera, Gaussian) pair per lane
    (the compiler drops what a kernel does not use).

    Returns:
        sx, sy, sz: the scales; w00..w22: the camera rotation W; r00..r22: the Gaussian's rotation R;
        w, x, y, z, inv: the normalized quaternion and 1 / its norm; c00, c01, c02, c11, c12, c22: the
        camera-space covariance W R S S R^T W^T (upper triangle); pcx, pcy, pcz: the camera-space mean;
        fx, fy: the focal lengths; then `_pinhole`'s j00, j02, j11, j12, tx, ty, x_in, y_in, u, v, rz.
    """
    (mx, my, mz, qw, qx, qy, qz, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1,
     t2) = _load_pair(means_ptr, quats_ptr, scales_ptr, view_ptr, g, cam, mask)
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
    return (sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, r00, r01, r02, r10, r11, r12, r20, r21, r22,
            w, x, y, z, inv, c00, c01, c02, c11, c12, c22, pcx, pcy, pcz, fx, fy, j00, j02, j11, j12, tx, ty, x_in,
            y_in, u, v, rz)


@triton.jit
def _gs_project_fwd_kernel(means_ptr, quats_ptr, scales_ptr, opac_ptr, view_ptr, k_ptr, radii_ptr, means2d_ptr,
                           depths_ptr, conics_ptr, comp_ptr, N, width, height, eps2d, near_plane, far_plane,
                           radius_clip, ANTIALIASED: tl.constexpr, HAS_OPACITY: tl.constexpr,
                           BLOCK: tl.constexpr):
    cam = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = g < N
    (sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, r00, r01, r02, r10, r11, r12, r20, r21, r22, w, x, y,
     z, inv, c00, c01, c02, c11, c12, c22, pcx, pcy, pcz, fx, fy, j00, j02, j11, j12, tx, ty, x_in, y_in, u, v,
     rz) = _camera_space(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask, width, height)
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
    (sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22, r00, r01, r02, r10, r11, r12, r20, r21, r22, w, x, y,
     z, inv, c00, c01, c02, c11, c12, c22, pcx, pcy, pcz, fx, fy, j00, j02, j11, j12, tx, ty, x_in, y_in, u, v,
     rz) = _camera_space(means_ptr, quats_ptr, scales_ptr, view_ptr, k_ptr, g, cam, mask, width, height)
    if ANTIALIASED:
        # comp = sqrt(r), r = det(S) / det(S + eps I) with S = [[a, b], [b, c]] the undilated cov2d (recomputed):
        # dr/da = eps (c^2 + eps c + b^2) / det^2, dr/dc likewise, dr/db = -eps (a + c + eps) b / det^2, sums of
        # positive terms (gsplat's (1 - comp^2) P - eps det(P) I cancels for splats thinner than eps; csrc's
        # compensation_vjp in gaussians_math.h).
        comp = tl.load(comp_ptr + pair, mask=mask, other=1.0)
        v_comp = tl.load(v_comp_ptr + pair, mask=mask, other=0.0)
        sa = (j00 * c00 + j02 * c02) * j00 + (j00 * c02 + j02 * c22) * j02
        sb = (j00 * c01 + j02 * c12) * j11 + (j00 * c02 + j02 * c22) * j12
        sc = (j11 * c11 + j12 * c12) * j11 + (j11 * c12 + j12 * c22) * j12
        det_d = (sa * sc - sb * sb) + eps2d * (sa + sc + eps2d)
        v_sq = tl.where(comp > 0.0, v_comp * 0.5 / comp, 0.0)
        kk = tl.where(det_d != 0.0, v_sq * eps2d / (det_d * det_d), 0.0)
        g00 += kk * (sc * sc + eps2d * sc + sb * sb)
        g01 -= kk * (sa + sc + eps2d) * sb
        g11 += kk * (sa * sa + eps2d * sa + sb * sb)
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
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = _rot_scale(r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz)
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
    dot = tl.where(inv < 1.0 / NORM_EPS, dot, 0.0)  # below the norm's floor the map is linear
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
# Host side
# ----------------------------------------------------------------------------------------------------------


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
    _check(op, "means", means, (None, 3))
    n, like = means.shape[0], ("means", means)
    c = _check(op, "viewmats", viewmats, (None, 4, 4), like=like).shape[0]
    _check(op, "quats", quats, (n, 4), like=like)
    _check(op, "scales", scales, (n, 3), like=like)
    if opacities is not None:
        _check(op, "opacities", opacities, (n,), like=like)
    _check(op, "Ks", Ks, (c, 3, 3), like=like)
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
    _check(op, "means", means, (None, 3))
    n, like = means.shape[0], ("means", means)
    c = _check(op, "viewmats", viewmats, (None, 4, 4), like=like).shape[0]
    _check(op, "quats", quats, (n, 4), like=like)
    _check(op, "scales", scales, (n, 3), like=like)
    _check(op, "Ks", Ks, (c, 3, 3), like=like)
    _check(op, "radii", radii, (c, n, 2), dtype=torch.int32, like=like)
    _check(op, "conics", conics, (c, n, 3), like=like)
    _check(op, "v_means2d", v_means2d, (c, n, 2), like=like)
    _check(op, "v_depths", v_depths, (c, n), like=like)
    _check(op, "v_conics", v_conics, (c, n, 3), like=like)
    if antialiased:
        _check(op, "compensations", compensations, (c, n), like=like)
        _check(op, "v_compensations", v_compensations, (c, n), like=like)
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

