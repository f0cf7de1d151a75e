"""Contrastive loss across processes: 2 gloo ranks holding unequal shares of the batch reproduce the
single-process float64 loss and gradients (q, k, logit_scale) over the global batch."""

import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyops
from pyops.contrastive_dist import distributed_contrastive_loss
from pyops.reference import contrastive as reference

WORLD, D, SCALE = 2, 16, 2.5
# Per mode: rows per rank, columns per rank. The diagonal only needs equal GLOBAL counts.
# "empty rank": rank 0 holds no rows (it still takes part in every collective and in the backward).
SIZES = {"diagonal": ([5, 7], [7, 5]), "labels": ([5, 7], [6, 3]), "groups": ([5, 7], [4, 6]),
         "empty rank": ([0, 12], [6, 3])}
CASES = [(mode, symmetric, reduction) for mode in SIZES for symmetric in (True, False)
         for reduction in ("mean", "sum", "none")]


def global_data(mode):
    """The global batch; labels leave columns 0 and 4 without a row (column losses without positive); groups
    leave rows of group 5 and columns of group 7 without a positive."""
    g = torch.Generator().manual_seed(list(SIZES).index(mode))
    n, m = sum(SIZES[mode][0]), sum(SIZES[mode][1])
    out = {"q": torch.randn(n, D, generator=g, dtype=torch.float64),
           "k": torch.randn(m, D, generator=g, dtype=torch.float64),
           "w_rows": torch.rand(n, generator=g, dtype=torch.float64),  # weights of the "none" outputs' loss
           "w_cols": torch.rand(m, generator=g, dtype=torch.float64)}
    if mode in ("labels", "empty rank"):
        out["labels"] = torch.tensor([1, 2, 3, 5, 6, 7, 8, 1, 2, 3, 5, 8])
    if mode == "groups":
        out["q_groups"] = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 5, 3, 3])
        out["k_groups"] = torch.tensor([3, 1, 0, 7, 4, 2, 1, 1, 0, 7])
    return out


def weighted(out, w_rows, w_cols, symmetric):
    """A scalar of the "none" outputs whose gradient checks every per-row (per-column) loss's gradient."""
    return (out[0] * w_rows).sum() + (out[1] * w_cols).sum() if symmetric else (out * w_rows).sum()


def local_loss(q, k, logit_scale, qg, kg):
    rows = reference.contrastive_loss(q, k, logit_scale, q_groups=qg, k_groups=kg, symmetric=False, reduction="none")
    return rows, torch.isin(qg, kg)


