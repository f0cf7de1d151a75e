"""Triton HexPlane kernels (pyops/reference/hexplane.py is the spec), registered as torch.library.triton_op
pyops::hexplane_{fwd,bwd}_triton with the native schemas' signatures so torch.compile sees them.

One launch per resolution level: a program takes BLOCK_N points, normalises them and finds their cells once per
axis (x, y, z, t), then walks the level's channels in BLOCK_F chunks; for each plane it gathers the four corners,
interpolates, multiplies the six samples and stores the product into the level's column slice of the output.
Backward recomputes the samples, scatters the plane gradients with fp32 (fp64 for fp64 planes) atomics and
reduces the point/time gradients over channels inside the tile; a point's gradient is owned by one program, so
the levels add to it with plain loads and stores (deterministic). Without per-point times (times None) the time
is a kernel argument: no times tensor is read, allocated or differentiated.

Plane memory: a (F, R_b, R_a) plane puts a point's channels R_b * R_a elements apart, so on a GPU the launcher
gathers from channels-last copies (R_b, R_a, F) (one contiguous run per corner; the copies cost one pass over
the planes, small next to N points x 24 corners x F channels) and scatters into channels-last fp32 buffers.
"""

from typing import List, Optional, Tuple

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

# None: channels-last gathers on CUDA only (the interpreter reads the planes in place). Tests set it to run
# both layouts.
CHANNELS_LAST: Optional[bool] = None


@triton.jit
def _axis(q, R, IDX: tl.constexpr):
    """Cell i0, its neighbour i1 (int64), the weight w of i1 and du/dq (0 outside the clamp) of normalised
    coordinates q on an axis of R samples (align_corners=True, border clamp)."""
    u = (q + 1.0) * 0.5 * (R - 1)
    du_dq = tl.where((u >= 0.0) & (u <= R - 1), 0.5 * (R - 1), 0.0).to(q.dtype)
    u = tl.minimum(tl.maximum(u, 0.0), R - 1)
    # Truncation is floor for u >= 0; the integer clamp keeps any index (even from NaN input) in bounds.
    i0 = tl.minimum(tl.maximum(u.to(IDX), 0), tl.maximum(R - 2, 0))
    i1 = tl.minimum(i0 + 1, R - 1)
    return i0, i1, u - i0.to(q.dtype), du_dq


@triton.jit
def _corners(ptr, f, F, Rb, Ra, b0, b1, a0, a1, mask, CL: tl.constexpr, MATH: tl.constexpr):
    """The four corners [BLOCK_N, BLOCK_F] of plane (F, Rb, Ra) (or its channels-last copy (Rb, Ra, F))."""
    if CL:
        base = ptr + f[None, :]
        s_b = Ra * F
        s_a = F
    else:
        base = ptr + f[None, :] * (Rb * Ra)
        s_b = Ra
        s_a = 1
    o00 = (b0 * s_b + a0 * s_a)[:, None]
    o01 = (b0 * s_b + a1 * s_a)[:, None]
    o10 = (b1 * s_b + a0 * s_a)[:, None]
    o11 = (b1 * s_b + a1 * s_a)[:, None]
    c00 = tl.load(base + o00, mask=mask, other=0.0).to(MATH)
    c01 = tl.load(base + o01, mask=mask, other=0.0).to(MATH)
    c10 = tl.load(base + o10, mask=mask, other=0.0).to(MATH)
    c11 = tl.load(base + o11, mask=mask, other=0.0).to(MATH)
    return c00, c01, c10, c11, o00, o01, o10, o11


@triton.jit
def _sample(ptr, f, F, Rb, Ra, b0, b1, wb, a0, a1, wa, mask, CL: tl.constexpr, MATH: tl.constexpr):
    c00, c01, c10, c11, _o00, _o01, _o10, _o11 = _corners(ptr, f, F, Rb, Ra, b0, b1, a0, a1, mask, CL, MATH)
    wa = wa[:, None]
    wb = wb[:, None]
    return (c00 * (1 - wa) + c01 * wa) * (1 - wb) + (c10 * (1 - wa) + c11 * wa) * wb


@triton.jit
def _two_over(extent, MATH: tl.constexpr):
    """2 / extent rounded as torch does: Triton's fp32 `/` is div.full.f32 (2 ulp); fp64 `/` is exact."""
    if MATH == tl.float64:
        return 2.0 / extent
    else:
        return tl.math.div_rn(tl.zeros_like(extent) + 2.0, extent)


