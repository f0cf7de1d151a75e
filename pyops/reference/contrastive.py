"""Pure-PyTorch contrastive losses and attribute retrieval: the specification every backend is tested against.

Everything here builds the full N x M logits on purpose (it is the readable spec, run in float64 by the tests);
the fused ops compute the same numbers without materialising them.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .vq import NORM_EPS

REDUCTIONS = ("mean", "sum", "none")
RETRIEVE_METRICS = ("cosine", "ip")


def positive_groups(n: int, m: int, labels: Optional[Tensor], q_groups: Optional[Tensor],
                    k_groups: Optional[Tensor], device) -> Tuple[Tensor, Tensor]:
    """The (row group, column group) ids every kernel works with: S_ij is a positive iff qg[i] == kg[j].

    labels (N,): column index per row, so qg = labels and kg = arange(M). Groups: qg, kg as given (SupCon).
    Neither: the diagonal, qg = kg = arange(N) (CLIP; needs N == M).
    """
    if labels is not None:
        return labels, torch.arange(m, device=device)
    if q_groups is not None:
        return q_groups, k_groups
    return torch.arange(n, device=device), torch.arange(m, device=device)


def _masked_mean(losses: Tensor, has_positive: Tensor) -> Tensor:
    """Mean over the entries that have a positive; 0 (not NaN) when none has."""
    return losses.sum() / has_positive.sum().clamp_min(1)


def contrastive_loss(
    q: Tensor,  # [N, D]
    k: Tensor,  # [M, D]
    logit_scale: Tensor,  # 0-d
    labels: Optional[Tensor] = None,  # [N] int64 in [0, M)
    q_groups: Optional[Tensor] = None,  # [N] int64
    k_groups: Optional[Tensor] = None,  # [M] int64
    symmetric: bool = True,
    reduction: str = "mean",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """InfoNCE / CLIP / SupCon-L_out over the logits S = logit_scale * q k^T (q and k are not normalised here).

    Row loss r_i = logsumexp_j S_ij - mean_{j in P(i)} S_ij with P(i) = {j : qg[i] == kg[j]}; the column loss
    c_j is the same over the columns. A row (column) without a positive has loss 0 and is left out of the mean.
    reduction "mean": (mean_valid(r) + mean_valid(c)) / 2 if symmetric else mean_valid(r); "sum": the same with
    sums; "none": (r, c) if symmetric else r, as float32 (float64 for float64 inputs).
    """
    math = torch.float64 if q.dtype == torch.float64 else torch.float32
    n, m = q.shape[0], k.shape[0]
    qg, kg = positive_groups(n, m, labels, q_groups, k_groups, q.device)
    s = logit_scale.to(math) * (q.to(math) @ k.to(math).T)
    pos = (qg[:, None] == kg[None, :]).to(math)

    def one_side(s: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
        npos = pos.sum(1)
        has = npos > 0
        loss = torch.logsumexp(s, dim=1) - (s * pos).sum(1) / npos.clamp_min(1)
        return torch.where(has, loss, torch.zeros_like(loss)), has

    r, r_has = one_side(s, pos)
    if not symmetric:
        if reduction == "none":
            return r
        return _masked_mean(r, r_has) if reduction == "mean" else r.sum()
    c, c_has = one_side(s.T, pos.T)
    if reduction == "none":
        return r, c
    if reduction == "mean":
        return (_masked_mean(r, r_has) + _masked_mean(c, c_has)) / 2
    return (r.sum() + c.sum()) / 2


def masked_mean_pool(tokens: Tensor, mask: Tensor) -> Tensor:
    """(..., L, D) tokens, (..., L) mask (bool or 0/1 float) -> (..., D) mean of the kept tokens; a slot with no
    kept token pools to the zero vector (whose cosine with anything is 0)."""
    w = mask.to(tokens.dtype)
    return (tokens * w[..., None]).sum(-2) / w.sum(-1, keepdim=True).clamp_min(1)


def attribute_pair_loss(
    ex: Tensor,  # [B, A, D] pooled, or [B, A, L, D] tokens
    ey: Tensor,  # same shape as ex
    logit_scale: Tensor,  # 0-d
    mask: Optional[Tensor] = None,  # [B, A, L] with token inputs
) -> Tensor:
    """Omni-Attribute's contrastive term: per pair b, the A x A cosine similarities of image x's attribute
    embeddings (rows) with image y's (columns), scaled by logit_scale; slot 0 is the shared (positive)
    attribute, so loss_b = logsumexp over all A x A cells - the (0, 0) cell. Returns the mean over B (0-d,
    float32; float64 for float64 inputs). Token inputs are mean-pooled first (over the mask's kept tokens)."""
    math = torch.float64 if ex.dtype == torch.float64 else torch.float32
    ex, ey = ex.to(math), ey.to(math)
    if ex.dim() == 4:
        if mask is None:
            mask = torch.ones(ex.shape[:3], dtype=math, device=ex.device)
        ex, ey = masked_mean_pool(ex, mask), masked_mean_pool(ey, mask)
    nx, ny = F.normalize(ex, dim=-1, eps=NORM_EPS), F.normalize(ey, dim=-1, eps=NORM_EPS)
    s = logit_scale.to(math) * (nx @ ny.transpose(1, 2))  # [B, A, A]
    return (torch.logsumexp(s.flatten(1), dim=1) - s[:, 0, 0]).mean()


def retrieve(
    queries: Tensor,  # [Q, D] or [Q, A, D]
    bank: Tensor,  # [B, D]
    k: int,
    weights: Optional[Tensor] = None,  # [A] or [Q, A] with [Q, A, D] queries
    metric: str = "cosine",
) -> Tuple[Tensor, Tensor]:
    """Brute-force attribute retrieval in float64. score(q, b) = sum_a w_a sim(q_a, b) with sim the cosine
    similarity ("cosine") or the inner product ("ip"); w = 1 for 2-D queries, 1/A when weights is None.
    Returns (distances, indices), each (Q, k), best first, equal scores in index order. Distances are
    1 - score ("cosine") or -score ("ip"), as vq_search's."""
    qs = queries.double()
    if qs.dim() == 2:
        qs = qs[:, None, :]
    w = (torch.full(qs.shape[:2], 1.0 / qs.shape[1], dtype=torch.float64, device=qs.device) if weights is None
         else weights.double().expand(qs.shape[:2]))
    b = bank.double()
    if metric == "cosine":
        qs, b = F.normalize(qs, dim=-1, eps=NORM_EPS), F.normalize(b, dim=-1, eps=NORM_EPS)
    score = torch.einsum("qa,qad,bd->qb", w, qs, b)
    dist = 1 - score if metric == "cosine" else -score
    d, i = torch.sort(dist, dim=1, stable=True)
    return d[:, :k], i[:, :k]
