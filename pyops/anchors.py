"""MoRel's anchor ops (arXiv 2512.09270) on Scaffold-GS anchors: the functional ops, their registration and the
nn.Module.

- :func:`anchor_blend_weight`: the bidirectional blend weight ``exp(-lambda * decay * dist(tau, offset))`` of
  a keyframe anchor at frame time tau.
- :func:`anchor_decode`: Scaffold-GS's ``generate_neural_gaussians`` as one fused op with dense (M, K, ...)
  outputs: the three MLP heads (opacity, cov, color) per anchor, the neural Gaussians' means, quaternions,
  scales, opacities (times an optional opacity scale and blend weight) and colors. Dropped Gaussians (invisible
  anchor or Tanh opacity <= 0) have opacity 0 and no gradient, so the outputs flatten to M*K Gaussians that feed
  :func:`pyops.rasterize_gaussians` without a boolean compaction (pyops/reference/anchors.py is the spec).

Backends: the native CPU/CUDA ops (csrc/) and the Triton ops (triton_kernels/anchors.py) each run one forward
kernel and one backward kernel that recomputes the MLP; "torch" runs the float64-capable reference.
"""

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _backend
from ._checks import check_choice, check_int, check_tensor, same_device
from .reference import anchors as reference
from .reference.anchors import BLEND_MODES, AnchorMLP, DecodedGaussians

if _backend.HAS_TRITON:
    from .triton_kernels import anchors as _triton  # noqa: F401  (registers pyops::anchor_*_triton)

__all__ = ["anchor_blend_weight", "anchor_decode", "AnchorDecoder", "AnchorMLP", "DecodedGaussians", "BLEND_MODES"]

_MODE_INDEX = {mode: i for i, mode in enumerate(BLEND_MODES)}  # the native ops' int blend_mode
_N_TENSORS = 23  # decode's tensor arguments: 5 inputs, 12 MLP tensors, 6 optional ones (tau_t last)


def _neg_sum(v: Tensor, like: Tensor) -> Tensor:
    """d/d tau of a function of (tau - offset) is -sum(d/d offset), summed in fp32 (fp64) and cast to tau."""
    return -v.sum(dtype=torch.float64 if v.dtype == torch.float64 else torch.float32).to(like.dtype)


# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels of the native ops and autograd for the Triton op pairs (the native ops'
# autograd kernels are C++: csrc/anchors_autograd.cpp, the same saved tensors and gradients as these).


def _blend_setup(ctx, inputs, output):
    offset, decay, tau_t, tau, lambda_decay, blend_mode = inputs
    ctx.save_for_backward(offset, decay, tau_t)
    ctx.scalars = (tau, lambda_decay, blend_mode)


def _register_blend_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_w):
        offset, decay, tau_t = ctx.saved_tensors
        v_offset, v_decay = bwd_op(v_w, offset, decay, tau_t, *ctx.scalars)
        v_tau = _neg_sum(v_offset, tau_t) if tau_t is not None and ctx.needs_input_grad[2] else None
        return v_offset, v_decay, v_tau, None, None, None

    torch.library.register_autograd(fwd, backward, setup_context=_blend_setup)


def _decode_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_N_TENSORS])
    ctx.scalars = inputs[_N_TENSORS:]
    ctx.mark_non_differentiable(output[5])  # neural_opacity: a densification statistic


def _register_decode_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_means, v_quats, v_scales, v_opacities, v_colors, _v_neural_opacity):
        saved = ctx.saved_tensors
        grads = bwd_op(v_means, v_quats, v_scales, v_opacities, v_colors, *saved, *ctx.scalars)
        appearance, opacity_scale, _visible, blend_offset, blend_decay, tau_t = saved[17:]
        v_app, v_os, v_bo, v_bd = grads[16:]
        blend = blend_offset is not None
        v_tau = _neg_sum(v_bo, tau_t) if blend and tau_t is not None and ctx.needs_input_grad[22] else None
        return (*grads[:4], None, *grads[4:16], v_app if appearance is not None else None,
                v_os if opacity_scale is not None else None, None, v_bo if blend else None,
                v_bd if blend else None, v_tau) + (None,) * 6

    torch.library.register_autograd(fwd, backward, setup_context=_decode_setup)


