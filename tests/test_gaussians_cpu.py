"""Native CPU kernels of the Gaussian-splatting stage ops against gsplat 1.5.3's pure-torch implementation.

Projection, SH, tile intersection and tile offsets use `gsplat.cuda._torch_impl` as the oracle (it runs on the
CPU). gsplat's torch rasterizer needs CUDA (rasterize_to_indices_in_range) and nerfacc, so rasterization is
checked against `torch_rasterize` below: a direct, autograd-friendly transcription of gsplat's per-pixel rules
(front to back over the tile's sorted list; skip on sigma < 0 or alpha < 1/255; alpha = min(0.999, o e^-sigma);
stop before the Gaussian that takes T to <= 1e-4; pixel centres at +0.5).
"""

import pytest
import torch

import pyops  # noqa: F401  (loads the native kernels)

gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")

ops = torch.ops.pyops
pytestmark = pytest.mark.skipif(
    not hasattr(ops, "gs_project_fwd") or "pyops::gs_project_fwd" not in
    torch._C._dispatch_get_registrations_for_dispatch_key("CPU"), reason="pyops._C has no CPU gs_* kernels")

DTYPES = [torch.float32, torch.float64]
# (width, height, tile_size): sizes not divisible by the tile size, both tile sizes.
IMAGES = [(40, 27, 16), (64, 48, 8), (40, 27, 8)]
EPS2D, NEAR, FAR = 0.3, 0.01, 1e10


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-5, atol=1e-8)


def assert_close(name, got, want, dtype, scale=None, atol=None):
    """|got - want| <= atol * max(|want|, scale) + rtol * |want| (atol relative to the tensor's magnitude)."""
    t = tol(dtype)
    if atol is not None:
        t["atol"] = max(t["atol"], atol)
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    mag = max(want.abs().max().item() if want.numel() else 0.0, scale or 1e-12)
    err = (got - want).abs()
    bound = t["atol"] * mag + t["rtol"] * want.abs()
    bad = err > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())}/{got.numel()} mismatches, max err {err.max().item():.3g} "
                           f"(magnitude {mag:.3g})")


def look_at(eye, target):
    fwd = target - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    r = torch.stack([right, down, fwd])  # rows: camera x, y, z axes in world coordinates
    v = torch.eye(4, dtype=eye.dtype)
    v[:3, :3] = r
    v[:3, 3] = -r @ eye
    return v


