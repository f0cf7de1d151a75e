"""Triton Gaussian-splatting stage ops against gsplat 1.5.3's pure-torch functions (gsplat.cuda._torch_impl)
and, for rasterization, a dense torch replay of gsplat's CUDA blending rules, forward and gradients. On CPU the
kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py without a GPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyops  # noqa: F401  (imports the Triton module when the install maps it)

triton = pytest.importorskip("triton")
_impl = pytest.importorskip("gsplat.cuda._torch_impl")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU needs TRITON_INTERPRET=1", allow_module_level=True)


def _load_kernels():
    """The Triton module of this checkout. An editable install made from another checkout may map
    pyops.triton_kernels elsewhere; then load this checkout's file under the same module name."""
    path = Path(__file__).resolve().parents[1] / "triton_kernels" / "gaussians.py"
    name = "pyops.triton_kernels.gaussians"
    mod = sys.modules.get(name)
    if mod is not None and Path(mod.__file__).resolve() == path:
        return mod
    if mod is not None or hasattr(torch.ops.pyops, "gs_rasterize_fwd_triton"):
        pytest.skip(f"another checkout's {name} is registered", allow_module_level=True)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


K = _load_kernels()
ops = torch.ops.pyops


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------


def look_at(eye, target):
    """World-to-camera [4, 4] (OpenCV: x right, y down, z forward)."""
    f = target - eye
    f = f / f.norm()
    up = torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype)
    r = torch.linalg.cross(up, f)
    r = r / r.norm()
    u = torch.linalg.cross(f, r)
    R = torch.stack([r, u, f])
    m = torch.eye(4, dtype=eye.dtype)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m


def scene(seed, n=60, c=3, width=32, height=32, degenerate=False):
    g = gen(seed)
    means = torch.randn(n, 3, generator=g) * 0.8
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 2.3)
    views, ks = [], []
    for i in range(c):
        ang = 2 * torch.pi * i / c + 0.3 * torch.rand((), generator=g)
        eye = torch.stack([3.0 * torch.cos(ang), 0.4 * torch.randn((), generator=g), 3.0 * torch.sin(ang)])
        views.append(look_at(eye, torch.zeros(3)))
        f = 0.9 * width * (1 + 0.2 * torch.rand((), generator=g))
        ks.append(torch.tensor([[f, 0.0, width / 2 + 1.3], [0.0, f * 1.05, height / 2 - 0.7], [0.0, 0.0, 1.0]]))
    viewmats = torch.stack(views)
    Ks = torch.stack(ks)
    if degenerate:
        scales[:5] = 0.0  # zero scales: eps2d keeps the 2D covariance invertible
        scales[5:10, 1] = -scales[5:10, 1]  # negative scales: same covariance as positive
        means[10:15] = viewmats[0, :3, :3].T @ (torch.tensor([0.1, 0.0, -1.0]) - viewmats[0, :3, 3])  # behind cam 0
        means[15:18] = viewmats[0, :3, :3].T @ (torch.tensor([0.0, 0.0, 0.005]) - viewmats[0, :3, 3])  # near
    return means, quats, scales, viewmats, Ks


def to(device, *ts):
    return [t.to(device) for t in ts]


# ---------------------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------------------


def oracle_project(means, quats, scales, viewmats, Ks, width, height, eps2d, near, far, radius_clip, aa):
    covars, _ = _impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False, triu=False)
    radii, means2d, depths, conics, comps = _impl._fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d, near, far, calc_compensations=aa)
    # gsplat's CUDA kernel also culls pairs whose radii are both <= radius_clip.
    clipped = (radii <= radius_clip).all(dim=-1, keepdim=True)
    radii = torch.where(clipped, 0, radii)
    if comps is None:
        comps = torch.ones_like(depths)
    return radii, means2d, depths, conics, comps


PROJ_CASES = [  # (seed, n, c, width, height, antialiased, radius_clip, degenerate)
    (0, 50, 3, 32, 32, False, 0.0, False),
    (1, 80, 2, 24, 17, True, 0.0, False),
    (2, 40, 3, 32, 24, True, 3.0, True),
]


