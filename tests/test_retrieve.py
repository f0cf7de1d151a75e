"""Attribute retrieval (pyops.retrieve): every vq_search backend against the float64 brute-force reference."""

import pytest
import torch
import torch.nn.functional as F
from utils import backend_params

import pyops
from pyops.reference import contrastive as reference

SEARCH = backend_params("vq_search", include_torch=True)
METRICS = ["cosine", "ip"]
Q, A, B, D = 9, 3, 300, 24


def randn(*shape, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def query_forms(device, dtype):
    """(name, queries, weights): a plain query, (Q, 1, D), A attributes with the default 1/A, (A,) and (Q, A) weights
    (of both signs), and a single attribute with a negative weight (the combined query points the other way)."""
    q3 = randn(Q, A, D, seed=1, dtype=dtype, device=device)
    return [("plain", q3[:, 0], None), ("one attribute", q3[:, 1:2], None), ("attributes", q3, None),
            ("weights (A,)", q3, torch.tensor([0.5, 0.2, 0.3], device=device)),
            ("weights (Q, A)", q3, randn(Q, A, seed=2, device=device)),
            ("one negative weight", q3[:, :1], torch.tensor([-2.0], dtype=torch.float64, device=device))]


def check(queries, bank, k, weights, metric, backend, exact, atol):
    d, i = pyops.retrieve(queries, bank, k, weights=weights, metric=metric, exact=exact, backend=backend)
    assert d.shape == i.shape == (queries.shape[0], k) and i.dtype == torch.long
    assert d.dtype == (torch.float64 if queries.dtype == torch.float64 else torch.float32)
    assert d.device == i.device == queries.device
    ref_d, ref_i = reference.retrieve(queries.cpu(), bank.cpu(), k, None if weights is None else weights.cpu(), metric)
    assert (i.cpu() == ref_i).all(), f"indices differ from the float64 brute force:\n{i}\n{ref_i}"  # recall 1.0
    torch.testing.assert_close(d.cpu().double(), ref_d, rtol=0, atol=atol)
    return d, i


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_float64_brute_force(device, backend, metric, dtype):
    """Random data: the exact search returns the float64 brute force's top k, in its order (recall 1.0)."""
    if dtype == torch.float64 and (device == "cuda" or backend == "triton"):
        pytest.skip("float64 runs on the CPU and torch backends only")
    bank = randn(B, D, seed=3, dtype=dtype, device=device)
    atol = 1e-12 if dtype == torch.float64 else 2e-5 * (D if metric == "ip" else 1)
    for name, queries, weights in query_forms(device, dtype):
        for k in (1, 10):
            check(queries, bank, k, weights, metric, backend, True, atol)


def planted(dtype, device, metric, k=5):
    """Well-separated data: per query, k bank rows whose cosine with the combined query direction is
    0.95, 0.90, ..., and 250 random rows (cosine ~ N(0, 1/D), below 0.7 with this seed). The combined scores are
    |qc| times those, so neighbours differ by 0.05 |qc| >> the bf16 search error of ~2^-8 |qc| |b|."""
    dim = 64
    q3 = randn(Q, A, dim, seed=5, dtype=torch.float64, device=device)
    weights = torch.rand(Q, A, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(device) + 0.2
    qs = F.normalize(q3, dim=-1) if metric == "cosine" else q3
    u = F.normalize((weights[..., None] * qs).sum(1), dim=-1)  # [Q, dim] combined query directions
    noise = randn(Q, k, dim, seed=7, device=device)
    noise = F.normalize(noise - (noise * u[:, None]).sum(-1, keepdim=True) * u[:, None], dim=-1)
    c = 0.95 - 0.05 * torch.arange(k, dtype=torch.float64, device=device)[:, None]
    near = c * u[:, None] + (1 - c**2).sqrt() * noise  # [Q, k, dim], unit norm
    bank = torch.cat([F.normalize(randn(250, dim, seed=8, device=device), dim=-1), near.reshape(-1, dim)])
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(9)).to(device)]
    return q3.to(dtype), bank.to(dtype), weights


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_default_precision_recall_on_separated_data(device, backend, metric, dtype):
    """exact=False (tf32 / int8 / fp16 / bf16 search): recall 1.0 where the scores are further apart than
    vq_search's documented error bound; distances are the exact fp32 ones of the (rounded) combined query."""
    queries, bank, weights = planted(dtype, device, metric)
    u = {torch.float32: 2.0**-11, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    scale = 1 if metric == "cosine" else queries.double().norm(dim=-1).max().item()
    check(queries, bank, 5, weights, metric, backend, False, 4 * u * scale)
    check(queries, bank, 5, weights[0], metric, backend, False, 4 * u * scale)


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ties_go_to_the_lowest_index(device, backend, dtype):
    bank = F.normalize(randn(50, D, seed=1, device=device), dim=-1).to(dtype)  # unit rows: ip ranks as cosine
    bank[[9, 31, 44]] = bank[3].clone()  # four identical rows
    q3 = (bank[3].double() + 0.01 * randn(6, A, D, seed=2, device=device)).to(dtype)
    for metric in METRICS:
        for queries, weights in ((q3[:, 0], None), (q3, None), (q3, torch.tensor([0.2, 0.5, 0.3], device=device))):
            d, i = pyops.retrieve(queries, bank, 5, weights=weights, metric=metric, backend=backend)
            assert (i[:, :4].cpu() == torch.tensor([3, 9, 31, 44])).all(), (metric, i)
            assert (d[:, :4] == d[:, :1]).all()  # the copies' distances are equal, not just close


@pytest.mark.parametrize("device,backend", SEARCH)
def test_zero_query(device, backend):
    """A zero query (or attributes whose weighted sum cancels) scores 0 against every entry: distance 1
    (cosine) or 0 (ip), the first k indices in order, as the reference."""
    bank = randn(30, D, seed=1, device=device).float()
    q3 = randn(4, 2, D, device=device).float()
    q3[1] = 0
    q3[2, 1] = q3[2, 0]
    weights = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, -1.0], [0.5, 0.5]], device=device)
    for metric in METRICS:
        for queries, w in ((q3[:, 0], None), (q3, weights)):
            d, i = pyops.retrieve(queries, bank, 3, weights=w, metric=metric, exact=True, backend=backend)
            zero = [1, 2] if w is not None else [1]
            assert (d[zero] == (1 if metric == "cosine" else 0)).all() and (i[zero].cpu() == torch.arange(3)).all()
            check(queries, bank, 3, w, metric, backend, True, 2e-5 * D)


