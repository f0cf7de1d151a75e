"""Contrastive loss over a batch split across processes (torch.distributed): the loss and gradients of the
global batch, each rank holding only its own rows.

Global batch = the ranks' rows concatenated in rank order (ranks may hold different numbers of rows). Each rank

1. gathers every rank's q and k rows (and their positive-group ids) with one all_gather: O((N + M) D) per rank;
2. computes the row losses of its own rows against all M columns, and (symmetric) the column losses of its own
   columns against all N rows, with ``local_loss`` (the fused kernels: no N x M block, only tiles);
3. reduces them with the GLOBAL counts of rows / columns that have a positive (an all_reduce of two numbers).

Gradients. Write the global loss as L = sum_r L_r, where L_r is the part made of rank r's rows and columns.
Rank r's autograd graph holds only L_r: its value is completed to L with an all_reduce of the detached L_r
(``L_r + (sum_r' L_r' - L_r).detach()``), which carries no gradient. Rank r's L_r reaches other ranks' rows
through the gathered copies; the gather's backward sums, for every rank's slice, the gradients all ranks
computed for it (a reduce-scatter on NCCL, an all_reduce elsewhere) and returns rank r its rows' share. So
after every rank calls ``loss.backward()`` once, q.grad and k.grad on rank r are dL/dq_r and dL/dk_r exactly,
as in one process over the global batch. logit_scale is replicated: its gradient is all_reduce-summed in the
same backward, so every rank's logit_scale.grad is the full dL/dlogit_scale (the single-process value) with no
DDP hook. Under DDP, which averages gradients of replicated parameters over the ranks, that average is the
same value; q and k are activations, not parameters, so DDP does not touch them. Every rank must call the
loss and its backward (collectives in both).

Gathering everything (rather than passing key blocks round a ring as Inf-CL does) costs O((N + M) D) memory
per rank, which at D = 768 is ~3 MiB per 1,000 rows in fp32; the N x M logits are never formed anywhere.
"""

from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import check_choice
from .reference.contrastive import REDUCTIONS

LocalLoss = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


def _gather_sizes(sizes: List[int], device, group) -> List[List[int]]:
    """Every rank's `sizes` (a short list of ints), in rank order."""
    world = dist.get_world_size(group)
    mine = torch.tensor(sizes, dtype=torch.long, device=device)
    out = mine.new_empty(world, len(sizes))
    dist.all_gather(list(out.unbind(0)), mine, group=group)
    return out.tolist()  # the one host sync: the padded layout needs the sizes


def _all_gather_rows(parts: List[Tensor], sizes: List[List[int]], group) -> List[Tensor]:
    """parts[p] ((sizes[rank][p], ...) on this rank) -> every rank's parts[p] concatenated in rank order, with one
    all_gather of a padded buffer (all_gather needs equal sizes)."""
    world, rank = len(sizes), dist.get_rank(group)
    widths = [max(s[p] for s in sizes) for p in range(len(parts))]
    starts = [sum(widths[:p]) for p in range(len(parts))]
    buf = parts[0].new_zeros(world, sum(widths), *parts[0].shape[1:])
    for p, t in enumerate(parts):
        buf[rank, starts[p]:starts[p] + t.shape[0]] = t
    dist.all_gather(list(buf.unbind(0)), buf[rank].clone(), group=group)
    return [torch.cat([buf[r, starts[p]:starts[p] + sizes[r][p]] for r in range(world)]) for p in range(len(parts))]


