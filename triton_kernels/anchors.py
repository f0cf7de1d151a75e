"""Triton kernels of the MoRel anchor ops (pyops/reference/anchors.py is the spec), registered as
torch.library.triton_op pyops::anchor_{blend_weight,decode}_{fwd,bwd}_triton with the native schemas' signatures
(csrc/ops.cpp).

Decode: one program per tile of BLOCK_M anchors. The input tile X = [feat (C), view dir (3), dist (1)] (columns
padded to a multiple of 16) goes through each head's first layer with tl.dot against that head's w1, 16 columns at
a time (columns the head does not read are masked to 0; the color head's appearance columns are folded into its
bias on the host), ReLU, then one tl.dot per output component: w2's rows k * S + j (S = 1, 7, 3 components per
offset) loaded as an (H_PAD, K_PAD) matrix give component j of all K offsets as a (BLOCK_M, K_PAD) tile, on which
the epilogue (tanh, sigmoid, quaternion normalisation, masks) runs. A tile whose anchors are all invisible skips
the MLP.

Backward: the same recomputation, then per-anchor pre-activation gradients G (M, 11K, w2's row layout), the
hidden layers and their gradients are written out and the weight gradients are dense torch matmuls in the
launcher (deterministic, no atomics); the per-anchor gradients (anchors, incl. the VJP of the view direction and
distance, feats, offsets, anchor_scales, opacity scale, blend) come straight from the kernel.

Precision: math in fp32, in fp64 for fp64 inputs (then the products are broadcast sums, not tl.dot: see _dot);
fp32 dots use input_precision="ieee" (no TF32). Python floats reach Triton as fp32, so tau and lambda_decay travel as
fp32 (hi, lo) pairs that the kernels add in the math dtype. Offsets are int64 (M * 11K can pass 2^31).

One file of about 700 lines: the blend kernels are small, and the decode's forward and backward share the tile
helpers and the launchers' argument setup (_Decode).
"""

import struct
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

EPS: tl.constexpr = tl.constexpr(1e-12)  # reference.NORMALIZE_EPS


def _split(x: float) -> Tuple[float, float]:
    """x as fp32 hi + lo (about 48 bits): Triton passes Python floats as fp32. A value beyond fp32's range, or a
    symbolic float under torch.compile, passes as is."""
    try:
        hi = struct.unpack("f", struct.pack("f", x))[0]
    except (OverflowError, TypeError, struct.error):
        return x, 0.0
    return hi, x - hi


def _math_dtype(t: Tensor):
    return (torch.float64, tl.float64) if t.dtype == torch.float64 else (torch.float32, tl.float32)


# ----------------------------------------------------------------------------------------------------------
# Element-wise math.


@triton.jit
def _tanh(x):
    # tanh without cancellation near 0 (the sign decides which Gaussians are kept): a series below 0.04
    # (truncation < 1e-17 relative), (1 - e^-2|x|) / (1 + e^-2|x|) above.
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(ax < 0.04, small, tl.where(x < 0, -big, big))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tau_lambda(tau_ptr, tau_hi, tau_lo, lam_hi, lam_lo, HAS_TAU_T: tl.constexpr, DT: tl.constexpr):
    if HAS_TAU_T:
        tau = tl.load(tau_ptr).to(DT)
    else:
        tau = tl.cast(tau_hi, DT) + tl.cast(tau_lo, DT)
    return tau, tl.cast(lam_hi, DT) + tl.cast(lam_lo, DT)


@triton.jit
def _blend(offset, decay, tau, lam, MODE: tl.constexpr):
    """w = exp(-lam * decay * dist), dist and d dist / d (tau - offset) (0 at the kink, as abs and relu)."""
    diff = tau - offset
    if MODE == 0:
        dist = tl.abs(diff)
        slope = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    elif MODE == 1:
        dist = tl.maximum(diff, 0.0)
        slope = tl.where(diff > 0, 1.0, 0.0)
    else:
        dist = tl.maximum(-diff, 0.0)
        slope = tl.where(diff < 0, -1.0, 0.0)
    return tl.exp(-lam * decay * dist), dist, slope


@triton.jit
def _blend_vjp(v_w, w, dist, slope, decay, lam):
    """(v_offset, v_decay) of w = exp(-lam * decay * dist(tau - offset))."""
    g = v_w * w
    return g * lam * decay * slope, g * (-lam) * dist


# ----------------------------------------------------------------------------------------------------------
# Blend weight: one lane per anchor.


