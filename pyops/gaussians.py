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
from ._checks import check_choice, check_int, check_tensor
from .reference import gaussians as reference

if _backend.HAS_TRITON:
    # Imports the stage modules (gaussians_project, _sh, _intersect, _raster): registers pyops::gs_*_triton.
    from .triton_kernels import gaussians as _triton  # noqa: F401

RENDER_MODES, RASTERIZE_MODES = reference.RENDER_MODES, reference.RASTERIZE_MODES

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd of the native and Triton op pairs.


def _fake_project_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                      radius_clip, antialiased):
    c, n = viewmats.shape[0], means.shape[0]
    return (means.new_empty(c, n, 2, dtype=torch.int32), means.new_empty(c, n, 2), means.new_empty(c, n),
            means.new_empty(c, n, 3), means.new_empty(c, n))


def _fake_project_bwd(means, quats, scales, viewmats, Ks, width, height, eps2d, antialiased, radii, conics,
                      compensations, v_means2d, v_depths, v_conics, v_compensations):
    return torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales)


def _fake_sh_fwd(degree, dirs, coeffs):
    return coeffs.new_empty(dirs.shape[0], 3)


def _fake_sh_bwd(degree, dirs, coeffs, v_colors):
    return torch.empty_like(coeffs), torch.empty_like(dirs)


def _fake_intersect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height):
    m = torch.library.get_ctx().new_dynamic_size()  # the number of (camera, Gaussian, tile) hits
    c, n = depths.shape
    return (depths.new_empty(c, n, dtype=torch.int32), depths.new_empty(m, dtype=torch.long),
            depths.new_empty(m, dtype=torch.int32))


def _fake_isect_offsets(isect_ids, n_cameras, tile_width, tile_height):
    return isect_ids.new_empty(n_cameras, tile_height, tile_width, dtype=torch.int32)


def _fake_rasterize_fwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                        flatten_ids, absgrad=False):
    c, d = colors.shape[0], colors.shape[-1]
    return (colors.new_empty(c, height, width, d), colors.new_empty(c, height, width, 1),
            colors.new_empty(c, height, width, dtype=torch.int32), colors.new_empty(c, height, width, 1))


def _fake_rasterize_bwd(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                        flatten_ids, final_transmittances, last_ids, v_render_colors, v_render_alphas, absgrad):
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
        means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, trans, last_ids = ctx.saved_tensors
        width, height, tile_size = ctx.args
        v_render_alphas = _zeros_if_none(v_render_alphas, trans)
        if v_final_transmittances is not None:  # final_transmittances = 1 - render_alphas
            v_render_alphas = v_render_alphas - v_final_transmittances
        v_render_colors = _zeros_if_none(v_render_colors, colors.new_empty(trans.shape[:-1] + colors.shape[-1:]))
        v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs = bwd_op(
            means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids, trans,
            last_ids, v_render_colors, v_render_alphas, ctx.absgrad_to is not None)
        if ctx.absgrad_to is not None:
            ctx.absgrad_to.absgrad = v_abs  # gsplat's convention: meta["means2d"].absgrad
        return (v_means2d, v_conics, v_colors, v_opacities, v_bg if backgrounds is not None else None,
                None, None, None, None, None, None)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _register_all(suffix: str) -> None:
    ops = torch.ops.pyops
    _register_project_autograd(f"pyops::gs_project_fwd{suffix}", getattr(ops, f"gs_project_bwd{suffix}"))
    _register_sh_autograd(f"pyops::gs_sh_fwd{suffix}", getattr(ops, f"gs_sh_bwd{suffix}"))
    _register_rasterize_autograd(f"pyops::gs_rasterize_fwd{suffix}", getattr(ops, f"gs_rasterize_bwd{suffix}"))


if _backend._NATIVE_ERROR is None:
    for _name, _fake in (("gs_project_fwd", _fake_project_fwd), ("gs_project_bwd", _fake_project_bwd),
                         ("gs_sh_fwd", _fake_sh_fwd), ("gs_sh_bwd", _fake_sh_bwd),
                         ("gs_intersect_tiles", _fake_intersect_tiles), ("gs_isect_offsets", _fake_isect_offsets),
                         ("gs_rasterize_fwd", _fake_rasterize_fwd), ("gs_rasterize_bwd", _fake_rasterize_bwd)):
        torch.library.register_fake(f"pyops::{_name}")(_fake)
    _register_all("")
if _backend.HAS_TRITON and hasattr(torch.ops.pyops, "gs_rasterize_fwd_triton"):
    _register_all("_triton")  # triton_op derives the fake kernels from the Python launchers


# ----------------------------------------------------------------------------------------------------------
# The stages, each a public op.


