"""Derf: every backend against the float64 reference, forward and all five gradients."""


import pytest
import torch
from torch import nn
from utils import assert_close, backend_params

import pyops
from pyops.reference.derf import derf as reference_derf

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (shape, channel_dim): odd sizes, C = 1, C not a multiple of any vector width, channels-first maps.
SHAPES = [((7, 33), -1), ((2, 3, 65), -1), ((5, 1), -1), ((3, 256), -1), ((2, 5, 3, 7), 1), ((3, 4, 9), 1),
          ((4, 6, 5), 1)]
# (per_channel alpha/shift, weight, bias)
PARAMS = [(False, True, True), (True, True, True), (False, False, False), (True, True, False)]


def make_inputs(shape, channel_dim, per_channel, has_weight, has_bias, dtype, device, param_dtype=torch.float32,
                seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[channel_dim]
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    n = c if per_channel else 1
    x = 1.5 * rnd(*shape)
    params = [0.5 + torch.rand(n, generator=g, dtype=torch.float64), 0.3 * rnd(n),
              1 + 0.5 * rnd(c) if has_weight else None, 0.5 * rnd(c) if has_bias else None]
    dy = rnd(*shape)
    to = lambda t, dt: None if t is None else t.to(device=device, dtype=dt)
    return to(x, dtype), [to(p, param_dtype) for p in params], to(dy, dtype)


def run(x, params, dy, channel_dim, backend):
    """Forward and the gradients of every input that has one (x, alpha, shift, weight, bias)."""
    x = x.detach().requires_grad_()
    params = [None if p is None else p.detach().requires_grad_() for p in params]
    y = pyops.derf(x, *params, channel_dim=channel_dim, backend=backend)
    inputs = [x] + [p for p in params if p is not None]
    return y, torch.autograd.grad(y, inputs, dy)


def check_against_reference(x, params, dy, channel_dim, device, backend, dtype):
    y, grads = run(x, params, dy, channel_dim, backend)
    exact_y, exact_grads = run(x.double(), [p if p is None else p.double() for p in params], dy.double(),
                               channel_dim, "torch")
    ref_y, ref_grads = run(x, params, dy, channel_dim, "torch")
    assert y.device.type == device
    assert_close("y", y, exact_y, ref_y, dtype)
    names = ["v_x"] + [f"v_{n}" for n, p in zip(["alpha", "shift", "weight", "bias"], params) if p is not None]
    for name, g, e, r in zip(names, grads, exact_grads, ref_grads):
        assert_close(name, g, e, r, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channel_dim", SHAPES, ids=str)
@pytest.mark.parametrize("per_channel,has_weight,has_bias", PARAMS, ids=str)
def test_matches_reference(device, backend, dtype, shape, channel_dim, per_channel, has_weight, has_bias):
    x, params, dy = make_inputs(shape, channel_dim, per_channel, has_weight, has_bias, dtype, device)
    check_against_reference(x, params, dy, channel_dim, device, backend, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_larger_rows_exercise_vector_paths(device, backend, dtype):
    # Several chunks and full vector widths plus a ragged tail (C = 1000 and an inner run of 37).
    small = backend == "triton" and device == "cpu"  # the interpreter is slow
    for shape, dim in [((33 if small else 300, 1000), -1), ((2, 24, 37 if small else 370), 1)]:
        x, params, dy = make_inputs(shape, dim, True, True, True, dtype, device, seed=1)
        check_against_reference(x, params, dy, dim, device, backend, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_parameter_dtypes(device, backend, param_dtype):
    # Mixed precision: bf16 activations with fp32 (or bf16, fp64) parameters; grads come back per parameter.
    x, params, dy = make_inputs((6, 40), -1, True, True, True, torch.bfloat16, device, param_dtype)
    y, grads = run(x, params, dy, -1, backend)
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.bfloat16] + [param_dtype] * 4
    check_against_reference(x, params, dy, -1, device, backend, torch.bfloat16)


@pytest.mark.parametrize("device,backend", backend_params())
def test_non_contiguous_and_channels_last_memory(device, backend):
    x, params, dy = make_inputs((6, 10, 34), -1, True, True, True, torch.float32, device)
    check_against_reference(x[:, ::2, 1:-1], [p if p is None else p[1:-1] for p in params], dy[:, ::2, 1:-1], -1,
                            device, backend, torch.float32)
    check_against_reference(x.transpose(0, 1), params, dy.transpose(0, 1), -1, device, backend, torch.float32)
    # An NCHW tensor stored NHWC runs as channels-last without a copy; the result keeps that layout.
    x, params, dy = make_inputs((2, 12, 5, 3), 1, True, True, True, torch.float32, device)
    x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    check_against_reference(x, params, dy, 1, device, backend, torch.float32)
    assert pyops.derf(x, *params, channel_dim=1, backend=backend).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device,backend", backend_params())
def test_empty_input(device, backend):
    x, params, dy = make_inputs((0, 8), -1, True, True, True, torch.float32, device)
    y, grads = run(x, params, dy, -1, backend)
    assert y.shape == (0, 8)
    for g, p in zip(grads[1:], params):
        assert g.shape == p.shape and not g.any()


@pytest.mark.parametrize("device,backend", backend_params())
def test_parameter_gradients_are_deterministic(device, backend):
    x, params, dy = make_inputs((64, 96), -1, False, True, True, torch.float32, device, seed=3)
    first = run(x, params, dy, -1, backend)[1]
    second = run(x, params, dy, -1, backend)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape,channel_dim", [((3, 5), -1), ((2, 3, 4), 1)], ids=str)
@pytest.mark.parametrize("per_channel,has_weight,has_bias", PARAMS, ids=str)
def test_gradcheck_float64_cpu(shape, channel_dim, per_channel, has_weight, has_bias):
    x, params, _ = make_inputs(shape, channel_dim, per_channel, has_weight, has_bias, torch.float64, "cpu",
                               torch.float64)
    inputs = [t.requires_grad_() for t in [x] + params if t is not None]

    def fn(*args):
        it = iter(args[1:])
        ps = [None if p is None else next(it) for p in params]
        return pyops.derf(args[0], *ps, channel_dim=channel_dim, backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs)


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


def _op_args(device, per_channel=True, affine=True):
    x, params, dy = make_inputs((4, 3, 5), 1, per_channel, affine, affine, torch.float32, device)
    return x, params, dy


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params() if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(device, backend, affine):
    fwd = torch.ops.pyops.derf_fwd_triton if backend == "triton" else torch.ops.pyops.derf_fwd
    bwd = torch.ops.pyops.derf_bwd_triton if backend == "triton" else torch.ops.pyops.derf_bwd
    x, params, dy = _op_args(device, affine=affine)
    x.requires_grad_()
    for p in params:
        if p is not None:
            p.requires_grad_()
    torch.library.opcheck(fwd, (x, *params, 1))
    torch.library.opcheck(bwd, (dy, x.detach(), *[p if p is None else p.detach() for p in params], 1))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params() if b != "triton" or d == "cuda"])
def test_torch_compile_fullgraph(device, backend):
    x, params, dy = _op_args(device)

    def step(x, alpha, shift, weight, bias):
        return pyops.derf(x, alpha, shift, weight, bias, channel_dim=1, backend=backend) * 2

    compiled = torch.compile(step, fullgraph=True)
    y_eager, g_eager = run_fn(step, x, params, dy)
    y_comp, g_comp = run_fn(compiled, x, params, dy)
    torch.testing.assert_close(y_comp, y_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def run_fn(fn, x, params, dy):
    leaves = [t.detach().requires_grad_() for t in [x] + params]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy * 2)


# ----------------------------------------------------------------------------------------------------------
# The native ops' C++ autograd kernels (csrc/derf_autograd.cpp).


@pytest.mark.parametrize("per_channel,has_weight,has_bias", PARAMS, ids=str)
@pytest.mark.parametrize("channels_last", [True, False])
def test_cpp_autograd_module_matches_reference(per_channel, has_weight, has_bias, channels_last):
    """The module's gradients, through the C++ autograd node into .grad, against the float64 reference."""
    shape, dim = ((4, 64), -1) if channels_last else ((2, 5, 3, 7), 1)
    x, params, dy = make_inputs(shape, dim, per_channel, has_weight, has_bias, torch.float32, "cpu")
    m = pyops.Derf(shape[dim], channels_last=channels_last, per_channel=per_channel,
                   elementwise_affine=has_weight, backend="cpu")
    with torch.no_grad():
        for name, p in zip(["alpha", "shift", "weight", "bias"], params):
            if p is not None:
                getattr(m, name).copy_(p)
            elif getattr(m, name) is not None:  # weight without bias: a zero bias is the same function
                getattr(m, name).zero_()
    params = [m.alpha, m.shift, m.weight, m.bias]
    xg = x.clone().requires_grad_()
    y = m(xg)
    assert type(y.grad_fn).__name__ != "BackwardCFunction"  # not a Python autograd.Function
    assert "Derf" in y.grad_fn.name()
    y.backward(dy)
    exact_y, exact_grads = run(x.double(), [p.detach().double() if p is not None else None for p in params],
                               dy.double(), dim, "torch")
    ref_y, ref_grads = run(x, [p.detach() if p is not None else None for p in params], dy, dim, "torch")
    assert_close("y", y, exact_y, ref_y, torch.float32)
    got = [xg.grad] + [p.grad for p in params if p is not None]
    for name, g, e, r in zip(["v_x", "v_alpha", "v_shift", "v_weight", "v_bias"], got, exact_grads, ref_grads):
        assert_close(name, g, e, r, torch.float32)


def test_cpp_autograd_gradcheck_and_no_grad():
    x, params, _ = make_inputs((3, 6), -1, True, True, True, torch.float64, "cpu", torch.float64, seed=5)
    inputs = [t.requires_grad_() for t in [x] + params]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pyops.derf_fwd(*a, -1), inputs)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pyops.derf_fwd(*a, None, None, -1), inputs[:3])
    # Without grad mode (or with nothing requiring grad) no node is built and the values are the same.
    with torch.no_grad():
        y = pyops.derf(*inputs, backend="cpu")
    assert y.grad_fn is None and not y.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(pyops.derf(*inputs, backend="cpu"), y)
    torch.testing.assert_close(pyops.derf(*[t.detach() for t in inputs], backend="cpu"), y)


