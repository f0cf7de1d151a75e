"""Gaussian-splatting rasterizer (gsplat's conventions and stages): projection, spherical harmonics, tile
intersection and sort, isect offsets and per-tile front-to-back blending, forward and backward.

`pyops/reference/gaussians.py` is the spec (and the "torch" backend); the native CPU/CUDA kernels register
on the schemas in csrc/ops.cpp, the Triton ones as ``pyops::<op>_triton``. `rasterize_gaussians` composes
the stages exactly as gsplat's ``rasterization`` does, so switching is one import.
"""

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_int, check_tensor, same_device
from .reference import gaussians as reference

if _backend.HAS_TRITON:
    # Imports the stage modules (gaussians_project, _sh, _intersect, _raster): registers pyops::gs_*_triton.
    from .triton_kernels import gaussians as _triton  # noqa: F401

RENDER_MODES, RASTERIZE_MODES = reference.RENDER_MODES, reference.RASTERIZE_MODES

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd of the native and Triton op pairs.





def _fake_project_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                      radius_clip, antialiased):
    same_device("gs_project_fwd", means=means, quats=quats, scales=scales, opacities=opacities,
                   viewmats=viewmats, Ks=Ks)
    c, n = viewmats.shape[0], means.shape[0]
    return (means.new_empty(c, n, 2, dtype=torch.int32), means.new_empty(c, n, 2), means.new_empty(c, n),
            means.new_empty(c, n, 3), means.new_empty(c, n))


def _fake_project_bwd(means, quats, scales, viewmats, Ks, width, height, eps2d, antialiased, radii, conics,
                      compensations, v_means2d, v_depths, v_conics, v_compensations):
    same_device("gs_project_bwd", means=means, quats=quats, scales=scales, viewmats=viewmats, Ks=Ks, radii=radii,
                   conics=conics, v_means2d=v_means2d, v_depths=v_depths, v_conics=v_conics)
    return torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales)


def _fake_sh_fwd(degree, dirs, coeffs):
    same_device("gs_sh_fwd", dirs=dirs, coeffs=coeffs)
    return coeffs.new_empty(dirs.shape[0], 3)


def _fake_sh_bwd(degree, dirs, coeffs, v_colors):
    same_device("gs_sh_bwd", dirs=dirs, coeffs=coeffs, v_colors=v_colors)
    return torch.empty_like(coeffs), torch.empty_like(dirs)


def _fake_intersect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height):
    same_device("gs_intersect_tiles", means2d=means2d, radii=radii, depths=depths)
    m = torch.library.get_ctx().new_dynamic_size()  # the number of (camera, Gaussian, tile) hits
    c, n = depths.shape
    return (depths.new_empty(c, n, dtype=torch.int32), depths.new_empty(m, dtype=torch.long),
            depths.new_empty(m, dtype=torch.int32))


def _fake_isect_offsets(isect_ids, n_cameras, tile_width, tile_height):
    return isect_ids.new_empty(n_cameras, tile_height, tile_width, dtype=torch.int32)


def _fake_rasterize_fwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                        flatten_ids, absgrad=False):
    same_device("gs_rasterize_fwd", means2d=means2d, conics=conics, colors=colors, opacities=opacities,
                   backgrounds=backgrounds, isect_offsets=isect_offsets, flatten_ids=flatten_ids)
    c, d = colors.shape[0], colors.shape[-1]
    return (colors.new_empty(c, height, width, d), colors.new_empty(c, height, width, 1),
            colors.new_empty(c, height, width, dtype=torch.int32), colors.new_empty(c, height, width, 1))


def _fake_rasterize_bwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                        flatten_ids, final_transmittances, last_ids, v_render_colors, v_render_alphas, absgrad):
    same_device("gs_rasterize_bwd", means2d=means2d, conics=conics, colors=colors, opacities=opacities,
                   backgrounds=backgrounds, isect_offsets=isect_offsets, flatten_ids=flatten_ids,
                   final_transmittances=final_transmittances, last_ids=last_ids, v_render_colors=v_render_colors,
                   v_render_alphas=v_render_alphas)
    v_bg = torch.empty_like(backgrounds) if backgrounds is not None else colors.new_empty(0)
    v_abs = torch.empty_like(means2d) if absgrad else means2d.new_empty(0)
    return (torch.empty_like(means2d), torch.empty_like(conics), torch.empty_like(colors),
            torch.empty_like(opacities), v_bg, v_abs)


