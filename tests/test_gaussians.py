"""Gaussian rasterizer: every backend of the public ops against the float64 reference (pyops/reference/
gaussians.py, itself checked against gsplat in test_gaussians_reference.py): images and all gradients for
every render and rasterize mode and SH degree, several cameras, the stages one by one, float64 gradcheck,
robustness, named errors, opcheck and torch.compile.

Tolerances: float64 backends agree with the reference to 1e-9 (only summation order differs); float32 ones
to 2e-4 of the result's magnitude: an fp32 rounding of pixel coordinates (~40) inside exp(-sigma) moves alpha
by ~1e-5 relative, and a pixel sums up to a few hundred such terms.
"""

import pytest
import torch

import pyops
from pyops.reference import gaussians as ref

from test_gaussians_reference import HEIGHT, WIDTH, assert_far_from_discontinuities, scene, tiny_scene
from utils import backend_params

BACKENDS = backend_params("gs_rasterize_fwd", include_torch=True)
NATIVE = backend_params("gs_rasterize_fwd")
PARAMS = ("means", "quats", "scales", "opacities", "colors")
TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def dtypes_for(backend):
    return [torch.float32] if backend == "triton" else [torch.float32, torch.float64]


def on(s, device, dtype):
    return {k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in s.items()}


def render_and_grads(fn, s, weight, names, **kw):
    leaves = {k: (v.detach().clone().requires_grad_(k in names) if torch.is_tensor(v) else v) for k, v in s.items()}
    out, alphas, meta = fn(**leaves, **kw)
    loss = (out * weight[..., :out.shape[-1]]).sum() + alphas.sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return out, alphas, meta, {k: g for k, g in zip(names, grads)}


def assert_matches(name, got, want, dtype):
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got.double().cpu() - want.double().cpu()).abs().max().item() if want.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{name}: max error {err:.2e} > {TOL[dtype] * scale:.2e}"


