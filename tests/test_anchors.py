"""MoRel anchor ops (anchor_blend_weight, anchor_decode): every backend against the float64 reference, forward and
every gradient, the masking rules (dropped Gaussians, invisible anchors), registration, named errors, the
Scaffold-GS module layout and a render through pyops.rasterize_gaussians."""

import math

import pytest
import torch
from torch import nn
from utils import assert_close, backend_params

import pyops
from pyops.reference import anchors as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DECODE = backend_params("anchor_decode_fwd")
BLEND = backend_params("anchor_blend_weight_fwd")
# opcheck and torch.compile trace the kernels with fake tensors, which interpreted Triton kernels do not support.
DECODE_COMPILED = [(d, b) for d, b in DECODE if b != "triton" or d == "cuda"]
BLEND_COMPILED = [(d, b) for d, b in BLEND if b != "triton" or d == "cuda"]
MLP_NAMES = list(ref.AnchorMLP._fields)
DIFF = ["anchors", "feats", "offsets", "anchor_scales", *MLP_NAMES, "appearance", "opacity_scale", "blend_offset",
        "blend_decay", "tau"]
OUT_NAMES = list(ref.DecodedGaussians._fields)


def make_case(m, c, k, h, a=0, dist=(False, False, False), visible=None, opacity_scale=False, blend=None,
              tau_tensor=False, seed=0, tau=0.45, lambda_decay=1.3):
    """A float64 decode problem: visible None | "random" | "skip" (the first 32 anchors invisible: whole tiles
    skip the MLP), blend None or a mode (decays of both signs)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    case = dict(anchors=randn(m, 3), feats=randn(m, c), offsets=randn(m, k, 3), anchor_scales=0.2 + rand(m, 6),
                cam_center=torch.tensor([0.8, -0.5, 1.0], dtype=torch.float64) + 0.1 * randn(3))
    for head, (out, d) in enumerate(zip((k, 7 * k, 3 * k), dist)):
        n_in = c + 3 + int(d) + (a if head == 2 else 0)
        w = [randn(h, n_in) / math.sqrt(n_in), 0.3 * randn(h), 1.5 * randn(out, h) / math.sqrt(h), 0.3 * randn(out)]
        case.update(zip(MLP_NAMES[4 * head:4 * head + 4], w))
    if m:  # centre the opacity head's outputs per offset: about half the Gaussians are kept
        view = case["anchors"] - case["cam_center"]
        dist_ = view.norm(dim=1, keepdim=True)
        x = torch.cat([case["feats"], view / dist_] + ([dist_] if dist[0] else []), 1)
        z = torch.relu(x @ case["w1_opacity"].T + case["b1_opacity"]) @ case["w2_opacity"].T + case["b2_opacity"]
        case["b2_opacity"] = case["b2_opacity"] - z.median(0).values + 0.2 * randn(k)
    case["appearance"] = randn(a) if a else None
    case["opacity_scale"] = 0.5 + rand(m) if opacity_scale else None
    vis = None
    if visible == "random":
        vis = rand(m) > 0.35
    elif visible == "skip":
        vis = rand(m) > 0.3
        vis[:32] = False
    case["visible"] = vis
    case["blend_offset"] = rand(m) if blend else None
    case["blend_decay"] = randn(m) if blend else None
    case["tau"] = torch.tensor(tau, dtype=torch.float64) if tau_tensor else tau
    case.update(opacity_dist=dist[0], cov_dist=dist[1], color_dist=dist[2], lambda_decay=lambda_decay,
                blend_mode=blend or "two_sided")
    return case


def cast(case, dtype, device):
    return {n: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
            for n, v in case.items()}


def call(case, backend):
    kw = {n: case[n] for n in ("appearance", "opacity_scale", "visible", "blend_offset", "blend_decay", "tau",
                               "lambda_decay", "blend_mode", "opacity_dist", "cov_dist", "color_dist")}
    mlp = ref.AnchorMLP(*(case[n] for n in MLP_NAMES))
    return pyops.anchor_decode(case["anchors"], case["feats"], case["offsets"], case["anchor_scales"],
                               case["cam_center"], mlp, backend=backend, **kw)


def cotangents(case, seed=1):
    g = torch.Generator().manual_seed(seed)
    m, k = case["offsets"].shape[:2]
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, k, 3), (m, k, 4), (m, k, 3), (m, k),
                                                                        (m, k, 3))]


def run(case, backend, v=None):
    """Outputs and {name: gradient} of every differentiable input for cotangents v of the first five outputs."""
    case = dict(case)
    leaves = {}
    for name in DIFF:
        if torch.is_tensor(case[name]):
            case[name] = leaves[name] = case[name].detach().requires_grad_()
    out = call(case, backend)
    if v is None:
        return out, {}
    grads = torch.autograd.grad(out[:5], list(leaves.values()), [t.to(o) for t, o in zip(v, out[:5])],
                                allow_unused=True)
    return out, dict(zip(leaves, grads))


def check_against_reference(case, device, backend, dtype):
    c = cast(case, dtype, device)
    v = [t.to(device) for t in cotangents(case)]
    got, grads = run(c, backend, v)
    exact, exact_grads = run(cast(c, torch.float64, device), "torch", v)
    same, same_grads = run(c, "torch", v)
    for name, a, e, s in zip(OUT_NAMES, got, exact, same):
        assert a.device.type == device
        assert_close(name, a, e, s, dtype)
    for name, e in exact_grads.items():
        a, s = grads[name], same_grads[name]
        if e is None:  # tau without a blend: unused
            assert a is None or not a.any(), name
            continue
        assert a is not None, f"v_{name} is missing"
        assert_close(f"v_{name}", a, e, s, dtype)
    check_masks(c, got)
    if len(got.means):  # the case has both kept and dropped Gaussians
        assert got.opacities.ne(0).any() and got.opacities.eq(0).any()
    return got


def check_masks(case, out):
    """Dropped Gaussians have opacity exactly 0; invisible anchors' Gaussians have the fill values."""
    means, quats, scales, opacities, colors, neural = out
    vis = case["visible"] if case["visible"] is not None else torch.ones(len(means), dtype=torch.bool,
                                                                          device=means.device)
    kept = (neural > 0) & vis[:, None]
    assert (opacities[~kept] == 0).all()
    assert (opacities[kept] != 0).any() or not kept.any()
    inv = ~vis
    a, o, s = (case[n].double() for n in ("anchors", "offsets", "anchor_scales"))
    expected_means = a[:, None] + o * s[:, None, :3]
    torch.testing.assert_close(means[inv], expected_means[inv].to(means.dtype))
    assert (quats[inv] == torch.tensor([1.0, 0, 0, 0], dtype=quats.dtype, device=quats.device)).all()
    for t in (scales, colors, neural, opacities):
        assert (t[inv] == 0).all()


