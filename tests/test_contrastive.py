"""Contrastive loss: every backend against the float64 reference, losses and the gradients of q, k and
logit_scale; registration (opcheck, torch.compile), determinism, errors, open_clip's ClipLoss and the chunk
workspace bound."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from utils import assert_close, backend_params

import pyops
from pyops import _backend
from pyops.contrastive import local_loss
from pyops.reference import contrastive as reference

BACKENDS = backend_params("contrastive_fwd", include_torch=True)
NATIVE = [(d, b) for d, b in backend_params("contrastive_fwd") if b in ("cpu", "cuda")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(device, backend):
    """The Triton interpreter is slow: tiny sizes there."""
    return backend == "triton" and device == "cpu"


@pytest.fixture
def chunk_rows(request, monkeypatch):
    """Forces the native backends' rows per chunk (csrc/contrastive.cpp reads it on every call); 0: the default."""
    if request.param:
        monkeypatch.setenv("PYOPS_CONTRASTIVE_CHUNK_ROWS", str(request.param))
    return request.param


def make(n, m, d, dtype, device, seed=0, scale=14.0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    # Nudge each row toward its diagonal column so the losses are not all ~log M.
    k[: min(n, m)] += 0.5 * q[: min(n, m)]
    k = F.normalize(k, dim=1)
    return q.to(device, dtype), k.to(device, dtype), torch.tensor(scale, device=device)


def groups(n, m, device, seed=1):
    """Group ids with rows and columns that have no positive (ids 5 and 6 appear on one side only)."""
    g = torch.Generator().manual_seed(seed)
    qg = torch.randint(0, 5, (n,), generator=g)
    kg = torch.randint(0, 5, (m,), generator=g)
    qg[::7] = 5
    kg[::5] = 6
    return qg.to(device), kg.to(device)


def run(q, k, scale, backend, weights=None, scale_grad=True, **kw):
    """Per-row (and per-column) losses and the gradients of q, k (and logit_scale) of a random weighting of them."""
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    scale = scale.detach().requires_grad_(scale_grad)
    out = pyops.contrastive_loss(q, k, scale, reduction="none", backend=backend, **kw)
    out = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(7)
    w = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in out]
    total = sum((o * wi).sum() for o, wi in zip(out, w))
    inputs = [q, k] + ([scale] if scale_grad else [])
    return out, torch.autograd.grad(total, inputs)


def check(q, k, scale, device, backend, dtype, scale_grad=True, **kw):
    out, grads = run(q, k, scale, backend, scale_grad=scale_grad, **kw)
    exact_out, exact_grads = run(q.double(), k.double(), scale.double(), "torch", scale_grad=scale_grad,
                                 **{n: v for n, v in kw.items()})
    ref_out, ref_grads = run(q, k, scale, "torch", scale_grad=scale_grad, **kw)
    assert out[0].device.type == device
    for name, o, e, r in zip(["row_loss", "col_loss"], out, exact_out, ref_out):
        assert torch.isfinite(o).all()
        assert_close(name, o, e, r, dtype)
    for name, gr, e, r in zip(["v_q", "v_k"], grads, exact_grads, ref_grads):
        assert_close(name, gr, e, r, dtype)
    if scale_grad:
        check_scale_grad(grads[2], exact_grads[2], ref_grads[2], q, k, scale, out, **kw)
    return out


