"""Contrastive loss (InfoNCE / CLIP / SupCon's L_out) without the N x M logits: the functional op and its
registration.

S = logit_scale * q k^T; row i's loss is logsumexp_j S_ij minus the mean of its positives' S_ij, column j's the
same over the column (pyops/reference/contrastive.py is the spec). The native ops (csrc/contrastive.cpp) run the
rows in chunks of at most ~32 MiB of logits against all columns, one GEMM per chunk forward and three backward,
keeping per-row and running per-column log-sum-exps: memory O((N + M) D), a fixed reduction order (bitwise
reproducible), no N x M tensor. The backward recomputes the chunk's logits instead of saving them.
"""

import functools
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_tensor, same_device
from .reference import contrastive as reference

_OP = "contrastive_loss"

if _backend.HAS_TRITON:
    from .triton_kernels import contrastive as _triton  # noqa: F401  (registers pyops::contrastive_*_triton)

# ----------------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the native and Triton op pairs.


def _math_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fake_fwd(q, k, logit_scale, qg, kg, symmetric):
    same_device(_OP, q=q, k=k, logit_scale=logit_scale, qg=qg, kg=kg)
    n, m = q.shape[0], k.shape[0] if symmetric else 0
    dtype = _math_dtype(q)
    return tuple(q.new_empty(size, dtype=dtype) for size in (n, m, n, m, n, m))