def _op(which: str, name: str):
    return getattr(torch.ops.pyops, name + ("_triton" if which == "triton" else ""))


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
    which = _backend.resolve(backend, means.device, "gs_project_fwd")
    if which == "torch":
        return reference.project_ewa(means, reference.quat_scale_to_covar(quats, scales), viewmats, Ks, width,
                                     height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                                     radius_clip=radius_clip, antialiased=antialiased, opacities=opacities)
    if torch.is_grad_enabled() and (viewmats.requires_grad or Ks.requires_grad):
        raise ValueError(f"{op}: gradients for viewmats and Ks (camera optimisation) are only available with "
                         f"backend='torch'; detach them or choose that backend (got backend={which!r})")
    radii, means2d, depths, conics, compensations = _op(which, "gs_project_fwd")(
        means.contiguous(), quats.contiguous(), scales.contiguous(),
        None if opacities is None else opacities.detach().contiguous(), viewmats.contiguous(), Ks.contiguous(),
        width, height, float(eps2d), float(near_plane), float(far_plane), float(radius_clip), antialiased)
    return radii, means2d, depths, conics, compensations if antialiased else None


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Colors ``(..., 3)`` of SH ``coeffs`` ``(..., K, 3)`` (K >= (degree + 1)^2) in view directions ``dirs``
    ``(..., 3)`` (any norm), gsplat's basis and signs; no +0.5 offset or clamp (`rasterize_gaussians` adds them)."""
    op = "spherical_harmonics"
    check_int(op, "degree", degree, 0, 3)
    _float_tensor(op, "coeffs", coeffs, None)
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3 or coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"{op}: coeffs must be (..., K, 3) with K >= {(degree + 1) ** 2} for degree {degree}, "
                         f"got shape {tuple(coeffs.shape)}")
    _float_tensor(op, "dirs", dirs, (*coeffs.shape[:-2], 3), ("coeffs", coeffs))
    lead = coeffs.shape[:-2]
    which = _backend.resolve(backend, coeffs.device, "gs_sh_fwd")
    if which == "torch":
        return reference.spherical_harmonics(degree, dirs, coeffs)
    out = _op(which, "gs_sh_fwd")(degree, dirs.reshape(-1, 3).contiguous(),
                                 coeffs.reshape(-1, *coeffs.shape[-2:]).contiguous())
    return out.reshape(*lead, 3)


def intersect_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int,
                    tile_height: int, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Every (camera, Gaussian, tile) overlap as a sorted key ``camera | tile | depth``.

    Returns:
        ``(tiles_per_gauss (C, N) int32, isect_ids (M,) int64 sorted, flatten_ids (M,) int32 = c * N + g)``.
    """
    op = "intersect_tiles"
    _float_tensor(op, "means2d", means2d, (None, None, 2))
    like = ("means2d", means2d)
    _float_tensor(op, "depths", depths, means2d.shape[:2], like)
    check_tensor(op, "radii", radii, means2d.shape, dtype=torch.int32, like=like, same_dtype=False)
    for name, v in (("tile_size", tile_size), ("tile_width", tile_width), ("tile_height", tile_height)):
        check_int(op, name, v, 1)
    which = _backend.resolve(backend, means2d.device, "gs_intersect_tiles")
    if which == "torch":
        return reference.intersect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
    return _op(which, "gs_intersect_tiles")(means2d.contiguous(), radii.contiguous(), depths.contiguous(), tile_size,
                                           tile_width, tile_height)


def isect_offsets(isect_ids: Tensor, n_cameras: int, tile_width: int, tile_height: int, *,
                  backend: Optional[str] = None) -> Tensor:
    """Index of each (camera, tile)'s first intersection in the sorted ``isect_ids``: ``(C, th, tw)`` int32 (an
    empty tile points at the next run)."""
    op = "isect_offsets"
    check_tensor(op, "isect_ids", isect_ids, (None,), dtype=torch.int64)
    check_int(op, "n_cameras", n_cameras, 0)
    check_int(op, "tile_width", tile_width, 1)
    check_int(op, "tile_height", tile_height, 1)
    if n_cameras.bit_length() + (tile_width * tile_height).bit_length() > 32:  # before allocating the output
        raise ValueError(f"{op}: n_cameras={n_cameras} x tile_width={tile_width} x tile_height={tile_height} tiles do "
                         "not fit the 32 key bits of isect_ids")
    which = _backend.resolve(backend, isect_ids.device, "gs_isect_offsets")
    if which == "torch":
        return reference.isect_offsets(isect_ids, n_cameras, tile_width, tile_height)
    return _op(which, "gs_isect_offsets")(isect_ids.contiguous(), n_cameras, tile_width, tile_height)


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
    which = _backend.resolve(backend, means2d.device, "gs_rasterize_fwd")
    if which == "torch":
        if absgrad:
            raise ValueError(f"{op}: absgrad needs the cpu, cuda or triton backend (autograd cannot see the "
                             "per-pixel gradients of the torch reference)")
        return reference.rasterize_tiles(means2d, conics, colors, opacities, width, height, tile_size,
                                         isect_offsets, flatten_ids, backgrounds)
    render, alphas, _, _ = _op(which, "gs_rasterize_fwd")(
        means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(),
        None if backgrounds is None else backgrounds.contiguous(), width, height, tile_size,
        isect_offsets.contiguous(), flatten_ids.to(torch.int32).contiguous(), absgrad)
    return render, alphas


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
    if backend is None:  # one choice for every stage, so the stages agree on device support
        backend = _backend.resolve(None, means.device, "gs_rasterize_fwd")

    radii, means2d, depths, conics, compensations = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, opacities=opacities, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, antialiased=rasterize_mode == "antialiased", backend=backend)
    opac = opacities[None].expand(c, n)
    if rasterize_mode == "antialiased":
        opac = opac * compensations

    feats, backgrounds = reference.shade(
        means, colors, viewmats, depths, sh_degree, render_mode, backgrounds,
        sh=lambda degree, dirs, coeffs: spherical_harmonics(degree, dirs, coeffs, backend=backend))

    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = intersect_tiles(means2d, radii, depths, tile_size, tw, th,
                                                              backend=backend)
    offsets = isect_offsets(isect_ids, c, tw, th, backend=backend)
    render, alphas = rasterize_to_pixels(means2d, conics, feats, opac, width, height, tile_size, offsets,
                                         flatten_ids, backgrounds=backgrounds, absgrad=absgrad, backend=backend)
    render = reference.expected_depth(render, alphas, render_mode)
    meta = {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac,
            "tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids, "flatten_ids": flatten_ids,
            "isect_offsets": offsets, "width": width, "height": height, "tile_size": tile_size, "n_cameras": c}
    return render, alphas, meta
