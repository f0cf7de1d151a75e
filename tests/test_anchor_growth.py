"""Anchor initialisation and FHD densification (pyops/models/anchor_growth.py) against brute-force Python."""

import math

import pytest
import torch
from torch import nn

from pyops.models import anchor_growth as ag


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- voxel keys, voxelize, occupancy ----------------------------------------------------------------------


def test_voxelize_matches_python_set():
    g = _gen(1)
    points = torch.randn(500, 3, generator=g, dtype=torch.float64) * 0.3
    colors = torch.rand(500, 3, generator=g, dtype=torch.float64)
    voxel = 0.1
    centres, mean_colors = ag.voxelize(points, voxel, colors)
    cells = [tuple(c) for c in torch.round(points / voxel).long().tolist()]
    groups = {}
    for cell, color in zip(cells, colors.tolist()):
        groups.setdefault(cell, []).append(color)
    expected_cells = sorted(groups)
    assert centres.shape == (len(expected_cells), 3) and centres.dtype == torch.float64
    assert torch.equal(centres, torch.tensor(expected_cells, dtype=torch.float64) * voxel)
    expected_colors = torch.tensor([[sum(c[i] for c in groups[cell]) / len(groups[cell]) for i in range(3)]
                                    for cell in expected_cells], dtype=torch.float64)
    torch.testing.assert_close(mean_colors, expected_colors, rtol=0, atol=1e-12)
    # Without colours, float32.
    centres32, none = ag.voxelize(points.float(), voxel)
    assert none is None and centres32.dtype == torch.float32 and centres32.shape == centres.shape
    with pytest.raises(ValueError, match=r"voxelize: colors must have shape \(500, \*\)"):
        ag.voxelize(points, voxel, colors[:10])


def _brute_occupied(query, existing):
    return torch.tensor([any(q == e for e in existing.tolist()) for q in query.tolist()], dtype=torch.bool)


@pytest.mark.parametrize("q,e", [(300, 200), (50, 1), (0, 20), (20, 0), (0, 0)])
def test_occupied_matches_all_pairs(q, e):
    g = _gen(q * 1000 + e)
    query = torch.randint(-60, 60, (q,), generator=g) * (2 ** 40)  # large, negative, with duplicates
    existing = torch.randint(-60, 60, (e,), generator=g) * (2 ** 40)
    if q and e:
        query[0] = existing[-1]
    got = ag.occupied(query, existing)
    assert got.dtype == torch.bool and got.shape == (q,)
    assert torch.equal(got, _brute_occupied(query, existing))
    if q and e:
        assert 0 < int(got.sum()) < q  # the data exercises both outcomes
    # Extremes of int64 and a key past the largest existing one.
    big = torch.tensor([torch.iinfo(torch.int64).max, torch.iinfo(torch.int64).min, 5])
    assert ag.occupied(big, torch.tensor([5, torch.iinfo(torch.int64).min])).tolist() == [False, True, True]


def test_occupied_errors():
    with pytest.raises(TypeError, match="occupied: query_keys must be int64"):
        ag.occupied(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"occupied: existing_keys must have shape \(\*,\)"):
        ag.occupied(torch.zeros(3, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64))


# -- FHD levels -------------------------------------------------------------------------------------------


def test_variance_levels_at_quantiles():
    g = _gen(2)
    variance = torch.arange(101, dtype=torch.float32)[torch.randperm(101, generator=g)]
    levels = ag.variance_levels(variance)  # thresholds 50 and 80 exactly
    expected = (variance > 50).long() + (variance > 80).long()
    assert levels.dtype == torch.int64 and torch.equal(levels, expected)
    assert torch.bincount(levels).tolist() == [51, 30, 20]
    # Random data: thresholds are torch.quantile's.
    v = torch.rand(1000, generator=g)
    q = (0.25, 0.5, 0.9)
    t = torch.quantile(v.double(), torch.tensor(q, dtype=torch.float64))
    assert torch.equal(ag.variance_levels(v, q), sum((v.double() > x).long() for x in t))
    assert ag.variance_levels(torch.zeros(0)).shape == (0,)
    assert torch.equal(ag.variance_levels(torch.ones(7)), torch.zeros(7, dtype=torch.int64))
    w = ag.fhd_level_weight(variance)
    assert torch.equal(w, torch.tensor(ag.LEVEL_WEIGHTS)[expected])