def make_scene(n, c, width, height, dtype, seed, dense=False):
    """Gaussians around the origin seen by c cameras at distance ~5, a few behind the cameras."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)
    means = (rnd(n, 3) * 2 - 1) * torch.tensor([2.5, 2.0, 1.5], dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    log_s = (-2.6, -1.2) if dense else (-3.2, -1.6)
    scales = torch.exp(log_s[0] + (log_s[1] - log_s[0]) * rnd(n, 3))
    opac = (0.5 + 0.5 * rnd(n)) if dense else (0.05 + 0.95 * rnd(n))
    views, ks = [], []
    for i in range(c):
        ang = 0.4 * (i - (c - 1) / 2)
        eye = torch.tensor([5 * torch.sin(torch.tensor(ang)).item(), 0.3 * i, -5 * torch.cos(torch.tensor(ang)).item()],
                           dtype=torch.float64)
        views.append(look_at(eye, torch.zeros(3, dtype=torch.float64)))
        f = 0.9 * width * (1 + 0.1 * i)
        ks.append(torch.tensor([[f, 0, width / 2 + i], [0, f, height / 2 - i], [0, 0, 1]], dtype=torch.float64))
    if n >= 4:  # a couple of Gaussians behind the first camera
        eye0 = torch.linalg.inv(views[0])[:3, 3]
        means[:2] = eye0 - 0.5 * (views[0][2, :3])
    cast = lambda t: t.to(dtype)
    return dict(means=cast(means), quats=cast(quats), scales=cast(scales), opacities=cast(opac),
                viewmats=cast(torch.stack(views)), Ks=cast(torch.stack(ks)), width=width, height=height)


def oracle_project(s, antialiased, eps2d=EPS2D, near=NEAR, far=FAR):
    covars, _ = gsplat_impl._quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False, triu=False)
    radii, means2d, depths, conics, comps = gsplat_impl._fully_fused_projection(
        s["means"], covars, s["viewmats"], s["Ks"], s["width"], s["height"], eps2d, near, far,
        calc_compensations=antialiased)
    if comps is None:
        comps = torch.ones_like(depths)
    return radii, means2d, depths, conics, comps


def our_project(s, antialiased, eps2d=EPS2D, near=NEAR, far=FAR, radius_clip=0.0):
    return ops.gs_project_fwd(s["means"], s["quats"], s["scales"], None, s["viewmats"], s["Ks"], s["width"],
                              s["height"], eps2d, near, far, radius_clip, antialiased)


# ------------------------------------------------------------------------------------------------------------
# Projection
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("n,c,image", [(300, 3, IMAGES[0]), (120, 2, IMAGES[1])], ids=str)
def test_project_fwd_bwd(dtype, antialiased, n, c, image):
    w, h, _ = image
    s = make_scene(n, c, w, h, dtype, seed=n + c)
    radii, means2d, depths, conics, comps = our_project(s, antialiased)
    ref = oracle_project({k: v.double() if torch.is_tensor(v) else v for k, v in s.items()}, antialiased)
    valid = (radii > 0).all(-1)
    ref_valid = (ref[0] > 0).all(-1)
    assert torch.equal(valid, ref_valid)
    assert valid.any() and not valid.all()
    assert torch.equal(radii, ref[0].int())
    for name, got, want in (("means2d", means2d, ref[1]), ("depths", depths, ref[2]), ("conics", conics, ref[3]),
                            ("compensations", comps, ref[4])):
        assert_close(name, got[valid], want[valid], dtype)
        assert (got[~valid] == (1 if name == "compensations" and not antialiased else 0)).all(), name

    # Gradients: autograd through the oracle, with the cotangents of culled pairs zeroed (they contribute nothing).
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(t.shape, generator=g, dtype=torch.float64) * valid.reshape(valid.shape + (1,) * (t.dim() - 2))
           for t in (means2d, depths, conics, comps)]
    leaves = {k: s[k].double().detach().requires_grad_() for k in ("means", "quats", "scales")}
    outs = oracle_project({**s, **leaves, "viewmats": s["viewmats"].double(), "Ks": s["Ks"].double()}, antialiased)
    loss = sum((o * v).sum() for o, v in zip(outs[1:], cot) if o.requires_grad)
    want = torch.autograd.grad(loss, list(leaves.values()))
    got = ops.gs_project_bwd(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], w, h, EPS2D, antialiased,
                             radii, conics, comps, *(t.to(dtype) for t in cot))
    for name, gg, ww in zip(("v_means", "v_quats", "v_scales"), got, want):
        assert gg.dtype == dtype
        assert_close(name, gg, ww, dtype)


def test_project_radius_clip_and_planes():
    s = make_scene(200, 2, 40, 27, torch.float64, seed=3)
    radii = our_project(s, False)[0]
    clipped = our_project(s, False, radius_clip=3.0)[0]
    keep = (radii > 3).any(-1)
    assert torch.equal((clipped > 0).all(-1), keep)
    assert torch.equal(clipped[keep], radii[keep])
    # Near / far planes: a depth equal to the plane is kept (gsplat culls z < near and z > far).
    depths = our_project(s, False)[2]
    z = depths[0][(radii[0] > 0).all(-1)]
    near, far = z.min().item(), z.max().item()
    r2, _, d2, _, _ = our_project(s, False, near=near, far=far)
    assert (r2[0][(radii[0] > 0).all(-1)] > 0).all()
    r3 = our_project(s, False, near=near + 1e-9, far=far - 1e-9)[0]
    assert (r3[0] > 0).all(-1).sum() == (radii[0] > 0).all(-1).sum() - 2


# ------------------------------------------------------------------------------------------------------------
# Spherical harmonics
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("k_extra", [0, 3])
def test_sh(dtype, degree, k_extra):
    g = torch.Generator().manual_seed(degree * 10 + k_extra)
    m, k = 257, (degree + 1) ** 2 + k_extra
    dirs = torch.randn(m, 3, generator=g, dtype=torch.float64) * 3
    coeffs = torch.randn(m, k, 3, generator=g, dtype=torch.float64)
    v = torch.randn(m, 3, generator=g, dtype=torch.float64)
    d_, c_ = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
    want = gsplat_impl._spherical_harmonics(degree, d_, c_)
    wd, wc = torch.autograd.grad((want * v).sum(), [d_, c_], allow_unused=True)
    wd = torch.zeros_like(dirs) if wd is None else wd
    got = ops.gs_sh_fwd(degree, dirs.to(dtype), coeffs.to(dtype))
    assert_close("colors", got, want.detach(), dtype)
    gc, gd = ops.gs_sh_bwd(degree, dirs.to(dtype), coeffs.to(dtype), v.to(dtype))
    assert_close("v_coeffs", gc, wc, dtype)
    assert_close("v_dirs", gd, wd, dtype)


def test_sh_zero_direction():
    dirs = torch.zeros(2, 3, dtype=torch.float64)
    coeffs = torch.randn(2, 16, 3, dtype=torch.float64)
    col = ops.gs_sh_fwd(3, dirs, coeffs)
    v_c, v_d = ops.gs_sh_bwd(3, dirs, coeffs, torch.ones(2, 3, dtype=torch.float64))
    assert torch.isfinite(col).all() and torch.isfinite(v_c).all() and torch.isfinite(v_d).all()


# ------------------------------------------------------------------------------------------------------------
# Intersection and offsets
# ------------------------------------------------------------------------------------------------------------

def projected(dtype, n, c, image, seed, dense=False):
    w, h, ts = image
    s = make_scene(n, c, w, h, dtype, seed, dense)
    radii, means2d, depths, conics, comps = our_project(s, False)
    return s, radii, means2d, depths, conics, ts


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("image", IMAGES, ids=str)
def test_intersect_and_offsets(dtype, image):
    w, h, ts = image
    s, radii, means2d, depths, _, ts = projected(dtype, 150, 3, image, seed=11)
    tw, th = (w + ts - 1) // ts, (h + ts - 1) // ts
    tpg, isect_ids, flatten_ids = ops.gs_intersect_tiles(means2d, radii, depths, ts, tw, th)
    r_tpg, r_ids, r_flat = gsplat_impl._isect_tiles(means2d, radii, depths, ts, tw, th, sort=True)
    assert torch.equal(tpg, r_tpg)
    assert torch.equal(isect_ids, r_ids)
    assert torch.equal(flatten_ids, r_flat)
    offsets = ops.gs_isect_offsets(isect_ids, 3, tw, th)
    assert torch.equal(offsets, gsplat_impl._isect_offset_encode(r_ids, 3, tw, th))


def test_intersect_ties_keep_flatten_order():
    # Equal depths in one tile: the stable radix sort of gsplat keeps ascending flatten id.
    c, n = 2, 5
    means2d = torch.full((c, n, 2), 4.0)
    radii = torch.full((c, n, 2), 2, dtype=torch.int32)
    depths = torch.full((c, n), 3.0)
    depths[:, 1] = 2.0
    _, ids, flat = ops.gs_intersect_tiles(means2d, radii, depths, 16, 2, 2)
    assert flat.tolist() == [1, 0, 2, 3, 4, 6, 5, 7, 8, 9]
    assert (ids[1:] >= ids[:-1]).all()


def test_intersect_empty_and_errors():
    z = torch.zeros(2, 0)
    tpg, ids, flat = ops.gs_intersect_tiles(torch.zeros(2, 0, 2), torch.zeros(2, 0, 2, dtype=torch.int32), z, 16, 3, 2)
    assert tpg.shape == (2, 0) and ids.numel() == 0 and flat.numel() == 0
    assert ops.gs_isect_offsets(ids, 2, 3, 2).eq(0).all()
    with pytest.raises(TypeError, match="`radii` must be Int"):
        ops.gs_intersect_tiles(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.zeros(1, 3), 16, 3, 2)
    with pytest.raises(ValueError, match="`means2d` must have shape"):
        ops.gs_intersect_tiles(torch.zeros(1, 4, 2), torch.zeros(1, 3, 2, dtype=torch.int32), torch.zeros(1, 3), 16, 3, 2)
    with pytest.raises(ValueError, match="do not fit the 32 key bits"):
        ops.gs_intersect_tiles(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2, dtype=torch.int32), torch.zeros(2, 1), 1,
                               1 << 15, 1 << 15)
    with pytest.raises(ValueError, match="must be sorted"):
        ops.gs_isect_offsets(torch.tensor([5 << 32, 1 << 32]), 1, 4, 2)


# ------------------------------------------------------------------------------------------------------------
# Rasterization
# ------------------------------------------------------------------------------------------------------------

def torch_rasterize(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids,
                    pair_means=False):
    """Reference blending. With pair_means, each (pixel, Gaussian) pair reads means2d through its own leaf
    tensor, so that per-pixel gradients (and absgrad) can be summed afterwards; returns the leaves too."""
    c, n, d = colors.shape
    th, tw = offsets.shape[1:]
    m = flatten_ids.numel()
    starts = offsets.flatten().tolist() + [m]
    m2d, con, col, op = means2d.reshape(-1, 2), conics.reshape(-1, 3), colors.reshape(-1, d), opacities.reshape(-1)
    pix_ids, pix_col, pix_alpha, lasts, pairs = [], [], [], torch.full((c * height * width,), -1, dtype=torch.int32), []
    for t in range(c * th * tw):
        cam, tile = divmod(t, th * tw)
        ty, tx = divmod(tile, tw)
        ys = torch.arange(ty * tile_size, min(height, (ty + 1) * tile_size))
        xs = torch.arange(tx * tile_size, min(width, (tx + 1) * tile_size))
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pid = (cam * height + yy.flatten()) * width + xx.flatten()
        pxy = torch.stack([xx.flatten(), yy.flatten()], -1).to(colors.dtype) + 0.5
        ids = flatten_ids[starts[t]:starts[t + 1]].long()
        p, l = pid.numel(), ids.numel()
        bg = backgrounds[cam] if backgrounds is not None else torch.zeros(d, dtype=colors.dtype)
        if l == 0:
            pix_ids.append(pid)
            pix_col.append(bg.expand(p, d))
            pix_alpha.append(torch.zeros(p, dtype=colors.dtype))
            continue
        mean = m2d[ids][None].expand(p, l, 2)
        if pair_means:
            leaf = mean.detach().clone().requires_grad_()
            pairs.append((leaf, ids))
            mean = leaf
        delta = mean - pxy[:, None]
        cc = con[ids][None]
        sigma = 0.5 * (cc[..., 0] * delta[..., 0] ** 2 + cc[..., 2] * delta[..., 1] ** 2) + \
            cc[..., 1] * delta[..., 0] * delta[..., 1]
        alpha = torch.clamp_max(op[ids][None] * torch.exp(-sigma), 0.999)
        with torch.no_grad():
            trans = torch.ones(p, dtype=colors.dtype)
            active = torch.ones(p, dtype=torch.bool)
            mask = torch.zeros(p, l, dtype=torch.bool)
            for j in range(l):
                a = alpha[:, j]
                skip = (sigma[:, j] < 0) | (a < 1.0 / 255.0)
                nt = trans * (1 - a)
                active &= ~(~skip & (nt <= 1e-4))
                blend = active & ~skip
                mask[:, j] = blend
                trans = torch.where(blend, nt, trans)
            has = mask.any(1)
            last = l - 1 - mask.flip(1).int().argmax(1)
            lasts[pid[has]] = (starts[t] + last[has]).int()
        a = torch.where(mask, alpha, torch.zeros_like(alpha))
        one_minus = 1 - a
        t_excl = torch.cumprod(torch.cat([torch.ones(p, 1, dtype=a.dtype), one_minus[:, :-1]], 1), 1)
        t_final = t_excl[:, -1] * one_minus[:, -1]
        pix_ids.append(pid)
        pix_col.append(((a * t_excl)[..., None] * col[ids][None]).sum(1) + t_final[:, None] * bg)
        pix_alpha.append(1 - t_final)
    idx = torch.cat(pix_ids)
    img = torch.zeros(c * height * width, d, dtype=colors.dtype).index_add(0, idx, torch.cat(pix_col))
    alp = torch.zeros(c * height * width, dtype=colors.dtype).index_add(0, idx, torch.cat(pix_alpha))
    return img.reshape(c, height, width, d), alp.reshape(c, height, width, 1), lasts.reshape(c, height, width), pairs


def raster_inputs(dtype, n, c, image, seed, d=3, dense=False, with_bg=True):
    s, radii, means2d, depths, conics, ts = projected(dtype, n, c, image, seed, dense)
    w, h, _ = image
    tw, th = (w + ts - 1) // ts, (h + ts - 1) // ts
    _, isect_ids, flatten_ids = ops.gs_intersect_tiles(means2d, radii, depths, ts, tw, th)
    offsets = ops.gs_isect_offsets(isect_ids, c, tw, th)
    g = torch.Generator().manual_seed(seed + 1)
    colors = torch.rand(c, n, d, generator=g, dtype=torch.float64).to(dtype)
    opac = s["opacities"][None].expand(c, n).contiguous()
    if dense:  # fully opaque Gaussians exercise the 0.999 clamp (no gradient through a clamped alpha)
        opac[:, 2:n // 10] = 1.0
    bg = torch.rand(c, d, generator=g, dtype=torch.float64).to(dtype) if with_bg else None
    return [means2d, conics, colors, opac, bg, w, h, ts, offsets, flatten_ids]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("image", IMAGES, ids=str)
@pytest.mark.parametrize("dense,d,with_bg", [(False, 3, True), (True, 3, False), (True, 5, True)], ids=str)
def test_rasterize_fwd_bwd(dtype, image, dense, d, with_bg):
    n = 400 if dense else 250
    args = raster_inputs(dtype, n, 2, image, seed=5 + d, d=d, dense=dense, with_bg=with_bg)
    colors_img, alphas_img, last_ids, trans = ops.gs_rasterize_fwd(*args)
    leaves = [a.double().detach().requires_grad_() if torch.is_tensor(a) else a for a in args[:5]]
    r_col, r_alpha, r_last, pairs = torch_rasterize(*leaves, *args[5:], pair_means=True)
    assert torch.equal(last_ids, r_last)
    if dense:  # the early stop must have been exercised
        assert (alphas_img > 1 - 1e-3).any()
    assert_close("render_colors", colors_img, r_col.detach(), dtype)
    assert_close("render_alphas", alphas_img, r_alpha.detach(), dtype)
    assert_close("final_transmittances", trans, 1 - r_alpha.detach(), dtype)

    g = torch.Generator().manual_seed(1)
    v_col = torch.randn(colors_img.shape, generator=g, dtype=torch.float64)
    v_alpha = torch.randn(alphas_img.shape, generator=g, dtype=torch.float64)
    loss = (r_col * v_col).sum() + (r_alpha * v_alpha).sum()
    grad_in = [pl for pl, _ in pairs] + [x for x in leaves[1:5] if x is not None]
    grads = torch.autograd.grad(loss, grad_in)
    n_pairs = len(pairs)
    want_m = torch.zeros(args[0].numel() // 2, 2, dtype=torch.float64)
    want_abs = torch.zeros_like(want_m)
    for (leaf, ids), gp in zip(pairs, grads[:n_pairs]):
        want_m.index_add_(0, ids, gp.sum(0))
        want_abs.index_add_(0, ids, gp.abs().sum(0))
    want = [want_m.reshape(args[0].shape)] + list(grads[n_pairs:])
    got = ops.gs_rasterize_bwd(*args, trans, last_ids, v_col.to(dtype), v_alpha.to(dtype), True)
    names = ["v_means2d", "v_conics", "v_colors", "v_opacities"] + (["v_backgrounds"] if with_bg else [])
    for name, gg, ww in zip(names, got, want):
        assert_close(name, gg, ww, dtype)
    if not with_bg:
        assert got[4].numel() == 0
    assert_close("v_means2d_abs", got[5], want_abs.reshape(args[0].shape), dtype)
    # Without absgrad the abs output is empty and the rest is bit-identical (and deterministic).
    again = ops.gs_rasterize_bwd(*args, trans, last_ids, v_col.to(dtype), v_alpha.to(dtype), False)
    assert again[5].numel() == 0
    for a, b in zip(got[:5], again[:5]):
        assert torch.equal(a, b)


def test_final_transmittance_gradient_is_minus_alpha_gradient():
    # final_transmittances = 1 - render_alphas, so a loss on either gives the inputs opposite gradients.
    args = raster_inputs(torch.float64, 60, 2, IMAGES[0], seed=4)
    leaves = [a.detach().requires_grad_() for a in args[:4]]
    v = torch.randn(args[2].shape[0], IMAGES[0][1], IMAGES[0][0], 1, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    grads = []
    for output in (1, 3):
        out = ops.gs_rasterize_fwd(*leaves, *args[4:])[output]
        grads.append(torch.autograd.grad((out * v).sum(), leaves))
    assert any(g.abs().max() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, -b)


def test_rasterize_deterministic_across_threads():
    args = raster_inputs(torch.float32, 400, 2, IMAGES[1], seed=9, dense=True)
    col, alp, last, trans = ops.gs_rasterize_fwd(*args)
    v = torch.randn_like(col), torch.randn_like(alp)
    nt = torch.get_num_threads()
    outs = []
    for threads in (1, max(2, nt)):
        torch.set_num_threads(threads)
        outs.append(ops.gs_rasterize_bwd(*args, trans, last, *v, True))
    torch.set_num_threads(nt)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_rasterize_empty_scene_gives_background():
    w, h, ts = IMAGES[0]
    tw, th = (w + ts - 1) // ts, (h + ts - 1) // ts
    c, d = 2, 3
    z = lambda *s: torch.zeros(*s)
    bg = torch.rand(c, d)
    offsets = torch.zeros(c, th, tw, dtype=torch.int32)
    flat = torch.zeros(0, dtype=torch.int32)
    col, alp, last, trans = ops.gs_rasterize_fwd(z(c, 0, 2), z(c, 0, 3), z(c, 0, d), z(c, 0), bg, w, h, ts, offsets,
                                                 flat)
    assert torch.equal(col, bg[:, None, None].expand(c, h, w, d)) and (alp == 0).all() and (last == -1).all()
    assert (trans == 1).all()
    v_col = torch.ones_like(col)
    grads = ops.gs_rasterize_bwd(z(c, 0, 2), z(c, 0, 3), z(c, 0, d), z(c, 0), bg, w, h, ts, offsets, flat, trans,
                                 last, v_col, torch.ones_like(alp), False)
    assert torch.allclose(grads[4], torch.full((c, d), float(h * w)))


# ------------------------------------------------------------------------------------------------------------
# gradcheck (float64, tiny scenes) through autograd.Functions over our fwd/bwd ops
# ------------------------------------------------------------------------------------------------------------

class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, w, h):
        radii, m2d, dep, con, comp = ops.gs_project_fwd(means, quats, scales, None, viewmats, Ks, w, h, EPS2D, NEAR,
                                                        FAR, 0.0, True)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii, con, comp)
        ctx.wh = (w, h)
        return m2d, dep, con, comp

    @staticmethod
    def backward(ctx, v_m2d, v_dep, v_con, v_comp):
        means, quats, scales, viewmats, Ks, radii, con, comp = ctx.saved_tensors
        g = ops.gs_project_bwd(means, quats, scales, viewmats, Ks, *ctx.wh, EPS2D, True, radii, con, comp, v_m2d,
                               v_dep, v_con, v_comp)
        return (*g, None, None, None, None)


class _Raster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, bg, rest):
        col, alp, last, trans = ops.gs_rasterize_fwd(means2d, conics, colors, opacities, bg, *rest)
        ctx.save_for_backward(means2d, conics, colors, opacities, bg, trans, last)
        ctx.rest = rest
        return col, alp

    @staticmethod
    def backward(ctx, v_col, v_alp):
        means2d, conics, colors, opacities, bg, trans, last = ctx.saved_tensors
        g = ops.gs_rasterize_bwd(means2d, conics, colors, opacities, bg, *ctx.rest, trans, last, v_col.contiguous(),
                                 v_alp.contiguous(), False)
        return (*g[:5], None)


def test_gradcheck_project():
    s = make_scene(12, 2, 40, 27, torch.float64, seed=21)
    s["means"] = s["means"][2:].contiguous()  # all in front of the cameras
    s["quats"], s["scales"] = s["quats"][2:].contiguous(), s["scales"][2:].contiguous()
    inputs = [s[k].clone().requires_grad_() for k in ("means", "quats", "scales")]
    assert torch.autograd.gradcheck(
        lambda *x: _Project.apply(*x, s["viewmats"], s["Ks"], 40, 27), inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_sh():
    g = torch.Generator().manual_seed(2)
    dirs = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(6, 16, 3, generator=g, dtype=torch.float64, requires_grad=True)

    class _Sh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, d, c):
            ctx.save_for_backward(d, c)
            return ops.gs_sh_fwd(3, d, c)

        @staticmethod
        def backward(ctx, v):
            d, c = ctx.saved_tensors
            v_c, v_d = ops.gs_sh_bwd(3, d, c, v.contiguous())
            return v_d, v_c

    assert torch.autograd.gradcheck(_Sh.apply, (dirs, coeffs))


def test_gradcheck_rasterize():
    args = raster_inputs(torch.float64, 10, 1, (12, 10, 8), seed=4, dense=True)
    inputs = [a.clone().requires_grad_() for a in args[:5]]
    assert torch.autograd.gradcheck(lambda *x: _Raster.apply(*x, tuple(args[5:])), inputs, eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# opcheck, degenerate inputs, bad inputs
# ------------------------------------------------------------------------------------------------------------

def test_opcheck():
    s = make_scene(40, 2, 40, 27, torch.float32, seed=1)
    proj = (s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], 40, 27)
    opacities = torch.rand(s["means"].shape[0])
    torch.library.opcheck(ops.gs_project_fwd.default, proj[:3] + (opacities,) + proj[3:] + (EPS2D, NEAR, FAR, 0.0, True))
    radii, m2d, dep, con, comp = our_project(s, True)
    torch.library.opcheck(ops.gs_project_bwd.default, proj + (EPS2D, True, radii, con, comp, torch.randn_like(m2d),
                                                             torch.randn_like(dep), torch.randn_like(con),
                                                             torch.randn_like(comp)))
    dirs, coeffs = torch.randn(7, 3), torch.randn(7, 9, 3)
    torch.library.opcheck(ops.gs_sh_fwd.default, (2, dirs, coeffs))
    torch.library.opcheck(ops.gs_sh_bwd.default, (2, dirs, coeffs, torch.randn(7, 3)))
    # Data-dependent output size: the fake kernel needs a ShapeEnv, which the plain fake-tensor test lacks.
    torch.library.opcheck(ops.gs_intersect_tiles.default, (m2d, radii, dep, 16, 3, 2),
                          test_utils=("test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic"))
    _, ids, flat = ops.gs_intersect_tiles(m2d, radii, dep, 16, 3, 2)
    torch.library.opcheck(ops.gs_isect_offsets.default, (ids, 2, 3, 2))
    args = raster_inputs(torch.float32, 40, 2, IMAGES[0], seed=2)
    torch.library.opcheck(ops.gs_rasterize_fwd.default, tuple(args))
    col, alp, last, trans = ops.gs_rasterize_fwd(*args)
    torch.library.opcheck(ops.gs_rasterize_bwd.default,
                          tuple(args) + (trans, last, torch.randn_like(col), torch.randn_like(alp), True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_degenerate_inputs(dtype):
    s = make_scene(12, 2, 40, 27, dtype, seed=8)
    s["scales"][2] = 0.0                                    # zero scale: a point, eps2d keeps it visible
    s["scales"][3] = torch.tensor([-0.1, 0.05, -0.2])      # negative scales: only their squares matter
    s["scales"][4] = 1e6                                    # huge radius: saturates, covers every tile
    s["quats"][5] = 0.0                                     # zero quaternion: identity rotation, no NaN
    eye = torch.linalg.inv(s["viewmats"][0].double())[:3, 3].to(dtype)
    s["means"][6] = eye + NEAR * s["viewmats"][0][2, :3]   # on the near plane of camera 0
    s["means"][7] = eye                                     # at the camera centre (z = 0)
    radii, m2d, dep, con, comp = our_project(s, True)
    for t in (m2d, dep, con, comp):
        assert torch.isfinite(t).all()
    assert (radii[:, 2] > 0).all() and (radii[:, 3] > 0).all() and (radii[:, 5] > 0).all()
    assert (radii[0, 4] == 2147483647).all() or (radii[0, 4] > 10 ** 6).all()
    assert (radii[0, 7] == 0).all() and (radii[0, 0] == 0).all()
    v = [torch.randn_like(t) for t in (m2d, dep, con, comp)]
    vm, vq, vs = ops.gs_project_bwd(s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], 40, 27, EPS2D, True,
                                    radii, con, comp, *v)
    for t in (vm, vq, vs):
        assert torch.isfinite(t).all()
    culled = ~(radii > 0).all(-1).any(0)
    assert culled.any()
    assert (vm[culled] == 0).all() and (vq[culled] == 0).all() and (vs[culled] == 0).all()
    # N = 0 and the full pipeline on the degenerate scene.
    e = make_scene(0, 2, 40, 27, dtype, seed=1)
    outs = our_project(e, False)
    assert [tuple(t.shape) for t in outs] == [(2, 0, 2), (2, 0, 2), (2, 0), (2, 0, 3), (2, 0)]
    assert all(t.numel() == 0 for t in ops.gs_project_bwd(e["means"], e["quats"], e["scales"], e["viewmats"], e["Ks"],
                                                          40, 27, EPS2D, False, *outs[:1], outs[3], outs[4],
                                                          outs[1], outs[2], outs[3], outs[4]))
    _, ids, flat = ops.gs_intersect_tiles(m2d, radii, dep, 16, 3, 2)
    offsets = ops.gs_isect_offsets(ids, 2, 3, 2)
    colors, opac = torch.rand(2, 12, 3, dtype=dtype), torch.rand(2, 12, dtype=dtype)
    col, alp, last, trans = ops.gs_rasterize_fwd(m2d, con, colors, opac, None, 40, 27, 16, offsets, flat)
    assert torch.isfinite(col).all() and torch.isfinite(alp).all()
    grads = ops.gs_rasterize_bwd(m2d, con, colors, opac, None, 40, 27, 16, offsets, flat, trans, last,
                                 torch.ones_like(col), torch.ones_like(alp), True)
    for t in grads:
        assert torch.isfinite(t).all()
    cul = ~(radii > 0).all(-1)
    assert (grads[0][cul] == 0).all() and (grads[3][cul] == 0).all()


def test_bad_inputs_name_the_argument():
    s = make_scene(10, 2, 40, 27, torch.float32, seed=1)
    base = dict(s)
    names = ("means", "quats", "scales", "opacities", "viewmats", "Ks")
    args = lambda **kw: tuple({**base, "opacities": None, **kw}[k] for k in names) + (40, 27, EPS2D, NEAR, FAR, 0.0,
                                                                                       False)
    with pytest.raises(ValueError, match="`quats` must have shape \\[10, 4\\]"):
        ops.gs_project_fwd(*args(quats=s["quats"][:, :3]))
    with pytest.raises(TypeError, match="`scales` must be Float"):
        ops.gs_project_fwd(*args(scales=s["scales"].double()))
    with pytest.raises(TypeError, match="`means` must be float32 or float64"):
        ops.gs_project_fwd(*args(means=s["means"].half()))
    with pytest.raises(ValueError, match="`Ks` must have shape \\[2, 3, 3\\]"):
        ops.gs_project_fwd(*args(Ks=s["Ks"][:1]))
    # Non-contiguous inputs are accepted (made contiguous).
    q = torch.cat([s["quats"], s["quats"]], 1)[:, ::2]
    assert not q.is_contiguous()
    assert torch.equal(ops.gs_project_fwd(*args(quats=q))[1], ops.gs_project_fwd(*args(quats=q.contiguous()))[1])
    with pytest.raises(ValueError, match="degree=4 must be in \\[0, 3\\]"):
        ops.gs_sh_fwd(4, torch.zeros(2, 3), torch.zeros(2, 25, 3))
    with pytest.raises(ValueError, match="`coeffs` has K=4 bases but degree 2 needs at least 9"):
        ops.gs_sh_fwd(2, torch.zeros(2, 3), torch.zeros(2, 4, 3))
    args = raster_inputs(torch.float32, 30, 2, IMAGES[0], seed=3)
    bad = list(args)
    bad[8] = args[8][:, :1].contiguous()
    with pytest.raises(ValueError, match="`isect_offsets` must have shape \\[2, 2, 3\\]"):
        ops.gs_rasterize_fwd(*bad)
    bad = list(args)
    bad[9] = args[9].clone()
    if bad[9].numel():
        bad[9][0] = 10 ** 6
        with pytest.raises(ValueError, match="`flatten_ids` entry 0"):
            ops.gs_rasterize_fwd(*bad)
    bad = list(args)
    bad[4] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="`backgrounds` must have shape \\[2, 3\\]"):
        ops.gs_rasterize_fwd(*bad)
    col, alp, last, trans = ops.gs_rasterize_fwd(*args)
    v = (torch.ones_like(col), torch.ones_like(alp))
    with pytest.raises(ValueError, match="`final_transmittances` must have shape"):
        ops.gs_rasterize_bwd(*args, trans[..., 0], last, *v, False)
    with pytest.raises(TypeError, match="`final_transmittances` must be"):
        ops.gs_rasterize_bwd(*args, trans.double(), last, *v, False)