@triton.jit
def _blend_fwd_kernel(offset_ptr, decay_ptr, tau_ptr, w_ptr, M, tau_hi, tau_lo, lam_hi, lam_lo,
                      HAS_TAU_T: tl.constexpr, MODE: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    tau, lam = _tau_lambda(tau_ptr, tau_hi, tau_lo, lam_hi, lam_lo, HAS_TAU_T, DT)
    o = tl.load(offset_ptr + m, mask=mask, other=0.0).to(DT)
    d = tl.load(decay_ptr + m, mask=mask, other=0.0).to(DT)
    w, _dist, _slope = _blend(o, d, tau, lam, MODE)
    tl.store(w_ptr + m, w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _blend_bwd_kernel(v_w_ptr, offset_ptr, decay_ptr, tau_ptr, v_offset_ptr, v_decay_ptr, M, tau_hi, tau_lo,
                      lam_hi, lam_lo, HAS_TAU_T: tl.constexpr, MODE: tl.constexpr, DT: tl.constexpr,
                      BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    tau, lam = _tau_lambda(tau_ptr, tau_hi, tau_lo, lam_hi, lam_lo, HAS_TAU_T, DT)
    o = tl.load(offset_ptr + m, mask=mask, other=0.0).to(DT)
    d = tl.load(decay_ptr + m, mask=mask, other=0.0).to(DT)
    v_w = tl.load(v_w_ptr + m, mask=mask, other=0.0).to(DT)
    w, dist, slope = _blend(o, d, tau, lam, MODE)
    v_o, v_d = _blend_vjp(v_w, w, dist, slope, d, lam)
    tl.store(v_offset_ptr + m, v_o.to(v_offset_ptr.dtype.element_ty), mask=mask)
    tl.store(v_decay_ptr + m, v_d.to(v_decay_ptr.dtype.element_ty), mask=mask)


BLEND_BLOCK = 256


@torch.library.triton_op("pyops::anchor_blend_weight_fwd_triton", mutates_args=())
def anchor_blend_weight_fwd_triton(offset: Tensor, decay: Tensor, tau_t: Optional[Tensor], tau: float,
                                   lambda_decay: float, blend_mode: int) -> Tensor:
    offset, decay = offset.contiguous(), decay.contiguous()
    w = torch.empty_like(offset)
    m = offset.numel()
    if m:
        tau_hi, tau_lo = _split(tau)
        lam_hi, lam_lo = _split(lambda_decay)
        torch.library.wrap_triton(_blend_fwd_kernel)[(triton.cdiv(m, BLEND_BLOCK),)](
            offset, decay, tau_t if tau_t is not None else offset, w, m, tau_hi, tau_lo, lam_hi, lam_lo,
            HAS_TAU_T=tau_t is not None, MODE=blend_mode, DT=_math_dtype(offset)[1], BLOCK=BLEND_BLOCK,
            num_warps=4)
    return w


@torch.library.triton_op("pyops::anchor_blend_weight_bwd_triton", mutates_args=())
def anchor_blend_weight_bwd_triton(v_w: Tensor, offset: Tensor, decay: Tensor, tau_t: Optional[Tensor], tau: float,
                                   lambda_decay: float, blend_mode: int) -> Tuple[Tensor, Tensor]:
    offset, decay, v_w = offset.contiguous(), decay.contiguous(), v_w.contiguous()
    v_offset, v_decay = torch.empty_like(offset), torch.empty_like(decay)
    m = offset.numel()
    if m:
        tau_hi, tau_lo = _split(tau)
        lam_hi, lam_lo = _split(lambda_decay)
        torch.library.wrap_triton(_blend_bwd_kernel)[(triton.cdiv(m, BLEND_BLOCK),)](
            v_w, offset, decay, tau_t if tau_t is not None else offset, v_offset, v_decay, m, tau_hi, tau_lo,
            lam_hi, lam_lo, HAS_TAU_T=tau_t is not None, MODE=blend_mode, DT=_math_dtype(offset)[1],
            BLOCK=BLEND_BLOCK, num_warps=4)
    return v_offset, v_decay


# ----------------------------------------------------------------------------------------------------------
# Decode: tile helpers shared by the forward and the backward.


@triton.jit
def _view(anchors_ptr, cam_ptr, m, mask_m, DT: tl.constexpr):
    """Anchor position, view vector anchor - cam, its length and the clamped inverse length (per anchor)."""
    ax = tl.load(anchors_ptr + m * 3 + 0, mask=mask_m, other=0.0).to(DT)
    ay = tl.load(anchors_ptr + m * 3 + 1, mask=mask_m, other=0.0).to(DT)
    az = tl.load(anchors_ptr + m * 3 + 2, mask=mask_m, other=0.0).to(DT)
    vx = ax - tl.load(cam_ptr + 0).to(DT)
    vy = ay - tl.load(cam_ptr + 1).to(DT)
    vz = az - tl.load(cam_ptr + 2).to(DT)
    d = tl.sqrt(vx * vx + vy * vy + vz * vz)
    inv = 1.0 / tl.maximum(d, EPS)
    return ax, ay, az, vx, vy, vz, d, inv


@triton.jit
def _visible(vis_ptr, m, mask_m, HAS_VIS: tl.constexpr):
    """The tile's visible anchors (all of them without a visible mask)."""
    vis = mask_m
    if HAS_VIS:
        vis = (tl.load(vis_ptr + m, mask=mask_m, other=0) != 0) & mask_m
    return vis


@triton.jit
def _x_chunk(feats_ptr, m, mask_m, C, c0, dx, dy, dz, d, DT: tl.constexpr):
    """Columns [c0, c0 + 16) of the input tile X = [feat, view dir, dist, 0...]: (BLOCK_M, 16)."""
    c = c0 + tl.arange(0, 16)[None, :]
    x = tl.load(feats_ptr + m[:, None] * C + c, mask=mask_m[:, None] & (c < C), other=0.0).to(DT)
    x = tl.where(c == C, dx[:, None], x)
    x = tl.where(c == C + 1, dy[:, None], x)
    x = tl.where(c == C + 2, dz[:, None], x)
    return tl.where(c == C + 3, d[:, None], x)


@triton.jit
def _dot(a, b, DT: tl.constexpr):
    """a @ b in the math dtype. fp32: tl.dot without TF32. fp64: a broadcast product summed in registers
    (Triton's fp64 MMA path fails to compile some of these shapes for sm_90; fp64 is for tests, not speed)."""
    if DT == tl.float64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _w1(w1_ptr, H, n_in, row, c0, TRANS: tl.constexpr, H_PAD: tl.constexpr, DT: tl.constexpr):
    """Input columns [c0, c0 + 16) of a head's w1 (H, row-strided), those >= n_in (not read by the head) 0:
    (16, H_PAD) when TRANS (for X @ w1^T), else (H_PAD, 16)."""
    if TRANS:
        c = c0 + tl.arange(0, 16)[:, None]
        h = tl.arange(0, H_PAD)[None, :]
    else:
        h = tl.arange(0, H_PAD)[:, None]
        c = c0 + tl.arange(0, 16)[None, :]
    return tl.load(w1_ptr + h * row + c, mask=(h < H) & (c < n_in), other=0.0).to(DT)


@triton.jit
def _hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1_ptr, b1_ptr, H, n_in, row, BLOCK_M: tl.constexpr,
            IN_PAD: tl.constexpr, H_PAD: tl.constexpr, DT: tl.constexpr):
    """The first layer's pre-activation (BLOCK_M, H_PAD), padded hidden units 0. The input columns go in chunks
    of 16: an FMA tl.dot holds its whole reduction dimension per thread (255 registers and spills at C = 32
    in one piece, sm_90)."""
    h = tl.arange(0, H_PAD)
    acc = tl.zeros((BLOCK_M, H_PAD), DT) + tl.load(b1_ptr + h, mask=h < H, other=0.0).to(DT)[None, :]
    for c0 in tl.static_range(0, IN_PAD, 16):
        x = _x_chunk(feats_ptr, m, mask_m, C, c0, dx, dy, dz, d, DT)
        acc += _dot(x, _w1(w1_ptr, H, n_in, row, c0, True, H_PAD, DT), DT)
    return acc


@triton.jit
def _w2(w2_ptr, H, K, S: tl.constexpr, J: tl.constexpr, TRANS: tl.constexpr, H_PAD: tl.constexpr,
        K_PAD: tl.constexpr, DT: tl.constexpr):
    """w2's rows k * S + J (component J of every offset k): (H_PAD, K_PAD) when TRANS, else (K_PAD, H_PAD)."""
    if TRANS:
        h = tl.arange(0, H_PAD)[:, None]
        k = tl.arange(0, K_PAD)[None, :]
    else:
        k = tl.arange(0, K_PAD)[:, None]
        h = tl.arange(0, H_PAD)[None, :]
    return tl.load(w2_ptr + (k * S + J) * H + h, mask=(h < H) & (k < K), other=0.0).to(DT)


@triton.jit
def _out(hr, w2_ptr, b2_ptr, H, K, S: tl.constexpr, J: tl.constexpr, H_PAD: tl.constexpr, K_PAD: tl.constexpr,
         DT: tl.constexpr):
    """Component J of the head's output for every offset: (BLOCK_M, K_PAD)."""
    w = _w2(w2_ptr, H, K, S, J, True, H_PAD, K_PAD, DT)
    k = tl.arange(0, K_PAD)
    b = tl.load(b2_ptr + k * S + J, mask=k < K, other=0.0).to(DT)
    return _dot(hr, w, DT) + b[None, :]


@triton.jit
def _out_vjp(g, w2_ptr, H, K, S: tl.constexpr, J: tl.constexpr, H_PAD: tl.constexpr, K_PAD: tl.constexpr,
             DT: tl.constexpr):
    """The hidden layer's gradient from component J's pre-activation gradient g (BLOCK_M, K_PAD)."""
    return _dot(g, _w2(w2_ptr, H, K, S, J, False, H_PAD, K_PAD, DT), DT)


@triton.jit
def _scale(os_ptr, bo_ptr, bd_ptr, m, mask_m, tau, lam, one, HAS_OS: tl.constexpr, HAS_BLEND: tl.constexpr,
           MODE: tl.constexpr, DT: tl.constexpr):
    """Per-anchor opacity factor opacity_scale * blend weight, its two factors and the blend's dist and slope."""
    os = one
    if HAS_OS:
        os = tl.load(os_ptr + m, mask=mask_m, other=0.0).to(DT)
    w = one
    dist = one
    slope = one
    decay = one
    offset = one
    if HAS_BLEND:
        offset = tl.load(bo_ptr + m, mask=mask_m, other=0.0).to(DT)
        decay = tl.load(bd_ptr + m, mask=mask_m, other=0.0).to(DT)
        w, dist, slope = _blend(offset, decay, tau, lam, MODE)
    return one * os * w, os, w, dist, slope, decay


@triton.jit
def _zero_rows(ptr, m, mask_m, n, BLOCK_M: tl.constexpr, ZW: tl.constexpr):
    """Zeros in rows m of a row-major (*, n) buffer."""
    zero = tl.zeros((BLOCK_M, ZW), tl.float32)
    for c0 in range(0, n, ZW):
        c = c0 + tl.arange(0, ZW)[None, :]
        tl.store(ptr + m[:, None] * n + c, zero.to(ptr.dtype.element_ty), mask=mask_m[:, None] & (c < n))


# ----------------------------------------------------------------------------------------------------------
# Decode forward.


@triton.jit
def _store_mean(means_ptr, offsets_ptr, g, mask, a, s, J: tl.constexpr, DT: tl.constexpr):
    off = tl.load(offsets_ptr + g * 3 + J, mask=mask, other=0.0).to(DT)
    tl.store(means_ptr + g * 3 + J, (a[:, None] + off * s[:, None]).to(means_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_comp(ptr, g, mask, val, NC: tl.constexpr, J: tl.constexpr):
    tl.store(ptr + g * NC + J, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _anchor_decode_fwd_kernel(
        anchors_ptr, feats_ptr, offsets_ptr, ascales_ptr, cam_ptr,
        w1o_ptr, b1o_ptr, w2o_ptr, b2o_ptr, w1c_ptr, b1c_ptr, w2c_ptr, b2c_ptr, w1l_ptr, b1l_ptr, w2l_ptr, b2l_ptr,
        os_ptr, vis_ptr, bo_ptr, bd_ptr, tau_ptr,
        means_ptr, quats_ptr, scales_ptr, opac_ptr, colors_ptr, nop_ptr,
        M, C, K, H_O, H_C, H_L, IN_O, IN_C, IN_L, ROW_L, tau_hi, tau_lo, lam_hi, lam_lo,
        HAS_OS: tl.constexpr, HAS_VIS: tl.constexpr, HAS_BLEND: tl.constexpr, HAS_TAU_T: tl.constexpr,
        MODE: tl.constexpr, DT: tl.constexpr, BLOCK_M: tl.constexpr, IN_PAD: tl.constexpr, H_PAD: tl.constexpr,
        K_PAD: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = m < M
    k = tl.arange(0, K_PAD)[None, :]
    g = m[:, None] * K + k  # Gaussian index (int64)
    mask = mask_m[:, None] & (k < K)
    ax, ay, az, vx, vy, vz, d, inv = _view(anchors_ptr, cam_ptr, m, mask_m, DT)
    dx, dy, dz = vx * inv, vy * inv, vz * inv
    s0 = tl.load(ascales_ptr + m * 6 + 0, mask=mask_m, other=0.0).to(DT)
    s1 = tl.load(ascales_ptr + m * 6 + 1, mask=mask_m, other=0.0).to(DT)
    s2 = tl.load(ascales_ptr + m * 6 + 2, mask=mask_m, other=0.0).to(DT)
    _store_mean(means_ptr, offsets_ptr, g, mask, ax, s0, 0, DT)
    _store_mean(means_ptr, offsets_ptr, g, mask, ay, s1, 1, DT)
    _store_mean(means_ptr, offsets_ptr, g, mask, az, s2, 2, DT)
    vis = _visible(vis_ptr, m, mask_m, HAS_VIS)
    if tl.sum(vis.to(tl.int32), axis=0) > 0:  # a tile without visible anchors runs no MLP
        vis2 = vis[:, None]
        # Opacity head: tanh, kept Gaussians, opacity * scale.
        hr = tl.maximum(_hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1o_ptr, b1o_ptr, H_O, IN_O, IN_O, BLOCK_M,
                                IN_PAD, H_PAD, DT), 0.0)
        no = _tanh(_out(hr, w2o_ptr, b2o_ptr, H_O, K, 1, 0, H_PAD, K_PAD, DT))
        tau, lam = _tau_lambda(tau_ptr, tau_hi, tau_lo, lam_hi, lam_lo, HAS_TAU_T, DT)
        scale, _os, _w, _dist, _slope, _decay = _scale(os_ptr, bo_ptr, bd_ptr, m, mask_m, tau, lam, d * 0.0 + 1.0,
                                                       HAS_OS, HAS_BLEND, MODE, DT)
        keep = (no > 0) & vis2
        tl.store(opac_ptr + g, tl.where(keep, no * scale[:, None], 0.0).to(opac_ptr.dtype.element_ty), mask=mask)
        tl.store(nop_ptr + g, tl.where(vis2, no, 0.0).to(nop_ptr.dtype.element_ty), mask=mask)
        # Cov head: scales = anchor scale * sigmoid, quats normalised.
        hr = tl.maximum(_hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1c_ptr, b1c_ptr, H_C, IN_C, IN_C, BLOCK_M,
                                IN_PAD, H_PAD, DT), 0.0)
        for j in tl.static_range(3):
            sj = tl.load(ascales_ptr + m * 6 + 3 + j, mask=mask_m, other=0.0).to(DT)
            z = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, j, H_PAD, K_PAD, DT)
            _store_comp(scales_ptr, g, mask, tl.where(vis2, sj[:, None] * _sigmoid(z), 0.0), 3, j)
        q0 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 3, H_PAD, K_PAD, DT)
        q1 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 4, H_PAD, K_PAD, DT)
        q2 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 5, H_PAD, K_PAD, DT)
        q3 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 6, H_PAD, K_PAD, DT)
        qinv = 1.0 / tl.maximum(tl.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3), EPS)
        _store_comp(quats_ptr, g, mask, tl.where(vis2, q0 * qinv, 1.0), 4, 0)
        _store_comp(quats_ptr, g, mask, tl.where(vis2, q1 * qinv, 0.0), 4, 1)
        _store_comp(quats_ptr, g, mask, tl.where(vis2, q2 * qinv, 0.0), 4, 2)
        _store_comp(quats_ptr, g, mask, tl.where(vis2, q3 * qinv, 0.0), 4, 3)
        # Color head (appearance folded into b1).
        hr = tl.maximum(_hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1l_ptr, b1l_ptr, H_L, IN_L, ROW_L, BLOCK_M,
                                IN_PAD, H_PAD, DT), 0.0)
        for j in tl.static_range(3):
            z = _out(hr, w2l_ptr, b2l_ptr, H_L, K, 3, j, H_PAD, K_PAD, DT)
            _store_comp(colors_ptr, g, mask, tl.where(vis2, _sigmoid(z), 0.0), 3, j)
    else:
        zero = tl.zeros((BLOCK_M, K_PAD), tl.float32)
        tl.store(opac_ptr + g, zero.to(opac_ptr.dtype.element_ty), mask=mask)
        tl.store(nop_ptr + g, zero.to(nop_ptr.dtype.element_ty), mask=mask)
        for j in tl.static_range(3):
            _store_comp(scales_ptr, g, mask, zero, 3, j)
            _store_comp(colors_ptr, g, mask, zero, 3, j)
        _store_comp(quats_ptr, g, mask, zero + 1.0, 4, 0)
        for j in tl.static_range(1, 4):
            _store_comp(quats_ptr, g, mask, zero, 4, j)


