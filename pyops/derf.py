"""Derf, y = weight * erf(alpha * x + shift) + bias: the functional op, its registration and nn.Module.

Derf (Stronger Normalization-Free Transformers, arXiv 2512.10938) replaces LayerNorm/RMSNorm with one
point-wise function. The native ops (csrc/) and the Triton ops (triton_kernels/derf.py) each do one fused
pass forward and one backward; backward recomputes erf from x, so the output is never saved.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _backend
from ._checks import check_int, check_tensor, same_device
from .reference import derf as reference

if _backend.HAS_TRITON:
    from .triton_kernels import derf as _triton  # noqa: F401  (registers pyops::derf_{fwd,bwd}_triton)

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the native and Triton op pairs.


def _fake_fwd(x, alpha, shift, weight, bias, channel_dim):
    same_device("derf", x=x, alpha=alpha, shift=shift, weight=weight, bias=bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_bwd(v_y, x, alpha, shift, weight, bias, channel_dim):
    same_device("derf", x=x, alpha=alpha, shift=shift, weight=weight, bias=bias)

    def like(p):
        return torch.empty_like(p) if p is not None else alpha.new_empty(0)

    v_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    return v_x, like(alpha), like(shift), like(weight), like(bias)


def _setup_context(ctx, inputs, output):
    x, alpha, shift, weight, bias, channel_dim = inputs
    ctx.save_for_backward(x, alpha, shift, weight, bias)
    ctx.channel_dim = channel_dim


def _register_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_y):
        x, alpha, shift, weight, bias = ctx.saved_tensors
        v_x, v_alpha, v_shift, v_weight, v_bias = bwd_op(v_y, x, alpha, shift, weight, bias, ctx.channel_dim)
        return (v_x, v_alpha, v_shift, v_weight if weight is not None else None, v_bias if bias is not None else None,
                None)

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)


if _backend._NATIVE_ERROR is None:
    # The native ops' autograd kernels are C++ (csrc/derf_autograd.cpp): no Python runs per call.
    torch.library.register_fake("pyops::derf_fwd")(_fake_fwd)
    torch.library.register_fake("pyops::derf_bwd")(_fake_bwd)
if _backend.HAS_TRITON:
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _register_autograd("pyops::derf_fwd_triton", torch.ops.pyops.derf_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# The public functional op.

def _check_args(x, alpha, shift, weight, bias, channel_dim) -> int:
    """Validates the arguments (pyops/_checks.py's policy and messages), naming the bad one; returns
    channel_dim made non-negative.

    Runs for the reference and Triton backends, under torch.compile, on the first call per backend choice,
    and to re-raise in pyops' policy when the native op rejected an argument; the native ops' eager calls
    rely on the C++ checks (csrc/derf.cpp) instead."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        check_tensor("derf", "x", x, floating=True)
    ndim = x.dim()
    if ndim == 0:
        raise ValueError("derf: x must have at least one dimension (the channels), got shape ()")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or not -ndim <= channel_dim < ndim:
        check_int("derf", "channel_dim", channel_dim, -ndim, ndim - 1)
    channel_dim %= ndim
    check_params("derf", x, channel_dim, alpha, shift, weight, bias)
    return channel_dim


def check_params(op: str, x: Tensor, channel_dim: int, alpha, shift, weight, bias) -> None:
    """alpha/shift: 1 or C elements, weight/bias: C or None, floating, on x's device, finite (CPU)."""
    channels, device = x.shape[channel_dim], x.device
    for name, p, scalar_ok in (("alpha", alpha, True), ("shift", shift, True), ("weight", weight, False),
                               ("bias", bias, False)):
        if p is None and not scalar_ok:
            continue
        if not isinstance(p, Tensor) or not p.is_floating_point() or p.device != device:
            check_tensor(op, name, p, floating=True, like=("x", x), same_dtype=False)
        if p.dim() > 1 or not (p.numel() == channels or (scalar_ok and p.numel() == 1)):
            want = f"1 or {channels}" if scalar_ok else f"{channels}"
            raise ValueError(f"{op}: {name} must have {want} elements (x has {channels} channels on dim "
                             f"{channel_dim}), got shape {tuple(p.shape)}")
        _backend.check_finite(op, name, p)


def derf(
    x: Tensor,  # [..., C, ...]
    alpha: Tensor,  # [1] or [C]
    shift: Tensor,  # [1] or [C]
    weight: Optional[Tensor] = None,  # [C]
    bias: Optional[Tensor] = None,  # [C]
    *,
    channel_dim: int = -1,
    backend: Optional[str] = None,
) -> Tensor:
    """Fused Derf: ``weight * erf(alpha * x + shift) + bias`` with channels on ``channel_dim``.

    Args:
        x: input of any shape; fp32, fp16 or bf16 (fp64 on the CPU and torch backends).
        alpha, shift: 1 element (the paper's learnable scalars) or one per channel.
        weight, bias: one per channel, or None (no affine part).
        channel_dim: -1 for ``(..., C)`` transformer activations, 1 for ``(N, C, *spatial)`` conv maps.
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None for $PYOPS_BACKEND or the
            fastest one available on x's device.

    Returns:
        A tensor with x's shape and dtype. Math is fp32; parameter gradients come back in each
        parameter's dtype, accumulated in fp32.
    """
    if not _is_compiling():
        # Eager fast path: a cached backend choice, then the op, whose C++ kernels check every argument. Only
        # when it raises do the Python checks run, to raise pyops' own error (type and message) for a bad one.
        try:
            which = _CHOICE[(backend, _env_backend(), "cpu" if x.is_cpu else x.device.type)]
        except (KeyError, AttributeError):
            which = _choose(x, alpha, shift, weight, bias, channel_dim, backend)
        if which == "native":
            try:
                if channel_dim == -1:
                    return _NATIVE_FWD(x, alpha, shift, weight, bias, channel_dim)
                return _native_channels(x, alpha, shift, weight, bias, channel_dim)
            except Exception:
                _check_args(x, alpha, shift, weight, bias, channel_dim)
                raise
    return _derf(x, alpha, shift, weight, bias, channel_dim, backend)


# The backend per (backend argument, $PYOPS_BACKEND, device type): "native" for the
# C++ kernels ("cpu", "cuda"), else its name. Only successful choices are cached: an unavailable backend
# raises every time.
_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_is_compiling = torch.compiler.is_compiling
_NATIVE_FWD = _backend.native_callable("derf_fwd")
_env_backend = _backend.env_backend


def _choose(x, alpha, shift, weight, bias, channel_dim, backend) -> str:
    _check_args(x, alpha, shift, weight, bias, channel_dim)  # x is a Tensor (or this raises)
    return _backend.remember_choice(_CHOICE, backend, x.device, _backend.resolve(backend, x.device, "derf_fwd"))


def _native_channels(x, alpha, shift, weight, bias, channel_dim):
    """The native op with channels on another dim than the last; argument errors are left to the op."""
    if type(channel_dim) is not int:
        raise TypeError("derf: channel_dim must be an int")  # the caller's checks raise the full message
    ndim = x.dim()
    if -ndim <= channel_dim < ndim - 1:
        return _channels_last(_NATIVE_FWD, x, alpha, shift, weight, bias, channel_dim % ndim)
    return _NATIVE_FWD(x, alpha, shift, weight, bias, channel_dim)


def _channels_last(op, x, alpha, shift, weight, bias, channel_dim):
    """op on x with channels on channel_dim (not the last, non-negative). A channels-last tensor (e.g. NHWC
    memory of an NCHW tensor) runs as (..., C) without a copy, and the result keeps that layout."""
    perm = [d for d in range(x.dim()) if d != channel_dim] + [channel_dim]
    x_last = x.permute(perm)
    if x_last.is_contiguous():
        return op(x_last, alpha, shift, weight, bias, -1).permute(_inverse(perm))
    return op(x, alpha, shift, weight, bias, channel_dim)


def _derf(x, alpha, shift, weight, bias, channel_dim, backend):
    """Every backend, with the Python checks first: channels-first inputs, the reference and Triton backends,
    and what torch.compile traces."""
    channel_dim = _check_args(x, alpha, shift, weight, bias, channel_dim)
    which = _backend.resolve(backend, x.device, "derf_fwd")
    if which == "torch":
        return reference.derf(x, alpha, shift, weight, bias, channel_dim)
    op = torch.ops.pyops.derf_fwd_triton if which == "triton" else torch.ops.pyops.derf_fwd
    if channel_dim != x.dim() - 1:
        return _channels_last(op, x, alpha, shift, weight, bias, channel_dim)
    return op(x, alpha, shift, weight, bias, channel_dim)


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


# ----------------------------------------------------------------------------------------------------------
# Modules.


class Derf(nn.Module):
    """Drop-in replacement for LayerNorm/RMSNorm: ``weight * erf(alpha * x + shift) + bias``.

    Parameter names and shapes (``alpha`` (1,) or (C,), ``shift``, ``weight`` (C,), ``bias`` (C,)) follow the
    paper's reference module, so its state dicts load unchanged.

    Args:
        num_features: C, the number of channels.
        alpha_init, shift_init: initial alpha and shift.
        elementwise_affine: learn ``weight`` and ``bias`` (DiT uses Derf without them).
        channels_last: channels on the last dim (transformers); False for ``(N, C, *spatial)``.
        per_channel: one alpha and shift per channel instead of one scalar each.
        backend: forwarded to :func:`derf` (None picks the fastest).
    """

    def __init__(self, num_features: int, alpha_init: float = 0.5, shift_init: float = 0.0,
                 elementwise_affine: bool = True, channels_last: bool = True, per_channel: bool = False, *,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        check_int("Derf", "num_features", num_features, 1)
        kw = {"device": device, "dtype": dtype}
        n = num_features if per_channel else 1
        self.num_features, self.channels_last, self.backend = num_features, channels_last, backend
        self.alpha = nn.Parameter(torch.full((n,), float(alpha_init), **kw))
        self.shift = nn.Parameter(torch.full((n,), float(shift_init), **kw))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(num_features, **kw))
            self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        # The parameters straight from _parameters: nn.Module.__getattr__ costs ~0.45 us each, a fifth of the
        # whole call on a tiny tensor. A parametrized (torch.nn.utils.parametrize) parameter is not in there:
        # then the attribute.
        p = self._parameters
        try:
            alpha, shift, weight, bias = p["alpha"], p["shift"], p["weight"], p["bias"]
        except KeyError:
            alpha, shift, weight, bias = self.alpha, self.shift, self.weight, self.bias
        return derf(x, alpha, shift, weight, bias, channel_dim=-1 if self.channels_last else 1, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, per_channel={self.alpha.numel() > 1}, "
                f"elementwise_affine={self.weight is not None}, channels_last={self.channels_last}")

    @classmethod
    def from_norm(cls, norm: nn.Module, alpha_init: float = 0.5, shift_init: float = 0.0, **kwargs) -> "Derf":
        """A Derf with the norm's size, device, dtype and affine part (learned weight/bias are copied).

        Accepts nn.LayerNorm, nn.RMSNorm and RMSNorm-like modules (a ``weight`` of shape (C,), e.g. HF's
        LlamaRMSNorm).
        """
        weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        shape = getattr(norm, "normalized_shape", None)
        if shape is None and weight is not None:
            shape = tuple(weight.shape)
        if shape is None or len(tuple(shape)) != 1:
            raise ValueError(f"Derf.from_norm: need a norm over one trailing dim, got {type(norm).__name__} "
                             f"with normalized shape {shape}")
        ref = next(iter(norm.parameters()), None)
        kwargs.setdefault("device", ref.device if ref is not None else None)
        kwargs.setdefault("dtype", ref.dtype if ref is not None else None)
        derf_mod = cls(tuple(shape)[0], alpha_init, shift_init, elementwise_affine=weight is not None, **kwargs)
        if weight is not None:
            with torch.no_grad():
                derf_mod.weight.copy_(weight)
                derf_mod.bias.copy_(bias if bias is not None else torch.zeros_like(weight))
        return derf_mod


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.find("RMSNorm") >= 0 or (
        hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm))


def convert_to_derf(model: nn.Module, alpha_init: float = 0.5, shift_init: float = 0.0, **kwargs) -> nn.Module:
    """Replaces, in place, every LayerNorm/RMSNorm (and any module whose class name contains "RMSNorm")
    with :class:`Derf`, keeping device, dtype, size and whether it had an affine part. Returns ``model``
    (or the new Derf if ``model`` itself is a norm)."""
    if _is_norm(model):
        return Derf.from_norm(model, alpha_init, shift_init, **kwargs)
    for name, child in model.named_children():
        if _is_norm(child):
            setattr(model, name, Derf.from_norm(child, alpha_init, shift_init, **kwargs))
        else:
            convert_to_derf(child, alpha_init, shift_init, **kwargs)
    return model
