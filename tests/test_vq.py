"""Nearest-code search and segment sum: every backend against the float64 brute-force reference."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from utils import DEVICES, assert_close, backend_params

import pyops
from pyops.reference import vq as reference

SEARCH = backend_params("vq_search", include_torch=True)
SEGMENT = backend_params("vq_segment_sum", include_torch=True)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
METRICS = ["l2", "cosine", "ip"]
# (N, K, D): a single code and dimension, odd sizes, more codes than any one tile, D not a vector multiple.
SHAPES = [(1, 1, 1), (37, 7, 19), (64, 301, 67), (5, 40, 3)]


def randn(*shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def score_tolerance(x, codebook, exact, backend):
    """How far apart two codes' exact distances may be for the search stage to order them wrongly.

    A score in precision p differs from the exact one by at most ~u_p * |x| |c| (u = 2^-8 for bf16 products,
    2^-11 for fp16/tf32, D * 2^-24 for fp32 sums, sqrt(D) / 127 + D / 127^2 / 4 for the CPU's row-scaled int8
    products, see csrc/cpu/vq_int8.h); two codes can swap if their distances differ by twice that.
    Distances returned are exact fp32 sums, off by at most ~D * 2^-24 * their size."""
    dim = x.shape[-1]
    u = {torch.float64: 1e-12, torch.float32: dim * 2.0 ** -24}[torch.float64 if x.dtype == torch.float64
                                                                else torch.float32]
    if not exact and x.dtype != torch.float64:
        u = max(u, {torch.bfloat16: 2.0 ** -8}.get(x.dtype, 2.0 ** -11))
        if backend == "cpu":
            u = max(u, dim ** 0.5 / 127 + dim / 127 ** 2 / 4)
    xn = x.double().norm(dim=-1).max().item()
    cn = codebook.double().norm(dim=-1).max().item()
    return 4 * u * (xn + cn) ** 2 + 1e-12


def check_search(x, codebook, k, metric, backend, exact=False, search=None, tol=None):
    """Checks vq_search (or `search(x, k)`: a prepared index) against the float64 brute force, to within `tol`
    (default: score_tolerance's for vq_search)."""
    if search is None:
        d, i = pyops.vq_search(x, codebook, k=k, metric=metric, exact=exact, backend=backend)
    else:
        d, i = search(x, k)
    lead = x.shape[:-1]
    assert d.shape == (*lead, k) and i.shape == (*lead, k)
    assert i.dtype == torch.long and d.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert d.device == x.device and i.device == x.device
    x2, d, i = x.reshape(-1, x.shape[-1]), d.reshape(-1, k).cpu(), i.reshape(-1, k).cpu()
    all_d = reference.distances(x2.cpu(), codebook.cpu(), metric)  # [N, K] float64 on the stored values
    ref_d, ref_i = reference.vq_search(x2.cpu(), codebook.cpu(), k, metric)
    tol = score_tolerance(x2, codebook, exact, backend) if tol is None else tol
    assert ((i >= 0) & (i < codebook.shape[0])).all()
    assert (i.sort(dim=1).values.diff(dim=1) > 0).all(), "an index is returned twice"
    # Each returned distance is the exact distance of the returned code ...
    torch.testing.assert_close(d.double(), all_d.gather(1, i), rtol=0, atol=tol)
    # ... the list is sorted, with equal distances in index order ...
    assert (d.diff(dim=1) >= 0).all()
    assert ((d.diff(dim=1) > 0) | (i.diff(dim=1) > 0)).all()
    # ... and the j-th returned code is as near as the true j-th nearest, up to the search precision.
    assert (all_d.gather(1, i) <= ref_d + tol).all(), "a nearer code was missed"
    return d, i, ref_i


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,num_codes,dim", SHAPES, ids=str)
def test_search_matches_reference(device, backend, metric, n, num_codes, dim):
    x, codebook = randn(n, dim, device=device), randn(num_codes, dim, seed=1, device=device)
    for k in sorted({1, min(4, num_codes), num_codes if num_codes <= 40 else 40}):
        for exact in (False, True):
            _, i, ref_i = check_search(x, codebook, k, metric, backend, exact)
            assert (i == ref_i).float().mean() >= 0.99  # random data: near-ties are rare


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_search_dtypes(device, backend, dtype):
    if dtype == torch.float64 and (device == "cuda" or backend == "triton"):
        pytest.skip("float64 runs on the CPU and torch backends only")
    x, codebook = randn(2, 23, 33, dtype=dtype, device=device), randn(150, 33, seed=1, dtype=dtype, device=device)
    for metric in METRICS:
        check_search(x, codebook, 5, metric, backend)


@pytest.mark.parametrize("device,backend", SEARCH)
def test_search_non_contiguous_and_leading_dims(device, backend):
    x = randn(40, 2, 3, device=device).permute(2, 1, 0)  # (3, 2, 40), D = 40 strided
    codebook = randn(80, 40, seed=1, device=device)[::2]  # every other row
    assert not x.is_contiguous() and not codebook.is_contiguous()
    check_search(x, codebook, 3, "l2", backend)


@pytest.mark.parametrize("device,backend", SEARCH)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_search_ties_go_to_the_lowest_index(device, backend, dtype):
    codebook = randn(50, 24, seed=1, dtype=dtype, device=device)
    codebook[[9, 31, 44]] = codebook[3].clone()  # four identical codes
    x = (codebook[3].double() + 0.01 * randn(6, 24, seed=2).to(device)).to(dtype)
    for metric in METRICS:
        _, i = pyops.vq_search(x, codebook, k=4, metric=metric, backend=backend)
        if metric != "ip":  # with ip a longer code can beat the copies
            assert (i.cpu() == torch.tensor([3, 9, 31, 44])).all(), (metric, i)


@pytest.mark.parametrize("device,backend", SEARCH)
def test_cosine_zero_vectors(device, backend):
    x, codebook = randn(4, 16, device=device), randn(30, 16, seed=1, device=device)
    x[1] = 0
    codebook[7] = 0
    d, i = pyops.vq_search(x, codebook, k=3, metric="cosine", backend=backend)
    assert torch.isfinite(d).all()
    assert (d[1] == 1).all() and (i[1].cpu() == torch.arange(3)).all()  # every code at distance 1: ties
    check_search(x, codebook, 3, "cosine", backend)


@pytest.mark.parametrize("device,backend", SEARCH)
def test_search_empty_input(device, backend):
    d, i = pyops.vq_search(randn(0, 8, device=device).reshape(2, 0, 8), randn(10, 8, device=device), k=2,
                           backend=backend)
    assert d.shape == (2, 0, 2) and i.shape == (2, 0, 2)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in SEARCH if b != "triton" or d == "cuda"])