def _contiguous_like(t: Tensor) -> Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _fake_blend_fwd(offset, decay, tau_t, tau, lambda_decay, blend_mode):
    same_device("anchor_blend_weight", offset=offset, decay=decay, tau=tau_t)
    return _contiguous_like(offset)


def _fake_decode_fwd(anchors, feats, offsets, *rest):
    same_device("anchor_decode", anchors=anchors, feats=feats, offsets=offsets,
                **{f"tensor argument {i}": t for i, t in enumerate(rest[:_N_TENSORS - 3], 3)})
    m, k = offsets.shape[0], offsets.shape[1]
    new = feats.new_empty
    return new(m, k, 3), new(m, k, 4), new(m, k, 3), new(m, k), new(m, k, 3), new(m, k)


def _fake_decode_bwd(v_means, v_quats, v_scales, v_opacities, v_colors, *args):
    tensors = args[:_N_TENSORS]
    feats = tensors[1]
    like = lambda t: _contiguous_like(t) if t is not None else feats.new_empty(0)  # noqa: E731
    # v_anchors .. v_anchor_scales, the 12 MLP tensors, appearance, opacity_scale, blend_offset, blend_decay.
    return tuple(like(tensors[i]) for i in (0, 1, 2, 3, *range(5, 17), 17, 18, 20, 21))


if _backend._NATIVE_ERROR is None:
    torch.library.register_fake("pyops::anchor_blend_weight_fwd")(_fake_blend_fwd)
    torch.library.register_fake("pyops::anchor_blend_weight_bwd")(
        lambda v_w, offset, decay, tau_t, tau, lambda_decay, blend_mode: (_contiguous_like(offset),
                                                                          _contiguous_like(decay)))
    torch.library.register_fake("pyops::anchor_decode_fwd")(_fake_decode_fwd)
    torch.library.register_fake("pyops::anchor_decode_bwd")(_fake_decode_bwd)
