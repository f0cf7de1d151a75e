"""Per-call cost of every public op at a tiny size, where the host (Python wrapper, checks, autograd bookkeeping,
dispatch), not the kernel, sets the pace: forward and forward+backward against nn.LayerNorm on a (4, 64) tensor,
measured in the same run. Issue 15 asks for these numbers; Derf's own host path is the one that has been cut
down so far (its C++ autograd kernel), so the other ops' rows show what the same treatment could save.
"""

import torch

import pyops

G = torch.Generator().manual_seed(0)


def _rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=G) * scale


def cases():
    """name -> (forward fn, tensors that get gradients) at tiny sizes, CPU tensors."""
    x = _rnd(4, 64)
    ln = torch.nn.LayerNorm(64)
    derf = pyops.Derf(64)
    lw = _rnd(96, 64, scale=0.1)
    codes = _rnd(16, 64)
    means = _rnd(8, 3, scale=0.3) + torch.tensor([0.0, 0.0, 3.0])
    quats, scales, opac, cols = _rnd(8, 4), torch.full((8, 3), 0.05), torch.full((8,), 0.5), torch.rand(8, 3,
                                                                                                        generator=G)
    viewmat, K = torch.eye(4)[None], torch.tensor([[[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]]])
    dec = pyops.AnchorDecoder(8, 2, 8)
    anchors, feats, offs, ascale = _rnd(4, 3), _rnd(4, 8), _rnd(4, 2, 3, scale=0.1), torch.full((4, 6), 0.05)
    pts, planes, aabb = _rnd(4, 3, scale=0.5), [torch.rand(4, 8, 8, generator=G) for _ in range(6)], \
        torch.tensor([[1.0] * 3, [-1.0] * 3])
    out = {
        "nn.LayerNorm (4x64)": (lambda: ln(x), [x] + list(ln.parameters())),
        "pyops.Derf (4x64)": (lambda: derf(x), [x] + list(derf.parameters())),
        "pyops.derf_linear (4x64->96)": (lambda: pyops.derf_linear(x, derf.alpha, derf.shift, derf.weight, derf.bias,
                                                                   lw), [x, lw] + list(derf.parameters())),
        "pyops.vq_search (4x64, 16 codes)": (lambda: pyops.vq_search(x, codes)[0], []),
        "pyops.VQIndex.search (4x64, 16 codes)": (lambda index=pyops.VQIndex(codes): index.search(x)[0], []),
        "pyops.rasterize_gaussians (8, 16x16)": (
            lambda: pyops.rasterize_gaussians(means, quats, scales, opac, cols, viewmat, K, 16, 16)[0],
            [means, quats, scales, opac, cols]),
        "pyops.anchor_decode (M=4, K=2, C=8)": (
            lambda: dec(anchors, feats, offs, ascale, torch.zeros(3)).means, [anchors, feats, offs, ascale]),
        "pyops.hexplane_features (N=4, F=4, 8x8)": (lambda: pyops.hexplane_features(pts, 0.3, planes, aabb),
                                                   [pts] + planes),
    }
    # The splatting stages alone, on the same 8 Gaussians (inputs for the later stages from a no-grad run).
    with torch.no_grad():
        radii, m2d, depths, conics, _ = pyops.project_gaussians(means, quats, scales, viewmat, K, 16, 16)
        _, isect_ids, flat = pyops.intersect_tiles(m2d, radii, depths, 16, 1, 1)
        offsets = pyops.isect_offsets(isect_ids, 1, 1, 1)
    m2d, conics, colors2d, opac2d = m2d.clone(), conics.clone(), cols[None].clone(), opac[None].clone()
    dirs, coeffs = _rnd(8, 3), _rnd(8, 9, 3, scale=0.3)
    out.update({
        "pyops.project_gaussians (8)": (
            lambda: pyops.project_gaussians(means, quats, scales, viewmat, K, 16, 16)[1], [means, quats, scales]),
        "pyops.spherical_harmonics (8, degree 2)": (lambda: pyops.spherical_harmonics(2, dirs, coeffs),
                                                    [dirs, coeffs]),
        "pyops.intersect_tiles (8)": (lambda: pyops.intersect_tiles(m2d, radii, depths, 16, 1, 1)[1], []),
        "pyops.isect_offsets (8)": (lambda: pyops.isect_offsets(isect_ids, 1, 1, 1), []),
        "pyops.rasterize_to_pixels (8, 16x16)": (
            lambda: pyops.rasterize_to_pixels(m2d, conics, colors2d, opac2d, 16, 16, 16, offsets, flat)[0],
            [m2d, conics, colors2d, opac2d]),
    })
    q, k, s = _rnd(8, 32), _rnd(8, 32), torch.tensor(10.0)
    ex, ey = _rnd(4, 3, 32), _rnd(4, 3, 32)
    out.update({
        "pyops.contrastive_loss (8x32)": (lambda: pyops.contrastive_loss(q, k, s), [q, k, s]),
        "pyops.attribute_pair_loss (4x3x32)": (lambda: pyops.attribute_pair_loss(ex, ey, s), [ex, ey, s]),
        "pyops.retrieve (4x64, 16 codes)": (lambda: pyops.retrieve(x, codes, 4)[0], []),
    })
    for t in {id(t): t for _, leaves in out.values() for t in leaves}.values():
        t.requires_grad_()
    return out


def run(ctx):
    rows, layernorm = [], {}
    if ctx.device.type != "cpu":
        ctx.note("overhead: the tiny cases run on CPU tensors (the host cost is what they measure)")
    for name, (fn, leaves) in cases().items():
        ours = name.startswith("pyops")
        try:
            modes = [("forward", fn)]
            if leaves:
                modes.append(("full", lambda fn=fn, leaves=leaves: torch.autograd.grad(fn().sum(), leaves,
                                                                                       allow_unused=True)))
            for mode, call in modes:
                row = ctx.record("overhead", "pyops-cpu" if ours else "torch", mode, "op", name, call,
                                 extra={"dtype": "fp32"})
                rows.append(row)
                us = 1000 * row["y_value_50"]
                if not ours:
                    layernorm[mode] = us
                ratio = f" = {us / layernorm[mode]:.2f}x nn.LayerNorm's" if ours and mode in layernorm else ""
                ctx.note(f"per call: {name} {mode} {us:.1f} us{ratio}")
        except Exception as e:  # noqa: BLE001  (report it, go on)
            ctx.fail(f"overhead: {name}", e, ours=ours)
    return rows
