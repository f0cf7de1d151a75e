"""Gaussian splatting reference (pyops/reference/gaussians.py) against gsplat 1.5.3, the numerical oracle.

gsplat's pure-torch functions (gsplat.cuda._torch_impl) run on CPU and are used directly. Its torch tile
rasterizer (_rasterize_to_pixels) does not: it calls the CUDA op rasterize_to_indices_in_range and needs
nerfacc. So the tiled oracle below, `tiled_rasterize`, transcribes the pixel loop of gsplat's CUDA kernel
(cuda/csrc/RasterizeToPixels3DGSFwd.cu) into torch and walks gsplat's own sorted intersection lists
(_isect_tiles, _isect_offset_encode): one tile at a time, one Gaussian at a time, with the kernel's tests in
the kernel's order. It shares no code with the dense reference, which blends all Gaussians at once with
cumprod and a per-pixel tile mask.

Tolerances: float64 results agree to ~1e-12 (only summation order differs); float32 ones to a few ulps of
the magnitudes involved (pixel coordinates ~40, depths ~5, colors ~1), stated per test.
"""

import math

import pytest
import torch
from gaussian_scenes import HEIGHT, WIDTH, assert_far_from_discontinuities, scene, tiny_scene
from gaussian_scenes import render_reference as ours

from pyops.reference import gaussians as ref

DTYPES = [torch.float32, torch.float64]
# (atol, rtol) for float32 results vs the oracle; float64 uses FP64_TOL.
FP32_TOL = {"means2d": (2e-4, 1e-5), "depths": (1e-5, 1e-6), "conics": (1e-5, 1e-4), "render": (2e-5, 2e-5)}
FP64_TOL = (1e-10, 1e-10)


@pytest.fixture(scope="module")
def gs():
    """gsplat's pure-torch implementation; skip (not fail) where the oracle is not installed."""
    try:
        from gsplat.cuda import _torch_impl
    except ImportError as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"gsplat 1.5.3 (the oracle) is not importable: {e}; pip install -r requirements-dev.txt")
    return _torch_impl


def tol(dtype, what="render"):
    atol, rtol = FP32_TOL[what] if dtype == torch.float32 else FP64_TOL
    return dict(atol=atol, rtol=rtol)


def gs_project(gs, s, width=WIDTH, height=HEIGHT, antialiased=False, **kw):
    covars, _ = gs._quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    return gs._fully_fused_projection(s["means"], covars, s["viewmats"], s["Ks"], width, height,
                                      calc_compensations=antialiased, **kw)


# ----------------------------------------------------------------------------------------------------------
# The tiled oracle: gsplat's kernel loop over gsplat's intersection lists.


def tiled_rasterize(means2d, conics, colors, opacities, offsets, flatten_ids, width, height, tile_size,
                    backgrounds=None, stats=None):
    """Per tile, per Gaussian of the tile's list in order, per pixel (vectorised): the kernel's rules.
    stats, if a dict, receives the number of pixels that stopped on the transmittance rule."""
    C, N = opacities.shape
    D = colors.shape[-1]
    tile_height, tile_width = offsets.shape[-2:]
    starts = offsets.flatten().tolist()
    ends = starts[1:] + [flatten_ids.numel()]
    mean, conic = means2d.reshape(C * N, 2), conics.reshape(C * N, 3)
    opac, color = opacities.reshape(C * N), colors.reshape(C * N, D)
    ids = flatten_ids.tolist()
    images, alphas = [], []
    for c in range(C):
        img_rows, alpha_rows = [], []
        for ty in range(tile_height):
            img_tiles, alpha_tiles = [], []
            for tx in range(tile_width):
                t = (c * tile_height + ty) * tile_width + tx
                ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height))
                xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width))
                py, px = torch.meshgrid(ys.to(means2d.dtype) + 0.5, xs.to(means2d.dtype) + 0.5, indexing="ij")
                py, px = py.reshape(-1), px.reshape(-1)
                T = torch.ones_like(px)
                out = torch.zeros(px.numel(), D, dtype=means2d.dtype)
                done = torch.zeros(px.numel(), dtype=torch.bool)
                for k in range(starts[t], ends[t]):
                    if bool(done.all()):
                        break
                    g = ids[k]
                    dx, dy = mean[g, 0] - px, mean[g, 1] - py
                    sigma = 0.5 * (conic[g, 0] * dx * dx + conic[g, 2] * dy * dy) + conic[g, 1] * dx * dy
                    alpha = torch.clamp_max(opac[g] * torch.exp(-sigma), 0.999)
                    skip = done | (sigma < 0) | (alpha < 1.0 / 255.0)
                    next_T = T * (1 - alpha)
                    stop = ~skip & (next_T <= 1e-4)
                    take = ~skip & ~stop
                    done = done | stop
                    out = out + torch.where(take, alpha * T, torch.zeros_like(T))[:, None] * color[g]
                    T = torch.where(take, next_T, T)
                if stats is not None:
                    stats["stopped"] = stats.get("stopped", 0) + int(done.sum())
                if backgrounds is not None:
                    out = out + T[:, None] * backgrounds[c]
                img_tiles.append(out.reshape(len(ys), len(xs), D))
                alpha_tiles.append((1 - T).reshape(len(ys), len(xs), 1))
            img_rows.append(torch.cat(img_tiles, dim=1))
            alpha_rows.append(torch.cat(alpha_tiles, dim=1))
        images.append(torch.cat(img_rows, dim=0))
        alphas.append(torch.cat(alpha_rows, dim=0))
    return torch.stack(images), torch.stack(alphas)


