"""HexPlane features (4DGS / K-Planes deformation fields, used by MoRel): the functional op, its registration
and 4DGS's HexPlaneField module.

A point (x, y, z) at time t is normalised to the box (4DGS's normalize_aabb), each resolution level samples six
feature planes (xy xz xt yz yt zt) bilinearly (align_corners=True, border clamp), multiplies the six samples and
the levels are concatenated: pyops/reference/hexplane.py is the spec. The native ops (csrc/) and the Triton ops
(triton_kernels/hexplane.py) do one pass forward and one backward that scatters the plane gradients.
"""

import math
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _backend
from ._checks import check_tensor, same_device
from .reference import hexplane as reference

if _backend.HAS_TRITON:
    from .triton_kernels import hexplane as _triton  # noqa: F401  (registers pyops::hexplane_{fwd,bwd}_triton)

PLANE_NAMES = ("xy", "xz", "xt", "yz", "yt", "zt")  # reference.PLANE_AXES in words

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels, and autograd for the Triton op pair (the native ops' autograd kernels are
# C++: csrc/hexplane_autograd.cpp, the same saved tensors and gradients as these).


def _fake_fwd(points, times, time, planes, aabb):
    same_device("hexplane_features", points=points, times=times, aabb=aabb,
                **{f"planes[{i}]": p for i, p in enumerate(planes)})
    total = sum(p.shape[-3] for p in planes[0::6])
    return points.new_empty(points.shape[0], total)


def _fake_bwd(v_features, points, times, time, planes, aabb):
    v_times = torch.empty_like(times, memory_format=torch.contiguous_format) if times is not None else \
        points.new_empty(0)
    return (torch.empty_like(points, memory_format=torch.contiguous_format), v_times,
            [torch.empty_like(p, memory_format=torch.contiguous_format) for p in planes])


def _setup_context(ctx, inputs, output):
    points, times, time, planes, aabb = inputs
    ctx.save_for_backward(points, times, aabb, *planes)
    ctx.time = time


def _register_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_features):
        points, times, aabb, *planes = ctx.saved_tensors
        v_points, v_times, v_planes = bwd_op(v_features, points, times, ctx.time, planes, aabb)
        # times None: every point is at the float `time`, which has no gradient.
        return v_points, v_times if times is not None else None, None, list(v_planes), None

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)


if _backend._NATIVE_ERROR is None:
    torch.library.register_fake("pyops::hexplane_fwd")(_fake_fwd)
    torch.library.register_fake("pyops::hexplane_bwd")(_fake_bwd)