def test_double_backward_raises_a_clear_error():
    x, params, dy = make_inputs((3, 6), -1, True, True, True, torch.float64, "cpu", torch.float64)
    inputs = [t.requires_grad_() for t in [x] + params]
    y = pyops.derf(*inputs, backend="cpu")
    grads = torch.autograd.grad(y, inputs, dy, create_graph=True)  # first order works with create_graph
    exact = torch.autograd.grad(reference_derf(*inputs), inputs, dy)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match="derf: double backward is not supported"):
        torch.autograd.grad(grads[0].sum(), inputs)


@pytest.mark.parametrize("channels_last", [True, False])
def test_module_compile_fullgraph_forward_backward(channels_last):
    """The module (its _parameters fast path and the C++ autograd kernel) under torch.compile(fullgraph)."""
    torch._dynamo.reset()
    shape = (3, 5, 8) if channels_last else (2, 8, 3, 5)
    m = pyops.Derf(8, channels_last=channels_last, per_channel=True, backend="cpu")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(*shape)
    compiled = torch.compile(m, fullgraph=True)
    outs = []
    for fn in (m, compiled):
        xg = x.clone().requires_grad_()
        y = fn(xg)
        grads = torch.autograd.grad(y, [xg] + list(m.parameters()), torch.ones_like(y))
        outs.append((y, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b)


def test_saved_tensor_hooks_and_checkpoint():
    """The C++ node saves through SavedVariable: saved-tensor hooks (offloading) and non-reentrant activation
    checkpointing see x and the parameters and give the same gradients."""
    m = pyops.Derf(8, per_channel=True, backend="cpu")
    x = torch.randn(3, 8)

    def grads(fn):
        m.zero_grad()
        xg = x.clone().requires_grad_()
        fn(xg).backward(torch.ones(3, 8))
        return [xg.grad] + [p.grad.clone() for p in m.parameters()]

    plain = grads(m)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t.clone(), lambda t: t):
        hooked = grads(m)
    assert sorted(packed) == sorted([(3, 8)] + [p.shape for p in m.parameters()])
    ckpt = grads(lambda t: torch.utils.checkpoint.checkpoint(m, t, use_reentrant=False))
    for a, b, c in zip(plain, hooked, ckpt):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)


