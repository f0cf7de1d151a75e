"""Derf followed by a Linear, fused so derf(x) is never stored: the op, its registration, the module and the converter.

In a transformer every Derf feeds a Linear (attention QKV, MLP fc1). The unfused pair keeps x (for the Derf) and
derf(x) (for the Linear's weight gradient) for the backward; :func:`derf_linear` keeps x and the parameters only
and recomputes derf(x) in the backward: one activation of x's size less per fused pair.

Backends: "cpu" (C++, csrc/derf_linear.cpp: ATen GEMMs + the vectorised Derf kernels), "triton"
(triton_kernels/derf_linear.py: Derf as the GEMM prologue forward, as the dgrad GEMM's epilogue backward) and
"torch" (the reference composition, float64-capable; it keeps derf(x) like the unfused pair). There is no CUDA
(.cu) kernel: on GPUs the default is Triton.
"""

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _backend
from ._checks import check_tensor, same_device
from .derf import Derf, check_params
from .reference import derf_linear as reference

if _backend.HAS_TRITON:
    from .triton_kernels import derf_linear as _triton  # noqa: F401  (registers pyops::derf_linear_*_triton)

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the native and Triton op pairs.


def _fake_fwd(x, alpha, shift, weight, bias, linear_weight, linear_bias):
    same_device("derf_linear", x=x, alpha=alpha, shift=shift, weight=weight, bias=bias,
                linear_weight=linear_weight, linear_bias=linear_bias)
    return x.new_empty((x.shape[0], linear_weight.shape[0]))


def _fake_bwd(v_y, x, alpha, shift, weight, bias, linear_weight, has_linear_bias):
    same_device("derf_linear", x=x, alpha=alpha, shift=shift, weight=weight, bias=bias,
                linear_weight=linear_weight)

    def like(p):
        return torch.empty_like(p) if p is not None else alpha.new_empty(0)

    out_features = linear_weight.shape[0]
    return (x.new_empty(x.shape), like(alpha), like(shift), like(weight), like(bias),
            x.new_empty((out_features, x.shape[1])), x.new_empty(out_features if has_linear_bias else 0))


def _setup_context(ctx, inputs, output):
    x, alpha, shift, weight, bias, linear_weight, linear_bias = inputs
    # Only x and the parameters: derf(x) is recomputed by the backward op (the point of this op).
    ctx.save_for_backward(x, alpha, shift, weight, bias, linear_weight)
    ctx.has_linear_bias = linear_bias is not None


def _register_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_y):
        x, alpha, shift, weight, bias, linear_weight = ctx.saved_tensors
        v_x, v_a, v_s, v_w, v_b, v_lw, v_lb = bwd_op(v_y, x, alpha, shift, weight, bias, linear_weight,
                                                     ctx.has_linear_bias)
        return (v_x, v_a, v_s, v_w if weight is not None else None, v_b if bias is not None else None, v_lw,
                v_lb if ctx.has_linear_bias else None)

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)


if _backend._NATIVE_ERROR is None:
    # The native ops' autograd kernels are C++ (csrc/losses_autograd.cpp): no Python runs per call.
    torch.library.register_fake("pyops::derf_linear_fwd")(_fake_fwd)
    torch.library.register_fake("pyops::derf_linear_bwd")(_fake_bwd)
