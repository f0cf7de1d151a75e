"""Kernel-level tests of pyops::contrastive_{fwd,bwd}_triton against the float64 reference (on CPU tensors they
run in Triton's interpreter, switched on by conftest.py; sizes are tiny on purpose)."""

import pytest
import torch
from utils import DEVICES, assert_close

import pyops  # noqa: F401  (imports triton_kernels.contrastive when Triton is installed)
from pyops.reference import contrastive as reference

triton_contrastive = pytest.importorskip("pyops.triton_kernels.contrastive")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 16-wide tiles everywhere: (37, 53, 19) spans 3 row blocks, 4 column tiles, 2 D steps and 2 output D chunks.
SMALL_BLOCKS = (16, 16, 16, 16)
# (N, M, D, structure, symmetric) beyond the full structure x symmetric grid at (37, 53, 19): a single element,
# D smaller than a dot step, D spanning several D steps and output chunks with N > M.
MORE_CASES = [(1, 1, 1, "diag", True), (5, 40, 3, "labels", False), (20, 17, 50, "groups", True)]


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(triton_contrastive, "BLOCK_OVERRIDE", SMALL_BLOCKS)


def make_case(n, m, d, dtype, structure, device, seed=0, scale=2.0, normalize=False):
    """Random q [N, D], k [M, D] (rounded to dtype), logit_scale, and the group ids of `structure`:
    "diag": CLIP's diagonal (rows / columns past min(N, M) have no positive); "labels": one column per row
    (columns nobody points at have none); "groups": SupCon groups where some rows and columns have none."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = torch.randn(m, d, generator=g, dtype=torch.float64)
    if normalize:
        q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    else:
        q, k = q / d ** 0.5, k / d ** 0.5
    if structure == "diag":
        qg, kg = torch.arange(n), torch.arange(m)
    elif structure == "labels":
        qg, kg = torch.randint(0, m, (n,), generator=g), torch.arange(m)
    else:
        qg, kg = torch.randint(0, 6, (n,), generator=g), torch.randint(2, 9, (m,), generator=g)
    to = lambda t: t.to(device=device, dtype=dtype)
    return to(q), to(k), torch.tensor(scale, device=device), qg.to(device), kg.to(device)


def reference_sides(q, k, logit_scale, qg, kg, symmetric, math):
    """(row_loss, col_loss, row_lse, col_lse, row_npos, col_npos) of the reference in `math` precision."""
    losses = reference.contrastive_loss(q, k, logit_scale, q_groups=qg, k_groups=kg, symmetric=symmetric,
                                        reduction="none")
    row_loss, col_loss = losses if symmetric else (losses, None)
    s = logit_scale.to(math) * (q.to(math) @ k.to(math).T)
    pos = (qg[:, None] == kg[None, :]).to(math)
    return (row_loss, col_loss, torch.logsumexp(s, 1), torch.logsumexp(s.T, 1) if symmetric else None,
            pos.sum(1), pos.sum(0) if symmetric else None)


def reference_grads(q, k, logit_scale, qg, kg, symmetric, v_row, v_col, math):
    """Autograd of sum(v_row * row_loss) + sum(v_col * col_loss) through the reference, leaves in the given
    dtypes (math = float64: the exact result; math = float32: torch's own same-precision result)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, logit_scale)]
    losses = reference.contrastive_loss(*leaves, q_groups=qg, k_groups=kg, symmetric=symmetric, reduction="none")
    row_loss, col_loss = losses if symmetric else (losses, None)
    total = (row_loss * v_row.to(math)).sum()
    if symmetric:
        total = total + (col_loss * v_col.to(math)).sum()
    return torch.autograd.grad(total, leaves)


def run_triton(q, k, logit_scale, qg, kg, symmetric, v_row, v_col):
    fwd = torch.ops.pyops.contrastive_fwd_triton(q, k, logit_scale, qg, kg, symmetric)
    _, _, row_lse, col_lse, row_npos, col_npos = fwd
    bwd = torch.ops.pyops.contrastive_bwd_triton(v_row, v_col, q, k, logit_scale, qg, kg, row_lse, col_lse,
                                                 row_npos, col_npos, symmetric)
    return fwd, bwd


def check_case(q, k, logit_scale, qg, kg, symmetric, dtype, v_scale=1.0, seed=1):
    n, m = q.shape[0], k.shape[0]
    g = torch.Generator().manual_seed(seed)
    # Upstream grads are nonzero everywhere: the kernel must ignore them on rows / columns without a positive.
    v_row = (v_scale * torch.randn(n, generator=g)).to(q.device)
    v_col = (v_scale * torch.randn(m, generator=g)).to(q.device) if symmetric else v_row.new_empty(0)
    fwd, bwd = run_triton(q, k, logit_scale, qg, kg, symmetric, v_row, v_col)

    cpu = lambda t: t.detach().cpu()
    args = [cpu(q), cpu(k), cpu(logit_scale), cpu(qg), cpu(kg)]
    exact = reference_sides(args[0].double(), args[1].double(), args[2].double(), *args[3:], symmetric,
                            torch.float64)
    same = reference_sides(*args, symmetric, torch.float32)
    names = ["row_loss", "col_loss", "row_lse", "col_lse", "row_npos", "col_npos"]
    for name, got, ex, sp in zip(names, fwd, exact, same):
        assert got.dtype == torch.float32 and got.device == q.device, name
        if ex is None:  # col_* when not symmetric
            assert got.shape == (0,), name
        elif "npos" in name:
            assert torch.equal(cpu(got).double(), ex), name
        else:
            assert_close(name, cpu(got), ex, sp, dtype)

    exact_g = reference_grads(args[0].double(), args[1].double(), args[2].double(), *args[3:], symmetric,
                              cpu(v_row), cpu(v_col), torch.float64)
    same_g = reference_grads(*args, symmetric, cpu(v_row), cpu(v_col), torch.float32)
    for name, got, ex, sp in zip(["v_q", "v_k", "v_logit_scale"], bwd, exact_g, same_g):
        assert got.device == q.device, name
        # v_scale rescales everything to O(1), so tiny upstream gradients are held to the same relative bound.
        assert_close(name, cpu(got) / v_scale, ex / v_scale, sp / v_scale, dtype)
    return fwd, bwd


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("structure", ["diag", "labels", "groups"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_reference(small_blocks, device, dtype, structure, symmetric):
    """Ragged sizes over several tiles in every dimension; rows and / or columns without a positive."""
    q, k, ls, qg, kg = make_case(37, 53, 19, dtype, structure, device)
    check_case(q, k, ls, qg, kg, symmetric, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m,d,structure,symmetric", MORE_CASES, ids=str)
def test_shapes(small_blocks, device, dtype, n, m, d, structure, symmetric):
    q, k, ls, qg, kg = make_case(n, m, d, dtype, structure, device, seed=2)
    check_case(q, k, ls, qg, kg, symmetric, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_default_blocks(device, dtype):
    """The host helper's own block sizes (larger than SMALL_BLOCKS; D not a multiple of the D step)."""
    q, k, ls, qg, kg = make_case(45, 70, 40, dtype, "groups", device, seed=3)
    check_case(q, k, ls, qg, kg, True, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_large_logit_scale_bf16(small_blocks, device):
    """CLIP's clamp: logit_scale = 100 on unit vectors, logits in [-100, 100], bf16 inputs."""
    q, k, ls, qg, kg = make_case(37, 37, 24, torch.bfloat16, "diag", device, seed=4, scale=100.0, normalize=True)
    check_case(q, k, ls, qg, kg, True, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_upstream_grads_fp16(small_blocks, device):
    """A "mean" over many rows makes v ~ 1e-5: G = v (p - pos / npos) would be fp16-subnormal in the 16-bit G @ k
    dot; the kernel scales G by a power of two first, so the gradients keep their relative accuracy."""
    q, k, ls, qg, kg = make_case(37, 53, 19, torch.float16, "groups", device, seed=5)
    check_case(q, k, ls, qg, kg, True, torch.float16, v_scale=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(small_blocks, device):
    g = torch.Generator().manual_seed(6)
    q = (torch.randn(19, 37, generator=g) / 19 ** 0.5).to(device).T  # [37, 19], strides (1, 37)
    k = (torch.randn(53, 38, generator=g) / 19 ** 0.5).to(device)[:, ::2]  # [53, 19], strides (38, 2)
    qg, kg = torch.randint(0, 5, (37,), generator=g).to(device), (torch.arange(53) % 7).to(device)
    check_case(q, k, torch.tensor(3.0, device=device), qg, kg, True, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_group_ids(small_blocks, device):
    """Group ids beyond int32 whose low 32 bits all agree: the kernels must compare the full values."""
    q, k, ls, qg, kg = make_case(37, 53, 19, torch.float32, "groups", device, seed=9)
    check_case(q, k, ls, qg * 2 ** 32 - 2 ** 62, kg * 2 ** 32 - 2 ** 62, True, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic(small_blocks, device, dtype):
    q, k, ls, qg, kg = make_case(37, 53, 19, dtype, "groups", device, seed=7)
    v_row, v_col = torch.randn(37).to(device), torch.randn(53).to(device)
    first = run_triton(q, k, ls, qg, kg, True, v_row, v_col)
    second = run_triton(q, k, ls, qg, kg, True, v_row, v_col)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the interpreter's numpy log(0) = -inf
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m", [(0, 5), (4, 0)], ids=str)
def test_empty_side(device, n, m):
    """No columns: lse = -inf, npos = 0, loss = 0 and zero gradients (the reference's logsumexp over nothing)."""
    q, k, ls, qg, kg = make_case(n, m, 8, torch.float32, "groups", device)
    (row_loss, col_loss, row_lse, col_lse, row_npos, col_npos), (v_q, v_k, v_ls) = run_triton(
        q, k, ls, qg, kg, True, torch.ones(n, device=device), torch.ones(m, device=device))
    assert row_loss.shape == row_lse.shape == row_npos.shape == (n,)
    assert col_loss.shape == col_lse.shape == col_npos.shape == (m,)
    for loss, lse, npos in ((row_loss, row_lse, row_npos), (col_loss, col_lse, col_npos)):
        assert (loss == 0).all() and (npos == 0).all() and (lse == float("-inf")).all()
    assert v_q.shape == (n, 8) and v_k.shape == (m, 8) and (v_q == 0).all() and (v_k == 0).all()
    assert v_ls.shape == () and v_ls.item() == 0


def test_float64_is_rejected():
    q = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="contrastive_fwd_triton: float64"):
        torch.ops.pyops.contrastive_fwd_triton(q, q, torch.tensor(1.0), torch.arange(3), torch.arange(3), True)


@pytest.mark.parametrize("device", DEVICES)
def test_autotuned_launch(monkeypatch, device):
    """The opt-in autotuned launchers (grids from the chosen config). On CPU each tuner gets one small config:
    the interpreter cannot time kernels, and one config is launched without timing."""
    monkeypatch.setattr(triton_contrastive, "AUTOTUNE", True)
    if device == "cpu":
        monkeypatch.setattr(triton_contrastive, "_tuned", lambda x: True)
        monkeypatch.setattr(triton_contrastive._FWD_TUNED, "configs", triton_contrastive._tune_configs(
            [(16, 32, 16, 1, 1)]))
        monkeypatch.setattr(triton_contrastive._BWD_TUNED, "configs", triton_contrastive._tune_configs(
            [(32, 16, 16, 16, 1, 1)]))
    q, k, ls, qg, kg = make_case(37, 53, 19, torch.bfloat16, "groups", device, seed=8)
    check_case(q, k, ls, qg, kg, True, torch.bfloat16)


# Registration: opcheck and torch.compile (CUDA only: fake tensors cannot run Triton's CPU interpreter).
CUDA = ["cuda"] if torch.cuda.is_available() else []


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("symmetric", [True, False])
def test_opcheck(device, symmetric):
    q, k, ls, qg, kg = make_case(9, 12, 8, torch.float32, "groups", device)
    fwd = torch.ops.pyops.contrastive_fwd_triton(q, k, ls, qg, kg, symmetric)
    v_row, v_col = torch.randn(9, device=device), torch.randn(12 if symmetric else 0, device=device)
    torch.library.opcheck(torch.ops.pyops.contrastive_fwd_triton, (q, k, ls, qg, kg, symmetric))
    torch.library.opcheck(torch.ops.pyops.contrastive_bwd_triton,
                          (v_row, v_col, q, k, ls, qg, kg, *fwd[2:], symmetric))


@pytest.mark.parametrize("device", CUDA)
def test_torch_compile_fullgraph(device):
    q, k, ls, qg, kg = make_case(9, 12, 8, torch.float32, "groups", device)
    v_row, v_col = torch.randn(9, device=device), torch.randn(12, device=device)
    step = lambda *args: run_triton(*args)  # noqa: E731
    compiled = torch.compile(step, fullgraph=True)
    eager = step(q, k, ls, qg, kg, True, v_row, v_col)
    got = compiled(q, k, ls, qg, kg, True, v_row, v_col)
    for a, b in zip(got[0] + got[1], eager[0] + eager[1]):
        torch.testing.assert_close(a, b)