# (m, c, k, h, a, dist, visible, opacity_scale, blend, tau_tensor): odd M, K = 1, C not a multiple of 8, H above
# a power of two, each dist flag, appearance, visible masks (with whole invisible tiles), every blend mode.
CASES = {
    "plain": (21, 5, 3, 6, 0, (False, False, False), None, False, None, False),
    "all_options_k1": (19, 7, 1, 9, 2, (True, False, True), "random", True, "two_sided", True),
    "skip_tiles_forward": (41, 13, 4, 5, 3, (False, True, False), "skip", False, "forward", False),
    "backward_mode": (5, 3, 2, 17, 0, (True, True, True), None, True, "backward", True),
}


@pytest.mark.parametrize("device,backend", DECODE)
@pytest.mark.parametrize("name", list(CASES))
def test_decode_matches_reference_fp32(device, backend, name):
    check_against_reference(make_case(*CASES[name]), device, backend, torch.float32)


@pytest.mark.parametrize("device,backend", DECODE)
@pytest.mark.parametrize("dtype,name", [(torch.float16, "all_options_k1"), (torch.bfloat16, "skip_tiles_forward"),
                                        (torch.float16, "plain")], ids=str)
def test_decode_matches_reference_low_precision(device, backend, dtype, name):
    check_against_reference(make_case(*CASES[name], seed=2), device, backend, dtype)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in DECODE if d == "cpu"])
@pytest.mark.parametrize("name", ["skip_tiles_forward", "backward_mode"])
def test_decode_matches_reference_fp64(device, backend, name):
    check_against_reference(make_case(*CASES[name], seed=6), device, backend, torch.float64)


@pytest.mark.parametrize("device,backend", DECODE)
def test_decode_non_contiguous_inputs(device, backend):
    case = cast(make_case(*CASES["all_options_k1"], seed=3), torch.float32, device)

    def strided(t):  # the same values in a non-contiguous layout
        return torch.stack([t, t], -1)[..., 0]

    for name in ["anchors", "feats", "offsets", "anchor_scales", "cam_center", *MLP_NAMES, "appearance",
                 "opacity_scale", "visible", "blend_offset", "blend_decay"]:
        case[name] = strided(case[name])
        assert case[name].numel() <= 1 or not case[name].is_contiguous(), name
    check_against_reference(case, device, backend, torch.float32)


@pytest.mark.parametrize("device,backend", DECODE)
def test_dropped_gaussians_get_no_gradient(device, backend):
    """Cotangents only on dropped Gaussians (tanh <= 0 or invisible anchor) give exactly zero gradients; the
    weight gradients are deterministic."""
    case = cast(make_case(21, 7, 3, 9, 2, (True, False, True), "random", True, "two_sided", True, seed=4),
                torch.float32, device)
    out, _ = run(case, backend)
    dropped = ~((out.neural_opacity > 0) & case["visible"][:, None])
    assert dropped.any() and (~dropped).any()
    assert not out.neural_opacity.requires_grad  # a statistic, as in Scaffold-GS
    v = [torch.randn(t.shape, dtype=torch.float64, device=device) * (dropped[..., None] if t.dim() == 3 else dropped)
         for t in out[:5]]
    _, grads = run(case, backend, v)
    for name, g in grads.items():
        assert g is None or (g == 0).all(), f"v_{name} is not zero"
    v = [t.to(device) for t in cotangents(case)]
    first, second = run(case, backend, v)[1], run(case, backend, v)[1]
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("device,backend", DECODE)
def test_decode_empty(device, backend):
    case = cast(make_case(0, 4, 3, 5, 2, (True, False, False), "random", True, "two_sided", True), torch.float32,
                device)
    out, grads = run(case, backend, [t.to(device) for t in cotangents(case)])
    assert [tuple(t.shape) for t in out] == [(0, 3, 3), (0, 3, 4), (0, 3, 3), (0, 3), (0, 3, 3), (0, 3)]
    for name, g in grads.items():
        assert g is None or (g.shape == case[name].shape and not g.any()), name


