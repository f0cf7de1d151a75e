"""Omni-Attribute's attribute pair loss: the functional op and its registration.

Per pair b, image x's A attribute embeddings (rows) against image y's (columns): the A x A cosine
similarities scaled by logit_scale, slot 0 the shared (positive) attribute, loss_b = logsumexp over the cells -
the (0, 0) cell; the op returns the mean over B. Token inputs (B, A, L, D) are mean-pooled over the mask's kept
tokens inside the same pass (pyops/reference/contrastive.py: attribute_pair_loss and masked_mean_pool are the
spec).

The native ops (csrc/) and the Triton ops (triton_kernels/attribute_pair.py) run one program per pair: pool,
norms, the A x A dots and the loss in one forward pass; one backward pass writes the input gradients and a
per-pair logit_scale term that a fixed-order sum reduces (deterministic). The forward saves O(B A^2) cosines
and norms, and for token inputs the pooled vectors (B, A, D), so the backward never re-reads the tokens.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import _backend
from ._checks import check_tensor, same_device
from .reference import contrastive as reference

if _backend.HAS_TRITON:
    from .triton_kernels import attribute_pair as _triton  # noqa: F401  (registers pyops::attribute_pair_*_triton)

__all__ = ["attribute_pair_loss"]

OP = "attribute_pair_loss"

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels of the native ops and autograd for the native and Triton op pairs.


def _math_dtype(ex: Tensor) -> torch.dtype:
    return torch.float64 if ex.dtype == torch.float64 else torch.float32


def _fake_fwd(ex, ey, logit_scale, mask):
    same_device(OP, ex=ex, ey=ey, logit_scale=logit_scale, mask=mask)
    b, a, d = ex.shape[0], ex.shape[1], ex.shape[-1]
    new = lambda *shape: ex.new_empty(shape, dtype=_math_dtype(ex))  # noqa: E731
    pooled = (b, a, d) if ex.dim() == 4 else (0,)
    return new(b), new(b, a, a), new(b, 2, a), new(*pooled), new(*pooled)


def _fake_bwd(v_loss, ex, ey, logit_scale, mask, cos, norms, px, py):
    same_device(OP, ex=ex, ey=ey, logit_scale=logit_scale, mask=mask)
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return like(ex), like(ey), logit_scale.new_empty(())


def _setup_context(ctx, inputs, output):
    ex, ey, logit_scale, mask = inputs
    _loss, cos, norms, px, py = output
    ctx.save_for_backward(ex, ey, logit_scale, mask, cos, norms, px, py)
    ctx.mark_non_differentiable(cos, norms, px, py)


def _register_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_loss, _v_cos, _v_norms, _v_px, _v_py):
        v_ex, v_ey, v_scale = bwd_op(v_loss, *ctx.saved_tensors)
        return v_ex, v_ey, v_scale if ctx.needs_input_grad[2] else None, None

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)


if _backend._NATIVE_ERROR is None:
    # The native ops' autograd kernels are C++ (csrc/losses_autograd.cpp): no Python runs per call.
    torch.library.register_fake("pyops::attribute_pair_fwd")(_fake_fwd)
    torch.library.register_fake("pyops::attribute_pair_bwd")(_fake_bwd)
if _backend.HAS_TRITON:
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _register_autograd("pyops::attribute_pair_fwd_triton", torch.ops.pyops.attribute_pair_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# The public functional op.

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_args(ex, ey, logit_scale, mask) -> None:
    """pyops/_checks.py's policy, naming the bad argument (the C++ host checks raise the same errors)."""
    check_tensor(OP, "ex", ex, dtype=_DTYPES)
    if ex.dim() not in (3, 4):
        raise ValueError(f"{OP}: ex must have shape (B, A, D) (pooled) or (B, A, L, D) (tokens), got "
                         f"{tuple(ex.shape)}")
    if ex.shape[1] < 2:
        raise ValueError(f"{OP}: ex must have at least 2 attribute slots (A, dim 1: the positive and a negative), "
                         f"got shape {tuple(ex.shape)}")
    check_tensor(OP, "ey", ey, like=("ex", ex))
    if ey.shape != ex.shape:
        raise ValueError(f"{OP}: ey must have ex's shape {tuple(ex.shape)}, got {tuple(ey.shape)}")
    check_tensor(OP, "logit_scale", logit_scale, (), floating=True, like=("ex", ex), same_dtype=False, finite=True)
    if mask is not None:
        if ex.dim() != 4:
            raise ValueError(f"{OP}: mask is only for token inputs (B, A, L, D); ex has shape {tuple(ex.shape)}")
        check_tensor(OP, "mask", mask, tuple(ex.shape[:3]), dtype=(torch.bool, ex.dtype), like=("ex", ex),
                     same_dtype=False)
    _backend.check_finite(OP, "ex", ex)
    _backend.check_finite(OP, "ey", ey)


