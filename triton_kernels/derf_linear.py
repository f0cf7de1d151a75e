"""Triton Derf + Linear, y = derf(x) @ W^T + b, that never stores derf(x), registered as torch.library.triton_op.

Forward: one GEMM whose prologue is the Derf: each x tile [BLOCK_M, BLOCK_K] is loaded, derf'ed in fp32, rounded
to the input dtype (as the unfused pair rounds derf(x)) and fed to tl.dot (tensor cores) against W^T.
Backward: the dgrad GEMM dn = dy @ W accumulates in fp32 and its epilogue applies the Derf backward on the tile:
v_x = dn * weight * erf'(z) * alpha, the tile's column sums of the alpha/shift/weight/bias gradient terms go to
a per-row-block partials buffer (no atomics; summed afterwards in a fixed order), and derf(x) is recomputed into
a buffer that lives only in this backward for v_W = dy^T @ derf(x) (torch.matmul); v_b = dy.sum(0).
fp32 inputs use TF32 in tl.dot exactly when torch.backends.cuda.matmul.allow_tf32 lets torch's matmul do so.
"""

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

TWO_OVER_SQRT_PI: tl.constexpr = tl.constexpr(2.0 / math.sqrt(math.pi))


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row blocks share each column block in turn, so W's tiles stay in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    return pid_m, pid_n


@triton.jit
def _params(prm_ptr, c, mask, C):
    # prm [4, C] fp32: alpha, shift, weight, bias expanded per channel (host side).
    a = tl.load(prm_ptr + c, mask=mask, other=0.0)
    s = tl.load(prm_ptr + C + c, mask=mask, other=0.0)
    w = tl.load(prm_ptr + 2 * C + c, mask=mask, other=0.0)
    b = tl.load(prm_ptr + 3 * C + c, mask=mask, other=0.0)
    return a, s, w, b