def _keep_masked(case, backend):
    """The decode's differentiable outputs times its (constant) keep mask: finite differences of a dropped
    Gaussian's detached values would not be 0, the analytic gradient is by design."""
    with torch.no_grad():
        out = call(case, backend)
        vis = case["visible"] if case["visible"] is not None else torch.ones(len(out[0]), dtype=torch.bool)
        keep = ((out.neural_opacity > 0) & vis[:, None]).to(out[0].dtype)

    def fn(*leaves):
        c = dict(case, **dict(zip(names, leaves)))
        o = call(c, backend)
        return tuple(t * (keep[..., None] if t.dim() == 3 else keep) for t in o[:5])

    names = [n for n in DIFF if torch.is_tensor(case[n])]
    return fn, [case[n].detach().clone().requires_grad_() for n in names]


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in DECODE if d == "cpu"])
@pytest.mark.parametrize("name", ["all_options_k1", "backward_mode"])
def test_decode_gradcheck_float64(device, backend, name):
    m = 6 if backend == "triton" else None  # the interpreter is slow: few anchors, fast-mode gradcheck
    args = list(CASES[name])
    if m:
        args[0] = m
    case = make_case(*args, seed=5)
    fn, leaves = _keep_masked(case, backend)
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=backend == "triton")


def test_reference_gradcheck_float64_all_kept():
    # The spec itself (what every backend is compared against) on a problem where every Gaussian is kept.
    case = make_case(4, 3, 2, 5, 2, (True, True, True), None, True, "two_sided", True, seed=6)
    case["b2_opacity"] = case["b2_opacity"].abs() + 3.0
    fn, leaves = _keep_masked(case, "torch")
    assert call(case, "torch").opacities.ne(0).all()
    assert torch.autograd.gradcheck(fn, leaves)


# ----------------------------------------------------------------------------------------------------------
# Blend weight.


def run_blend(offset, decay, tau, lambda_decay, mode, backend, v):
    offset, decay = offset.detach().requires_grad_(), decay.detach().requires_grad_()
    leaves = [offset, decay]
    if torch.is_tensor(tau):
        tau = tau.detach().requires_grad_()
        leaves.append(tau)
    w = pyops.anchor_blend_weight(offset, decay, tau, lambda_decay, mode, backend=backend)
    return w, torch.autograd.grad(w, leaves, v.to(w))


@pytest.mark.parametrize("device,backend", BLEND)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ref.BLEND_MODES)
@pytest.mark.parametrize("tau_tensor", [False, True])
def test_blend_matches_reference(device, backend, dtype, mode, tau_tensor):
    g = torch.Generator().manual_seed(7)
    m = 37
    offset = torch.rand(m, generator=g, dtype=torch.float64)
    offset[3] = 0.5  # the kink: tau == offset, gradient 0 w.r.t. offset and tau
    decay = torch.randn(m, generator=g, dtype=torch.float64)  # both signs
    v = torch.randn(m, generator=g, dtype=torch.float64).to(device)
    offset, decay = offset.to(device, dtype), decay.to(device, dtype)
    tau = torch.tensor(0.5, dtype=dtype, device=device) if tau_tensor else 0.5
    w, grads = run_blend(offset, decay, tau, 1.7, mode, backend, v)
    tau64 = tau.double() if tau_tensor else tau
    exact, exact_grads = run_blend(offset.double(), decay.double(), tau64, 1.7, mode, "torch", v)
    same, same_grads = run_blend(offset, decay, tau, 1.7, mode, "torch", v)
    assert_close("w", w, exact, same, dtype)
    for name, a, e, s in zip(["v_offset", "v_decay", "v_tau"], grads, exact_grads, same_grads):
        assert_close(name, a, e, s, dtype)
    assert grads[0][3] == 0 and exact_grads[0][3] == 0


@pytest.mark.parametrize("device,backend", BLEND)
def test_blend_non_contiguous_and_empty(device, backend):
    g = torch.Generator().manual_seed(8)
    both = torch.randn(2, 30, generator=g).to(device)
    offset, decay = both[0, ::2], both[1, 1::2]
    v = torch.randn(15, generator=g, dtype=torch.float64).to(device)
    w, grads = run_blend(offset, decay, -0.2, 0.9, "two_sided", backend, v)
    exact, exact_grads = run_blend(offset.double(), decay.double(), -0.2, 0.9, "two_sided", "torch", v)
    same, same_grads = run_blend(offset, decay, -0.2, 0.9, "two_sided", "torch", v)
    assert_close("w", w, exact, same, torch.float32)
    for a, e, s in zip(grads, exact_grads, same_grads):
        assert_close("grad", a, e, s, torch.float32)
    empty = torch.zeros(0, device=device)
    assert pyops.anchor_blend_weight(empty, empty, 0.0, backend=backend).shape == (0,)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in BLEND if d == "cpu"])
@pytest.mark.parametrize("mode", ref.BLEND_MODES)
def test_blend_gradcheck_float64(device, backend, mode):
    g = torch.Generator().manual_seed(9)
    offset = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_()
    decay = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_()
    tau = torch.tensor(0.55, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda o, d, t: pyops.anchor_blend_weight(o, d, t, 1.2, mode, backend=backend), (offset, decay, tau))


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


def _op(backend, name):
    return getattr(torch.ops.pyops, f"{name}_triton" if backend == "triton" else name).default


def _decode_args(case):
    mlp = [case[n] for n in MLP_NAMES]
    tau_t = case["tau"] if torch.is_tensor(case["tau"]) else None
    return (case["anchors"], case["feats"], case["offsets"], case["anchor_scales"], case["cam_center"], *mlp,
            case["appearance"], case["opacity_scale"], case["visible"], case["blend_offset"], case["blend_decay"],
            tau_t, 0.3, case["lambda_decay"], ref.BLEND_MODES.index(case["blend_mode"]), case["opacity_dist"],
            case["cov_dist"], case["color_dist"])