def check_scale_grad(got, exact, same_precision, q, k, scale, out, labels=None, q_groups=None, k_groups=None,
                     symmetric=True):
    """v_logit_scale = sum_ij G_ij q_i.k_j is one scalar summed over N x M terms that largely cancel (each row of G
    sums to zero), so one fp32 rounding of each term matters more than the result's size says: the bound is the
    3x rule plus fp32 eps times sum_ij |G_ij q_i.k_j| (G = d loss / d S in float64), instead of a floor relative
    to |result|. Measured: pyops' CPU kernel is 1.2e-5 off at N = 19, M = 2100 where torch's fp32 autograd is
    7.5e-7 off (its errors happen to cancel) and the terms sum to ~740 in magnitude."""
    dots = q.double() @ k.double().T
    s = (scale.double() * dots).requires_grad_()
    qg, kg = reference.positive_groups(q.shape[0], k.shape[0], labels, q_groups, k_groups, q.device)
    pos = (qg[:, None] == kg[None, :]).double()

    def side(s, pos):  # the reference's per-row loss, written on S
        npos = pos.sum(1)
        loss = torch.logsumexp(s, 1) - (s * pos).sum(1) / npos.clamp_min(1)
        return torch.where(npos > 0, loss, torch.zeros_like(loss))

    losses = (side(s, pos), side(s.T, pos.T)) if symmetric else (side(s, pos),)
    g = torch.Generator().manual_seed(7)  # the weights run() draws
    w = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o).double() for o in out]
    (grad_s,) = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(losses, w)), [s])
    terms = (grad_s * dots).abs().sum().item()
    err = abs(got.double().item() - exact.item())
    bound = 3 * abs(same_precision.double().item() - exact.item()) + torch.finfo(torch.float32).eps * terms
    assert err <= bound, f"v_logit_scale: error {err:.3e} > bound {bound:.3e} (sum of |terms| {terms:.3e})"


# (N, M, D, positives): the diagonal, labels with N != M, groups with rows and columns that have no positive.
CASES = [(37, 37, 19, "diagonal"), (37, 53, 19, "labels"), (53, 37, 19, "labels"), (37, 53, 19, "groups")]


def positives(case, n, m, device):
    if case == "labels":
        return {"labels": torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(3)).to(device)}
    if case == "groups":
        qg, kg = groups(n, m, device)
        return {"q_groups": qg, "k_groups": kg}
    return {}


def with_chunks(backends, rows):
    """(device, backend, chunk rows): the native backends (csrc/contrastive.cpp's chunks) also with `rows`."""
    return [(d, b, c) for d, b in backends for c in ([0, rows] if b in ("cpu", "cuda") else [0])]


@pytest.mark.parametrize("device,backend,chunk_rows", with_chunks(BACKENDS, 8), indirect=["chunk_rows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m,d,case", CASES, ids=str)
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_reference(device, backend, chunk_rows, dtype, n, m, d, case, symmetric):
    # chunk_rows=8: several chunks and a ragged last one (37 = 4 * 8 + 5).
    if small(device, backend):
        n, m, d = min(n, 13), min(m, 13 if case == "diagonal" else 11), 9
    q, k, scale = make(n, m, d, dtype, device)
    check(q, k, scale, device, backend, dtype, symmetric=symmetric, **positives(case, n, m, device))


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_kernel_at_every_isa_level(cpu_isa_level, dtype, monkeypatch):
    # 45 columns: full vectors and a ragged tail at every width; 4 chunks of 9 rows (the last one ragged).
    monkeypatch.setenv("PYOPS_CONTRASTIVE_CHUNK_ROWS", "9")
    q, k, scale = make(31, 45, 17, dtype, "cpu", seed=8)
    check(q, k, scale.to(dtype), "cpu", "cpu", dtype, **positives("groups", 31, 45, "cpu"))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in BACKENDS if not small(d, b)])