def test_variance_levels_errors():
    with pytest.raises(ValueError, match="variance_levels: quantiles"):
        ag.variance_levels(torch.rand(5), (0.8, 0.5))
    with pytest.raises(ValueError, match="variance_levels: quantiles"):
        ag.variance_levels(torch.rand(5), (0.0, 0.5))
    with pytest.raises(TypeError, match="variance_levels: variance"):
        ag.variance_levels(torch.arange(5), (0.5,))
    with pytest.raises(ValueError, match="variance_levels: variance has non-finite"):
        ag.variance_levels(torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="fhd_level_weight: weights"):
        ag.fhd_level_weight(torch.rand(5), (0.5,), (1.0, 2.0, 3.0))


# -- statistics -------------------------------------------------------------------------------------------


def _random_view(g, m, k, nan_invisible=True):
    visible = torch.rand(m, generator=g) < 0.7
    neural_opacity = torch.rand(m, k, generator=g) * 2 - 1
    grad = torch.rand(m, k, generator=g) * 1e-3
    kept = (neural_opacity > 0) & (torch.rand(m, k, generator=g) < 0.9)
    if nan_invisible:  # whatever invisible anchors carry must not reach the sums
        neural_opacity[~visible] = float("nan")
        grad[~visible] = float("nan")
    return visible, neural_opacity, grad, kept


def test_stats_update_matches_hand_sums():
    g = _gen(3)
    m, k = 13, 4
    stats = ag.AnchorStats(m, k)
    weight = torch.tensor(ag.LEVEL_WEIGHTS)[torch.randint(0, 3, (m,), generator=g)]
    views = [_random_view(g, m, k) for _ in range(5)]
    for i, view in enumerate(views):
        stats.update(*view, level_weight=weight if i % 2 else None)
    for a in range(m):
        opacity, visits = 0.0, 0
        for vis, op, _, _ in views:
            if vis[a]:
                visits += 1
                opacity += sum(max(float(x), 0.0) for x in op[a])
        assert int(stats.visits[a]) == visits
        assert math.isclose(float(stats.opacity_accum[a]), opacity, rel_tol=1e-6, abs_tol=1e-6)
        for j in range(k):
            total, count = 0.0, 0
            for i, (vis, _, grad, kept) in enumerate(views):
                if vis[a] and kept[a, j]:
                    count += 1
                    total += float(grad[a, j]) * (float(weight[a]) if i % 2 else 1.0)
            assert int(stats.grad_count[a, j]) == count
            assert math.isclose(float(stats.grad_accum[a, j]), total, rel_tol=1e-6, abs_tol=1e-12)
    mean = stats.mean_grad()
    assert torch.isfinite(mean).all()
    assert torch.equal(mean[stats.grad_count == 0], torch.zeros(int((stats.grad_count == 0).sum())))