def check_against_reference(device, backend, dtype, s, width=WIDTH, height=HEIGHT, **kw):
    names = PARAMS + (("backgrounds",) if s.get("backgrounds") is not None else ())
    weight = torch.rand(s["viewmats"].shape[0], height, width, 4, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    want = render_and_grads(ref.rasterize_gaussians, on(s, "cpu", torch.float64), weight, names, width=width,
                            height=height, **kw)
    got = render_and_grads(pyops.rasterize_gaussians, on(s, device, dtype), weight.to(device, dtype), names,
                           width=width, height=height, backend=backend, **kw)
    assert got[0].dtype == dtype and got[0].device.type == device
    assert_matches("render_colors", got[0], want[0], dtype)
    assert_matches("render_alphas", got[1], want[1], dtype)
    assert torch.equal(got[2]["radii"].cpu(), want[2]["radii"])
    for k in names:
        if want[3][k] is None:
            assert got[3][k] is None or not got[3][k].any(), k
        else:
            assert_matches(f"grad {k}", got[3][k], want[3][k], dtype)
    return got


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("rasterize_mode", ref.RASTERIZE_MODES)
@pytest.mark.parametrize("render_mode", ref.RENDER_MODES)
def test_render_matches_reference(device, backend, render_mode, rasterize_mode):
    s = scene(n=120, n_cams=2, seed=3)
    s["backgrounds"] = torch.rand(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for dtype in dtypes_for(backend):
        check_against_reference(device, backend, dtype, s, render_mode=render_mode, rasterize_mode=rasterize_mode,
                                tile_size=8)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_sh_degrees_and_tile_sizes(device, backend, sh_degree):
    s = scene(n=90, n_cams=3, seed=5, sh_degree=sh_degree)
    for dtype in dtypes_for(backend):
        check_against_reference(device, backend, dtype, s, sh_degree=sh_degree, tile_size=16)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_stages_match_reference(device, backend):
    s = on(scene(n=80, n_cams=2, seed=7), device, torch.float32)
    args = (s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], WIDTH, HEIGHT)
    radii, means2d, depths, conics, comp = pyops.project_gaussians(*args, opacities=s["opacities"],
                                                                   antialiased=True, backend=backend)
    want = ref.project_ewa(s["means"], ref.quat_scale_to_covar(s["quats"], s["scales"]), *args[3:],
                           antialiased=True, opacities=s["opacities"])
    assert torch.equal(radii, want[0])
    for name, got, w in zip(("means2d", "depths", "conics", "compensations"), (means2d, depths, conics, comp),
                            want[1:]):
        torch.testing.assert_close(got, w, atol=2e-4, rtol=1e-5, msg=name)
    tiles, isect_ids, flatten_ids = pyops.intersect_tiles(means2d, radii, depths, 8, 5, 4, backend=backend)
    w_tiles, w_ids, w_flat = ref.intersect_tiles(means2d, radii, depths, 8, 5, 4)
    assert torch.equal(tiles, w_tiles) and torch.equal(isect_ids, w_ids) and torch.equal(flatten_ids.long(), w_flat)
    offsets = pyops.isect_offsets(isect_ids, 2, 5, 4, backend=backend)
    assert torch.equal(offsets, ref.isect_offsets(w_ids, 2, 5, 4))
    dirs = torch.randn(33, 3, device=device)
    coeffs = torch.randn(33, 16, 3, device=device)
    for degree in range(4):
        torch.testing.assert_close(pyops.spherical_harmonics(degree, dirs, coeffs, backend=backend),
                                   ref.spherical_harmonics(degree, dirs, coeffs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("config", [
    dict(rasterize_mode="classic", render_mode="RGB"),
    dict(rasterize_mode="antialiased", render_mode="RGB+ED", sh_degree=2),
], ids=["classic-RGB", "antialiased-RGB+ED-sh2"])
def test_gradcheck(device, backend, config):
    if backend == "triton":
        pytest.skip("Triton kernels compute in fp32; their gradients are compared with the reference above")
    width, height, tile_size = 12, 10, 8
    s, backgrounds = tiny_scene(config.get("sh_degree"))
    assert_far_from_discontinuities(s, width, height, tile_size, config)
    s, backgrounds = on(s, device, torch.float64), backgrounds.to(device)

    def render(means, quats, scales, opacities, colors, backgrounds):
        out, alphas, _ = pyops.rasterize_gaussians(means, quats, scales, opacities, colors, s["viewmats"], s["Ks"],
                                                   width, height, tile_size=tile_size, backgrounds=backgrounds,
                                                   backend=backend, **config)
        return out, alphas

    inputs = tuple(s[k].clone().requires_grad_() for k in PARAMS) + (backgrounds.clone().requires_grad_(),)
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_empty_and_degenerate_scenes(device, backend):
    dtype = torch.float32
    s = on(scene(n=40, n_cams=2, seed=11), device, dtype)
    s["scales"][:5] = 0  # flat
    s["scales"][5:10] *= -1  # sign does not matter
    s["quats"][10:12] = 0  # zero quaternion: identity rotation
    s["means"][12:15] = torch.linalg.inv(s["viewmats"][0])[:3, 3]  # at camera 0's centre: culled there
    s["backgrounds"] = torch.rand(2, 3, device=device, dtype=dtype)
    out, alphas, meta, grads = render_and_grads(pyops.rasterize_gaussians, s, torch.ones(2, HEIGHT, WIDTH, 4, device=device),
                                                PARAMS, width=WIDTH, height=HEIGHT, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(alphas).all()
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert (meta["radii"][0, 12:15] == 0).all()
    empty = {k: (v[:0] if k in PARAMS else v) for k, v in s.items()}
    out, alphas, _ = pyops.rasterize_gaussians(**empty, width=WIDTH, height=HEIGHT, backend=backend)
    assert (alphas == 0).all()
    torch.testing.assert_close(out, s["backgrounds"][:, None, None, :].expand_as(out))


def test_errors_name_the_argument():
    s = scene(n=10, n_cams=1)
    base = dict(s, width=WIDTH, height=HEIGHT)
    cases = [
        (dict(means=s["means"][:, :2]), ValueError, "means"),
        (dict(quats=s["quats"][:5]), ValueError, "quats"),
        (dict(scales=s["scales"].float()), TypeError, "scales"),
        (dict(opacities=s["opacities"].long()), TypeError, "opacities"),
        (dict(viewmats=s["viewmats"][:, :3]), ValueError, "viewmats"),
        (dict(Ks=s["Ks"][:, :2]), ValueError, "Ks"),
        (dict(width=0), ValueError, "width"),
        (dict(height=-3), ValueError, "height"),
        (dict(tile_size=0), ValueError, "tile_size"),
        (dict(render_mode="RGBD"), ValueError, "render_mode"),
        (dict(rasterize_mode="fast"), ValueError, "rasterize_mode"),
        (dict(sh_degree=2), ValueError, "colors"),
        (dict(backgrounds=torch.zeros(1, 5, dtype=torch.float64)), ValueError, "backgrounds"),
    ]
    for backend in [b for _, b in NATIVE]:
        with pytest.raises(ValueError, match="viewmats"):
            pyops.rasterize_gaussians(**{**base, "viewmats": s["viewmats"].clone().requires_grad_()},
                                      backend=backend)
    nan_means = s["means"].clone()
    nan_means[3, 1] = float("nan")
    cases.append((dict(means=nan_means), ValueError, "means"))
    for change, exc, name in cases:
        with pytest.raises(exc, match=name):
            pyops.rasterize_gaussians(**{**base, **change})


@pytest.mark.parametrize("device,backend", NATIVE)
def test_absgrad(device, backend):
    """meta["means2d"].absgrad: the per-pixel |d loss / d means2d| summed per Gaussian (gsplat's convention)."""
    s = on(scene(n=30, n_cams=1, seed=13), device, torch.float32)
    leaves = {k: v.detach().requires_grad_() for k, v in s.items() if k in PARAMS}
    out, _, meta = pyops.rasterize_gaussians(**leaves, viewmats=s["viewmats"], Ks=s["Ks"], width=WIDTH,
                                             height=HEIGHT, absgrad=True, backend=backend)
    meta["means2d"].retain_grad()
    (out * torch.randn_like(out)).sum().backward()
    grad, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert absgrad.shape == grad.shape and (absgrad >= grad.abs() - 1e-6).all()
    assert (absgrad > grad.abs() + 1e-6).any()  # pixels pull in different directions
    assert (absgrad[(meta["radii"] == 0).all(-1)] == 0).all()


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in NATIVE if b != "triton" or d == "cuda"])
def test_opcheck_and_compile(device, backend):
    s = on(scene(n=40, n_cams=2, seed=17), device, torch.float32)
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.pyops
    proj = (s["means"], s["quats"], s["scales"], s["opacities"], s["viewmats"], s["Ks"], WIDTH, HEIGHT, 0.3, 0.01,
            1e10, 0.0, True)
    torch.library.opcheck(getattr(ops, "gs_project_fwd" + suffix).default, proj)
    radii, means2d, depths, conics, _ = getattr(ops, "gs_project_fwd" + suffix)(*proj)
    _, ids, flat = pyops.intersect_tiles(means2d, radii, depths, 16, 3, 2, backend=backend)
    offsets = pyops.isect_offsets(ids, 2, 3, 2, backend=backend)
    colors = torch.rand(2, 40, 3, device=device)
    opac = s["opacities"][None].expand(2, -1).contiguous()
    torch.library.opcheck(getattr(ops, "gs_rasterize_fwd" + suffix).default,
                          (means2d, conics, colors, opac, None, WIDTH, HEIGHT, 16, offsets, flat))
    torch.library.opcheck(getattr(ops, "gs_sh_fwd" + suffix).default,
                          (2, torch.randn(7, 3, device=device), torch.randn(7, 9, 3, device=device)))

    def render(means, quats, scales, opacities, colors):
        return pyops.rasterize_gaussians(means, quats, scales, opacities, colors, s["viewmats"], s["Ks"], WIDTH,
                                         HEIGHT, backend=backend)[0]

    args = [s[k] for k in ("means", "quats", "scales", "opacities")] + [torch.rand(40, 3, device=device)]
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(render, fullgraph=True)
        torch.testing.assert_close(compiled(*args), render(*args), atol=1e-5, rtol=1e-5)


def _cuda_gs_registered():
    return torch.cuda.is_available() and "pyops::gs_rasterize_fwd" in \
        torch._C._dispatch_get_registrations_for_dispatch_key("CUDA")


def assert_stage_close(name, got, want, rel=1e-5):
    """CUDA stage output vs the CPU op on the same inputs: 1e-5 of the result's magnitude (summation order and
    atomics differ; the per-element math is the same gaussian_math.h)."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{name}: {got.shape}/{got.dtype} vs {want.shape}"
    if want.numel() == 0:
        return
    scale = max(1.0, want.abs().max().item())
    err = (got.cpu().double() - want.double()).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.2e} > {rel * scale:.2e}"


@pytest.mark.skipif(not _cuda_gs_registered(), reason="needs a GPU and pyops built with the CUDA gs_* kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("tile_size,channels", [(16, 3), (8, 4), (8, 1), (5, 6)])
def test_cuda_stages_match_cpu(dtype, antialiased, tile_size, channels):
    """Each CUDA stage op against the CPU op on identical inputs (each stage fed the CPU's previous outputs):
    forward and backward within 1e-5 relative, intersection outputs bit-equal."""
    ops = torch.ops.pyops
    g = torch.Generator().manual_seed(23)
    s = on(scene(n=300, n_cams=3, seed=29), "cpu", dtype)
    cu = lambda t: t.cuda() if torch.is_tensor(t) else t  # noqa: E731
    check = lambda name, got, want: assert_stage_close(f"{name} [{dtype}]", got, want)  # noqa: E731
    opac = s["opacities"]

    # Projection, with and without opacities (opacity-aware radius and cull).
    for op_arg in (None, opac):  # the last (with opacities) feeds the later stages
        proj = (s["means"], s["quats"], s["scales"], op_arg, s["viewmats"], s["Ks"], WIDTH, HEIGHT, 0.3, 0.01, 1e10,
                0.0, antialiased)
        want = ops.gs_project_fwd(*proj)
        got = ops.gs_project_fwd(*map(cu, proj))
        assert torch.equal(got[0].cpu(), want[0]), "radii"
        for name, a, b in zip(("means2d", "depths", "conics", "compensations"), got[1:], want[1:]):
            check(name, a, b)
    radii, means2d, depths, conics, comps = want  # the CPU's, with opacities
    c, n = radii.shape[:2]
    cot = [torch.randn(c, n, k, generator=g, dtype=torch.float64).to(dtype).squeeze(-1) for k in (2, 1, 3, 1)]
    bwd = (s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], WIDTH, HEIGHT, 0.3, antialiased, radii, conics,
           comps, *cot)
    for name, a, b in zip(("v_means", "v_quats", "v_scales"), ops.gs_project_bwd(*map(cu, bwd)),
                          ops.gs_project_bwd(*bwd)):
        check(name, a, b)

    # Spherical harmonics, every degree, K above the degree's need, one zero direction.
    dirs = torch.randn(97, 3, generator=g, dtype=torch.float64).to(dtype)
    dirs[3] = 0
    coeffs = torch.randn(97, 16, 3, generator=g, dtype=torch.float64).to(dtype)
    v_col = torch.randn(97, 3, generator=g, dtype=torch.float64).to(dtype)
    for degree in range(4):
        check(f"sh{degree}", ops.gs_sh_fwd(degree, cu(dirs), cu(coeffs)), ops.gs_sh_fwd(degree, dirs, coeffs))
        for name, a, b in zip(("v_coeffs", "v_dirs"), ops.gs_sh_bwd(degree, cu(dirs), cu(coeffs), cu(v_col)),
                              ops.gs_sh_bwd(degree, dirs, coeffs, v_col)):
            check(f"sh{degree} {name}", a, b)

    # Intersection and offsets: bit-equal (keys, tie order, empty tiles).
    tw, th = (WIDTH + tile_size - 1) // tile_size, (HEIGHT + tile_size - 1) // tile_size
    want_isect = ops.gs_intersect_tiles(means2d, radii, depths, tile_size, tw, th)
    got_isect = ops.gs_intersect_tiles(cu(means2d), cu(radii), cu(depths), tile_size, tw, th)
    for name, a, b in zip(("tiles_per_gauss", "isect_ids", "flatten_ids"), got_isect, want_isect):
        assert torch.equal(a.cpu(), b), name
    _, isect_ids, flatten_ids = want_isect
    offsets = ops.gs_isect_offsets(isect_ids, c, tw, th)
    assert torch.equal(ops.gs_isect_offsets(cu(isect_ids), c, tw, th).cpu(), offsets), "isect_offsets"

    # Rasterization, forward and backward, with and without backgrounds, absgrad on.
    colors = torch.rand(c, n, channels, generator=g, dtype=torch.float64).to(dtype)
    opacs = opac[None].expand(c, n).contiguous()
    opacs[:, :10] = 1.0  # a few fully opaque Gaussians: the 0.999 clamp and early pixel termination
    for bg in (torch.rand(c, channels, generator=g, dtype=torch.float64).to(dtype), None):
        fwd = (means2d, conics, colors, opacs, bg, WIDTH, HEIGHT, tile_size, offsets, flatten_ids)
        want = ops.gs_rasterize_fwd(*fwd)
        got = ops.gs_rasterize_fwd(*map(cu, fwd))
        check("render_colors", got[0], want[0])
        check("render_alphas", got[1], want[1])
        assert torch.equal(got[2].cpu(), want[2]), "last_ids"
        check("final_transmittances", got[3], want[3])
        v_rc = torch.randn(c, HEIGHT, WIDTH, channels, generator=g, dtype=torch.float64).to(dtype)
        v_ra = torch.randn(c, HEIGHT, WIDTH, 1, generator=g, dtype=torch.float64).to(dtype)
        bwd = (*fwd, want[3], want[2], v_rc, v_ra, True)
        names = ("v_means2d", "v_conics", "v_colors", "v_opacities", "v_backgrounds", "v_means2d_abs")
        for name, a, b in zip(names, ops.gs_rasterize_bwd(*map(cu, bwd)), ops.gs_rasterize_bwd(*bwd)):
            check(name, a, b)


@pytest.mark.skipif(not _cuda_gs_registered(), reason="needs a GPU and pyops built with the CUDA gs_* kernels")
def test_cuda_stage_errors():
    ops = torch.ops.pyops
    z = torch.zeros(1, 4, 2, device="cuda")
    off = torch.zeros(1, 1, 1, dtype=torch.int32, device="cuda")
    ids = torch.zeros(0, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="tile_size=32 is not supported"):
        ops.gs_rasterize_fwd(z, torch.zeros(1, 4, 3, device="cuda"), torch.zeros(1, 4, 3, device="cuda"),
                             torch.zeros(1, 4, device="cuda"), None, 20, 20, 32, off, ids)
    with pytest.raises(TypeError, match="`colors` must be float32 or float64"):
        ops.gs_rasterize_fwd(z, torch.zeros(1, 4, 3, device="cuda"), torch.zeros(1, 4, 3, device="cuda").half(),
                             torch.zeros(1, 4, device="cuda"), None, 20, 20, 16, off, ids)
    fwd = (z, torch.zeros(1, 4, 3, device="cuda"), torch.zeros(1, 4, 3, device="cuda"),
           torch.zeros(1, 4, device="cuda"), None, 20, 20, 16, torch.zeros(1, 2, 2, dtype=torch.int32, device="cuda"),
           ids)
    col, alp, last, trans = ops.gs_rasterize_fwd(*fwd)
    with pytest.raises(ValueError, match="`final_transmittances` must have shape"):
        ops.gs_rasterize_bwd(*fwd, trans[..., 0], last, torch.ones_like(col), torch.ones_like(alp), False)
    tpg, isect, flat = ops.gs_intersect_tiles(torch.zeros(2, 0, 2, device="cuda"),
                                              torch.zeros(2, 0, 2, dtype=torch.int32, device="cuda"),
                                              torch.zeros(2, 0, device="cuda"), 16, 3, 2)
    assert tpg.shape == (2, 0) and isect.numel() == 0 and flat.numel() == 0
    assert ops.gs_isect_offsets(isect, 2, 3, 2).eq(0).all()