def gsplat_pipeline(gs, s, width, height, *, sh_degree=None, tile_size=16, backgrounds=None, render_mode="RGB",
                    rasterize_mode="classic", **proj):
    """gsplat.rasterization() (rendering.py), unpacked, with _torch_impl pieces and the tiled oracle."""
    antialiased = rasterize_mode == "antialiased"
    radii, means2d, depths, conics, comps = gs_project(gs, s, width, height, antialiased, **proj)
    C, N = depths.shape
    opacities = s["opacities"][None].expand(C, N)
    if antialiased:
        opacities = opacities * comps
    colors = s["colors"]
    if sh_degree is None:
        colors = colors.expand(C, N, colors.shape[-1])
    else:
        campos = torch.inverse(s["viewmats"])[:, :3, 3]
        dirs = s["means"][None] - campos[:, None]
        colors = gs._spherical_harmonics(sh_degree, dirs, colors.expand(C, N, *colors.shape[-2:]))
        colors = torch.clamp_min(colors + 0.5, 0.0)
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = torch.zeros_like(backgrounds[:, :1])
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    _, isect_ids, flatten_ids = gs._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
    offsets = gs._isect_offset_encode(isect_ids, C, tile_width, tile_height)
    render, alphas = tiled_rasterize(means2d, conics, colors, opacities, offsets, flatten_ids, width, height,
                                     tile_size, backgrounds)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    return render, alphas, dict(radii=radii, means2d=means2d, depths=depths, conics=conics)


