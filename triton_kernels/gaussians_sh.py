"""Triton kernels of gsplat's spherical harmonics (real basis, Sloan's evaluation order, degrees 0-3; dirs
normalized inside), forward and backward, registered as torch.library.triton_op pyops::gs_sh_{fwd,bwd}_triton;
same signatures and outputs as the native schemas in csrc/ops.cpp.

One program per block of rows, the bases as per-row scalars, colors as [rows, 4] (3 channels padded).
"""

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gaussians_common import NORM_EPS, _check

SH_C0: tl.constexpr = tl.constexpr(0.2820947917738781)
SH_C1: tl.constexpr = tl.constexpr(0.48860251190292)


@triton.jit
def _sh_dirs(dirs_ptr, rows, rmask):
    dx = tl.load(dirs_ptr + rows * 3 + 0, mask=rmask, other=1.0)
    dy = tl.load(dirs_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    dz = tl.load(dirs_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    inv = 1.0 / tl.maximum(tl.sqrt(dx * dx + dy * dy + dz * dz), NORM_EPS)  # F.normalize's floor: 0 stays 0
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
        dot = tl.where(inv < 1.0 / NORM_EPS, vx * x + vy * y + vz * z, 0.0)  # linear below the floor
        tl.store(v_dirs_ptr + rows * 3 + 0, (vx - dot * x) * inv, mask=rmask)
        tl.store(v_dirs_ptr + rows * 3 + 1, (vy - dot * y) * inv, mask=rmask)
        tl.store(v_dirs_ptr + rows * 3 + 2, (vz - dot * z) * inv, mask=rmask)


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------


def _check_sh(op: str, degree: int, dirs: Tensor, coeffs: Tensor) -> None:
    if not 0 <= degree <= 3:  # a plain comparison: under torch.compile degree may be a SymInt
        raise ValueError(f"{op}: degree={degree} is out of range [0, 3]")
    _check(op, "dirs", dirs, (None, 3))
    _check(op, "coeffs", coeffs, (dirs.shape[0], None, 3), like=("dirs", dirs))
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
    _check(op, "v_colors", v_colors, (dirs.shape[0], 3), like=("dirs", dirs))
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