def test_stats_resize_reset_finish_and_errors():
    g = _gen(4)
    m, k = 6, 3
    stats = ag.AnchorStats(m, k)
    for _ in range(4):
        stats.update(*_random_view(g, m, k, nan_invisible=False))
    before = {n: getattr(stats, n).clone() for n in ("grad_accum", "grad_count", "opacity_accum", "visits")}
    keep = torch.tensor([True, False, True, True, False, True])
    stats.resize(keep, 2)
    assert stats.n_anchors == 6
    for name, old in before.items():
        new = getattr(stats, name)
        assert torch.equal(new[:4], old[keep]) and not new[4:].any()
    # Partial reset: only the masked rows.
    stats.reset(gaussians=torch.eye(6, 3, dtype=torch.bool), anchors=torch.tensor([True] + [False] * 5))
    assert stats.grad_count[0, 0] == 0 and stats.visits[0] == 0 and stats.opacity_accum[0] == 0
    assert torch.equal(stats.visits[1:4], before["visits"][keep][1:4])
    # finish_densify: Scaffold-GS's resets of the eligible rows, then the resize.
    stats = ag.AnchorStats(3, 2)
    stats.grad_count = torch.tensor([[50, 10], [41, 40], [0, 0]], dtype=torch.int32)
    stats.grad_accum = torch.ones(3, 2)
    stats.visits = torch.tensor([81, 80, 3], dtype=torch.int32)
    stats.opacity_accum = torch.ones(3)
    stats.finish_densify(torch.tensor([True, True, False]), 1)
    assert stats.grad_count.tolist() == [[0, 10], [0, 40], [0, 0]]
    assert stats.grad_accum.tolist() == [[0, 1], [0, 1], [0, 0]]
    assert stats.visits.tolist() == [0, 80, 0] and stats.opacity_accum.tolist() == [0, 1, 0]
    stats.reset()
    assert not stats.grad_accum.any() and not stats.visits.any()
    with pytest.raises(ValueError, match=r"AnchorStats.update: grad_norm must have shape \(3, 2\)"):
        stats.update(torch.ones(3, dtype=torch.bool), torch.zeros(3, 2), torch.zeros(3, 3),
                     torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="AnchorStats.update: kept must be bool"):
        stats.update(torch.ones(3, dtype=torch.bool), torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"AnchorStats.resize: keep must have shape \(3,\)"):
        stats.resize(torch.ones(4, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="AnchorStats: n_offsets=0"):
        ag.AnchorStats(3, 0)


# -- growing ----------------------------------------------------------------------------------------------


def _growth_setup(seed=5, m=60, k=5):
    g = _gen(seed)
    anchors = (torch.rand(m, 3, generator=g) * 2 - 1)
    means = anchors[:, None] + (torch.rand(m, k, 3, generator=g) * 2 - 1) * 0.4
    stats = ag.AnchorStats(m, k)
    stats.grad_count = torch.randint(30, 60, (m, k), generator=g, dtype=torch.int32)
    stats.grad_accum = stats.grad_count * torch.rand(m, k, generator=g) * 1.2e-3  # means 0 .. 1.2e-3
    return anchors, means, stats


def _brute_grow(anchors, means, stats, voxel, threshold, depth, init, hier, min_visits):
    """Scaffold-GS's growing, cell by cell in Python (no random drop)."""
    m, k = stats.grad_count.shape
    grad = (stats.grad_accum / stats.grad_count.clamp_min(1)).reshape(-1).tolist()
    count = stats.grad_count.reshape(-1).tolist()
    flat = means.reshape(-1, 3)
    existing = anchors.clone()
    out = []  # (level, cell, parent)
    for level in range(depth):
        size = voxel * (init // hier ** level)
        thr = threshold * (hier // 2) ** level
        taken = {tuple(c) for c in torch.round(existing / size).long().tolist()}
        cells = [tuple(c) for c in torch.round(flat / size).long().tolist()]
        best = {}
        for i in range(m * k):
            if count[i] > min_visits and grad[i] >= thr and cells[i] not in taken:
                if cells[i] not in best or grad[i] > grad[best[cells[i]]]:
                    best[cells[i]] = i
        level_new = sorted(best)
        out += [(level, cell, best[cell] // k) for cell in level_new]
        if level_new:
            existing = torch.cat([existing, torch.tensor(level_new, dtype=anchors.dtype) * size])
    return out


def test_grow_anchors_matches_brute_force():
    anchors, means, stats = _growth_setup()
    voxel, thr = 0.025, 2e-4
    growth = ag.grow_anchors(anchors, means, stats, voxel, grad_threshold=thr, random_drop=False)
    expected = _brute_grow(anchors, means, stats, voxel, thr, 3, 16, 4, ag.GROW_MIN_VISITS)
    assert len(expected) > 10 and len({lvl for lvl, _, _ in expected}) == 3  # every level grows something
    sizes = {lvl: voxel * (16 // 4 ** lvl) for lvl in range(3)}
    got = []
    for a, p, s in zip(growth.anchors, growth.parent.tolist(), growth.cell_size.tolist()):
        level = [lvl for lvl, size in sizes.items() if math.isclose(size, s, rel_tol=1e-6)]
        assert len(level) == 1
        got.append((level[0], tuple(torch.round(a / s).long().tolist()), p))
    assert got == expected
    assert growth.parent.dtype == torch.int64 and growth.anchors.dtype == torch.float32
    # Invariants, checked directly: centres on their level's grid, no duplicate, no occupied cell, and the parent
    # has an eligible above-threshold Gaussian in the new anchor's cell.
    mean_grad = stats.mean_grad()
    placed = anchors
    for lvl in range(3):
        size = sizes[lvl]
        new = growth.anchors[growth.cell_size == growth.cell_size.new_tensor(size)]
        parents = growth.parent[growth.cell_size == growth.cell_size.new_tensor(size)]
        cells = torch.round(new / size).long()
        torch.testing.assert_close(new, cells.float() * size)
        assert torch.unique(cells, dim=0).shape[0] == cells.shape[0]
        taken = {tuple(c) for c in torch.round(placed / size).long().tolist()}
        assert not taken & {tuple(c) for c in cells.tolist()}
        for cell, p in zip(cells, parents.tolist()):
            inside = (torch.round(means[p] / size).long() == cell).all(-1)
            ok = inside & (mean_grad[p] >= 2e-4 * 2 ** lvl) & (stats.grad_count[p] > ag.GROW_MIN_VISITS)
            assert ok.any()
        placed = torch.cat([placed, new])


def test_grow_anchors_candidates_need_visits_and_gradient():
    anchors, means, stats = _growth_setup(seed=6)
    # Only anchor 7's Gaussian 2 is both visited enough and above threshold; move it far from any anchor.
    stats.grad_count.fill_(100)
    stats.grad_accum.zero_()
    stats.grad_count[3] = ag.GROW_MIN_VISITS  # not > min_visits: never a candidate despite its large gradient
    stats.grad_accum[3] = 1.0
    stats.grad_accum[7, 2] = 100 * 5e-4  # mean 5e-4: above levels 0, 1 (2e-4, 4e-4), below level 2 (8e-4)
    means = means.clone()
    means[7, 2] = torch.tensor([5.1, 5.1, 5.1])  # cells 13 of 0.4 and 51 of 0.1
    means[3] = torch.tensor([-5.0, -5.0, -5.0])
    growth = ag.grow_anchors(anchors, means, stats, 0.025, random_drop=False)
    assert growth.parent.tolist() == [7, 7]
    assert growth.cell_size.tolist() == pytest.approx([0.4, 0.1])
    torch.testing.assert_close(growth.anchors, torch.tensor([[5.2, 5.2, 5.2], [5.1, 5.1, 5.1]]))
    # Nothing eligible: empty, typed results.
    stats.grad_accum.zero_()
    empty = ag.grow_anchors(anchors.double(), means, stats, 0.025)
    assert empty.anchors.shape == (0, 3) and empty.anchors.dtype == torch.float64
    assert empty.parent.shape == (0,) and empty.parent.dtype == torch.int64 and empty.cell_size.shape == (0,)


def test_grow_anchors_parent_is_largest_gradient_in_cell():
    anchors = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    means = anchors[:, None].repeat(1, 2, 1)
    means[:, 0] = torch.tensor([10.0, 10.0, 10.0])  # the three anchors' Gaussian 0 share one empty cell
    stats = ag.AnchorStats(3, 2)
    stats.grad_count.fill_(50)
    stats.grad_accum[:, 0] = 50 * torch.tensor([3e-4, 7e-4, 7e-4])  # anchors 1 and 2 tie: lower index wins
    growth = ag.grow_anchors(anchors, means, stats, 1.0, update_depth=1, update_init_factor=1, random_drop=False)
    assert growth.parent.tolist() == [1] and growth.anchors.tolist() == [[10.0, 10.0, 10.0]]


def test_grow_anchors_finer_levels_see_coarser_new_anchors():
    # One Gaussian above every level's threshold, at the centre of a coarse cell: level 0 places an anchor there,
    # which then occupies the finer cells the same Gaussian falls in at levels 1 and 2.
    anchors = torch.zeros(2, 3)
    means = torch.zeros(2, 1, 3)
    means[1, 0] = 5.2
    stats = ag.AnchorStats(2, 1)
    stats.grad_count.fill_(50)
    stats.grad_accum[1] = 50 * 1e-3
    growth = ag.grow_anchors(anchors, means, stats, 0.025, random_drop=False)
    assert growth.parent.tolist() == [1] and growth.cell_size.tolist() == pytest.approx([0.4])
    torch.testing.assert_close(growth.anchors, torch.full((1, 3), 5.2))


def test_grow_anchors_random_drop_is_reproducible():
    anchors, means, stats = _growth_setup(seed=8)
    full = ag.grow_anchors(anchors, means, stats, 0.025, random_drop=False)
    a = ag.grow_anchors(anchors, means, stats, 0.025, generator=_gen(0))
    b = ag.grow_anchors(anchors, means, stats, 0.025, generator=_gen(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert 0 < a.anchors.shape[0] < full.anchors.shape[0]


def test_grow_anchors_errors():
    anchors, means, stats = _growth_setup(seed=9, m=4, k=2)
    with pytest.raises(ValueError, match=r"grow_anchors: gaussian_means must have shape \(4, \*, 3\)"):
        ag.grow_anchors(anchors, means[:3], stats, 0.1)
    with pytest.raises(ValueError, match=r"grow_anchors: stats has shape \(4, 2\)"):
        ag.grow_anchors(anchors, means[:, :1], stats, 0.1)
    with pytest.raises(TypeError, match="grow_anchors: stats must be an AnchorStats"):
        ag.grow_anchors(anchors, means, {}, 0.1)
    with pytest.raises(ValueError, match="grow_anchors: update_init_factor=8 must be >="):
        ag.grow_anchors(anchors, means, stats, 0.1, update_init_factor=8)
    with pytest.raises(ValueError, match="grow_anchors: grad_threshold"):
        ag.grow_anchors(anchors, means, stats, 0.1, grad_threshold=float("nan"))
    bad = means.clone()
    bad[0, 0, 0] = float("inf")
    stats.grad_count.fill_(100)
    stats.grad_accum.fill_(1.0)  # every Gaussian a candidate
    with pytest.raises(ValueError, match="grow_anchors: gaussian_means has non-finite"):
        ag.grow_anchors(anchors, bad, stats, 0.1, random_drop=False)


def test_prune_mask():
    stats = ag.AnchorStats(5, 2)
    stats.visits = torch.tensor([100, 100, 80, 10, 0], dtype=torch.int32)
    stats.opacity_accum = torch.tensor([0.4, 0.6, 0.0, 0.0, 0.0])  # threshold 0.005 * visits = 0.5, 0.5, 0.4
    assert ag.prune_mask(stats).tolist() == [False, True, True, True, True]
    assert ag.prune_mask(stats, min_visits=50).tolist() == [False, True, False, True, True]
    assert ag.prune_mask(stats, min_opacity=0.0).all()
    with pytest.raises(ValueError, match="prune_mask: min_opacity"):
        ag.prune_mask(stats, min_opacity=-1.0)


# -- parameters and optimizer state -----------------------------------------------------------------------


def _params(g, m):
    return {"anchor": nn.Parameter(torch.randn(m, 3, generator=g)),
            "feat": nn.Parameter(torch.randn(m, 8, generator=g)),
            "offset": nn.Parameter(torch.randn(m, 4, 3, generator=g)),
            "decay": nn.Parameter(torch.rand(m, generator=g, dtype=torch.float64))}


def test_resize_parameters_keeps_adam_state():
    g = _gen(10)
    m = 9
    params = _params(g, m)
    mlp = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.randn(m, 2, generator=g), requires_grad=False)  # not in the optimizer
    opt = torch.optim.Adam([{"params": [params["anchor"], params["offset"]], "lr": 1e-3},
                            {"params": [params["feat"], params["decay"]], "lr": 1e-2},
                            {"params": mlp.parameters(), "lr": 1e-3}], eps=1e-15)
    for _ in range(3):
        opt.zero_grad()
        loss = sum((p.double() ** 2).sum() for p in params.values()) + mlp(params["anchor"]).sum()
        loss.backward()
        opt.step()
    old_state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in params.items()}
    keep = torch.tensor([True, False, True, True, False, False, True, True, True])
    new_rows = {"anchor": torch.randn(2, 3, generator=g), "feat": torch.randn(2, 8, generator=g),
                "offset": torch.zeros(2, 4, 3), "decay": torch.ones(2)}  # float32 decay: cast to float64
    all_params = {**params, "frozen": frozen}
    new = ag.resize_parameters(opt, all_params, keep, {**new_rows, "frozen": torch.zeros(2, 2)})
    assert set(new) == set(all_params)
    for name, p in new.items():
        old = all_params[name]
        assert isinstance(p, nn.Parameter) and p.shape == (8, *old.shape[1:]) and p.dtype == old.dtype
        assert p.requires_grad == old.requires_grad and p.grad is None
        assert torch.equal(p[:6], old.detach()[keep])
        if name == "frozen":
            assert p not in opt.state
            continue
        assert torch.equal(p[6:], new_rows[name].to(p.dtype))
        assert old not in opt.state
        state = opt.state[p]
        assert torch.equal(state["step"], old_state[name]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key][:6], old_state[name][key][keep])  # bitwise
            assert torch.equal(state[key][6:], torch.zeros_like(state[key][6:]))
    held = [p for group in opt.param_groups for p in group["params"]]
    assert all(any(p is q for q in held) for n, p in new.items() if n != "frozen")
    assert not any(p is q for p in params.values() for q in held)
    assert all(any(p is q for q in held) for p in mlp.parameters())
    # The optimizer keeps working on the new parameters.
    before = {n: p.detach().clone() for n, p in new.items()}
    opt.zero_grad()
    (sum((p.double() ** 2).sum() for n, p in new.items() if n != "frozen") + mlp(new["anchor"]).sum()).backward()
    opt.step()
    for name in params:
        assert not torch.equal(new[name].detach(), before[name])
        assert int(opt.state[new[name]]["step"]) == 4


def test_resize_parameters_prune_only_before_any_step_and_errors():
    g = _gen(11)
    params = _params(g, 5)
    opt = torch.optim.Adam(list(params.values()))
    keep = torch.tensor([False, True, True, False, True])
    new = ag.resize_parameters(opt, params, keep)  # no state yet, no new rows
    assert all(p.shape[0] == 3 for p in new.values()) and not opt.state
    assert opt.param_groups[0]["params"][0] is new["anchor"]
    assert ag.resize_parameters(None, new, torch.ones(3, dtype=torch.bool))["feat"].shape == (3, 8)
    with pytest.raises(ValueError, match=r"resize_parameters: keep must have shape \(3,\)"):
        ag.resize_parameters(opt, new, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="resize_parameters: new_rows misses"):
        ag.resize_parameters(opt, new, torch.ones(3, dtype=torch.bool), {"anchor": torch.zeros(1, 3)})
    rows = {"anchor": torch.zeros(1, 3), "feat": torch.zeros(2, 8), "offset": torch.zeros(1, 4, 3),
            "decay": torch.zeros(1)}
    with pytest.raises(ValueError, match="resize_parameters: new_rows\\['feat'\\] has 2 rows"):
        ag.resize_parameters(opt, new, torch.ones(3, dtype=torch.bool), rows)
    rows["feat"] = torch.zeros(1, 7)
    with pytest.raises(ValueError, match=r"resize_parameters: new_rows\['feat'\] must have shape \(\*, 8\)"):
        ag.resize_parameters(opt, new, torch.ones(3, dtype=torch.bool), rows)
    with pytest.raises(ValueError, match="resize_parameters: params\\['feat'\\] must have 3 rows"):
        ag.resize_parameters(opt, {**new, "feat": nn.Parameter(torch.zeros(4, 8))}, torch.ones(3, dtype=torch.bool))


def test_densify_round_trip():
    """Stats -> grow -> prune -> resize -> finish_densify keeps every per-anchor tensor the same length."""
    g = _gen(12)
    m, k = 40, 4
    anchors0, means, _ = _growth_setup(seed=12, m=m, k=k)
    params = {"anchor": nn.Parameter(anchors0.clone()), "feat": nn.Parameter(torch.randn(m, 6, generator=g)),
              "offset": nn.Parameter((means - anchors0[:, None]).clone()),
              "scaling": nn.Parameter(torch.full((m, 6), math.log(0.025)))}
    opt = torch.optim.Adam(list(params.values()))
    stats = ag.AnchorStats(m, k)
    for _ in range(90):
        visible, neural_opacity, grad, kept = _random_view(g, m, k, nan_invisible=False)
        visible |= torch.arange(m) < 30  # anchors 30.. are seen less: never pruned
        neural_opacity[:5] = -1.0  # anchors 0..4: transparent, pruned
        stats.update(visible, neural_opacity, grad, kept & (neural_opacity > 0), torch.full((m,), 1.5))
    growth = ag.grow_anchors(params["anchor"], means, stats, 0.025, generator=_gen(1))
    keep = ag.prune_mask(stats)
    assert keep[5:].all() and not keep[:5].any()
    n_new = growth.anchors.shape[0]
    assert n_new > 0
    new_rows = {"anchor": growth.anchors, "feat": params["feat"][growth.parent],
                "offset": torch.zeros(n_new, k, 3), "scaling": growth.cell_size.log()[:, None].expand(n_new, 6)}
    params = ag.resize_parameters(opt, params, keep, new_rows)
    stats.finish_densify(keep, n_new)
    assert all(p.shape[0] == m - 5 + n_new for p in params.values()) and stats.n_anchors == m - 5 + n_new
    assert not stats.visits[-n_new:].any() and not stats.grad_count[-n_new:].any()