if _backend.HAS_TRITON:
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _register_autograd("pyops::hexplane_fwd_triton", torch.ops.pyops.hexplane_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# Argument checks. Hot path (one call per 4DGS deformation step): the conditions are tested inline and the
# helpers below only run, to raise, when one fails.

_OP = "hexplane_features"


def _plane_error(i: int, plane, points: Tensor, want=None) -> None:
    """Raises the error of planes[i]: a bad kind, dtype, device or rank, or (`want`: the (F, R_b, R_a) its
    level needs) shape."""
    name = f"planes[{i}] (level {i // 6}, {PLANE_NAMES[i % 6]})"
    check_tensor(_OP, name, plane, floating=True, like=("points", points))
    shape = tuple(plane.shape)
    if plane.dim() not in (3, 4) or (plane.dim() == 4 and shape[0] != 1):
        raise ValueError(f"{_OP}: {name} must have shape (F, R_b, R_a) or (1, F, R_b, R_a), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"{_OP}: {name} must have at least one channel and one sample per axis, got {shape}")
    if want is not None:
        raise ValueError(f"{_OP}: {name} must have shape {want} (or (1, *{want})) to match its level's xy, xz and "
                         f"xt planes (F, Ry, Rx), (F, Rz, Rx), (F, Rt, Rx), got {shape}")


def _check_planes(planes, points: Tensor) -> List[Tensor]:
    if not isinstance(planes, (list, tuple)):
        if isinstance(planes, Tensor) or not isinstance(planes, (nn.ParameterList, Sequence)):
            raise TypeError(f"{_OP}: planes must be a sequence of tensors (6 per level), got "
                            f"{type(planes).__name__}")
        planes = list(planes)
    if len(planes) == 0 or len(planes) % 6 != 0:
        raise ValueError(f"{_OP}: planes must hold 6 tensors per level (xy xz xt yz yt zt), got {len(planes)}")
    dtype, device = points.dtype, points.device
    for level in range(0, len(planes), 6):
        for i in range(level, level + 6):
            p = planes[i]
            if not isinstance(p, Tensor) or p.dtype != dtype or p.device != device or not (
                    p.ndim == 3 or (p.ndim == 4 and p.shape[0] == 1)) or (i < level + 3 and p.numel() == 0):
                _plane_error(i, p, points)
        # xy, xz and xt give the level's channels and resolutions (all >= 1: they are not empty).
        xy, xz, xt = planes[level].shape, planes[level + 1].shape, planes[level + 2].shape
        f, ry, rx, rz, rt = xy[-3], xy[-2], xy[-1], xz[-2], xt[-2]
        for j, (b, a) in enumerate(((ry, rx), (rz, rx), (rt, rx), (rz, ry), (rt, ry), (rt, rz))):
            shape = planes[level + j].shape
            d = len(shape) - 3
            if shape[d] != f or shape[d + 1] != b or shape[d + 2] != a:
                _plane_error(level + j, planes[level + j], points, (f, b, a))
    return planes


def _check_args(points, times, planes, aabb):
    """Validates the arguments (pyops/_checks.py's policy), naming the bad one; returns (times tensor or None,
    the shared float time, planes as a list)."""
    if not isinstance(points, Tensor) or not points.is_floating_point():
        check_tensor(_OP, "points", points, floating=True)
    if points.dim() != 2 or points.shape[1] != 3:
        check_tensor(_OP, "points", points, (None, 3))
    n = points.shape[0]
    time = 0.0
    if isinstance(times, Tensor):
        if times.dtype != points.dtype or times.device != points.device:
            check_tensor(_OP, "times", times, floating=True, like=("points", points))
        if times.dim() == 0:
            times = times.expand(n)  # one time for all, differentiable: the expand's backward sums
        elif times.dim() == 2 and times.shape[1] == 1 and times.shape[0] == n:
            times = times.reshape(n)  # 4DGS's (N, 1)
        elif times.dim() != 1 or times.shape[0] != n:
            raise ValueError(f"{_OP}: times must have shape ({n},) or ({n}, 1) (one per point) or () (shared), got "
                             f"{tuple(times.shape)}")
        _backend.check_finite(_OP, "times", times)
        times_t = times
    elif isinstance(times, Real) and not isinstance(times, bool):
        time = float(times)
        if not torch.compiler.is_compiling() and not math.isfinite(time):  # a SymFloat once compiled
            raise ValueError(f"{_OP}: times has non-finite values")
        times_t = None
    else:
        raise TypeError(f"{_OP}: times must be a Tensor or a float, got {type(times).__name__}")
    planes = _check_planes(planes, points)
    if not isinstance(aabb, Tensor) or aabb.dtype != points.dtype or aabb.device != points.device or \
            aabb.shape != (2, 3):
        check_tensor(_OP, "aabb", aabb, (2, 3), floating=True, like=("points", points))
    if _backend.check_finite_enabled(points):  # CPU tensors by default (a host sync on a GPU)
        _backend.check_finite(_OP, "points", points)
        for i, p in enumerate(planes):
            _backend.check_finite(_OP, f"planes[{i}]", p)
    if _backend.check_finite_enabled(aabb) and not torch.compiler.is_compiling():
        box = aabb.detach().tolist()  # one read gives finiteness and extent (a host sync: CPU by default)
        if not all(math.isfinite(v) for row in box for v in row):
            raise ValueError(f"{_OP}: aabb has non-finite values")
        if any(lo == hi for lo, hi in zip(*box)):
            raise ValueError(f"{_OP}: aabb has a zero extent on some axis: {box[0]} and {box[1]}")
    return times_t, time, planes


# ----------------------------------------------------------------------------------------------------------
# The public functional op.


def hexplane_features(
    points: Tensor,  # [N, 3]
    times: Union[Tensor, float],  # [N], [N, 1], [] or a float
    planes: Sequence[Tensor],  # 6 * levels of (F_l, R_b, R_a) or (1, F_l, R_b, R_a)
    aabb: Tensor,  # [2, 3]
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """HexPlane (4DGS / K-Planes) features of points at times: (N, sum of F_l).

    Args:
        points: (N, 3) positions, normalised with 4DGS's ``normalize_aabb``: ``(p - aabb[0]) * 2 /
            (aabb[1] - aabb[0]) - 1`` (4DGS stores aabb as [max, min]; either order works, only a zero extent
            is an error).
        times: (N,) (or 4DGS's (N, 1)) per-point times, a 0-dim tensor, or a Python float: one time for all
            points, the fast path (no times tensor, no time gradient). Times are used as given (4DGS's in
            [-1, 1] span the time axis).
        planes: 6 planes per level, in xy xz xt yz yt zt order, each (F, R_b, R_a) or 4DGS's (1, F, R_b, R_a):
            coordinate a indexes the last dim. A level's planes share F and the resolution of each axis.
        aabb: (2, 3). Every floating tensor has points' dtype: fp32, fp16 or bf16 (math in fp32), or fp64.
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None for $PYOPS_BACKEND or the fastest
            one available on points' device.

    Returns:
        (N, sum of F) in points' dtype: per level the product of the six bilinear samples (align_corners=True,
        border clamp), levels concatenated. Gradients flow to points, tensor times and every plane.
    """
    if not _is_compiling():
        # Eager fast path: a cached backend choice, then the op, whose C++ kernels check every argument (finite
        # values too: csrc/hexplane.cpp). Only when it raises do the Python checks run, to raise pyops' own error.
        # Times of shape () or (N, 1) and planes that are not a list or tuple take the checked path.
        try:
            which = _CHOICE[(backend, _env_backend(), "cpu" if points.is_cpu else points.device.type)]
        except (KeyError, AttributeError):
            which = _choose(points, times, planes, aabb, backend)
        if which == "native" and type(planes) in _PLANE_SEQUENCES:
            kind = type(times)
            if kind is float or kind is int:  # not a bool (an int to the op's float): the checks reject it
                try:
                    return _NATIVE_FWD(points, None, times, planes, aabb)
                except Exception:
                    _check_args(points, times, planes, aabb)
                    raise
            if isinstance(times, Tensor) and times.dim() == 1:
                try:
                    return _NATIVE_FWD(points, times, 0.0, planes, aabb)
                except Exception:
                    _check_args(points, times, planes, aabb)
                    raise
    times_t, time, planes = _check_args(points, times, planes, aabb)
    which = _backend.resolve(backend, points.device, "hexplane_fwd")
    if which == "torch":
        return reference.hexplane_features(points, times_t if times_t is not None else time, planes, aabb)
    op = torch.ops.pyops.hexplane_fwd_triton if which == "triton" else torch.ops.pyops.hexplane_fwd
    return op(points, times_t, time, planes, aabb)


# The backend per (backend argument, $PYOPS_BACKEND, device type): "native" for the C++ kernels ("cpu",
# "cuda"), else its name (pyops/derf.py's scheme). Only successful choices are cached: an unavailable backend
# raises every time.
_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_PLANE_SEQUENCES = (list, tuple)
_is_compiling = torch.compiler.is_compiling
_NATIVE_FWD = _backend.native_callable("hexplane_fwd")
_env_backend = _backend.env_backend


def _choose(points, times, planes, aabb, backend) -> str:
    _check_args(points, times, planes, aabb)  # points is a Tensor (or this raises)
    which = _backend.resolve(backend, points.device, "hexplane_fwd")
    return _backend.remember_choice(_CHOICE, backend, points.device, which)


# ----------------------------------------------------------------------------------------------------------
# Module.


class HexPlaneField(nn.Module):
    """4DGS's HexPlaneField (scene/hexplane.py) with the fused op: same constructor, attributes and state dict
    (``aabb`` and ``grids.<level>.<plane>``), so 4DGS / MoRel checkpoints load unchanged.

    Args:
        bounds: the initial box is ``[[bounds] * 3, [-bounds] * 3]`` (4DGS's [max, min] order).
        planeconfig: 4DGS's kplanes_config: ``output_coordinate_dim`` (F per level), ``resolution``
            ([Rx, Ry, Rz, Rt]), and optionally ``grid_dimensions`` (2) and ``input_coordinate_dim`` (4), the
            only values supported.
        multires: one level per factor; it scales the spatial resolutions, the time resolution is kept.
        backend: forwarded to :func:`hexplane_features`.

    Planes are (1, F, R_b, R_a) parameters, uniform(0.1, 0.5) for the spatial ones and ones for those with the
    time axis, as in 4DGS. ``aabb`` is a parameter without gradient (4DGS never optimises it).
    """

    def __init__(self, bounds: float = 1.6, planeconfig: Optional[dict] = None, multires: Sequence[int] = (1, 2),
                 *, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        config = dict(planeconfig or {"output_coordinate_dim": 32, "resolution": [64, 64, 64, 25]})
        if config.get("grid_dimensions", 2) != 2 or config.get("input_coordinate_dim", 4) != 4:
            raise ValueError("HexPlaneField: only grid_dimensions=2 and input_coordinate_dim=4 (six planes over "
                             f"x, y, z, t) are supported, got {config}")
        resolution = list(config["resolution"])
        out_dim = config["output_coordinate_dim"]
        if len(resolution) != 4 or any(not isinstance(r, int) or r < 1 for r in resolution):
            raise ValueError(f"HexPlaneField: resolution must be 4 positive ints (x, y, z, t), got {resolution}")
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"HexPlaneField: output_coordinate_dim must be a positive int, got {out_dim}")
        kw = {"device": device, "dtype": dtype}
        self.backend = backend
        self.grid_config = [config]
        self.multiscale_res_multipliers = list(multires)
        self.concat_features = True
        self.aabb = nn.Parameter(torch.tensor([[bounds] * 3, [-bounds] * 3], dtype=dtype or torch.get_default_dtype(),
                                              device=device), requires_grad=False)
        self.grids = nn.ModuleList()
        for factor in self.multiscale_res_multipliers:
            res = [r * factor for r in resolution[:3]] + resolution[3:]
            level = nn.ParameterList()
            for a, b in reference.PLANE_AXES:
                plane = nn.Parameter(torch.empty(1, out_dim, res[b], res[a], **kw))
                if b == 3:  # the time axis is always b: xt, yt, zt start as ones
                    nn.init.ones_(plane)
                else:
                    nn.init.uniform_(plane, a=0.1, b=0.5)
                level.append(plane)
            self.grids.append(level)
        self.feat_dim = out_dim * len(self.multiscale_res_multipliers)

    def set_aabb(self, xyz_max, xyz_min) -> None:
        """Sets the box as 4DGS does: [xyz_max, xyz_min] (kept on the module's device and dtype, no gradient)."""
        old = self.aabb
        box = torch.stack([torch.as_tensor(xyz_max), torch.as_tensor(xyz_min)]).to(old.device, old.dtype)
        self.aabb = nn.Parameter(box.reshape(2, 3), requires_grad=False)

    def forward(self, points: Tensor, timestamps: Union[Tensor, float]) -> Tensor:
        """Features (N, feat_dim) of points (..., 3) at timestamps (..., 1), (...) or a float."""
        points = points.reshape(-1, 3)
        if isinstance(timestamps, Tensor) and timestamps.dim() > 0:
            timestamps = timestamps.reshape(-1)
        # The planes straight from the ParameterLists' _parameters (in index order), aabb from ours:
        # nn.Module.__getattr__ / ParameterList indexing cost ~0.5 us each. A parametrized plane or aabb is not
        # in there (fewer planes, or a KeyError): then the attributes.
        try:
            levels = self._modules["grids"]._modules.values()
            planes = [p for level in levels for p in level._parameters.values()]
            aabb = self._parameters["aabb"]
            if len(planes) != 6 * len(levels):
                raise KeyError("grids")
        except KeyError:
            planes, aabb = [p for level in self.grids for p in level], self.aabb
        return hexplane_features(points, timestamps, planes, aabb, backend=self.backend)

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, resolution={self.grid_config[0]['resolution']}, " \
               f"multires={self.multiscale_res_multipliers}"
