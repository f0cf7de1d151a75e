"""Triton attribute pair loss kernels, forward and backward, registered as torch.library.triton_op so
torch.compile sees them. Same interface and semantics as the native ops (csrc/ops.cpp: attribute_pair_fwd /
attribute_pair_bwd): one program per pair b over an [A, BLOCK_D] tile of all its slots at once, math in fp32.

Forward: for each D block, the masked mean-pool over L (masked tokens are not loaded), the pooled tile stored
for the backward (token inputs), and the A x A dots and squared norms accumulated; then the cosines, the
logsumexp and the loss. Backward: the per-pair coefficients (csrc/include/pyops/attribute_pair_math.h,
pair_backward) once, then one pass over D writing v_ex / v_ey (broadcast over the kept tokens) and a per-pair
v_logit_scale term that torch.sum reduces in a fixed order."""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

NORM_EPS: tl.constexpr = tl.constexpr(1e-12)  # F.normalize's eps (pyops/reference/vq.py)


@triton.jit
def _token_weights(mask_ptr, b, a, a_ok, t, A, L, HAS_MASK: tl.constexpr):
    """w[a] of token t in pair b: the mask value (0 for slots >= A), 1 without a mask."""
    if HAS_MASK:
        w = tl.load(mask_ptr + (b * A + a) * L + t, mask=a_ok, other=0).to(tl.float32)
    else:
        w = tl.where(a_ok, 1.0, 0.0)
    return w


@triton.jit
def _inv_counts(mask_ptr, b, a, a_ok, A, L, HAS_MASK: tl.constexpr, BLOCK_A: tl.constexpr):
    count = tl.zeros((BLOCK_A,), tl.float32)
    for t in range(0, L):
        count += _token_weights(mask_ptr, b, a, a_ok, t, A, L, HAS_MASK)
    return 1.0 / tl.maximum(count, 1.0)


@triton.jit
def _load_rows(ex_ptr, ey_ptr, px_ptr, py_ptr, b, a, d, m2, A, D, TOKENS: tl.constexpr):
    """The pair's pooled x and y rows at columns d: the saved pooled tiles for token inputs, else the inputs."""
    off = (b * A + a[:, None]) * D + d[None, :]
    if TOKENS:
        x = tl.load(px_ptr + off, mask=m2, other=0.0)
        y = tl.load(py_ptr + off, mask=m2, other=0.0)
    else:
        x = tl.load(ex_ptr + off, mask=m2, other=0.0).to(tl.float32)
        y = tl.load(ey_ptr + off, mask=m2, other=0.0).to(tl.float32)
    return x, y


@triton.jit
def _cells(cos, s, a, a_ok):
    """S = s * cos with the padding cells at -inf; returns (S, lse, is the (0, 0) cell)."""
    valid = a_ok[:, None] & a_ok[None, :]
    S = tl.where(valid, s * cos, float("-inf"))
    m = tl.max(tl.max(S, axis=1), axis=0)
    lse = m + tl.log(tl.sum(tl.sum(tl.exp(S - m), axis=1), axis=0))
    first = (a[:, None] == 0) & (a[None, :] == 0)
    return S, lse, first


