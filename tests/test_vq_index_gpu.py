"""GPU kernels of the prepared VQ index (pyops::vq_index_search_triton, the CUDA pyops::vq_index_search) against
a float64 brute force, and against vq_search on the same inputs. The Triton op also runs on CPU tensors under
TRITON_INTERPRET=1 (tests/conftest.py switches it on without a GPU): sizes stay tiny there."""

import pytest
import torch
from test_vq import check_search

from pyops import _backend
from pyops.reference import vq as reference

METRICS = ["l2", "cosine", "ip"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PACKED = ["bf16", "fp16", "exact"]  # the index's search precision: a 16-bit copy of the codebook, or none
HAS_CUDA = torch.cuda.is_available()
# (device, backend): the Triton op on CPU (interpreter) and on CUDA, the CUDA op.
BACKENDS = [
    pytest.param("cpu", "triton", id="triton-interpreter",
                 marks=pytest.mark.skipif(not (_backend.HAS_TRITON and _backend.TRITON_INTERPRET and not HAS_CUDA),
                                          reason="the Triton interpreter runs without a GPU only")),
    pytest.param("cuda", "triton", id="triton-cuda",
                 marks=pytest.mark.skipif(not (HAS_CUDA and _backend.HAS_TRITON), reason="needs CUDA and Triton")),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")),
]
# (N, K, D): odd sizes; K spans several interpreter code tiles (32) and splits; D several 32-wide chunks.
SHAPES = [(13, 71, 37), (1, 9, 5), (40, 200, 70)]


def randn(*shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def make_index(codebook, metric, packed):
    """(packed, stat) as pyops.VQIndex prepares them on GPU: stat [K] fp32 = ||c||^2 (l2), 1 / max(||c||, eps)
    (cosine) or 0 (ip), from the stored values; packed a bf16 / fp16 copy of the codebook, or empty (exact)."""
    c = codebook.double()
    if metric == "l2":
        stat = (c * c).sum(1)
    elif metric == "cosine":
        stat = 1 / c.norm(dim=1).clamp_min(reference.NORM_EPS)
    else:
        stat = torch.zeros(len(c), dtype=torch.float64, device=c.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "exact": None}[packed]
    packed_t = codebook.new_empty(0) if dtype is None else codebook.to(dtype).contiguous()
    return packed_t, stat.float()


def index_search(backend, x, codebook, packed, stat, k, metric):
    if backend == "triton":
        return torch.ops.pyops.vq_index_search_triton(x, codebook, packed, stat, k, metric)
    code_scale = torch.empty(0, dtype=torch.float32, device=x.device)  # only the CPU int8 index has scales
    return torch.ops.pyops.vq_index_search(x, codebook, packed, code_scale, stat, k, metric)


def score_tolerance(x, codebook, packed):
    """How far apart two codes' exact distances may be for the search to order them wrongly: the search
    rounds x and the codes to packed's precision (relative 2^-9 bf16, 2^-12 fp16 each, so ~2^-8 / 2^-10 on a
    product), or sums fp32 products (D 2^-24); the returned distances are exact fp32 sums (D 2^-24)."""
    dim = x.shape[1]
    u = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -10, "exact": 0.0}[packed] + dim * 2.0 ** -24
    xn, cn = x.double().norm(dim=1).max().item(), codebook.double().norm(dim=1).max().item()
    return 4 * u * (xn + cn) ** 2 + 1e-12


def check_against_reference(backend, x, codebook, packed, k, metric):
    packed_t, stat = make_index(codebook, metric, packed)
    _, i, _ = check_search(x, codebook, k, metric, backend, search=lambda x, k: index_search(
        backend, x, codebook, packed_t, stat, k, metric), tol=score_tolerance(x, codebook, packed))
    return i


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("packed", PACKED)
@pytest.mark.parametrize("metric", METRICS)
def test_matches_reference(device, backend, metric, packed):
    for n, num_codes, dim in SHAPES:
        x, codebook = randn(n, dim, device=device), randn(num_codes, dim, seed=1, device=device)
        for k in (1, 3, 9):
            i = check_against_reference(backend, x, codebook, packed, k, metric)
            _, ref_i = reference.vq_search(x.cpu(), codebook.cpu(), k, metric)
            assert (i == ref_i).float().mean() >= 0.99  # random data: near-ties are rare


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("packed", PACKED)
def test_input_dtypes(device, backend, dtype, packed):
    # x and codebook of a 16-bit dtype with every index precision (bf16 packed from fp16 codes too).
    x, codebook = randn(11, 45, dtype=dtype, device=device), randn(67, 45, seed=1, dtype=dtype, device=device)
    for metric in METRICS:
        check_against_reference(backend, x, codebook, packed, 5, metric)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("packed", PACKED)
def test_ties_go_to_the_lowest_index(device, backend, dtype, packed):
    codebook = randn(50, 24, seed=1, dtype=dtype, device=device)
    codebook[[9, 31, 44]] = codebook[3].clone()  # four identical codes
    x = (codebook[3].double() + 0.01 * randn(6, 24, seed=2).to(device)).to(dtype)
    for metric in ("l2", "cosine"):  # with ip a longer code can beat the copies
        packed_t, stat = make_index(codebook, metric, packed)
        _, i = index_search(backend, x, codebook, packed_t, stat, 4, metric)
        assert (i.cpu() == torch.tensor([3, 9, 31, 44])).all(), (metric, i)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_equals_vq_search(device, backend, dtype):
    """With the same search operands the index gives vq_search's answer bit for bit: an empty packed is
    exact=True, a packed copy in x's own 16-bit dtype is exact=False. The Triton side takes stat from the norms
    kernel vq_search_triton runs; the CUDA op takes the float64 one, whose last-bit differences from the CUDA
    norms could only matter for a near-tie at the edge of the k + 8 candidates (none in this data)."""
    x, codebook = randn(19, 41, dtype=dtype, device=device), randn(90, 41, seed=1, dtype=dtype, device=device)
    search = torch.ops.pyops.vq_search_triton if backend == "triton" else torch.ops.pyops.vq_search
    for metric in METRICS:
        packed_t, stat = make_index(codebook, metric, "exact")
        if backend == "triton":
            stat = triton_code_stat(codebook, metric)
        cases = [(packed_t, True)]
        if dtype != torch.float32:
            cases.append((codebook, False))
        for packed, exact in cases:
            for k in (1, 9):
                d, i = index_search(backend, x, codebook, packed, stat, k, metric)
                ref_d, ref_i = search(x, codebook, k, metric, exact)
                assert torch.equal(i, ref_i) and torch.equal(d, ref_d), (metric, exact, k)


def triton_code_stat(codebook, metric):
    """stat computed by the Triton norms kernel that vq_search_triton runs per call (zeros for ip)."""
    from pyops.triton_kernels import vq as tk

    num_codes, dim = codebook.shape
    stat = torch.zeros(num_codes, dtype=torch.float32, device=codebook.device)
    if metric != "ip":
        block_k = 64 if codebook.is_cuda else 32
        tk._vq_code_norms_kernel[(-(-num_codes // block_k),)](codebook, stat, num_codes, dim, COSINE=metric == "cosine",
                                                               BLOCK_K=block_k, BLOCK_D=64, num_warps=4)
    return stat


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_non_contiguous_cosine_zeros_and_empty(device, backend):
    x = randn(30, 2, 3, device=device).permute(2, 1, 0).reshape(6, 30)[::2]  # (3, 30), rows 60 apart
    codebook = randn(80, 30, seed=1, device=device)[::2]  # every other row
    codebook[7] = 0
    x[1] = 0
    assert not x.is_contiguous() and not codebook.is_contiguous()
    for packed in PACKED:
        check_against_reference(backend, x, codebook, packed, 3, "cosine")
        check_against_reference(backend, x, codebook, packed, 3, "l2")
        packed_t, stat = make_index(codebook, "cosine", packed)
        d, i = index_search(backend, x, codebook, packed_t, stat, 3, "cosine")
        assert (d[1] == 1).all() and (i[1].cpu() == torch.arange(3)).all()  # a zero x: every code at 1, ties
        d, i = index_search(backend, x[:0], codebook, packed_t, stat, 3, "cosine")
        assert d.shape == (0, 3) and i.shape == (0, 3)


def test_gpu_index_agrees_with_fp32_at_code_width():
    """bf16 index, fp32 inputs at the VQRAE code width D = 1536: the fp32 brute-force top-1 for >= 99.9% of
    rows, as vq_search's default (tf32) mode."""
    if not HAS_CUDA:
        pytest.skip("needs CUDA (too slow for the interpreter)")
    x, codebook = randn(512, 1536, device="cuda"), randn(4096, 1536, seed=1, device="cuda")
    packed, stat = make_index(codebook, "l2", "bf16")
    _, ref_i = reference.vq_search(x.cpu(), codebook.cpu(), 1, "l2")
    for backend in ("triton", "cuda"):
        _, i = index_search(backend, x, codebook, packed, stat, 1, "l2")
        assert (i[:, 0].cpu() == ref_i[:, 0]).float().mean() >= 0.999, backend


# ----------------------------------------------------------------------------------------------------------
# Bad input: errors that name the argument.


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_bad_index_arguments(device, backend):
    op = "vq_index_search(_triton)?"
    x, codebook = randn(4, 8, device=device), randn(10, 8, seed=1, device=device)
    packed, stat = make_index(codebook, "l2", "bf16")
    cases = [
        (TypeError, "packed must be float16 or bfloat16", dict(packed=codebook)),
        (TypeError, "packed must be float16 or bfloat16", dict(packed=codebook.to(torch.uint8))),
        (ValueError, r"packed must have shape \[10, 8\]", dict(packed=packed[:9])),
        (ValueError, r"packed must have shape \[10, 8\]", dict(packed=packed.reshape(8, 10))),
        (TypeError, "stat must be float32", dict(stat=stat.double())),
        (ValueError, r"stat must have shape \[10\]", dict(stat=stat[:9])),
        (TypeError, "codebook has dtype", dict(codebook=codebook.half(), packed=packed)),
        (TypeError, "x must be float32, float16 or bfloat16", dict(x=x.long(), codebook=codebook.long())),
        (ValueError, r"k=11 is out of range", dict(k=11)),
        (ValueError, r"k=0 is out of range", dict(k=0)),
        (ValueError, "unknown metric 'l1'", dict(metric="l1")),
        (ValueError, "codebook has dimension 9 but x has 8", dict(codebook=randn(10, 9, device=device))),
        (ValueError, "x must be 2-D", dict(x=x[None])),
    ]
    if backend == "triton":  # a meta tensor reaches the triton_op's function (the CUDA op has no meta kernel)
        cases += [
            (ValueError, "packed is on meta but x is on", dict(packed=packed.to("meta"))),
            (ValueError, "stat is on meta but x is on", dict(stat=stat.to("meta"))),
        ]
    if backend == "cuda":
        cases += [
            (ValueError, "code_scale must be empty", dict(code_scale=torch.ones(16, device=device))),
            (ValueError, "packed is on cpu but x is on cuda", dict(packed=packed.cpu())),
            (ValueError, "code_scale is on cpu but x is on cuda", dict(code_scale=torch.empty(0))),
            (ValueError, "codebook is on cpu, expected a CUDA tensor", dict(codebook=codebook.cpu())),
        ]
    for error, message, change in cases:
        args = dict(x=x, codebook=codebook, packed=packed, stat=stat, k=1, metric="l2",
                    code_scale=torch.empty(0, device=device))
        args.update(change)
        with pytest.raises(error, match=f"{op}: {message}"):
            if backend == "triton":
                torch.ops.pyops.vq_index_search_triton(args["x"], args["codebook"], args["packed"], args["stat"],
                                                       args["k"], args["metric"])
            else:
                torch.ops.pyops.vq_index_search(args["x"], args["codebook"], args["packed"], args["code_scale"],
                                                args["stat"], args["k"], args["metric"])


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile (on GPU; the interpreter is too slow for opcheck's many calls).


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_opcheck_and_compile(backend):
    x, codebook = randn(9, 12, device="cuda"), randn(20, 12, seed=1, device="cuda")
    code_scale = torch.empty(0, device="cuda")
    for metric in METRICS:
        for packed in PACKED:
            packed_t, stat = make_index(codebook, metric, packed)
            if backend == "triton":
                op, args = torch.ops.pyops.vq_index_search_triton, (x, codebook, packed_t, stat, 3, metric)
            else:
                op, args = torch.ops.pyops.vq_index_search, (x, codebook, packed_t, code_scale, stat, 3, metric)
            torch.library.opcheck(op, args)  # the CUDA op's fake kernel is registered by pyops/vq_index.py
            if metric == "l2":  # one compile per index kind: each metric string recompiles
                compiled = torch.compile(lambda *a: op(*a), fullgraph=True)
                for a, b in zip(compiled(*args), op(*args)):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)

