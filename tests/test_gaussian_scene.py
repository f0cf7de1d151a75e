"""The thin model: GaussianScene fits a synthetic multi-view target rendered from a random ground-truth scene
(PSNR rises), its densification statistics come from the means2d gradients, and densify_and_prune keeps the
optimizer consistent."""

import math

import torch

from pyops.models import GaussianScene, look_at, pinhole, synthetic_scene
from pyops.reference import gaussians as ref

WIDTH, HEIGHT = 32, 24


def views(n):
    angles = torch.arange(n) * 2 * math.pi / n
    eyes = torch.stack([3.0 * angles.cos(), 3.0 * angles.sin(), torch.full((n,), 0.8)], -1)
    return look_at(eyes), pinhole(WIDTH, HEIGHT, cameras=n)


def psnr(a, b):
    return -10 * torch.log10(((a - b) ** 2).mean()).item()


def test_fits_a_synthetic_scene():
    torch.manual_seed(0)
    viewmats, Ks = views(3)
    truth = synthetic_scene(150, sh_degree=1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target, _, _ = ref.rasterize_gaussians(**truth, viewmats=viewmats, Ks=Ks, width=WIDTH, height=HEIGHT,
                                               sh_degree=1)
    model = GaussianScene(truth["means"] + 0.05 * torch.randn_like(truth["means"]), sh_degree=1, opacity=0.3)
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in (
        (model.means, 1e-3), (model.log_scales, 1e-2), (model.quats, 1e-2), (model.opacity_logits, 5e-2),
        (model.sh0, 2e-2), (model.shN, 2e-3))])
    psnrs = []
    for step in range(40):
        image, _, meta = model(viewmats, Ks, WIDTH, HEIGHT)
        loss = (image - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        model.accumulate_densify_stats(meta)
        optimizer.step()
        psnrs.append(psnr(image.detach(), target))
    assert psnrs[-1] > psnrs[0] + 3, psnrs
    assert (model.visible_count > 0).any() and (model.grad2d_sum > 0).any()


def test_densify_and_prune_keeps_the_optimizer_consistent():
    torch.manual_seed(0)
    viewmats, Ks = views(2)
    model = GaussianScene(synthetic_scene(60, sh_degree=0)["means"], sh_degree=0, opacity=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    image, _, meta = model(viewmats, Ks, WIDTH, HEIGHT)
    image.square().mean().backward()
    model.accumulate_densify_stats(meta)
    optimizer.step()
    with torch.no_grad():
        model.opacity_logits[:5] = -10.0  # to be pruned
    counts = model.densify_and_prune(optimizer, grad_threshold=0.0, scale_threshold=0.05)
    assert counts["cloned"] + counts["split"] > 0 and counts["pruned"] >= 5
    assert counts["total"] == model.num_gaussians == 60 + counts["cloned"] + counts["split"] - counts["pruned"]
    params = set(map(id, model.parameters()))
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == params
    for p in model.parameters():
        assert optimizer.state[p]["exp_avg"].shape == p.shape
    image, _, meta = model(viewmats, Ks, WIDTH, HEIGHT)  # still trains
    image.square().mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