def _worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results = []
    for (mode, symmetric, reduction), public in [(c, p) for p in (False, True) for c in CASES]:
        data = global_data(mode)
        (n_sizes, m_sizes), (q_off, k_off) = SIZES[mode], (sum(SIZES[mode][0][:rank]), sum(SIZES[mode][1][:rank]))
        rows, cols = slice(q_off, q_off + n_sizes[rank]), slice(k_off, k_off + m_sizes[rank])
        q, k = data["q"][rows].clone().requires_grad_(), data["k"][cols].clone().requires_grad_()
        scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
        kwargs = {"labels": data["labels"][rows]} if "labels" in data else (
            {"q_groups": data["q_groups"][rows], "k_groups": data["k_groups"][cols]} if mode == "groups" else {})
        if public:  # the same through the public op and its CPU kernels
            out = pyops.contrastive_loss(q, k, scale, symmetric=symmetric, reduction=reduction,
                                         group=dist.group.WORLD, backend="cpu", **kwargs)
        else:
            out = distributed_contrastive_loss(q, k, scale, symmetric=symmetric, reduction=reduction,
                                               group=dist.group.WORLD, local_loss=local_loss, **kwargs)
        loss = weighted(out, data["w_rows"][rows], data["w_cols"][cols], symmetric) if reduction == "none" else out
        loss.backward()
        value = tuple(t.detach() for t in out) if isinstance(out, tuple) else out.detach()
        results.append({"value": value, "q": q.grad, "k": k.grad, "scale": scale.grad})
    # bf16 rows: the gather and the fp32 sum of the ranks' gradient shares keep the input dtype at the ends.
    data, rows = global_data("diagonal"), slice(5 * rank, 5 + 7 * rank)
    q, k = data["q"][rows].bfloat16().requires_grad_(), data["k"][rows].bfloat16().requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    distributed_contrastive_loss(q, k, scale, group=dist.group.WORLD, local_loss=local_loss).backward()
    low_precision = {"q": q.grad, "k": k.grad, "scale": scale.grad}
    # A bad call fails on every rank alike (no rank is left waiting in a collective).
    try:
        distributed_contrastive_loss(torch.zeros(3 + rank, D), torch.zeros(3, D), torch.tensor(1.0),
                                     group=dist.group.WORLD, local_loss=local_loss)
        error = None
    except ValueError as e:
        error = str(e)
    torch.save({"results": results, "error": error, "bf16": low_precision}, out_file + str(rank))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(_worker, args=(str(tmp / "init"), str(tmp / "rank")), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the distributed workers did not finish in 120 s")
    return [torch.load(tmp / f"rank{r}", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("public", [False, True], ids=["reference local loss", "pyops.contrastive_loss cpu"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{m}-{'sym' if s else 'rows'}-{r}" for m, s, r in CASES])
def test_matches_single_process(ranks, case, public):
    mode, symmetric, reduction = CASES[case]
    data = global_data(mode)
    q, k = data["q"].clone().requires_grad_(), data["k"].clone().requires_grad_()
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    kwargs = {key: data[key] for key in ("labels", "q_groups", "k_groups") if key in data}
    out = reference.contrastive_loss(q, k, scale, symmetric=symmetric, reduction=reduction, **kwargs)
    (weighted(out, data["w_rows"], data["w_cols"], symmetric) if reduction == "none" else out).backward()
    close = dict(rtol=0, atol=1e-10)
    for rank, result in enumerate(ranks):
        got = result["results"][case + len(CASES) * public]
        n_sizes, m_sizes = SIZES[mode]
        rows = slice(sum(n_sizes[:rank]), sum(n_sizes[:rank + 1]))
        cols = slice(sum(m_sizes[:rank]), sum(m_sizes[:rank + 1]))
        if reduction != "none":
            torch.testing.assert_close(got["value"], out.detach(), **close)  # the global value on every rank
        elif symmetric:
            torch.testing.assert_close(got["value"][0], out[0].detach()[rows], **close)
            torch.testing.assert_close(got["value"][1], out[1].detach()[cols], **close)
        else:
            torch.testing.assert_close(got["value"], out.detach()[rows], **close)
        torch.testing.assert_close(got["q"], q.grad[rows], **close)
        torch.testing.assert_close(got["k"], k.grad[cols], **close)
        torch.testing.assert_close(got["scale"], scale.grad, **close)  # the full gradient on every rank
    assert q.grad.abs().max() > 1e-3 and k.grad.abs().max() > 1e-3 and scale.grad.abs() > 1e-3


def test_default_diagonal_needs_equal_global_counts(ranks):
    for result in ranks:
        assert result["error"] == ("contrastive_loss: the default (diagonal) positives need as many rows as columns "
                                   "in the global batch, got 7 rows and 6 columns (pass labels or groups)")


def test_bf16_rows(ranks):
    data = global_data("diagonal")
    q, k = data["q"].bfloat16().requires_grad_(), data["k"].bfloat16().requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    reference.contrastive_loss(q, k, scale).backward()
    for rank, result in enumerate(ranks):
        got, rows = result["bf16"], slice(5 * rank, 5 + 7 * rank)
        assert got["q"].dtype == got["k"].dtype == torch.bfloat16 and got["scale"].dtype == torch.float32
        torch.testing.assert_close(got["q"], q.grad[rows], rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(got["k"], k.grad[rows], rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(got["scale"], scale.grad, rtol=1e-5, atol=1e-6)