@pytest.mark.parametrize("n,m", [(19, 2100), (2100, 19)], ids=str)
def test_many_columns_or_rows(device, backend, n, m):
    # Wide column blocks with a ragged last one (the CPU kernel's blocks of up to 1024 columns), and many rows.
    q, k, scale = make(n, m, 7, torch.float32, device, seed=9)
    check(q, k, scale, device, backend, torch.float32, **positives("groups", n, m, device))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logit_scale_100(device, backend, dtype):
    # CLIP's clamp: logits up to 100, so softmaxes are nearly one-hot and fp32 logits matter in bf16.
    n = 12 if small(device, backend) else 70
    q, k, _ = make(n, n, 32, dtype, device, seed=4)
    check(q, k, torch.tensor(100.0, device=device), device, backend, dtype)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_logit_scale_without_grad_and_non_contiguous(device, backend):
    n, m, d = (9, 11, 8) if small(device, backend) else (37, 45, 24)
    q, k, scale = make(2 * n, m, 2 * d, torch.float32, device)
    q = q[::2, ::2]  # strided rows and columns
    k = k[:, :d].t().contiguous().t()  # column-major
    assert not q.is_contiguous() and not k.is_contiguous()
    check(q, k, scale, device, backend, torch.float32, scale_grad=False, labels=torch.arange(n, device=device) % m)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_reductions(device, backend, reduction, symmetric):
    n, m, d = (10, 12, 8) if small(device, backend) else (30, 41, 16)
    q, k, scale = make(n, m, d, torch.float32, device)
    kw = dict(positives("groups", n, m, device), symmetric=symmetric, reduction=reduction)
    got = pyops.contrastive_loss(q, k, scale, backend=backend, **kw)
    want = reference.contrastive_loss(q.double(), k.double(), scale.double(), **kw)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_no_positive_anywhere_gives_zero(device, backend):
    q, k, scale = make(6, 7, 8, torch.float32, device)
    q, k, scale = (t.requires_grad_() for t in (q, k, scale))
    qg, kg = torch.zeros(6, dtype=torch.long, device=device), torch.ones(7, dtype=torch.long, device=device)
    loss = pyops.contrastive_loss(q, k, scale, q_groups=qg, k_groups=kg, backend=backend)
    loss.backward()
    assert loss.item() == 0
    for t in (q, k, scale):
        assert torch.isfinite(t.grad).all() and not t.grad.any()


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("n,m", [(0, 5), (4, 0), (0, 0)], ids=str)
def test_empty_sides(device, backend, n, m):
    q, k, scale = make(n, m, 3, torch.float32, device)
    q, k, scale = (t.requires_grad_() for t in (q, k, scale))
    zeros = lambda size: torch.zeros(size, dtype=torch.long, device=device)  # noqa: E731
    loss = pyops.contrastive_loss(q, k, scale, q_groups=zeros(n), k_groups=zeros(m), backend=backend)
    grads = torch.autograd.grad(loss, [q, k, scale])
    assert loss.item() == 0 and all(not g.any() for g in grads)
    assert [g.shape for g in grads] == [q.shape, k.shape, scale.shape]


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_float64(device, backend):
    if backend == "triton" or (device == "cuda" and backend == "cuda"):
        pytest.skip("float64 runs on the CPU and torch backends")
    q, k, scale = make(13, 17, 5, torch.float64, device)
    scale = scale.double()
    out, grads = run(q, k, scale, backend, labels=torch.arange(13, device=device))
    exact_out, exact_grads = run(q, k, scale, "torch", labels=torch.arange(13, device=device))
    for a, b in zip(list(out) + list(grads), list(exact_out) + list(exact_grads)):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("case", ["diagonal", "groups"])
def test_gradcheck_float64_cpu(symmetric, case, monkeypatch):
    monkeypatch.setenv("PYOPS_CONTRASTIVE_CHUNK_ROWS", "2")
    n = m = 5
    q, k, scale = make(n, m, 3, torch.float64, "cpu", scale=3.0)
    kw = dict(positives(case, n, m, "cpu"), symmetric=symmetric, reduction="none", backend="cpu")

    def fn(q, k, scale):
        return pyops.contrastive_loss(q, k, scale, **kw)

    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in (q, k, scale.double())])


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


def _op_args(device, symmetric):
    q, k, scale = make(9, 11, 6, torch.float32, device)
    qg, kg = groups(9, 11, device)
    return q, k, scale, qg, kg, symmetric


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in backend_params("contrastive_fwd")
                                            if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_opcheck(device, backend, symmetric):
    fwd = torch.ops.pyops.contrastive_fwd_triton if backend == "triton" else torch.ops.pyops.contrastive_fwd
    bwd = torch.ops.pyops.contrastive_bwd_triton if backend == "triton" else torch.ops.pyops.contrastive_bwd
    q, k, scale, qg, kg, sym = _op_args(device, symmetric)
    torch.library.opcheck(fwd, (q.requires_grad_(), k.requires_grad_(), scale.requires_grad_(), qg, kg, sym))
    row_loss, col_loss, row_lse, col_lse, row_npos, col_npos = fwd(q.detach(), k.detach(), scale.detach(), qg, kg, sym)
    v_row, v_col = torch.randn_like(row_loss), torch.randn_like(col_loss)
    torch.library.opcheck(bwd, (v_row, v_col, q.detach(), k.detach(), scale.detach(), qg, kg, row_lse, col_lse,
                                row_npos, col_npos, sym))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in BACKENDS if b != "triton" or d == "cuda"])
