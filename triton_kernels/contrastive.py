"""Triton kernels of pyops::contrastive_fwd and pyops::contrastive_bwd, registered as torch.library.triton_op so
torch.compile sees them. Same semantics as the native ops (pyops/reference/contrastive.py is the spec); the
N x M logits S = logit_scale * q k^T are never stored, only recomputed tile by tile (Inf-CL style).

Both kernels work on "owner" rows of A against all rows of B and are launched once for the rows (A = q, B = k)
and, when needed, once for the columns (A = k, B = q): every output element belongs to exactly one program, so
there are no atomics and reruns are bitwise identical.
- Forward: per owner row an online max / sum-exp (the logsumexp), the sum of its positive logits and their
  count; writes lse, npos and the loss.
- Backward: per owner row block and D chunk of the output, recompute the S tile, form
  G_ij = [npos_i > 0] v_i (p_ij - pos_ij / npos_i) + [npos_j > 0] v_j (pc_ij - pos_ij / npos_j) (symmetric in
  the two roles) and accumulate G_tile @ B_tile; v_A = logit_scale * acc. The row launch also writes per-row
  partials of v_logit_scale = sum_ij G_ij q_i.k_j, summed by torch in a fixed order.
FLOPs: forward 2NMD per launch; backward (2 ceil(D / BLOCK_DV) + 2) NMD per launch (the S tile is recomputed
for each output D chunk; one chunk for D <= 256 on GPU).
"""

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tests set this to (BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV) to force several tiles along every dimension.
BLOCK_OVERRIDE: Optional[Tuple[int, int, int, int]] = None
# Opt-in (PYOPS_CONTRASTIVE_AUTOTUNE=1): pick the block sizes per (D, dtypes) by timing the configs below on the
# first call (CUDA only; reruns are safe, the kernels write their outputs without accumulating into them).
AUTOTUNE = os.environ.get("PYOPS_CONTRASTIVE_AUTOTUNE", "0") == "1"