def attribute_pair_loss(
    ex: Tensor,  # [B, A, D] pooled, or [B, A, L, D] tokens
    ey: Tensor,  # ex's shape
    logit_scale: Tensor,  # 0-d
    *,
    mask: Optional[Tensor] = None,  # [B, A, L] with token inputs
    backend: Optional[str] = None,
) -> Tensor:
    """Omni-Attribute's contrastive attribute loss, fused (pooling, normalisation, the A x A logits and the
    logsumexp in one pass forward and one backward).

    Args:
        ex, ey: attribute embeddings of the pair's two images, (B, A, D) pooled or (B, A, L, D) tokens; slot 0
            is the shared (positive) attribute, slots 1.. the negatives. fp32, fp16 or bf16 (fp64 on the CPU
            and torch backends).
        logit_scale: 0-d tensor multiplying the cosine similarities (learnable or not).
        mask: (B, A, L) bool or ex's dtype (0/1), token inputs only: the tokens each slot is mean-pooled over;
            a slot without kept tokens pools to zero (cosine 0). None: plain means over L.
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None for $PYOPS_BACKEND or the fastest
            one available on ex's device.

    Returns:
        The mean over B of logsumexp_ij(logit_scale * cos_ij) - logit_scale * cos_00, 0-d float32 (float64
        for float64 inputs). Gradients flow to ex, ey and logit_scale (mask gets none).
    """
    if not _is_compiling():
        # Eager fast path (as pyops.derf's): a cached backend choice, then the native op, whose C++ checks cover
        # every argument (finite values included). Only when it raises do the Python checks run, to raise pyops'
        # own error for a bad argument.
        try:
            which = _CHOICE[(backend, _env_backend(), "cpu" if ex.is_cpu else ex.device.type)]
        except (KeyError, AttributeError):
            which = _choose(ex, ey, logit_scale, mask, backend)
        if which == "native":
            try:
                return _NATIVE_FWD(ex, ey, logit_scale, mask)[0].mean()
            except Exception:
                _check_args(ex, ey, logit_scale, mask)
                raise
    _check_args(ex, ey, logit_scale, mask)
    which = _backend.resolve(backend, ex.device, "attribute_pair_fwd")
    if which == "torch":
        return reference.attribute_pair_loss(ex, ey, logit_scale, mask)
    op = torch.ops.pyops.attribute_pair_fwd_triton if which == "triton" else torch.ops.pyops.attribute_pair_fwd
    return op(ex, ey, logit_scale, mask)[0].mean()


# The backend per (backend argument, $PYOPS_BACKEND, device type): "native" for the C++ kernels ("cpu", "cuda"),
# else its name. Only successful choices are cached: an unavailable backend raises every time.
_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_is_compiling = torch.compiler.is_compiling
_NATIVE_FWD = _backend.native_callable("attribute_pair_fwd")
_env_backend = _backend.env_backend


def _choose(ex, ey, logit_scale, mask, backend) -> str:
    _check_args(ex, ey, logit_scale, mask)  # ex is a Tensor (or this raises)
    which = _backend.resolve(backend, ex.device, "attribute_pair_fwd")
    return _backend.remember_choice(_CHOICE, backend, ex.device, which)