@pytest.mark.parametrize("device,backend", SEARCH)
def test_non_contiguous_and_empty(device, backend):
    queries = randn(D, A, 7, device=device).float().permute(2, 1, 0)  # (7, A, D), D strided
    bank = randn(2 * B, D, seed=1, device=device).float()[::2]
    assert not queries.is_contiguous() and not bank.is_contiguous()
    for metric in METRICS:
        check(queries, bank, 4, None, metric, backend, True, 2e-5 * D)
    d, i = pyops.retrieve(queries[:0], bank, 4, backend=backend)
    assert d.shape == i.shape == (0, 4)


def test_not_differentiable_and_large_k():
    queries, bank = randn(5, A, D).requires_grad_(), randn(200, D, seed=1).requires_grad_()
    d, i = pyops.retrieve(queries, bank, pyops.vq.MAX_K, backend="cpu")
    assert not d.requires_grad and d.shape == (5, pyops.vq.MAX_K)
    assert (i == reference.retrieve(queries.detach(), bank.detach(), pyops.vq.MAX_K)[1]).all()


def test_torch_compile_fullgraph():
    queries, bank, w = randn(5, A, D).float(), randn(40, D, seed=1).float(), torch.tensor([0.2, 0.3, 0.5])
    fn = lambda q, b, w: pyops.retrieve(q, b, 3, weights=w, exact=True, backend="cpu")  # noqa: E731
    for got, want in zip(torch.compile(fn, fullgraph=True)(queries, bank, w), fn(queries, bank, w)):
        torch.testing.assert_close(got, want)