@triton.jit
def _logits_tile(a_ptr, b_ptr, rows, cols, NA, NB, D, sa0, sa1, sb0, sb1, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_M, BLOCK_N] tile of A B^T in fp32 (rows / cols: int64 indices; out-of-range ones read zeros)."""
    a_base = a_ptr + rows[:, None] * sa0
    b_base = b_ptr + cols[None, :] * sb0
    a_mask = (rows < NA)[:, None]
    b_mask = (cols < NB)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        a = tl.load(a_base + d[None, :] * sa1, mask=a_mask & d_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        b = tl.load(b_base + d[:, None] * sb1, mask=b_mask & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc


@triton.jit
def _contrastive_fwd_kernel(a_ptr, b_ptr, ga_ptr, gb_ptr, scale_ptr, loss_ptr, lse_ptr, npos_ptr, NA, NB, D,
                            sa0, sa1, sb0, sb1, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Program = BLOCK_M owner rows of A against all NB rows of B, in [BLOCK_M, BLOCK_N] logit tiles.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < NA
    ga = tl.load(ga_ptr + rows, mask=row_mask, other=0)
    scale = tl.load(scale_ptr)
    run_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_M,), tl.float32)  # sum_j exp(S_ij - run_max_i)
    pos_sum = tl.zeros((BLOCK_M,), tl.float32)
    npos = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, NB, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < NB
        gb = tl.load(gb_ptr + cols, mask=col_mask, other=0)
        s = scale * _logits_tile(a_ptr, b_ptr, rows, cols, NA, NB, D, sa0, sa1, sb0, sb1, UPCAST, PRECISION,
                                 BLOCK_M, BLOCK_N, BLOCK_D)
        s = tl.where(col_mask[None, :], s, float("-inf"))  # columns past NB stay out of the logsumexp
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        # Every tile holds a valid column, so new_max is finite for finite logits; the guard keeps
        # exp(-inf - -inf) = NaN out if the logits themselves are -inf.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(tl.exp(s - safe_max[:, None]), axis=1)
        run_max = new_max
        pos = (ga[:, None] == gb[None, :]) & col_mask[None, :]
        pos_sum += tl.sum(tl.where(pos, s, 0.0), axis=1)
        npos += tl.sum(pos.to(tl.float32), axis=1)
    lse = run_max + tl.log(run_sum)  # -inf when NB == 0, as torch.logsumexp over nothing
    loss = tl.where(npos > 0, lse - pos_sum / tl.maximum(npos, 1.0), 0.0)
    tl.store(loss_ptr + rows, loss, mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(npos_ptr + rows, npos, mask=row_mask)


@triton.jit
def _contrastive_bwd_kernel(a_ptr, b_ptr, ga_ptr, gb_ptr, scale_ptr, norm_ptr, v_own_ptr, lse_own_ptr,
                            npos_own_ptr, v_oth_ptr, lse_oth_ptr, npos_oth_ptr, v_a_ptr, part_ptr, NA, NB, D,
                            sa0, sa1, sb0, sb1, HAS_OWN: tl.constexpr, HAS_OTHER: tl.constexpr,
                            WRITE_PART: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_DV: tl.constexpr):
    # Program (row block, D chunk): v_A[rows, dv] = scale * norm * sum_j G'_ij B[j, dv], G' = G / norm.
    # "own" is the loss over A's rows (lse_own, npos_own, v_own per row i), "other" the loss over B's rows
    # (per column j). norm is a power of two >= every |v| (exact scaling): G' is O(1), so a 16-bit G' tile
    # for the tensor-core dot neither underflows nor overflows whatever the upstream gradient's size.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    dv = tl.program_id(1).to(tl.int64) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    row_mask = rows < NA
    dv_mask = dv < D
    ga = tl.load(ga_ptr + rows, mask=row_mask, other=0)
    scale = tl.load(scale_ptr)
    norm = tl.load(norm_ptr)
    inv_norm = 1.0 / norm
    if HAS_OWN:
        np_i = tl.load(npos_own_ptr + rows, mask=row_mask, other=0.0)
        has_i = np_i > 0
        w_i = tl.where(has_i, tl.load(v_own_ptr + rows, mask=row_mask, other=0.0) * inv_norm, 0.0)
        inv_np_i = tl.where(has_i, 1.0 / tl.maximum(np_i, 1.0), 0.0)
        lse_i = tl.where(has_i, tl.load(lse_own_ptr + rows, mask=row_mask, other=0.0), 0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    part = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, NB, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < NB
        gb = tl.load(gb_ptr + cols, mask=col_mask, other=0)
        dot = _logits_tile(a_ptr, b_ptr, rows, cols, NA, NB, D, sa0, sa1, sb0, sb1, UPCAST, PRECISION, BLOCK_M,
                           BLOCK_N, BLOCK_D)
        s = scale * dot
        pos = ((ga[:, None] == gb[None, :]) & col_mask[None, :]).to(tl.float32)
        g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if HAS_OWN:
            p = tl.exp(s - lse_i[:, None])
            g += w_i[:, None] * (p - pos * inv_np_i[:, None])
        if HAS_OTHER:
            np_j = tl.load(npos_oth_ptr + cols, mask=col_mask, other=0.0)
            has_j = np_j > 0
            w_j = tl.where(has_j, tl.load(v_oth_ptr + cols, mask=col_mask, other=0.0) * inv_norm, 0.0)
            inv_np_j = tl.where(has_j, 1.0 / tl.maximum(np_j, 1.0), 0.0)
            lse_j = tl.where(has_j, tl.load(lse_oth_ptr + cols, mask=col_mask, other=0.0), 0.0)
            pc = tl.exp(s - lse_j[None, :])
            g += w_j[None, :] * (pc - pos * inv_np_j[None, :])
        g = tl.where(row_mask[:, None] & col_mask[None, :], g, 0.0)
        if WRITE_PART:
            part += tl.sum(g * dot, axis=1)
        bv = tl.load(b_ptr + cols[:, None] * sb0 + dv[None, :] * sb1, mask=col_mask[:, None] & dv_mask[None, :],
                     other=0.0)  # [BLOCK_N, BLOCK_DV]
        gt = g.to(bv.dtype)  # 16-bit inputs: tensor-core dot, as torch's G @ k would run
        if UPCAST:
            gt = gt.to(tl.float32)
            bv = bv.to(tl.float32)
        acc = tl.dot(gt, bv, acc, input_precision=PRECISION, out_dtype=tl.float32)
    out = acc * (scale * norm)
    tl.store(v_a_ptr + rows[:, None] * D + dv[None, :], out.to(v_a_ptr.dtype.element_ty),
             mask=row_mask[:, None] & dv_mask[None, :])
    if WRITE_PART:
        tl.store(part_ptr + rows, part * norm, mask=row_mask & (tl.program_id(1) == 0))


def _tune_configs(shapes):
    return [triton.Config(dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV"), shape)), num_warps=warps,
                          num_stages=stages) for *shape, warps, stages in shapes]


# (BLOCK_M, BLOCK_N, BLOCK_D[, BLOCK_DV], num_warps, num_stages); configs that do not fit are skipped by Triton.
# Shapes that compile without spills for 16-bit inputs on sm_90 (a few spill for fp32 and simply lose).
_FWD_TUNED = triton.autotune(configs=_tune_configs([
    (128, 64, 64, 8, 3), (128, 64, 64, 8, 4), (64, 64, 64, 4, 3), (128, 64, 32, 8, 4), (128, 64, 32, 8, 3),
    (64, 64, 32, 4, 3), (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)]), key=["D", "PRECISION"])(_contrastive_fwd_kernel)
_BWD_TUNED = triton.autotune(configs=_tune_configs([
    (64, 64, 64, 256, 8, 2), (64, 64, 64, 128, 8, 2), (64, 32, 64, 256, 8, 2), (64, 64, 32, 256, 8, 3),
    (128, 32, 64, 128, 8, 2), (64, 32, 32, 128, 4, 2), (32, 32, 32, 128, 4, 2), (64, 64, 64, 128, 4, 2),
    (64, 32, 64, 512, 8, 2)]),  # the last: D <= 512 in one chunk (D = 768 in two), 250 registers
    key=["D", "PRECISION"])(_contrastive_bwd_kernel)


def _tuned(x: Tensor) -> bool:
    return AUTOTUNE and BLOCK_OVERRIDE is None and x.device.type == "cuda"


def _dot_flags(x: Tensor) -> dict:
    """fp32 operands use TF32 only when torch's own matmul would (off by default); Triton's CPU interpreter
    multiplies bf16 operands wrongly (triton 3.8), so there they are widened to fp32 first (exact: the same
    products, fp32 accumulation either way)."""
    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(PRECISION="tf32" if tf32 else "ieee", UPCAST=x.device.type != "cuda" and x.dtype == torch.bfloat16)


def _config(x: Tensor, dim: int, backward: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps, num_stages) for A = x.

    GPU values are untimed defaults for H100/H200 (no GPU was available when they were chosen): among Triton's
    shapes, those that compile for sm_90 without register spills (ptxas -v, triton 3.8) with the largest tiles.
    16-bit: forward 128 x 64 logit tiles, 64-wide D steps (wgmma, 178 registers); backward 64 x 64 tiles and
    output D chunks of 256 (236 registers), so D <= 256 needs one S recomputation and D = 768 three. fp32 runs
    IEEE FMA dots (or TF32 when torch's matmul does) with smaller tiles. The interpreter uses small tiles so
    that tests reach several tiles per dimension."""
    tf32 = _dot_flags(x)["PRECISION"] == "tf32"
    if x.device.type != "cuda":
        bm, bn, bd, bdv, warps, stages = 16, 32, 32, 32, 1, 1
    elif backward:
        bm, bn, bd, bdv, warps, stages = (64, 32, 64, 256, 8, 2) if x.dtype == torch.float32 else (
            64, 64, 64, 256, 8, 2)
    elif x.dtype == torch.float32 and not tf32:
        bm, bn, bd, bdv, warps, stages = 64, 32, 32, 0, 4, 3
    else:
        bm, bn, bd, bdv, warps, stages = (128, 64, 32, 0, 8, 3) if tf32 else (128, 64, 64, 0, 8, 3)
    bdv = min(bdv, max(16, triton.next_power_of_2(max(dim, 1))))
    if BLOCK_OVERRIDE is not None:
        bm, bn, bd, bdv = BLOCK_OVERRIDE
    return bm, bn, bd, bdv, warps, stages