def _zeros_if_none(v: Optional[Tensor], like: Tensor) -> Tensor:
    """An incoming gradient autograd left out (None: the output was unused) as zeros."""
    return torch.zeros_like(like) if v is None else v


def _register_project_autograd(fwd: str, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        means, quats, scales, _, viewmats, Ks, width, height, eps2d, _, _, _, antialiased = inputs
        radii, _, _, conics, compensations = output
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii, conics, compensations)
        ctx.args = (width, height, eps2d, antialiased)

    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_compensations):
        means, quats, scales, viewmats, Ks, radii, conics, compensations = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.args
        v_means, v_quats, v_scales = bwd_op(
            means, quats, scales, viewmats, Ks, width, height, eps2d, antialiased, radii, conics, compensations,
            _zeros_if_none(v_means2d, conics[..., :2]), _zeros_if_none(v_depths, compensations),
            _zeros_if_none(v_conics, conics), _zeros_if_none(v_compensations, compensations))
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _register_sh_autograd(fwd: str, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        degree, dirs, coeffs = inputs
        ctx.save_for_backward(dirs, coeffs)
        ctx.degree = degree

    def backward(ctx, v_colors):
        dirs, coeffs = ctx.saved_tensors
        v_coeffs, v_dirs = bwd_op(ctx.degree, dirs, coeffs, v_colors)
        return None, v_dirs, v_coeffs

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _rasterize_backward(bwd_op, saved, width, height, tile_size, absgrad_to, v_render_colors, v_render_alphas,
                        v_final_transmittances):
    """The gradients of the rasterizer's inputs (means2d, conics, colors, opacities, backgrounds); with absgrad_to
    (the caller's means2d) also stores the summed |per-pixel gradient| there as ``.absgrad``."""
    means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, trans, last_ids = saved
    v_render_alphas = _zeros_if_none(v_render_alphas, trans)
    if v_final_transmittances is not None:  # final_transmittances = 1 - render_alphas
        v_render_alphas = v_render_alphas - v_final_transmittances
    v_render_colors = _zeros_if_none(v_render_colors, colors.new_empty(trans.shape[:-1] + colors.shape[-1:]))
    v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs = bwd_op(
        means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids, trans,
        last_ids, v_render_colors, v_render_alphas, absgrad_to is not None)
    if absgrad_to is not None:
        absgrad_to.absgrad = v_abs  # gsplat's convention: meta["means2d"].absgrad
    return v_means2d, v_conics, v_colors, v_opacities, v_bg if backgrounds is not None else None


def _register_rasterize_autograd(fwd: str, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids, absgrad = (
            inputs)
        _, _, last_ids, final_trans = output
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, final_trans,
                              last_ids)
        ctx.args = (width, height, tile_size)
        # gsplat's convention: the backward stores the result as means2d.absgrad (the input tensor itself, not
        # the detached alias autograd saves, so the caller's tensor carries it).
        ctx.absgrad_to = means2d if absgrad else None

    def backward(ctx, v_render_colors, v_render_alphas, _v_last_ids, v_final_transmittances):
        grads = _rasterize_backward(bwd_op, ctx.saved_tensors, *ctx.args, ctx.absgrad_to, v_render_colors,
                                    v_render_alphas, v_final_transmittances)
        return grads + (None,) * 6

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


class _RasterizeAbsgrad(torch.autograd.Function):
    """The native rasterizer with absgrad=True: its C++ autograd node (csrc/gaussians_autograd.cpp) cannot set
    the Python attribute means2d.absgrad, so this Function (run only when absgrad is asked for) does."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids):
        render, alphas, last_ids, trans = torch.ops.pyops.gs_rasterize_fwd(
            means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids, True)
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, trans, last_ids)
        ctx.args = (width, height, tile_size)
        ctx.absgrad_to = means2d  # the caller's tensor (forward gets the arguments themselves)
        return render, alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        grads = _rasterize_backward(torch.ops.pyops.gs_rasterize_bwd, ctx.saved_tensors, *ctx.args, ctx.absgrad_to,
                                    v_render_colors, v_render_alphas, None)
        return grads + (None,) * 5


if _backend._NATIVE_ERROR is None:
    # The native ops' autograd kernels are C++ (csrc/gaussians_autograd.cpp): no Python runs per call.
    for _name, _fake in (("gs_project_fwd", _fake_project_fwd), ("gs_project_bwd", _fake_project_bwd),
                         ("gs_sh_fwd", _fake_sh_fwd), ("gs_sh_bwd", _fake_sh_bwd),
                         ("gs_intersect_tiles", _fake_intersect_tiles), ("gs_isect_offsets", _fake_isect_offsets),
                         ("gs_rasterize_fwd", _fake_rasterize_fwd), ("gs_rasterize_bwd", _fake_rasterize_bwd)):
        torch.library.register_fake(f"pyops::{_name}")(_fake)
if _backend.HAS_TRITON and hasattr(torch.ops.pyops, "gs_rasterize_fwd_triton"):
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _ops = torch.ops.pyops
    _register_project_autograd("pyops::gs_project_fwd_triton", _ops.gs_project_bwd_triton)
    _register_sh_autograd("pyops::gs_sh_fwd_triton", _ops.gs_sh_bwd_triton)
    _register_rasterize_autograd("pyops::gs_rasterize_fwd_triton", _ops.gs_rasterize_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# The stages, each a public op.


def _op(which: str, name: str):
    return getattr(torch.ops.pyops, name + ("_triton" if which == "triton" else ""))


# Eager fast paths (as pyops.derf's): a cached backend choice, then the native op, whose C++ host code
# (csrc/gaussians.cpp) checks every argument the Python checks do (dtype, shape, device, range, finiteness) and
# whose autograd kernel is C++ (csrc/gaussians_autograd.cpp). Only when it raises do the Python checks run, to
# raise pyops' own error (type and message) for a bad argument. torch.compile, the reference and Triton backends,
# absgrad and unusual layouts take the checked path.
_is_compiling = torch.compiler.is_compiling
_env_backend = _backend.env_backend
# (public op, backend argument, $PYOPS_BACKEND, device type) -> "native" (the C++ kernels: "cpu", "cuda") or the
# backend's name; filled by the checked path after a successful call (an unavailable backend raises every time).
_CHOICE: Dict[Tuple[str, Optional[str], Optional[str], str], str] = {}


def _remember(op: str, backend: Optional[str], device: torch.device, which: str) -> None:
    if not _is_compiling():
        _CHOICE[(op, backend, _env_backend(), device.type)] = (
            "native" if which in ("cpu", "cuda") else which)


_native = _backend.native_callable
_PROJECT_FWD, _SH_FWD, _RASTER_FWD = _native("gs_project_fwd"), _native("gs_sh_fwd"), _native("gs_rasterize_fwd")
_INTERSECT, _OFFSETS = _native("gs_intersect_tiles"), _native("gs_isect_offsets")


def _camera_grad(viewmats, Ks) -> bool:
    """Whether viewmats or Ks would need gradients (only the torch backend has them); True for a non-tensor, which
    the checked path names."""
    return torch.is_grad_enabled() and (getattr(viewmats, "requires_grad", True) or getattr(Ks, "requires_grad", True))


def _float_tensor(op: str, name: str, t, shape, like: Optional[Tuple[str, Tensor]] = None) -> Tensor:
    """A floating-point, finite (where checked: `_backend.check_finite`) tensor argument of `shape`, on the
    device and of the dtype of ``like = (its_name, tensor)``."""
    return check_tensor(op, name, t, shape, floating=True, like=like, finite=True)


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances ``R S S^T R^T`` ``(N, 3, 3)`` from quaternions ``(N, 4)`` (wxyz, any norm) and scales
    ``(N, 3)``; plain PyTorch (the fused projection computes it on the fly), fp32 math for fp16/bf16."""
    op = "quat_scale_to_covar"
    _float_tensor(op, "quats", quats, (None, 4))
    _float_tensor(op, "scales", scales, (quats.shape[0], 3), like=("quats", quats))
    if quats.dtype in (torch.float16, torch.bfloat16):
        # fp32 math: in fp16 the normalisation's eps (1e-12) underflows, so a zero quaternion gave NaN, not the
        # identity (found by tests/test_fuzz.py).
        return reference.quat_scale_to_covar(quats.float(), scales.float()).to(quats.dtype)
    return reference.quat_scale_to_covar(quats, scales)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    opacities: Optional[Tensor] = None,  # [N]
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of 3D Gaussians into C pinhole cameras (gsplat's ``fully_fused_projection``).

    Returns:
        ``(radii (C, N, 2) int32, means2d (C, N, 2), depths (C, N), conics (C, N, 3), compensations (C, N)
        or None)``;
        a Gaussian culled in a camera (behind the near plane, beyond the far plane, radius <= radius_clip, off
        the image, or, when ``opacities`` are given, opacity below 1/255) has radius 0 there and receives no
        gradient from it. ``opacities`` also shrink the radius to where the Gaussian's alpha reaches 1/255
        (gsplat's rasterization() passes them). ``compensations`` is the
        antialiasing opacity factor (None unless ``antialiased``).
    """
    if not _is_compiling():
        try:
            which = _CHOICE[("project", backend, _env_backend(),
                             "cpu" if means.is_cpu else means.device.type)]
        except (KeyError, AttributeError):
            which = None
        if which == "native" and not _camera_grad(viewmats, Ks):
            try:
                out = _PROJECT_FWD(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane,
                                   far_plane, radius_clip, antialiased)
            except Exception:
                _check_project(means, quats, scales, viewmats, Ks, width, height, opacities)
                raise
            return out[0], out[1], out[2], out[3], out[4] if antialiased else None
    _check_project(means, quats, scales, viewmats, Ks, width, height, opacities)
    which = _backend.resolve(backend, means.device, "gs_project_fwd")
    if which == "torch":
        return reference.project_ewa(means, reference.quat_scale_to_covar(quats, scales), viewmats, Ks, width,
                                     height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                                     radius_clip=radius_clip, antialiased=antialiased, opacities=opacities)
    if torch.is_grad_enabled() and (viewmats.requires_grad or Ks.requires_grad):
        raise ValueError(f"project_gaussians: gradients for viewmats and Ks (camera optimisation) are only available "
                         f"with backend='torch'; detach them or choose that backend (got backend={which!r})")
    radii, means2d, depths, conics, compensations = _op(which, "gs_project_fwd")(
        means.contiguous(), quats.contiguous(), scales.contiguous(),
        None if opacities is None else opacities.detach().contiguous(), viewmats.contiguous(), Ks.contiguous(),
        width, height, float(eps2d), float(near_plane), float(far_plane), float(radius_clip), antialiased)
    _remember("project", backend, means.device, which)
    return radii, means2d, depths, conics, compensations if antialiased else None


def _check_project(means, quats, scales, viewmats, Ks, width, height, opacities) -> None:
    op = "project_gaussians"
    _float_tensor(op, "means", means, (None, 3))
    n, like = means.shape[0], ("means", means)
    _float_tensor(op, "quats", quats, (n, 4), like)
    _float_tensor(op, "scales", scales, (n, 3), like)
    if opacities is not None:
        _float_tensor(op, "opacities", opacities, (n,), like)
    _float_tensor(op, "viewmats", viewmats, (None, 4, 4), like)
    _float_tensor(op, "Ks", Ks, (viewmats.shape[0], 3, 3), like)
    check_int(op, "width", width, 1)
    check_int(op, "height", height, 1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Colors ``(..., 3)`` of SH ``coeffs`` ``(..., K, 3)`` (K >= (degree + 1)^2) in view directions ``dirs``
    ``(..., 3)`` (any norm), gsplat's basis and signs; no +0.5 offset or clamp (`rasterize_gaussians` adds them)."""
    if not _is_compiling():
        try:
            which = _CHOICE[("sh", backend, _env_backend(), "cpu" if coeffs.is_cpu else coeffs.device.type)]
        except (KeyError, AttributeError):
            which = None
        if which == "native":
            try:
                if dirs.dim() == 2 and coeffs.dim() == 3:  # (M, 3), (M, K, 3): the op's own layout
                    return _SH_FWD(degree, dirs, coeffs)
            except Exception:
                _check_sh(degree, dirs, coeffs)
                raise
    _check_sh(degree, dirs, coeffs)
    lead = coeffs.shape[:-2]
    which = _backend.resolve(backend, coeffs.device, "gs_sh_fwd")
    if which == "torch":
        return reference.spherical_harmonics(degree, dirs, coeffs)
    out = _op(which, "gs_sh_fwd")(degree, dirs.reshape(-1, 3).contiguous(),
                                 coeffs.reshape(-1, *coeffs.shape[-2:]).contiguous())
    _remember("sh", backend, coeffs.device, which)
    return out.reshape(*lead, 3)


def _check_sh(degree, dirs, coeffs) -> None:
    op = "spherical_harmonics"
    check_int(op, "degree", degree, 0, 3)
    _float_tensor(op, "coeffs", coeffs, None)
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3 or coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"{op}: coeffs must be (..., K, 3) with K >= {(degree + 1) ** 2} for degree {degree}, "
                         f"got shape {tuple(coeffs.shape)}")
    _float_tensor(op, "dirs", dirs, (*coeffs.shape[:-2], 3), ("coeffs", coeffs))


def intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int,
                    tile_height: int, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Every (camera, Gaussian, tile) overlap as a sorted key ``camera | tile | depth``.

    Returns:
        ``(tiles_per_gauss (C, N) int32, isect_ids (M,) int64 sorted, flatten_ids (M,) int32 = c * N + g)``.
    """
    if not _is_compiling():
        try:
            which = _CHOICE[("intersect", backend, _env_backend(),
                             "cpu" if means2d.is_cpu else means2d.device.type)]
        except (KeyError, AttributeError):
            which = None
        if which == "native":
            try:
                return _INTERSECT(means2d, radii, depths, tile_size, tile_width, tile_height)
            except Exception:
                _check_intersect(means2d, radii, depths, tile_size, tile_width, tile_height)
                raise
    _check_intersect(means2d, radii, depths, tile_size, tile_width, tile_height)
    which = _backend.resolve(backend, means2d.device, "gs_intersect_tiles")
    if which == "torch":
        return reference.intersect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
    out = _op(which, "gs_intersect_tiles")(means2d.contiguous(), radii.contiguous(), depths.contiguous(), tile_size,
                                          tile_width, tile_height)
    _remember("intersect", backend, means2d.device, which)
    return out


def _check_intersect(means2d, radii, depths, tile_size, tile_width, tile_height) -> None:
    op = "intersect_tiles"
    _float_tensor(op, "means2d", means2d, (None, None, 2))
    like = ("means2d", means2d)
    _float_tensor(op, "depths", depths, means2d.shape[:2], like)
    check_tensor(op, "radii", radii, means2d.shape, dtype=torch.int32, like=like, same_dtype=False)
    for name, v in (("tile_size", tile_size), ("tile_width", tile_width), ("tile_height", tile_height)):
        check_int(op, name, v, 1)


def isect_offsets(isect_ids: Tensor, n_cameras: int, tile_width: int, tile_height: int, *,
                  backend: Optional[str] = None) -> Tensor:
    """Index of each (camera, tile)'s first intersection in the sorted ``isect_ids``: ``(C, th, tw)`` int32 (an
    empty tile points at the next run)."""
    if not _is_compiling():
        try:
            which = _CHOICE[("offsets", backend, _env_backend(),
                             "cpu" if isect_ids.is_cpu else isect_ids.device.type)]
        except (KeyError, AttributeError):
            which = None
        if which == "native":
            try:
                return _OFFSETS(isect_ids, n_cameras, tile_width, tile_height)
            except Exception:
                _check_offsets(isect_ids, n_cameras, tile_width, tile_height)
                raise
    _check_offsets(isect_ids, n_cameras, tile_width, tile_height)
    which = _backend.resolve(backend, isect_ids.device, "gs_isect_offsets")
    if which == "torch":
        return reference.isect_offsets(isect_ids, n_cameras, tile_width, tile_height)
    out = _op(which, "gs_isect_offsets")(isect_ids.contiguous(), n_cameras, tile_width, tile_height)
    _remember("offsets", backend, isect_ids.device, which)
    return out


def _check_offsets(isect_ids, n_cameras, tile_width, tile_height) -> None:
    op = "isect_offsets"
    check_tensor(op, "isect_ids", isect_ids, (None,), dtype=torch.int64)
    check_int(op, "n_cameras", n_cameras, 0)
    check_int(op, "tile_width", tile_width, 1)
    check_int(op, "tile_height", tile_height, 1)
    if n_cameras.bit_length() + (tile_width * tile_height).bit_length() > 32:  # before allocating the output
        raise ValueError(f"{op}: n_cameras={n_cameras} x tile_width={tile_width} x tile_height={tile_height} tiles do "
                         "not fit the 32 key bits of isect_ids")


tile_offsets = isect_offsets  # the name before 0.2; kept so existing callers work


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, th, tw] int32
    flatten_ids: Tensor,  # [M] int32
    *,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    absgrad: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """Front-to-back alpha blending per tile: ``(render_colors (C, H, W, D), render_alphas (C, H, W, 1))``.

    ``alpha = min(0.999, opacity * exp(-sigma))``; contributions below 1/255 are skipped and a pixel stops
    before the Gaussian that would take its transmittance to 1e-4 or below; ``backgrounds`` is added as
    ``(1 - alpha) * bg``.

    Args:
        absgrad: the backward also stores the summed |per-pixel gradient| in means2d.absgrad
            (meta["means2d"].absgrad), as gsplat; computed only when asked, nothing left on tensors otherwise.
    """
    if not _is_compiling() and not absgrad:
        try:
            which = _CHOICE[("raster", backend, _env_backend(),
                             "cpu" if means2d.is_cpu else means2d.device.type)]
        except (KeyError, AttributeError):
            which = None
        if which == "native":
            try:
                if flatten_ids.dtype == torch.int32:  # the op's own (the checked path converts int64)
                    out = _RASTER_FWD(means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                                      isect_offsets, flatten_ids, False)
                    return out[0], out[1]
            except Exception:
                _check_rasterize(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets,
                                 flatten_ids, backgrounds)
                raise
    _check_rasterize(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                     backgrounds)
    which = _backend.resolve(backend, means2d.device, "gs_rasterize_fwd")
    if which == "torch":
        if absgrad:
            raise ValueError("rasterize_to_pixels: absgrad needs the cpu, cuda or triton backend (autograd cannot "
                             "see the per-pixel gradients of the torch reference)")
        return reference.rasterize_tiles(means2d, conics, colors, opacities, width, height, tile_size,
                                         isect_offsets, flatten_ids, backgrounds)
    args = (means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(),
            None if backgrounds is None else backgrounds.contiguous(), width, height, tile_size,
            isect_offsets.contiguous(), flatten_ids.to(torch.int32).contiguous())
    if absgrad and which != "triton":
        # The caller's means2d (not a contiguous copy) gets .absgrad; the op makes its own contiguous copy.
        render, alphas = _RasterizeAbsgrad.apply(means2d, *args[1:])
    else:
        render, alphas, _, _ = _op(which, "gs_rasterize_fwd")(*args, absgrad)
        _remember("raster", backend, means2d.device, which)
    return render, alphas


def _check_rasterize(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                     backgrounds) -> None:
    op = "rasterize_to_pixels"
    _float_tensor(op, "means2d", means2d, (None, None, 2))
    c, n = means2d.shape[:2]
    like = ("means2d", means2d)
    _float_tensor(op, "conics", conics, (c, n, 3), like)
    _float_tensor(op, "colors", colors, (c, n, None), like)
    _float_tensor(op, "opacities", opacities, (c, n), like)
    if backgrounds is not None:
        _float_tensor(op, "backgrounds", backgrounds, (c, colors.shape[-1]), like)
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        check_int(op, name, v, 1)
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    check_tensor(op, "isect_offsets", isect_offsets, (c, th, tw), dtype=torch.int32, like=like, same_dtype=False)
    check_tensor(op, "flatten_ids", flatten_ids, (None,), dtype=(torch.int32, torch.int64), like=like,
                 same_dtype=False)


# ----------------------------------------------------------------------------------------------------------
# The whole rasterizer.


def rasterize_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, D] post-activation, or [N, K, 3] SH coefficients with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """Renders N Gaussians into C cameras; gsplat's ``rasterization`` (pinhole, unpacked) with its conventions.

    Args:
        sh_degree: None when ``colors`` are ``(N, D)`` features; else the SH degree (0-3) of ``colors``
            ``(N, K, 3)``, evaluated per camera with view directions from the camera centre, plus 0.5 and
            clamped at 0.
        render_mode: "RGB", "D" (accumulated depth), "ED" (expected depth: accumulated depth / alpha),
            "RGB+D" or "RGB+ED"; depth is appended as the last channel.
        rasterize_mode: "classic" or "antialiased" (opacities scaled by the eps2d blur's compensation).
        absgrad: the backward also stores the summed |per-pixel gradient| in means2d.absgrad
            (meta["means2d"].absgrad), as gsplat; computed only when asked, nothing left on tensors otherwise.
        backend: "cuda", "triton", "cpu", "torch" or None (fastest available).

    Returns:
        ``(render_colors (C, H, W, D[+1]), render_alphas (C, H, W, 1), meta)``; meta holds radii, means2d
        (its gradient is the densification signal), depths, conics, opacities, tiles_per_gauss, isect_ids,
        flatten_ids, isect_offsets, width, height, tile_size and n_cameras.
    """
    if not _is_compiling() and not absgrad:
        try:
            which = _CHOICE[("rasterize_gaussians", backend, _env_backend(),
                             "cpu" if means.is_cpu else means.device.type)]
        except (KeyError, AttributeError):
            which = None
        # What the C++ checks cannot see (the modes, non-int sizes, the colors' layout: expand would broadcast a
        # colors of one row to N) takes the checked path.
        if (which == "native" and not _camera_grad(viewmats, Ks) and render_mode in RENDER_MODES
                and rasterize_mode in RASTERIZE_MODES and type(tile_size) is int
                and getattr(colors, "ndim", None) == (2 if sh_degree is None else 3)
                and colors.shape[0] == means.shape[0] and (sh_degree is None or type(sh_degree) is int)):
            try:
                return _rasterize_native(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                         near_plane, far_plane, radius_clip, eps2d, sh_degree, tile_size,
                                         backgrounds, render_mode, rasterize_mode)
            except Exception as e:
                error = e
            # The checked path raises pyops' error naming the bad argument; else the native op's error stands.
            _rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                                 far_plane, radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode,
                                 rasterize_mode, absgrad, backend)
            raise error
    return _rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                                far_plane, radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode,
                                rasterize_mode, absgrad, backend)


def _rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                         radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode, rasterize_mode, absgrad,
                         backend):
    """Every backend through the public stages, with the Python checks: what torch.compile traces, the torch and
    Triton backends, absgrad, and the first call of a backend choice."""
    op = "rasterize_gaussians"
    check_choice(op, "render_mode", render_mode, RENDER_MODES)
    check_choice(op, "rasterize_mode", rasterize_mode, RASTERIZE_MODES)
    if sh_degree is not None:  # before colors, whose expected shape depends on it
        check_int(op, "sh_degree", sh_degree, 0, 3)
    _float_tensor(op, "means", means, (None, 3))
    n, like = means.shape[0], ("means", means)
    _float_tensor(op, "opacities", opacities, (n,), like)
    _float_tensor(op, "colors", colors, (n, None) if sh_degree is None else (n, None, 3), like)
    check_int(op, "tile_size", tile_size, 1)
    c = viewmats.shape[0] if isinstance(viewmats, Tensor) else 0
    stages = backend
    if stages is None:  # one choice for every stage, so the stages agree on device support
        stages = _backend.resolve(None, means.device, "gs_rasterize_fwd")

    radii, means2d, depths, conics, compensations = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, opacities=opacities, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, antialiased=rasterize_mode == "antialiased", backend=stages)
    opac = opacities[None].expand(c, n)
    if rasterize_mode == "antialiased":
        opac = opac * compensations

    feats, backgrounds = reference.shade(
        means, colors, viewmats, depths, sh_degree, render_mode, backgrounds,
        sh=lambda degree, dirs, coeffs: spherical_harmonics(degree, dirs, coeffs, backend=stages))

    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = intersect_tiles(means2d, radii, depths, tile_size, tw, th,
                                                              backend=stages)
    offsets = isect_offsets(isect_ids, c, tw, th, backend=stages)
    render, alphas = rasterize_to_pixels(means2d, conics, feats, opac, width, height, tile_size, offsets,
                                         flatten_ids, backgrounds=backgrounds, absgrad=absgrad, backend=stages)
    render = reference.expected_depth(render, alphas, render_mode)
    _remember("rasterize_gaussians", backend, means.device, stages)
    return render, alphas, _meta(radii, means2d, depths, conics, opac, tiles_per_gauss, isect_ids, flatten_ids,
                                 offsets, width, height, tile_size, c)


def _meta(radii, means2d, depths, conics, opac, tiles_per_gauss, isect_ids, flatten_ids, offsets, width, height,
          tile_size, c) -> Dict:
    return {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac,
            "tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids, "flatten_ids": flatten_ids,
            "isect_offsets": offsets, "width": width, "height": height, "tile_size": tile_size, "n_cameras": c}


def _sh_native(degree, dirs, coeffs):
    lead = coeffs.shape[:-2]
    return _SH_FWD(degree, dirs.reshape(-1, 3), coeffs.reshape(-1, coeffs.shape[-2], 3)).reshape(*lead, 3)


def _rasterize_native(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                      radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode, rasterize_mode):
    """_rasterize_gaussians on the native ops, without the Python checks (the ops' C++ host code has them, the
    caller the rest) and with the stages' backend choice made once; the results are the same tensors."""
    antialiased = rasterize_mode == "antialiased"
    c, n = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, compensations = _PROJECT_FWD(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
        antialiased)
    opac = opacities.expand(c, n)  # (the checked path's opacities[None].expand(c, n), one view op fewer)
    if antialiased:
        opac = opac * compensations
    if render_mode in ("D", "ED"):  # depth only: no native op reads colors, so none would check them
        _backend.check_finite("rasterize_gaussians", "colors", colors)
    feats, backgrounds = reference.shade(means, colors, viewmats, depths, sh_degree, render_mode, backgrounds,
                                         sh=_sh_native)
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = _INTERSECT(means2d, radii, depths, tile_size, tw, th)
    offsets = _OFFSETS(isect_ids, c, tw, th)
    render, alphas, _, _ = _RASTER_FWD(means2d, conics, feats, opac, backgrounds, width, height, tile_size, offsets,
                                       flatten_ids, False)
    render = reference.expected_depth(render, alphas, render_mode)
    return render, alphas, _meta(radii, means2d, depths, conics, opac, tiles_per_gauss, isect_ids, flatten_ids,
                                 offsets, width, height, tile_size, c)