@pytest.mark.parametrize("case", PROJ_CASES)
def test_project(case):
    seed, n, c, width, height, aa, clip, degenerate = case
    means, quats, scales, viewmats, Ks = scene(seed, n, c, width, height, degenerate)
    eps2d, near, far = 0.3, 0.01, 1e10
    args = (width, height, eps2d, near, far, clip, aa)
    radii, m2d, dep, con, comp = ops.gs_project_fwd_triton(*to(DEVICE, means, quats, scales), None, *to(DEVICE, viewmats, Ks), *args)
    for t in (m2d, dep, con, comp):
        assert torch.isfinite(t).all()
    radii, m2d, dep, con, comp = (t.cpu() for t in (radii, m2d, dep, con, comp))
    ref = oracle_project(means.double(), quats.double(), scales.double(), viewmats.double(), Ks.double(), *args)
    ref32 = oracle_project(means, quats, scales, viewmats, Ks, *args)
    assert radii.dtype == torch.int32 and radii.shape == (c, n, 2)
    # radii are ceil()s: allow a rare off-by-one where fp32 lands on the other side of an integer.
    diff = (radii - ref32[0]).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.02
    valid = (radii > 0).all(-1) & (ref[0] > 0).all(-1)
    assert valid.sum() > n // 2
    if degenerate:
        assert (radii[0, 10:18] == 0).all(), "behind / too near the camera must be culled"
    for name, got, want in (("means2d", m2d, ref[1]), ("depths", dep, ref[2]), ("conics", con, ref[3]),
                            ("compensations", comp, ref[4])):
        g, w = got[valid].double(), want[valid]
        torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-4 * w.abs().max().item(), msg=name)
    # culled pairs are written as zeros
    assert (m2d[~(radii > 0).all(-1)] == 0).all()

    # Backward against autograd through the float64 oracle, upstream gradients zero on culled pairs.
    g = gen(seed + 100)
    vm = torch.randn(c, n, 2, generator=g) * valid[..., None]
    vd = torch.randn(c, n, generator=g) * valid
    vc = torch.randn(c, n, 3, generator=g) * valid[..., None]
    vp = torch.randn(c, n, generator=g) * valid
    leaves = [t.double().requires_grad_() for t in (means, quats, scales)]
    out = oracle_project(*leaves, viewmats.double(), Ks.double(), *args)
    loss = (out[1] * vm).sum() + (out[2] * vd).sum() + (out[3] * vc).sum() + ((out[4] * vp).sum() if aa else 0)
    want = torch.autograd.grad(loss, leaves)
    got = ops.gs_project_bwd_triton(*to(DEVICE, means, quats, scales, viewmats, Ks), width, height, eps2d, aa,
                                    *to(DEVICE, radii, con, comp, vm, vd, vc, vp))
    for name, gt, w in zip(("v_means", "v_quats", "v_scales"), got, want):
        gt = gt.cpu().double()
        assert torch.isfinite(gt).all(), name
        torch.testing.assert_close(gt, w, rtol=2e-3, atol=2e-3 * w.abs().max().item(), msg=name)


def test_project_empty_and_errors():
    z = torch.zeros(0, 3, device=DEVICE)
    means, quats, scales, viewmats, Ks = to(DEVICE, *scene(0, 4, 2))
    out = ops.gs_project_fwd_triton(z, torch.zeros(0, 4, device=DEVICE), z, None, viewmats, Ks, 8, 8, 0.3, 0.01, 1e10,
                                    0.0, False)
    assert out[0].shape == (2, 0, 2)
    with pytest.raises(TypeError, match="float64"):
        ops.gs_project_fwd_triton(means.double(), quats, scales, None, viewmats, Ks, 8, 8, 0.3, 0.01, 1e10, 0.0, False)
    with pytest.raises(ValueError, match="quats"):
        ops.gs_project_fwd_triton(means, quats[:, :3], scales, None, viewmats, Ks, 8, 8, 0.3, 0.01, 1e10, 0.0, False)