# ----------------------------------------------------------------------------------------------------------
# (a) Each function against _torch_impl.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quat_scale_to_covar(gs, dtype):
    s = scene(300, dtype=dtype)
    s["scales"][:5] *= -1  # the sign of a scale does not matter
    expected, _ = gs._quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    got = ref.quat_scale_to_covar(s["quats"], s["scales"])
    assert got.dtype == dtype and got.shape == (300, 3, 3)
    torch.testing.assert_close(got, expected, atol=1e-7 if dtype == torch.float32 else 1e-15, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("antialiased", [False, True], ids=["classic", "antialiased"])
@pytest.mark.parametrize("proj", [{}, dict(eps2d=0.1, near_plane=4.6, far_plane=5.4)],
                         ids=["default", "near-far-eps2d"])
def test_project_ewa(gs, dtype, antialiased, proj):
    """Without opacities (as _torch_impl) the radius is ceil(3.33 sigma) per axis; culled entries are 0."""
    s = scene(300, n_cams=3, dtype=dtype, seed=1)
    covars = ref.quat_scale_to_covar(s["quats"], s["scales"])
    radii, means2d, depths, conics, comps = ref.project_ewa(
        s["means"], covars, s["viewmats"], s["Ks"], WIDTH, HEIGHT, antialiased=antialiased, **proj)
    e_radii, e_means2d, e_depths, e_conics, e_comps = gs_project(gs, s, antialiased=antialiased, **proj)
    assert radii.dtype == torch.int32 and radii.shape == (3, 300, 2)
    torch.testing.assert_close(radii, e_radii, atol=0, rtol=0)
    vis = (radii > 0).all(-1)
    assert 0.1 < vis.float().mean() < 1 and ((radii > 0).any(-1) == vis).all()  # some culled, some not
    torch.testing.assert_close(means2d[vis], e_means2d[vis], **tol(dtype, "means2d"))
    torch.testing.assert_close(depths[vis], e_depths[vis], **tol(dtype, "depths"))
    torch.testing.assert_close(conics[vis], e_conics[vis], **tol(dtype, "conics"))
    assert (comps is None) == (not antialiased)
    if antialiased:
        torch.testing.assert_close(comps[vis], e_comps[vis], **tol(dtype, "conics"))
    for t in (means2d, depths, conics) + ((comps,) if antialiased else ()):
        assert t.dtype == dtype and (t[~vis] == 0).all()


@pytest.mark.parametrize("antialiased", [False, True], ids=["classic", "antialiased"])
def test_project_ewa_opacity_aware_radius_and_radius_clip(gs, antialiased):
    """What rasterization() adds to _torch_impl's projection (ProjectionEWA3DGSFused.cu): opacity (times
    compensation) < 1/255 is culled, the radius uses extend = min(3.33, sqrt(2 ln(255 opacity))), and
    Gaussians with both radii <= radius_clip are culled. Derived here from the oracle's conics."""
    s = scene(300, n_cams=2, seed=2)
    s["opacities"][:20] = torch.linspace(0.001, 0.01, 20, dtype=torch.float64)  # around the 1/255 cut
    covars = ref.quat_scale_to_covar(s["quats"], s["scales"])
    _, _, _, e_conics, e_comps = gs_project(gs, s, antialiased=antialiased)
    e_radii = gs_project(gs, s)[0]
    for radius_clip in (0.0, 3.0):
        radii = ref.project_ewa(s["means"], covars, s["viewmats"], s["Ks"], WIDTH, HEIGHT, antialiased=antialiased,
                                opacities=s["opacities"], radius_clip=radius_clip)[0]
        cov2d = torch.linalg.inv(torch.stack([e_conics[..., [0, 1]], e_conics[..., [1, 2]]], dim=-2))
        op = s["opacities"][None] * (e_comps if antialiased else 1)
        extend = torch.sqrt(2 * torch.log(op.clamp_min(1 / 255) * 255)).clamp_max(3.33)
        r = torch.ceil(extend[..., None] * torch.sqrt(torch.diagonal(cov2d, dim1=-2, dim2=-1)))
        # Whatever _torch_impl culls (depth, box off the image) stays culled, since the box only shrinks;
        # then the opacity cut, radius_clip (culled if both radii <= it) and the image test with the new box.
        m = gs_project(gs, s)[1]
        keep = (e_radii > 0).any(-1) & (op >= 1 / 255) & (r > radius_clip).any(-1)
        keep &= (m + r > 0).all(-1) & (m[..., 0] - r[..., 0] < WIDTH) & (m[..., 1] - r[..., 1] < HEIGHT)
        expected = torch.where(keep[..., None], r, 0).int()
        torch.testing.assert_close(radii, expected, atol=0, rtol=0)
        assert (radii <= e_radii).all()  # the opacity-aware box is never larger
        assert ((radii == 0).all(-1) & (e_radii > 0).all(-1)).any()  # and some Gaussians are newly culled


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_spherical_harmonics(gs, dtype, degree):
    g = torch.Generator().manual_seed(degree)
    dirs = (3 * torch.randn(4, 50, 3, generator=g, dtype=torch.float64)).to(dtype)  # not normalised
    coeffs = torch.randn(4, 50, 25, 3, generator=g, dtype=torch.float64).to(dtype)  # more than needed
    got = ref.spherical_harmonics(degree, dirs, coeffs)
    assert got.shape == (4, 50, 3) and got.dtype == dtype
    expected = gs._spherical_harmonics(degree, dirs, coeffs)
    torch.testing.assert_close(got, expected, atol=1e-5 if dtype == torch.float32 else 1e-13, rtol=1e-5)
    # Only the first (degree + 1)^2 coefficients are read.
    torch.testing.assert_close(ref.spherical_harmonics(degree, dirs, coeffs[..., :(degree + 1) ** 2, :]), got)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tile_size", [16, 8])
def test_intersect_tiles_and_offsets(gs, dtype, tile_size):
    s = scene(250, n_cams=3, dtype=dtype, seed=3)
    radii, means2d, depths, _, _ = gs_project(gs, s)
    tw, th = math.ceil(WIDTH / tile_size), math.ceil(HEIGHT / tile_size)
    tiles, ids, flat = ref.intersect_tiles(means2d, radii, depths, tile_size, tw, th)
    e_tiles, e_ids, e_flat = gs._isect_tiles(means2d, radii, depths, tile_size, tw, th)
    assert tiles.dtype == torch.int32 and ids.dtype == torch.int64 and flat.dtype == torch.int64
    assert ids.numel() > 300
    torch.testing.assert_close(tiles, e_tiles, atol=0, rtol=0)
    torch.testing.assert_close(ids, e_ids, atol=0, rtol=0)
    torch.testing.assert_close(flat, e_flat.long(), atol=0, rtol=0)
    offsets = ref.isect_offsets(ids, 3, tw, th)
    assert offsets.dtype == torch.int32 and offsets.shape == (3, th, tw)
    torch.testing.assert_close(offsets, gs._isect_offset_encode(e_ids, 3, tw, th), atol=0, rtol=0)
    # The key layout, spelled out: camera | tile | float32 depth bits.
    tile_bits = (tw * th).bit_length()
    cam, tile = ids >> (32 + tile_bits), (ids >> 32) & ((1 << tile_bits) - 1)
    assert (cam == flat // 250).all() and (tile < tw * th).all()
    d32 = depths.reshape(-1)[flat].float()
    assert ((ids & 0xFFFFFFFF) == (d32.view(torch.int32).long() & 0xFFFFFFFF)).all()


def test_intersect_ties_keep_the_lower_index_first(gs):
    """Equal keys (same camera, tile and float32 depth) keep flatten-id order, as CUB's stable radix sort."""
    s = scene(40, n_cams=2, seed=4)
    for k in ("means", "quats", "scales"):
        s[k][[3, 17, 29]] = s[k][11].clone()  # identical Gaussians 3, 11, 17, 29
    radii, means2d, depths, _, _ = gs_project(gs, s)
    ids, flat = ref.intersect_tiles(means2d, radii, depths, 16, 3, 2)[1:]
    _, e_ids, e_flat = gs._isect_tiles(means2d, radii, depths, 16, 3, 2)
    torch.testing.assert_close(ids, e_ids, atol=0, rtol=0)
    tied = torch.isin(flat % 40, torch.tensor([3, 11, 17, 29]))
    assert tied.sum() >= 4
    for key in ids[tied].unique():
        run = flat[ids == key]
        assert (run.diff() > 0).all() and (run % 40).tolist() == [3, 11, 17, 29]
    # _torch_impl sorts with torch.sort (not stable: here it does put 17 before 3); it agrees as a multiset.
    assert sorted(flat.tolist()) == sorted(e_flat.tolist())


# ----------------------------------------------------------------------------------------------------------
# (b) Rasterization against the tiled oracle.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tile_size", [16, 8])
@pytest.mark.parametrize("channels,with_bg", [(3, False), (5, True), (1, True)], ids=["D3", "D5-bg", "D1-bg"])
def test_rasterize_dense_matches_tiled(gs, dtype, tile_size, channels, with_bg):
    """Same projected Gaussians in, same image out: the tile mask, order, cut and stop rules agree."""
    s = scene(200, n_cams=2, dtype=dtype, seed=5, channels=channels)
    # An opaque cluster in the middle makes pixels reach the 1e-4 stop.
    s["means"][:40] *= 0.2
    s["scales"][:40] *= 3
    s["opacities"][:40] = 0.97
    radii, means2d, depths, conics, _ = gs_project(gs, s)
    C, N = depths.shape
    opac, colors = s["opacities"][None].expand(C, N), s["colors"].expand(C, N, channels)
    bg = torch.rand(C, channels, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype) \
        if with_bg else None
    render, alphas = ref.rasterize_dense(means2d, conics, colors, opac, depths, radii, WIDTH, HEIGHT, bg,
                                         tile_size=tile_size)
    tw, th = math.ceil(WIDTH / tile_size), math.ceil(HEIGHT / tile_size)
    _, ids, flat = gs._isect_tiles(means2d, radii, depths, tile_size, tw, th)
    stats = {}
    e_render, e_alphas = tiled_rasterize(means2d, conics, colors, opac, gs._isect_offset_encode(ids, C, tw, th),
                                         flat, WIDTH, HEIGHT, tile_size, bg, stats)
    assert render.shape == (C, HEIGHT, WIDTH, channels) and alphas.shape == (C, HEIGHT, WIDTH, 1)
    assert render.dtype == dtype and alphas.dtype == dtype
    assert stats["stopped"] >= 10, "the scene should exercise the transmittance stop"
    torch.testing.assert_close(alphas, e_alphas, **tol(dtype))
    torch.testing.assert_close(render, e_render, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
@pytest.mark.parametrize("render_mode", ref.RENDER_MODES)
def test_rasterize_gaussians_matches_gsplat(gs, dtype, rasterize_mode, render_mode):
    s = scene(150, n_cams=2, dtype=dtype, seed=6)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=dtype)
    kw = dict(backgrounds=bg, render_mode=render_mode, rasterize_mode=rasterize_mode, tile_size=8)
    render, alphas, meta = ours(s, WIDTH, HEIGHT, **kw)
    e_render, e_alphas, e_meta = gsplat_pipeline(gs, s, WIDTH, HEIGHT, **kw)
    channels = {"RGB": 3, "D": 1, "ED": 1, "RGB+D": 4, "RGB+ED": 4}[render_mode]
    assert render.shape == (2, HEIGHT, WIDTH, channels) and render.dtype == dtype and alphas.dtype == dtype
    torch.testing.assert_close(alphas, e_alphas, **tol(dtype))
    # ED divides by alpha: where alpha is tiny, compare the accumulated depth instead.
    torch.testing.assert_close(render * alphas.clamp_min(1e-3) if "ED" in render_mode else render,
                               e_render * alphas.clamp_min(1e-3) if "ED" in render_mode else e_render,
                               **tol(dtype))
    vis = (meta["radii"] > 0).all(-1)
    assert ((e_meta["radii"] > 0).all(-1) >= vis).all()
    for k in ("means2d", "depths", "conics"):
        torch.testing.assert_close(meta[k][vis], e_meta[k][vis], **tol(dtype, k))
    for k in ("tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets", "width", "height", "tile_size",
              "n_cameras", "opacities"):
        assert k in meta


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_rasterize_gaussians_sh_matches_gsplat(gs, dtype, sh_degree):
    s = scene(150, n_cams=3, dtype=dtype, seed=7, sh_degree=sh_degree)
    if sh_degree == 1:
        s["colors"] = torch.cat([s["colors"], torch.randn(150, 5, 3, dtype=dtype)], dim=1)  # K > (deg + 1)^2
    bg = torch.rand(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    kw = dict(sh_degree=sh_degree, backgrounds=bg, render_mode="RGB+D", tile_size=16)
    render, alphas, _ = ours(s, WIDTH, HEIGHT, **kw)
    e_render, e_alphas, _ = gsplat_pipeline(gs, s, WIDTH, HEIGHT, **kw)
    torch.testing.assert_close(alphas, e_alphas, **tol(dtype))
    torch.testing.assert_close(render, e_render, **tol(dtype))


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_gradients_match_gsplat_pipeline(gs, rasterize_mode):
    """Autograd through the reference equals autograd through gsplat's torch pieces + the tiled oracle."""
    s = scene(60, n_cams=2, seed=8, sh_degree=2)
    kw = dict(sh_degree=2, backgrounds=torch.tensor([[0.1, 0.2, 0.3], [0.7, 0.6, 0.5]], dtype=torch.float64),
              render_mode="RGB+ED", rasterize_mode=rasterize_mode, tile_size=8)
    names = ("means", "quats", "scales", "opacities", "colors")
    g = torch.Generator().manual_seed(9)
    w_render, w_alpha = torch.randn(2, HEIGHT, WIDTH, 4, generator=g, dtype=torch.float64), \
        torch.randn(2, HEIGHT, WIDTH, 1, generator=g, dtype=torch.float64)
    grads = []
    for run in (lambda x: ours(x, WIDTH, HEIGHT, **kw), lambda x: gsplat_pipeline(gs, x, WIDTH, HEIGHT, **kw)):
        x = {k: v.clone().requires_grad_(k in names) for k, v in s.items()}
        render, alphas, _ = run(x)
        ((render * alphas * w_render).sum() + (alphas * w_alpha).sum()).backward()
        grads.append([x[k].grad for k in names])
    for name, got, expected in zip(names, *grads):
        assert got.abs().max() > 0, name
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------------------
# Hand-made blending cases: the rules by their numbers.


def test_blend_rules():
    """Hand-made cases on a 2x1 image with 1-pixel tiles: pixel 0 has centre (0.5, 0.5), pixel 1 (1.5, 0.5)."""
    def render(opacities, depths, bg=None, means=None, radius=2):
        n = len(opacities)
        means2d = torch.tensor(means if means is not None else [[0.5, 0.5]] * n, dtype=torch.float64)[None]
        conics = torch.tensor([[1.0, 0.0, 1.0]] * n, dtype=torch.float64)[None]
        colors = torch.arange(1, n + 1, dtype=torch.float64)[None, :, None]  # Gaussian i has color i + 1
        radii = torch.full((1, n, 2), radius, dtype=torch.int32)
        bg = None if bg is None else torch.tensor([[bg]], dtype=torch.float64)
        c, a = ref.rasterize_dense(means2d, conics, colors, torch.tensor([opacities], dtype=torch.float64),
                                   torch.tensor([depths], dtype=torch.float64), radii, 2, 1, bg, tile_size=1)
        return c[0, 0, :, 0].tolist(), a[0, 0, :, 0].tolist()

    # Front to back by depth: 0.5 over 0.5 gives alpha 0.75 and color 2 * 0.5 + 1 * 0.25.
    c, a = render([0.5, 0.5], [2.0, 1.0])
    assert c[0] == pytest.approx(1.25) and a[0] == pytest.approx(0.75)
    # Equal depths: lower index first.
    c, a = render([0.5, 0.5], [1.0, 1.0])
    assert c[0] == pytest.approx(1.0)
    # alpha is clamped to 0.999, so T = 1e-3; the next (0.95) would take T to 5e-5 <= 1e-4: the pixel is done
    # and that Gaussian is not blended.
    c, a = render([1.0, 0.95, 0.5], [1.0, 2.0, 3.0])
    assert c[0] == pytest.approx(0.999) and a[0] == pytest.approx(0.999)
    # 0.95 four times: T = 0.05, 0.0025, 1.25e-4, then 6.25e-6 <= 1e-4 stops; 3 blended; background * T.
    c, a = render([0.95] * 4, [1.0, 2.0, 3.0, 4.0], bg=100.0)
    assert a[0] == pytest.approx(1 - 0.05 ** 3)
    assert c[0] == pytest.approx(0.95 * (1 + 2 * 0.05 + 3 * 0.05 ** 2) + 100 * 0.05 ** 3)
    # alpha < 1/255 is skipped.
    c, a = render([0.999 / 255, 1.001 / 255], [1.0, 2.0])
    assert a[0] == pytest.approx(1.001 / 255) and c[0] == pytest.approx(2 * 1.001 / 255)
    # Culled (radius 0) Gaussians are ignored; with no Gaussian a pixel is background, alpha 0.
    c, a = render([0.5], [1.0], bg=3.0, radius=0)
    assert c == [3.0, 3.0] and a == [0.0, 0.0]
    # Tile mask: centred at (2.1, 0.5) with radius 1, the box spans tiles floor(1.1) = 1 to ceil(3.1) = 3
    # (clamped to 2): pixel 1 only, although alpha at pixel 0 (dx = 1.6) would be 0.5 exp(-1.28) > 1/255.
    c, a = render([0.5], [1.0], means=[[2.1, 0.5]], radius=1)
    assert c[0] == 0 and a[0] == 0 and c[1] == pytest.approx(0.5 * math.exp(-0.5 * 0.6 ** 2))
    c, a = render([0.5], [1.0], means=[[1.9, 0.5]], radius=1)  # box from tile floor(0.9) = 0: both pixels
    assert c[0] == pytest.approx(0.5 * math.exp(-0.5 * 1.4 ** 2))


# ----------------------------------------------------------------------------------------------------------
# (c) Gradients by finite differences.


@pytest.mark.parametrize("config", [
    dict(rasterize_mode="classic", render_mode="RGB"),
    dict(rasterize_mode="antialiased", render_mode="RGB+ED", sh_degree=2),
    dict(rasterize_mode="classic", render_mode="D", sh_degree=0),
], ids=["classic-RGB", "antialiased-RGB+ED-sh2", "classic-D-sh0"])
def test_gradcheck(config):
    width, height, tile_size = 12, 10, 8
    s, backgrounds = tiny_scene(config.get("sh_degree"))
    assert_far_from_discontinuities(s, width, height, tile_size, config)
    names = ("means", "quats", "scales", "opacities", "colors")

    def f(means, quats, scales, opacities, colors, backgrounds):
        render, alphas, _ = ref.rasterize_gaussians(means, quats, scales, opacities, colors, s["viewmats"], s["Ks"],
                                                    width, height, tile_size=tile_size, backgrounds=backgrounds,
                                                    **config)
        return render, alphas

    inputs = tuple(s[k].clone().requires_grad_() for k in names) + (backgrounds.clone().requires_grad_(),)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# (d) Degenerate inputs.


def grads_of(s, width, height, names=("means", "quats", "scales", "opacities", "colors"), **kw):
    x = {k: v.clone().requires_grad_(k in names) for k, v in s.items()}
    render, alphas, meta = ours(x, width, height, **kw)
    (render.sum() + alphas.sum()).backward()
    return render, alphas, meta, {k: x[k].grad for k in names}


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_degenerate_scales_and_quaternions(rasterize_mode):
    s = scene(30, n_cams=2, seed=12, sh_degree=1)
    s["scales"][0] = 0  # a point
    s["scales"][1, 0] = 0  # flat
    s["scales"][2] = -s["scales"][3]  # mirrored copy of 3
    s["means"][2], s["quats"][2] = s["means"][3], s["quats"][3]
    s["quats"][4] = 0  # normalises to zero: identity rotation
    kw = dict(sh_degree=1, rasterize_mode=rasterize_mode, render_mode="RGB+ED")
    render, alphas, meta, grads = grads_of(s, WIDTH, HEIGHT, **kw)
    assert torch.isfinite(render).all() and torch.isfinite(alphas).all()
    for k in ("means2d", "depths", "conics", "opacities"):
        assert torch.isfinite(meta[k]).all(), k
    for k, g in grads.items():
        assert torch.isfinite(g).all(), k
    # The sign of a scale does not matter.
    assert torch.equal(meta["radii"][:, 2], meta["radii"][:, 3])
    torch.testing.assert_close(meta["conics"][:, 2], meta["conics"][:, 3], atol=1e-12, rtol=0)
    if rasterize_mode == "antialiased":
        # A point has no footprint before the blur: compensation 0, so opacity 0 -> culled, no gradient.
        assert (meta["compensations"][:, 0] == 0).all() and (meta["radii"][:, 0] == 0).all()
        assert all((g[0] == 0).all() for g in grads.values())
    else:
        assert ((meta["radii"][:, 0] > 0).all(-1) | (meta["depths"][:, 0] == 0)).all()  # the blur keeps it


def test_culled_gaussians_have_zero_radius_and_gradient():
    """Camera at the origin looking down +z (identity viewmat), so camera z is world z exactly."""
    near, far = 0.01, 20.0
    means = torch.tensor([
        [0.0, 0.0, 0.0],  # at the camera centre (SH direction is zero)
        [0.1, 0.0, -1.0],  # behind
        [0.0, 0.1, 0.5 * near],  # in front of the near plane
        [0.0, 0.0, 30.0],  # beyond the far plane
        [50.0, 0.0, 2.0],  # far outside the image
        [0.0, 0.0, near],  # on the near plane: kept (gsplat culls z < near), and huge
        [0.1, 0.05, 3.0],  # ordinary
        [-0.1, 0.0, 3.5],  # ordinary
    ], dtype=torch.float64)
    n = len(means)
    g = torch.Generator().manual_seed(13)
    s = dict(means=means, quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
             scales=torch.full((n, 3), 0.05, dtype=torch.float64),
             opacities=torch.full((n,), 0.6, dtype=torch.float64),
             colors=0.3 * torch.randn(n, 4, 3, generator=g, dtype=torch.float64),
             viewmats=torch.eye(4, dtype=torch.float64)[None],
             Ks=torch.tensor([[30.0, 0, 20], [0, 30.0, 13.5], [0, 0, 1]], dtype=torch.float64)[None])
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    for rasterize_mode in ("classic", "antialiased"):
        render, alphas, meta, grads = grads_of(s, WIDTH, HEIGHT, sh_degree=1, near_plane=near, far_plane=far,
                                               rasterize_mode=rasterize_mode, backgrounds=bg, render_mode="RGB+D")
        assert torch.isfinite(render).all() and all(torch.isfinite(v).all() for v in grads.values())
        radii = meta["radii"][0]
        assert (radii[:5] == 0).all() and (radii[5:] > 0).all()
        for k, v in grads.items():
            assert (v[:5] == 0).all(), k
            assert (v[6:] != 0).any(), k
        for k in ("means2d", "depths", "conics"):
            assert (meta[k][0, :5] == 0).all()
        # The near-plane Gaussian is enormous: its box covers every tile, clamped to the image.
        assert meta["tiles_per_gauss"][0, 5] == 3 * 2 and radii[5].min() > 100


def test_huge_radius_is_clamped():
    means = torch.tensor([[0.0, 0.0, 0.02], [0.1, 0.0, 3.0]], dtype=torch.float64)
    s = dict(means=means, quats=torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
             scales=torch.tensor([[1e8, 1e8, 1e8], [0.05, 0.05, 0.05]], dtype=torch.float64),
             opacities=torch.tensor([0.3, 0.9], dtype=torch.float64),
             colors=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
             viewmats=torch.eye(4, dtype=torch.float64)[None],
             Ks=torch.tensor([[30.0, 0, 20], [0, 30.0, 13.5], [0, 0, 1]], dtype=torch.float64)[None])
    render, alphas, meta, grads = grads_of(s, WIDTH, HEIGHT, tile_size=8)
    assert (meta["radii"][0, 0] == 2 ** 31 - 1).all()  # beyond int32: clamped, not wrapped
    assert meta["tiles_per_gauss"][0, 0] == 5 * 4
    assert torch.isfinite(render).all() and all(torch.isfinite(v).all() for v in grads.values())
    torch.testing.assert_close(alphas[0, 0, 0], torch.tensor([0.3], dtype=torch.float64))  # flat: alpha = opacity
    for dtype in DTYPES:  # large but representable, in both precisions
        s32 = {k: v.to(dtype) for k, v in s.items()}
        s32["scales"][0] = 1e3
        render, alphas, meta = ours(s32, WIDTH, HEIGHT, tile_size=8)
        assert torch.isfinite(render).all() and meta["tiles_per_gauss"][0, 0] == 20


@pytest.mark.parametrize("render_mode", ref.RENDER_MODES)
def test_empty_and_fully_culled_scenes_render_the_background(render_mode):
    bg = torch.tensor([[0.2, 0.4, 0.6], [0.9, 0.8, 0.7]], dtype=torch.float64)
    full = scene(10, n_cams=2, seed=14)
    empty = {k: (v[:0] if k not in ("viewmats", "Ks") else v) for k, v in full.items()}
    behind = dict(full, means=full["means"] * 0.1 + torch.linalg.inv(full["viewmats"][0])[:3, 3] * 2)
    expected_color = {"RGB": bg, "RGB+D": torch.cat([bg, torch.zeros(2, 1, dtype=torch.float64)], -1),
                      "RGB+ED": torch.cat([bg, torch.zeros(2, 1, dtype=torch.float64)], -1)}.get(
        render_mode, torch.zeros(2, 1, dtype=torch.float64))
    for s, n in ((empty, 0), (behind, 10)):
        x = {k: v.clone().requires_grad_(k in ("means", "opacities")) for k, v in s.items()}
        b = bg.clone().requires_grad_()
        render, alphas, meta = ours(x, WIDTH, HEIGHT, backgrounds=b, render_mode=render_mode)
        if n == 0:
            assert meta["isect_ids"].numel() == 0 and (meta["isect_offsets"] == 0).all()
            assert meta["radii"].shape == (2, 0, 2) and meta["tiles_per_gauss"].shape == (2, 0)
        cams = [0, 1] if n == 0 else [c for c in range(2) if (meta["radii"][c] == 0).all()]
        assert cams, "camera 0 should see nothing"
        for c in cams:
            assert (alphas[c] == 0).all()
            assert torch.equal(render[c], expected_color[c].expand_as(render[c]))
        render.sum().backward()
        assert (b.grad is None) == (render_mode in ("D", "ED"))  # depth-only modes ignore backgrounds
        assert all(torch.isfinite(v.grad).all() for v in x.values() if v.requires_grad)
        if b.grad is not None:
            assert torch.isfinite(b.grad).all()


@pytest.mark.parametrize("width,height,tile_size", [(17, 5, 16), (5, 17, 8), (1, 1, 16), (33, 9, 4)], ids=str)
def test_image_sizes_not_multiple_of_tile(gs, width, height, tile_size):
    s = scene(60, n_cams=2, width=width, height=height, seed=15)
    bg = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.0]], dtype=torch.float64)
    kw = dict(tile_size=tile_size, backgrounds=bg)
    render, alphas, meta = ours(s, width, height, **kw)
    e_render, e_alphas, _ = gsplat_pipeline(gs, s, width, height, **kw)
    assert render.shape == (2, height, width, 3)
    assert meta["isect_offsets"].shape == (2, math.ceil(height / tile_size), math.ceil(width / tile_size))
    torch.testing.assert_close(render, e_render, **tol(torch.float64))
    torch.testing.assert_close(alphas, e_alphas, **tol(torch.float64))


def test_errors_name_the_argument():
    s = scene(5, n_cams=1)
    with pytest.raises(ValueError, match="render_mode"):
        ours(s, WIDTH, HEIGHT, render_mode="RGBD")
    with pytest.raises(ValueError, match="rasterize_mode"):
        ours(s, WIDTH, HEIGHT, rasterize_mode="aa")
    with pytest.raises(ValueError, match="needs 9 coefficients"):
        ref.spherical_harmonics(2, torch.randn(5, 3), torch.randn(5, 4, 3))
    with pytest.raises(ValueError, match="degree 5"):
        ref.spherical_harmonics(5, torch.randn(5, 3), torch.randn(5, 36, 3))
    with pytest.raises(ValueError, match="32 key bits"):
        ref.isect_offsets(torch.zeros(0, dtype=torch.int64), 1 << 12, 1 << 10, 1 << 10)