@pytest.mark.parametrize("dtype,min_agreement", [(torch.float16, 0.99), (torch.bfloat16, 0.97)], ids=str)
def test_low_precision_agreement(device, backend, dtype, min_agreement):
    """Top-1 agreement of fp16/bf16 inputs with fp32 brute force on the unrounded data (README's figures):
    the rounding of the inputs themselves, not the search, is what changes answers (measured with the torch
    backend: fp16 99.9%, bf16 99.2%)."""
    x, codebook = randn(1024, 64, device=device), randn(2048, 64, seed=1, device=device)
    _, i = pyops.vq_search(x.to(dtype), codebook.to(dtype), backend=backend)
    _, ref_i = reference.vq_search(x.cpu(), codebook.cpu(), 1, "l2")
    assert (i.cpu() == ref_i).float().mean() >= min_agreement


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in SEARCH if b != "triton" or d == "cuda"])
def test_default_search_agrees_with_fp32_at_code_width(device, backend):
    """exact=False (int8 scores on VNNI CPUs, tf32 tensor cores on GPU) at the VQRAE code width D = 1536
    finds the fp32 brute-force top-1 for at least 99.9% of rows (the benchmark's agreement figure)."""
    x, codebook = randn(512, 1536, device=device), randn(4096, 1536, seed=1, device=device)
    _, i = pyops.vq_search(x, codebook, backend=backend)
    _, ref_i = reference.vq_search(x.cpu(), codebook.cpu(), 1, "l2")
    assert (i[:, 0].cpu() == ref_i[:, 0]).float().mean() >= 0.999


def test_cpu_search_across_codebook_chunks():
    """A codebook whose int8 packing exceeds the CPU's 8 MiB workspace (K * 68 bytes > 8 MiB) is searched
    a chunk at a time; the top-k lists carry across chunks, including a partial last one."""
    x, codebook = randn(45, 67), randn((1 << 17) + 37, 67, seed=1)
    codebook[-5] = x[7]  # the exact nearest code of row 7 lies in the last chunk
    for metric in ("l2", "cosine"):
        _, i, ref_i = check_search(x, codebook, 4, metric, "cpu")
        assert i[7, 0] == codebook.shape[0] - 5