@pytest.mark.parametrize("device,backend", DECODE_COMPILED)
@pytest.mark.parametrize("name", ["plain", "all_options_k1"])
def test_decode_opcheck(device, backend, name):
    case = cast(make_case(*CASES[name]), torch.float32, device)
    for n in DIFF:
        if torch.is_tensor(case[n]):
            case[n].requires_grad_()
    args = _decode_args(case)
    torch.library.opcheck(_op(backend, "anchor_decode_fwd"), args)
    grads = tuple(t.to(device, torch.float32) for t in cotangents(case))
    torch.library.opcheck(_op(backend, "anchor_decode_bwd"), grads + tuple(
        a.detach() if torch.is_tensor(a) else a for a in args))


@pytest.mark.parametrize("device,backend", BLEND_COMPILED)
def test_blend_opcheck(device, backend):
    offset = torch.rand(9, device=device, requires_grad=True)
    decay = torch.randn(9, device=device, requires_grad=True)
    tau = torch.tensor(0.4, device=device, requires_grad=True)
    for tau_t in (None, tau):
        torch.library.opcheck(_op(backend, "anchor_blend_weight_fwd"), (offset, decay, tau_t, 0.3, 1.5, 0))
        torch.library.opcheck(_op(backend, "anchor_blend_weight_bwd"),
                              (torch.randn(9, device=device), offset.detach(), decay.detach(),
                               None if tau_t is None else tau_t.detach(), 0.3, 1.5, 1))


@pytest.mark.parametrize("device,backend", DECODE_COMPILED + [("cpu", "torch")])
def test_decode_torch_compile_fullgraph(device, backend):
    # ("cpu", "torch"): the argument checks and backend choice trace with fullgraph=True (aot_eager: no C++ build).
    case = cast(make_case(*CASES["all_options_k1"]), torch.float32, device)
    names = [n for n in DIFF if torch.is_tensor(case[n])]

    def step(*leaves):
        out = call(dict(case, **dict(zip(names, leaves))), backend)
        loss = out.opacities.sum() + out.colors.square().sum() + (out.means * out.scales).sum()
        return loss + out.quats[..., 1].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "torch" else "inductor")
    results = []
    for fn in (step, compiled):
        leaves = [case[n].detach().clone().requires_grad_() for n in names]
        loss = fn(*leaves)
        results.append((loss,) + torch.autograd.grad(loss, leaves))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,backend", BLEND_COMPILED)
def test_blend_torch_compile_fullgraph(device, backend):
    offset = torch.rand(9, device=device)
    decay = torch.randn(9, device=device)
    tau = torch.tensor(0.4, device=device)

    def step(o, d, t):
        return (pyops.anchor_blend_weight(o, d, t, 1.5, "forward", backend=backend) ** 2).sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (offset, decay, tau)]
        loss = fn(*leaves)
        results.append((loss,) + torch.autograd.grad(loss, leaves))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------
# Named errors (pyops/_checks.py's policy): TypeError for a kind or dtype, ValueError for a shape, value or device.


def _error_cases():
    base = cast(make_case(5, 4, 2, 3, 2, (True, False, False), "random", True, "two_sided"), torch.float32, "cpu")
    nan = base["feats"].clone()
    nan[1, 2] = float("nan")
    meta = lambda t: t.to("meta")  # noqa: E731  (another device, without a GPU)
    return [
        (dict(anchors=base["anchors"].double()), TypeError, "anchors has dtype torch.float64|feats has dtype"),
        (dict(feats=base["feats"].half()), TypeError, "feats has dtype torch.float16"),
        (dict(anchors=base["anchors"].long()), TypeError, "anchors must be a floating-point tensor"),
        (dict(anchors=base["anchors"][:, :2]), ValueError, r"anchors must have shape \(5, 3\), got \(5, 2\)"),
        (dict(anchors=base["anchors"][:, 0]), ValueError, r"anchors must have shape \(\*, 3\), got \(5,\)"),
        (dict(feats=base["feats"][:4]), ValueError, r"feats must have shape \(5, \*\)"),
        (dict(offsets=base["offsets"][:, :, :2]), ValueError, r"offsets must have shape \(5, 2, 3\), got \(5, 2, 2\)"),
        (dict(anchor_scales=base["anchor_scales"][:, :5]), ValueError, r"anchor_scales must have shape \(5, 6\)"),
        (dict(cam_center=base["cam_center"][:2]), ValueError, r"cam_center must have shape \(3,\)"),
        (dict(w1_opacity=base["w1_opacity"][:, :-1]), ValueError, "w1_opacity must have 8 input columns"),
        (dict(w1_color=base["w1_color"][:, :-1]), ValueError, r"w1_color must have 9 input columns .*appearance"),
        (dict(b1_cov=base["b1_cov"][:2]), ValueError, r"b1_cov must have shape \(3,\)"),
        (dict(w2_cov=base["w2_cov"][:5]), ValueError, r"w2_cov must have shape \(14, 3\)"),
        (dict(b2_color=base["b2_color"][:5]), ValueError, r"b2_color must have shape \(6,\)"),
        (dict(w2_opacity=base["w2_opacity"].double()), TypeError, "w2_opacity has dtype torch.float64"),
        (dict(appearance=base["appearance"][:1]), ValueError, "w1_color must have 8 input columns"),
        (dict(appearance=base["appearance"][None]), ValueError, r"appearance must have shape \(\*,\)"),
        (dict(opacity_scale=base["opacity_scale"][:3]), ValueError, r"opacity_scale must have shape \(5,\)"),
        (dict(visible=base["visible"].float()), TypeError, "visible must be bool"),
        (dict(visible=base["visible"][:4]), ValueError, r"visible must have shape \(5,\)"),
        (dict(blend_decay=None), ValueError, "blend_offset and blend_decay must be given together"),
        (dict(blend_offset=torch.rand(5), blend_decay=torch.rand(4)), ValueError,
         r"blend_decay must have shape \(5,\)"),
        (dict(blend_mode="sideways"), ValueError, "unknown blend_mode 'sideways'"),
        (dict(tau="0.5"), TypeError, "tau must be a float or a 0-dim tensor"),
        (dict(tau=torch.zeros(2)), ValueError, "tau must be a float or a 0-dim tensor, got shape"),
        (dict(tau=torch.tensor(1)), TypeError, "tau must be a floating-point tensor"),
        (dict(tau=float("inf")), ValueError, "tau=inf is not finite"),
        (dict(lambda_decay=float("nan")), ValueError, "lambda_decay=nan is not finite"),
        (dict(lambda_decay="1"), TypeError, "lambda_decay must be a float"),
        (dict(opacity_dist=1), TypeError, "opacity_dist must be a bool"),
        (dict(feats=nan), ValueError, "feats has non-finite values"),
        (dict(b2_cov=torch.full_like(base["b2_cov"], float("inf"))), ValueError, "b2_cov has non-finite values"),
        (dict(feats=meta(base["feats"])), ValueError, "feats is on meta but anchors is on cpu"),
        (dict(visible=meta(base["visible"])), ValueError, "visible is on meta but anchors is on cpu"),
        (dict(tau=meta(torch.tensor(0.5))), ValueError, "tau is on meta but anchors is on cpu"),
        (dict(w1_cov=None), TypeError, "w1_cov must be a Tensor, got NoneType"),
    ], base