def _dense_groups(qg: Tensor, kg: Tensor) -> Tuple[Tensor, Tensor]:
    """int32 ids with the same equalities as the int64 (qg, kg): the rank of their values. 32-bit compares in the
    tiles take about 60 fewer registers than int64 ones on sm_90 (one sort of N + M ids, no host sync)."""
    values, order = torch.sort(torch.cat([qg, kg]))
    # A new rank starts at each change of value in sorted order (the first entry's rank is 0 or 1: any
    # consistent numbering works).
    ranks = (values != values.roll(1)).cumsum(0, dtype=torch.int32)
    ids = torch.empty_like(ranks).scatter_(0, order, ranks)
    return ids[:qg.numel()], ids[qg.numel():]


def _check_dtype(name: str, q: Tensor):
    if q.dtype == torch.float64:
        raise TypeError(f"{name}: float64 runs on the CPU and torch backends only")


def _fwd_side(a: Tensor, b: Tensor, ga: Tensor, gb: Tensor, scale: Tensor):
    """(loss, lse, npos) over the rows of A against all rows of B, each [NA] fp32."""
    na, nb, dim = a.shape[0], b.shape[0], a.shape[1]
    loss, lse, npos = (a.new_empty(na, dtype=torch.float32) for _ in range(3))
    if na == 0:
        return loss, lse, npos
    args = (a, b, ga, gb, scale, loss, lse, npos, na, nb, dim, a.stride(0), a.stride(1), b.stride(0), b.stride(1))
    if _tuned(a):
        grid = lambda meta: (triton.cdiv(na, meta["BLOCK_M"]),)  # noqa: E731
        torch.library.wrap_triton(_FWD_TUNED)[grid](*args, **_dot_flags(a))
        return loss, lse, npos
    bm, bn, bd, _, warps, stages = _config(a, dim, backward=False)
    torch.library.wrap_triton(_contrastive_fwd_kernel)[(triton.cdiv(na, bm),)](
        *args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages, **_dot_flags(a))
    return loss, lse, npos


