"""attribute_pair_loss: every backend against the float64 reference, the loss and every gradient."""

import pytest
import torch
from utils import assert_close, backend_params

import pyops
from pyops.reference.contrastive import attribute_pair_loss as reference_loss

OP = "attribute_pair_fwd"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, A, L, D): L None for pooled inputs; odd sizes, A in {2, 3, 5}.
SHAPES = [(3, 2, None, 33), (4, 3, None, 7), (2, 5, None, 65), (3, 2, 5, 19), (2, 3, 4, 9), (2, 5, 3, 17)]
TINY = [(2, 3, None, 9), (2, 3, 3, 5)]  # the Triton interpreter is slow


def make_inputs(b, a, n, d, dtype, device, mask=None, scale=10.0, seed=0):
    """ex, ey (positives correlated with each other, so the loss is not ~log(A^2)), logit_scale, mask.

    mask: None, "bool" or "float" (ex's dtype); a masked mask keeps a random subset of tokens and empties one
    slot entirely (it pools to zero: cosine 0)."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, a, d) if n is None else (b, a, n, d)
    ex = torch.randn(*shape, generator=g, dtype=torch.float64)
    ey = torch.randn(*shape, generator=g, dtype=torch.float64)
    ey[:, 0] = ex[:, 0] + 0.5 * ey[:, 0]
    m = None
    if mask is not None:
        m = torch.rand(b, a, n, generator=g) < 0.6
        m[:, :, 0] = True
        m[0, a - 1] = False  # an all-masked slot
        m = m if mask == "bool" else m.to(dtype)
        m = m.to(device)
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return to(ex), to(ey), torch.tensor(scale, dtype=torch.float32, device=device), m


def run(ex, ey, scale, mask, backend, scale_grad=True):
    """The loss and the gradients of ex, ey (and logit_scale when it requires grad)."""
    ex, ey = ex.detach().requires_grad_(), ey.detach().requires_grad_()
    scale = scale.detach().requires_grad_(scale_grad)
    loss = pyops.attribute_pair_loss(ex, ey, scale, mask=mask, backend=backend)
    inputs = [ex, ey] + ([scale] if scale_grad else [])
    return loss, torch.autograd.grad(loss * 1.7, inputs)


def check_against_reference(ex, ey, scale, mask, backend, dtype, scale_grad=True):
    loss, grads = run(ex, ey, scale, mask, backend, scale_grad)
    exact_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    exact_loss, exact_grads = run(ex.double(), ey.double(), scale.double(), exact_mask, "torch", scale_grad)
    ref_loss, ref_grads = run(ex, ey, scale, mask, "torch", scale_grad)
    assert loss.shape == () and loss.dtype == torch.float32
    assert_close("loss", loss, exact_loss, ref_loss, dtype)
    for name, g, e, r in zip(["v_ex", "v_ey", "v_logit_scale"], grads, exact_grads, ref_grads):
        assert_close(name, g, e.to(g.device), r, dtype)


def _params(tiny_for_triton=True):
    out = []
    for device, backend in backend_params(OP, include_torch=True):
        shapes = TINY if (tiny_for_triton and backend == "triton" and device == "cpu") else SHAPES
        out += [(device, backend, s) for s in shapes]
    return out


@pytest.mark.parametrize("device,backend,shape", _params(), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(device, backend, shape, dtype):
    ex, ey, scale, _ = make_inputs(*shape, dtype, device)
    check_against_reference(ex, ey, scale, None, backend, dtype)


@pytest.mark.parametrize("device,backend", backend_params(OP, include_torch=True))
@pytest.mark.parametrize("mask", ["bool", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_tokens(device, backend, mask, dtype):
    shape = (2, 3, 3, 5) if backend == "triton" and device == "cpu" else (3, 5, 7, 33)
    ex, ey, scale, m = make_inputs(*shape, dtype, device, mask=mask, seed=1)
    check_against_reference(ex, ey, scale, m, backend, dtype)
    # Masked tokens get no gradient; the all-masked slot's tokens neither.
    _, (v_ex, v_ey, _) = run(ex, ey, scale, m, backend)
    dropped = ~m.bool()
    assert not v_ex[dropped].any() and not v_ey[dropped].any()


@pytest.mark.parametrize("device,backend", backend_params(OP))
@pytest.mark.parametrize("scale", [10.0, 100.0])
@pytest.mark.parametrize("scale_grad", [True, False])
def test_logit_scale(device, backend, scale, scale_grad):
    shape = TINY[1] if backend == "triton" and device == "cpu" else (5, 4, 6, 40)
    ex, ey, s, m = make_inputs(*shape, torch.float32, device, mask="bool", scale=scale, seed=2)
    check_against_reference(ex, ey, s, m, backend, torch.float32, scale_grad)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_non_contiguous(device, backend):
    small = backend == "triton" and device == "cpu"
    ex, ey, scale, m = make_inputs(3, 3, 8, 12 if small else 40, torch.float32, device, mask="bool", seed=3)
    # Every other token and a column slice of transposed storage.
    ex_t = ex.transpose(2, 3).contiguous().transpose(2, 3)
    check_against_reference(ex_t[:, :, ::2, 1:-1], ey[:, :, ::2, 1:-1], scale, m[:, :, ::2], backend, torch.float32)
    px, py, _, _ = make_inputs(6, 3, None, 20, torch.float32, device, seed=4)
    check_against_reference(px[::2], py[1::2], scale, None, backend, torch.float32)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_larger_sizes(device, backend):
    # Several D blocks and ragged tails (the Triton interpreter gets smaller ones: it is slow).
    small = backend == "triton" and device == "cpu"
    sizes = [((4, 4, None, 300), None), ((2, 4, 9, 70), "bool")] if small else [
        ((64, 4, None, 1000), None), ((16, 4, 37, 130), "bool")]
    for shape, mask in sizes:
        ex, ey, scale, m = make_inputs(*shape, torch.bfloat16, device, mask=mask, seed=5)
        check_against_reference(ex, ey, scale, m, backend, torch.bfloat16)


@pytest.mark.parametrize("device,backend", backend_params(OP))
def test_deterministic(device, backend):
    shape = (3, 3, 4, 16) if backend == "triton" and device == "cpu" else (64, 4, 16, 96)
    ex, ey, scale, m = make_inputs(*shape, torch.float32, device, mask="bool", seed=6)
    first, second = run(ex, ey, scale, m, backend), run(ex, ey, scale, m, backend)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tokens,mask", [(False, None), (True, None), (True, "bool")])
def test_gradcheck_float64_cpu(tokens, mask):
    ex, ey, scale, m = make_inputs(2, 3, 4 if tokens else None, 5, torch.float64, "cpu", mask=mask, scale=3.0)
    scale = scale.double()
    inputs = [t.requires_grad_() for t in (ex, ey, scale)]
    fn = lambda a, b, s: pyops.attribute_pair_loss(a, b, s, mask=m, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    exact = reference_loss(*inputs, m)
    torch.testing.assert_close(fn(*inputs), exact)


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


def _ops(backend):
    if backend == "triton":
        return torch.ops.pyops.attribute_pair_fwd_triton, torch.ops.pyops.attribute_pair_bwd_triton
    return torch.ops.pyops.attribute_pair_fwd, torch.ops.pyops.attribute_pair_bwd


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("tokens", [False, True])
def test_opcheck(device, backend, tokens):
    fwd, bwd = _ops(backend)
    ex, ey, scale, m = make_inputs(2, 3, 4 if tokens else None, 6, torch.float32, device,
                                   mask="bool" if tokens else None)
    args = (ex.requires_grad_(), ey.requires_grad_(), scale.requires_grad_(), m)
    torch.library.opcheck(fwd, args)
    with torch.no_grad():
        _, cos, norms, px, py = fwd(*args)
    v_loss = torch.randn(2, device=device)
    torch.library.opcheck(bwd, (v_loss, ex.detach(), ey.detach(), scale.detach(), m, cos, norms, px, py))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params(OP) if b != "triton" or d == "cuda"])
def test_torch_compile_fullgraph(device, backend):
    ex, ey, scale, m = make_inputs(3, 3, 5, 8, torch.float32, device, mask="bool")

    def step(ex, ey, scale):
        return pyops.attribute_pair_loss(ex, ey, scale, mask=m, backend=backend) * 2

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.detach().clone().requires_grad_() for t in (ex, ey, scale)]
        loss = fn(*leaves)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)


def test_triton_interpreted_matches_native_cpu():
    """The Triton kernels (interpreted on CPU) against the native CPU op on the raw outputs, saved tensors too."""
    if "triton" not in pyops.available_backends("cpu", OP):
        pytest.skip("Triton's interpreter is not available")
    ex, ey, scale, m = make_inputs(2, 3, 3, 6, torch.float32, "cpu", mask="float")
    native = torch.ops.pyops.attribute_pair_fwd(ex, ey, scale, m)
    interp = torch.ops.pyops.attribute_pair_fwd_triton(ex, ey, scale, m)
    for a, b in zip(native, interp):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_names_the_argument(backend):
    ex, ey, s, m = make_inputs(2, 3, 4, 5, torch.float32, "cpu", mask="bool")
    px, py, _, _ = make_inputs(2, 3, None, 5, torch.float32, "cpu")
    loss = lambda *a, **k: pyops.attribute_pair_loss(*a, backend=backend, **k)  # noqa: E731
    msg = r"^attribute_pair_loss: ey must have ex's shape \(2, 3, 5\), got \(2, 3, 4\)$"
    with pytest.raises(ValueError, match=msg):
        loss(px, py[..., :4], s)
    with pytest.raises(ValueError, match="ex must have at least 2 attribute slots"):
        loss(px[:, :1], py[:, :1], s)
    with pytest.raises(ValueError, match=r"ex must have shape \(B, A, D\) \(pooled\) or \(B, A, L, D\)"):
        loss(px[0], py[0], s)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3, 4\)"):
        loss(ex, ey, s, mask=m[:, :, :3])
    with pytest.raises(TypeError, match="mask must be bool or float32, got torch.int64"):
        loss(ex, ey, s, mask=m.long())
    with pytest.raises(ValueError, match="mask is only for token inputs"):
        loss(px, py, s, mask=m)
    with pytest.raises(TypeError, match="ex must be float32 or float16 or bfloat16 or float64, got torch.int32"):
        loss(px.int(), py.int(), s)
    with pytest.raises(TypeError, match="ey has dtype torch.float16 but ex has torch.float32"):
        loss(px, py.half(), s)
    with pytest.raises(TypeError, match="logit_scale must be a Tensor, got float"):
        loss(px, py, 10.0)
    with pytest.raises(TypeError, match="logit_scale must be a floating-point tensor"):
        loss(px, py, torch.tensor(10))
    with pytest.raises(ValueError, match=r"logit_scale must have shape \(\)"):
        loss(px, py, s.reshape(1))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^attribute_pair_loss: logit_scale has non-finite values$"):
            loss(px, py, torch.tensor(bad))
        for name in ("ex", "ey"):
            args = {"ex": px.clone(), "ey": py.clone()}
            args[name][1, 0, 2] = bad
            with pytest.raises(ValueError, match=f"^attribute_pair_loss: {name} has non-finite values$"):
                loss(args["ex"], args["ey"], s)
    with pytest.raises(ValueError, match="^attribute_pair_loss: ey is on meta but ex is on cpu$"):
        loss(px, py.to("meta"), s)
    with pytest.raises(ValueError, match="^attribute_pair_loss: logit_scale is on meta but ex is on cpu$"):
        loss(px, py, s.to("meta"))
    with pytest.raises(ValueError, match="^attribute_pair_loss: mask is on meta but ex is on cpu$"):
        loss(ex, ey, s, mask=m.to("meta"))


def test_native_op_checks_its_arguments():
    """The C++ host checks: TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE -> ValueError, naming the argument."""
    ex, ey, s, m = make_inputs(2, 3, 4, 5, torch.float32, "cpu", mask="bool")
    fwd, bwd = _ops("cpu")
    with pytest.raises(ValueError, match="attribute_pair_loss: ey must have ex's shape"):
        fwd(ex, ey[:, :, :3], s, m)
    with pytest.raises(ValueError, match="attribute_pair_loss: ex must have at least 2 attribute slots"):
        fwd(ex[:, :1], ey[:, :1], s, m[:, :1])
    with pytest.raises(ValueError, match="attribute_pair_loss: ex must have shape"):
        fwd(ex[0, 0], ey[0, 0], s, None)
    with pytest.raises(ValueError, match="attribute_pair_loss: mask must have shape"):
        fwd(ex, ey, s, m[:, :, :2])
    with pytest.raises(TypeError, match="attribute_pair_loss: mask must be bool or ex's dtype"):
        fwd(ex, ey, s, m.int())
    with pytest.raises(TypeError, match="attribute_pair_loss: ex must be float32, float16 or bfloat16"):
        fwd(ex.int(), ey.int(), s, m)
    with pytest.raises(TypeError, match="attribute_pair_loss: ey has dtype"):
        fwd(ex, ey.double(), s, m)
    with pytest.raises(TypeError, match="attribute_pair_loss: logit_scale must be a floating-point tensor"):
        fwd(ex, ey, torch.tensor(3), m)
    with pytest.raises(ValueError, match="attribute_pair_loss: logit_scale must be a 0-dim tensor"):
        fwd(ex, ey, s.reshape(1), m)
    with pytest.raises(ValueError, match="attribute_pair_loss: logit_scale has non-finite values"):
        fwd(ex, ey, torch.tensor(float("nan")), m)
    _, cos, norms, px, py = fwd(ex, ey, s, m)
    with pytest.raises(ValueError, match="attribute_pair_bwd: v_loss must have shape"):
        bwd(torch.ones(3), ex, ey, s, m, cos, norms, px, py)
    with pytest.raises(ValueError, match="attribute_pair_bwd: px must have shape"):
        bwd(torch.ones(2), ex, ey, s, m, cos, norms, px[:, :2], py)


def test_backend_choice():
    ex, ey, s, _ = make_inputs(2, 3, None, 5, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend='cuda' needs CUDA tensors"):
        pyops.attribute_pair_loss(ex, ey, s, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        pyops.attribute_pair_loss(ex, ey, s, backend="nope")
    assert pyops.available_backends("cpu", OP)[0] == "cpu"


# ----------------------------------------------------------------------------------------------------------
# The native op's C++ autograd kernel (csrc/losses_autograd.cpp) and the eager fast path.


def test_bad_input_through_the_eager_fast_path():
    """With the backend choice cached (a valid call first), bad arguments reach the native op first: its C++ checks
    (or the fake kernels, for meta tensors) must reject them, and pyops' own error comes back."""
    ex, ey, s, m = make_inputs(2, 3, 4, 5, torch.float32, "cpu", mask="bool")
    for backend in ("cpu", None):
        pyops.attribute_pair_loss(ex, ey, s, mask=m, backend=backend)
        test_bad_input_names_the_argument(backend)


