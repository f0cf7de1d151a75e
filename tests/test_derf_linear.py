"""derf_linear / DerfLinear / fuse_derf_linear: every backend against the float64 reference, all seven gradients,
what the backward keeps (x and the parameters, never derf(x)), and the converter on pyops and timm blocks."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from utils import assert_close, backend_params

import pyops
from pyops.models import GPTBlock, ViTBlock
from pyops.reference.derf_linear import derf_linear as reference_derf_linear

OP = "derf_linear_fwd"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (x shape, out_features): C and O not multiples of 8, one row, C = 1, 3-D x, a few hundred rows.
SHAPES = [((7, 33), 19), ((2, 3, 65), 40), ((1, 17), 5), ((5, 1), 3), ((300, 48), 70)]
# (per-channel alpha/shift, Derf affine, linear bias)
PARAMS = [(False, True, True), (True, True, False), (False, False, True), (True, False, False)]
NAMES = ["x", "alpha", "shift", "weight", "bias", "linear_weight", "linear_bias"]


def make_inputs(shape, out_features, per_channel, affine, linear_bias, dtype, device, param_dtype=torch.float32,
                seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[-1]
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    n = c if per_channel else 1
    x = 1.5 * rnd(*shape)
    derf_params = [0.5 + torch.rand(n, generator=g, dtype=torch.float64), 0.3 * rnd(n),
                   1 + 0.5 * rnd(c) if affine else None, 0.5 * rnd(c) if affine else None]
    lin = [rnd(out_features, c) / math.sqrt(c), 0.5 * rnd(out_features) if linear_bias else None]
    dy = rnd(*shape[:-1], out_features)
    to = lambda t, dt: None if t is None else t.to(device=device, dtype=dt)
    return to(x, dtype), [to(p, param_dtype) for p in derf_params] + [to(p, dtype) for p in lin], to(dy, dtype)


def run(x, params, dy, backend):
    """Forward and the gradients of every input that is not None, in NAMES order."""
    x = x.detach().requires_grad_()
    params = [None if p is None else p.detach().requires_grad_() for p in params]
    y = pyops.derf_linear(x, *params, backend=backend)
    inputs = [x] + [p for p in params if p is not None]
    return y, torch.autograd.grad(y, inputs, dy)


def check_against_reference(x, params, dy, device, backend, dtype):
    y, grads = run(x, params, dy, backend)
    exact_y, exact_grads = run(x.double(), [p if p is None else p.double() for p in params], dy.double(), "torch")
    ref_y, ref_grads = run(x, params, dy, "torch")
    assert y.device.type == device
    assert_close("y", y, exact_y, ref_y, dtype)
    names = ["v_x"] + [f"v_{n}" for n, p in zip(NAMES[1:], params) if p is not None]
    assert len(grads) == len(names)
    for name, g, e, r in zip(names, grads, exact_grads, ref_grads):
        assert_close(name, g, e, r, dtype)


@pytest.mark.parametrize("device,backend", backend_params(OP, include_torch=True))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,out_features", SHAPES, ids=str)
@pytest.mark.parametrize("per_channel,affine,linear_bias", PARAMS, ids=str)
def test_matches_reference(device, backend, dtype, shape, out_features, per_channel, affine, linear_bias):
    x, params, dy = make_inputs(shape, out_features, per_channel, affine, linear_bias, dtype, device)
    check_against_reference(x, params, dy, device, backend, dtype)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_float64_and_mixed_parameter_dtypes(device, backend):
    # bf16 activations and Linear with fp32 Derf parameters: each gradient in its parameter's dtype.
    x, params, dy = make_inputs((6, 40), 24, True, True, True, torch.bfloat16, device, torch.float32)
    y, grads = run(x, params, dy, backend)
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.bfloat16] + [torch.float32] * 4 + [torch.bfloat16] * 2
    check_against_reference(x, params, dy, device, backend, torch.bfloat16)
    if backend == "cpu":
        x, params, dy = make_inputs((9, 13), 11, True, True, True, torch.float64, device, torch.float64)
        check_against_reference(x, params, dy, device, backend, torch.float64)
    else:
        with pytest.raises(TypeError, match="derf_linear: x must be float32, float16 or bfloat16"):
            pyops.derf_linear(x.double(), *params[:4], params[4].double(), params[5].double(), backend=backend)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_non_contiguous_inputs(device, backend):
    x, params, dy = make_inputs((6, 10, 34), 21, True, True, True, torch.float32, device)
    derf_p = [p[1:-1] for p in params[:4]]
    lin = [params[4].t().contiguous()[1:-1].t(), params[5]]  # a strided (O, C) view
    assert not lin[0].is_contiguous()
    check_against_reference(x[:, ::2, 1:-1], derf_p + lin, dy[:, ::2], device, backend, torch.float32)
    check_against_reference(x.transpose(0, 1), params, dy.transpose(0, 1), device, backend, torch.float32)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_empty_input(device, backend):
    x, params, dy = make_inputs((0, 8), 5, True, True, True, torch.float32, device)
    y, grads = run(x, params, dy, backend)
    assert y.shape == (0, 5)
    for g, p in zip(grads[1:], params):
        assert g.shape == p.shape and not g.any()


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_gradients_are_deterministic(device, backend):
    x, params, dy = make_inputs((70, 36), 20, False, True, True, torch.float32, device, seed=3)
    first = run(x, params, dy, backend)[1]
    second = run(x, params, dy, backend)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_thread_counts(threads):
    # 2100 rows of C = 520: several (ragged) chunks of the Derf backward's fixed partial sums, run in parallel with
    # 2 threads and in order with 1. The Derf parameter gradients and v_x are bitwise the same for any thread count.
    x, params, dy = make_inputs((2100, 520), 12, True, True, True, torch.float32, "cpu", seed=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check_against_reference(x, params, dy, "cpu", "cpu", torch.float32)
        grads = run(x, params, dy, "cpu")[1]
        torch.set_num_threads(1)
        serial = run(x, params, dy, "cpu")[1]
    finally:
        torch.set_num_threads(before)
    for a, b in zip(grads[:5], serial[:5]):
        assert torch.equal(a, b)


def test_no_grad_call_with_parameters_that_require_grad():
    # Inference: the ops run below autograd even though the parameters require grad (and on worker threads).
    x, params, _ = make_inputs((2100, 520), 12, True, True, True, torch.float32, "cpu", seed=4)
    params = [p.requires_grad_() for p in params]
    with torch.no_grad():
        y = pyops.derf_linear(x, *params, backend="cpu")
    torch.testing.assert_close(y, reference_derf_linear(x, *params).detach())


@pytest.mark.parametrize("per_channel,affine,linear_bias", PARAMS, ids=str)
def test_gradcheck_float64_cpu(per_channel, affine, linear_bias):
    x, params, _ = make_inputs((2, 3, 5), 4, per_channel, affine, linear_bias, torch.float64, "cpu", torch.float64)
    inputs = [t.requires_grad_() for t in [x] + params if t is not None]

    def fn(*args):
        it = iter(args[1:])
        ps = [None if p is None else next(it) for p in params]
        return pyops.derf_linear(args[0], *ps, backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs)


# ----------------------------------------------------------------------------------------------------------
# What the backward keeps: x and the parameters, never derf(x).


def saved_tensors(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_backward_saves_only_x_and_parameters(device, backend):
    x, params, dy = make_inputs((4, 9, 40), 56, True, True, True, torch.float32, device)
    leaves = [t.requires_grad_() for t in [x] + params]
    y, saved = saved_tensors(lambda: pyops.derf_linear(*leaves, backend=backend))
    inputs = {t.data_ptr(): t for t in leaves[:-1]}  # the linear bias is not needed
    assert saved, "the op saved nothing: the hook did not see its backward's tensors"
    for t in saved:
        assert t.data_ptr() in inputs and t.numel() == inputs[t.data_ptr()].numel(), \
            f"saved a tensor of shape {tuple(t.shape)} that is not an input"
    assert sum(t.numel() for t in saved) == sum(t.numel() for t in leaves[:-1])
    y.backward(dy)  # the saved tensors suffice
    # The unfused pair (the reference composition) keeps derf(x) too: the check above can tell.
    _, unfused = saved_tensors(lambda: reference_derf_linear(*leaves))
    assert any(t.data_ptr() not in inputs and t.numel() == x.numel() for t in unfused)


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("affine,linear_bias", [(True, True), (False, False)], ids=str)
def test_opcheck(device, backend, affine, linear_bias):
    fwd = torch.ops.pyops.derf_linear_fwd_triton if backend == "triton" else torch.ops.pyops.derf_linear_fwd
    bwd = torch.ops.pyops.derf_linear_bwd_triton if backend == "triton" else torch.ops.pyops.derf_linear_bwd
    x, params, dy = make_inputs((6, 12), 10, True, affine, linear_bias, torch.float32, device)
    x = x.requires_grad_()
    params = [p if p is None else p.requires_grad_() for p in params]
    torch.library.opcheck(fwd, (x, *params))
    torch.library.opcheck(bwd, (dy, x.detach(), *[p if p is None else p.detach() for p in params[:5]], linear_bias))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if b != "triton" or d == "cuda"])
def test_torch_compile_fullgraph(device, backend):
    x, params, dy = make_inputs((2, 5, 24), 18, True, True, True, torch.float32, device)

    def step(*args):
        return pyops.derf_linear(*args, backend=backend) * 2

    compiled = torch.compile(step, fullgraph=True)
    leaves = lambda: [t.detach().requires_grad_() for t in [x] + params]
    eager_in, comp_in = leaves(), leaves()
    y_eager, y_comp = step(*eager_in), compiled(*comp_in)
    torch.testing.assert_close(y_comp, y_eager)
    for a, b in zip(torch.autograd.grad(y_comp, comp_in, dy), torch.autograd.grad(y_eager, eager_in, dy)):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------
# Bad input and backend choice.


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_names_the_argument(backend):
    x = torch.randn(4, 5)
    a, s, w, b = torch.ones(1), torch.zeros(1), torch.ones(5), torch.zeros(5)
    lw, lb = torch.randn(3, 5), torch.zeros(3)
    f = lambda *args, **kw: pyops.derf_linear(*args, backend=backend, **kw)
    with pytest.raises(ValueError, match="derf_linear: weight must have 5 elements"):
        f(x, a, s, torch.ones(4), b, lw, lb)
    with pytest.raises(ValueError, match="derf_linear: alpha must have 1 or 5 elements"):
        f(x, torch.ones(3), s, w, b, lw, lb)
    with pytest.raises(TypeError, match="derf_linear: x must be a floating-point tensor"):
        f(x.int(), a, s, w, b, lw, lb)
    with pytest.raises(TypeError, match="derf_linear: shift must be a Tensor, got float"):
        f(x, a, 0.0, w, b, lw, lb)
    with pytest.raises(ValueError, match=r"derf_linear: linear_weight must have shape \(\*, 5\), got \(3, 4\)"):
        f(x, a, s, w, b, torch.randn(3, 4), lb)
    with pytest.raises(TypeError, match="derf_linear: linear_weight has dtype torch.float64 but x has torch.float32"):
        f(x, a, s, w, b, lw.double(), lb)
    with pytest.raises(ValueError, match=r"derf_linear: linear_bias must have shape \(3,\), got \(4,\)"):
        f(x, a, s, w, b, lw, torch.zeros(4))
    with pytest.raises(TypeError, match="derf_linear: linear_bias must be a floating-point tensor"):
        f(x, a, s, w, b, lw, lb.long())
    with pytest.raises(ValueError, match="derf_linear: bias is on meta but x is on cpu"):
        f(x, a, s, w, b.to("meta"), lw, lb)
    with pytest.raises(ValueError, match="derf_linear: linear_weight is on meta but x is on cpu"):
        f(x, a, s, w, b, lw.to("meta"), lb)
    with pytest.raises(ValueError, match="derf_linear: x must have at least one dimension"):
        f(torch.tensor(1.0), a, s, None, None, lw, lb)
    with pytest.raises(ValueError, match="derf_linear: alpha has non-finite values"):
        f(x, torch.tensor([float("inf")]), s, w, b, lw, lb)


def test_native_op_checks_its_arguments():
    x, one, zero, lw = torch.randn(4, 5), torch.ones(1), torch.zeros(1), torch.randn(3, 5)
    fwd, bwd = torch.ops.pyops.derf_linear_fwd, torch.ops.pyops.derf_linear_bwd
    with pytest.raises(ValueError, match="derf_linear: x must be 2-D"):
        fwd(x[None], one, zero, None, None, lw, None)
    with pytest.raises(ValueError, match="derf_linear: weight must have 5 elements"):
        fwd(x, one, zero, torch.ones(4), None, lw, None)
    with pytest.raises(TypeError, match="derf_linear: x must be float32, float16, bfloat16 or float64"):
        fwd(x.int(), one, zero, None, None, lw, None)
    with pytest.raises(TypeError, match="derf_linear: linear_weight has dtype"):
        fwd(x, one, zero, None, None, lw.half(), None)
    with pytest.raises(ValueError, match=r"derf_linear: linear_weight must have shape \(\*, 5\)"):
        fwd(x, one, zero, None, None, lw.t(), None)
    with pytest.raises(ValueError, match=r"derf_linear: linear_bias must have shape \(3,\)"):
        fwd(x, one, zero, None, None, lw, torch.zeros(2))
    with pytest.raises(ValueError, match=r"derf_linear_bwd: v_y must have shape \(4, 3\)"):
        bwd(torch.ones(4, 5), x, one, zero, None, None, lw, True)
    with pytest.raises(TypeError, match="derf_linear_bwd: v_y must be a floating-point tensor"):
        bwd(torch.ones(4, 3, dtype=torch.int32), x, one, zero, None, None, lw, True)


def test_backend_choice():
    x, params, _ = make_inputs((3, 8), 4, False, True, True, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="derf_linear has no CUDA"):
        pyops.derf_linear(x, *params, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'triton' is unavailable"):
        pyops.derf_linear(x.to("meta"), *[p.to("meta") for p in params], backend="triton")
    torch.testing.assert_close(pyops.derf_linear(x, *params), pyops.derf_linear(x, *params, backend="cpu"))


def test_autocast_casts_like_f_linear():
    x, params, _ = make_inputs((5, 16), 12, True, True, True, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pyops.derf_linear(x, *params, backend="cpu")
        ref = reference_derf_linear(x.bfloat16(), *params[:4], params[4].bfloat16(), params[5].bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)


# ----------------------------------------------------------------------------------------------------------
# Module and converter.


def test_module_matches_the_unfused_pair():
    fused = pyops.DerfLinear(20, 33, per_channel=True)
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_()
    derf, linear = pyops.Derf(20, per_channel=True), nn.Linear(20, 33)
    derf.load_state_dict(fused.norm.state_dict())
    linear.load_state_dict({"weight": fused.weight, "bias": fused.bias})
    assert sorted(fused.state_dict()) == ["bias", "norm.alpha", "norm.bias", "norm.shift", "norm.weight", "weight"]
    x = torch.randn(3, 7, 20)
    torch.testing.assert_close(fused(x), linear(derf(x)))
    pair = pyops.DerfLinear.from_pair(derf, linear)  # owns derf as its `norm` child, shares the Parameters
    assert pair.norm is derf and pair.weight is linear.weight
    assert sorted(pair.state_dict()) == sorted(fused.state_dict())
    torch.testing.assert_close(pair(x), linear(derf(x)))
    with pytest.raises(TypeError, match="DerfLinear.from_pair: norm must be a channels-last pyops.Derf"):
        pyops.DerfLinear.from_pair(pyops.Derf(20, channels_last=False), linear)
    torch.testing.assert_close(fused(x[0, 0]), linear(derf(x[0, 0])))  # 1-D x, as nn.Linear takes
    # A Derf pinned to its CUDA kernel fuses into the default (Triton on GPU) backend: derf_linear has no .cu kernel.
    assert pyops.DerfLinear.from_pair(pyops.FusedDerf(pyops.Derf(20, backend="cuda")), linear).backend is None
    no_bias = pyops.DerfLinear(20, 6, bias=False, elementwise_affine=False)
    assert no_bias.bias is None and no_bias.norm.weight is None
    torch.testing.assert_close(no_bias(x), nn.functional.linear(no_bias.norm(x), no_bias.weight))


def _grads(model, x):
    model.zero_grad()
    y = model(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_fusion(model, x, expected_pairs, rtol=1e-5, atol=1e-5):
    unfused = copy.deepcopy(model)
    keys = list(model.state_dict())
    params_before = [id(p) for p in model.parameters()]
    pyops.fuse_derf_linear(model)
    assert sum(isinstance(m, pyops.DerfLinear) for m in model.modules()) == expected_pairs
    assert sum(isinstance(m, pyops.FusedDerf) for m in model.modules()) == expected_pairs
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params_before  # an optimizer built before still works
    y_ref, g_ref = _grads(unfused, x)
    y, g = _grads(model, x)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=rtol, atol=atol, msg=name)
    # A checkpoint saved either way loads into the other (strict), and the results follow the weights.
    with torch.no_grad():
        for p in unfused.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.load_state_dict(unfused.state_dict())
    torch.testing.assert_close(model(x), unfused(x), rtol=rtol, atol=atol)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    unfused.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), unfused(x), rtol=rtol, atol=atol)
    # The fused model survives deepcopy with its parameters still shared between FusedDerf and DerfLinear.
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), model(x))
    return model


@pytest.mark.parametrize("block", [ViTBlock, GPTBlock])
def test_fuse_pyops_blocks(block):
    torch.manual_seed(0)
    model = nn.Sequential(block(48, 4), block(48, 4))
    for m in model.modules():
        if isinstance(m, pyops.Derf):
            with torch.no_grad():
                m.alpha.uniform_(0.3, 0.9)
                m.shift.normal_(0, 0.2)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    fused = check_fusion(model, torch.randn(2, 9, 48), expected_pairs=4)
    assert isinstance(fused[0].attn.qkv, pyops.DerfLinear) and isinstance(fused[0].mlp.fc1, pyops.DerfLinear)
    assert isinstance(fused[0].norm1, pyops.FusedDerf) and fused[0].attn.qkv._norm() is fused[0].norm1
    pyops.fuse_derf_linear(model)  # idempotent: nothing left to fuse
    assert sum(isinstance(m, pyops.DerfLinear) for m in model.modules()) == 4


def test_fuse_timm_vit_tiny():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)  # random init, no download
    pyops.convert_to_derf(model)
    depth = len(model.blocks)
    check_fusion(model, torch.randn(2, 3, 32, 32), expected_pairs=2 * depth, rtol=1e-4, atol=1e-4)
    assert isinstance(model.blocks[0].norm1, pyops.FusedDerf)
    assert isinstance(model.norm, pyops.Derf)  # the final norm feeds the head through pooling: left alone


def test_fuse_explicit_pairs_and_errors():
    model = nn.Sequential()
    model.add_module("norm", pyops.Derf(16))
    model.add_module("proj", nn.Linear(16, 8))
    check = copy.deepcopy(model)
    pyops.fuse_derf_linear(model)  # not a known block: left alone
    assert type(model.proj) is nn.Linear
    pyops.fuse_derf_linear(model, pairs=[("norm", "proj")])
    assert isinstance(model.proj, pyops.DerfLinear)
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), check(x))
    with pytest.raises(ValueError, match="fuse_derf_linear: norm must be a channels-last pyops.Derf"):
        pyops.fuse_derf_linear(model, pairs=[("norm", "proj")])
    bad = nn.Sequential(pyops.Derf(16), nn.Linear(12, 8))
    with pytest.raises(ValueError, match="fuse_derf_linear: 1 must be an nn.Linear with in_features=16"):
        pyops.fuse_derf_linear(bad, pairs=[("0", "1")])


def test_fused_block_compiles_fullgraph():
    torch.manual_seed(0)
    block = pyops.fuse_derf_linear(GPTBlock(32, 2))
    x = torch.randn(2, 5, 32)
    compiled = torch.compile(block, fullgraph=True)
    y_eager, g_eager = _grads(block, x)
    y_comp, g_comp = _grads(compiled, x)
    torch.testing.assert_close(y_comp, y_eager)
    for name in g_eager:
        torch.testing.assert_close(g_comp["_orig_mod." + name], g_eager[name], msg=name)


# ----------------------------------------------------------------------------------------------------------
# The native op's C++ autograd kernel (csrc/losses_autograd.cpp) and the eager fast path.


def test_bad_input_through_the_eager_fast_path():
    """With the backend choice cached (a valid call first), bad arguments reach the native op first: its C++ checks
    (or the fake kernels, for meta tensors) must reject them, and pyops' own error comes back."""
    x, params, _ = make_inputs((4, 5), 3, False, True, True, torch.float32, "cpu")
    for backend in ("cpu", None):
        pyops.derf_linear(x, *params, backend=backend)
        test_bad_input_names_the_argument(backend)