@triton.jit
def _coords(points_ptr, times_ptr, time_hi, time_lo, aabb_ptr, n, n_mask, Rx, Ry, Rz, Rt,
            HAS_TIMES: tl.constexpr, MATH: tl.constexpr, IDX: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per axis: the cells, weights and dq/du of the points n (4DGS's normalize_aabb), and dq/dp per axis."""
    lo_x = tl.load(aabb_ptr + 0).to(MATH)
    lo_y = tl.load(aabb_ptr + 1).to(MATH)
    lo_z = tl.load(aabb_ptr + 2).to(MATH)
    sx = _two_over(tl.load(aabb_ptr + 3).to(MATH) - lo_x, MATH)
    sy = _two_over(tl.load(aabb_ptr + 4).to(MATH) - lo_y, MATH)
    sz = _two_over(tl.load(aabb_ptr + 5).to(MATH) - lo_z, MATH)
    qx = (tl.load(points_ptr + 3 * n, mask=n_mask, other=0.0).to(MATH) - lo_x) * sx - 1.0
    qy = (tl.load(points_ptr + 3 * n + 1, mask=n_mask, other=0.0).to(MATH) - lo_y) * sy - 1.0
    qz = (tl.load(points_ptr + 3 * n + 2, mask=n_mask, other=0.0).to(MATH) - lo_z) * sz - 1.0
    if HAS_TIMES:
        qt = tl.load(times_ptr + n, mask=n_mask, other=0.0).to(MATH)
    else:
        # The shared time, split in two fp32 arguments so fp64 math keeps ~48 bits of it.
        qt = tl.zeros([BLOCK_N], MATH) + time_hi + time_lo
    x0, x1, wx, gx = _axis(qx, Rx, IDX)
    y0, y1, wy, gy = _axis(qy, Ry, IDX)
    z0, z1, wz, gz = _axis(qz, Rz, IDX)
    t0, t1, wt, gt = _axis(qt, Rt, IDX)
    return x0, x1, wx, gx, y0, y1, wy, gy, z0, z1, wz, gz, t0, t1, wt, gt, sx, sy, sz


@triton.jit
def _hexplane_fwd_kernel(points_ptr, times_ptr, time_hi, time_lo, aabb_ptr, out_ptr,
                         p_xy, p_xz, p_xt, p_yz, p_yt, p_zt, N, F, Rx, Ry, Rz, Rt, out_cols, col0,
                         HAS_TIMES: tl.constexpr, CL: tl.constexpr, MATH: tl.constexpr, IDX: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    x0, x1, wx, _gx, y0, y1, wy, _gy, z0, z1, wz, _gz, t0, t1, wt, _gt, _sx, _sy, _sz = _coords(
        points_ptr, times_ptr, time_hi, time_lo, aabb_ptr, n, n_mask, Rx, Ry, Rz, Rt, HAS_TIMES, MATH, IDX, BLOCK_N)
    out_row = out_ptr + n[:, None] * out_cols + col0
    for f0 in range(0, F, BLOCK_F):
        f = (f0 + tl.arange(0, BLOCK_F)).to(IDX)
        mask = n_mask[:, None] & (f < F)[None, :]
        # The reference's order: ((((xy * xz) * xt) * yz) * yt) * zt.
        out = _sample(p_xy, f, F, Ry, Rx, y0, y1, wy, x0, x1, wx, mask, CL, MATH)
        out *= _sample(p_xz, f, F, Rz, Rx, z0, z1, wz, x0, x1, wx, mask, CL, MATH)
        out *= _sample(p_xt, f, F, Rt, Rx, t0, t1, wt, x0, x1, wx, mask, CL, MATH)
        out *= _sample(p_yz, f, F, Rz, Ry, z0, z1, wz, y0, y1, wy, mask, CL, MATH)
        out *= _sample(p_yt, f, F, Rt, Ry, t0, t1, wt, y0, y1, wy, mask, CL, MATH)
        out *= _sample(p_zt, f, F, Rt, Rz, t0, t1, wt, z0, z1, wz, mask, CL, MATH)
        tl.store(out_row + f[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_grad(ptr, f, F, Rb, Ra, b0, b1, wb, a0, a1, wa, mask, CL: tl.constexpr, MATH: tl.constexpr):
    """The sample and its derivatives along a and b, [BLOCK_N, BLOCK_F] each."""
    c00, c01, c10, c11, _o00, _o01, _o10, _o11 = _corners(ptr, f, F, Rb, Ra, b0, b1, a0, a1, mask, CL, MATH)
    wa = wa[:, None]
    wb = wb[:, None]
    lo = c00 * (1 - wa) + c01 * wa
    hi = c10 * (1 - wa) + c11 * wa
    return lo * (1 - wb) + hi * wb, (c01 - c00) * (1 - wb) + (c11 - c10) * wb, hi - lo


@triton.jit
def _scatter(v_ptr, f, F, Rb, Ra, b0, b1, wb, a0, a1, wa, v_s, mask, CL: tl.constexpr):
    """Adds the bilinear weights times v_s [BLOCK_N, BLOCK_F] into the four corners of the plane's gradient."""
    if CL:
        base = v_ptr + f[None, :]
        s_b = Ra * F
        s_a = F
    else:
        base = v_ptr + f[None, :] * (Rb * Ra)
        s_b = Ra
        s_a = 1
    wa = wa[:, None]
    wb = wb[:, None]
    ty = v_ptr.dtype.element_ty
    v_lo = v_s * (1 - wb)
    v_hi = v_s * wb
    tl.atomic_add(base + (b0 * s_b + a0 * s_a)[:, None], (v_lo * (1 - wa)).to(ty), mask=mask, sem="relaxed")
    tl.atomic_add(base + (b0 * s_b + a1 * s_a)[:, None], (v_lo * wa).to(ty), mask=mask, sem="relaxed")
    tl.atomic_add(base + (b1 * s_b + a0 * s_a)[:, None], (v_hi * (1 - wa)).to(ty), mask=mask, sem="relaxed")
    tl.atomic_add(base + (b1 * s_b + a1 * s_a)[:, None], (v_hi * wa).to(ty), mask=mask, sem="relaxed")


@triton.jit
def _hexplane_bwd_kernel(v_out_ptr, points_ptr, times_ptr, time_hi, time_lo, aabb_ptr,
                         p_xy, p_xz, p_xt, p_yz, p_yt, p_zt, v_xy, v_xz, v_xt, v_yz, v_yt, v_zt,
                         v_points_ptr, v_times_ptr, N, F, Rx, Ry, Rz, Rt, out_cols, col0,
                         HAS_TIMES: tl.constexpr, ACCUMULATE: tl.constexpr, CL: tl.constexpr,
                         MATH: tl.constexpr, IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    x0, x1, wx, gx, y0, y1, wy, gy, z0, z1, wz, gz, t0, t1, wt, gt, sx, sy, sz = _coords(
        points_ptr, times_ptr, time_hi, time_lo, aabb_ptr, n, n_mask, Rx, Ry, Rz, Rt, HAS_TIMES, MATH, IDX, BLOCK_N)
    v_row = v_out_ptr + n[:, None] * out_cols + col0
    # d loss / d weight along each axis, summed over channels and planes.
    v_wx = tl.zeros([BLOCK_N], MATH)
    v_wy = tl.zeros([BLOCK_N], MATH)
    v_wz = tl.zeros([BLOCK_N], MATH)
    v_wt = tl.zeros([BLOCK_N], MATH)
    for f0 in range(0, F, BLOCK_F):
        f = (f0 + tl.arange(0, BLOCK_F)).to(IDX)
        mask = n_mask[:, None] & (f < F)[None, :]
        v_out = tl.load(v_row + f[None, :], mask=mask, other=0.0).to(MATH)
        s0, da0, db0 = _sample_grad(p_xy, f, F, Ry, Rx, y0, y1, wy, x0, x1, wx, mask, CL, MATH)
        s1, da1, db1 = _sample_grad(p_xz, f, F, Rz, Rx, z0, z1, wz, x0, x1, wx, mask, CL, MATH)
        s2, da2, db2 = _sample_grad(p_xt, f, F, Rt, Rx, t0, t1, wt, x0, x1, wx, mask, CL, MATH)
        s3, da3, db3 = _sample_grad(p_yz, f, F, Rz, Ry, z0, z1, wz, y0, y1, wy, mask, CL, MATH)
        s4, da4, db4 = _sample_grad(p_yt, f, F, Rt, Ry, t0, t1, wt, y0, y1, wy, mask, CL, MATH)
        s5, da5, db5 = _sample_grad(p_zt, f, F, Rt, Rz, t0, t1, wt, z0, z1, wz, mask, CL, MATH)
        # v_out times the product of the other five samples, from prefix and suffix products (no division,
        # so a zero sample is fine).
        p01 = v_out * s0 * s1
        p012 = p01 * s2
        p0123 = p012 * s3
        q45 = s4 * s5
        q345 = s3 * q45
        q2345 = s2 * q345
        v_s0 = v_out * s1 * q2345
        v_s1 = v_out * s0 * q2345
        v_s2 = p01 * q345
        v_s3 = p012 * q45
        v_s4 = p0123 * s5
        v_s5 = p0123 * s4
        _scatter(v_xy, f, F, Ry, Rx, y0, y1, wy, x0, x1, wx, v_s0, mask, CL)
        _scatter(v_xz, f, F, Rz, Rx, z0, z1, wz, x0, x1, wx, v_s1, mask, CL)
        _scatter(v_xt, f, F, Rt, Rx, t0, t1, wt, x0, x1, wx, v_s2, mask, CL)
        _scatter(v_yz, f, F, Rz, Ry, z0, z1, wz, y0, y1, wy, v_s3, mask, CL)
        _scatter(v_yt, f, F, Rt, Ry, t0, t1, wt, y0, y1, wy, v_s4, mask, CL)
        _scatter(v_zt, f, F, Rt, Rz, t0, t1, wt, z0, z1, wz, v_s5, mask, CL)
        v_wx += tl.sum(v_s0 * da0 + v_s1 * da1 + v_s2 * da2, axis=1)
        v_wy += tl.sum(v_s0 * db0 + v_s3 * da3 + v_s4 * da4, axis=1)
        v_wz += tl.sum(v_s1 * db1 + v_s3 * db3 + v_s5 * da5, axis=1)
        v_wt += tl.sum(v_s2 * db2 + v_s4 * db4 + v_s5 * db5, axis=1)
    # w = u - i0 with i0 constant, u = (q + 1) / 2 * (R - 1) (clamped), q = (p - lo) * s - 1.
    v_px = v_wx * gx * sx
    v_py = v_wy * gy * sy
    v_pz = v_wz * gz * sz
    if ACCUMULATE:  # a later level adds to the earlier levels' sums; this program owns these points
        v_px += tl.load(v_points_ptr + 3 * n, mask=n_mask, other=0.0)
        v_py += tl.load(v_points_ptr + 3 * n + 1, mask=n_mask, other=0.0)
        v_pz += tl.load(v_points_ptr + 3 * n + 2, mask=n_mask, other=0.0)
    tl.store(v_points_ptr + 3 * n, v_px, mask=n_mask)
    tl.store(v_points_ptr + 3 * n + 1, v_py, mask=n_mask)
    tl.store(v_points_ptr + 3 * n + 2, v_pz, mask=n_mask)
    if HAS_TIMES:
        v_t = v_wt * gt
        if ACCUMULATE:
            v_t += tl.load(v_times_ptr + n, mask=n_mask, other=0.0)
        tl.store(v_times_ptr + n, v_t, mask=n_mask)


# ----------------------------------------------------------------------------------------------------------
# Launchers.


def _levels(planes: List[Tensor]):
    """Per level: (F, (Rx, Ry, Rz, Rt), its six (F, R_b, R_a) views). Shapes were checked by the caller
    (pyops/hexplane.py); the launcher only reads them."""
    for level in range(len(planes) // 6):
        views = [p[0] if p.dim() == 4 else p for p in planes[6 * level: 6 * level + 6]]
        xy, xz, xt = views[0], views[1], views[2]
        yield level, xy.shape[0], (xy.shape[2], xy.shape[1], xz.shape[1], xt.shape[1]), views


def _config(points: Tensor, F: int, views: List[Tensor], backward: bool):
    """Block sizes and layout. On a GPU a tile holds 256 (forward) or 128 (backward) elements, 2 or 1 per
    thread of 4 warps: every element gathers 24 corners, and ptxas keeps them all in flight (sm_90: 168
    registers forward, 124 backward, no spills; 256 elements backward spill)."""
    interpret = points.device.type != "cuda"
    block_f = min(triton.next_power_of_2(F), 16 if interpret else 32)
    block_n = 32 if interpret else max((128 if backward else 256) // block_f, 4)
    cl = (not interpret) if CHANNELS_LAST is None else CHANNELS_LAST
    math = tl.float64 if points.dtype == torch.float64 else tl.float32
    idx = tl.int64 if max(v.numel() for v in views) >= 2**31 else tl.int32  # offsets inside one plane
    return dict(CL=cl, MATH=math, IDX=idx, BLOCK_N=block_n, BLOCK_F=block_f, num_warps=4)


def _time_args(time: float, points: Tensor) -> Tuple[float, float]:
    """The shared time as two fp32 kernel arguments, hi + lo: fp64 math keeps ~48 bits of it (fp32 math only
    needs hi; `time` stays untouched there, it may be a SymFloat under torch.compile)."""
    if points.dtype != torch.float64:
        return time, 0.0
    hi = float(np.float32(time))
    return hi, float(np.float32(time - hi))


def _gather_layout(view: Tensor, cl: bool) -> Tensor:
    return view.permute(1, 2, 0).contiguous() if cl else view.contiguous()


@torch.library.triton_op("pyops::hexplane_fwd_triton", mutates_args=())
def hexplane_fwd_triton(points: Tensor, times: Optional[Tensor], time: float, planes: List[Tensor],
                        aabb: Tensor) -> Tensor:
    total = sum((p[0] if p.dim() == 4 else p).shape[0] for p in planes[0::6])
    n = points.shape[0]
    out = points.new_empty(n, total)
    if n == 0 or total == 0:
        return out
    pts = points.contiguous()
    tms = times.contiguous() if times is not None else pts
    box = aabb.contiguous()
    time_hi, time_lo = _time_args(time, points)
    col0 = 0
    for _level, F, (rx, ry, rz, rt), views in _levels(planes):
        cfg = _config(points, F, views, backward=False)
        p = [_gather_layout(v, cfg["CL"]) for v in views]
        torch.library.wrap_triton(_hexplane_fwd_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]),)](
            pts, tms, time_hi, time_lo, box, out, *p, n, F, rx, ry, rz, rt, total, col0,
            HAS_TIMES=times is not None, **cfg)
        col0 += F
    return out


@torch.library.triton_op("pyops::hexplane_bwd_triton", mutates_args=())
def hexplane_bwd_triton(v_features: Tensor, points: Tensor, times: Optional[Tensor], time: float,
                        planes: List[Tensor], aabb: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
    n = points.shape[0]
    acc = torch.float64 if points.dtype == torch.float64 else torch.float32
    v_points = torch.zeros(n, 3, dtype=acc, device=points.device)
    v_times = torch.zeros(n if times is not None else 0, dtype=acc, device=points.device)
    v_planes: List[Tensor] = []
    pts = points.contiguous()
    tms = times.contiguous() if times is not None else pts
    box = aabb.contiguous()
    v_out = v_features.to(points.dtype).contiguous()
    total = v_out.shape[1]
    time_hi, time_lo = _time_args(time, points)
    col0 = 0
    for level, F, (rx, ry, rz, rt), views in _levels(planes):
        cfg = _config(points, F, views, backward=True)
        cl = cfg["CL"]
        p = [_gather_layout(v, cl) for v in views]
        # Accumulation buffers in the gather layout; fp32 for fp32/fp16/bf16 planes.
        v_p = [torch.zeros_like(q, dtype=acc) for q in p]
        if n > 0:
            torch.library.wrap_triton(_hexplane_bwd_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]),)](
                v_out, pts, tms, time_hi, time_lo, box, *p, *v_p, v_points, v_times if times is not None else
                v_points, n, F, rx, ry, rz, rt, total, col0, HAS_TIMES=times is not None, ACCUMULATE=level > 0,
                **cfg)
        for plane, g in zip(planes[6 * level: 6 * level + 6], v_p):
            g = g.permute(2, 0, 1) if cl else g
            v_planes.append(g.to(plane.dtype).reshape(plane.shape).contiguous())
        col0 += F
    return v_points.to(points.dtype), v_times.to(points.dtype), v_planes