# ----------------------------------------------------------------------------------------------------------
# Decode backward.


@triton.jit
def _scale_grad(hr, keep, v_scales_ptr, g, mask, s, w2_ptr, b2_ptr, H, K, J: tl.constexpr, H_PAD: tl.constexpr,
                K_PAD: tl.constexpr, DT: tl.constexpr):
    """scales_J = s * sigmoid(z_J): (v_z_J, v_s per anchor)."""
    sg = _sigmoid(_out(hr, w2_ptr, b2_ptr, H, K, 7, J, H_PAD, K_PAD, DT))
    v = tl.load(v_scales_ptr + g * 3 + J, mask=mask, other=0.0).to(DT)
    v_z = tl.where(keep, v * s[:, None] * sg * (1.0 - sg), 0.0)
    return v_z, tl.sum(tl.where(keep, v * sg, 0.0), axis=1)


@triton.jit
def _color_grad(hr, keep, v_colors_ptr, g, mask, w2_ptr, b2_ptr, H, K, J: tl.constexpr, H_PAD: tl.constexpr,
                K_PAD: tl.constexpr, DT: tl.constexpr):
    sg = _sigmoid(_out(hr, w2_ptr, b2_ptr, H, K, 3, J, H_PAD, K_PAD, DT))
    v = tl.load(v_colors_ptr + g * 3 + J, mask=mask, other=0.0).to(DT)
    return tl.where(keep, v * sg * (1.0 - sg), 0.0)


