"""64-bit indexing (issue 16, point 3): problems whose element counts or index products pass 2^31, where an int32
offset would wrap. A few outputs of each are checked against a float64 recomputation of just those outputs.

CPU (run everywhere, each a second or three on one core, well under 1 GiB):
- vq_search with N * K > 2^31 (65,536 rows x 32,771 codes): the fused search's row x code index arithmetic; it
  never builds the N x K matrix, so the inputs are small.
- contrastive_loss with N * M > 2^31 (46,341 x 46,341): the chunked logits' row x column arithmetic, same idea.
Not testable on CPU without allocating more than 2^31 elements: derf (its output is as large as x, and the
native op makes an expanded x contiguous), vq_segment_sum (values are made contiguous), hexplane (planes), the
rasterizer (its image) and derf_linear (its output); their > 2^31 cases are GPU tests or need one.

GPU (skipped without CUDA): derf on a tensor of more than 2^31 elements (bf16, 4 GiB), every GPU backend; and
vq_search with N * K above 2^31 (65,536 x 40,000 codes).
"""

import pytest
import torch
from utils import kernel_backends

import pyops

LIMIT = 2**31
CUDA = torch.cuda.is_available()


def _vq_rows_check(x, codebook, d, i, rows, metric="l2"):
    """The returned codes of `rows` are a nearest code (float64 brute force over the whole codebook)."""
    from pyops.reference import vq as ref

    full = ref.distances(x[rows].double(), codebook.double(), metric)  # [len(rows), K]
    best = full.min(dim=1).values
    mine = full.gather(1, i[rows].cpu()[:, :1] if full.device.type == "cpu" else i[rows][:, :1]).squeeze(1)
    scale = x[rows].double().norm(dim=1) * codebook.double().norm(dim=1).max() + 1.0
    assert ((mine - best).abs() <= 2**-9 * scale).all(), "a returned code is not a nearest one"
    assert torch.allclose(d[rows][:, 0].double(), mine, rtol=1e-4, atol=1e-4 * scale.max().item())


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vq_search_cpu_rows_times_codes_above_2_31(metric):
    g = torch.Generator().manual_seed(0)
    n, num_codes, dim = 65_536, 32_771, 4
    assert n * num_codes > LIMIT
    x = torch.randn(n, dim, generator=g)
    codebook = torch.randn(num_codes, dim, generator=g)
    d, i = pyops.vq_search(x, codebook, k=2, metric=metric, backend="cpu")
    assert ((i >= 0) & (i < num_codes)).all()
    # The last rows and codes are where a wrapped row * K + code offset would land.
    x[-1] = codebook[-1]  # an exact match with the last code: distance ~0, index K - 1
    d, i = pyops.vq_search(x, codebook, k=2, metric=metric, backend="cpu")
    assert i[-1, 0] == num_codes - 1
    _vq_rows_check(x, codebook, d, i, torch.tensor([0, 1, n // 2, n - 2, n - 1]), metric)


def test_contrastive_loss_cpu_rows_times_columns_above_2_31():
    g = torch.Generator().manual_seed(1)
    n, dim = 46_341, 4
    assert n * n > LIMIT
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    scale = torch.tensor(5.0)
    rows, cols = pyops.contrastive_loss(q, k, scale, reduction="none", backend="cpu")
    for i in (0, 1, n // 2, n - 1):  # float64 recomputation of single rows and columns: O(N D) each
        row = 5.0 * (k.double() @ q[i].double())
        assert abs(rows[i].item() - (torch.logsumexp(row, 0) - row[i]).item()) < 1e-4
        col = 5.0 * (q.double() @ k[i].double())
        assert abs(cols[i].item() - (torch.logsumexp(col, 0) - col[i]).item()) < 1e-4


# ----------------------------------------------------------------------------------------------------------
# GPU.


@pytest.mark.skipif(not CUDA, reason="needs CUDA (a > 2^31-element tensor)")
@pytest.mark.parametrize("backend", kernel_backends("cuda") if CUDA else [])
def test_derf_cuda_more_than_2_31_elements(backend):
    c = 1024
    rows = LIMIT // c + 3  # 2^31 + 3072 elements, bf16: 4 GiB in, 4 GiB out
    x = torch.empty(rows, c, device="cuda", dtype=torch.bfloat16)
    x.view(-1)[:LIMIT].uniform_(-2, 2)
    x.view(-1)[LIMIT:].uniform_(-3, 3)
    alpha = torch.rand(c, device="cuda") + 0.2
    shift, weight, bias = (torch.randn(c, device="cuda") for _ in range(3))
    y = pyops.derf(x, alpha, shift, weight, bias, backend=backend)
    # Rows before, across and after element 2^31 (row LIMIT // c starts exactly there).
    for r in (0, LIMIT // c - 1, LIMIT // c, rows - 1):
        xr = x[r].double()
        want = weight.double() * torch.erf(alpha.double() * xr + shift.double()) + bias.double()
        assert (y[r].double() - want).abs().max().item() <= 2e-2 * max(1.0, want.abs().max().item()), r
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", kernel_backends("cuda", "vq_search") if CUDA else [])
def test_vq_search_cuda_rows_times_codes_above_2_31(backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    n, num_codes, dim = 65_536, 40_000, 8
    assert n * num_codes > LIMIT
    x = torch.randn(n, dim, device="cuda", generator=g)
    codebook = torch.randn(num_codes, dim, device="cuda", generator=g)
    x[-1] = codebook[-1]
    d, i = pyops.vq_search(x, codebook, k=4, exact=True, backend=backend)
    assert i[-1, 0].item() == num_codes - 1
    _vq_rows_check(x, codebook, d, i, torch.tensor([0, 1, n // 2, n - 2, n - 1], device="cuda"))