@pytest.mark.parametrize("affine,linear_bias", [(True, True), (False, False), (True, False)], ids=str)
def test_cpp_autograd_node_gradcheck_and_no_grad(affine, linear_bias):
    x, params, _ = make_inputs((3, 6), 4, True, affine, linear_bias, torch.float64, "cpu", torch.float64, seed=5)
    leaves = [t.requires_grad_() for t in [x] + params if t is not None]
    y = pyops.derf_linear(x, *params, backend="cpu")
    assert type(y.grad_fn).__name__ != "BackwardCFunction"  # not a Python autograd.Function
    assert y.grad_fn.name() == "DerfLinearBackward0"

    def fwd(*args):
        it = iter(args)
        return torch.ops.pyops.derf_linear_fwd(*[None if p is None else next(it) for p in [x] + params])

    assert torch.autograd.gradcheck(fwd, leaves)
    # Without grad mode (or with nothing requiring grad) no node is built and the values are the same.
    with torch.no_grad():
        nograd = pyops.derf_linear(x, *params, backend="cpu")
    assert nograd.grad_fn is None and not nograd.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(pyops.derf_linear(x, *params, backend="cpu"), nograd)
    detached = pyops.derf_linear(x.detach(), *[p if p is None else p.detach() for p in params], backend="cpu")
    assert detached.grad_fn is None
    torch.testing.assert_close(detached, nograd)
    torch.testing.assert_close(y.detach(), nograd)


