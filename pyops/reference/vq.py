"""Pure-PyTorch nearest-code search and segment sum: the specification every backend is tested against.

Computed in float64 on whatever device the inputs are on; memory is O(N * K), so keep test sizes small.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("l2", "cosine", "ip")
NORM_EPS = 1e-12  # F.normalize's eps: a zero vector normalises to zero, so its cosine distance is 1, not NaN


def distances(x: Tensor, codebook: Tensor, metric: str) -> Tensor:  # [N, D], [K, D] -> [N, K] float64
    """Every row of x against every code: squared L2, 1 - cosine similarity, or minus the inner product."""
    x, c = x.double(), codebook.double()
    if metric == "l2":
        # The expansion is exact enough in float64 (error ~1e-16 |x||c|) and needs no [N, K, D] tensor.
        return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0)
    if metric == "cosine":
        return 1 - F.normalize(x, dim=1, eps=NORM_EPS) @ F.normalize(c, dim=1, eps=NORM_EPS).T
    if metric == "ip":
        return -(x @ c.T)
    raise ValueError(f"vq reference: unknown metric {metric!r}; expected one of {METRICS}")


def vq_search(x: Tensor, codebook: Tensor, k: int = 1, metric: str = "l2") -> Tuple[Tensor, Tensor]:
    """The k nearest codes of each row of x ([N, D]) in codebook ([K, D]): (distances [N, k] float64,
    indices [N, k] int64), ascending; equal distances keep the lower index first, as torch.argmin does."""
    d = distances(x, codebook, metric)
    d, idx = torch.sort(d, dim=1, stable=True)
    return d[:, :k], idx[:, :k]


def segment_sum(values: Tensor, indices: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    """Per-segment sums of the rows of values ([N, D]) and row counts: (sums [S, D], counts [S]), float64."""
    sums = values.new_zeros(num_segments, values.shape[1], dtype=torch.float64)
    sums.index_add_(0, indices, values.double())
    counts = torch.bincount(indices, minlength=num_segments).double()
    return sums, counts