@pytest.mark.parametrize("tokens,mask", [(False, None), (True, "float")])
def test_cpp_autograd_node_gradcheck_and_no_grad(tokens, mask):
    ex, ey, scale, m = make_inputs(2, 3, 4 if tokens else None, 5, torch.float64, "cpu", mask=mask, scale=3.0)
    leaves = [t.requires_grad_() for t in (ex, ey, scale.double())]
    fwd = lambda *a: torch.ops.pyops.attribute_pair_fwd(*a, m)  # noqa: E731
    out = fwd(*leaves)
    assert type(out[0].grad_fn).__name__ != "BackwardCFunction"  # not a Python autograd.Function
    assert out[0].grad_fn.name() == "AttributePairBackward0"
    assert not any(t.requires_grad for t in out[1:])  # cosines, norms and pooled vectors have no gradient
    assert torch.autograd.gradcheck(lambda *a: fwd(*a)[0], leaves)
    # logit_scale without grad: its gradient is not asked for.
    assert torch.autograd.gradcheck(lambda a, b: fwd(a, b, leaves[2].detach())[0], leaves[:2])
    if m is not None:  # a mask that requires grad gets none (and builds no node on its own)
        alone = torch.ops.pyops.attribute_pair_fwd(*[t.detach() for t in leaves], m.clone().requires_grad_())
        assert alone[0].grad_fn is None
    with torch.no_grad():
        nograd = fwd(*leaves)
    assert all(t.grad_fn is None and not t.requires_grad for t in nograd)
    with torch.inference_mode():
        inference = fwd(*leaves)
    for a, b, c in zip(out, nograd, inference):
        torch.testing.assert_close(b, a.detach())
        torch.testing.assert_close(c, a.detach())


def test_double_backward_raises_a_clear_error():
    ex, ey, scale, m = make_inputs(2, 3, 4, 5, torch.float64, "cpu", mask="bool", scale=3.0)
    leaves = [t.requires_grad_() for t in (ex, ey, scale.double())]
    loss = pyops.attribute_pair_loss(*leaves, mask=m, backend="cpu")
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    exact = torch.autograd.grad(reference_loss(*leaves, m), leaves)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match="attribute_pair_loss: double backward is not supported"):
        torch.autograd.grad(grads[0].sum(), leaves)