@pytest.mark.parametrize("backend", sorted({"torch"} | {b for d, b in DECODE if d == "cpu"}))
def test_decode_bad_input_names_the_argument(backend):
    cases, base = _error_cases()
    for change, exc, msg in cases:
        with pytest.raises(exc, match="^anchor_decode: .*" + msg if not msg.startswith("^") else msg):
            call(dict(base, **change), backend)
    with pytest.raises(TypeError, match="mlp must be an AnchorMLP or a sequence of 12 tensors"):
        pyops.anchor_decode(base["anchors"], base["feats"], base["offsets"], base["anchor_scales"],
                            base["cam_center"], [base["w1_opacity"]] * 11, backend=backend)


@pytest.mark.parametrize("backend", sorted({"torch"} | {b for d, b in BLEND if d == "cpu"}))
def test_blend_bad_input_names_the_argument(backend):
    o, d = torch.rand(4), torch.rand(4)
    f = lambda *a, **k: pyops.anchor_blend_weight(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"^anchor_blend_weight: decay must have shape \(4,\), got \(3,\)$"):
        f(o, d[:3], 0.1)
    with pytest.raises(ValueError, match=r"^anchor_blend_weight: offset must have shape \(\*,\)"):
        f(o[None], d, 0.1)
    with pytest.raises(TypeError, match="^anchor_blend_weight: decay has dtype torch.float64 but offset has"):
        f(o, d.double(), 0.1)
    with pytest.raises(TypeError, match="^anchor_blend_weight: offset must be a floating-point tensor"):
        f(o.int(), d, 0.1)
    with pytest.raises(ValueError, match="^anchor_blend_weight: unknown mode 'both'"):
        f(o, d, 0.1, mode="both")
    with pytest.raises(ValueError, match="^anchor_blend_weight: decay is on meta but offset is on cpu$"):
        f(o, d.to("meta"), 0.1)
    with pytest.raises(ValueError, match="^anchor_blend_weight: offset has non-finite values$"):
        f(torch.tensor([0.0, float("nan")]), d[:2], 0.1)
    with pytest.raises(TypeError, match="^anchor_blend_weight: tau must be a float or a 0-dim tensor, got NoneType"):
        f(o, d, None)
    with pytest.raises(ValueError, match="^anchor_blend_weight: tau must be a float or a 0-dim tensor, got shape"):
        f(o, d, torch.zeros(1))