def test_compiled_autograd_with_compiled_forward():
    """torch.compile with compiled autograd: the compiled forward's backward (not the eager C++ node, which
    compiled autograd cannot trace) runs under compiled autograd and gives the eager gradients."""
    if not hasattr(torch._dynamo.config, "compiled_autograd"):
        pytest.skip("this torch has no compiled autograd")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), pyops.Derf(8, per_channel=True, backend="cpu"), nn.Linear(8, 2))
    x = torch.randn(5, 8)
    model(x).square().sum().backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch._dynamo.config.patch(compiled_autograd=True):  # restores dynamo's config exactly afterwards
        torch.compile(model)(x).square().sum().backward()
    for p, g in zip(model.parameters(), eager):
        torch.testing.assert_close(p.grad, g)
    torch._dynamo.reset()


def test_parametrized_module_parameters():
    """A parametrized parameter is not in _parameters: forward falls back to the attribute."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    m = pyops.Derf(6, backend="cpu")
    parametrize.register_parametrization(m, "weight", Double())
    x = torch.randn(2, 6)
    torch.testing.assert_close(m(x), reference_derf(x, m.alpha, m.shift, 2 * m.parametrizations.weight.original,
                                                    m.bias))


def test_backend_env_is_read_every_call(monkeypatch):
    """The backend choice is cached, but $PYOPS_BACKEND set after the first call still applies."""
    x, params, _ = make_inputs((3, 4), -1, False, True, True, torch.float32, "cpu")
    monkeypatch.delenv("PYOPS_BACKEND", raising=False)
    pyops.derf(x, *params)  # cached: native CPU
    monkeypatch.setenv("PYOPS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        pyops.derf(x, *params)
    monkeypatch.setenv("PYOPS_BACKEND", "torch")
    torch.testing.assert_close(pyops.derf(x, *params), reference_derf(x, *params))
    monkeypatch.delenv("PYOPS_BACKEND")
    assert pyops.derf(x.requires_grad_(), *params).grad_fn.name() != reference_derf(x, *params).grad_fn.name()


def test_native_op_checks_finite_parameters():
    """The C++ host checks reject NaN/inf parameters on CPU (ValueError naming the parameter), so the
    Python wrapper need not scan them per call; errors keep their type when raised from the native op."""
    x = torch.randn(4, 5)
    one, zero = torch.ones(1), torch.zeros(1)
    with pytest.raises(ValueError, match="^derf: weight has non-finite values$"):
        torch.ops.pyops.derf_fwd(x, one, zero, torch.full((5,), float("inf")), None, -1)
    with pytest.raises(ValueError, match="^derf: shift has non-finite values$"):
        torch.ops.pyops.derf_fwd(x, one, torch.tensor([float("nan")], dtype=torch.bfloat16), None, None, -1)
    for _ in range(2):  # the second call hits the cached backend choice: the same errors
        with pytest.raises(ValueError, match="^derf: bias has non-finite values$"):
            pyops.derf(x, one, zero, torch.ones(5), torch.full((5,), float("nan")))
        with pytest.raises(TypeError, match="^derf: alpha must be a Tensor, got float$"):
            pyops.derf(x, 0.5, zero)
        with pytest.raises(TypeError, match="^derf: channel_dim must be an int, got float$"):
            pyops.derf(x, one, zero, channel_dim=-1.0)


# ----------------------------------------------------------------------------------------------------------
# Bad input and backend choice.


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_names_the_argument(backend):
    x = torch.randn(4, 5)
    a, s, w, b = torch.ones(1), torch.zeros(1), torch.ones(5), torch.zeros(5)
    with pytest.raises(ValueError, match="weight must have 5 elements"):
        pyops.derf(x, a, s, torch.ones(4), b, backend=backend)
    with pytest.raises(ValueError, match="alpha must have 1 or 5 elements"):
        pyops.derf(x, torch.ones(3), s, w, b, backend=backend)
    with pytest.raises(ValueError, match="shift must have 1 or 5 elements"):
        pyops.derf(x, a, torch.zeros(2, 5), w, b, backend=backend)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        pyops.derf(torch.ones(4, 5, dtype=torch.int32), a, s, w, b, backend=backend)
    with pytest.raises(TypeError, match="bias must be a floating-point"):
        pyops.derf(x, a, s, w, torch.zeros(5, dtype=torch.int64), backend=backend)
    with pytest.raises(TypeError, match="alpha must be a Tensor, got float"):
        pyops.derf(x, 0.5, s, w, b, backend=backend)
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        pyops.derf(x, a, s, w, b.to("meta"), backend=backend)
    with pytest.raises(ValueError, match=r"channel_dim=2 is out of range \[-2, 1\]"):
        pyops.derf(x, a, s, w, b, channel_dim=2, backend=backend)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        pyops.derf(x, a, s, w, b, channel_dim=1.0, backend=backend)
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        pyops.derf(torch.tensor(1.0), a, s, backend=backend)
    with pytest.raises(ValueError, match="alpha has non-finite values"):
        pyops.derf(x, torch.tensor([float("nan")]), s, w, b, backend=backend)


def test_native_op_checks_its_arguments():
    """The C++ host checks follow the same policy: TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE ->
    ValueError, each message naming the argument."""
    x = torch.randn(4, 5)
    one, zero = torch.ones(1), torch.zeros(1)
    with pytest.raises(ValueError, match="derf: weight must have 5 elements"):
        torch.ops.pyops.derf_fwd(x, one, zero, torch.ones(4), None, -1)
    with pytest.raises(ValueError, match="derf: alpha must have 1 or 5 elements"):
        torch.ops.pyops.derf_fwd(x, torch.ones(2), zero, None, None, -1)
    with pytest.raises(TypeError, match="derf: x must be float32, float16 or bfloat16"):
        torch.ops.pyops.derf_fwd(x.int(), one, zero, None, None, -1)
    with pytest.raises(TypeError, match="derf: shift must be a floating-point tensor"):
        torch.ops.pyops.derf_fwd(x, one, torch.zeros(1, dtype=torch.int64), None, None, -1)
    with pytest.raises(ValueError, match=r"derf: channel_dim=2 is out of range \[-2, 1\]"):
        torch.ops.pyops.derf_fwd(x, one, zero, None, None, 2)
    with pytest.raises(ValueError, match="derf_bwd: v_y has shape"):
        torch.ops.pyops.derf_bwd(torch.ones(3), x, one, zero, None, None, -1)
    with pytest.raises(TypeError, match="derf_bwd: v_y must be a floating-point tensor"):
        torch.ops.pyops.derf_bwd(torch.ones(4, 5, dtype=torch.int32), x, one, zero, None, None, -1)


@pytest.mark.parametrize("entry", ["derf", "Derf"])
def test_device_mismatch_and_dtype_errors(entry):
    """Every public entry point: a tensor on another device is a ValueError naming both arguments, raised
    before any kernel runs ("meta" stands in for a second device: no kernel could run on it); a wrong
    dtype is a TypeError naming the argument."""
    x, (a, s, w, b), _ = make_inputs((3, 6), -1, True, True, True, torch.float32, "cpu")
    if entry == "derf":
        for i, name in enumerate(["alpha", "shift", "weight", "bias"]):
            args = [a, s, w, b]
            args[i] = args[i].to("meta")
            with pytest.raises(ValueError, match=f"^derf: {name} is on meta but x is on cpu$"):
                pyops.derf(x, *args)
        with pytest.raises(ValueError, match="^derf: alpha is on cpu but x is on meta$"):
            pyops.derf(x.to("meta"), a, s, w, b)
        with pytest.raises(TypeError, match="^derf: x must be a floating-point tensor, got torch.int64$"):
            pyops.derf(x.long(), a, s, w, b)
        with pytest.raises(TypeError, match="^derf: weight must be a floating-point tensor, got torch.int32$"):
            pyops.derf(x, a, s, w.int(), b)
    else:
        m = pyops.Derf(6)
        with pytest.raises(ValueError, match="^derf: alpha is on cpu but x is on meta$"):
            m(x.to("meta"))
        with pytest.raises(TypeError, match="^derf: x must be a floating-point tensor, got torch.int64$"):
            m(x.long())
        with pytest.raises(ValueError, match="^derf: alpha is on meta but x is on cpu$"):
            m.to("meta")(x)
        with pytest.raises(ValueError, match="Derf: num_features=0 is out of range"):
            pyops.Derf(0)
        with pytest.raises(TypeError, match="Derf: num_features must be an int"):
            pyops.Derf(6.0)


def test_backend_choice(monkeypatch):
    x, params, _ = make_inputs((3, 4), -1, False, True, True, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        pyops.derf(x, *params, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        pyops.derf(x, *params, backend="nope")
    assert pyops.available_backends("cpu")[0] == "cpu"
    monkeypatch.setenv("PYOPS_BACKEND", "cuda")  # the env default applies when backend=None ...
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        pyops.derf(x, *params)
    torch.testing.assert_close(pyops.derf(x, *params, backend="torch"), reference_derf(x, *params))  # ... only


# ----------------------------------------------------------------------------------------------------------
# Modules.


class PaperDerf(nn.Module):
    """The paper's reference module (parameter names and shapes), to check state-dict compatibility."""

    def __init__(self, normalized_shape, alpha_init_value=0.5, shift_init_value=0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.shift = nn.Parameter(torch.ones(1) * shift_init_value)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        return self.weight * torch.erf(self.alpha * x + self.shift) + self.bias


def test_module_loads_paper_state_dict():
    paper = PaperDerf(24, 0.7, 0.1)
    with torch.no_grad():
        for p in paper.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = pyops.Derf(24)
    ours.load_state_dict(paper.state_dict())  # strict: same names and shapes
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(ours(x), paper(x))
    assert set(dict(pyops.Derf(8, per_channel=True).named_parameters())) == {"alpha", "shift", "weight", "bias"}
    assert pyops.Derf(8, per_channel=True).alpha.shape == (8,)
    assert pyops.Derf(8, elementwise_affine=False).weight is None


def test_module_channels_first():
    m = pyops.Derf(6, channels_last=False, per_channel=True)
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(m(x), reference_derf(x, m.alpha, m.shift, m.weight, m.bias, channel_dim=1))


class LlamaRMSNorm(nn.Module):  # the shape of HF's class: a weight and an eps, no normalized_shape
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps


def test_convert_to_derf_keeps_device_dtype_and_affine():
    model = nn.Sequential(nn.LayerNorm(16, dtype=torch.float64), nn.Linear(16, 16), nn.LayerNorm(16, bias=False),
                          nn.RMSNorm(16, elementwise_affine=False), nn.Sequential(LlamaRMSNorm(16)),
                          nn.LayerNorm(16, elementwise_affine=False))
    with torch.no_grad():
        model[0].weight.normal_()
    original_weight = model[0].weight.clone()
    assert pyops.convert_to_derf(model, alpha_init=0.3) is model
    assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm, LlamaRMSNorm)) for m in model.modules())
    assert model[0].weight.dtype == torch.float64 and torch.equal(model[0].weight, original_weight)
    assert model[0].alpha.item() == pytest.approx(0.3)
    assert model[2].weight is not None and model[4][0].weight is not None
    assert model[3].weight is None and model[5].weight is None
    assert isinstance(pyops.convert_to_derf(nn.LayerNorm(8)), pyops.Derf)