def test_torch_compile_fullgraph(device, backend):
    q, k, scale = make(9, 11, 6, torch.float32, device)
    labels = torch.arange(9, device=device)

    def step(q, k, scale):
        return pyops.contrastive_loss(q, k, scale, labels=labels, backend=backend) * 2

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.detach().requires_grad_() for t in (q, k, scale)]
        loss = fn(*leaves)
        results.append([loss] + list(torch.autograd.grad(loss, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------
# Determinism, the distributed building block, open_clip, memory.


@pytest.mark.parametrize("device,backend,chunk_rows", with_chunks([(d, b) for d, b in BACKENDS if b != "torch"], 16),
                         indirect=["chunk_rows"])
def test_bitwise_deterministic(device, backend, chunk_rows):
    n, m, d = (12, 10, 8) if small(device, backend) else (150, 120, 40)
    q, k, scale = make(n, m, d, torch.float32, device, seed=5)
    kw = positives("groups", n, m, device)
    first = run(q, k, scale, backend, **kw)
    second = run(q, k, scale, backend, **kw)
    for a, b in zip(list(first[0]) + list(first[1]), list(second[0]) + list(second[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_local_loss_is_the_row_loss(device, backend):
    q, k, scale = make(9, 14, 6, torch.float32, device)
    qg, kg = groups(9, 14, device)
    q.requires_grad_()
    rows, has = local_loss(q, k, scale, qg, kg, backend=backend)
    want = reference.contrastive_loss(q.double(), k.double(), scale.double(), q_groups=qg, k_groups=kg,
                                      symmetric=False, reduction="none")
    torch.testing.assert_close(rows.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(has, (qg[:, None] == kg[None, :]).any(1))
    rows.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_matches_open_clip_clip_loss():
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch (requirements-dev.txt) is not installed")
    from open_clip.loss import ClipLoss

    image, text, _ = make(24, 24, 16, torch.float64, "cpu", seed=6)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    results = []
    for fn in (lambda i, t, s: ClipLoss()(i, t, s),
               lambda i, t, s: pyops.contrastive_loss(i, t, s, backend="cpu")):
        leaves = [x.clone().requires_grad_() for x in (image, text, scale)]
        loss = fn(*leaves)
        results.append([loss] + list(torch.autograd.grad(loss, leaves)))
    assert open_clip is not None
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux") or _backend._NATIVE_ERROR is not None,
                    reason="reads /proc/self/statm; needs pyops._C")
def test_cpu_workspace_stays_bounded():
    """N = M = 16384: the logits alone would be 1 GiB; the op's extra peak memory (RSS) must stay under 128 MiB."""
    code = """
import torch, pyops
def status(field):  # MiB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) / 1024
torch.manual_seed(0)
n, d = 16384, 16
q = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
k = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
scale = torch.tensor(14.0, requires_grad=True)
pyops.contrastive_loss(q[:64], k[:64], scale, backend="cpu").backward()  # warm-up: lazy allocations, threads
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS:")
pyops.contrastive_loss(q, k, scale, backend="cpu").backward()
print(before, status("VmHWM:") - before)
"""
    # A fixed mmap threshold: every large buffer is mapped fresh and unmapped when freed, so the peak RSS counts
    # each one instead of hiding it in memory that glibc kept from earlier frees.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    env.pop("PYOPS_CONTRASTIVE_CHUNK_ROWS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra_mib = float(out.stdout.split()[-1])
    assert extra_mib < 128, f"peak extra memory {extra_mib:.0f} MiB"


# ----------------------------------------------------------------------------------------------------------
# Errors.


def _args(device="cpu"):
    q, k, scale = make(4, 4, 3, torch.float32, device)
    return q, k, scale


BAD_ARGUMENTS = [
    (lambda q, k, s: (q.long(), k, s, {}), TypeError, "q must be a floating-point"),
    (lambda q, k, s: (q, k.double(), s, {}), TypeError, "k has dtype"),
    (lambda q, k, s: (q, k[:, :2], s, {}), ValueError, r"k must have shape \(\*, 3\)"),
    (lambda q, k, s: (q[0], k, s, {}), ValueError, "q must have shape"),
    (lambda q, k, s: (q, k[:3], s, {}), ValueError, "q has 4 rows but k has 3: .* needs N == M"),
    (lambda q, k, s: (q, k, s.reshape(1, 1), {}), ValueError, "logit_scale must be a 0-d"),
    (lambda q, k, s: (q, k, torch.tensor(2), {}), TypeError, "logit_scale must be a floating-point"),
    (lambda q, k, s: (q, k, torch.tensor(float("inf")), {}), ValueError, "logit_scale has non-finite"),
    (lambda q, k, s: (q, k, torch.tensor(float("nan")), {}), ValueError, "logit_scale has non-finite"),
    (lambda q, k, s: (q.index_fill(0, torch.tensor([1]), float("nan")), k, s, {}), ValueError,
     "q has non-finite"),
    (lambda q, k, s: (q, k, s, {"labels": torch.tensor([0, 1, 2, 4])}), ValueError, r"labels must be in \[0, 4\)"),
    (lambda q, k, s: (q, k, s, {"labels": torch.tensor([0, -1, 2, 3])}), ValueError, r"labels must be in \[0, 4\)"),
    (lambda q, k, s: (q, k, s, {"labels": torch.zeros(4)}), TypeError, "labels must be an integer tensor"),
    (lambda q, k, s: (q, k, s, {"labels": torch.zeros(3, dtype=torch.long)}), ValueError, "labels must have shape"),
    (lambda q, k, s: (q, k, s, {"q_groups": torch.zeros(4, dtype=torch.long)}), ValueError,
     "q_groups and k_groups must be given together"),
    (lambda q, k, s: (q, k, s, {"labels": torch.zeros(4, dtype=torch.long),
                                "q_groups": torch.zeros(4, dtype=torch.long)}), ValueError,
     "pass labels or q_groups/k_groups, not both"),
    (lambda q, k, s: (q, k, s, {"q_groups": torch.zeros(4, dtype=torch.long),
                                "k_groups": torch.zeros(5, dtype=torch.long)}), ValueError, "k_groups must have"),
    (lambda q, k, s: (q, k, s, {"reduction": "avg"}), ValueError, "unknown reduction"),
    (lambda q, k, s: (q, k, s, {"symmetric": 1}), TypeError, "symmetric must be a bool"),
    (lambda q, k, s: (q, k.to("meta"), s, {}), ValueError, "k is on meta but q is on cpu"),
    (lambda q, k, s: ("q", k, s, {}), TypeError, "q must be a Tensor"),
]


@pytest.mark.parametrize("backend", ["cpu", "torch"] if _backend._NATIVE_ERROR is None else ["torch"])
@pytest.mark.parametrize("mutate,exc,match", BAD_ARGUMENTS)
def test_bad_arguments_raise_named_errors(backend, mutate, exc, match):
    q, k, s, kw = mutate(*_args())
    with pytest.raises(exc, match="contrastive_loss: " + match):
        pyops.contrastive_loss(q, k, s, backend=backend, **kw)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend"):
        pyops.contrastive_loss(*_args(), backend="tpu")


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
@pytest.mark.parametrize("call,exc,match", [
    (lambda q, k, s, g: torch.ops.pyops.contrastive_fwd(q, k, s, g.int(), g, True), TypeError, "qg must be int64"),
    (lambda q, k, s, g: torch.ops.pyops.contrastive_fwd(q, k, s, g, g[:3], True), ValueError, "kg must have shape"),
    (lambda q, k, s, g: torch.ops.pyops.contrastive_fwd(q.half(), k, s, g, g, True), TypeError, "k has dtype"),
    (lambda q, k, s, g: torch.ops.pyops.contrastive_fwd(q, k, s.expand(2), g, g, True), ValueError,
     "logit_scale must be a 0-d"),
    (lambda q, k, s, g: torch.ops.pyops.contrastive_bwd(g.float(), g.float()[:2], q, k, s, g, g, g.float(),
                                                        g.float(), g.float(), g.float(), True), ValueError,
     "v_col must have shape"),
])
def test_native_op_checks(call, exc, match):
    q, k, s = _args()
    with pytest.raises(exc, match="contrastive_(fwd|bwd): " + match):
        call(q, k, s, torch.arange(4))


# ----------------------------------------------------------------------------------------------------------
# The native op's C++ autograd kernel (csrc/losses_autograd.cpp) and the eager fast path.


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
@pytest.mark.parametrize("backend", ["cpu", None])
@pytest.mark.parametrize("mutate,exc,match", BAD_ARGUMENTS)
def test_bad_arguments_through_the_eager_fast_path(backend, mutate, exc, match):
    """With the backend choice cached (a valid call first), bad arguments reach the native op first: its C++ checks
    (or the fake kernels, for meta tensors) must reject them, and pyops' own error comes back."""
    pyops.contrastive_loss(*_args(), backend=backend)
    q, k, s, kw = mutate(*_args())
    with pytest.raises(exc, match="contrastive_loss: " + match):
        pyops.contrastive_loss(q, k, s, backend=backend, **kw)


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
def test_cpp_autograd_node():
    q, k, scale = make(5, 6, 4, torch.float64, "cpu", scale=3.0)
    qg, kg = groups(5, 6, "cpu")
    leaves = [t.requires_grad_() for t in (q, k, scale.double())]
    rows, cols = pyops.contrastive_loss(*leaves, q_groups=qg, k_groups=kg, reduction="none", backend="cpu")
    assert type(rows.grad_fn).__name__ != "BackwardCFunction"  # not a Python autograd.Function
    assert rows.grad_fn.name() == "ContrastiveBackward0" and cols.grad_fn is rows.grad_fn
    out = torch.ops.pyops.contrastive_fwd(*leaves, qg, kg, True)
    assert not any(t.requires_grad for t in out[2:])  # the log-sum-exps and counts have no gradient
    # Gradients through the native op; one loss alone (the other's gradient undefined: zeros).
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pyops.contrastive_fwd(*a, qg, kg, True)[:2], leaves)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pyops.contrastive_fwd(*a, qg, kg, True)[1], leaves)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.pyops.contrastive_fwd(*a, qg, kg, False)[0], leaves)
    # Without grad mode (or with nothing requiring grad) no node is built and the values are the same.
    with torch.no_grad():
        nograd = torch.ops.pyops.contrastive_fwd(*leaves, qg, kg, True)
    assert all(t.grad_fn is None and not t.requires_grad for t in nograd)
    with torch.inference_mode():
        inference = torch.ops.pyops.contrastive_fwd(*leaves, qg, kg, True)
    detached = torch.ops.pyops.contrastive_fwd(*[t.detach() for t in leaves], qg, kg, True)
    for a, b, c in zip(out, nograd, inference):
        torch.testing.assert_close(b, a.detach())
        torch.testing.assert_close(c, a.detach())
    assert detached[0].grad_fn is None


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
def test_double_backward_raises_a_clear_error():
    q, k, scale = make(5, 5, 4, torch.float64, "cpu", scale=3.0)
    leaves = [t.requires_grad_() for t in (q, k, scale.double())]
    grads = torch.autograd.grad(pyops.contrastive_loss(*leaves, backend="cpu"), leaves, create_graph=True)
    exact = torch.autograd.grad(reference.contrastive_loss(*leaves), leaves)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e)
    assert grads[0].requires_grad
    with pytest.raises(NotImplementedError, match="contrastive_loss: double backward is not supported"):
        torch.autograd.grad(grads[0].sum(), leaves)


@pytest.mark.skipif(_backend._NATIVE_ERROR is not None, reason="pyops._C is not built")
def test_saved_tensor_hooks_see_the_saved_tensors():
    """The C++ node saves through SavedVariable: saved-tensor hooks see q, k, logit_scale, the group ids and the
    four O(N + M) statistics, and the gradients through unpacked copies are the same."""
    q, k, scale = make(6, 6, 4, torch.float32, "cpu")
    leaves = [t.requires_grad_() for t in (q, k, scale)]
    saved = []

    def pack(t):
        saved.append(t)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pyops.contrastive_loss(*leaves, backend="cpu")
    ptrs = {t.data_ptr() for t in saved}
    assert len(saved) == 9 and q.data_ptr() in ptrs and k.data_ptr() in ptrs
    got = torch.autograd.grad(loss, leaves)
    want = torch.autograd.grad(pyops.contrastive_loss(*leaves, backend="cpu"), leaves)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