# ---------------------------------------------------------------------------------------------------------
# Spherical harmonics
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh(degree):
    g = gen(degree)
    m, k = 70, 16 if degree != 1 else 9  # K may exceed (degree + 1)^2
    dirs = torch.randn(m, 3, generator=g) * 2
    coeffs = torch.randn(m, k, 3, generator=g)
    v = torch.randn(m, 3, generator=g)
    got = ops.gs_sh_fwd_triton(degree, *to(DEVICE, dirs, coeffs)).cpu()
    d64, c64 = dirs.double().requires_grad_(), coeffs.double().requires_grad_()
    want = _impl._spherical_harmonics(degree, d64, c64)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    v_coeffs, v_dirs = ops.gs_sh_bwd_triton(degree, *to(DEVICE, dirs, coeffs, v))
    w_dirs, w_coeffs = torch.autograd.grad((want * v).sum(), (d64, c64), allow_unused=True)
    w_dirs = torch.zeros_like(d64) if w_dirs is None else w_dirs  # degree 0 does not read dirs
    torch.testing.assert_close(v_coeffs.cpu().double(), w_coeffs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_dirs.cpu().double(), w_dirs, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Intersection and rasterization
# ---------------------------------------------------------------------------------------------------------


def test_intersect_matches_gsplat():
    means, quats, scales, viewmats, Ks = to(DEVICE, *scene(3, 60, 3, 24, 17))
    radii, m2d, dep, con, comp = ops.gs_project_fwd_triton(means, quats, scales, None, viewmats, Ks, 24, 17, 0.3, 0.01,
                                                           1e10, 0.0, False)
    for ts in (8, 16):
        tw, th = triton.cdiv(24, ts), triton.cdiv(17, ts)
        tpg, ids, flat = ops.gs_intersect_tiles_triton(m2d, radii, dep, ts, tw, th)
        r_tpg, r_ids, r_flat = _impl._isect_tiles(m2d.cpu(), radii.cpu(), dep.cpu(), ts, tw, th)
        assert torch.equal(tpg.cpu(), r_tpg) and torch.equal(ids.cpu(), r_ids) and torch.equal(flat.cpu(), r_flat)
        off = ops.gs_isect_offsets_triton(ids, 3, tw, th)
        assert torch.equal(off.cpu(), _impl._isect_offset_encode(r_ids, 3, tw, th))


def oracle_rasterize(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                     flatten_ids, per_pixel_means=None):
    """gsplat's CUDA blending replayed densely in torch: per camera, every tile's depth-sorted list, one
    Gaussian at a time over all pixels (the skip and stop decisions detached, the blend differentiable).
    per_pixel_means [C, H*W, N, 2], if given, replaces means2d so its gradient is per pixel (absgrad)."""
    c, n, d = colors.shape
    dev = means2d.device
    n_isects = flatten_ids.shape[0]
    offs = torch.cat([isect_offsets.flatten().long(), torch.tensor([n_isects], device=dev)])
    tw = isect_offsets.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    tile_of = ((ys // tile_size) * tw + xs // tile_size).flatten()  # [HW]
    px, py = xs.flatten() + 0.5, ys.flatten() + 0.5
    colors_out, alphas_out, last_out = [], [], []
    for ci in range(c):
        hw = height * width
        # rank of each (tile, Gaussian) in the tile's list, then a per-pixel [HW, L] list of Gaussians.
        ntile = isect_offsets[ci].numel()
        starts = offs[ci * ntile:(ci + 1) * ntile + 1]
        lens = (starts[1:] - starts[:-1])[tile_of]  # [HW]
        L = int(lens.max()) if hw else 0
        T = torch.ones(hw, dtype=colors.dtype, device=dev)
        acc = torch.zeros(hw, d, dtype=colors.dtype, device=dev)
        done = torch.zeros(hw, dtype=torch.bool, device=dev)
        last = torch.full((hw,), -1, dtype=torch.long, device=dev)
        for step in range(L):
            has = step < lens
            idx = torch.where(has, starts[:-1][tile_of] + step, 0)
            gid = flatten_ids[idx].long() - ci * n
            gid = torch.where(has, gid, 0)
            if per_pixel_means is None:
                mxy = means2d[ci, gid]
            else:
                mxy = per_pixel_means[ci, torch.arange(hw, device=dev), gid]
            dx, dy = mxy[:, 0] - px, mxy[:, 1] - py
            cab = conics[ci, gid]
            sigma = 0.5 * (cab[:, 0] * dx * dx + cab[:, 2] * dy * dy) + cab[:, 1] * dx * dy
            alpha = torch.clamp_max(opacities[ci, gid] * torch.exp(-sigma), 0.999)
            with torch.no_grad():
                ok = has & ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
                stop = ok & (T * (1 - alpha) <= 1e-4)
                blend = ok & ~stop
                done = done | stop
            w = torch.where(blend, alpha * T, 0.0)
            acc = acc + w[:, None] * colors[ci, gid]
            T = torch.where(blend, T * (1 - alpha), T)
            last = torch.where(blend, idx, last)
        if backgrounds is not None:
            acc = acc + T[:, None] * backgrounds[ci]
        colors_out.append(acc.reshape(height, width, d))
        alphas_out.append((1 - T).reshape(height, width, 1))
        last_out.append(last.reshape(height, width))
    return torch.stack(colors_out), torch.stack(alphas_out), torch.stack(last_out)


RASTER_CASES = [  # (seed, n, c, width, height, tile_size, channels, backgrounds, absgrad, splat scale)
    (0, 60, 2, 32, 32, 16, 3, True, True, 2.5),
    (1, 80, 3, 24, 17, 8, 3, False, False, 2.5),
    (2, 40, 2, 24, 17, 16, 5, True, False, 2.5),
    (3, 100, 1, 32, 32, 8, 1, False, True, 2.5),
    # more channels than the backward's per-channel loop (fp32 dots over channel blocks), a tile size that is
    # not a power of two, sparse splats (pixels that blend nothing: last_ids -1)
    (5, 30, 2, 24, 17, 12, 17, True, True, 0.7),
]


def raster_inputs(seed, n, c, width, height, tile_size, channels, degenerate=False, spread=2.5):
    means, quats, scales, viewmats, Ks = scene(seed, n, c, width, height, degenerate)
    scales = scales * spread  # bigger splats: more overlap, saturated pixels
    radii, m2d, dep, con, comp = (t.cpu() for t in ops.gs_project_fwd_triton(
        *to(DEVICE, means, quats, scales), None, *to(DEVICE, viewmats, Ks), width, height, 0.3, 0.01, 1e10, 0.0,
        False))
    g = gen(seed + 7)
    colors = torch.rand(c, n, channels, generator=g)
    opac = torch.rand(c, n, generator=g) * 0.6 + 0.4
    opac[:, :4] = 1.0  # alpha clamps at 0.999
    bg = torch.rand(c, channels, generator=g)
    tw, th = triton.cdiv(width, tile_size), triton.cdiv(height, tile_size)
    _, _, flat = ops.gs_intersect_tiles_triton(m2d, radii, dep, tile_size, tw, th)
    ids = ops.gs_intersect_tiles_triton(m2d, radii, dep, tile_size, tw, th)[1]
    offsets = ops.gs_isect_offsets_triton(ids, c, tw, th)
    return m2d, con, colors, opac, bg, offsets, flat


@pytest.mark.parametrize("case", RASTER_CASES)
def test_rasterize(case):
    seed, n, c, width, height, ts, ch, use_bg, absgrad, spread = case
    m2d, con, colors, opac, bg, offsets, flat = raster_inputs(seed, n, c, width, height, ts, ch, spread=spread)
    bg = bg if use_bg else None
    args = (width, height, ts)
    out_c, out_a, last, trans = ops.gs_rasterize_fwd_triton(*to(DEVICE, m2d, con, colors, opac),
                                                            bg.to(DEVICE) if use_bg else None, *args,
                                                            *to(DEVICE, offsets, flat))
    out_c, out_a, last, trans = out_c.cpu(), out_a.cpu(), last.cpu(), trans.cpu()
    leaves = [t.double().requires_grad_() for t in (m2d, con, colors, opac)]
    bg64 = bg.double().requires_grad_() if use_bg else None
    hw = height * width
    ppm = m2d.double()[:, None].expand(c, hw, n, 2).clone().requires_grad_()
    r_c, r_a, r_last = oracle_rasterize(leaves[0], *leaves[1:], bg64, *args, offsets, flat, per_pixel_means=ppm)
    torch.testing.assert_close(out_c.double(), r_c.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_a.double(), r_a.detach(), rtol=1e-5, atol=1e-5)
    # T itself is ill-conditioned in fp32: an alpha near the 0.999 clamp carries eps32 / (1 - alpha) ~ 6e-5 of
    # relative error into every later T.
    torch.testing.assert_close(trans.double(), 1 - r_a.detach(), rtol=2e-4, atol=1e-8)
    # Exact on these scenes; fp32 rounding could in principle move a T <= 1e-4 stop by one Gaussian.
    assert torch.equal(last, r_last.int())
    assert (last >= 0).any() and ((last == -1).any() or spread > 1)

    g = gen(seed + 11)
    v_c = torch.randn(c, height, width, ch, generator=g)
    v_a = torch.randn(c, height, width, 1, generator=g)
    loss = (r_c * v_c).sum() + (r_a * v_a).sum()
    # means2d enters through its per-pixel copies: their sum is v_means2d, their |.| sum the absgrad.
    wants = list(torch.autograd.grad(loss, leaves[1:] + ([bg64] if use_bg else []) + [ppm]))
    wants.insert(0, wants[-1].sum(dim=1))
    got = ops.gs_rasterize_bwd_triton(*to(DEVICE, m2d, con, colors, opac), bg.to(DEVICE) if use_bg else None, *args,
                                      *to(DEVICE, offsets, flat, trans, last, v_c, v_a), absgrad)
    names = ["v_means2d", "v_conics", "v_colors", "v_opacities"] + (["v_backgrounds"] if use_bg else [])
    # 2e-5 of the gradient's scale: at most 1.1e-6 measured under the interpreter (fp32 sums of O(100) terms),
    # where starting from 1 - render_alphas instead of the exact final T gave up to 9e-5.
    for name, gt, w in zip(names, got, wants):
        gt = gt.cpu().double()
        assert torch.isfinite(gt).all(), name
        torch.testing.assert_close(gt, w, rtol=2e-5, atol=2e-5 * max(1.0, w.abs().max().item()), msg=name)
    if not use_bg:
        assert got[4].numel() == 0
    if absgrad:
        w_abs = wants[-1].abs().sum(dim=1)
        torch.testing.assert_close(got[5].cpu().double(), w_abs, rtol=2e-5, atol=2e-5 * w_abs.abs().max().item())
    else:
        assert got[5].numel() == 0


def test_rasterize_degenerate_and_empty():
    # Zero/negative scales and Gaussians behind the camera: finite outputs and gradients.
    m2d, con, colors, opac, bg, offsets, flat = raster_inputs(4, 40, 2, 24, 17, 8, 3, degenerate=True)
    outs = ops.gs_rasterize_fwd_triton(*to(DEVICE, m2d, con, colors, opac, bg), 24, 17, 8, *to(DEVICE, offsets, flat))
    assert all(torch.isfinite(t.float()).all() for t in outs)
    v_c = torch.ones(2, 17, 24, 3, device=DEVICE)
    v_a = torch.ones(2, 17, 24, 1, device=DEVICE)
    grads = ops.gs_rasterize_bwd_triton(*to(DEVICE, m2d, con, colors, opac, bg), 24, 17, 8,
                                        *to(DEVICE, offsets, flat), outs[3], outs[2], v_c, v_a, True)
    assert all(torch.isfinite(t).all() for t in grads)
    # Empty scene: background everywhere, last_ids -1, zero gradients.
    c, d = 2, 3
    e2 = torch.zeros(c, 0, 2, device=DEVICE)
    empty = (e2, torch.zeros(c, 0, 3, device=DEVICE), torch.zeros(c, 0, d, device=DEVICE),
             torch.zeros(c, 0, device=DEVICE))
    offsets = torch.zeros(c, 3, 3, dtype=torch.int32, device=DEVICE)
    flat = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    bg = torch.rand(c, d, device=DEVICE)
    rc, ra, last, trans = ops.gs_rasterize_fwd_triton(*empty, bg, 17, 20, 8, offsets, flat)
    assert torch.equal(rc, bg[:, None, None, :].expand_as(rc)) and (ra == 0).all() and (last == -1).all()
    assert (trans == 1).all()
    grads = ops.gs_rasterize_bwd_triton(*empty, bg, 17, 20, 8, offsets, flat, trans, last, torch.ones_like(rc),
                                        torch.ones_like(ra), False)
    torch.testing.assert_close(grads[4], torch.full_like(bg, 17 * 20.0))


def test_rasterize_errors():
    m2d, con, colors, opac, bg, offsets, flat = to(DEVICE, *raster_inputs(0, 10, 1, 16, 16, 16, 3))
    with pytest.raises(ValueError, match="isect_offsets"):
        ops.gs_rasterize_fwd_triton(m2d, con, colors, opac, None, 16, 16, 8, offsets, flat)
    with pytest.raises(ValueError, match="conics"):
        ops.gs_rasterize_fwd_triton(m2d, con[..., :2], colors, opac, None, 16, 16, 16, offsets, flat)
    with pytest.raises(TypeError, match="float64"):
        ops.gs_rasterize_fwd_triton(m2d.double(), con, colors, opac, None, 16, 16, 16, offsets, flat)
    col, alp, last, trans = ops.gs_rasterize_fwd_triton(m2d, con, colors, opac, None, 16, 16, 16, offsets, flat)
    with pytest.raises(ValueError, match="final_transmittances"):
        ops.gs_rasterize_bwd_triton(m2d, con, colors, opac, None, 16, 16, 16, offsets, flat, trans[..., 0], last,
                                    torch.ones_like(col), torch.ones_like(alp), False)




@pytest.mark.skipif(DEVICE != "cuda", reason="fake-tensor tracing of interpreted Triton kernels fails on CPU "
                                              "(as for vq_*_triton)")
def test_opcheck_and_compile():
    means, quats, scales, viewmats, Ks = to(DEVICE, *scene(0, 20, 2, 16, 16))
    torch.library.opcheck(ops.gs_project_fwd_triton.default,
                          (means, quats, scales, viewmats, Ks, 16, 16, 0.3, 0.01, 1e10, 0.0, True))
    torch.library.opcheck(ops.gs_sh_fwd_triton.default, (2, means, torch.randn(20, 9, 3, device=DEVICE)))
    m2d, con, colors, opac, bg, offsets, flat = to(DEVICE, *raster_inputs(0, 20, 1, 16, 16, 8, 3))
    args = (m2d, con, colors, opac, bg, 16, 16, 8, offsets, flat)
    torch.library.opcheck(ops.gs_rasterize_fwd_triton.default, args)
    compiled = torch.compile(lambda *a: ops.gs_rasterize_fwd_triton(*a), fullgraph=True)
    for got, want in zip(compiled(*args), ops.gs_rasterize_fwd_triton(*args)):
        torch.testing.assert_close(got, want)


def test_kernels_compile_for_sm90():
    """The kernels compile for a real GPU (sm_90) without one, in a process without the interpreter; ptxas
    reports no register spills for the common configurations (tests/gaussians_triton_compile.py)."""
    pytest.importorskip("triton.backends.nvidia")
    script = Path(__file__).with_name("gaussians_triton_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