@pytest.mark.parametrize("device,backend", backend_params())
def test_convert_timm_vit(device, backend):
    timm = pytest.importorskip("timm")
    from pyops.models import set_backend

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=10).to(device).eval()
    pyops.convert_to_derf(vit)
    assert not any(isinstance(m, nn.LayerNorm) for m in vit.modules())
    assert sum(isinstance(m, pyops.Derf) for m in vit.modules()) == 2 * 2 + 1
    images = torch.randn(2, 3, 32, 32, device=device)
    with torch.no_grad():
        fused = set_backend(vit, backend)(images)
        ref = set_backend(vit, "torch")(images)
        exact = set_backend(vit.double(), "torch")(images.double())
    assert_close("ViT logits", fused, exact, ref, torch.float32)


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("block", ["ViTBlock", "GPTBlock"])
def test_convergence_matches_reference(device, backend, block):
    """30 Adam steps on synthetic data give the same loss curve with the reference and fused Derf."""
    from pyops import models

    def train(backend, dtype=torch.float32):
        torch.manual_seed(0)
        model = nn.Sequential(*[getattr(models, block)(32, 4, backend=backend) for _ in range(2)]).to(device, dtype)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8, 12, 32, generator=g).to(device, dtype)
        target = torch.randn(8, 12, 32, generator=g).to(device, dtype)
        losses = []
        for _ in range(30):
            loss = torch.nn.functional.mse_loss(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return torch.tensor(losses, dtype=torch.float64)

    ref, fused, exact = train("torch"), train(backend), train("torch", torch.float64)
    assert ref[-1] < 0.8 * ref[0]  # it learns
    # The 3x rule on the whole loss curve: fp32 kernels differ from torch's erf by a few ulp, and after 30
    # steps the curves are as close to the float64 run as torch's own fp32 run (measured: ~2e-7 both).
    assert_close("losses", fused, exact, ref, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channel_dim", [((3, 256), -1), ((2, 5, 3, 7), 1)], ids=str)
def test_cpu_kernels_at_every_isa_level(cpu_isa_level, dtype, shape, channel_dim):
    # The tests above run the best level (or PYOPS_CPU_ISA); this runs each ISA copy (csrc/cpu/isa.h).
    x, params, dy = make_inputs(shape, channel_dim, True, True, True, dtype, "cpu")
    check_against_reference(x, params, dy, channel_dim, "cpu", "cpu", dtype)
