"""Nearest-code search (fused distance + top-k) and the segment sum behind EMA codebooks.

`vq_search` never materialises the N x K distance matrix: every backend walks the codebook in tiles,
keeps a running top-(k + 8) per row, and re-ranks those candidates with exact fp32 distances. The search
stage runs in the input precision (tensor cores on GPU; tf32 for fp32 inputs unless ``exact=True``), so
the returned top-k equals an fp32 brute-force search except where a low-precision score error can swap
codes: a score differs from the exact one by at most about ``2**-8 * |x| * |c|`` (bf16; ``2**-11`` for
fp16 and tf32), and the true k-th nearest code is lost only if 8 other codes all land within that error
of it. Returned distances are always the exact fp32 ones.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_int, check_tensor
from .reference import vq as reference

if _backend.HAS_TRITON:
    from .triton_kernels import vq as _triton  # noqa: F401  (registers pyops::vq_*_triton)

METRICS = reference.METRICS
MAX_K = 128  # the fused kernels keep a running top-(k + 8) per row; VQ uses k of 1 to 16
RERANK_EXTRA = 8  # candidates searched beyond k and re-ranked exactly (kRerankExtra in vq_math.h)
_WORKSPACE_BYTES = 256 << 20  # bound on the torch backend's [rows, K] score blocks


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_search(x, codebook, k, metric, exact):
    return x.new_empty(x.shape[0], k, dtype=_out_dtype(x)), x.new_empty(x.shape[0], k, dtype=torch.long)


def _fake_segment_sum(values, indices, num_segments):
    dtype = _out_dtype(values)
    return values.new_empty(num_segments, values.shape[1], dtype=dtype), values.new_empty(num_segments, dtype=dtype)


if _backend._NATIVE_ERROR is None:
    torch.library.register_fake("pyops::vq_search")(_fake_search)
    torch.library.register_fake("pyops::vq_segment_sum")(_fake_segment_sum)


# ----------------------------------------------------------------------------------------------------------
# The "torch" backend: the same algorithm in plain PyTorch, chunked so its workspace stays bounded.


def _rerank(x: Tensor, codebook: Tensor, candidates: Tensor, k: int, metric: str) -> Tuple[Tensor, Tensor]:
    """Exact distances (fp32, fp64 for fp64) of each row's candidate codes [N, C], sorted; the top k."""
    math = _out_dtype(x)
    xs, cs = x.to(math)[:, None, :], codebook[candidates].to(math)  # [N, 1, D], [N, C, D]
    if metric == "l2":
        d = ((xs - cs) ** 2).sum(-1)
    elif metric == "ip":
        d = -(xs * cs).sum(-1)
    else:
        eps = reference.NORM_EPS
        d = 1 - (xs * cs).sum(-1) / (xs.norm(dim=-1).clamp_min(eps) * cs.norm(dim=-1).clamp_min(eps))
    # Candidates arrive in index order within equal distances only after a stable sort by index first.
    by_index, perm = candidates.sort(dim=1)
    d = d.gather(1, perm)
    d, order = torch.sort(d, dim=1, stable=True)
    return d[:, :k], by_index.gather(1, order)[:, :k]


