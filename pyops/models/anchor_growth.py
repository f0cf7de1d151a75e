"""Anchor initialisation and densification for Scaffold-GS style anchors, with MoRel's feature-variance-guided
hierarchical densification (FHD).

- :func:`voxelize`: Scaffold-GS's initial anchors, the centres of the voxels a point cloud occupies.
- :class:`AnchorStats`: Scaffold-GS's training statistics (per neural Gaussian: the summed view-space gradient
  norm and the number of views it was rasterized in; per anchor: the summed neural opacity and the number of
  views it was visible in), the gradient optionally weighted per anchor by its FHD level.
- :func:`grow_anchors`: Scaffold-GS's anchor growing: neural Gaussians with a large mean gradient spawn anchors
  at the centres of the cells they fall in, at ``update_depth`` cell sizes; a cell that already holds an anchor
  gets none. The occupancy test sorts integer cell keys (:func:`occupied`), O((Q + E) log E), instead of
  Scaffold-GS's chunked all-pairs comparison of cell coordinates.
- :func:`prune_mask`: Scaffold-GS's pruning of anchors whose Gaussians stayed nearly transparent.
- :func:`resize_parameters`: drops and appends rows of per-anchor ``nn.Parameter`` s and of their optimizer
  state (Adam's moments), and points the optimizer at the new parameters.

FHD (MoRel): anchors whose feature varies most over time (dynamic regions) should densify sooner. The caller
computes a per-anchor feature variance; :func:`variance_levels` splits the anchors into levels at quantiles of it
and :func:`fhd_level_weight` maps levels to weights (default ``LEVEL_WEIGHTS = (1.0, 1.5, 2.0)``, our choice: the
paper gives no numbers) that multiply the gradient statistics (:meth:`AnchorStats.update`), so a dynamic anchor's
Gaussians reach the growing threshold with a smaller raw gradient.

A densification step, every ``check_interval`` (100) iterations, as Scaffold-GS's ``adjust_anchor``::

    growth = grow_anchors(anchors, gaussian_means, stats, voxel_size)     # before pruning, as Scaffold-GS
    keep = prune_mask(stats)
    new_rows = {"anchor": growth.anchors, "feat": feat[growth.parent], "offset": zeros,
                "scaling": growth.cell_size.log()[:, None].expand(-1, 6), ...}
    params = resize_parameters(optimizer, params, keep, new_rows)        # then set them on the module
    stats.finish_densify(keep, growth.anchors.shape[0])                   # Scaffold-GS's partial resets

Everything is vectorised torch; the functions here sync with the host (boolean indexing, unique, range checks),
which is fine once per densification step. :meth:`AnchorStats.update` (once per iteration) does not sync.
"""

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._checks import check_int, check_tensor

__all__ = ["voxelize", "occupied", "variance_levels",
           "fhd_level_weight", "LEVEL_WEIGHTS", "AnchorStats", "AnchorGrowth", "grow_anchors", "prune_mask",
           "resize_parameters"]

LEVEL_WEIGHTS = (1.0, 1.5, 2.0)  # FHD gradient weight per variance level (our choice)

# Scaffold-GS's defaults (arguments/__init__.py): check_interval 100, success_threshold 0.8; a neural Gaussian may
# grow when rasterized in > check_interval * success_threshold * 0.5 views, an anchor may be pruned when visible in
# > check_interval * success_threshold views since the last reset.
GROW_MIN_VISITS = 40
PRUNE_MIN_VISITS = 80


def _check_voxel_size(op: str, voxel_size) -> float:
    if isinstance(voxel_size, bool) or not isinstance(voxel_size, (int, float)):
        raise TypeError(f"{op}: voxel_size must be a float, got {type(voxel_size).__name__}")
    if not (math.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"{op}: voxel_size must be finite and > 0, got {voxel_size}")
    return float(voxel_size)


def _cells(op: str, name: str, points: Tensor, voxel_size: float) -> Tensor:
    """(N, 3) int64 cells ``round(points / voxel_size)`` (half to even, as Scaffold-GS's torch/np.round)."""
    scaled = torch.round(points.detach() / voxel_size)
    if scaled.numel():
        lo, hi = torch.aminmax(scaled)
        lo, hi = lo.item(), hi.item()  # one sync: non-finite points and cells beyond int64 both show up here
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{op}: {name} has non-finite values")
        if max(-lo, hi) >= 2.0 ** 62:
            raise ValueError(f"{op}: {name} / voxel_size reaches {max(-lo, hi):.3g} cells, beyond int64")
    return scaled.to(torch.int64)


