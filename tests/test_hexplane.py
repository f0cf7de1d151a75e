"""HexPlane features: every backend against the float64 reference, forward and the gradients of points, times
and every plane; the reference against 4DGS's grid_sample composition; HexPlaneField against 4DGS's layout."""

import pytest
import torch
import torch.nn.functional as nnf
from utils import assert_close, backend_params

import pyops
from pyops import hexplane as hexplane_mod
from pyops.reference import hexplane as reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OP = "hexplane_fwd"

# (N, per level (F, (Rx, Ry, Rz, Rt)), 4-dim planes, per-point times): odd N over several Triton tiles, F = 1
# and 5 (no multiple of 8), F = 20 (two channel chunks), R = 1 or 2 on some axes, 3- and 4-dim planes, shared
# float time and per-point times.
CASES = [
    (37, [(5, (4, 3, 5, 2))], False, True),
    (67, [(1, (2, 1, 3, 4)), (5, (3, 2, 1, 2))], True, False),
    (41, [(5, (3, 4, 2, 3)), (20, (2, 3, 3, 1))], True, True),
]


def make_inputs(n, levels, four_dim, per_point, dtype, device, seed=0):
    """Points spread over 1.2x the box (some outside it), times over [-1.2, 1.2], planes around 1 (so the
    six-fold products stay O(1)) and a box in 4DGS's [max, min] order."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    aabb = torch.tensor([[1.5, 0.5, 2.0], [-0.5, -1.0, 0.25]], dtype=torch.float64)
    center, half = aabb.mean(0), (aabb[0] - aabb[1]).abs() / 2
    points = center + (rnd(n, 3) * 2 - 1) * 1.2 * half
    times = (rnd(n) * 2 - 1) * 1.2 if per_point else 0.3
    planes = []
    for f, res in levels:
        for a, b in reference.PLANE_AXES:
            shape = (1, f, res[b], res[a]) if four_dim else (f, res[b], res[a])
            planes.append(0.6 + 0.8 * rnd(*shape))
    total = sum(f for f, _ in levels)
    v_out = torch.randn(n, total, generator=g, dtype=torch.float64)
    to = lambda t: t.to(device=device, dtype=dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
    points, times, aabb = to(points), to(times), to(aabb)
    # Off the box faces and time ends: the clamp's gradient there is torch-version dependent (subgradient 1
    # before torch 2.13, 0 since; the kernels and grid_sample give 1), and bf16 inputs hit them often.
    on_face = (points == aabb[0]) | (points == aabb[1])
    points = torch.where(on_face, to(center).expand_as(points), points)
    if per_point:
        times = torch.where(times.abs() == 1, torch.zeros_like(times), times)
    return points, times, [to(p) for p in planes], aabb, to(v_out)


def run(points, times, planes, aabb, v_out, backend):
    """Features and the gradients of points, times (when a tensor) and every plane."""
    points = points.detach().requires_grad_()
    if isinstance(times, torch.Tensor):
        times = times.detach().requires_grad_()
    planes = [p.detach().requires_grad_() for p in planes]
    out = pyops.hexplane_features(points, times, planes, aabb, backend=backend)
    inputs = [points] + ([times] if isinstance(times, torch.Tensor) else []) + planes
    return out, torch.autograd.grad(out, inputs, v_out)


def double(t):
    return t.double() if isinstance(t, torch.Tensor) else t


def check_against_reference(points, times, planes, aabb, v_out, backend, dtype, device):
    out, grads = run(points, times, planes, aabb, v_out, backend)
    exact_out, exact_grads = run(double(points), double(times), [p.double() for p in planes], aabb.double(),
                                 v_out.double(), "torch")
    ref_out, ref_grads = run(points, times, planes, aabb, v_out, "torch")
    assert out.device.type == device
    assert_close("features", out, exact_out, ref_out, dtype)
    names = ["v_points"] + (["v_times"] if isinstance(times, torch.Tensor) else []) + \
        [f"v_planes[{i}]" for i in range(len(planes))]
    for name, g, e, r in zip(names, grads, exact_grads, ref_grads):
        assert_close(name, g, e, r, dtype)


@pytest.mark.parametrize("device,backend", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,levels,four_dim,per_point", CASES, ids=str)
def test_matches_reference(device, backend, dtype, n, levels, four_dim, per_point):
    args = make_inputs(n, levels, four_dim, per_point, dtype, device)
    check_against_reference(*args, backend, dtype, device)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if b == "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [True, False])
def test_triton_gather_layouts(monkeypatch, device, backend, dtype, channels_last):
    # The launcher gathers from channels-last plane copies on a GPU and from the planes in place in the
    # interpreter; both layouts run here.
    monkeypatch.setattr(pyops.triton_kernels.hexplane, "CHANNELS_LAST", channels_last)
    args = make_inputs(*CASES[2], dtype, device, seed=1)
    check_against_reference(*args, backend, dtype, device)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_non_contiguous_inputs(device, backend):
    points, times, planes, aabb, v_out = make_inputs(*CASES[2], torch.float32, device, seed=2)
    n = points.shape[0]
    wide = torch.randn(n, 7, device=device)
    wide[:, 2:5] = points
    points = wide[:, 2:5]
    times = torch.stack([times, times], 1)[:, 1]
    planes = [p.transpose(-1, -2).contiguous().transpose(-1, -2) for p in planes]  # column-major planes
    planes[4] = torch.cat([planes[4], planes[4]], dim=-3)[..., : planes[4].shape[-3], :, :]
    aabb = aabb.t().contiguous().t()
    v_out = v_out.t().contiguous().t()
    assert not (points.is_contiguous() or times.is_contiguous() or planes[0].is_contiguous() or
                aabb.is_contiguous() or v_out.is_contiguous())
    check_against_reference(points, times, planes, aabb, v_out, backend, torch.float32, device)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_time_forms_agree(device, backend):
    """A float time, a 0-dim tensor (its gradient is the sum over points), per-point equal times and 4DGS's
    (N, 1) times give the same features."""
    points, _, planes, aabb, v_out = make_inputs(*CASES[0][:3], False, torch.float32, device, seed=3)
    n = points.shape[0]
    shared = pyops.hexplane_features(points, -0.4, planes, aabb, backend=backend)
    t0 = torch.tensor(-0.4, device=device, requires_grad=True)
    scalar = pyops.hexplane_features(points, t0, planes, aabb, backend=backend)
    per_point = pyops.hexplane_features(points, torch.full((n, 1), -0.4, device=device), planes, aabb,
                                        backend=backend)
    torch.testing.assert_close(scalar, shared)
    torch.testing.assert_close(per_point, shared)
    (v_t0,) = torch.autograd.grad(scalar, t0, v_out)
    t_ref = torch.full((n,), -0.4, dtype=torch.float64, device=device, requires_grad=True)
    exact = pyops.hexplane_features(points.double(), t_ref, [p.double() for p in planes], aabb.double(),
                                    backend="torch")
    (v_t_ref,) = torch.autograd.grad(exact, t_ref, v_out.double())
    torch.testing.assert_close(v_t0.double(), v_t_ref.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", backend_params(OP))
@pytest.mark.parametrize("per_point", [True, False])
def test_empty_input(device, backend, per_point):
    points, times, planes, aabb, v_out = make_inputs(0, CASES[1][1], True, per_point, torch.float32, device)
    out, grads = run(points, times, planes, aabb, v_out, backend)
    assert out.shape == (0, 6)
    assert grads[0].shape == (0, 3)
    for g, p in zip(grads[-len(planes):], planes):
        assert g.shape == p.shape and not g.any()


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if d == "cpu"])
@pytest.mark.parametrize("per_point", [True, False])
def test_gradcheck_float64_cpu(device, backend, per_point):
    points, times, planes, aabb, _ = make_inputs(5, [(2, (3, 2, 1, 3)), (1, (2, 3, 2, 2))], per_point, per_point,
                                                 torch.float64, device, seed=4)
    inputs = [points] + ([times] if per_point else []) + planes
    inputs = [t.requires_grad_() for t in inputs]

    def fn(*args):
        return pyops.hexplane_features(args[0], args[1] if per_point else times, args[-len(planes):], aabb,
                                       backend=backend)

    # The interpreted Triton kernel is slow: fast mode checks one random projection of the Jacobian.
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=backend == "triton")


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


def _op(backend, stage):
    return getattr(torch.ops.pyops, f"hexplane_{stage}_triton" if backend == "triton" else f"hexplane_{stage}")


@pytest.mark.parametrize("device,backend", backend_params(OP))
@pytest.mark.parametrize("per_point", [True, False])
def test_opcheck(device, backend, per_point):
    # Triton's interpreter cannot run on fake tensors: on CPU the Triton pair gets the schema and autograd
    # registration checks only.
    utils = ("test_schema", "test_autograd_registration") if backend == "triton" and device == "cpu" else \
        torch.library._OPCHECK_DEFAULT_UTILS
    points, times, planes, aabb, v_out = make_inputs(9, CASES[1][1], True, per_point, torch.float32, device)
    times_t, time = (times, 0.0) if per_point else (None, times)
    grad_args = (points.requires_grad_(), times_t.requires_grad_() if per_point else None, time,
                 [p.requires_grad_() for p in planes], aabb)
    torch.library.opcheck(_op(backend, "fwd"), grad_args, test_utils=utils)
    torch.library.opcheck(_op(backend, "bwd"), (v_out, points.detach(), times_t.detach() if per_point else None,
                                                time, [p.detach() for p in planes], aabb), test_utils=utils)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP, include_torch=True)
                                            if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("per_point", [True, False])
def test_torch_compile_fullgraph(device, backend, per_point):
    points, times, planes, aabb, v_out = make_inputs(*CASES[0][:3], per_point, torch.float32, device)

    def step(points, times, *planes):
        return pyops.hexplane_features(points, times, planes, aabb, backend=backend) * 2

    leaves = lambda: [t.detach().requires_grad_() if isinstance(t, torch.Tensor) else t  # noqa: E731
                      for t in [points, times, *planes]]
    compiled = torch.compile(step, fullgraph=True)
    eager_in, comp_in = leaves(), leaves()
    y_eager, y_comp = step(*eager_in), compiled(*comp_in)
    torch.testing.assert_close(y_comp, y_eager)
    comp_in, eager_in = [t for t in comp_in if isinstance(t, torch.Tensor)], [t for t in eager_in if isinstance(
        t, torch.Tensor)]
    for a, b in zip(torch.autograd.grad(y_comp, comp_in, v_out), torch.autograd.grad(y_eager, eager_in, v_out)):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------
# Bad input and backend choice.


def _good(device="cpu"):
    return make_inputs(4, [(2, (3, 2, 2, 2)), (3, (2, 2, 3, 2))], True, True, torch.float32, device)


@pytest.mark.parametrize("backend", [b for d, b in backend_params(OP, include_torch=True) if d == "cpu"])
def test_bad_input_names_the_argument(backend):
    points, times, planes, aabb, _ = _good()

    def call(points=points, times=times, planes=planes, aabb=aabb):
        return pyops.hexplane_features(points, times, planes, aabb, backend=backend)

    def swap(i, p):
        return planes[:i] + [p] + planes[i + 1:]

    with pytest.raises(ValueError, match="planes must hold 6 tensors per level .* got 11"):
        call(planes=planes[:11])
    with pytest.raises(TypeError, match="planes must be a sequence of tensors"):
        call(planes=planes[0])
    with pytest.raises(ValueError, match=r"planes\[7\] \(level 1, xz\) must have shape \(3, 3, 2\)"):
        call(planes=swap(7, torch.ones(1, 3, 3, 3)))  # Rx differs from the level's xy plane
    with pytest.raises(ValueError, match=r"planes\[4\] \(level 0, yt\) must have shape \(2, 2, 2\)"):
        call(planes=swap(4, torch.ones(3, 2, 2)))  # F differs within the level
    with pytest.raises(ValueError, match=r"planes\[0\] \(level 0, xy\) must have shape \(F, R_b, R_a\) or "):
        call(planes=swap(0, torch.ones(2, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"planes\[2\] \(level 0, xt\) must have at least one channel"):
        call(planes=swap(2, torch.ones(2, 0, 3)))
    with pytest.raises(TypeError, match=r"planes\[8\] \(level 1, xt\) has dtype torch.float64 but points"):
        call(planes=swap(8, planes[8].double()))
    with pytest.raises(TypeError, match=r"planes\[9\] \(level 1, yz\) must be a Tensor, got list"):
        call(planes=swap(9, [1.0]))
    with pytest.raises(ValueError, match=r"^hexplane_features: planes\[5\] \(level 0, zt\) is on meta but points "
                                         r"is on cpu$"):
        call(planes=swap(5, planes[5].to("meta")))
    with pytest.raises(ValueError, match=r"points must have shape \(\*, 3\), got \(4, 2\)"):
        call(points=points[:, :2])
    with pytest.raises(TypeError, match="points must be a floating-point tensor"):
        call(points=points.long())
    with pytest.raises(ValueError, match=r"times must have shape \(4,\) or \(4, 1\)"):
        call(times=times[:3])
    with pytest.raises(TypeError, match="times must be a Tensor or a float, got str"):
        call(times="0")
    with pytest.raises(TypeError, match="times has dtype torch.float64 but points has torch.float32"):
        call(times=times.double())
    with pytest.raises(ValueError, match=r"aabb must have shape \(2, 3\)"):
        call(aabb=aabb[:, :2])
    with pytest.raises(ValueError, match="aabb is on meta but points is on cpu"):
        call(aabb=aabb.to("meta"))
    with pytest.raises(ValueError, match="aabb has a zero extent"):
        call(aabb=torch.tensor([[1.0, 1, 1], [0.0, 1, 0]]))
    nan = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match="aabb has non-finite values"):
        call(aabb=aabb.clone().index_fill_(1, torch.tensor([0]), nan))
    with pytest.raises(ValueError, match="points has non-finite values"):
        call(points=points.clone().index_fill_(0, torch.tensor([1]), nan))
    with pytest.raises(ValueError, match="times has non-finite values"):
        call(times=times.clone().index_fill_(0, torch.tensor([1]), float("inf")))
    with pytest.raises(ValueError, match="times has non-finite values"):
        call(times=float("nan"))
    with pytest.raises(ValueError, match=r"planes\[10\] has non-finite values"):
        call(planes=swap(10, planes[10].clone().index_fill_(0, torch.tensor([0]), nan)))


def test_backend_choice(monkeypatch):
    points, times, planes, aabb, _ = _good()
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        pyops.hexplane_features(points, times, planes, aabb, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        pyops.hexplane_features(points, times, planes, aabb, backend="nope")
    monkeypatch.setenv("PYOPS_BACKEND", "torch")
    torch.testing.assert_close(pyops.hexplane_features(points, times, planes, aabb),
                               reference.hexplane_features(points, times, planes, aabb))


# ----------------------------------------------------------------------------------------------------------
# The reference against 4DGS's grid_sample composition, and HexPlaneField.


def fourdgs_features(points, times, planes, aabb):
    """4DGS's composition (scene/hexplane.py): normalize_aabb, then per plane F.grid_sample(bilinear,
    align_corners=True, padding_mode="border") at the (a, b) coordinates, product per level, levels
    concatenated."""
    q = torch.cat([(points - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1.0, times.reshape(-1, 1)], dim=1)
    levels = []
    for level in range(len(planes) // 6):
        product = 1.0
        for i, (a, b) in enumerate(reference.PLANE_AXES):
            plane = planes[6 * level + i]
            plane = plane if plane.dim() == 4 else plane[None]
            grid = q[:, [a, b]].reshape(1, 1, -1, 2)
            sample = nnf.grid_sample(plane, grid, mode="bilinear", padding_mode="border", align_corners=True)
            product = product * sample[0, :, 0, :].t()
        levels.append(product)
    return torch.cat(levels, dim=1)


@pytest.mark.parametrize("n,levels,four_dim,_per_point", CASES, ids=str)
def test_reference_matches_4dgs_grid_sample(n, levels, four_dim, _per_point):
    points, times, planes, aabb, v_out = make_inputs(n, levels, four_dim, True, torch.float64, "cpu", seed=5)
    # Values agree everywhere, including outside the box (the border clamp).
    torch.testing.assert_close(reference.hexplane_features(points, times, planes, aabb),
                               fourdgs_features(points, times, planes, aabb))
    # Gradients agree away from the far border (where grid_sample takes the missing corner as 0).
    points = aabb[1] + (aabb[0] - aabb[1]) * (0.05 + 0.9 * torch.rand(n, 3, dtype=torch.float64))
    times = torch.rand(n, dtype=torch.float64) * 1.8 - 0.9
    leaves = [t.clone().requires_grad_() for t in [points, times, *planes]]
    ours = torch.autograd.grad(reference.hexplane_features(leaves[0], leaves[1], leaves[2:], aabb), leaves, v_out)
    theirs = torch.autograd.grad(fourdgs_features(leaves[0], leaves[1], leaves[2:], aabb), leaves, v_out)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def fourdgs_state_dict(bounds, out_dim, resolution, multires, seed=6):
    """A state dict with 4DGS's HexPlaneField names and shapes: aabb [max, min] and grids.<level>.<plane>
    (1, F, R_b, R_a), spatial resolutions times each multires factor."""
    g = torch.Generator().manual_seed(seed)
    state = {"aabb": torch.tensor([[bounds] * 3, [-bounds] * 3])}
    for level, factor in enumerate(multires):
        res = [r * factor for r in resolution[:3]] + resolution[3:]
        for i, (a, b) in enumerate(reference.PLANE_AXES):
            state[f"grids.{level}.{i}"] = 0.5 + torch.rand(1, out_dim, res[b], res[a], generator=g)
    return state


@pytest.mark.parametrize("device,backend", backend_params(OP, include_torch=True))
def test_hexplane_field_loads_4dgs_state_dict(device, backend):
    config = {"grid_dimensions": 2, "input_coordinate_dim": 4, "output_coordinate_dim": 3,
              "resolution": [4, 3, 5, 2]}
    field = pyops.HexPlaneField(1.6, config, [1, 2], backend=backend)
    assert field.feat_dim == 6 and len(field.grids) == 2 and all(len(level) == 6 for level in field.grids)
    assert field.grids[1][2].shape == (1, 3, 2, 8) and field.grids[1][0].shape == (1, 3, 6, 8)
    assert not field.aabb.requires_grad and torch.equal(field.aabb, torch.tensor([[1.6] * 3, [-1.6] * 3]))
    for level in field.grids:  # 4DGS's init: ones on the time planes, uniform(0.1, 0.5) elsewhere
        for i, plane in enumerate(level):
            if i in (2, 4, 5):
                assert torch.equal(plane, torch.ones_like(plane))
            else:
                assert plane.min() >= 0.1 and plane.max() <= 0.5
    state = fourdgs_state_dict(1.6, 3, [4, 3, 5, 2], [1, 2])
    field.load_state_dict(state)  # strict: the same names and shapes
    field.set_aabb([1.2, 1.4, 0.9], [-1.0, -0.8, -1.1])
    assert set(field.state_dict()) == set(state)
    field = field.to(device)
    g = torch.Generator().manual_seed(7)
    points = (torch.rand(23, 3, generator=g) * 2.6 - 1.3).to(device)
    times = (torch.rand(23, 1, generator=g) * 2 - 1).to(device)  # 4DGS's (N, 1) timestamps
    planes = [p for level in field.grids for p in level]
    torch.testing.assert_close(field(points, times), fourdgs_features(points, times, planes, field.aabb),
                               rtol=1e-5, atol=1e-5)
    one_level = pyops.hexplane_features(points, times, field.grids[1], field.aabb, backend=backend)  # ParameterList
    torch.testing.assert_close(one_level, fourdgs_features(points, times, planes[6:], field.aabb), rtol=1e-5,
                               atol=1e-5)
    # Gradients reach every plane, not the box.
    field(points, times).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in planes) and field.aabb.grad is None


def test_hexplane_field_rejects_other_configs():
    with pytest.raises(ValueError, match="only grid_dimensions=2 and input_coordinate_dim=4"):
        pyops.HexPlaneField(1.0, {"grid_dimensions": 3, "output_coordinate_dim": 4, "resolution": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="resolution must be 4 positive ints"):
        pyops.HexPlaneField(1.0, {"output_coordinate_dim": 4, "resolution": [2, 2, 2]})
    with pytest.raises(ValueError, match="output_coordinate_dim must be a positive int"):
        pyops.HexPlaneField(1.0, {"output_coordinate_dim": 0, "resolution": [2, 2, 2, 2]})
    assert hexplane_mod.HexPlaneField().feat_dim == 64  # 4DGS's defaults: 32 channels, multires [1, 2]


# ----------------------------------------------------------------------------------------------------------
# The native ops' C++ autograd kernels (csrc/hexplane_autograd.cpp) and the eager fast path.


@pytest.mark.parametrize("per_point", [True, False])
def test_cpp_autograd_node_and_gradcheck(per_point):
    points, times, planes, aabb, _ = make_inputs(5, [(2, (3, 2, 1, 3)), (1, (2, 3, 2, 2))], True, per_point,
                                                 torch.float64, "cpu", seed=6)
    op = torch.ops.pyops.hexplane_fwd.default
    inputs = [t.requires_grad_() for t in [points] + ([times] if per_point else []) + planes]

    def fn(*args):  # the native op itself, no Python wrapper
        return op(args[0], args[1] if per_point else None, 0.0 if per_point else times, list(args[-len(planes):]),
                  aabb)

    out = fn(*inputs)
    assert type(out.grad_fn).__name__ != "BackwardCFunction" and out.grad_fn.name() == "HexplaneBackward0"
    assert torch.autograd.gradcheck(fn, inputs)
    # aabb requiring grad gets no gradient (as before: the box is a constant of the op).
    box = aabb.clone().requires_grad_()
    assert torch.autograd.grad(op(points, None, 0.3, planes, box).sum(), [box], allow_unused=True) == (None,)


def test_cpp_autograd_no_node_without_grad_and_module():
    points, times, planes, aabb, _ = _good()
    planes = [p.requires_grad_() for p in planes]
    with torch.no_grad():
        out = pyops.hexplane_features(points, times, planes, aabb, backend="cpu")
    assert out.grad_fn is None and not out.requires_grad
    with_grad = pyops.hexplane_features(points, times, planes, aabb, backend="cpu")
    assert with_grad.grad_fn.name() == "HexplaneBackward0"
    torch.testing.assert_close(with_grad, out)
    detached = pyops.hexplane_features(points, times, [p.detach() for p in planes], aabb, backend="cpu")
    assert detached.grad_fn is None
    # The module's forward (planes read from the ParameterLists' dicts) gets the node too.
    field = pyops.HexPlaneField(1.6, {"output_coordinate_dim": 3, "resolution": [4, 3, 5, 2]}, [1, 2], backend="cpu")
    feats = field(points, 0.25)
    assert feats.grad_fn.name() == "HexplaneBackward0"
    all_planes = [p for level in field.grids for p in level]
    torch.testing.assert_close(feats, pyops.hexplane_features(points, 0.25, all_planes, field.aabb, backend="torch"))
    grads = torch.autograd.grad(feats.sum(), all_planes)
    assert all(g.shape == p.shape for g, p in zip(grads, all_planes))


def test_double_backward_raises_a_clear_error():
    points, times, planes, aabb, v_out = make_inputs(5, [(2, (3, 2, 1, 3))], False, True, torch.float64, "cpu",
                                                     seed=2)
    inputs = [t.requires_grad_() for t in [points, times] + planes]
    out = pyops.hexplane_features(points, times, planes, aabb, backend="cpu")
    grads = torch.autograd.grad(out, inputs, v_out, create_graph=True)  # first order works with create_graph
    exact = torch.autograd.grad(pyops.hexplane_features(points, times, planes, aabb, backend="torch"), inputs, v_out)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match="hexplane_features: double backward is not supported"):
        torch.autograd.grad(grads[0].sum(), inputs, allow_unused=True)


def test_fast_path_rejects_what_the_checks_reject():
    """The eager fast path (no Python checks on success) still raises pyops' own errors, on the first call and
    with the backend choice cached, and leaves bools and odd plane containers to the checks."""
    points, times, planes, aabb, _ = _good()
    bad = planes[3].clone()
    bad[0, 0, 0] = float("inf")
    for _ in range(2):
        with pytest.raises(ValueError, match=r"^hexplane_features: planes\[3\] has non-finite values"):
            pyops.hexplane_features(points, times, planes[:3] + [bad] + planes[4:], aabb, backend="cpu")
        with pytest.raises(ValueError, match="^hexplane_features: times has non-finite values"):
            pyops.hexplane_features(points, float("nan"), planes, aabb, backend="cpu")
        with pytest.raises(TypeError, match="^hexplane_features: times must be a Tensor or a float, got bool"):
            pyops.hexplane_features(points, True, planes, aabb, backend="cpu")
        with pytest.raises(ValueError, match=r"^hexplane_features: planes\[5\] \(level 0, zt\) is on meta"):
            pyops.hexplane_features(points, 0.5, planes[:5] + [planes[5].to("meta")] + planes[6:], aabb,
                                    backend="cpu")
    # A 0-dim time, (N, 1) times and a generator of planes take the checked path, with the same result.
    want = pyops.hexplane_features(points, torch.full((4,), 0.5), planes, aabb, backend="cpu")
    for t, ps in ((torch.tensor(0.5), planes), (torch.full((4, 1), 0.5), tuple(planes)), (0.5, iter(planes))):
        if isinstance(ps, type(iter([]))):
            with pytest.raises(TypeError, match="planes must be a sequence of tensors"):
                pyops.hexplane_features(points, t, ps, aabb, backend="cpu")
            continue
        torch.testing.assert_close(pyops.hexplane_features(points, t, ps, aabb, backend="cpu"), want)