def test_bad_inputs():
    q, bank = randn(4, 2, 8).float(), randn(10, 8, seed=1).float()
    cases = [
        ((q.numpy(), bank, 3), {}, TypeError, "retrieve: queries must be a Tensor"),
        ((q.long(), bank, 3), {}, TypeError, "retrieve: queries must be a floating-point tensor"),
        ((q, bank.double(), 3), {}, TypeError, "retrieve: bank has dtype torch.float64 but queries has"),
        ((q, bank[:, :5], 3), {}, ValueError, r"retrieve: queries must have shape \(Q, D\) or \(Q, A, D\) with D=5"),
        ((q[0, 0], bank, 3), {}, ValueError, "retrieve: queries must have shape"),
        ((q[:, :0], bank, 3), {}, ValueError, "retrieve: queries must have at least one attribute"),
        ((q, bank[0], 3), {}, ValueError, r"retrieve: bank must have shape \(\*, \*\)"),
        ((q, bank.to("meta"), 3), {}, ValueError, "retrieve: bank is on meta but queries is on cpu"),
        ((q, bank, 0), {}, ValueError, r"retrieve: k=0 is out of range \[1, 10\]"),
        ((q, bank, 11), {}, ValueError, r"retrieve: k=11 is out of range \[1, 10\]"),
        ((q, bank, 2.0), {}, TypeError, "retrieve: k must be an int"),
        ((q, bank, 3), {"metric": "l2"}, ValueError, "retrieve: unknown metric 'l2'"),
        ((q, bank, 3), {"weights": torch.ones(3)}, ValueError, r"retrieve: weights must have shape \(2,\) or \(4, 2\)"),
        ((q, bank, 3), {"weights": torch.ones(2, dtype=torch.long)}, TypeError, "retrieve: weights must be a floating"),
        ((q, bank, 3), {"weights": torch.ones(2, device="meta")}, ValueError, "retrieve: weights is on meta"),
        ((q, bank, 3), {"weights": torch.tensor([1.0, float("nan")])}, ValueError, "retrieve: weights has non-finite"),
        ((q.clone().fill_(float("inf")), bank, 3), {}, ValueError, "retrieve: queries has non-finite"),
        ((q, bank.clone().fill_(float("nan")), 3), {}, ValueError, "retrieve: bank has non-finite"),
        ((q[:, 0], bank.clone().fill_(float("nan")), 3), {}, ValueError, "retrieve: bank has non-finite"),
        ((q, bank, 3), {"backend": "nope"}, ValueError, "unknown backend 'nope'"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            pyops.retrieve(*args, **kwargs)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_prepared_index_bank(metric):
    # A VQIndex bank (prepared once) returns what the plain bank returns, for one and several attributes.
    g = torch.Generator().manual_seed(4)
    bank = torch.randn(500, 48, generator=g)
    queries = torch.randn(7, 3, 48, generator=g)
    weights = torch.rand(3, generator=g)
    index = pyops.VQIndex(bank, metric=metric)
    for q, w in ((queries[:, 0], None), (queries, weights)):
        d, i = pyops.retrieve(q, index, 5, weights=w, metric=metric)
        d_ref, i_ref = pyops.retrieve(q, bank, 5, weights=w, metric=metric)
        assert torch.equal(i, i_ref)
        torch.testing.assert_close(d, d_ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="retrieve: bank is a VQIndex with metric"):
        pyops.retrieve(queries, index, 5, metric="ip" if metric == "cosine" else "cosine")