@triton.jit
def _fwd_kernel(x_ptr, lw_ptr, lb_ptr, y_ptr, prm_ptr, M, C, OUT, HAS_LINEAR_BIAS: tl.constexpr,
                INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, OUT, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < C
        a, s, w, b = _params(prm_ptr, rk[None, :], k_mask[None, :], C)
        x = tl.load(x_ptr + rm[:, None] * C + rk[None, :], mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)
        n = tl.where(k_mask[None, :], w * tl.math.erf(a * x + s) + b, 0.0)  # the Derf prologue, fp32
        wt = tl.load(lw_ptr + rn[None, :] * C + rk[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0.0)
        n = n.to(lw_ptr.dtype.element_ty)
        if UPCAST_DOT:
            n, wt = n.to(tl.float32), wt.to(tl.float32)
        acc = tl.dot(n, wt, acc, input_precision=INPUT_PRECISION)
    if HAS_LINEAR_BIAS:
        acc += tl.load(lb_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * OUT + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _bwd_kernel(dy_ptr, lw_ptr, x_ptr, v_x_ptr, n_ptr, part_ptr, prm_ptr, M, C, OUT, INPUT_PRECISION: tl.constexpr,
                UPCAST_DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Tile [BLOCK_M rows, BLOCK_N channels] of dn = dy @ W, reducing over the OUT outputs in BLOCK_K steps.
    pid_m, pid_n = _tile_ids(M, C, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    c_mask = rc < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for o0 in range(0, OUT, BLOCK_K):
        ro = o0 + tl.arange(0, BLOCK_K)
        o_mask = ro < OUT
        dy = tl.load(dy_ptr + rm[:, None] * OUT + ro[None, :], mask=m_mask[:, None] & o_mask[None, :], other=0.0)
        wt = tl.load(lw_ptr + ro[:, None] * C + rc[None, :], mask=o_mask[:, None] & c_mask[None, :], other=0.0)
        if UPCAST_DOT:
            dy, wt = dy.to(tl.float32), wt.to(tl.float32)
        acc = tl.dot(dy, wt, acc, input_precision=INPUT_PRECISION)
    # Epilogue: the Derf backward on dn (fp32), then derf(x) for the weight gradient.
    mask = m_mask[:, None] & c_mask[None, :]
    a, s, w, b = _params(prm_ptr, rc[None, :], c_mask[None, :], C)
    offs = rm[:, None] * C + rc[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = a * x + s
    e = tl.math.erf(z)
    dn = tl.where(mask, acc, 0.0)
    v_z = dn * w * TWO_OVER_SQRT_PI * tl.exp(-z * z)
    tl.store(v_x_ptr + offs, (v_z * a).to(v_x_ptr.dtype.element_ty), mask=mask)
    tl.store(n_ptr + offs, (w * e + b).to(n_ptr.dtype.element_ty), mask=mask)
    out = part_ptr + pid_m.to(tl.int64) * 4 * C + rc
    tl.store(out, tl.sum(v_z * x, axis=0), mask=c_mask)
    tl.store(out + C, tl.sum(v_z, axis=0), mask=c_mask)
    tl.store(out + 2 * C, tl.sum(dn * e, axis=0), mask=c_mask)
    tl.store(out + 3 * C, tl.sum(dn, axis=0), mask=c_mask)


def _packed_params(x: Tensor, alpha, shift, weight, bias) -> Tensor:
    """[4, C] fp32: alpha, shift, weight (ones if absent), bias (zeros if absent), scalars broadcast."""
    C = x.shape[1]
    prm = torch.empty(4, C, dtype=torch.float32, device=x.device)
    prm[0].copy_(alpha.reshape(-1).expand(C))
    prm[1].copy_(shift.reshape(-1).expand(C))
    if weight is not None:
        prm[2].copy_(weight.reshape(-1))
    else:
        prm[2].fill_(1.0)
    if bias is not None:
        prm[3].copy_(bias.reshape(-1))
    else:
        prm[3].fill_(0.0)
    return prm


def _dot_flags(x: Tensor) -> dict:
    """fp32 operands use TF32 when torch's own matmul would; Triton's CPU interpreter multiplies bf16 operands
    wrongly (garbage of magnitude 1e10, triton 3.8), so there they are widened to fp32 first (exact: same
    products, fp32 accumulation either way)."""
    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(INPUT_PRECISION="tf32" if tf32 else "ieee", UPCAST_DOT=x.device.type != "cuda" and
                x.dtype == torch.bfloat16)


def _config(dtype: torch.dtype, device: torch.device):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): Triton's tutorial GEMM shapes; small in the interpreter."""
    if device.type != "cuda":
        return 16, 32, 32, 1, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 3
    return 64, 128, 64, 4, 3


@torch.library.triton_op("pyops::derf_linear_fwd_triton", mutates_args=())
def derf_linear_fwd_triton(x: Tensor, alpha: Tensor, shift: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                           linear_weight: Tensor, linear_bias: Optional[Tensor]) -> Tensor:
    M, C = x.shape
    OUT = linear_weight.shape[0]
    y = torch.empty(M, OUT, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    xc, lw = x.contiguous(), linear_weight.contiguous()
    lb = linear_bias.contiguous() if linear_bias is not None else lw
    prm = _packed_params(xc, alpha, shift, weight, bias)
    bm, bn, bk, warps, stages = _config(x.dtype, x.device)
    grid = (triton.cdiv(M, bm) * triton.cdiv(OUT, bn),)
    torch.library.wrap_triton(_fwd_kernel)[grid](
        xc, lw, lb, y, prm, M, C, OUT, HAS_LINEAR_BIAS=linear_bias is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps,
        num_stages=stages, **_dot_flags(x))
    return y


@torch.library.triton_op("pyops::derf_linear_bwd_triton", mutates_args=())
def derf_linear_bwd_triton(v_y: Tensor, x: Tensor, alpha: Tensor, shift: Tensor, weight: Optional[Tensor],
                           bias: Optional[Tensor], linear_weight: Tensor, has_linear_bias: bool
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    M, C = x.shape
    OUT = linear_weight.shape[0]
    xc, lw, dy = x.contiguous(), linear_weight.contiguous(), v_y.to(x.dtype).contiguous()
    v_x = torch.empty_like(xc)
    n = torch.empty_like(xc)  # derf(x), recomputed by the dgrad epilogue; freed when this backward returns
    bm, bn, bk, warps, stages = _config(x.dtype, x.device)
    row_blocks = triton.cdiv(M, bm)
    partials = torch.zeros(max(row_blocks, 1), 4, C, dtype=torch.float32, device=x.device)
    if M > 0 and C > 0:
        prm = _packed_params(xc, alpha, shift, weight, bias)
        torch.library.wrap_triton(_bwd_kernel)[(row_blocks * triton.cdiv(C, bn),)](
            dy, lw, xc, v_x, n, partials, prm, M, C, OUT, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
            num_warps=warps, num_stages=stages, **_dot_flags(x))
    else:
        v_x.zero_()
        n.zero_()
    v_lw = dy.t().matmul(n)
    v_lb = dy.sum(0) if has_linear_bias else dy.new_empty(0)
    totals = partials.sum(0)  # the deterministic second stage

    def v_param(row: int, param: Optional[Tensor]) -> Tensor:
        if param is None:
            return torch.empty(0, dtype=alpha.dtype, device=x.device)
        g = totals[row] if param.numel() > 1 else totals[row].sum()
        return g.to(param.dtype).reshape(param.shape).clone()

    return v_x, v_param(0, alpha), v_param(1, shift), v_param(2, weight), v_param(3, bias), v_lw, v_lb