@torch.library.triton_op("pyops::contrastive_fwd_triton", mutates_args=())
def contrastive_fwd_triton(q: Tensor, k: Tensor, logit_scale: Tensor, qg: Tensor, kg: Tensor,
                           symmetric: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_dtype("contrastive_fwd_triton", q)
    scale = logit_scale.to(torch.float32).reshape(1)
    qg, kg = _dense_groups(qg, kg)
    row_loss, row_lse, row_npos = _fwd_side(q, k, qg, kg, scale)
    if symmetric:
        col_loss, col_lse, col_npos = _fwd_side(k, q, kg, qg, scale)
    else:
        col_loss, col_lse, col_npos = (q.new_empty(0, dtype=torch.float32) for _ in range(3))
    return row_loss, col_loss, row_lse, col_lse, row_npos, col_npos


def _bwd_side(a: Tensor, b: Tensor, ga: Tensor, gb: Tensor, scale: Tensor, norm: Tensor, own, other,
              part: Optional[Tensor]) -> Tensor:
    """v_A [NA, D] in A's dtype. own / other: (v, lse, npos) of A's rows / B's rows, or None if that
    loss is not part of the objective. part: [NA] fp32 that receives the rows' v_logit_scale terms, or None."""
    na, nb, dim = a.shape[0], b.shape[0], a.shape[1]
    v_a = torch.empty(na, dim, dtype=a.dtype, device=a.device)
    if na == 0 or dim == 0:
        if part is not None:
            part.zero_()
        return v_a
    own_t = own if own is not None else other  # an unused side passes the other's tensors (never read)
    oth_t = other if other is not None else own
    args = (a, b, ga, gb, scale, norm, own_t[0], own_t[1], own_t[2], oth_t[0], oth_t[1], oth_t[2], v_a,
            part if part is not None else scale, na, nb, dim, a.stride(0), a.stride(1), b.stride(0), b.stride(1))
    flags = dict(HAS_OWN=own is not None, HAS_OTHER=other is not None, WRITE_PART=part is not None,
                 **_dot_flags(a))
    if _tuned(a):
        grid = lambda meta: (triton.cdiv(na, meta["BLOCK_M"]), triton.cdiv(dim, meta["BLOCK_DV"]))  # noqa: E731
        torch.library.wrap_triton(_BWD_TUNED)[grid](*args, **flags)
        return v_a
    bm, bn, bd, bdv, warps, stages = _config(a, dim, backward=True)
    grid = (triton.cdiv(na, bm), triton.cdiv(dim, bdv))
    torch.library.wrap_triton(_contrastive_bwd_kernel)[grid](
        *args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=warps, num_stages=stages, **flags)
    return v_a


def _grad_norm(v_row: Tensor, row_npos: Tensor, v_col: Tensor, col_npos: Tensor) -> Tensor:
    """[1] fp32 power of two >= max |v| over the rows / columns that have a positive (1 if none); computed on
    the device, no host sync."""
    w = torch.cat([torch.where(row_npos > 0, v_row.abs(), 0.0), torch.where(col_npos > 0, v_col.abs(), 0.0),
                   v_row.new_zeros(1)]).amax()
    w = torch.where(w > 0, w, 1.0)  # also NaN -> 1: the NaN still reaches the outputs through v
    w = torch.where(torch.isinf(w), w, torch.exp2(torch.ceil(torch.log2(w))))
    return w.reshape(1)


@torch.library.triton_op("pyops::contrastive_bwd_triton", mutates_args=())
def contrastive_bwd_triton(v_row: Tensor, v_col: Tensor, q: Tensor, k: Tensor, logit_scale: Tensor, qg: Tensor,
                           kg: Tensor, row_lse: Tensor, col_lse: Tensor, row_npos: Tensor, col_npos: Tensor,
                           symmetric: bool) -> Tuple[Tensor, Tensor, Tensor]:
    _check_dtype("contrastive_bwd_triton", q)
    f32 = lambda t: t.to(torch.float32).contiguous()
    scale = logit_scale.to(torch.float32).reshape(1)
    qg, kg = _dense_groups(qg, kg)
    rows = (f32(v_row), f32(row_lse), f32(row_npos))
    cols = (f32(v_col), f32(col_lse), f32(col_npos)) if symmetric else None
    norm = _grad_norm(rows[0], rows[2], cols[0] if symmetric else rows[0][:0],
                      cols[2] if symmetric else rows[2][:0])
    part = q.new_empty(q.shape[0], dtype=torch.float32)
    v_q = _bwd_side(q, k, qg, kg, scale, norm, rows, cols, part)
    v_k = _bwd_side(k, q, kg, qg, scale, norm, cols, rows, None)
    v_logit_scale = part.sum().to(logit_scale.dtype)
    return v_q, v_k, v_logit_scale