def test_backend_choice(monkeypatch):
    case = cast(make_case(3, 2, 2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        call(case, "cuda")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        call(case, "nope")
    monkeypatch.setenv("PYOPS_BACKEND", "torch")
    out = call(case, None)
    exact = call(case, "torch")
    for a, b in zip(out, exact):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------
# Module: Scaffold-GS's MLP layout, state dicts, rendering.


class ScaffoldMLPs(nn.Module):
    """Scaffold-GS's GaussianModel MLPs (scene/gaussian_model.py: the hidden width is feat_dim), keys and shapes
    as in its checkpoints, with its generate_neural_gaussians decode of the visible anchors (the boolean-compacted
    original the dense op replaces)."""

    def __init__(self, feat_dim, n_offsets, appearance_dim, add_opacity_dist, add_cov_dist, add_color_dist):
        super().__init__()
        c, k = feat_dim, n_offsets
        self.dists = (add_opacity_dist, add_cov_dist, add_color_dist)
        self.mlp_opacity = nn.Sequential(nn.Linear(c + 3 + add_opacity_dist, c), nn.ReLU(True), nn.Linear(c, k),
                                         nn.Tanh())
        self.mlp_cov = nn.Sequential(nn.Linear(c + 3 + add_cov_dist, c), nn.ReLU(True), nn.Linear(c, 7 * k))
        self.mlp_color = nn.Sequential(nn.Linear(c + 3 + add_color_dist + appearance_dim, c), nn.ReLU(True),
                                       nn.Linear(c, 3 * k), nn.Sigmoid())

    def decode(self, anchor, feat, offsets, scaling, cam, appearance, visible):
        anchor, feat, offsets, scaling = anchor[visible], feat[visible], offsets[visible], scaling[visible]
        ob_view = anchor - cam
        ob_dist = ob_view.norm(dim=1, keepdim=True)
        ob_view = ob_view / ob_dist
        base = torch.cat([feat, ob_view], 1)
        with_dist = torch.cat([feat, ob_view, ob_dist], 1)
        x = [with_dist if d else base for d in self.dists]
        color_in = torch.cat([x[2], appearance.expand(len(anchor), -1)], 1)
        k = offsets.shape[1]
        opacity = self.mlp_opacity(x[0]).reshape(-1, 1)
        color = self.mlp_color(color_in).reshape(-1, 3)
        cov = self.mlp_cov(x[1]).reshape(-1, 7)
        mask = opacity[:, 0] > 0
        scal = scaling.repeat_interleave(k, 0)
        means = (anchor.repeat_interleave(k, 0) + offsets.reshape(-1, 3) * scal[:, :3])[mask]
        scales = (scal[:, 3:] * torch.sigmoid(cov[:, :3]))[mask]
        rot = nn.functional.normalize(cov[:, 3:7], dim=-1)[mask]
        return means, color[mask], opacity[mask], scales, rot, mask


@pytest.mark.parametrize("device,backend", DECODE + [("cpu", "torch")])
def test_module_loads_scaffold_state_dict(device, backend):
    torch.manual_seed(0)
    c, k, a = 11, 4, 3
    scaffold = ScaffoldMLPs(c, k, a, False, True, False).double()
    ours = pyops.AnchorDecoder(c, k, c, a, add_cov_dist=True, backend=backend, dtype=torch.float64)
    assert set(ours.state_dict()) == set(scaffold.state_dict())
    ours.load_state_dict(scaffold.state_dict(), strict=True)
    ours.to(device)
    case = make_case(23, c, k, c, visible="random", seed=10)
    appearance = torch.randn(a, dtype=torch.float64)
    out = ours(*(case[n].to(device) for n in ("anchors", "feats", "offsets", "anchor_scales", "cam_center")),
               appearance=appearance.to(device), visible=case["visible"].to(device))
    means, colors, opacity, scales, rot, mask = scaffold.decode(
        case["anchors"], case["feats"], case["offsets"], case["anchor_scales"], case["cam_center"], appearance,
        case["visible"])
    vis = case["visible"]
    kept = out.opacities[vis.to(device)].reshape(-1) > 0
    assert torch.equal(kept.cpu(), mask)
    for name, got, want in [("means", out.means, means), ("colors", out.colors, colors), ("scales", out.scales, scales),
                            ("quats", out.quats, rot)]:
        torch.testing.assert_close(got[vis.to(device)].reshape(-1, want.shape[1])[kept].cpu(), want, msg=name)
    torch.testing.assert_close(out.opacities[vis.to(device)].reshape(-1)[kept].cpu(), opacity[:, 0])


def test_module_layout_and_errors():
    dec = pyops.AnchorDecoder(8, 5, 16, 4, add_opacity_dist=True, add_color_dist=True)
    shapes = {n: tuple(p.shape) for n, p in dec.state_dict().items()}
    assert shapes == {"mlp_opacity.0.weight": (16, 12), "mlp_opacity.0.bias": (16,), "mlp_opacity.2.weight": (5, 16),
                      "mlp_opacity.2.bias": (5,), "mlp_cov.0.weight": (16, 11), "mlp_cov.0.bias": (16,),
                      "mlp_cov.2.weight": (35, 16), "mlp_cov.2.bias": (35,), "mlp_color.0.weight": (16, 16),
                      "mlp_color.0.bias": (16,), "mlp_color.2.weight": (15, 16), "mlp_color.2.bias": (15,)}
    assert isinstance(dec.mlp_opacity[3], nn.Tanh) and isinstance(dec.mlp_color[3], nn.Sigmoid)
    with pytest.raises(ValueError, match="AnchorDecoder: n_offsets=0 is out of range"):
        pyops.AnchorDecoder(8, 0)
    with pytest.raises(TypeError, match="AnchorDecoder: feat_dim must be an int"):
        pyops.AnchorDecoder(8.0)


@pytest.mark.parametrize("device,backend", DECODE)
def test_decoded_gaussians_render(device, backend):
    """The dense outputs flattened to M*K Gaussians render through pyops.rasterize_gaussians like the reference's,
    and the image's gradient reaches the anchors' features through the decode."""
    from gaussian_scenes import tiny_scene

    case = make_case(9, 6, 3, 8, visible="random", blend="forward", seed=11)
    case["anchors"] = 0.3 * case["anchors"]
    case["anchor_scales"] = 0.1 * case["anchor_scales"]
    case["offsets"] = 0.5 * case["offsets"]
    case["b2_opacity"] = case["b2_opacity"] + 0.5
    scene, _ = tiny_scene()
    viewmats, Ks = scene["viewmats"][:1], scene["Ks"][:1]
    case["cam_center"] = torch.linalg.inv(viewmats[0])[:3, 3]
    images = []
    for b in (backend, "torch"):
        c = cast(case, torch.float32, device)
        c["feats"] = c["feats"].requires_grad_()
        out = call(c, b)
        g = [t.reshape(-1, *t.shape[2:]) for t in out]
        image, alpha, _ = pyops.rasterize_gaussians(g[0], g[1], g[2], g[3], g[4], viewmats.to(device).float(),
                                                    Ks.to(device).float(), 12, 10)
        (grad,) = torch.autograd.grad(image.sum(), c["feats"])
        images.append((image, grad))
        assert alpha.max() > 0.05 and torch.isfinite(image).all()
        assert grad[case["visible"]].abs().sum() > 0 and (grad[~case["visible"]] == 0).all()
    torch.testing.assert_close(images[0][0], images[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(images[0][1], images[1][1], atol=1e-4, rtol=1e-4)


_COMPILE_SM90 = r'''
import inspect, os, subprocess, sys, tempfile
from pathlib import Path
import triton
import triton.backends.nvidia as nvidia
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyops.triton_kernels import anchors as ta

ptxas = Path(nvidia.__file__).parent / "bin" / "ptxas"
failed = False
# Scaffold-GS's sizes: C = H = 32 (IN_PAD 48), K = 10; every option on.
ce = dict(HAS_OS=True, HAS_VIS=True, HAS_BLEND=True, HAS_TAU_T=True, MODE=0, DT=tl.float32, BLOCK_M=16, IN_PAD=48,
          H_PAD=32, K_PAD=16)
for name, kernel, extra, warps in (("fwd", ta._anchor_decode_fwd_kernel, {}, 4),
                                   ("bwd", ta._anchor_decode_bwd_kernel, {"ZW": 16}, 8)):
    consts = dict(ce, **extra)
    sig = {a: "constexpr" if a in consts else "*u8" if a == "vis_ptr" else "*fp32" if a.endswith("_ptr")
           else "fp32" if a.startswith(("tau_", "lam_")) else "i32" for a in inspect.signature(kernel.fn).parameters}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    if not ptxas.exists():
        print(name, "compiled (no ptxas for a register report)")
        continue
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        res = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
    info = res.stdout + res.stderr
    spills = max([int(s.split()[0]) for s in info.split(",") if "bytes spill stores" in s] or [-1])
    print(name, info)
    failed |= res.returncode != 0 or spills != 0
sys.exit(1 if failed else 0)
'''


@pytest.mark.subprocess
@pytest.mark.parametrize("device,backend", [(d, b) for d, b in DECODE if b == "triton"])
def test_triton_decode_compiles_for_sm90_without_spills(device, backend):
    """The decode kernels compile for a real GPU (sm_90) without one, in a process without the interpreter, and
    ptxas reports no register spills at Scaffold-GS's sizes."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True, timeout=600)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------------------
# The native ops' C++ autograd kernels (csrc/anchors_autograd.cpp) and the eager fast path.


def _native_decode(case):
    """fn(*leaves) calling torch.ops.pyops.anchor_decode_fwd itself (no Python wrapper) and its leaves."""
    names = [n for n in DIFF if torch.is_tensor(case[n])]

    def fn(*leaves):
        return _op("cpu", "anchor_decode_fwd")(*_decode_args(dict(case, **dict(zip(names, leaves)))))

    return fn, [case[n].detach().clone().requires_grad_() for n in names]


def test_cpp_autograd_decode_node_and_gradcheck():
    case = make_case(*CASES["all_options_k1"], seed=5)
    fn, leaves = _native_decode(case)
    out = fn(*leaves)
    for t in out[:5]:
        assert type(t.grad_fn).__name__ != "BackwardCFunction"  # not a Python autograd.Function
        assert t.grad_fn.name() == "AnchorDecodeBackward0"
    assert not out[5].requires_grad and out[5].grad_fn is None  # neural_opacity: no gradient
    keep = ((out[5] > 0) & case["visible"][:, None]).double()  # see _keep_masked
    assert torch.autograd.gradcheck(
        lambda *a: tuple(t * (keep[..., None] if t.dim() == 3 else keep) for t in fn(*a)[:5]), leaves)
    # The module's forward (weights read from its submodules' dicts) gets the same node.
    dec = pyops.AnchorDecoder(4, 2, 3, backend="cpu")
    base = cast(make_case(5, 4, 2, 3), torch.float32, "cpu")
    got = dec(base["anchors"], base["feats"], base["offsets"], base["anchor_scales"], base["cam_center"])
    assert got.means.grad_fn.name() == "AnchorDecodeBackward0"
    torch.testing.assert_close(got, pyops.anchor_decode(base["anchors"], base["feats"], base["offsets"],
                                                        base["anchor_scales"], base["cam_center"], dec.mlp(),
                                                        backend="torch"))


def test_cpp_autograd_decode_unused_outputs_and_tau():
    """Outputs the loss does not use count as zero gradients; tau's gradient is -sum(v_blend_offset), formed
    only when tau needs one; cam_center and visible get none."""
    case = make_case(*CASES["backward_mode"], seed=2)  # blend "backward", tau a tensor
    names = [n for n in DIFF if torch.is_tensor(case[n])]
    fn, leaves = _native_decode(case)
    exact_fn, exact_leaves = _native_decode(case)
    out = fn(*leaves)
    grads = torch.autograd.grad(out[1].sum(), leaves)  # quats only
    # The same through the reference.
    ref_case = dict(case, **dict(zip(names, exact_leaves)))
    exact = torch.autograd.grad(call(ref_case, "torch").quats.sum(), exact_leaves, allow_unused=True)
    for name, g, e in zip(names, grads, exact):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e, msg=name)
    assert grads[names.index("tau")] is not None
    # tau alone needs a gradient: the op's other inputs are constants.
    tau = case["tau"].clone().requires_grad_()
    out = _op("cpu", "anchor_decode_fwd")(*_decode_args(dict(case, tau=tau)))
    (v_tau,) = torch.autograd.grad(out[3].sum(), [tau])
    e_tau = tau.detach().clone().requires_grad_()
    (exact_tau,) = torch.autograd.grad(call(dict(case, tau=e_tau), "torch").opacities.sum(), [e_tau])
    torch.testing.assert_close(v_tau, exact_tau)
    # cam_center requiring grad gets a node but no gradient (as before: it is a constant of the op).
    cam = case["cam_center"].clone().requires_grad_()
    out = _op("cpu", "anchor_decode_fwd")(*_decode_args(dict(case, cam_center=cam)))
    assert torch.autograd.grad(out[0].sum(), [cam], allow_unused=True) == (None,)


def test_cpp_autograd_no_node_without_grad():
    case = cast(make_case(*CASES["all_options_k1"]), torch.float32, "cpu")
    names = [n for n in DIFF if torch.is_tensor(case[n])]
    leaves = dict(case, **{n: case[n].clone().requires_grad_() for n in names})
    with torch.no_grad():
        out = call(leaves, "cpu")
    assert all(t.grad_fn is None and not t.requires_grad for t in out)
    torch.testing.assert_close(call(case, "cpu"), out)  # nothing requires grad: no node either
    assert all(t.grad_fn is None for t in call(case, "cpu"))
    offset, decay = torch.rand(5).requires_grad_(), torch.randn(5).requires_grad_()
    with torch.no_grad():
        w = pyops.anchor_blend_weight(offset, decay, 0.3, backend="cpu")
    assert w.grad_fn is None and not w.requires_grad


def test_cpp_autograd_blend_node_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    offset = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_()
    decay = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_()
    tau = torch.tensor(0.55, dtype=torch.float64, requires_grad=True)
    op = _op("cpu", "anchor_blend_weight_fwd")
    w = op(offset, decay, tau, 0.0, 1.2, 0)
    assert type(w.grad_fn).__name__ != "BackwardCFunction" and w.grad_fn.name() == "AnchorBlendWeightBackward0"
    for mode in range(3):
        assert torch.autograd.gradcheck(lambda o, d, t: op(o, d, t, 0.0, 1.2, mode), (offset, decay, tau))
        assert torch.autograd.gradcheck(lambda o, d: op(o, d, None, 0.55, 1.2, mode), (offset, decay))
    # tau's gradient in its own dtype, summed in fp32 for an fp16 offset.
    o16, d16 = offset.detach().half().requires_grad_(), decay.detach().half()
    t32 = tau.detach().float().requires_grad_()
    v = torch.autograd.grad(op(o16, d16, t32, 0.0, 1.2, 0).sum(), [o16, t32])
    assert v[1].dtype == torch.float32
    torch.testing.assert_close(v[1], -v[0].float().sum())


@pytest.mark.parametrize("which", ["decode", "blend"])
def test_double_backward_raises_a_clear_error(which):
    if which == "decode":
        case = make_case(*CASES["all_options_k1"], seed=5)
        fn, leaves = _native_decode(case)
        out = fn(*leaves)[0]
        exact = [(t, e) for t, e in zip(leaves, torch.autograd.grad(
            call(dict(case, **dict(zip([n for n in DIFF if torch.is_tensor(case[n])], leaves))), "torch").means.sum(),
            leaves, allow_unused=True))]
        msg = "anchor_decode: double backward is not supported"
    else:
        leaves = [torch.rand(6, dtype=torch.float64).requires_grad_(), torch.randn(6, dtype=torch.float64)
                  .requires_grad_(), torch.tensor(0.4, dtype=torch.float64, requires_grad=True)]
        out = pyops.anchor_blend_weight(*leaves, backend="cpu")
        exact = list(zip(leaves, torch.autograd.grad(pyops.anchor_blend_weight(*leaves, backend="torch").sum(),
                                                     leaves)))
        msg = "anchor_blend_weight: double backward is not supported"
    grads = torch.autograd.grad(out.sum(), leaves, create_graph=True)  # first order works with create_graph
    for g, (_, e) in zip(grads, exact):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match=msg):
        torch.autograd.grad(grads[0].sum(), leaves, allow_unused=True)


def test_fast_path_rejects_what_the_checks_reject():
    """The eager fast path (no Python checks on success) raises pyops' own errors for values only the C++
    host code sees (non-finite tensors, an empty appearance), and routes bools and other mlp kinds through
    the checks."""
    _, base = _error_cases()
    for change, exc, msg in [
        (dict(w2_cov=base["w2_cov"].clone().index_fill_(0, torch.tensor([1]), math.inf)), ValueError,
         "w2_cov has non-finite values"),
        (dict(tau=torch.tensor(math.nan)), ValueError, "tau has non-finite values"),
        (dict(tau=math.inf), ValueError, "tau=inf is not finite"),
        (dict(lambda_decay=math.nan), ValueError, "lambda_decay=nan is not finite"),
        (dict(tau=True), TypeError, "tau must be a float or a 0-dim tensor, got bool"),
        (dict(lambda_decay=False), TypeError, "lambda_decay must be a float, got bool"),
        (dict(opacity_dist=1), TypeError, "opacity_dist must be a bool, got int"),
        (dict(blend_mode="both"), ValueError, "unknown blend_mode 'both'"),
    ]:
        for _ in range(2):  # the second call takes the cached backend choice
            with pytest.raises(exc, match="^anchor_decode: .*" + msg):
                call(dict(base, **change), "cpu")
    with pytest.raises(TypeError, match="mlp must be an AnchorMLP or a sequence of 12 tensors"):
        pyops.anchor_decode(base["anchors"], base["feats"], base["offsets"], base["anchor_scales"],
                            base["cam_center"], iter([base[n] for n in MLP_NAMES]), backend="cpu")
    offset, decay = torch.rand(4), torch.randn(4)
    with pytest.raises(ValueError, match="^anchor_blend_weight: decay has non-finite values$"):
        pyops.anchor_blend_weight(offset, torch.full((4,), math.nan), 0.3, backend="cpu")
    with pytest.raises(TypeError, match="^anchor_blend_weight: tau must be a float or a 0-dim tensor, got bool"):
        pyops.anchor_blend_weight(offset, decay, True, backend="cpu")