def test_double_backward_raises_a_clear_error():
    x, params, dy = make_inputs((3, 6), 4, True, True, True, torch.float64, "cpu", torch.float64)
    leaves = [t.requires_grad_() for t in [x] + params]
    grads = torch.autograd.grad(pyops.derf_linear(*leaves, backend="cpu"), leaves, dy, create_graph=True)
    exact = torch.autograd.grad(reference_derf_linear(*leaves), leaves, dy)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match="derf_linear: double backward is not supported"):
        torch.autograd.grad(grads[0].sum(), leaves)


def test_module_parameters_fast_path_and_parametrize():
    """DerfLinear reads its parameters from _parameters; a parametrized one (not in there) still works."""
    m = pyops.DerfLinear(6, 5, per_channel=True, backend="cpu")
    x = torch.randn(2, 3, 6)
    want = reference_derf_linear(x, m.norm.alpha, m.norm.shift, m.norm.weight, m.norm.bias, m.weight, m.bias)
    torch.testing.assert_close(m(x), want)
    y = m(x.requires_grad_())
    assert y.grad_fn.next_functions[0][0].name() == "DerfLinearBackward0"  # y is a view of the op's output

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    parametrize.register_parametrization(m, "weight", Double())
    parametrize.register_parametrization(m.norm, "alpha", Double())
    want = reference_derf_linear(x, m.norm.alpha, m.norm.shift, m.norm.weight, m.norm.bias, m.weight, m.bias)
    torch.testing.assert_close(m(x), want)
