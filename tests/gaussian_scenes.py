"""Scenes for the Gaussian rasterizer tests: random scenes, a tiny scene for finite differences, cameras.

Cameras come from pyops.models' `look_at` (OpenCV axes) and `pinhole`, with focal lengths and principal points
perturbed per camera (fx != fy, off-centre) so a swapped intrinsic shows up in the tests.
"""

import math

import torch

from pyops.models import look_at, pinhole
from pyops.reference import gaussians as ref

WIDTH, HEIGHT = 40, 27  # neither is a multiple of the tile sizes used
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def intrinsics(width, height, fx, fy, cx, cy, dtype=torch.float64):
    """One pinhole matrix (3, 3) with focal lengths (fx, fy) and principal point (cx, cy)."""
    k = pinhole(width, height, math.degrees(2 * math.atan(0.5 * width / fx)), dtype=torch.float64)[0]
    k[1, 1], k[0, 2], k[1, 2] = fy, cx, cy
    return k.to(dtype)


def cameras(n, width, height, seed, dtype=torch.float64, distance=(4.0, 6.0), focal=1.5):
    """n cameras on random directions at a random distance, all looking at the origin: (viewmats, Ks)."""
    g = torch.Generator().manual_seed(seed)
    eyes, Ks = [], []
    for _ in range(n):
        d = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
        r = distance[0] + (distance[1] - distance[0]) * torch.rand((), generator=g, dtype=torch.float64)
        eyes.append(d * r)
        f = focal * width * (0.9 + 0.2 * torch.rand(2, generator=g, dtype=torch.float64))
        c = torch.tensor([width / 2, height / 2], dtype=torch.float64) + 2 * torch.rand(2, generator=g) - 1
        Ks.append(intrinsics(width, height, f[0].item(), f[1].item(), c[0].item(), c[1].item(), dtype))
    return look_at(torch.stack(eyes)).to(dtype), torch.stack(Ks)


def scene(n=150, n_cams=2, width=WIDTH, height=HEIGHT, seed=0, dtype=torch.float64, sh_degree=None, channels=3):
    """A random scene: means in a ball of radius 1.5 around the origin, log-normal scales giving splats of a
    few pixels, opacities in (0.05, 0.95), colors in (0, 1) or SH coefficients; float64 draws cast to dtype."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    means = torch.nn.functional.normalize(randn(n, 3), dim=1) * 1.5 * rand(n, 1) ** (1 / 3)
    quats = randn(n, 4)
    scales = torch.exp(math.log(0.05) + 0.5 * randn(n, 3))
    opacities = 0.05 + 0.9 * rand(n)
    colors = rand(n, channels) if sh_degree is None else 0.4 * randn(n, (sh_degree + 1) ** 2, 3)
    viewmats, Ks = cameras(n_cams, width, height, seed + 1000)
    out = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
               Ks=Ks)
    return {k: v.to(dtype) for k, v in out.items()}


def tiny_scene(sh_degree=None):
    """3 large, half-transparent Gaussians filling a 12x10 image seen by 2 cameras (float64), and backgrounds."""
    g = torch.Generator().manual_seed(11)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.15, -0.1, 0.1], [-0.1, 0.12, -0.15]], dtype=torch.float64)
    quats = torch.randn(3, 4, generator=g, dtype=torch.float64)
    scales = torch.tensor([[0.9, 1.0, 1.1], [1.1, 0.95, 1.0], [1.0, 1.05, 0.9]], dtype=torch.float64)
    opacities = torch.tensor([0.35, 0.5, 0.45], dtype=torch.float64)
    colors = torch.rand(3, 3, generator=g, dtype=torch.float64) if sh_degree is None else \
        0.3 * torch.randn(3, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    viewmats = look_at(torch.tensor([[5.0, 0.3, 0.4], [-0.5, 4.0, 3.0]], dtype=torch.float64))
    Ks = intrinsics(12, 10, 20.0, 21.0, 6.2, 4.9).expand(2, 3, 3)
    backgrounds = torch.tensor([[0.3, 0.6, 0.9], [0.8, 0.1, 0.4]], dtype=torch.float64)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                Ks=Ks), backgrounds


def on(s, device, dtype):
    """The scene's floating tensors on device in dtype (other entries unchanged)."""
    return {k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in s.items()}


def render_reference(s, width, height, **kw):
    return ref.rasterize_gaussians(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"],
                                   s["Ks"], width, height, **kw)


def assert_far_from_discontinuities(s, width, height, tile_size, config):
    """Finite differences are only valid if no cut flips under a small perturbation: every Gaussian covers
    every tile with room to spare, every alpha is well above 1/255 and below the 0.999 clamp, and T stays far
    from the 1e-4 stop."""
    _, alphas, meta = render_reference(s, width, height, tile_size=tile_size, **config)
    tiles = math.ceil(width / tile_size) * math.ceil(height / tile_size)
    assert (meta["tiles_per_gauss"] == tiles).all()
    m, r = meta["means2d"], meta["radii"].double()
    assert ((m - r < -2) & (m[..., 0:1] + r[..., 0:1] > width + 2) & (m[..., 1:2] + r[..., 1:2] > height + 2)).all()
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    dx = m[:, :, None, None, 0] - xs
    dy = m[:, :, None, None, 1] - ys
    a, b, c = (meta["conics"][:, :, k, None, None] for k in range(3))
    alpha = meta["opacities"][:, :, None, None] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
    assert alpha.min() > 2 / 255 and alpha.max() < 0.9 and (1 - alphas).min() > 1e-2