def _fake_bwd(v_row, v_col, q, k, logit_scale, qg, kg, row_lse, col_lse, row_npos, col_npos, symmetric):
    same_device(_OP, q=q, k=k, logit_scale=logit_scale, qg=qg, kg=kg)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(logit_scale, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, logit_scale, qg, kg, symmetric = inputs
    _, _, row_lse, col_lse, row_npos, col_npos = output
    ctx.save_for_backward(q, k, logit_scale, qg, kg, row_lse, col_lse, row_npos, col_npos)
    ctx.symmetric = symmetric


def _register_autograd(fwd: str, bwd_op) -> None:
    def backward(ctx, v_row, v_col, *_):  # the log-sum-exps and counts have no gradient
        q, k, logit_scale, qg, kg, row_lse, col_lse, row_npos, col_npos = ctx.saved_tensors
        v_row = torch.zeros_like(row_lse) if v_row is None else v_row
        v_col = torch.zeros_like(col_lse) if v_col is None else v_col
        v_q, v_k, v_scale = bwd_op(v_row, v_col, q, k, logit_scale, qg, kg, row_lse, col_lse, row_npos, col_npos,
                                   ctx.symmetric)
        return v_q, v_k, v_scale, None, None, None

    torch.library.register_autograd(fwd, backward, setup_context=_setup_context)


if _backend._NATIVE_ERROR is None:
    # The native ops' autograd kernels are C++ (csrc/losses_autograd.cpp): no Python runs per call.
    torch.library.register_fake("pyops::contrastive_fwd")(_fake_fwd)
    torch.library.register_fake("pyops::contrastive_bwd")(_fake_bwd)
if _backend.HAS_TRITON:
    # triton_op derives the fake kernels from the Python launchers; only autograd is added.
    _register_autograd("pyops::contrastive_fwd_triton", torch.ops.pyops.contrastive_bwd_triton)


# ----------------------------------------------------------------------------------------------------------
# Argument checks (pyops/_checks.py's policy).


def _check_ids(name: str, t, size: int, q: Tensor) -> None:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{_OP}: {name} must be an integer tensor, got "
                        f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    check_tensor(_OP, name, t, (size,), like=("q", q), same_dtype=False)


def _check_args(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, distributed=False) -> None:
    """Validates every argument, naming the bad one. Data checks (finite values, label range) are host syncs:
    they run for CPU tensors (and on GPUs with PYOPS_CHECK_FINITE=1), never under torch.compile."""
    check_tensor(_OP, "q", q, (None, None), floating=True)
    check_tensor(_OP, "k", k, (None, q.shape[1]), floating=True, like=("q", q))
    check_tensor(_OP, "logit_scale", logit_scale, floating=True, like=("q", q), same_dtype=False)
    if logit_scale.numel() != 1 or logit_scale.dim() > 1:
        raise ValueError(f"{_OP}: logit_scale must be a 0-d tensor, got shape {tuple(logit_scale.shape)}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"{_OP}: symmetric must be a bool, got {type(symmetric).__name__}")
    check_choice(_OP, "reduction", reduction, reference.REDUCTIONS)
    n, m = q.shape[0], k.shape[0]
    compiling = torch.compiler.is_compiling()
    if labels is not None:
        if q_groups is not None or k_groups is not None:
            raise ValueError(f"{_OP}: pass labels or q_groups/k_groups, not both")
        _check_ids("labels", labels, n, q)
        # An out-of-range label would only never match, so on a GPU the check (a host sync) is opt-in.
        if not distributed and not compiling and labels.numel() and (
                labels.device.type == "cpu" or _backend.check_finite_enabled(labels)):
            lo, hi = (int(v) for v in torch.aminmax(labels))
            if lo < 0 or hi >= m:
                raise ValueError(f"{_OP}: labels must be in [0, {m}) (column indices of k), got values in "
                                 f"[{lo}, {hi}]")
    elif q_groups is not None or k_groups is not None:
        if q_groups is None or k_groups is None:
            raise ValueError(f"{_OP}: q_groups and k_groups must be given together")
        _check_ids("q_groups", q_groups, n, q)
        _check_ids("k_groups", k_groups, m, q)
    elif n != m and not distributed:
        raise ValueError(f"{_OP}: q has {n} rows but k has {m}: without labels or q_groups/k_groups the positives "
                         "are the diagonal, which needs N == M")
    for name, t in (("logit_scale", logit_scale), ("q", q), ("k", k)):
        _backend.check_finite(_OP, name, t)


# ----------------------------------------------------------------------------------------------------------
# The public functional op.


def contrastive_loss(
    q: Tensor,  # [N, D]
    k: Tensor,  # [M, D]
    logit_scale: Tensor,  # 0-d
    *,
    labels: Optional[Tensor] = None,  # [N] in [0, M)
    q_groups: Optional[Tensor] = None,  # [N]
    k_groups: Optional[Tensor] = None,  # [M]
    symmetric: bool = True,
    reduction: str = "mean",
    group=None,
    backend: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """InfoNCE / CLIP / SupCon-L_out loss over the logits ``S = logit_scale * q @ k.T``, never materialised.

    Args:
        q, k: (N, D) and (M, D) embeddings, same floating dtype (fp32, fp16, bf16; fp64 on the CPU and torch
            backends). Not normalised here: CLIP callers pass unit vectors.
        logit_scale: 0-d tensor (e.g. CLIP's ``logit_scale.exp()``); gets a gradient if it requires one.
        labels: (N,) integer column index of each row's positive (default: the diagonal, which needs N == M).
        q_groups, k_groups: (N,) and (M,) integer group ids instead: every column of a row's group is a positive
            (SupCon's L_out). A row or column without a positive has loss 0 and is left out of the mean.
        symmetric: average the row (q -> k) and column (k -> q) losses, as CLIP does; False: rows only.
        reduction: "mean" (over the rows / columns that have a positive), "sum" or "none" (the per-row losses, and
            with ``symmetric`` the per-column ones: a (rows, cols) pair), float32 (float64 for float64 inputs).
        group: a torch.distributed process group: the loss over the rows and columns of every rank
            (pyops.contrastive_dist).
        backend: "cuda", "triton", "cpu", "torch" (the reference) or None for $PYOPS_BACKEND or the fastest one.
    """
    if group is None and not _is_compiling():
        # Eager fast path (as pyops.derf's): a cached backend choice, then the native op, whose C++ checks cover
        # q, k, logit_scale and int64 ids (finite values included); the labels' range is checked here. Ids of
        # another integer dtype and unusual arguments take the full path. Only when something raises do the
        # Python checks run, to raise pyops' own error for a bad argument.
        try:
            which = _CHOICE[(backend, _env_backend(), "cpu" if q.is_cpu else q.device.type)]
        except (KeyError, AttributeError):
            which = _choose(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, backend)
        if which == "native" and (symmetric is True or symmetric is False) and reduction in _REDUCTIONS:
            try:
                qg = None
                if labels is not None:
                    if labels.dtype is torch.int64 and q_groups is None and k_groups is None:
                        m = k.shape[0]
                        # An out-of-range label would only never match, so on a GPU the check (a host sync) is
                        # opt-in, as in _check_args.
                        if labels.numel() and (labels.is_cpu or _backend.check_finite_enabled(labels)):
                            lo, hi = torch.aminmax(labels)
                            if lo < 0 or hi >= m:
                                raise ValueError  # the checks below raise the message
                        qg, kg, count = labels, torch.arange(m, device=q.device), None
                elif q_groups is None and k_groups is None:
                    n = q.shape[0]
                    if k.shape[0] != n:
                        raise ValueError  # the diagonal needs N == M: the checks below raise the message
                    qg = kg = torch.arange(n, device=q.device)  # the diagonal: one positive per row and column
                    # The mean's divisor, (npos > 0).sum().clamp_min(1), without computing it. CPU only: CUDA
                    # divides by a host scalar as a product with its reciprocal, which may round differently.
                    count = max(n, 1) if q.is_cpu else None
                elif q_groups.dtype is torch.int64 and k_groups.dtype is torch.int64:
                    qg, kg, count = q_groups, k_groups, None
                if qg is not None:
                    out = _NATIVE_FWD(q, k, logit_scale, qg, kg, symmetric)
                    return _reduce(out, symmetric, reduction, count)
            except Exception:
                _check_args(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction)
                raise
    return _contrastive_loss(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, group, backend)


# The backend per (backend argument, $PYOPS_BACKEND, device type): "native" for the C++ kernels ("cpu", "cuda"),
# else its name. Only successful choices are cached: an unavailable backend raises every time.
_CHOICE: Dict[Tuple[Optional[str], object, str], str] = {}
_REDUCTIONS = tuple(reference.REDUCTIONS)  # a tuple: `in` compares, so an unhashable argument cannot raise
_is_compiling = torch.compiler.is_compiling
_NATIVE_FWD = _backend.native_callable("contrastive_fwd")
_env_backend = _backend.env_backend


def _choose(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, backend) -> str:
    _check_args(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction)  # q is a Tensor (or this raises)
    return _backend.remember_choice(_CHOICE, backend, q.device, _backend.resolve(backend, q.device, "contrastive_fwd"))


def _reduce(out, symmetric: bool, reduction: str, count: Optional[int]):
    """The loss from the op's outputs. count: the number of rows (and of columns) that have a positive when the
    caller knows it (the diagonal), else None (counted from the op's positive counts)."""
    row_loss, col_loss, _, _, row_npos, col_npos = out
    if reduction == "none":
        return (row_loss, col_loss) if symmetric else row_loss
    if reduction == "sum":
        rows = row_loss.sum()
        return (rows + col_loss.sum()) / 2 if symmetric else rows
    if count is not None:
        rows = row_loss.sum() / count
        return (rows + col_loss.sum() / count) / 2 if symmetric else rows
    rows = row_loss.sum() / (row_npos > 0).sum().clamp_min(1)
    if not symmetric:
        return rows
    return (rows + col_loss.sum() / (col_npos > 0).sum().clamp_min(1)) / 2


def _contrastive_loss(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, group, backend):
    """Every backend and case, with the Python checks first: labels, the distributed loss, the reference and
    Triton backends, and what torch.compile traces."""
    _check_args(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction, distributed=group is not None)
    if group is not None:
        from . import contrastive_dist as _dist

        return _dist.distributed_contrastive_loss(q, k, logit_scale, labels=labels, q_groups=q_groups,
                                                  k_groups=k_groups, symmetric=symmetric, reduction=reduction,
                                                  group=group, local_loss=functools.partial(local_loss,
                                                                                            backend=backend))
    which = _backend.resolve(backend, q.device, "contrastive_fwd")
    if which == "torch":
        return reference.contrastive_loss(q, k, logit_scale, labels, q_groups, k_groups, symmetric, reduction)
    qg, kg = reference.positive_groups(q.shape[0], k.shape[0], labels, q_groups, k_groups, q.device)
    op = torch.ops.pyops.contrastive_fwd_triton if which == "triton" else torch.ops.pyops.contrastive_fwd
    return _reduce(op(q, k, logit_scale, qg.long(), kg.long(), symmetric), symmetric, reduction, None)


def local_loss(q: Tensor, k: Tensor, logit_scale: Tensor, qg: Tensor, kg: Tensor,
               backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """The row losses (N,) of q against k with positives qg[i] == kg[j] (int64), with autograd, and which rows
    have a positive (N,) bool: the per-rank piece of the distributed loss (pyops.contrastive_dist)."""
    which = _backend.resolve(backend, q.device, "contrastive_fwd")
    if which == "torch":
        has_positive = (qg[:, None] == kg[None, :]).any(1)
        return reference.contrastive_loss(q, k, logit_scale, q_groups=qg, k_groups=kg, symmetric=False,
                                          reduction="none"), has_positive
    op = torch.ops.pyops.contrastive_fwd_triton if which == "triton" else torch.ops.pyops.contrastive_fwd
    out = op(q, k, logit_scale, qg, kg, False)
    return out[0], out[4] > 0