class _GatherRows(torch.autograd.Function):
    """(logit_scale, q, k) -> (logit_scale, all ranks' q, all ranks' k), differentiable: the backward returns
    this rank's slice of the gradients summed over all ranks, and the all-rank sum of logit_scale's gradient.
    One autograd node, so the backward's collectives run in the same order on every rank."""

    @staticmethod
    def forward(ctx, logit_scale, q, k, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        gq, gk = _all_gather_rows([q, k], sizes, group)
        return logit_scale.clone(), gq, gk

    @staticmethod
    def backward(ctx, d_scale, d_gq, d_gk):
        sizes, group = ctx.sizes, ctx.group
        world, rank = len(sizes), dist.get_rank(group)
        max_n, max_m = max(s[0] for s in sizes), max(s[1] for s in sizes)
        # The ranks' shares are summed in fp32 for fp16/bf16 rows: one rounding at the end, as in one process.
        acc = torch.float32 if d_gq.dtype in (torch.float16, torch.bfloat16) else d_gq.dtype
        buf = d_gq.new_zeros(world, max_n + max_m, d_gq.shape[1], dtype=acc)
        for r, (dq, dk) in enumerate(zip(d_gq.split([s[0] for s in sizes]), d_gk.split([s[1] for s in sizes]))):
            buf[r, :dq.shape[0]] = dq
            buf[r, max_n:max_n + dk.shape[0]] = dk
        if dist.get_backend(group) == dist.Backend.NCCL:
            mine = buf.new_empty(buf.shape[1:])
            dist.reduce_scatter_tensor(mine, buf, group=group)
        else:  # gloo has no reduce_scatter; the all_reduce moves twice the bytes
            dist.all_reduce(buf, group=group)
            mine = buf[rank]
        d_scale = d_scale.clone()
        if ctx.needs_input_grad[0]:
            dist.all_reduce(d_scale, group=group)
        n, m = sizes[rank]
        return d_scale, mine[:n].to(d_gq.dtype), mine[max_n:max_n + m].to(d_gk.dtype), None, None


def distributed_contrastive_loss(
    q: Tensor,  # [n_r, D] this rank's rows
    k: Tensor,  # [m_r, D] this rank's columns
    logit_scale: Tensor,  # 0-d, the same on every rank
    *,
    labels: Optional[Tensor] = None,  # [n_r] GLOBAL column indices
    q_groups: Optional[Tensor] = None,  # [n_r] global group ids
    k_groups: Optional[Tensor] = None,  # [m_r]
    symmetric: bool = True,
    reduction: str = "mean",
    group=None,
    local_loss: LocalLoss,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """contrastive_loss over the global batch (all ranks' rows, in rank order) of a process group.

    ``local_loss(q, k, logit_scale, qg, kg) -> (row_losses (n,), has_positive (n,) bool)`` is the non-symmetric
    per-row loss of rows q against columns k (S_ij positive iff qg[i] == kg[j]), differentiable w.r.t. q, k and
    logit_scale. Returns the global loss (the same value on every rank; "mean" / "sum"), or with "none" this
    rank's row losses (and column losses when symmetric); the gradients are the single-process ones (module doc).
    """
    op = "contrastive_loss"
    check_choice(op, "reduction", reduction, REDUCTIONS)
    if group is None:
        group = dist.group.WORLD
    n, m = q.shape[0], k.shape[0]
    sizes = _gather_sizes([n, m], q.device, group)
    rank = dist.get_rank(group)
    q_off, k_off = sum(s[0] for s in sizes[:rank]), sum(s[1] for s in sizes[:rank])
    big_n, big_m = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
    cols = torch.arange(k_off, k_off + m, device=q.device)
    if labels is not None:
        qg, kg = labels, cols
    elif q_groups is not None:
        qg, kg = q_groups, k_groups
    else:
        if big_n != big_m:
            raise ValueError(f"{op}: the default (diagonal) positives need as many rows as columns in the global "
                             f"batch, got {big_n} rows and {big_m} columns (pass labels or groups)")
        qg, kg = torch.arange(q_off, q_off + n, device=q.device), cols
    all_qg, all_kg = _all_gather_rows([qg.long(), kg.long()], sizes, group)
    # Only the symmetric loss needs the other ranks' q rows (for its column losses).
    scale, all_q, all_k = _GatherRows.apply(logit_scale, q if symmetric else q[:0], k,
                                            [[s[0] if symmetric else 0, s[1]] for s in sizes], group)

    rows, row_has = local_loss(q, all_k, scale, qg, all_kg)
    if symmetric:
        cols_loss, col_has = local_loss(k, all_q, scale, kg, all_qg)
    if reduction == "none":
        return (rows, cols_loss) if symmetric else rows
    if reduction == "sum":
        share = (rows.sum() + cols_loss.sum()) / 2 if symmetric else rows.sum()
    else:
        counts = torch.stack([row_has.sum(), col_has.sum() if symmetric else row_has.sum()]).to(rows.dtype)
        dist.all_reduce(counts, group=group)
        counts = counts.clamp_min(1)
        share = ((rows.sum() / counts[0] + cols_loss.sum() / counts[1]) / 2 if symmetric
                 else rows.sum() / counts[0])
    # The value is the sum of all ranks' shares; the gradient flows only through this rank's share (module doc).
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return share + (total - share.detach())