if _backend.HAS_TRITON:
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _register_blend_autograd("pyops::anchor_blend_weight_fwd_triton", torch.ops.pyops.anchor_blend_weight_bwd_triton)
    _register_decode_autograd("pyops::anchor_decode_fwd_triton", torch.ops.pyops.anchor_decode_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# Argument checks (pyops/_checks.py's policy). Hot path (one decode per rendered view): conditions are tested
# inline and the _checks helpers only run, to raise, when one fails.


def _check_scalars(op: str, tau, lambda_decay, mode, like: Tensor):
    """Returns (tau_t or None, tau as a float, lambda_decay as a float, the mode's index)."""
    if isinstance(tau, Tensor):
        if not tau.is_floating_point() or tau.device != like.device:
            check_tensor(op, "tau", tau, floating=True, like=("offset" if op == "anchor_blend_weight" else "anchors",
                                                                  like), same_dtype=False)
        if tau.dim() != 0:
            raise ValueError(f"{op}: tau must be a float or a 0-dim tensor, got shape {tuple(tau.shape)}")
        _backend.check_finite(op, "tau", tau)
        tau_t, tau_f = tau, 0.0
    elif isinstance(tau, (float, int)) and not isinstance(tau, bool):
        if not math.isfinite(tau):
            raise ValueError(f"{op}: tau={tau} is not finite")
        tau_t, tau_f = None, float(tau)
    else:
        raise TypeError(f"{op}: tau must be a float or a 0-dim tensor, got {type(tau).__name__}")
    if isinstance(lambda_decay, bool) or not isinstance(lambda_decay, (float, int)):
        raise TypeError(f"{op}: lambda_decay must be a float, got {type(lambda_decay).__name__}")
    if not math.isfinite(lambda_decay):
        raise ValueError(f"{op}: lambda_decay={lambda_decay} is not finite")
    index = _MODE_INDEX.get(mode) if isinstance(mode, str) else None
    if index is None:
        check_choice(op, "blend_mode" if op == "anchor_decode" else "mode", mode, BLEND_MODES)
    return tau_t, tau_f, float(lambda_decay), index


def _check_tensors(op: str, first: str, ref: Tensor, named) -> None:
    """Every (name, tensor, shape) has `ref`'s dtype and device and that shape, and finite values."""
    dtype, device = ref.dtype, ref.device
    for name, t, shape in named:
        if not isinstance(t, Tensor) or t.dtype != dtype or t.device != device or t.shape != shape:
            check_tensor(op, name, t, shape, floating=True, like=(first, ref))
        _backend.check_finite(op, name, t)


def _check_blend(offset, decay, tau, lambda_decay, mode):
    op = "anchor_blend_weight"
    if not isinstance(offset, Tensor) or not offset.is_floating_point() or offset.dim() != 1:
        check_tensor(op, "offset", offset, (None,), floating=True)
    _check_tensors(op, "offset", offset, (("offset", offset, offset.shape), ("decay", decay, offset.shape)))
    return _check_scalars(op, tau, lambda_decay, mode, offset)


def _check_decode(anchors, feats, offsets, anchor_scales, cam_center, mlp, flags, appearance, opacity_scale,
                  visible, blend_offset, blend_decay, tau, lambda_decay, blend_mode):
    """Validates every argument; returns (the 12 MLP tensors, tau_t, tau, lambda_decay, mode index)."""
    op = "anchor_decode"
    if not isinstance(anchors, Tensor) or not anchors.is_floating_point() or anchors.dim() != 2:
        check_tensor(op, "anchors", anchors, (None, 3), floating=True)
    m = anchors.shape[0]
    if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.shape[0] != m:
        check_tensor(op, "feats", feats, (m, None), floating=True)
    if not isinstance(offsets, Tensor) or offsets.dim() != 3 or offsets.shape[0] != m:
        check_tensor(op, "offsets", offsets, (m, None, 3), floating=True)
    c, k = feats.shape[1], offsets.shape[1]
    if isinstance(mlp, AnchorMLP):
        weights = tuple(mlp)
    elif isinstance(mlp, (list, tuple)) and len(mlp) == 12:
        weights = tuple(mlp)
    else:
        raise TypeError(f"{op}: mlp must be an AnchorMLP or a sequence of 12 tensors, got {type(mlp).__name__}")
    for name, flag in zip(("opacity_dist", "cov_dist", "color_dist"), flags):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: {name} must be a bool, got {type(flag).__name__}")
    n_app = 0
    if appearance is not None:
        if not isinstance(appearance, Tensor) or appearance.dim() != 1 or appearance.numel() == 0:
            check_tensor(op, "appearance", appearance, (None,), floating=True)
            raise ValueError(f"{op}: appearance must have at least one element, got shape {tuple(appearance.shape)}")
        n_app = appearance.shape[0]
    named = [("anchors", anchors, (m, 3)), ("feats", feats, (m, c)), ("offsets", offsets, (m, k, 3)),
             ("anchor_scales", anchor_scales, (m, 6)), ("cam_center", cam_center, (3,))]
    for head, (name, out, dist) in enumerate(zip(("opacity", "cov", "color"), (k, 7 * k, 3 * k), flags)):
        w1 = weights[4 * head]
        if not isinstance(w1, Tensor) or w1.dim() != 2:
            check_tensor(op, f"w1_{name}", w1, (None, None), floating=True)
        n_in = c + 3 + int(dist) + (n_app if head == 2 else 0)
        if w1.shape[1] != n_in:
            extra = f" + {n_app} (appearance)" if head == 2 and n_app else ""
            raise ValueError(f"{op}: w1_{name} must have {n_in} input columns (C={c} + 3 (view dir) + "
                             f"{int(dist)} ({name}_dist){extra}), got shape {tuple(w1.shape)}")
        h = w1.shape[0]
        named += [(f"w1_{name}", w1, (h, n_in)), (f"b1_{name}", weights[4 * head + 1], (h,)),
                  (f"w2_{name}", weights[4 * head + 2], (out, h)), (f"b2_{name}", weights[4 * head + 3], (out,))]
    if appearance is not None:
        named.append(("appearance", appearance, (n_app,)))
    if opacity_scale is not None:
        named.append(("opacity_scale", opacity_scale, (m,)))
    if (blend_offset is None) != (blend_decay is None):
        raise ValueError(f"{op}: blend_offset and blend_decay must be given together (or neither)")
    if blend_offset is not None:
        named += [("blend_offset", blend_offset, (m,)), ("blend_decay", blend_decay, (m,))]
    _check_tensors(op, "anchors", anchors, named)
    if visible is not None:
        if not isinstance(visible, Tensor) or visible.dtype != torch.bool or visible.device != anchors.device \
                or visible.shape != (m,):
            check_tensor(op, "visible", visible, (m,), dtype=torch.bool, like=("anchors", anchors), same_dtype=False)
    return (weights,) + _check_scalars(op, tau, lambda_decay, blend_mode, anchors)


# ----------------------------------------------------------------------------------------------------------
# The public functional ops.


def anchor_blend_weight(offset: Tensor, decay: Tensor, tau: Union[float, Tensor], lambda_decay: float = 1.0,
                        mode: str = "two_sided", *, backend: Optional[str] = None) -> Tensor:
    """MoRel's bidirectional blend weight ``exp(-lambda_decay * decay * dist)`` of M keyframe anchors at time tau.

    Args:
        offset, decay: (M,) each anchor's time offset and decay rate (any sign), same dtype.
        tau: the frame time, a float or a 0-dim tensor on offset's device (then it gets a gradient).
        mode: "two_sided" ``|tau - offset|``, "forward" ``max(tau - offset, 0)`` (flat before the offset, the
            anchors of keyframe n) or "backward" ``max(offset - tau, 0)`` (flat after it, keyframe n + 1).
            The gradient is 0 at the kink ``tau == offset``.
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None (fastest available).

    Returns:
        (M,) weights in offset's dtype; math in fp32 (fp64 for fp64 inputs).
    """
    if not _is_compiling():
        # Eager fast path: a cached backend choice, then the op, whose C++ kernels check every argument (values
        # too: csrc/anchors.cpp). Only when it raises do the Python checks run, to raise pyops' own error.
        try:
            which = _BLEND_CHOICE[(backend, _env_backend(), "cpu" if offset.is_cpu else offset.device.type)]
        except (KeyError, AttributeError):
            which = _choose(_BLEND_CHOICE, "anchor_blend_weight_fwd", backend, offset, _check_blend, offset, decay, tau,
                            lambda_decay, mode)
        # A bool is an int (and the op's float): the checks reject it, so it takes the checked path.
        if which == "native" and type(lambda_decay) in _NUMBERS and (type(tau) in _NUMBERS or
                                                                     isinstance(tau, Tensor)):
            try:
                if isinstance(tau, Tensor):
                    return _BLEND_FWD(offset, decay, tau, 0.0, lambda_decay, _MODE_INDEX[mode])
                return _BLEND_FWD(offset, decay, None, tau, lambda_decay, _MODE_INDEX[mode])
            except Exception:
                _check_blend(offset, decay, tau, lambda_decay, mode)
                raise
    tau_t, tau_f, lambda_decay, index = _check_blend(offset, decay, tau, lambda_decay, mode)
    which = _backend.resolve(backend, offset.device, "anchor_blend_weight_fwd")
    if which == "torch":
        return reference.anchor_blend_weight(offset, decay, tau, lambda_decay, mode)
    ops = torch.ops.pyops
    op = ops.anchor_blend_weight_fwd_triton if which == "triton" else ops.anchor_blend_weight_fwd
    return op(offset, decay, tau_t, tau_f, lambda_decay, index)


def anchor_decode(
    anchors: Tensor,  # (M, 3)
    feats: Tensor,  # (M, C)
    offsets: Tensor,  # (M, K, 3)
    anchor_scales: Tensor,  # (M, 6) activated
    cam_center: Tensor,  # (3,)
    mlp: Union[AnchorMLP, Sequence[Tensor]],
    *,
    opacity_dist: bool = False,
    cov_dist: bool = False,
    color_dist: bool = False,
    appearance: Optional[Tensor] = None,  # (A,)
    opacity_scale: Optional[Tensor] = None,  # (M,)
    visible: Optional[Tensor] = None,  # (M,) bool
    blend_offset: Optional[Tensor] = None,  # (M,)
    blend_decay: Optional[Tensor] = None,  # (M,)
    tau: Union[float, Tensor] = 0.0,
    lambda_decay: float = 1.0,
    blend_mode: str = "two_sided",
    backend: Optional[str] = None,
) -> DecodedGaussians:
    """Scaffold-GS's neural Gaussians of every anchor, dense: K per anchor, decoded by three MLP heads from
    [feat, view direction, (camera distance)] (+ the appearance embedding for the color head).

    Args:
        anchors: anchor positions (e.g. deformed to the frame time; they get gradients).
        feats: anchor features; its dtype (fp32, fp16, bf16; fp64) is every floating input's dtype.
        offsets: the K learned offsets per anchor; ``means = anchor + offset * anchor_scales[:, 0:3]``.
        anchor_scales: activated scales; ``[3:6]`` times sigmoid of the cov head give the Gaussians' scales.
        cam_center: the camera centre in world space (no gradient).
        mlp: an :class:`AnchorMLP` (nn.Linear layouts, e.g. :meth:`AnchorDecoder.mlp`) or its 12 tensors.
        opacity_dist, cov_dist, color_dist: that head also reads the camera distance (Scaffold-GS's add_*_dist).
        appearance: this camera's appearance embedding (the color head's last inputs).
        opacity_scale: multiplies each anchor's opacities.
        visible: anchors outside the view frustum run no MLP; their Gaussians get opacity 0, quats (1, 0, 0, 0),
            scales and colors 0, means as above.
        blend_offset, blend_decay, tau, lambda_decay, blend_mode: with both tensors, opacities are also
            multiplied by ``anchor_blend_weight(blend_offset, blend_decay, tau, lambda_decay, blend_mode)``.
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None (fastest available).

    Returns:
        :class:`DecodedGaussians` (means (M, K, 3), quats (M, K, 4) wxyz unit, scales (M, K, 3), opacities
        (M, K), colors (M, K, 3), neural_opacity (M, K) the Tanh output, no gradient) in feats' dtype. A Gaussian
        is kept when its anchor is visible and its Tanh opacity is > 0; the others have opacity exactly 0 and no
        gradient through any output. Flatten with ``.reshape(-1, ...)`` to render them all.
    """
    if not _is_compiling():
        # Eager fast path, as in anchor_blend_weight.
        try:
            which = _DECODE_CHOICE[(backend, _env_backend(), "cpu" if feats.is_cpu else feats.device.type)]
        except (KeyError, AttributeError):
            which = _choose(_DECODE_CHOICE, "anchor_decode_fwd", backend, feats, _check_decode, anchors, feats, offsets,
                            anchor_scales, cam_center, mlp, (opacity_dist, cov_dist, color_dist), appearance,
                            opacity_scale, visible, blend_offset, blend_decay, tau, lambda_decay, blend_mode)
        # An int flag or a bool time is taken by the op (as bool, as float): the checks reject them.
        if which == "native" and type(mlp) in _MLP_TYPES and type(lambda_decay) in _NUMBERS and (
                type(tau) in _NUMBERS or isinstance(tau, Tensor)) and type(opacity_dist) is bool and \
                type(cov_dist) is bool and type(color_dist) is bool:
            tensor_tau = isinstance(tau, Tensor)
            try:
                return _DecodedGaussians(_DECODE_FWD(
                    anchors, feats, offsets, anchor_scales, cam_center, *mlp, appearance, opacity_scale, visible,
                    blend_offset, blend_decay, tau if tensor_tau else None, 0.0 if tensor_tau else tau, lambda_decay,
                    _MODE_INDEX[blend_mode], opacity_dist, cov_dist, color_dist))
            except Exception:
                _check_decode(anchors, feats, offsets, anchor_scales, cam_center, mlp,
                              (opacity_dist, cov_dist, color_dist), appearance, opacity_scale, visible, blend_offset,
                              blend_decay, tau, lambda_decay, blend_mode)
                raise
    flags = (opacity_dist, cov_dist, color_dist)
    weights, tau_t, tau_f, lambda_decay, index = _check_decode(
        anchors, feats, offsets, anchor_scales, cam_center, mlp, flags, appearance, opacity_scale, visible,
        blend_offset, blend_decay, tau, lambda_decay, blend_mode)
    which = _backend.resolve(backend, anchors.device, "anchor_decode_fwd")
    if which == "torch":
        return reference.anchor_decode(
            anchors, feats, offsets, anchor_scales, cam_center, AnchorMLP(*weights), opacity_dist=opacity_dist,
            cov_dist=cov_dist, color_dist=color_dist, appearance=appearance, opacity_scale=opacity_scale,
            visible=visible, blend_offset=blend_offset, blend_decay=blend_decay, tau=tau, lambda_decay=lambda_decay,
            blend_mode=blend_mode)
    op = torch.ops.pyops.anchor_decode_fwd_triton if which == "triton" else torch.ops.pyops.anchor_decode_fwd
    return DecodedGaussians(*op(anchors, feats, offsets, anchor_scales, cam_center, *weights, appearance,
                                opacity_scale, visible, blend_offset, blend_decay, tau_t, tau_f, lambda_decay, index,
                                opacity_dist, cov_dist, color_dist))


# The backend per (backend argument, $PYOPS_BACKEND, device type): "native" for the C++ kernels ("cpu",
# "cuda"), else its name (pyops/derf.py's scheme). Only successful choices are cached: an unavailable backend
# raises every time.
_BLEND_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_DECODE_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_NUMBERS = (float, int)
_MLP_TYPES = (AnchorMLP, tuple, list)
_is_compiling = torch.compiler.is_compiling
_DecodedGaussians = DecodedGaussians._make
if _backend._NATIVE_ERROR is None:
    _BLEND_FWD = _backend.native_callable("anchor_blend_weight_fwd")
    _DECODE_FWD = _backend.native_callable("anchor_decode_fwd")

_env_backend = _backend.env_backend


def _choose(cache: dict, op: str, backend: Optional[str], first: Tensor, check, *args) -> str:
    """Checks the arguments (check(*args); `first`, the tensor whose device picks the backend, is a Tensor or
    this raises), resolves the backend and caches the choice."""
    check(*args)
    return _backend.remember_choice(cache, backend, first.device, _backend.resolve(backend, first.device, op))


# ----------------------------------------------------------------------------------------------------------
# Module.


class AnchorDecoder(nn.Module):
    """Scaffold-GS's three anchor MLPs with a fused :func:`anchor_decode` forward.

    Submodules and their parameter names follow Scaffold-GS's GaussianModel (``mlp_opacity.0.weight``,
    ``mlp_cov.2.bias``, ...), so those keys of its checkpoints load unchanged (Scaffold-GS uses
    ``hidden_dim == feat_dim``):

    - ``mlp_opacity = Sequential(Linear(C + 3 + d, H), ReLU, Linear(H, K), Tanh)``
    - ``mlp_cov = Sequential(Linear(C + 3 + d, H), ReLU, Linear(H, 7K))``
    - ``mlp_color = Sequential(Linear(C + 3 + d + A, H), ReLU, Linear(H, 3K), Sigmoid)``

    with d = 1 when that head reads the camera distance (``add_*_dist``) and A = ``appearance_dim``.

    Args:
        feat_dim: C; n_offsets: K; hidden_dim: H; appearance_dim: A (0: no appearance input).
        backend: forwarded to :func:`anchor_decode` (None picks the fastest).
    """

    def __init__(self, feat_dim: int = 32, n_offsets: int = 10, hidden_dim: int = 32, appearance_dim: int = 0,
                 add_opacity_dist: bool = False, add_cov_dist: bool = False, add_color_dist: bool = False, *,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        for name, v, lo in (("feat_dim", feat_dim, 1), ("n_offsets", n_offsets, 1), ("hidden_dim", hidden_dim, 1),
                            ("appearance_dim", appearance_dim, 0)):
            check_int("AnchorDecoder", name, v, lo)
        kw = {"device": device, "dtype": dtype}
        self.feat_dim, self.n_offsets, self.hidden_dim, self.appearance_dim = (feat_dim, n_offsets, hidden_dim,
                                                                               appearance_dim)
        self.add_opacity_dist, self.add_cov_dist, self.add_color_dist = (bool(add_opacity_dist), bool(add_cov_dist),
                                                                         bool(add_color_dist))
        self.backend = backend
        c = feat_dim + 3
        self.mlp_opacity = nn.Sequential(nn.Linear(c + self.add_opacity_dist, hidden_dim, **kw), nn.ReLU(True),
                                         nn.Linear(hidden_dim, n_offsets, **kw), nn.Tanh())
        self.mlp_cov = nn.Sequential(nn.Linear(c + self.add_cov_dist, hidden_dim, **kw), nn.ReLU(True),
                                     nn.Linear(hidden_dim, 7 * n_offsets, **kw))
        self.mlp_color = nn.Sequential(nn.Linear(c + self.add_color_dist + appearance_dim, hidden_dim, **kw),
                                       nn.ReLU(True), nn.Linear(hidden_dim, 3 * n_offsets, **kw), nn.Sigmoid())

    def mlp(self) -> AnchorMLP:
        """The 12 weight tensors in :class:`AnchorMLP` order."""
        o, c, l = self.mlp_opacity, self.mlp_cov, self.mlp_color  # noqa: E741
        return AnchorMLP(o[0].weight, o[0].bias, o[2].weight, o[2].bias, c[0].weight, c[0].bias, c[2].weight,
                         c[2].bias, l[0].weight, l[0].bias, l[2].weight, l[2].bias)

    def forward(self, anchors: Tensor, feats: Tensor, offsets: Tensor, anchor_scales: Tensor, cam_center: Tensor, *,
                appearance: Optional[Tensor] = None, opacity_scale: Optional[Tensor] = None,
                visible: Optional[Tensor] = None, blend_offset: Optional[Tensor] = None,
                blend_decay: Optional[Tensor] = None, tau: Union[float, Tensor] = 0.0, lambda_decay: float = 1.0,
                blend_mode: str = "two_sided") -> DecodedGaussians:
        # The weights straight from the submodules' _modules / _parameters dicts: nn.Module.__getattr__ costs
        # ~0.45 us each, 18 of them per call. A parametrized (torch.nn.utils.parametrize) weight is not in
        # there: then mlp().
        m = self._modules
        try:
            o, c, l = m["mlp_opacity"]._modules, m["mlp_cov"]._modules, m["mlp_color"]._modules  # noqa: E741
            o1, o2, c1, c2 = o["0"]._parameters, o["2"]._parameters, c["0"]._parameters, c["2"]._parameters
            l1, l2 = l["0"]._parameters, l["2"]._parameters
            mlp = (o1["weight"], o1["bias"], o2["weight"], o2["bias"], c1["weight"], c1["bias"], c2["weight"],
                   c2["bias"], l1["weight"], l1["bias"], l2["weight"], l2["bias"])
        except KeyError:
            mlp = self.mlp()
        return anchor_decode(anchors, feats, offsets, anchor_scales, cam_center, mlp,
                             opacity_dist=self.add_opacity_dist, cov_dist=self.add_cov_dist,
                             color_dist=self.add_color_dist, appearance=appearance, opacity_scale=opacity_scale,
                             visible=visible, blend_offset=blend_offset, blend_decay=blend_decay, tau=tau,
                             lambda_decay=lambda_decay, blend_mode=blend_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, n_offsets={self.n_offsets}, hidden_dim={self.hidden_dim}, "
                f"appearance_dim={self.appearance_dim}, dist=(opacity={self.add_opacity_dist}, "
                f"cov={self.add_cov_dist}, color={self.add_color_dist})")
