"""Triton Derf kernels, forward and backward, registered as torch.library.triton_op so torch.compile sees
them. Same semantics as the native ops in csrc/: x viewed as a contiguous [outer, C, inner] array (inner == 1
for channels-last (..., C) inputs), parameters read in fp32, math in fp32, backward in one fused pass with
per-program partial sums of the parameter gradients (no atomics) and a small second-stage sum."""

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

TWO_OVER_SQRT_PI: tl.constexpr = tl.constexpr(2.0 / math.sqrt(math.pi))


@triton.jit
def _load_params(alpha_ptr, shift_ptr, weight_ptr, bias_ptr, c, mask,
                 ALPHA_PER_C: tl.constexpr, SHIFT_PER_C: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                 HAS_BIAS: tl.constexpr):
    a = tl.load(alpha_ptr + c * ALPHA_PER_C, mask=mask, other=0.0)
    s = tl.load(shift_ptr + c * SHIFT_PER_C, mask=mask, other=0.0)
    w = tl.load(weight_ptr + c, mask=mask, other=1.0) if HAS_WEIGHT else 1.0
    b = tl.load(bias_ptr + c, mask=mask, other=0.0) if HAS_BIAS else 0.0
    return a, s, w, b


@triton.jit
def _derf_fwd_kernel(x_ptr, y_ptr, alpha_ptr, shift_ptr, weight_ptr, bias_ptr, rows, C, inner,
                     ALPHA_PER_C: tl.constexpr, SHIFT_PER_C: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr):
    # Tile [BLOCK_R, BLOCK_N] of x viewed as [rows, n]: channels-last rows are tokens and columns channels;
    # channels-first rows are (outer, channel) runs of length n = inner sharing one channel.
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    col = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    if CHANNELS_LAST:
        n = C
        c = col
    else:
        n = inner
        c = r % C
    mask = (r < rows) & (col < n)
    a, s, w, b = _load_params(alpha_ptr, shift_ptr, weight_ptr, bias_ptr, c, mask, ALPHA_PER_C, SHIFT_PER_C,
                              HAS_WEIGHT, HAS_BIAS)
    offs = r * n + col
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = w * tl.math.erf(a * x + s) + b
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_tile(x_ptr, v_y_ptr, v_x_ptr, offs, mask, a, s, w):
    """Writes v_x for one tile; returns its per-element terms of v_alpha, v_shift, v_weight and v_bias."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v_y = tl.load(v_y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = a * x + s
    v_z = v_y * w * TWO_OVER_SQRT_PI * tl.exp(-z * z)
    tl.store(v_x_ptr + offs, (v_z * a).to(v_x_ptr.dtype.element_ty), mask=mask)
    return v_z * x, v_z, v_y * tl.math.erf(z), v_y


@triton.jit
def _derf_bwd_kernel(v_y_ptr, x_ptr, v_x_ptr, part_ptr, alpha_ptr, shift_ptr, weight_ptr, outer, C, inner,
                     outer_per_prog, ALPHA_PER_C: tl.constexpr, SHIFT_PER_C: tl.constexpr,
                     HAS_WEIGHT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr):
    # Program (p, cb) covers outer rows [p * outer_per_prog, +outer_per_prog) and channels block cb, writes
    # v_x there and its four partial sums per channel into part[p, :, channels]. Tiles are [BLOCK_R, BLOCK_N]:
    # channels-last: (tokens, channels); channels-first: (channels, inner positions), one outer row at a time.
    p = tl.program_id(0)
    o_start = p.to(tl.int64) * outer_per_prog
    o_end = tl.minimum(o_start + outer_per_prog, outer)
    if CHANNELS_LAST:
        c = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        c_mask = c < C
        a, s, w, _b = _load_params(alpha_ptr, shift_ptr, weight_ptr, weight_ptr, c, c_mask, ALPHA_PER_C,
                                   SHIFT_PER_C, HAS_WEIGHT, False)
    else:
        c = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        c_mask = c < C
        a, s, w, _b = _load_params(alpha_ptr, shift_ptr, weight_ptr, weight_ptr, c, c_mask, ALPHA_PER_C,
                                   SHIFT_PER_C, HAS_WEIGHT, False)
    acc_v_zx = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    acc_v_z = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    acc_v_ye = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    acc_v_y = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    if CHANNELS_LAST:
        for o0 in range(o_start, o_end, BLOCK_R):
            o = o0 + tl.arange(0, BLOCK_R)[:, None]
            mask = (o < o_end) & c_mask
            v_zx, v_z, v_ye, v_y = _grad_tile(x_ptr, v_y_ptr, v_x_ptr, o * C + c, mask, a, s, w)
            acc_v_zx += v_zx
            acc_v_z += v_z
            acc_v_ye += v_ye
            acc_v_y += v_y
    else:
        for o in range(o_start, o_end):
            for i0 in range(0, inner, BLOCK_N):
                i = i0 + tl.arange(0, BLOCK_N)[None, :]
                mask = c_mask & (i < inner)
                v_zx, v_z, v_ye, v_y = _grad_tile(x_ptr, v_y_ptr, v_x_ptr, (o * C + c) * inner + i, mask, a, s, w)
                acc_v_zx += v_zx
                acc_v_z += v_z
                acc_v_ye += v_ye
                acc_v_y += v_y
    # Reduce the tile over the non-channel axis and write this program's row of partials.
    axis: tl.constexpr = 0 if CHANNELS_LAST else 1
    cc = tl.reshape(c, (BLOCK_N,)) if CHANNELS_LAST else tl.reshape(c, (BLOCK_R,))
    out = part_ptr + p.to(tl.int64) * 4 * C + cc
    m = cc < C
    tl.store(out, tl.sum(acc_v_zx, axis=axis), mask=m)
    tl.store(out + C, tl.sum(acc_v_z, axis=axis), mask=m)
    tl.store(out + 2 * C, tl.sum(acc_v_ye, axis=axis), mask=m)
    tl.store(out + 3 * C, tl.sum(acc_v_y, axis=axis), mask=m)


def _canonical(x: Tensor, channel_dim: int):
    channel_dim %= x.dim()
    outer = math.prod(x.shape[:channel_dim])
    inner = math.prod(x.shape[channel_dim + 1:])
    return x.contiguous(), outer, x.shape[channel_dim], inner


def _params(x, alpha, shift, weight, bias):
    f32 = lambda t: None if t is None else t.to(torch.float32).contiguous().reshape(-1)
    a, s, w, b = f32(alpha), f32(shift), f32(weight), f32(bias)
    flags = dict(ALPHA_PER_C=a.numel() > 1, SHIFT_PER_C=s.numel() > 1, HAS_WEIGHT=w is not None)
    return a, s, w if w is not None else a, b if b is not None else a, flags


def _tile(n: int):
    """Block sizes for the [rows, N] tiles: ~2K elements per tile, N covering the contiguous run."""
    block_n = min(triton.next_power_of_2(max(n, 1)), 1024)
    block_r = max(1, 2048 // block_n)
    return block_r, block_n, 8 if block_r * block_n >= 2048 else 4


@torch.library.triton_op("pyops::derf_fwd_triton", mutates_args=())
def derf_fwd_triton(x: Tensor, alpha: Tensor, shift: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                    channel_dim: int) -> Tensor:
    xc, outer, C, inner = _canonical(x, channel_dim)
    y = torch.empty_like(xc)
    if xc.numel() == 0:
        return y
    a, s, w, b, flags = _params(x, alpha, shift, weight, bias)
    rows, n = (outer, C) if inner == 1 else (outer * C, inner)
    block_r, block_n, warps = _tile(n)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(n, block_n))
    torch.library.wrap_triton(_derf_fwd_kernel)[grid](
        xc, y, a, s, w, b, rows, C, inner, HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_N=block_n,
        CHANNELS_LAST=inner == 1, num_warps=warps, **flags)
    return y


def _num_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton's CPU interpreter: few, larger programs


@torch.library.triton_op("pyops::derf_bwd_triton", mutates_args=())
def derf_bwd_triton(v_y: Tensor, x: Tensor, alpha: Tensor, shift: Tensor, weight: Optional[Tensor],
                    bias: Optional[Tensor], channel_dim: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    xc, outer, C, inner = _canonical(x, channel_dim)
    v_y = v_y.to(x.dtype).contiguous()
    v_x = torch.empty_like(xc)
    a, s, w, _b, flags = _params(x, alpha, shift, weight, bias)
    channels_last = inner == 1
    if channels_last:
        block_r, block_n, warps = _tile(C)
        channel_blocks = triton.cdiv(C, block_n)
        rows_per_tile = block_r
    else:
        block_n = min(triton.next_power_of_2(max(inner, 1)), 512)
        block_r = max(1, min(triton.next_power_of_2(C), 2048 // block_n))
        warps = 4
        channel_blocks = triton.cdiv(C, block_r)
        rows_per_tile = 1
    programs = max(1, min(triton.cdiv(outer, rows_per_tile), _num_programs(x.device) // channel_blocks))
    outer_per_prog = triton.cdiv(triton.cdiv(max(outer, 1), programs), rows_per_tile) * rows_per_tile
    programs = triton.cdiv(max(outer, 1), outer_per_prog)
    partials = torch.zeros(programs, 4, C, dtype=torch.float32, device=x.device)
    if xc.numel() != 0:
        torch.library.wrap_triton(_derf_bwd_kernel)[(programs, channel_blocks)](
            v_y, xc, v_x, partials, a, s, w, outer, C, inner, outer_per_prog, BLOCK_R=block_r, BLOCK_N=block_n,
            CHANNELS_LAST=channels_last, num_warps=warps, **flags)
    totals = partials.sum(0)  # the deterministic second stage

    def v_param(row: int, param: Optional[Tensor]) -> Tensor:
        if param is None:
            return torch.empty(0, dtype=alpha.dtype, device=x.device)
        g = totals[row] if param.numel() > 1 or C == 1 else totals[row].sum()
        return g.to(param.dtype).reshape(param.shape).clone()

    return v_x, v_param(0, alpha), v_param(1, shift), v_param(2, weight), v_param(3, bias)