# ----------------------------------------------------------------------------------------------------------
# Memory: the N x K matrix is never built.


def cpu_search_workspace_bytes(n: int, num_codes: int, dim: int, k: int, threads: int) -> int:
    """The README's memory claim for the CPU search, "O(N k + K) plus a bounded per-thread workspace", as the
    sizes csrc/cpu/vq_kernel.h allocates: outputs [N, k] (fp32 + int64); the per-code term [K] fp32; the
    running top-k' lists (k' = k + 8, fp32 + int64) of at most N + 2 * threads * 256 rows (one list per row
    and codebook split, splits <= ceil(2 * threads / row blocks)); the int8-packed codebook chunk (8 MiB, plus
    its fp32 scales); and per thread a [256, 1024] fp32 score tile, fp32 copies of 256 rows and 1024 codes and
    256 int8-quantized rows."""
    kc = k + 8
    outputs = n * k * (4 + 8)
    lists = (n + 2 * threads * 256) * kc * (4 + 8)
    int8_chunk = (8 << 20) + (8 << 20) // dim * 4
    per_thread = 256 * 1024 * 4 + (256 + 1024) * dim * 4 + 256 * (dim + 16)
    return outputs + num_codes * 4 + lists + int8_chunk + threads * per_thread


@pytest.mark.skipif(sys.platform != "linux", reason="reads ru_maxrss")
def test_search_memory_stays_bounded():
    """N = 4096, K = 2^18, D = 64: the fp32 N x K matrix would take 4 GiB. Peak RSS may grow by the CPU
    search's workspace (cpu_search_workspace_bytes) plus 32 MiB for the allocator and BLAS (measured: 4 MiB with
    2 threads; a quarter of the N x K matrix from torch.cdist: 1089 MiB), a small fraction of the N x K matrix."""
    if "cpu" not in pyops.available_backends("cpu", "vq_search"):
        pytest.skip("no native CPU kernel")
    n, num_codes, dim, k = 4096, 1 << 18, 64, 4
    script = textwrap.dedent(f"""
        import resource, torch, pyops
        x, c = torch.randn({n}, {dim}), torch.randn({num_codes}, {dim})
        pyops.vq_search(x[:8], c, k={k})  # load kernels, allocator warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d, i = pyops.vq_search(x, c, k={k})
        assert i.shape == ({n}, {k})
        print(torch.get_num_threads(), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)  # MiB
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYOPS_BACKEND": "cpu"})
    assert out.returncode == 0, out.stderr
    threads, growth_mib = int(out.stdout.split()[-2]), float(out.stdout.split()[-1])
    bound_mib = cpu_search_workspace_bytes(n, num_codes, dim, k, threads) / 2 ** 20 + 32
    matrix_mib = n * num_codes * 4 / 2 ** 20
    assert bound_mib < matrix_mib / 8, "the bound must be able to catch an N x K matrix"
    assert growth_mib <= bound_mib, f"peak RSS grew by {growth_mib:.0f} MiB > {bound_mib:.0f} MiB ({threads} threads)"


# ----------------------------------------------------------------------------------------------------------
# Segment sum.


@pytest.mark.parametrize("device,backend", SEGMENT)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("n,dim,segments", [(1, 1, 1), (100, 37, 13), (257, 5, 300), (0, 4, 3)], ids=str)
def test_segment_sum_matches_reference(device, backend, dtype, n, dim, segments):
    if dtype == torch.float64 and (device == "cuda" or backend == "triton"):
        pytest.skip("float64 runs on the CPU and torch backends only")
    values = randn(n, dim, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(3)
    indices = torch.randint(0, segments, (n,), generator=g).to(device)
    sums, counts = pyops.vq_segment_sum(values, indices, segments, backend=backend)
    ref_sums, ref_counts = reference.segment_sum(values.cpu(), indices.cpu(), segments)
    out = torch.float64 if dtype == torch.float64 else torch.float32
    assert sums.dtype == out and counts.dtype == out and sums.shape == (segments, dim)
    torch.testing.assert_close(counts.cpu().double(), ref_counts, rtol=0, atol=0)
    # The 3x rule: at most 3x the error of torch's own sum in the output precision, plus a floor.
    same_precision = torch.zeros(segments, dim, dtype=out).index_add_(0, indices.cpu(), values.cpu().to(out))
    assert_close("sums", sums.cpu(), ref_sums, same_precision, out)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in SEGMENT if d == "cpu" and b == "cpu"])
def test_segment_sum_deterministic_and_checked(device, backend):
    values = randn(5000, 16, device=device)
    indices = torch.randint(0, 7, (5000,), generator=torch.Generator().manual_seed(0)).to(device)
    a = pyops.vq_segment_sum(values, indices, 7, backend=backend)
    b = pyops.vq_segment_sum(values, indices, 7, backend=backend)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # An index out of range is found by the host pass over the indices (csrc/cpu/vq.cpp): a named ValueError.
    with pytest.raises(ValueError, match="vq_segment_sum: `indices` has value [56] at position"):
        pyops.vq_segment_sum(values, indices, 5, backend=backend)


# ----------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_argument(device):
    x, codebook = randn(4, 8, device=device), randn(10, 8, seed=1, device=device)
    cases = [
        ((randn(4, 7, device=device), codebook), {}, ValueError, "D=8"),
        ((x, codebook), {"k": 11}, ValueError, r"k=11 is out of range \[1, 10\]"),
        ((x, codebook), {"k": 0}, ValueError, "k=0"),
        ((x, codebook), {"k": 1.0}, TypeError, "k must be an int"),
        ((x, codebook), {"metric": "hamming"}, ValueError, "unknown metric 'hamming'"),
        ((x.long(), codebook), {}, TypeError, "x must be a floating-point"),
        ((x, codebook.half()), {}, TypeError, "codebook has dtype torch.float16 but x has torch.float32"),
        ((x, codebook[None]), {}, ValueError, r"codebook must have shape \(\*, \*\)"),
        ((x, codebook.to("meta")), {}, ValueError, f"codebook is on meta but x is on {x.device}"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            pyops.vq_search(*args, **kwargs)
    if device == "cpu":  # the finiteness check is on by default for CPU tensors only (a sync on GPU)
        for name, bad in (("x", (x.index_fill(0, torch.tensor([2]), float("nan")), codebook)),
                          ("codebook", (x, codebook.index_fill(0, torch.tensor([1]), float("inf"))))):
            with pytest.raises(ValueError, match=f"{name} has non-finite"):
                pyops.vq_search(*bad)
    with pytest.raises(TypeError, match="indices must be int64, got torch.int32"):
        pyops.vq_segment_sum(x, torch.zeros(4, dtype=torch.int32, device=device), 3)
    with pytest.raises(ValueError, match=r"indices must have shape \(4,\)"):
        pyops.vq_segment_sum(x, torch.zeros(5, dtype=torch.long, device=device), 3)
    with pytest.raises(ValueError, match=r"num_segments=-1 is out of range"):
        pyops.vq_segment_sum(x, torch.zeros(4, dtype=torch.long, device=device), -1)
    with pytest.raises(TypeError, match="values must be a floating-point"):
        pyops.vq_segment_sum(x.long(), torch.zeros(4, dtype=torch.long, device=device), 3)


@pytest.mark.parametrize("device", DEVICES)
def test_device_mismatch_and_dtype_errors(device):
    """Every public entry point: a tensor on another device than the first tensor argument is a ValueError
    naming both, raised before any kernel runs ("meta" stands in for a second device); a wrong dtype is a
    TypeError naming the argument."""
    x, codebook = randn(4, 8, device=device), randn(10, 8, seed=1, device=device)
    indices = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match=f"^vq_search: codebook is on meta but x is on {x.device}$"):
        pyops.vq_search(x, codebook.to("meta"))
    with pytest.raises(ValueError, match=f"^vq_search: codebook is on {x.device} but x is on meta$"):
        pyops.vq_search(x.to("meta"), codebook)
    with pytest.raises(ValueError, match=f"^vq_segment_sum: indices is on meta but values is on {x.device}$"):
        pyops.vq_segment_sum(x, indices.to("meta"), 3)
    with pytest.raises(ValueError, match=f"^vq_segment_sum: indices is on {x.device} but values is on meta$"):
        pyops.vq_segment_sum(x.to("meta"), indices, 3)
    with pytest.raises(TypeError, match="^vq_search: codebook must be a floating-point tensor, got torch.int64$"):
        pyops.vq_search(x, codebook.long())
    with pytest.raises(TypeError, match="^vq_segment_sum: indices must be int64, got torch.float32$"):
        pyops.vq_segment_sum(x, indices.float(), 3)


@pytest.mark.parametrize("device", DEVICES)
def test_native_op_checks_arguments(device):
    """The C++ entry points check what the Python wrapper already does, for C++ and torch.ops callers."""
    if "cpu" not in pyops.available_backends(device, "vq_search") and device == "cpu":
        pytest.skip("no native CPU kernel")
    x, codebook = randn(4, 8, device=device), randn(10, 8, seed=1, device=device)
    with pytest.raises(ValueError, match="vq_search: codebook has dimension 9 but x has 8"):
        torch.ops.pyops.vq_search(x, randn(10, 9, device=device), 1, "l2", False)
    with pytest.raises(ValueError, match="vq_search: unknown metric 'l1'"):
        torch.ops.pyops.vq_search(x, codebook, 1, "l1", False)
    with pytest.raises(ValueError, match=r"vq_search: k=11 is out of range"):
        torch.ops.pyops.vq_search(x, codebook, 11, "l2", False)
    with pytest.raises(TypeError, match="vq_search: codebook has dtype"):
        torch.ops.pyops.vq_search(x, codebook.double(), 1, "l2", False)
    with pytest.raises(TypeError, match="vq_search: x must be float32, float16 or bfloat16"):
        torch.ops.pyops.vq_search(x.long(), codebook.long(), 1, "l2", False)
    with pytest.raises(ValueError, match="vq_search: x must be 2-D"):
        torch.ops.pyops.vq_search(x[None], codebook, 1, "l2", False)
    indices = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(TypeError, match="vq_segment_sum: indices must be int64"):
        torch.ops.pyops.vq_segment_sum(x, indices.int(), 3)
    with pytest.raises(ValueError, match=r"vq_segment_sum: indices must have shape \[4\]"):
        torch.ops.pyops.vq_segment_sum(x, indices[:3], 3)
    with pytest.raises(ValueError, match="vq_segment_sum: num_segments=-1 is out of range"):
        torch.ops.pyops.vq_segment_sum(x, indices, -1)


# ----------------------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in SEARCH if b not in ("torch",) and
                                            (b != "triton" or d == "cuda")])
def test_opcheck(device, backend):
    search = torch.ops.pyops.vq_search_triton if backend == "triton" else torch.ops.pyops.vq_search
    segment = torch.ops.pyops.vq_segment_sum_triton if backend == "triton" else torch.ops.pyops.vq_segment_sum
    x, codebook = randn(9, 12, device=device), randn(20, 12, seed=1, device=device)
    for metric in METRICS:
        torch.library.opcheck(search, (x, codebook, 3, metric, False))
    indices = torch.randint(0, 5, (9,), generator=torch.Generator().manual_seed(0)).to(device)
    torch.library.opcheck(segment, (x, indices, 5))


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in SEARCH if b != "triton" or d == "cuda"])
def test_torch_compile_fullgraph(device, backend):
    x, codebook = randn(3, 9, 12, device=device), randn(20, 12, seed=1, device=device)

    def quantize(x, codebook):
        d, i = pyops.vq_search(x, codebook, k=2, backend=backend)
        sums, counts = pyops.vq_segment_sum(x.reshape(-1, 12), i[..., 0].reshape(-1), 20, backend=backend)
        return codebook[i[..., 0]], d, sums, counts

    compiled = torch.compile(quantize, fullgraph=True)
    for a, b in zip(compiled(x, codebook), quantize(x, codebook)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_cpu_kernels_at_every_isa_level(cpu_isa_level, dtype):
    # The tests above run the best level (or PYOPS_CPU_ISA); this runs each ISA copy (csrc/cpu/isa.h).
    x, codebook = randn(37, 67, dtype=dtype), randn(1100, 67, seed=1, dtype=dtype)  # K > one 1024-code tile
    for metric in METRICS:
        for exact in (False, True):
            check_search(x, codebook, 5, metric, "cpu", exact)
    values = randn(100, 37, dtype=dtype)
    indices = torch.randint(0, 13, (100,), generator=torch.Generator().manual_seed(3))
    sums, counts = pyops.vq_segment_sum(values, indices, 13, backend="cpu")
    ref_sums, ref_counts = reference.segment_sum(values, indices, 13)
    torch.testing.assert_close(counts.double(), ref_counts, rtol=0, atol=0)
    torch.testing.assert_close(sums.double(), ref_sums, rtol=1e-5, atol=1e-4)
