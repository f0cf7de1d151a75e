"""Attribute retrieval: the k bank entries nearest to (weighted sums of) query embeddings, in one fused search.

A multi-attribute query (A embeddings of one image, each scored against the bank and combined with weights w)
is linear in the bank vector, so it collapses to ONE query vector per image before the search:

- "ip": score(b) = sum_a w_a q_a.b = qc.b with qc = sum_a w_a q_a, so one ``vq_search(qc, bank, metric="ip")``
  returns exactly the distances -score.
- "cosine": score(b) = sum_a w_a n(q_a).n(b) = qc.n(b) with qc = sum_a w_a n(q_a) (n: normalise) = |qc| cos(qc, b).
  ``vq_search(qc, bank, metric="cosine")`` returns d = 1 - cos(qc, b), so score = |qc| (1 - d) and the distance
  is 1 - |qc| (1 - d). For a fixed query, d -> 1 - |qc| (1 - d) is increasing (|qc| >= 0), so vq_search's order
  (nearest first, equal distances in index order) is the order of the combined score as well; qc = 0 (a zero
  query, or attributes that cancel) gives score 0 for every entry, distance 1, indices 0..k-1, as the reference.
  This is chosen over an "ip" search against a normalised bank: that needs a normalised copy of the whole
  bank per call (3 GiB for 10^6 x 768 fp32) or a cached one, while the cosine search normalises the bank rows
  on the fly; both search one vector per image and re-rank with exact fp32 distances.

The search precision, the error bound and ``exact`` are vq_search's (see pyops/vq.py). For A > 1 (or with
weights) the combined query is formed in fp32 (fp64 for fp64) and rounded once to the input dtype for the
search, which for fp16/bf16 inputs adds one rounding of the query (relative 2^-11 / 2^-8) to the bound.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_int, check_tensor
from .reference import contrastive as reference
from .reference.vq import NORM_EPS
from .vq import MAX_K, vq_search
from .vq_index import VQIndex

METRICS = reference.RETRIEVE_METRICS


def _search(x: Tensor, bank, k: int, metric: str, exact: bool, backend: Optional[str]) -> Tuple[Tensor, Tensor]:
    if isinstance(bank, VQIndex):  # prepared once: its codes were checked when it was built
        return bank.search(x, k, backend=backend)
    # vq_search checks the bank for NaN/inf (a pass over it, on CPU tensors); checking it here as well would
    # double that pass, so its error is renamed to this op's instead.
    try:
        return vq_search(x, bank, k=k, metric=metric, exact=exact, backend=backend)
    except ValueError as e:
        if str(e) == "vq_search: codebook has non-finite values":
            raise ValueError("retrieve: bank has non-finite values") from None
        raise


def retrieve(
    queries: Tensor,  # [Q, D] or [Q, A, D]
    bank,  # [B, D] Tensor or a VQIndex of one
    k: int,
    *,
    weights: Optional[Tensor] = None,  # [A] or [Q, A]
    metric: str = "cosine",
    exact: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """The k bank entries with the highest (weighted multi-attribute) similarity to each query.

    Args:
        queries: ``(Q, D)`` query embeddings, or ``(Q, A, D)``: A attribute embeddings per query image, scored
            as ``score(q, b) = sum_a w_a sim(q_a, b)``; fp32, fp16 or bf16 (fp64 on the CPU and torch backends).
        bank: ``(B, D)`` embeddings searched, same dtype and device as queries; or a `pyops.VQIndex` of them
            built with this metric, which a bank searched many times should be (it is prepared once: no per-call
            conversion of the bank, which dominates at a few queries). Its precision then replaces ``exact``.
        k: results per query, ``1 <= k <= min(B, 128)``.
        weights: ``(A,)`` or ``(Q, A)`` floating weights (any sign), on the queries' device; default 1/A
            (1 for 2-D queries, which count as A = 1).
        metric: "cosine" (sim = cosine similarity, distance 1 - score) or "ip" (inner product, distance -score).
        exact: search in fp32 (fp64 for fp64) instead of the input precision / tf32 / int8 (vq_search's).
        backend: vq_search's backend: "cuda", "triton", "cpu", "torch" or None for the fastest available.

    Returns:
        ``(distances, indices)``, each ``(Q, k)``, best first, equal distances in index order; distances fp32
        (fp64 for fp64 inputs), indices int64. Not differentiable (as vq_search): gather ``bank[indices]``.
    """
    op = "retrieve"
    check_tensor(op, "queries", queries, floating=True)
    index = bank if isinstance(bank, VQIndex) else None
    if index is not None:
        if index.metric != metric:
            raise ValueError(f"{op}: bank is a VQIndex with metric {index.metric!r}, but metric={metric!r}")
        bank = index.codebook
    check_tensor(op, "bank", bank, (None, None), floating=True, like=("queries", queries))
    if queries.dim() not in (2, 3) or queries.shape[-1] != bank.shape[1]:
        raise ValueError(f"{op}: queries must have shape (Q, D) or (Q, A, D) with D={bank.shape[1]} (the bank's), "
                         f"got {tuple(queries.shape)}")
    if queries.dim() == 3 and queries.shape[1] == 0:
        raise ValueError(f"{op}: queries must have at least one attribute, got shape {tuple(queries.shape)}")
    check_choice(op, "metric", metric, METRICS)
    if bank.shape[0] == 0:
        raise ValueError(f"{op}: bank is empty (shape {tuple(bank.shape)}); it needs at least one entry")
    check_int(op, "k", k, 1, min(bank.shape[0], MAX_K))
    num_q, num_a, dim = queries.shape[0], (queries.shape[1] if queries.dim() == 3 else 1), bank.shape[1]
    if weights is not None:
        check_tensor(op, "weights", weights, floating=True, like=("queries", queries), same_dtype=False)
        if tuple(weights.shape) not in ((num_a,), (num_q, num_a)):
            raise ValueError(f"{op}: weights must have shape ({num_a},) or ({num_q}, {num_a}) for queries of shape "
                             f"{tuple(queries.shape)}, got {tuple(weights.shape)}")
        _backend.check_finite(op, "weights", weights)
    _backend.check_finite(op, "queries", queries)
    queries, bank = queries.detach(), (index if index is not None else bank.detach())

    if weights is None and num_a == 1:  # one embedding per query: a plain search, nothing to combine
        return _search(queries.reshape(num_q, dim), bank, k, metric, exact, backend)

    math = torch.float64 if queries.dtype == torch.float64 else torch.float32
    qs = queries.to(math).reshape(num_q, num_a, dim)
    w = (torch.full((), 1.0 / num_a, dtype=math, device=qs.device) if weights is None
         else weights.detach().to(math)).expand(num_q, num_a)
    if metric == "cosine":
        qs = F.normalize(qs, dim=-1, eps=NORM_EPS)
    qc = (w[..., None] * qs).sum(1)  # [Q, D]: the whole weighted query as one vector
    d, i = _search(qc.to(queries.dtype), bank, k, metric, exact, backend)
    if metric == "cosine":
        d = 1 - qc.norm(dim=1, keepdim=True).to(d.dtype) * (1 - d)  # 1 - |qc| cos(qc, b), same order as d
    return d, i