def _joint_keys(op: str, *cell_sets: Tensor) -> Tuple[Tensor, ...]:
    """One int64 key per cell, comparable across the given (N_i, 3) cell sets: mixed-radix over their joint
    bounding box, x most significant, so sorting keys sorts cells lexicographically. Any grid whose box has
    fewer than 2^62 cells fits."""
    nonempty = [c for c in cell_sets if c.shape[0]]
    if not nonempty:
        return tuple(torch.empty(0, dtype=torch.int64, device=c.device) for c in cell_sets)
    lo = torch.stack([c.amin(0) for c in nonempty]).amin(0)
    hi = torch.stack([c.amax(0) for c in nonempty]).amax(0)
    extent = [int(v) + 1 for v in (hi - lo).tolist()]
    if extent[0] * extent[1] * extent[2] >= 1 << 62:
        raise ValueError(f"{op}: the voxel grid spans {extent} cells, more than 2^62 in all: use a larger "
                         "voxel size")
    radix = torch.tensor([extent[1] * extent[2], extent[2], 1], dtype=torch.int64, device=lo.device)
    return tuple(((c - lo) * radix).sum(1) for c in cell_sets)


def voxelize(points: Tensor, voxel_size: float, colors: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Scaffold-GS's initial anchors (``create_from_pcd``): the centres ``cell * voxel_size`` of the distinct cells
    ``round(points / voxel_size)``, sorted lexicographically by cell, and each cell's mean point colour.

    Args:
        points: ``(P, 3)`` floating point cloud.
        voxel_size: the cell edge, > 0.
        colors: optional ``(P, D)`` per-point values (e.g. RGB) on points' device.

    Returns:
        ``(centres (V, 3)`` in points' dtype, ``colors (V, D)`` the per-cell means in colors' dtype, or None).
    """
    op = "voxelize"
    check_tensor(op, "points", points, (None, 3), floating=True)
    voxel_size = _check_voxel_size(op, voxel_size)
    if colors is not None:
        check_tensor(op, "colors", colors, (points.shape[0], None), floating=True, like=("points", points),
                     same_dtype=False)
    cells = _cells(op, "points", points, voxel_size)
    (keys,) = _joint_keys(op, cells)
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    v = unique_keys.shape[0]
    # Every member of a group has the same cell, so the scatter's write order does not matter.
    unique_cells = torch.zeros(v, 3, dtype=torch.int64, device=points.device).index_copy_(0, inverse, cells)
    centres = unique_cells.to(points.dtype) * voxel_size
    if colors is None:
        return centres, None
    acc = torch.float64 if colors.dtype == torch.float64 else torch.float32  # sum low precision in fp32
    sums = torch.zeros(v, colors.shape[1], dtype=acc, device=colors.device)
    sums.index_add_(0, inverse, colors.detach().to(acc))
    counts = torch.bincount(inverse, minlength=v).clamp_min(1)
    return centres, (sums / counts[:, None]).to(colors.dtype)


def occupied(query_keys: Tensor, existing_keys: Tensor) -> Tensor:
    """``(Q,)`` bool: whether each query key is among the existing keys (any int64 keys, e.g. the cell keys of
    :func:`grow_anchors`). Sorts the existing keys and binary-searches the queries: O((Q + E) log E) time, O(Q + E)
    memory, no Q x E comparison."""
    op = "occupied"
    check_tensor(op, "query_keys", query_keys, (None,), dtype=torch.int64)
    check_tensor(op, "existing_keys", existing_keys, (None,), dtype=torch.int64, like=("query_keys", query_keys))
    if existing_keys.numel() == 0 or query_keys.numel() == 0:
        return torch.zeros(query_keys.shape, dtype=torch.bool, device=query_keys.device)
    table = torch.sort(existing_keys).values
    pos = torch.searchsorted(table, query_keys).clamp_(max=table.numel() - 1)
    return table[pos] == query_keys


def _check_quantiles(op: str, quantiles) -> Tuple[float, ...]:
    q = tuple(float(v) for v in quantiles)
    if not q or any(not 0 < v < 1 for v in q) or any(a >= b for a, b in zip(q, q[1:])):
        raise ValueError(f"{op}: quantiles must be a non-empty, strictly increasing sequence in (0, 1), got {q}")
    return q


def variance_levels(variance: Tensor, quantiles: Sequence[float] = (0.5, 0.8)) -> Tensor:
    """MoRel's FHD levels: ``(M,)`` int64 in ``0 .. len(quantiles)``, the number of quantile thresholds of
    ``variance`` that an anchor's variance exceeds (strictly). With the default, level 0 is the lower half,
    level 1 the 50-80% band, level 2 the top 20% (the most dynamic anchors).

    Args:
        variance: ``(M,)`` floating, a per-anchor feature variance (e.g. over time); must be finite.
        quantiles: strictly increasing, in (0, 1); thresholds interpolate linearly as ``torch.quantile``.
    """
    op = "variance_levels"
    check_tensor(op, "variance", variance, (None,), floating=True, finite=True)
    q = _check_quantiles(op, quantiles)
    m = variance.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.int64, device=variance.device)
    # torch.quantile's "linear" rule on a sort (torch.quantile refuses inputs above 2^24 elements).
    values = torch.sort(variance.detach().to(torch.float64)).values
    pos = torch.tensor(q, dtype=torch.float64, device=variance.device) * (m - 1)
    below = pos.floor().long()
    above = pos.ceil().long()
    thresholds = torch.lerp(values[below], values[above], pos - below)
    return torch.searchsorted(thresholds, variance.detach().to(torch.float64).contiguous())


def fhd_level_weight(variance: Tensor, quantiles: Sequence[float] = (0.5, 0.8),
                     weights: Sequence[float] = LEVEL_WEIGHTS) -> Tensor:
    """``(M,)`` per-anchor gradient weights ``weights[variance_levels(variance, quantiles)]`` in variance's
    dtype, for :meth:`AnchorStats.update`; ``weights`` has one entry per level (len(quantiles) + 1)."""
    op = "fhd_level_weight"
    q = _check_quantiles(op, quantiles)
    w = tuple(float(v) for v in weights)
    if len(w) != len(q) + 1 or any(not (math.isfinite(v) and v > 0) for v in w):
        raise ValueError(f"{op}: weights must be {len(q) + 1} finite positive numbers (one per level), got {w}")
    levels = variance_levels(variance, q)
    return torch.tensor(w, dtype=variance.dtype, device=variance.device)[levels]


class AnchorStats:
    """Scaffold-GS's densification statistics (``training_statis``) of M anchors with K neural Gaussians each.

    Tensors (on ``device``; float32 sums, int32 counts):
        grad_accum ``(M, K)``: summed (level-weighted) view-space gradient norms of each neural Gaussian.
        grad_count ``(M, K)``: the number of updates in which the Gaussian was kept (visible anchor, opacity > 0,
            rasterized).
        opacity_accum ``(M,)``: summed neural opacities (the decoder's Tanh output clamped at 0) of visible anchors.
        visits ``(M,)``: the number of updates in which the anchor was visible.
    """

    def __init__(self, n_anchors: int, n_offsets: int, device=None):
        op = "AnchorStats"
        check_int(op, "n_anchors", n_anchors, 0)
        check_int(op, "n_offsets", n_offsets, 1)
        self.n_offsets = n_offsets
        self.grad_accum = torch.zeros(n_anchors, n_offsets, device=device)
        self.grad_count = torch.zeros(n_anchors, n_offsets, dtype=torch.int32, device=device)
        self.opacity_accum = torch.zeros(n_anchors, device=device)
        self.visits = torch.zeros(n_anchors, dtype=torch.int32, device=device)

    @property
    def n_anchors(self) -> int:
        return self.visits.shape[0]

    @property
    def device(self) -> torch.device:
        return self.visits.device

    def __repr__(self) -> str:
        return f"AnchorStats(n_anchors={self.n_anchors}, n_offsets={self.n_offsets}, device={self.device})"

    @torch.no_grad()
    def update(self, visible: Tensor, neural_opacity: Tensor, grad_norm: Tensor, kept: Tensor,
               level_weight: Optional[Tensor] = None) -> None:
        """Adds one rendered view (no host sync).

        Args:
            visible: ``(M,)`` bool, the anchors decoded for this view (e.g. in the frustum).
            neural_opacity: ``(M, K)`` the decoder's raw (Tanh) opacities (``DecodedGaussians.neural_opacity``);
                values of invisible anchors are ignored.
            grad_norm: ``(M, K)`` the norm of each neural Gaussian's view-space (means2d) gradient.
            kept: ``(M, K)`` bool, the Gaussians that were rendered (opacity > 0 and radius > 0); only those of
                visible anchors count.
            level_weight: ``(M,)`` FHD weight per anchor (:func:`fhd_level_weight`) multiplying its gradients;
                None: 1 (plain Scaffold-GS).
        """
        op = "AnchorStats.update"
        m, k = self.n_anchors, self.n_offsets
        ref = ("stats", self.visits)
        check_tensor(op, "visible", visible, (m,), dtype=torch.bool, like=ref, same_dtype=False)
        check_tensor(op, "neural_opacity", neural_opacity, (m, k), floating=True, like=ref, same_dtype=False)
        check_tensor(op, "grad_norm", grad_norm, (m, k), floating=True, like=ref, same_dtype=False)
        check_tensor(op, "kept", kept, (m, k), dtype=torch.bool, like=ref, same_dtype=False)
        zero = torch.zeros((), device=self.device)
        # torch.where, not a product: NaN/inf in ignored entries must not leak into the sums.
        self.opacity_accum += torch.where(visible, neural_opacity.detach().clamp_min(0).sum(1), zero)
        self.visits += visible
        counted = kept & visible[:, None]
        grad = grad_norm.detach()
        if level_weight is not None:
            check_tensor(op, "level_weight", level_weight, (m,), floating=True, like=ref, same_dtype=False)
            grad = grad * level_weight.detach()[:, None]
        self.grad_accum += torch.where(counted, grad, zero)
        self.grad_count += counted

    def mean_grad(self) -> Tensor:
        """``(M, K)`` mean (weighted) gradient norm per neural Gaussian, 0 where never counted."""
        return self.grad_accum / self.grad_count.clamp_min(1)

    @torch.no_grad()
    def resize(self, keep: Tensor, n_new: int) -> None:
        """After pruning/growing: keeps the rows where ``keep`` ``(M,)`` is True, in order, then appends ``n_new``
        zero rows (the same row order as :func:`resize_parameters`)."""
        op = "AnchorStats.resize"
        check_tensor(op, "keep", keep, (self.n_anchors,), dtype=torch.bool, like=("stats", self.visits),
                     same_dtype=False)
        check_int(op, "n_new", n_new, 0)

        def rows(t: Tensor) -> Tensor:
            return torch.cat([t[keep], t.new_zeros(n_new, *t.shape[1:])])

        self.grad_accum, self.grad_count = rows(self.grad_accum), rows(self.grad_count)
        self.opacity_accum, self.visits = rows(self.opacity_accum), rows(self.visits)

    @torch.no_grad()
    def reset(self, gaussians: Optional[Tensor] = None, anchors: Optional[Tensor] = None) -> None:
        """Zeroes statistics: with no argument all of them; else the gradient statistics of the neural Gaussians
        where ``gaussians`` ``(M, K)`` is True and the opacity/visit statistics of anchors where ``anchors``
        ``(M,)`` is True."""
        op = "AnchorStats.reset"
        if gaussians is None and anchors is None:
            for t in (self.grad_accum, self.grad_count, self.opacity_accum, self.visits):
                t.zero_()
            return
        ref = ("stats", self.visits)
        if gaussians is not None:
            check_tensor(op, "gaussians", gaussians, (self.n_anchors, self.n_offsets), dtype=torch.bool, like=ref,
                         same_dtype=False)
            self.grad_accum.masked_fill_(gaussians, 0)
            self.grad_count.masked_fill_(gaussians, 0)
        if anchors is not None:
            check_tensor(op, "anchors", anchors, (self.n_anchors,), dtype=torch.bool, like=ref, same_dtype=False)
            self.opacity_accum.masked_fill_(anchors, 0)
            self.visits.masked_fill_(anchors, 0)

    @torch.no_grad()
    def finish_densify(self, keep: Tensor, n_new: int, *, grow_min_visits: int = GROW_MIN_VISITS,
                       prune_min_visits: int = PRUNE_MIN_VISITS) -> None:
        """Scaffold-GS's bookkeeping after a densification step (``adjust_anchor``): the gradient statistics of
        the Gaussians that were eligible to grow (count > grow_min_visits) and the opacity statistics of the
        anchors that were eligible for pruning (visits > prune_min_visits) restart; the others keep
        accumulating. Then :meth:`resize` ``(keep, n_new)``. Call it with the thresholds given to
        :func:`grow_anchors` / :func:`prune_mask`, before the next :meth:`update`."""
        check_int("AnchorStats.finish_densify", "grow_min_visits", grow_min_visits, 0)
        check_int("AnchorStats.finish_densify", "prune_min_visits", prune_min_visits, 0)
        self.reset(self.grad_count > grow_min_visits, self.visits > prune_min_visits)
        self.resize(keep, n_new)


class AnchorGrowth(NamedTuple):
    """New anchors from :func:`grow_anchors` (G of them)."""
    anchors: Tensor  # (G, 3) cell centres, in the anchors' dtype
    parent: Tensor  # (G,) int64: the existing anchor whose neural Gaussian (the cell's largest mean gradient) grew it
    cell_size: Tensor  # (G,) the cell edge at the new anchor's level, anchors' dtype (Scaffold-GS: log of it x 6
    #                    is the new anchor's scaling)


@torch.no_grad()
def grow_anchors(anchors: Tensor, gaussian_means: Tensor, stats: AnchorStats, voxel_size: float, *,
                 grad_threshold: float = 2e-4, update_depth: int = 3, update_init_factor: int = 16,
                 update_hierarchy_factor: int = 4, min_visits: int = GROW_MIN_VISITS, random_drop: bool = True,
                 generator: Optional[torch.Generator] = None) -> AnchorGrowth:
    """Scaffold-GS's anchor growing (``anchor_growing``), with hash-free sorted-key occupancy.

    For each level i in ``0 .. update_depth - 1`` (coarse to fine):

    - cell size ``voxel_size * (update_init_factor // update_hierarchy_factor**i)``, gradient threshold
      ``grad_threshold * (update_hierarchy_factor // 2)**i``;
    - candidates: neural Gaussians counted in more than ``min_visits`` views whose mean (FHD-weighted) gradient
      is >= the threshold; with ``random_drop`` each is kept with probability ``1 - 0.5**(i + 1)`` (Scaffold-GS's
      random pick; ``generator`` on the anchors' device makes it reproducible);
    - their means quantised to the level's cells; each distinct cell not already holding an anchor (the existing
      ones and those grown at coarser levels, quantised at this cell size) gets a new anchor at its centre.

    Args:
        anchors: ``(M, 3)`` anchor positions.
        gaussian_means: ``(M, K, 3)`` centres of the neural Gaussians (``anchor + offset * scaling[:, :3]``).
        stats: the :class:`AnchorStats` of these M anchors.
        voxel_size: the base anchor voxel size, > 0.

    Returns:
        :class:`AnchorGrowth` ``(anchors (G, 3), parent (G,) int64, cell_size (G,))``, level by level, each level's
        cells in lexicographic order. The parent is the anchor of the cell's candidate with the largest mean
        gradient (lowest index on ties); Scaffold-GS instead takes the element-wise max of the candidates' anchor
        features, ``feat[parent]`` is our choice for the new features (it works for any per-anchor parameter).
    """
    op = "grow_anchors"
    check_tensor(op, "anchors", anchors, (None, 3), floating=True)
    m = anchors.shape[0]
    check_tensor(op, "gaussian_means", gaussian_means, (m, None, 3), floating=True, like=("anchors", anchors),
                 same_dtype=False)
    if not isinstance(stats, AnchorStats):
        raise TypeError(f"{op}: stats must be an AnchorStats, got {type(stats).__name__}")
    k = gaussian_means.shape[1]
    if stats.n_anchors != m or stats.n_offsets != k:
        raise ValueError(f"{op}: stats has shape ({stats.n_anchors}, {stats.n_offsets}) but gaussian_means has "
                         f"({m}, {k})")
    if stats.device != anchors.device:
        raise ValueError(f"{op}: stats is on {stats.device} but anchors is on {anchors.device}")
    voxel_size = _check_voxel_size(op, voxel_size)
    if not (isinstance(grad_threshold, (int, float)) and math.isfinite(grad_threshold) and grad_threshold >= 0):
        raise ValueError(f"{op}: grad_threshold must be finite and >= 0, got {grad_threshold}")
    check_int(op, "update_depth", update_depth, 1)
    check_int(op, "update_init_factor", update_init_factor, 1)
    check_int(op, "update_hierarchy_factor", update_hierarchy_factor, 1)
    check_int(op, "min_visits", min_visits, 0)
    if update_init_factor // update_hierarchy_factor ** (update_depth - 1) == 0:
        raise ValueError(f"{op}: update_init_factor={update_init_factor} must be >= update_hierarchy_factor ** "
                         f"(update_depth - 1) = {update_hierarchy_factor ** (update_depth - 1)} (else the finest "
                         "cell size is 0)")
    if generator is not None and generator.device.type != anchors.device.type:
        raise ValueError(f"{op}: generator is on {generator.device} but anchors is on {anchors.device}")

    device, dtype = anchors.device, anchors.dtype
    mean_grad = stats.mean_grad()
    eligible = stats.grad_count > min_visits
    flat_means = gaussian_means.detach().reshape(-1, 3)
    existing = anchors.detach()
    new_anchors, parents, sizes = [], [], []
    for level in range(update_depth):
        threshold = grad_threshold * (update_hierarchy_factor // 2) ** level
        candidate = eligible & (mean_grad >= threshold)
        if random_drop:
            candidate &= torch.rand(candidate.shape, generator=generator, device=device) > 0.5 ** (level + 1)
        index = candidate.reshape(-1).nonzero().squeeze(1)  # flat Gaussian indices a * K + j
        if index.numel() == 0:
            continue
        size = voxel_size * (update_init_factor // update_hierarchy_factor ** level)
        cand_cells = _cells(op, "gaussian_means", flat_means[index], size)
        anchor_cells = _cells(op, "anchors", torch.cat([existing, *new_anchors]), size)
        cand_keys, anchor_keys = _joint_keys(op, cand_cells, anchor_cells)
        cell_keys, inverse = torch.unique(cand_keys, sorted=True, return_inverse=True)
        n_cells = cell_keys.shape[0]
        # Representative per cell: sort by gradient (descending, stable: lower index first on ties), then
        # stably by cell; the first of each cell's run is its largest-gradient candidate.
        by_grad = torch.sort(mean_grad.reshape(-1)[index], descending=True, stable=True).indices
        order = by_grad[torch.sort(inverse[by_grad], stable=True).indices]
        starts = torch.zeros(n_cells, dtype=torch.int64, device=device)
        starts[1:] = torch.cumsum(torch.bincount(inverse, minlength=n_cells), 0)[:-1]
        first = order[starts]  # (n_cells,) positions into index
        free = ~occupied(cell_keys, anchor_keys)
        first = first[free]
        new_anchors.append(cand_cells[first].to(dtype) * size)
        parents.append(torch.div(index[first], k, rounding_mode="floor"))
        sizes.append(torch.full((first.shape[0],), size, dtype=dtype, device=device))
    if not new_anchors:
        return AnchorGrowth(anchors.new_zeros(0, 3), torch.zeros(0, dtype=torch.int64, device=device),
                            anchors.new_zeros(0))
    return AnchorGrowth(torch.cat(new_anchors), torch.cat(parents), torch.cat(sizes))


def prune_mask(stats: AnchorStats, *, min_opacity: float = 0.005, min_visits: int = PRUNE_MIN_VISITS) -> Tensor:
    """Scaffold-GS's pruning: ``(M,)`` bool, True = keep. An anchor visible in more than ``min_visits`` views
    whose mean summed neural opacity per visit (``opacity_accum / visits``, over its K Gaussians) is below
    ``min_opacity`` is dropped; anchors seen less often are kept (not enough evidence yet)."""
    op = "prune_mask"
    if not isinstance(stats, AnchorStats):
        raise TypeError(f"{op}: stats must be an AnchorStats, got {type(stats).__name__}")
    if not (isinstance(min_opacity, (int, float)) and math.isfinite(min_opacity) and min_opacity >= 0):
        raise ValueError(f"{op}: min_opacity must be finite and >= 0, got {min_opacity}")
    check_int(op, "min_visits", min_visits, 0)
    prune = (stats.opacity_accum < min_opacity * stats.visits) & (stats.visits > min_visits)
    return ~prune


@torch.no_grad()
def resize_parameters(optimizer: Optional[torch.optim.Optimizer], params: Dict[str, nn.Parameter], keep: Tensor,
                      new_rows: Optional[Dict[str, Tensor]] = None) -> Dict[str, nn.Parameter]:
    """Prunes and grows per-anchor parameters together with their optimizer state.

    For every parameter ``p`` (first dim M): a new ``nn.Parameter`` ``cat(p[keep], new_rows[name])`` (same
    requires_grad, no grad). In the optimizer, each such parameter is replaced in its param group by the new one,
    and every state tensor of p's shape (Adam's ``exp_avg``/``exp_avg_sq``, ``max_exp_avg_sq``) keeps the same
    rows (bitwise) and gets zero rows appended; other state (``step``) is kept. A parameter the optimizer does not
    hold is only resized. The caller must put the returned parameters on its modules.

    Args:
        optimizer: e.g. ``torch.optim.Adam`` (or None).
        params: name -> ``(M, ...)`` parameter.
        keep: ``(M,)`` bool, the rows to keep (e.g. :func:`prune_mask`).
        new_rows: name -> ``(G, ...)`` rows to append, for every name of ``params`` (G the same for all), cast to
            the parameter's dtype; None or {}: append nothing.

    Returns:
        name -> the new parameter (M' = keep.sum() + G rows).
    """
    op = "resize_parameters"
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{op}: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{op}: params must be a non-empty dict of parameters")
    new_rows = new_rows or {}
    if not isinstance(new_rows, dict):
        raise TypeError(f"{op}: new_rows must be a dict, got {type(new_rows).__name__}")
    first_name, first = next(iter(params.items()))
    for name, p in params.items():
        if not isinstance(p, nn.Parameter):
            raise TypeError(f"{op}: params[{name!r}] must be an nn.Parameter, got {type(p).__name__}")
    m = first.shape[0] if first.dim() else 0
    check_tensor(op, "keep", keep, (None,), dtype=torch.bool, like=(f"params[{first_name!r}]", first),
                 same_dtype=False)
    if keep.shape[0] != m:
        raise ValueError(f"{op}: keep must have shape ({m},) like params[{first_name!r}], got {tuple(keep.shape)}")
    extra = set(new_rows) - set(params)
    if extra:
        raise ValueError(f"{op}: new_rows has names not in params: {sorted(extra)}")
    missing = set(params) - set(new_rows)
    if new_rows and missing:
        raise ValueError(f"{op}: new_rows misses {sorted(missing)}")
    g = None
    for name, p in params.items():
        if p.dim() == 0 or p.shape[0] != m:
            raise ValueError(f"{op}: params[{name!r}] must have {m} rows like params[{first_name!r}], got shape "
                             f"{tuple(p.shape)}")
        if p.device != keep.device:
            raise ValueError(f"{op}: params[{name!r}] is on {p.device} but keep is on {keep.device}")
        if name in new_rows:
            rows = new_rows[name]
            check_tensor(op, f"new_rows[{name!r}]", rows, (None, *p.shape[1:]), like=(f"params[{name!r}]", p),
                         same_dtype=False)
            if g is not None and rows.shape[0] != g:
                raise ValueError(f"{op}: new_rows[{name!r}] has {rows.shape[0]} rows but others have {g}")
            g = rows.shape[0]
    g = g or 0

    where = {}  # id(old parameter) -> (param group, position)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                where[id(p)] = (group, i)
    out = {}
    for name, p in params.items():
        rows = new_rows[name].detach().to(p.dtype) if g else p.new_zeros(0, *p.shape[1:])
        new_p = nn.Parameter(torch.cat([p.detach()[keep], rows]), requires_grad=p.requires_grad)
        if id(p) in where:
            group, i = where[id(p)]
            group["params"][i] = new_p
            state = optimizer.state.pop(p, None)
            if state is not None:
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.shape == p.shape:
                        state[key] = torch.cat([value[keep], value.new_zeros(g, *value.shape[1:])])
                optimizer.state[new_p] = state
        out[name] = new_p
    return out
