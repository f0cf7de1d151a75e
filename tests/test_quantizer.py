"""VectorQuantizer: forward values, gradients (straight-through, rotation trick), EMA / SimVQ codebooks,
usage statistics, dead-code restart, k-means init, errors and the distributed modes (gloo, 2 processes)."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from utils import assert_close

from pyops import VectorQuantizer
from pyops.quantizer import pack_keys, unpack_indices

DIM, K = 8, 16


def brute_force(x, codes):  # [N, D], [K, D] -> [N]
    return torch.cdist(x.double(), codes.double()).argmin(-1)


@pytest.mark.parametrize("kind", ["learned", "ema", "simvq"])
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_forward_shapes_and_values(kind, metric):
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook=kind, metric=metric)
    x = torch.randn(2, 5, DIM)
    codes = vq.codebook.detach().clone()  # before the EMA update
    q, idx, loss = vq(x)
    assert q.shape == x.shape and q.dtype == x.dtype
    assert idx.shape == (2, 5) and idx.dtype == torch.long
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.equal(q.detach(), codes[idx])  # a gather: exact
    flat = x.reshape(-1, DIM)
    if metric == "l2":
        want = brute_force(flat, codes)
    elif metric == "cosine":
        want = (F.normalize(flat, dim=-1) @ codes.T).argmax(-1)
    else:
        want = (flat @ codes.T).argmax(-1)
    assert torch.equal(idx.reshape(-1), want)


def test_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K)
    x = torch.randn(12, DIM, requires_grad=True)
    q, _, _ = vq(x)
    g = torch.randn_like(q)
    q.backward(g)
    torch.testing.assert_close(x.grad, g)  # dL/dx == dL/dquantized
    assert vq.embed.grad is None or not vq.embed.grad.any()


def test_loss_gradients_commitment_and_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, commitment_weight=0.3)
    x = torch.randn(12, DIM, requires_grad=True)
    q, idx, loss = vq(x)
    loss.backward()
    codes = vq.embed.detach()
    diff = x.detach() - codes[idx]
    torch.testing.assert_close(x.grad, 0.3 * 2 * diff / x.numel())  # commitment only on x
    want = torch.zeros_like(codes).index_add_(0, idx, -2 * diff / x.numel())  # codebook loss on codes
    torch.testing.assert_close(vq.embed.grad, want)
    unchosen = torch.ones(K, dtype=torch.bool)
    unchosen[idx] = False
    assert not vq.embed.grad[unchosen].any() and vq.embed.grad[~unchosen].abs().sum(-1).gt(0).all()


def test_rotation_trick():
    torch.manual_seed(0)
    x = torch.randn(12, DIM, requires_grad=True)
    g = torch.randn(12, DIM)
    grads = {}
    for rot in (False, True):
        torch.manual_seed(1)
        vq = VectorQuantizer(DIM, K, rotation_trick=rot)
        q, idx, _ = vq(x)
        assert torch.equal(q.detach(), vq.embed.detach()[idx])  # the forward value is q exactly
        grads[rot] = torch.autograd.grad(q, x, g)[0]
    assert torch.isfinite(grads[True]).all()
    assert not torch.allclose(grads[True], grads[False])
    # Against the paper's explicit D x D form: dL/de = lambda * R^T g, R = I - 2ww^T + 2vu^T.
    e, q = x.detach().double(), vq.embed.detach()[idx].double()
    u, v = F.normalize(e, dim=-1), F.normalize(q, dim=-1)
    w = F.normalize(u + v, dim=-1)
    rot = torch.eye(DIM, dtype=torch.float64) - 2 * w[:, :, None] * w[:, None, :] + 2 * v[:, :, None] * u[:, None, :]
    lam = q.norm(dim=-1, keepdim=True) / e.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(lam * torch.einsum("nij,nj->ni", rot, e), q)  # lambda R e = q
    want = lam * torch.einsum("nij,ni->nj", rot, g.double())
    # The 3x rule: the fused two-dot-product form in fp32 against the same explicit form run in fp32.
    e32, q32 = x.detach(), vq.embed.detach()[idx]
    u32, v32 = F.normalize(e32, dim=-1), F.normalize(q32, dim=-1)
    w32 = F.normalize(u32 + v32, dim=-1)
    rot32 = torch.eye(DIM) - 2 * w32[:, :, None] * w32[:, None, :] + 2 * v32[:, :, None] * u32[:, None, :]
    lam32 = q32.norm(dim=-1, keepdim=True) / e32.norm(dim=-1, keepdim=True)
    assert_close("v_x (rotation trick)", grads[True], want, lam32 * torch.einsum("nij,ni->nj", rot32, g),
                 torch.float32)


def test_ema_update_matches_float64_one_hot_reference():
    torch.manual_seed(0)
    decay, eps = 0.9, 1e-5
    vq = VectorQuantizer(DIM, K, codebook="ema", ema_decay=decay, ema_eps=eps)
    size, sums, embed = vq.cluster_size.double(), vq.embed_sum.double(), vq.embed.double()
    for _ in range(3):
        x = torch.randn(40, DIM)
        _, idx, loss = vq(x)
        assert torch.equal(idx, brute_force(x, embed.float()))
        one_hot = F.one_hot(idx, K).double()  # [N, K]
        size = decay * size + (1 - decay) * one_hot.sum(0)
        sums = decay * sums + (1 - decay) * one_hot.T @ x.double()
        n = size.sum()
        embed = sums / ((size + eps) / (n + K * eps) * n)[:, None]
    torch.testing.assert_close(vq.cluster_size.double(), size)
    torch.testing.assert_close(vq.embed_sum.double(), sums)
    torch.testing.assert_close(vq.embed.double(), embed)
    assert all(b.dtype == torch.float32 for b in (vq.embed, vq.cluster_size, vq.embed_sum))


def test_simvq_trains_the_map_not_the_basis():
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook="simvq")
    assert "basis" in dict(vq.named_buffers()) and [n for n, _ in vq.named_parameters()] == ["proj.weight"]
    torch.testing.assert_close(vq.codebook, vq.basis @ vq.proj.weight.T)
    basis, weight = vq.basis.clone(), vq.proj.weight.detach().clone()
    opt = torch.optim.SGD(vq.parameters(), lr=0.5)
    x = torch.randn(64, DIM)
    losses = []
    for _ in range(5):
        _, _, loss = vq(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.equal(vq.basis, basis)
    assert not torch.equal(vq.proj.weight, weight)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["learned", "ema", "simvq"])
def test_dead_codes_restart_from_batch_features(kind):
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook=kind, dead_code_threshold=1, usage_window=1)
    dead = torch.arange(8, 16)
    with torch.no_grad():  # push half the codes far away so no row picks them
        vq._set_codes(dead, vq.codebook[dead].float() + 1e3)
    x = torch.randn(32, DIM)
    _, idx, _ = vq(x)
    assert not torch.isin(idx, dead).any()
    codes = vq.codebook.detach()
    restarted = vq.usage()["counts"] < 1  # the forced dead codes and any live code this batch missed
    assert restarted[dead].all()
    # Every restarted code is now one of the batch rows (EMA moved the live codes, not the restarted ones).
    dist_to_batch = (codes[restarted].double()[:, None] - x.double()[None]).norm(dim=-1).min(-1).values
    if kind == "simvq":  # code = W basis, basis from an fp32 least-squares solve: off by ~cond(W) fp32 roundings
        w = vq.proj.weight.detach().double()
        tol = 4 * torch.linalg.cond(w).item() * 2.0 ** -24 * x.double().norm(dim=-1).max().item()
    else:  # the rows themselves
        tol = 0.0
    assert dist_to_batch.max() <= tol, (dist_to_batch.max(), tol)
    assert (vq.code_age[restarted] == 0).all() and (vq.code_age[~restarted] == 1).all()


def test_usage_statistics_by_hand():
    vq = VectorQuantizer(4, 4, usage_window=2)
    with torch.no_grad():
        vq.embed.copy_(torch.eye(4) * 10)
    codes = vq.embed.detach()
    for step_idx in ([0, 0, 1, 1], [0, 2, 2, 2], [0, 0, 0, 2]):  # the first step leaves the window
        vq(codes[torch.tensor(step_idx)])
    usage = vq.usage()
    torch.testing.assert_close(usage["counts"], torch.tensor([4.0, 0.0, 4.0, 0.0]))
    assert usage["fraction_used"].item() == 0.5
    assert math.isclose(usage["perplexity"].item(), 2.0, rel_tol=1e-6)  # two codes, equal mass


def test_kmeans_init():
    torch.manual_seed(0)
    centres = torch.randn(4, DIM) * 5
    x = (centres[torch.arange(200) % 4] + 0.1 * torch.randn(200, DIM))
    vq = VectorQuantizer(DIM, 4, kmeans_init=True, kmeans_iters=10)
    before = vq.embed.detach().clone()
    err_random = torch.cdist(x, before).min(-1).values.pow(2).mean()
    _, idx, _ = vq(x)
    codes = vq.embed.detach()
    assert bool(vq.initted) and not torch.equal(codes, before)
    # A k-means fixed point: each used code is the mean of the rows assigned to it.
    for k in idx.unique():
        rows = x[idx == k]
        assert_close(f"code {int(k)}", codes[k], rows.double().mean(0), rows.mean(0), torch.float32)
    assert torch.cdist(x, codes).min(-1).values.pow(2).mean() < 0.1 * err_random
    vq(x + 1)  # no second init
    torch.testing.assert_close(vq.embed.detach(), codes)


def test_eval_mode_changes_no_buffers():
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook="ema", kmeans_init=True, dead_code_threshold=1, usage_window=1).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(32, DIM))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bf16_input_keeps_fp32_statistics():
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook="ema").to(torch.bfloat16)
    assert vq.embed.dtype == torch.float32 and vq.cluster_size.dtype == torch.float32
    x = torch.randn(3, 4, DIM, dtype=torch.bfloat16, requires_grad=True)
    codes = vq.embed.clone()
    q, idx, loss = vq(x)
    assert q.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(q.detach(), codes[idx].to(torch.bfloat16), atol=0, rtol=0)
    q.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    vq2 = VectorQuantizer(DIM, K)  # learned fp32 codes, bf16 input
    q2, _, loss2 = vq2(x)
    loss2.backward()
    assert q2.dtype == torch.bfloat16 and vq2.embed.grad.dtype == torch.float32


@pytest.mark.parametrize("kind", ["learned", "ema", "simvq"])
def test_empty_batch(kind):
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook=kind, dead_code_threshold=1, usage_window=1)
    x = torch.randn(2, 0, DIM, requires_grad=True)
    q, idx, loss = vq(x)
    assert q.shape == x.shape and idx.shape == (2, 0) and loss.item() == 0.0
    (q.sum() + loss).backward()
    assert x.grad.shape == x.shape and all(torch.isfinite(b).all() for b in vq.buffers() if b.is_floating_point())


def test_bad_inputs():
    vq = VectorQuantizer(DIM, K)
    with pytest.raises(ValueError, match=r"VectorQuantizer: x must have shape \(\.\.\., dim\) with dim=8"):
        vq(torch.randn(3, DIM + 1))
    with pytest.raises(TypeError, match="VectorQuantizer: x must be a floating-point tensor, got torch.int64"):
        vq(torch.ones(3, DIM, dtype=torch.long))
    with pytest.raises(TypeError, match="VectorQuantizer: x must be a Tensor, got list"):
        vq([0.0] * DIM)
    with pytest.raises(ValueError, match="VectorQuantizer: unknown codebook 'nope'"):
        VectorQuantizer(DIM, K, codebook="nope")
    with pytest.raises(ValueError, match="VectorQuantizer: unknown metric 'l1'"):
        VectorQuantizer(DIM, K, metric="l1")
    with pytest.raises(ValueError, match="VectorQuantizer: unknown distributed 'ddp'"):
        VectorQuantizer(DIM, K, distributed="ddp")
    with pytest.raises(ValueError, match="VectorQuantizer: codebook_size=0 is out of range"):
        VectorQuantizer(DIM, 0)
    with pytest.raises(TypeError, match="VectorQuantizer: dim must be an int"):
        VectorQuantizer(8.0, K)
    with pytest.raises(ValueError, match=r"VectorQuantizer: ema_decay=1.0 is out of range \[0, 1\)"):
        VectorQuantizer(DIM, K, ema_decay=1.0)
    # Not an argument error: the environment cannot run the requested mode (the policy's RuntimeError).
    with pytest.raises(RuntimeError, match="process group"):
        VectorQuantizer(DIM, K, distributed="sharded")


@pytest.mark.parametrize("kind", ["learned", "ema", "simvq"])
def test_device_mismatch_and_dtype_errors(kind):
    """x on another device than the codebook is a ValueError naming both, raised before any search or update
    ("meta" stands in for a second device); the search and segment sum the module calls check the same."""
    vq = VectorQuantizer(DIM, K, codebook=kind)
    x = torch.randn(6, DIM)
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    with pytest.raises(ValueError, match="^VectorQuantizer: x is on meta but codebook is on cpu$"):
        vq(x.to("meta"))
    with pytest.raises(ValueError, match="^VectorQuantizer: x is on cpu but codebook is on meta$"):
        VectorQuantizer(DIM, K, codebook=kind).to("meta")(x)
    with pytest.raises(TypeError, match="^VectorQuantizer: x must be a floating-point tensor, got torch.int32$"):
        vq(x.int())
    assert all(torch.equal(v, before[k]) for k, v in vq.state_dict().items())  # nothing ran


def test_packed_keys_order_like_distance_then_index():
    torch.manual_seed(0)
    d = torch.cat([torch.randn(200) * 10, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0, 3.0])])
    i = torch.randint(0, 2**31, (len(d),))
    i[-2:] = torch.tensor([7, 5])  # a tie: the lower index must win
    keys = pack_keys(d, i)
    assert torch.equal(unpack_indices(keys), i)
    order = sorted(range(len(d)), key=lambda j: (d[j].item() + 0.0, i[j].item()))
    assert torch.equal(keys.argsort(stable=True), torch.tensor(order))
    assert keys[-1] < keys[-2]


# ----------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes, compared with one process.


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, DIM, generator=g)  # [rank, rows, D]: each rank's batch in replicated mode
    codes = torch.randn(K, DIM, generator=g)
    codes[11] = codes[3]  # equal codes on the two shards: global index 3 must win
    xs = torch.randn(20, DIM, generator=g)  # the shared batch in sharded mode
    xs[:4] = codes[3]
    return x, codes, xs


def _run_replicated(x_rank):
    torch.manual_seed(0)
    vq = VectorQuantizer(DIM, K, codebook="ema", ema_decay=0.8, usage_window=4,
                         distributed="replicated" if dist.is_initialized() else None)
    for step in range(3):
        vq(x_rank + step)
    return {"embed": vq.embed, "cluster_size": vq.cluster_size, "counts": vq.usage()["counts"]}


def _run_sharded(codes, xs, group_on, kind="learned"):
    vq = VectorQuantizer(DIM, K, commitment_weight=0.5, codebook=kind, distributed="sharded" if group_on else None)
    codes = codes[vq.offset:vq.offset + vq.num_local]
    with torch.no_grad():
        if kind == "simvq":  # W = I + a fixed perturbation, the same on every rank
            vq.basis.copy_(codes)
            vq.proj.weight.copy_(torch.eye(DIM) + 0.01 * torch.arange(DIM * DIM).reshape(DIM, DIM).sin())
        else:
            vq.embed.copy_(codes)
            if kind == "ema":
                vq.embed_sum.copy_(codes)
    x = xs.clone().requires_grad_()
    q, idx, loss = vq(x)
    (loss + (q * torch.arange(DIM)).sum()).backward()
    if kind == "ema":  # one more step: the shard's EMA statistics and codes after two updates
        vq(xs * 0.5)
        return {"q": q.detach(), "idx": idx, "loss": loss.detach(), "x_grad": x.grad, "code_grad": vq.embed}
    grad = vq.proj.weight.grad if kind == "simvq" else vq.embed.grad
    return {"q": q.detach(), "idx": idx, "loss": loss.detach(), "x_grad": x.grad, "code_grad": grad}


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, codes, xs = _data()
        out = {"replicated": _run_replicated(x[rank]), "sharded": _run_sharded(codes, xs, True),
               "sharded_simvq": _run_sharded(codes, xs, True, "simvq"),
               "sharded_ema": _run_sharded(codes, xs, True, "ema")}
        # Smoke: every data-dependent path (k-means, EMA, restarts) in both modes stays identical/finite.
        for mode in ("replicated", "sharded"):
            torch.manual_seed(rank)  # different seeds: rank 0's choices must be the ones used
            vq = VectorQuantizer(DIM, K, codebook="ema", kmeans_init=True, dead_code_threshold=2,
                                 usage_window=1, distributed=mode)
            for step in range(3):
                vq(x[rank] if mode == "replicated" else xs + step)
            out[f"{mode}_smoke"] = vq.embed
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_replicated_and_sharded():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    x, codes, xs = _data()

    # Replicated: identical codes on both ranks, equal to one process on the concatenated batch.
    single = _run_replicated(torch.cat([x[0], x[1]]))
    for name, want in single.items():
        torch.testing.assert_close(r0["replicated"][name], r1["replicated"][name], atol=0, rtol=0)
        torch.testing.assert_close(r0["replicated"][name], want)
    torch.testing.assert_close(r0["replicated_smoke"], r1["replicated_smoke"], atol=0, rtol=0)
    assert torch.isfinite(r0["sharded_smoke"]).all() and torch.isfinite(r1["sharded_smoke"]).all()

    # Sharded: the same as one process holding the whole codebook, ties across shards included.
    for kind in ("learned", "simvq", "ema"):
        single = _run_sharded(codes, xs, False, kind)
        assert (single["idx"][:4] == 3).all()
        key = "sharded" if kind == "learned" else f"sharded_{kind}"
        for r, out in enumerate((r0[key], r1[key])):
            assert torch.equal(out["idx"], single["idx"])
            for name in ("q", "loss", "x_grad"):
                torch.testing.assert_close(out[name], single[name])
            # Learned: each rank holds its shard's gradient; SimVQ: the shared W's full gradient; EMA: the
            # shard's codes after two updates.
            want = single["code_grad"] if kind == "simvq" else single["code_grad"][r * K // 2:(r + 1) * K // 2]
            torch.testing.assert_close(out["code_grad"], want)