@triton.jit
def _attribute_pair_fwd_kernel(ex_ptr, ey_ptr, mask_ptr, scale_ptr, loss_ptr, cos_ptr, norms_ptr, px_ptr, py_ptr,
                               A, L, D, TOKENS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_A: tl.constexpr,
                               BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a = tl.arange(0, BLOCK_A)
    a_ok = a < A
    dots = tl.zeros((BLOCK_A, BLOCK_A), tl.float32)
    sq_x = tl.zeros((BLOCK_A,), tl.float32)
    sq_y = tl.zeros((BLOCK_A,), tl.float32)
    if TOKENS:
        inv_count = _inv_counts(mask_ptr, b, a, a_ok, A, L, HAS_MASK, BLOCK_A)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m2 = a_ok[:, None] & (d[None, :] < D)
        if TOKENS:
            x = tl.zeros((BLOCK_A, BLOCK_D), tl.float32)
            y = tl.zeros((BLOCK_A, BLOCK_D), tl.float32)
            for t in range(0, L):
                w = _token_weights(mask_ptr, b, a, a_ok, t, A, L, HAS_MASK)
                off = ((b * A + a[:, None]) * L + t) * D + d[None, :]
                keep = m2 & (w[:, None] != 0)  # masked tokens are never read
                x += w[:, None] * tl.load(ex_ptr + off, mask=keep, other=0.0).to(tl.float32)
                y += w[:, None] * tl.load(ey_ptr + off, mask=keep, other=0.0).to(tl.float32)
            x = x * inv_count[:, None]
            y = y * inv_count[:, None]
            pooled = (b * A + a[:, None]) * D + d[None, :]
            tl.store(px_ptr + pooled, x, mask=m2)
            tl.store(py_ptr + pooled, y, mask=m2)
        else:
            x, y = _load_rows(ex_ptr, ey_ptr, px_ptr, py_ptr, b, a, d, m2, A, D, False)
        dots += tl.sum(x[:, None, :] * y[None, :, :], axis=2)
        sq_x += tl.sum(x * x, axis=1)
        sq_y += tl.sum(y * y, axis=1)
    rx = tl.sqrt(sq_x)
    ry = tl.sqrt(sq_y)
    cos = dots / (tl.maximum(rx, NORM_EPS)[:, None] * tl.maximum(ry, NORM_EPS)[None, :])
    s = tl.load(scale_ptr)
    S, lse, first = _cells(cos, s, a, a_ok)
    tl.store(loss_ptr + b, lse - tl.sum(tl.sum(tl.where(first, S, 0.0), axis=1), axis=0))
    tl.store(cos_ptr + (b * A + a[:, None]) * A + a[None, :], cos, mask=a_ok[:, None] & a_ok[None, :])
    tl.store(norms_ptr + b * 2 * A + a, rx, mask=a_ok)
    tl.store(norms_ptr + b * 2 * A + A + a, ry, mask=a_ok)


@triton.jit
def _attribute_pair_bwd_kernel(v_loss_ptr, ex_ptr, ey_ptr, mask_ptr, scale_ptr, cos_ptr, norms_ptr, px_ptr, py_ptr,
                               v_ex_ptr, v_ey_ptr, part_ptr, A, L, D, TOKENS: tl.constexpr,
                               HAS_MASK: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    a = tl.arange(0, BLOCK_A)
    a_ok = a < A
    valid = a_ok[:, None] & a_ok[None, :]
    cos = tl.load(cos_ptr + (b * A + a[:, None]) * A + a[None, :], mask=valid, other=0.0)
    rx = tl.load(norms_ptr + b * 2 * A + a, mask=a_ok, other=0.0)
    ry = tl.load(norms_ptr + b * 2 * A + A + a, mask=a_ok, other=0.0)
    s = tl.load(scale_ptr)
    v = tl.load(v_loss_ptr + b)
    # pair_backward (attribute_pair_math.h): G = v (softmax(S) - [(0, 0)]), alpha, beta, gamma.
    S, lse, first = _cells(cos, s, a, a_ok)
    G = v * (tl.exp(S - lse) - tl.where(first, 1.0, 0.0))
    gc = G * cos
    row = tl.sum(gc, axis=1)
    col = tl.sum(gc, axis=0)
    tl.store(part_ptr + b, tl.sum(row, axis=0))
    rcx = tl.maximum(rx, NORM_EPS)
    rcy = tl.maximum(ry, NORM_EPS)
    alpha = s * G / (rcx[:, None] * rcy[None, :])
    beta = tl.where(rx >= NORM_EPS, -s * row / (rcx * rcx), 0.0)
    gamma = tl.where(ry >= NORM_EPS, -s * col / (rcy * rcy), 0.0)
    if TOKENS:
        inv_count = _inv_counts(mask_ptr, b, a, a_ok, A, L, HAS_MASK, BLOCK_A)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m2 = a_ok[:, None] & (d[None, :] < D)
        x, y = _load_rows(ex_ptr, ey_ptr, px_ptr, py_ptr, b, a, d, m2, A, D, TOKENS)
        vx = beta[:, None] * x + tl.sum(alpha[:, :, None] * y[None, :, :], axis=1)
        vy = gamma[:, None] * y + tl.sum(alpha[:, :, None] * x[:, None, :], axis=0)
        if TOKENS:
            for t in range(0, L):
                scale = _token_weights(mask_ptr, b, a, a_ok, t, A, L, HAS_MASK) * inv_count
                off = ((b * A + a[:, None]) * L + t) * D + d[None, :]
                tl.store(v_ex_ptr + off, (scale[:, None] * vx).to(v_ex_ptr.dtype.element_ty), mask=m2)
                tl.store(v_ey_ptr + off, (scale[:, None] * vy).to(v_ey_ptr.dtype.element_ty), mask=m2)
        else:
            off = (b * A + a[:, None]) * D + d[None, :]
            tl.store(v_ex_ptr + off, vx.to(v_ex_ptr.dtype.element_ty), mask=m2)
            tl.store(v_ey_ptr + off, vy.to(v_ey_ptr.dtype.element_ty), mask=m2)


def _blocks(A: int, D: int):
    """BLOCK_A covers every slot; BLOCK_D keeps the [BLOCK_A, BLOCK_A, BLOCK_D] products at ~8K elements."""
    block_a = max(2, triton.next_power_of_2(A))
    block_d = max(16, min(triton.next_power_of_2(max(D, 1)), 8192 // (block_a * block_a)))
    return block_a, block_d


def _prepare(ex: Tensor, ey: Tensor, logit_scale: Tensor, mask: Optional[Tensor]):
    if ex.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"attribute_pair_loss: ex must be float32, float16 or bfloat16 for the Triton backend, "
                        f"got {ex.dtype}")
    tokens = ex.dim() == 4
    B, A, D = ex.shape[0], ex.shape[1], ex.shape[-1]
    L = ex.shape[2] if tokens else 1
    ex, ey = ex.contiguous(), ey.contiguous()
    mask_t = mask.contiguous() if mask is not None else ex  # a placeholder pointer without a mask
    scale = logit_scale.to(torch.float32).reshape(1)
    return ex, ey, mask_t, scale, tokens, B, A, L, D


@torch.library.triton_op("pyops::attribute_pair_fwd_triton", mutates_args=())
def attribute_pair_fwd_triton(ex: Tensor, ey: Tensor, logit_scale: Tensor, mask: Optional[Tensor]
                              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ex, ey, mask_t, scale, tokens, B, A, L, D = _prepare(ex, ey, logit_scale, mask)
    new = lambda *shape: torch.empty(shape, dtype=torch.float32, device=ex.device)  # noqa: E731
    pooled = (B, A, D) if tokens else (0,)
    loss, cos, norms, px, py = new(B), new(B, A, A), new(B, 2, A), new(*pooled), new(*pooled)
    if B > 0:
        block_a, block_d = _blocks(A, D)
        torch.library.wrap_triton(_attribute_pair_fwd_kernel)[(B,)](
            ex, ey, mask_t, scale, loss, cos, norms, px, py, A, L, D, TOKENS=tokens, HAS_MASK=mask is not None,
            BLOCK_A=block_a, BLOCK_D=block_d, num_warps=4)
    return loss, cos, norms, px, py


@torch.library.triton_op("pyops::attribute_pair_bwd_triton", mutates_args=())
def attribute_pair_bwd_triton(v_loss: Tensor, ex: Tensor, ey: Tensor, logit_scale: Tensor, mask: Optional[Tensor],
                              cos: Tensor, norms: Tensor, px: Tensor, py: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    ex, ey, mask_t, scale, tokens, B, A, L, D = _prepare(ex, ey, logit_scale, mask)
    v_loss = v_loss.to(torch.float32).contiguous()
    v_ex, v_ey = torch.empty_like(ex), torch.empty_like(ey)
    partials = torch.zeros(B, dtype=torch.float32, device=ex.device)
    if B > 0:
        block_a, block_d = _blocks(A, D)
        torch.library.wrap_triton(_attribute_pair_bwd_kernel)[(B,)](
            v_loss, ex, ey, mask_t, scale, cos.contiguous(), norms.contiguous(), px.contiguous(), py.contiguous(),
            v_ex, v_ey, partials, A, L, D, TOKENS=tokens, HAS_MASK=mask is not None, BLOCK_A=block_a,
            BLOCK_D=block_d, num_warps=4)
    return v_ex, v_ey, partials.sum().to(logit_scale.dtype)  # torch.sum: a fixed reduction order