@triton.jit
def _mean_grad(v_means_ptr, offsets_ptr, v_offsets_ptr, g, mask, keep, s, J: tl.constexpr, DT: tl.constexpr):
    """means_J = a_J + offset_J * s_J (kept Gaussians): writes v_offset_J; returns (v_a_J, v_s_J) per anchor."""
    v = tl.where(keep, tl.load(v_means_ptr + g * 3 + J, mask=mask, other=0.0).to(DT), 0.0)
    off = tl.load(offsets_ptr + g * 3 + J, mask=mask, other=0.0).to(DT)
    tl.store(v_offsets_ptr + g * 3 + J, (v * s[:, None]).to(v_offsets_ptr.dtype.element_ty), mask=mask)
    return tl.sum(v, axis=1), tl.sum(v * off, axis=1)


@triton.jit
def _column(t, c, col):
    return tl.sum(tl.where(c == col, t, 0.0), axis=1)


@triton.jit
def _anchor_decode_bwd_kernel(
        v_means_ptr, v_quats_ptr, v_scales_ptr, v_opac_ptr, v_colors_ptr,
        anchors_ptr, feats_ptr, offsets_ptr, ascales_ptr, cam_ptr,
        w1o_ptr, b1o_ptr, w2o_ptr, b2o_ptr, w1c_ptr, b1c_ptr, w2c_ptr, b2c_ptr, w1l_ptr, b1l_ptr, w2l_ptr, b2l_ptr,
        os_ptr, vis_ptr, bo_ptr, bd_ptr, tau_ptr,
        v_anchors_ptr, v_feats_ptr, v_offsets_ptr, v_ascales_ptr, v_os_ptr, v_bo_ptr, v_bd_ptr,
        gz_ptr, hr_ptr, vh_ptr, xd_ptr,
        M, C, K, H_O, H_C, H_L, IN_O, IN_C, IN_L, ROW_L, tau_hi, tau_lo, lam_hi, lam_lo,
        HAS_OS: tl.constexpr, HAS_VIS: tl.constexpr, HAS_BLEND: tl.constexpr, HAS_TAU_T: tl.constexpr,
        MODE: tl.constexpr, DT: tl.constexpr, BLOCK_M: tl.constexpr, IN_PAD: tl.constexpr, H_PAD: tl.constexpr,
        K_PAD: tl.constexpr, ZW: tl.constexpr):
    # Buffers for the launcher's weight gradients: gz (M, 11K) pre-activation gradients in w2's row layout
    # [opacity K | cov 7K | color 3K], hr / vh (M, H_O + H_C + H_L) the ReLU outputs and the pre-activation
    # gradients of the three hidden layers, xd (M, 4) the view direction and distance.
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = m < M
    k = tl.arange(0, K_PAD)[None, :]
    g = m[:, None] * K + k
    mask = mask_m[:, None] & (k < K)
    NZ = 11 * K
    HT = H_O + H_C + H_L
    ax, ay, az, vx, vy, vz, d, inv = _view(anchors_ptr, cam_ptr, m, mask_m, DT)
    dx, dy, dz = vx * inv, vy * inv, vz * inv
    tl.store(xd_ptr + m * 4 + 0, dx, mask=mask_m)
    tl.store(xd_ptr + m * 4 + 1, dy, mask=mask_m)
    tl.store(xd_ptr + m * 4 + 2, dz, mask=mask_m)
    tl.store(xd_ptr + m * 4 + 3, d, mask=mask_m)
    vis = _visible(vis_ptr, m, mask_m, HAS_VIS)
    if tl.sum(vis.to(tl.int32), axis=0) > 0:  # a tile without visible anchors runs no MLP
        h = tl.arange(0, H_PAD)[None, :]
        # Opacity head: opacity = tanh(z) * scale on kept Gaussians.
        hpre = _hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1o_ptr, b1o_ptr, H_O, IN_O, IN_O, BLOCK_M, IN_PAD,
                       H_PAD, DT)
        hr = tl.maximum(hpre, 0.0)
        no = _tanh(_out(hr, w2o_ptr, b2o_ptr, H_O, K, 1, 0, H_PAD, K_PAD, DT))
        keep = (no > 0) & vis[:, None]
        tau, lam = _tau_lambda(tau_ptr, tau_hi, tau_lo, lam_hi, lam_lo, HAS_TAU_T, DT)
        scale, os, w, dist, slope, decay = _scale(os_ptr, bo_ptr, bd_ptr, m, mask_m, tau, lam, d * 0.0 + 1.0,
                                                  HAS_OS, HAS_BLEND, MODE, DT)
        v_op = tl.where(keep, tl.load(v_opac_ptr + g, mask=mask, other=0.0).to(DT), 0.0)
        v_z = v_op * scale[:, None] * (1.0 - no * no)
        v_scale = tl.sum(v_op * no, axis=1)
        tl.store(gz_ptr + m[:, None] * NZ + k, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hpre_o = tl.where(hpre > 0, _out_vjp(v_z, w2o_ptr, H_O, K, 1, 0, H_PAD, K_PAD, DT), 0.0)
        hmask = mask_m[:, None] & (h < H_O)
        tl.store(hr_ptr + m[:, None] * HT + h, hr, mask=hmask)
        tl.store(vh_ptr + m[:, None] * HT + h, v_hpre_o, mask=hmask)
        # Cov head: scales and quaternions.
        hpre = _hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1c_ptr, b1c_ptr, H_C, IN_C, IN_C, BLOCK_M, IN_PAD,
                       H_PAD, DT)
        hr = tl.maximum(hpre, 0.0)
        s3 = tl.load(ascales_ptr + m * 6 + 3, mask=mask_m, other=0.0).to(DT)
        s4 = tl.load(ascales_ptr + m * 6 + 4, mask=mask_m, other=0.0).to(DT)
        s5 = tl.load(ascales_ptr + m * 6 + 5, mask=mask_m, other=0.0).to(DT)
        gz_c = gz_ptr + m[:, None] * NZ + K + k * 7
        v_z, v_s3 = _scale_grad(hr, keep, v_scales_ptr, g, mask, s3, w2c_ptr, b2c_ptr, H_C, K, 0, H_PAD, K_PAD, DT)
        tl.store(gz_c + 0, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr = _out_vjp(v_z, w2c_ptr, H_C, K, 7, 0, H_PAD, K_PAD, DT)
        v_z, v_s4 = _scale_grad(hr, keep, v_scales_ptr, g, mask, s4, w2c_ptr, b2c_ptr, H_C, K, 1, H_PAD, K_PAD, DT)
        tl.store(gz_c + 1, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 1, H_PAD, K_PAD, DT)
        v_z, v_s5 = _scale_grad(hr, keep, v_scales_ptr, g, mask, s5, w2c_ptr, b2c_ptr, H_C, K, 2, H_PAD, K_PAD, DT)
        tl.store(gz_c + 2, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 2, H_PAD, K_PAD, DT)
        q0 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 3, H_PAD, K_PAD, DT)
        q1 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 4, H_PAD, K_PAD, DT)
        q2 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 5, H_PAD, K_PAD, DT)
        q3 = _out(hr, w2c_ptr, b2c_ptr, H_C, K, 7, 6, H_PAD, K_PAD, DT)
        qn = tl.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
        qc = tl.maximum(qn, EPS)
        vq0 = tl.where(keep, tl.load(v_quats_ptr + g * 4 + 0, mask=mask, other=0.0).to(DT), 0.0)
        vq1 = tl.where(keep, tl.load(v_quats_ptr + g * 4 + 1, mask=mask, other=0.0).to(DT), 0.0)
        vq2 = tl.where(keep, tl.load(v_quats_ptr + g * 4 + 2, mask=mask, other=0.0).to(DT), 0.0)
        vq3 = tl.where(keep, tl.load(v_quats_ptr + g * 4 + 3, mask=mask, other=0.0).to(DT), 0.0)
        # q / max(|q|, eps): v_q / c, plus the norm's path only while |q| >= eps (clamp_min's gradient).
        v_n = tl.where(qn >= EPS, -(vq0 * q0 + vq1 * q1 + vq2 * q2 + vq3 * q3) / (qc * qc), 0.0)
        v_n = tl.where(qn > 0, v_n / tl.maximum(qn, EPS), 0.0)
        v_z = vq0 / qc + v_n * q0
        tl.store(gz_c + 3, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 3, H_PAD, K_PAD, DT)
        v_z = vq1 / qc + v_n * q1
        tl.store(gz_c + 4, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 4, H_PAD, K_PAD, DT)
        v_z = vq2 / qc + v_n * q2
        tl.store(gz_c + 5, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 5, H_PAD, K_PAD, DT)
        v_z = vq3 / qc + v_n * q3
        tl.store(gz_c + 6, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2c_ptr, H_C, K, 7, 6, H_PAD, K_PAD, DT)
        v_hpre_c = tl.where(hpre > 0, v_hr, 0.0)
        hmask = mask_m[:, None] & (h < H_C)
        tl.store(hr_ptr + m[:, None] * HT + H_O + h, hr, mask=hmask)
        tl.store(vh_ptr + m[:, None] * HT + H_O + h, v_hpre_c, mask=hmask)
        # Color head.
        hpre = _hidden(feats_ptr, m, mask_m, C, dx, dy, dz, d, w1l_ptr, b1l_ptr, H_L, IN_L, ROW_L, BLOCK_M, IN_PAD,
                       H_PAD, DT)
        hr = tl.maximum(hpre, 0.0)
        gz_l = gz_ptr + m[:, None] * NZ + 8 * K + k * 3
        v_z = _color_grad(hr, keep, v_colors_ptr, g, mask, w2l_ptr, b2l_ptr, H_L, K, 0, H_PAD, K_PAD, DT)
        tl.store(gz_l + 0, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr = _out_vjp(v_z, w2l_ptr, H_L, K, 3, 0, H_PAD, K_PAD, DT)
        v_z = _color_grad(hr, keep, v_colors_ptr, g, mask, w2l_ptr, b2l_ptr, H_L, K, 1, H_PAD, K_PAD, DT)
        tl.store(gz_l + 1, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2l_ptr, H_L, K, 3, 1, H_PAD, K_PAD, DT)
        v_z = _color_grad(hr, keep, v_colors_ptr, g, mask, w2l_ptr, b2l_ptr, H_L, K, 2, H_PAD, K_PAD, DT)
        tl.store(gz_l + 2, v_z.to(gz_ptr.dtype.element_ty), mask=mask)
        v_hr += _out_vjp(v_z, w2l_ptr, H_L, K, 3, 2, H_PAD, K_PAD, DT)
        v_hpre_l = tl.where(hpre > 0, v_hr, 0.0)
        hmask = mask_m[:, None] & (h < H_L)
        tl.store(hr_ptr + m[:, None] * HT + H_O + H_C + h, hr, mask=hmask)
        tl.store(vh_ptr + m[:, None] * HT + H_O + H_C + h, v_hpre_l, mask=hmask)
        # Inputs' gradient v_X in chunks of 16 columns: feats directly; dir = view / max(d, eps) and d = |view|
        # back to the anchor.
        v_dx = d * 0.0
        v_dy = d * 0.0
        v_dz = d * 0.0
        v_dd = d * 0.0
        for c0 in tl.static_range(0, IN_PAD, 16):
            c = c0 + tl.arange(0, 16)[None, :]
            v_x = _dot(v_hpre_o, _w1(w1o_ptr, H_O, IN_O, IN_O, c0, False, H_PAD, DT), DT)
            v_x += _dot(v_hpre_c, _w1(w1c_ptr, H_C, IN_C, IN_C, c0, False, H_PAD, DT), DT)
            v_x += _dot(v_hpre_l, _w1(w1l_ptr, H_L, IN_L, ROW_L, c0, False, H_PAD, DT), DT)
            tl.store(v_feats_ptr + m[:, None] * C + c, v_x.to(v_feats_ptr.dtype.element_ty),
                     mask=mask_m[:, None] & (c < C))
            v_dx += _column(v_x, c, C)
            v_dy += _column(v_x, c, C + 1)
            v_dz += _column(v_x, c, C + 2)
            v_dd += _column(v_x, c, C + 3)
        v_d = v_dd - tl.where(d >= EPS, (v_dx * vx + v_dy * vy + v_dz * vz) * inv * inv, 0.0)
        v_d = tl.where(d > 0, v_d / tl.where(d > 0, d, 1.0), 0.0)  # |view|'s gradient is 0 at 0, as torch's
        # Means (kept Gaussians only) and the anchor scales.
        s0 = tl.load(ascales_ptr + m * 6 + 0, mask=mask_m, other=0.0).to(DT)
        s1 = tl.load(ascales_ptr + m * 6 + 1, mask=mask_m, other=0.0).to(DT)
        s2 = tl.load(ascales_ptr + m * 6 + 2, mask=mask_m, other=0.0).to(DT)
        va0, vs0 = _mean_grad(v_means_ptr, offsets_ptr, v_offsets_ptr, g, mask, keep, s0, 0, DT)
        va1, vs1 = _mean_grad(v_means_ptr, offsets_ptr, v_offsets_ptr, g, mask, keep, s1, 1, DT)
        va2, vs2 = _mean_grad(v_means_ptr, offsets_ptr, v_offsets_ptr, g, mask, keep, s2, 2, DT)
        ty = v_anchors_ptr.dtype.element_ty
        tl.store(v_anchors_ptr + m * 3 + 0, (va0 + v_dx * inv + v_d * vx).to(ty), mask=mask_m)
        tl.store(v_anchors_ptr + m * 3 + 1, (va1 + v_dy * inv + v_d * vy).to(ty), mask=mask_m)
        tl.store(v_anchors_ptr + m * 3 + 2, (va2 + v_dz * inv + v_d * vz).to(ty), mask=mask_m)
        ty = v_ascales_ptr.dtype.element_ty
        tl.store(v_ascales_ptr + m * 6 + 0, vs0.to(ty), mask=mask_m)
        tl.store(v_ascales_ptr + m * 6 + 1, vs1.to(ty), mask=mask_m)
        tl.store(v_ascales_ptr + m * 6 + 2, vs2.to(ty), mask=mask_m)
        tl.store(v_ascales_ptr + m * 6 + 3, v_s3.to(ty), mask=mask_m)
        tl.store(v_ascales_ptr + m * 6 + 4, v_s4.to(ty), mask=mask_m)
        tl.store(v_ascales_ptr + m * 6 + 5, v_s5.to(ty), mask=mask_m)
        # scale = opacity_scale * blend weight.
        if HAS_OS:
            tl.store(v_os_ptr + m, (v_scale * w).to(v_os_ptr.dtype.element_ty), mask=mask_m)
        if HAS_BLEND:
            v_bo, v_bd = _blend_vjp(v_scale * os, w, dist, slope, decay, lam)
            tl.store(v_bo_ptr + m, v_bo.to(v_bo_ptr.dtype.element_ty), mask=mask_m)
            tl.store(v_bd_ptr + m, v_bd.to(v_bd_ptr.dtype.element_ty), mask=mask_m)
    else:
        # No visible anchor: every gradient of the tile is 0 (the buffers too: the launcher's matmuls read them).
        _zero_rows(v_anchors_ptr, m, mask_m, 3, BLOCK_M, ZW)
        _zero_rows(v_feats_ptr, m, mask_m, C, BLOCK_M, ZW)
        _zero_rows(v_offsets_ptr, m, mask_m, 3 * K, BLOCK_M, ZW)
        _zero_rows(v_ascales_ptr, m, mask_m, 6, BLOCK_M, ZW)
        _zero_rows(gz_ptr, m, mask_m, NZ, BLOCK_M, ZW)
        _zero_rows(hr_ptr, m, mask_m, HT, BLOCK_M, ZW)
        _zero_rows(vh_ptr, m, mask_m, HT, BLOCK_M, ZW)
        if HAS_OS:
            _zero_rows(v_os_ptr, m, mask_m, 1, BLOCK_M, ZW)
        if HAS_BLEND:
            _zero_rows(v_bo_ptr, m, mask_m, 1, BLOCK_M, ZW)
            _zero_rows(v_bd_ptr, m, mask_m, 1, BLOCK_M, ZW)


# ----------------------------------------------------------------------------------------------------------
# Decode launchers.


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every dimension >= 16


class _Decode:
    """Sizes, flags and the kernel arguments the forward and backward launchers share."""

    def __init__(self, anchors, feats, offsets, anchor_scales, cam_center, mlp, appearance, opacity_scale, visible,
                 blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode, opacity_dist, cov_dist,
                 color_dist):
        self.math, dt = _math_dtype(feats)
        self.m, self.c = feats.shape
        self.k = offsets.shape[1]
        self.h = [mlp[0].shape[0], mlp[4].shape[0], mlp[8].shape[0]]
        self.n_in = [self.c + 3 + int(opacity_dist), self.c + 3 + int(cov_dist), self.c + 3 + int(color_dist)]
        self.appearance = appearance
        mlp = [w.contiguous() for w in mlp]
        if appearance is not None:
            # The appearance embedding is the same for every anchor: its product with w1 is part of b1.
            w_app = mlp[8][:, self.n_in[2]:].to(self.math)
            mlp[9] = mlp[9].to(self.math) + w_app @ appearance.to(self.math)
        self.mlp = mlp
        self.tensors = [t.contiguous() for t in (anchors, feats, offsets, anchor_scales, cam_center)]
        feats = self.tensors[1]
        self.optional = [t.contiguous() if t is not None else feats for t in (opacity_scale, visible, blend_offset,
                                                                                  blend_decay, tau_t)]
        if visible is not None:
            self.optional[1] = self.optional[1].view(torch.uint8)
        tau_hi, tau_lo = _split(tau)
        lam_hi, lam_lo = _split(lambda_decay)
        self.scalars = [self.m, self.c, self.k, *self.h, *self.n_in, mlp[8].shape[1], tau_hi, tau_lo, lam_hi, lam_lo]
        # 16 anchors per program, the smallest tl.dot tile. ptxas for sm_90 at C = H = 32, K = 10, fp32: forward
        # 146 registers (4 warps), backward 244 (8 warps; 255 and spills with 4), no spills.
        self.block_m = 16
        self.flags = dict(HAS_OS=opacity_scale is not None, HAS_VIS=visible is not None,
                          HAS_BLEND=blend_offset is not None, HAS_TAU_T=tau_t is not None, MODE=blend_mode, DT=dt,
                          BLOCK_M=self.block_m, IN_PAD=16 * triton.cdiv(self.c + 4, 16), H_PAD=_pad(max(self.h)),
                          K_PAD=_pad(self.k))
        self.grid = (triton.cdiv(self.m, self.block_m),)


_DecodeOut = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.triton_op("pyops::anchor_decode_fwd_triton", mutates_args=())
def anchor_decode_fwd_triton(
        anchors: Tensor, feats: Tensor, offsets: Tensor, anchor_scales: Tensor, cam_center: Tensor,
        w1_opacity: Tensor, b1_opacity: Tensor, w2_opacity: Tensor, b2_opacity: Tensor,
        w1_cov: Tensor, b1_cov: Tensor, w2_cov: Tensor, b2_cov: Tensor,
        w1_color: Tensor, b1_color: Tensor, w2_color: Tensor, b2_color: Tensor,
        appearance: Optional[Tensor], opacity_scale: Optional[Tensor], visible: Optional[Tensor],
        blend_offset: Optional[Tensor], blend_decay: Optional[Tensor], tau_t: Optional[Tensor], tau: float,
        lambda_decay: float, blend_mode: int, opacity_dist: bool, cov_dist: bool, color_dist: bool) -> _DecodeOut:
    m, k = offsets.shape[0], offsets.shape[1]
    new = lambda *shape: feats.new_empty(shape)  # noqa: E731
    out = (new(m, k, 3), new(m, k, 4), new(m, k, 3), new(m, k), new(m, k, 3), new(m, k))
    if m == 0:
        return out
    mlp = (w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov, b1_cov, w2_cov, b2_cov, w1_color, b1_color,
           w2_color, b2_color)
    p = _Decode(anchors, feats, offsets, anchor_scales, cam_center, mlp, appearance, opacity_scale, visible,
                blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode, opacity_dist, cov_dist, color_dist)
    torch.library.wrap_triton(_anchor_decode_fwd_kernel)[p.grid](
        *p.tensors, *p.mlp, *p.optional, *out, *p.scalars, **p.flags, num_warps=4)
    return out


_DecodeGrads = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                     Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.triton_op("pyops::anchor_decode_bwd_triton", mutates_args=())
def anchor_decode_bwd_triton(
        v_means: Tensor, v_quats: Tensor, v_scales: Tensor, v_opacities: Tensor, v_colors: Tensor,
        anchors: Tensor, feats: Tensor, offsets: Tensor, anchor_scales: Tensor, cam_center: Tensor,
        w1_opacity: Tensor, b1_opacity: Tensor, w2_opacity: Tensor, b2_opacity: Tensor,
        w1_cov: Tensor, b1_cov: Tensor, w2_cov: Tensor, b2_cov: Tensor,
        w1_color: Tensor, b1_color: Tensor, w2_color: Tensor, b2_color: Tensor,
        appearance: Optional[Tensor], opacity_scale: Optional[Tensor], visible: Optional[Tensor],
        blend_offset: Optional[Tensor], blend_decay: Optional[Tensor], tau_t: Optional[Tensor], tau: float,
        lambda_decay: float, blend_mode: int, opacity_dist: bool, cov_dist: bool, color_dist: bool) -> _DecodeGrads:
    mlp = (w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov, b1_cov, w2_cov, b2_cov, w1_color, b1_color,
           w2_color, b2_color)
    p = _Decode(anchors, feats, offsets, anchor_scales, cam_center, mlp, appearance, opacity_scale, visible,
                blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode, opacity_dist, cov_dist, color_dist)
    m, k, ht = p.m, p.k, sum(p.h)
    # Absent optional inputs get distinct empty tensors (outputs of a custom op may not alias each other).
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else feats.new_empty(0)  # noqa
    v_anchors, v_feats, v_offsets, v_ascales = (like(t) for t in (anchors, feats, offsets, anchor_scales))
    v_os, v_bo, v_bd = like(opacity_scale), like(blend_offset), like(blend_decay)
    gz = torch.empty(m, 11 * k, dtype=p.math, device=feats.device)
    hr = torch.empty(m, ht, dtype=p.math, device=feats.device)
    vh = torch.empty(m, ht, dtype=p.math, device=feats.device)
    xd = torch.empty(m, 4, dtype=p.math, device=feats.device)
    if m:
        grads = [t.contiguous() for t in (v_means, v_quats, v_scales, v_opacities, v_colors)]
        torch.library.wrap_triton(_anchor_decode_bwd_kernel)[p.grid](
            *grads, *p.tensors, *p.mlp, *p.optional, v_anchors, v_feats, v_offsets, v_ascales,
            v_os if opacity_scale is not None else gz, v_bo if blend_offset is not None else gz,
            v_bd if blend_decay is not None else gz, gz, hr, vh, xd, *p.scalars, **p.flags, ZW=16, num_warps=8)
    # Weight gradients: dense matmuls over the anchors (deterministic).
    fm = p.tensors[1].to(p.math)
    h_o, h_c, _h_l = p.h
    hs = [slice(0, h_o), slice(h_o, h_o + h_c), slice(h_o + h_c, ht)]
    zs = [slice(0, k), slice(k, 8 * k), slice(8 * k, 11 * k)]
    out = []
    v_b1_color = None
    for head, dist in enumerate((opacity_dist, cov_dist, color_dist)):
        w1, b1, w2, b2 = mlp[4 * head:4 * head + 4]
        v_hpre, h_out, g = vh[:, hs[head]], hr[:, hs[head]], gz[:, zs[head]]
        v_b1 = v_hpre.sum(0)
        parts = [v_hpre.t() @ fm, v_hpre.t() @ xd[:, :3 + int(dist)]]
        if head == 2 and appearance is not None:
            parts.append(torch.outer(v_b1, appearance.to(p.math)))
            v_b1_color = v_b1
        out += [torch.cat(parts, 1).to(w1.dtype), v_b1.to(b1.dtype), (g.t() @ h_out).to(w2.dtype),
                g.sum(0).to(b2.dtype)]
    if appearance is not None:
        v_app = (w1_color[:, p.n_in[2]:].to(p.math).t() @ v_b1_color).to(appearance.dtype)
    else:
        v_app = feats.new_empty(0)
    return (v_anchors, v_feats, v_offsets, v_ascales, *out, v_app, v_os, v_bo, v_bd)