def _search_torch(x: Tensor, codebook: Tensor, k: int, metric: str, exact: bool) -> Tuple[Tensor, Tensor]:
    n, num_codes = x.shape[0], codebook.shape[0]
    cand = min(num_codes, k + RERANK_EXTRA)
    low_precision = x.dtype in (torch.float16, torch.bfloat16) and x.is_cuda and not exact
    score_dtype = x.dtype if low_precision else _out_dtype(x)
    c = codebook.to(score_dtype)
    if metric == "l2":
        offset = (codebook.to(_out_dtype(x)) ** 2).sum(1).to(score_dtype)  # ||c||^2, once per call
    elif metric == "cosine":
        c = c / codebook.to(_out_dtype(x)).norm(dim=1, keepdim=True).clamp_min(reference.NORM_EPS).to(score_dtype)
    # Per row: fp32 scores, the stable sort's values and int64 indices, and the re-rank gather.
    rows = max(1, _WORKSPACE_BYTES // (16 * num_codes + 8 * cand * x.shape[1]))
    out_d, out_i = [], []
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        scores = xb.to(score_dtype) @ c.T  # [rows, K]
        scores = offset - 2 * scores if metric == "l2" else -scores
        cand_idx = torch.sort(scores, dim=1, stable=True).indices[:, :cand]  # ties: lower index (topk is not)
        d, i = _rerank(xb, codebook, cand_idx, k, metric)
        out_d.append(d)
        out_i.append(i)
    if not out_d:
        return _fake_search(x, codebook, k, metric, exact)
    return torch.cat(out_d), torch.cat(out_i)


def _segment_sum_torch(values: Tensor, indices: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    dtype = _out_dtype(values)
    sums = values.new_zeros(num_segments, values.shape[1], dtype=dtype).index_add_(0, indices, values.to(dtype))
    ones = values.new_ones(len(indices), dtype=dtype)
    counts = values.new_zeros(num_segments, dtype=dtype).index_add_(0, indices, ones)
    return sums, counts


# ----------------------------------------------------------------------------------------------------------
# The public functional ops.


def vq_search(
    x: Tensor,  # [..., D]
    codebook: Tensor,  # [K, D]
    *,
    k: int = 1,
    metric: str = "l2",
    exact: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """The k nearest codes of every vector in x, without building the N x K distance matrix.

    Args:
        x: query vectors ``(..., D)``; fp32, fp16 or bf16 (fp64 on the CPU and torch backends).
        codebook: ``(K, D)`` codes, same dtype and device as x.
        k: neighbours per vector, ``1 <= k <= min(K, 128)``.
        metric: "l2" (squared Euclidean), "cosine" (1 - cosine similarity; a zero vector is at distance 1
            from every code) or "ip" (minus the inner product).
        exact: search in fp32 (fp64 for fp64) instead of the input precision / tf32 tensor cores.
        backend: "cuda", "triton", "cpu", "torch" or None for $PYOPS_BACKEND or the fastest available.

    Returns:
        ``(distances, indices)``, each ``(..., k)``, nearest first, equal distances in index order (as
        ``torch.argmin``). Distances are exact fp32 (fp64 for fp64 inputs); indices are int64. Not
        differentiable: gather ``codebook[indices]`` to build a loss.
    """
    check_tensor("vq_search", "x", x, floating=True)
    check_tensor("vq_search", "codebook", codebook, (None, None), floating=True, like=("x", x))
    if x.dim() == 0 or x.shape[-1] != codebook.shape[1]:
        raise ValueError(f"vq_search: x must have shape (..., D) with D={codebook.shape[1]} (the codebook's), "
                         f"got {tuple(x.shape)}")
    check_choice("vq_search", "metric", metric, METRICS)
    if not isinstance(exact, bool):
        raise TypeError(f"vq_search: exact must be a bool, got {type(exact).__name__}")
    num_codes = codebook.shape[0]
    if num_codes == 0:
        raise ValueError("vq_search: codebook is empty (shape (0, D)); it needs at least one code")
    check_int("vq_search", "k", k, 1, min(num_codes, MAX_K))
    _backend.check_finite("vq_search", "codebook", codebook)
    _backend.check_finite("vq_search", "x", x)

    lead = x.shape[:-1]
    x2 = x.detach().reshape(-1, x.shape[-1])
    codebook = codebook.detach()
    # Measured on an H100 (benchmarks/results/nvidia-h100-80gb-hbm3-vq.md): the Triton search is 1.4-2.7x
    # faster than the CUDA one in the default tensor-core mode; the CUDA FP32 path is 2.5x faster for exact.
    which = _backend.resolve(backend, x.device, "vq_search",
                             gpu_order=("cuda", "triton") if exact else ("triton", "cuda"))
    if which == "torch":
        d, i = _search_torch(x2, codebook, k, metric, exact)
    elif which == "triton":
        d, i = torch.ops.pyops.vq_search_triton(x2.contiguous(), codebook.contiguous(), k, metric, exact)
    else:
        d, i = torch.ops.pyops.vq_search(x2, codebook, k, metric, exact)
    return d.reshape(*lead, k), i.reshape(*lead, k)


def vq_segment_sum(
    values: Tensor,  # [N, D]
    indices: Tensor,  # [N] int64
    num_segments: int,
    *,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """Sums and counts of the rows of values grouped by index: what an EMA codebook update needs, without
    the N x K one-hot matrix.

    Returns:
        ``(sums (num_segments, D), counts (num_segments,))`` in fp32 (fp64 for fp64 values).
    """
    check_tensor("vq_segment_sum", "values", values, (None, None), floating=True)
    check_tensor("vq_segment_sum", "indices", indices, (values.shape[0],), dtype=torch.long, like=("values", values),
                 same_dtype=False)
    check_int("vq_segment_sum", "num_segments", num_segments, 0)
    values, indices = values.detach(), indices.detach()
    which = _backend.resolve(backend, values.device, "vq_segment_sum")
    if which == "torch":
        return _segment_sum_torch(values, indices, num_segments)
    if which == "triton":
        return torch.ops.pyops.vq_segment_sum_triton(values.contiguous(), indices.contiguous(), num_segments)
    return torch.ops.pyops.vq_segment_sum(values, indices, num_segments)