if _backend.HAS_TRITON:
    _register_autograd("pyops::derf_linear_fwd_triton", torch.ops.pyops.derf_linear_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# The public functional op.

_AUTOCAST_DEVICES = ("cpu", "cuda")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_args(x, alpha, shift, weight, bias, linear_weight, linear_bias) -> None:
    """Validates the arguments (pyops/_checks.py's policy), naming the bad one. Conditions are tested inline and
    the _checks helpers run only to raise (see pyops/derf.py)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        check_tensor("derf_linear", "x", x, floating=True)
    if x.dim() == 0:
        raise ValueError("derf_linear: x must have at least one dimension (the channels), got shape ()")
    channels = x.shape[-1]
    device = x.device
    check_params("derf_linear", x, x.dim() - 1, alpha, shift, weight, bias)
    if (not isinstance(linear_weight, Tensor) or linear_weight.device != device or linear_weight.dtype != x.dtype
            or linear_weight.dim() != 2 or linear_weight.shape[1] != channels):
        if isinstance(linear_weight, Tensor) and linear_weight.dim() == 2 and linear_weight.shape[1] != channels:
            raise ValueError(f"derf_linear: linear_weight must have shape (*, {channels}), got "
                             f"{tuple(linear_weight.shape)} (x has shape {tuple(x.shape)}: {channels} channels)")
        check_tensor("derf_linear", "linear_weight", linear_weight, (None, channels), floating=True, like=("x", x))
    if linear_bias is not None and (not isinstance(linear_bias, Tensor) or linear_bias.device != device or
                                    linear_bias.dtype != x.dtype or linear_bias.shape != linear_weight.shape[:1]):
        check_tensor("derf_linear", "linear_bias", linear_bias, (linear_weight.shape[0],), floating=True,
                     like=("x", x))


def derf_linear(
    x: Tensor,  # [..., C]
    alpha: Tensor,  # [1] or [C]
    shift: Tensor,  # [1] or [C]
    weight: Optional[Tensor],  # [C]
    bias: Optional[Tensor],  # [C]
    linear_weight: Tensor,  # [O, C]
    linear_bias: Optional[Tensor] = None,  # [O]
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """``F.linear(derf(x, alpha, shift, weight, bias), linear_weight, linear_bias)`` keeping only x and the
    parameters for the backward (derf(x) is recomputed there).

    Args:
        x: ``(..., C)``, channels last; fp32, fp16 or bf16 (fp64 on the cpu and torch backends).
        alpha, shift: 1 element or one per channel; weight, bias: one per channel or None (as :func:`pyops.derf`).
        linear_weight: ``(O, C)`` and linear_bias ``(O,)`` or None, in x's dtype (under autocast all three are
            cast to the autocast dtype, as F.linear is).
        backend: "cpu", "triton", "torch" (the reference) or None for $PYOPS_BACKEND or the fastest available.

    Returns:
        ``(..., O)`` in x's dtype. Derf math is fp32; the GEMMs accumulate in fp32.
    """
    if not _is_compiling():
        # Eager fast path (as pyops.derf's): a cached backend choice, then the native op, whose C++ checks cover
        # every argument. Only when it raises do the Python checks run, to raise pyops' own error for a bad one.
        try:
            which = _CHOICE[(backend, _env_backend(), "cpu" if x.is_cpu else x.device.type)]
        except (KeyError, AttributeError):
            which = _choose(x, alpha, shift, weight, bias, linear_weight, linear_bias, backend)
        if which == "native" and not _autocast_enabled("cpu"):  # the CPU kernel (derf_linear has no CUDA one)
            try:
                if x.dim() == 2:
                    return _NATIVE_FWD(x, alpha, shift, weight, bias, linear_weight, linear_bias)
                lead = x.shape[:-1]
                # lead.numel(), not -1: reshape cannot infer -1 for an empty x with C == 0.
                y = _NATIVE_FWD(x.reshape(lead.numel(), x.shape[-1]), alpha, shift, weight, bias, linear_weight,
                                linear_bias)
                return y.view(*lead, linear_weight.shape[0])
            except Exception:
                _check_args(x, alpha, shift, weight, bias, linear_weight, linear_bias)
                raise
    return _derf_linear(x, alpha, shift, weight, bias, linear_weight, linear_bias, backend)


# The backend per (backend argument, $PYOPS_BACKEND, device type). Only successful choices are cached: an
# unavailable backend raises every time.
_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_is_compiling = torch.compiler.is_compiling
_autocast_enabled = torch.is_autocast_enabled  # the native op is CPU-only: the CPU autocast state decides
_NATIVE_FWD = _backend.native_callable("derf_linear_fwd")
_env_backend = _backend.env_backend


def _resolve(x, backend) -> str:
    if (backend or _env_backend()) == "cuda":
        raise RuntimeError("pyops: backend 'cuda' is unavailable: derf_linear has no CUDA (.cu) kernel; "
                           "use backend='triton'")
    return _backend.resolve(backend, x.device, "derf_linear_fwd", gpu_order=("triton",))


def _choose(x, alpha, shift, weight, bias, linear_weight, linear_bias, backend) -> str:
    _check_args(x, alpha, shift, weight, bias, linear_weight, linear_bias)  # x is a Tensor (or this raises)
    return _backend.remember_choice(_CHOICE, backend, x.device, _resolve(x, backend))


def _derf_linear(x, alpha, shift, weight, bias, linear_weight, linear_bias, backend):
    """Every backend, with the Python checks first: autocast, the reference and Triton backends, and what
    torch.compile traces."""
    if isinstance(x, Tensor) and x.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, linear_weight = x.to(dt), linear_weight.to(dt)
        linear_bias = linear_bias.to(dt) if linear_bias is not None else None
    _check_args(x, alpha, shift, weight, bias, linear_weight, linear_bias)
    which = _resolve(x, backend)
    if which == "torch":
        return reference.derf_linear(x, alpha, shift, weight, bias, linear_weight, linear_bias)
    if which == "triton":
        if x.dtype not in _TRITON_DTYPES:
            raise TypeError(f"derf_linear: x must be float32, float16 or bfloat16 for backend='triton', got {x.dtype}")
        op = torch.ops.pyops.derf_linear_fwd_triton
    else:
        op = torch.ops.pyops.derf_linear_fwd
    lead = x.shape[:-1]
    # lead.numel(), not -1: reshape cannot infer -1 for an empty x with C == 0.
    y = op(x.reshape(lead.numel(), x.shape[-1]), alpha, shift, weight, bias, linear_weight, linear_bias)
    return y.view(*lead, linear_weight.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Module and converter.


class FusedDerf(nn.Module):
    """What a :class:`~pyops.Derf` becomes when :func:`fuse_derf_linear` moves its work into the :class:`DerfLinear`
    that consumes its output: the identity, keeping the Derf's parameters (the same Parameter objects) under the
    same names, so the model's ``state_dict()`` keys, its ``parameters()`` and any optimizer built on them are
    unchanged. The DerfLinear reads the parameters from here at every call."""

    def __init__(self, derf: Derf):
        super().__init__()
        if not derf.channels_last:
            raise ValueError("FusedDerf: only a channels-last Derf (channels_last=True) can be fused into a Linear")
        self.num_features, self.channels_last, self.backend = derf.num_features, True, derf.backend
        for name in ("alpha", "shift", "weight", "bias"):
            self.register_parameter(name, getattr(derf, name))
        self.train(derf.training)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.num_features}, fused into the next Linear (pyops.DerfLinear)"


class DerfLinear(nn.Linear):
    """``Linear(Derf(x))`` in one op (:func:`derf_linear`), keeping x but never derf(x) for the backward.

    A subclass of nn.Linear: ``weight`` (O, C) and ``bias`` (O,) are the Linear's, under the Linear's names.
    The Derf's parameters live in ``self.norm``:
    - built directly (``DerfLinear(C, O)``), ``norm`` is its own :class:`~pyops.Derf` child, so the state dict
      is ``weight``, ``bias``, ``norm.alpha``, ``norm.shift``, ``norm.weight``, ``norm.bias``;
    - built by :func:`fuse_derf_linear` (``norm=`` a :class:`FusedDerf`), the Derf's parameters stay where the Derf
      was (e.g. ``block.norm1``) and are only referenced here, not registered twice, so the model's state dict
      is exactly the unfused model's.

    Args:
        in_features, out_features, bias: as nn.Linear.
        norm: an existing (Fused)Derf to reference instead of owning one.
        alpha_init, shift_init, elementwise_affine, per_channel: the owned Derf's (see :class:`~pyops.Derf`).
        backend: forwarded to :func:`derf_linear` (None picks the fastest).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, norm: Optional[nn.Module] = None,
                 alpha_init: float = 0.5, shift_init: float = 0.0, elementwise_affine: bool = True,
                 per_channel: bool = False, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.backend = backend
        if norm is None:
            self.norm = Derf(in_features, alpha_init, shift_init, elementwise_affine, per_channel=per_channel,
                             backend=backend, device=device, dtype=dtype)
        else:
            if norm.num_features != in_features:
                raise ValueError(f"DerfLinear: norm has {norm.num_features} features but in_features={in_features}")
            # A plain attribute, not a child module: its parameters are registered where the Derf was.
            object.__setattr__(self, "_shared_norm", norm)

    def _norm(self) -> nn.Module:
        shared = self.__dict__.get("_shared_norm")
        return shared if shared is not None else self.norm

    def forward(self, x: Tensor) -> Tensor:
        # The parameters straight from _parameters (as pyops.Derf's forward): nn.Module.__getattr__ costs ~0.45 us
        # each. A parametrized (torch.nn.utils.parametrize) parameter is not in there: then the attributes.
        shared = self.__dict__.get("_shared_norm")
        n = shared if shared is not None else self._modules["norm"]
        p, q = n._parameters, self._parameters
        try:
            alpha, shift, weight, bias, lw, lb = p["alpha"], p["shift"], p["weight"], p["bias"], q["weight"], q["bias"]
        except KeyError:
            alpha, shift, weight, bias, lw, lb = n.alpha, n.shift, n.weight, n.bias, self.weight, self.bias
        return derf_linear(x, alpha, shift, weight, bias, lw, lb, backend=self.backend)

    def extra_repr(self) -> str:
        shared = "" if "_shared_norm" not in self.__dict__ else ", derf parameters shared with a FusedDerf"
        return super().extra_repr() + shared

    @classmethod
    def from_pair(cls, norm: nn.Module, linear: nn.Linear) -> "DerfLinear":
        """A DerfLinear on ``linear``'s own Parameter objects and ``norm``'s: a :class:`~pyops.Derf` becomes its
        ``norm`` child (a standalone module computing ``linear(norm(x))``), a :class:`FusedDerf` is only
        referenced (what :func:`fuse_derf_linear` does)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"DerfLinear.from_pair: linear must be an nn.Linear, got {type(linear).__name__}")
        if not isinstance(norm, (Derf, FusedDerf)) or not norm.channels_last:
            raise TypeError(f"DerfLinear.from_pair: norm must be a channels-last pyops.Derf or FusedDerf, got {norm}")
        shared = isinstance(norm, FusedDerf)
        # A Derf pinned to its CUDA kernel gets the fastest GPU backend here: derf_linear has no .cu kernel.
        backend = None if norm.backend == "cuda" else norm.backend
        fused = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    norm=norm if shared else None, backend=backend, device="meta")
        fused.weight = linear.weight
        fused.bias = linear.bias
        if not shared:
            fused.norm = norm
        fused.train(linear.training)
        return fused


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _is_timm_class(module: nn.Module, names: Tuple[str, ...]) -> bool:
    cls = type(module)
    return cls.__module__.startswith("timm.") and cls.__name__ in names


def _known_pairs(block: nn.Module) -> List[Tuple[str, str]]:
    """The (derf, linear) child paths of a block whose forward is known to feed the Derf's output only to that
    Linear: pyops' ViTBlock/GPTBlock and timm's ViT Block (attention without a gate; a plain Mlp)."""
    from .models import transformer

    if isinstance(block, transformer._PreNormBlock):
        attn_ok = type(block.attn) is transformer.Attention
        mlp_ok = type(block.mlp) is transformer.Mlp
    elif _is_timm_class(block, ("Block",)) and type(block).__module__ == "timm.models.vision_transformer":
        attn = getattr(block, "attn", None)
        attn_ok = attn is not None and _is_timm_class(attn, ("Attention",)) and getattr(attn, "gate", None) is None
        mlp_ok = _is_timm_class(getattr(block, "mlp", block), ("Mlp",))
    else:
        return []
    pairs = []
    if attn_ok:
        pairs.append(("norm1", "attn.qkv"))
    if mlp_ok:
        pairs.append(("norm2", "mlp.fc1"))
    return pairs


def fuse_derf_linear(model: nn.Module, pairs: Optional[Iterable[Tuple[str, str]]] = None) -> nn.Module:
    """Fuses, in place, each Derf -> Linear pair where the Derf's output feeds only that Linear: the Linear becomes
    a :class:`DerfLinear` and the Derf a :class:`FusedDerf` (identity) that keeps its parameters. Outputs and
    gradients match the unfused model; ``state_dict()`` keys, ``parameters()`` (the same objects) are unchanged,
    so a checkpoint saved either way loads into the other.

    Which pairs: the fusion is only correct when nothing else reads the Derf's output, which a module tree does not
    show, so the pairs are explicit: by default those of the blocks whose forward is known (pyops.models'
    ViTBlock/GPTBlock and timm's VisionTransformer Block after :func:`pyops.convert_to_derf`: norm1 -> attn.qkv,
    norm2 -> mlp.fc1); ``pairs`` lists ``(derf_path, linear_path)`` of other models (paths relative to ``model``;
    the caller vouches for the data flow). Channels-first Derfs, Derfs already fused and Linears with another
    in_features are left alone (and raise when named in ``pairs``). Returns ``model``.
    """
    if pairs is not None:
        for derf_path, linear_path in pairs:
            derf, linear = model.get_submodule(derf_path), model.get_submodule(linear_path)
            if not isinstance(derf, Derf) or not derf.channels_last:
                raise ValueError(f"fuse_derf_linear: {derf_path} must be a channels-last pyops.Derf, got "
                                 f"{type(derf).__name__}")
            if type(linear) is not nn.Linear or linear.in_features != derf.num_features:
                raise ValueError(f"fuse_derf_linear: {linear_path} must be an nn.Linear with in_features="
                                 f"{derf.num_features}, got {linear}")
            _fuse(model, derf_path, linear_path)
        return model
    for block_path, block in list(model.named_modules()):
        for derf_name, linear_name in _known_pairs(block):
            derf, linear = block.get_submodule(derf_name), block.get_submodule(linear_name)
            if (isinstance(derf, Derf) and derf.channels_last and type(linear) is nn.Linear and
                    linear.in_features == derf.num_features):
                _fuse(block, derf_name, linear_name)
    return model


def _fuse(root: nn.Module, derf_path: str, linear_path: str) -> None:
    placeholder = FusedDerf(root.get_submodule(derf_path))
    fused = DerfLinear.from_pair(placeholder, root.get_submodule(linear_path))
    _set(root, derf_path, placeholder)
    _set(root, linear_path, fused)
