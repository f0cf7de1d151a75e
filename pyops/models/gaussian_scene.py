"""A trainable 3D Gaussian scene for `pyops.rasterize_gaussians` (gsplat's parameterisation).

Raw parameters (ready for Adam): means, log-scales, quaternions (normalised by the projection), opacity
logits, and SH coefficients split into the DC term and the rest (their learning rates usually differ).
Densification follows 3DGS / gsplat's default strategy: the image-space gradient of means2d, summed while a
Gaussian is visible, marks under-reconstructed regions; small Gaussians there are cloned, large ones split,
and nearly transparent ones pruned. Modules only (no training loop).
"""

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

SH_C0 = 0.28209479177387814  # the degree-0 SH basis constant: color = SH_C0 * dc + 0.5


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def look_at(eyes, target=None, up=(0.0, 0.0, 1.0)) -> Tensor:
    """World-to-camera matrices of cameras at ``eyes`` looking at ``target``, OpenCV axes (x right, y down,
    z forward), as `pyops.rasterize_gaussians` takes them (``viewmats``).

    Args:
        eyes: ``(..., 3)`` camera centres: a tensor (its dtype and device are used) or a sequence.
        target: ``(..., 3)`` the points looked at, broadcast against ``eyes`` (default: the origin).
        up: ``(..., 3)`` world up direction(s), broadcast against ``eyes``; the camera's y axis points away from
            it. It must not be parallel to a viewing direction.

    Returns:
        ``(..., 4, 4)`` ``[[R, -R eye], [0, 0, 0, 1]]``, the rows of R the camera's right, down and forward axes
        in world coordinates; ``look_at(eyes (C, 3))`` gives ``(C, 4, 4)``, one eye ``(3,)`` gives ``(4, 4)``.
    """
    eyes = torch.as_tensor(eyes)
    if not eyes.is_floating_point():
        eyes = eyes.to(torch.get_default_dtype())
    like = {"dtype": eyes.dtype, "device": eyes.device}
    target = torch.zeros(3, **like) if target is None else torch.as_tensor(target, **like)
    eyes, target, up = torch.broadcast_tensors(eyes, target, torch.as_tensor(up, **like))
    forward = torch.nn.functional.normalize(target - eyes, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up, dim=-1), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    rot = torch.stack([right, down, forward], dim=-2)  # [..., 3, 3]
    top = torch.cat([rot, -(rot @ eyes[..., None])], dim=-1)  # [..., 3, 4]
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], **like).expand(*top.shape[:-2], 1, 4)
    return torch.cat([top, bottom], dim=-2)


def pinhole(width: int, height: int, fov_x_deg: float = 60.0, cameras: int = 1, **like) -> Tensor:
    """Intrinsics ``(cameras, 3, 3)`` of a pinhole camera with a horizontal field of view of ``fov_x_deg``, square
    pixels and the principal point at the image centre; ``like``: ``dtype``/``device`` for torch.tensor."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    k = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], **like)
    return k.repeat(cameras, 1, 1)


def synthetic_scene(n: int, *, sh_degree: int = 3, radius: float = 1.0, generator: Optional[torch.Generator] = None,
                    dtype=torch.float32, device="cpu") -> Dict[str, Tensor]:
    """Activated rasterizer inputs for n Gaussians whose statistics resemble a trained scene: centres in a
    ball, log-normal scales around radius / n^(1/3) (neighbours overlap), anisotropic, randomly rotated,
    bimodal opacities (many nearly transparent, many nearly opaque), and SH coefficients whose higher
    bands are small. Returns means, quats, scales, opacities, colors ((N, K, 3) SH coefficients)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    means = torch.nn.functional.normalize(randn(n, 3), dim=-1) * torch.rand(n, 1, generator=g,
                                                                             dtype=torch.float64) ** (1 / 3)
    spacing = radius / max(n, 1) ** (1 / 3)
    scales = spacing * 0.5 * torch.exp(0.6 * randn(n, 3))
    opacities = torch.sigmoid(3.0 * randn(n))
    k = (sh_degree + 1) ** 2
    colors = randn(n, k, 3) * torch.cat([torch.ones(1), torch.full((k - 1,), 0.1, dtype=torch.float64)])[:, None]
    out = {"means": means * radius, "quats": randn(n, 4), "scales": scales, "opacities": opacities,
           "colors": colors}
    return {name: t.to(device=device, dtype=dtype) for name, t in out.items()}


class GaussianScene(nn.Module):
    """Gaussians with raw parameters; ``forward(viewmats, Ks, width, height)`` renders them.

    Args:
        means: ``(N, 3)`` initial centres.
        colors: ``(N, 3)`` initial RGB in [0, 1] (random when None).
        sh_degree: the highest SH degree stored (0-3).
        scale: initial isotropic scale; None for the mean distance to the 3 nearest neighbours (as 3DGS).
        opacity: initial opacity.
    """

    PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")

    def __init__(self, means: Tensor, colors: Optional[Tensor] = None, *, sh_degree: int = 3,
                 scale: Optional[float] = None, opacity: float = 0.1):
        super().__init__()
        if means.dim() != 2 or means.shape[1] != 3:
            raise ValueError(f"GaussianScene: means must be (N, 3), got shape {tuple(means.shape)}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"GaussianScene: sh_degree={sh_degree} must be in [0, 3]")
        n = means.shape[0]
        if colors is None:
            colors = torch.rand(n, 3, dtype=means.dtype, device=means.device)
        if scale is None:
            dist = torch.cdist(means, means).topk(min(4, n), largest=False).values[:, 1:]  # [N, 3]
            log_scale = dist.mean(-1, keepdim=True).clamp_min(1e-7).log().expand(n, 3)
        else:
            log_scale = torch.full((n, 3), math.log(scale), dtype=means.dtype, device=means.device)
        self.sh_degree = sh_degree
        self.means = nn.Parameter(means.clone())
        self.log_scales = nn.Parameter(log_scale.clone())
        self.quats = nn.Parameter(torch.tensor([1.0, 0, 0, 0], dtype=means.dtype, device=means.device).repeat(n, 1))
        self.opacity_logits = nn.Parameter(torch.full((n,), math.log(opacity / (1 - opacity)), dtype=means.dtype,
                                                      device=means.device))
        self.sh0 = nn.Parameter(rgb_to_sh(colors)[:, None, :].clone())  # [N, 1, 3]
        self.shN = nn.Parameter(torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3, dtype=means.dtype, device=means.device))
        self.register_buffer("grad2d_sum", torch.zeros(n, dtype=means.dtype, device=means.device))
        self.register_buffer("visible_count", torch.zeros(n, dtype=means.dtype, device=means.device))

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def activated(self) -> Dict[str, Tensor]:
        """The rasterizer's inputs: scales > 0, opacities in (0, 1), SH coefficients (N, K, 3)."""
        return {"means": self.means, "quats": self.quats, "scales": self.log_scales.exp(),
                "opacities": torch.sigmoid(self.opacity_logits), "colors": torch.cat([self.sh0, self.shN], 1)}

    def forward(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, *, sh_degree: Optional[int] = None,
                **kwargs) -> Tuple[Tensor, Tensor, Dict]:
        """Renders C cameras: ``(render_colors (C, H, W, 3[+1]), render_alphas (C, H, W, 1), meta)``.

        ``sh_degree`` (default: all stored) allows the progressive schedule 3DGS uses; other keyword
        arguments go to `pyops.rasterize_gaussians`. ``meta["means2d"]`` keeps its gradient for
        `accumulate_densify_stats`.
        """
        from .. import rasterize_gaussians  # the package imports the models

        p = self.activated()
        degree = self.sh_degree if sh_degree is None else sh_degree
        colors, alphas, meta = rasterize_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                                                   viewmats, Ks, width, height, sh_degree=degree, **kwargs)
        if self.training and meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()
        return colors, alphas, meta

    @torch.no_grad()
    def accumulate_densify_stats(self, meta: Dict) -> None:
        """After ``loss.backward()``: adds each visible Gaussian's image-space gradient norm (in units of
        half the image size, as gsplat) to the running statistics."""
        grad = meta["means2d"].grad  # [C, N, 2]
        if grad is None:
            raise RuntimeError("GaussianScene: meta['means2d'] has no gradient; call backward() first")
        grad = grad.clone()
        grad[..., 0] *= meta["width"] / 2
        grad[..., 1] *= meta["height"] / 2
        visible = (meta["radii"] > 0).all(-1)  # [C, N]
        self.grad2d_sum += (grad.norm(dim=-1) * visible).sum(0)
        self.visible_count += visible.sum(0)

    @torch.no_grad()
    def densify_and_prune(self, optimizer: torch.optim.Optimizer, *, grad_threshold: float = 2e-4,
                          scale_threshold: float = 0.01, min_opacity: float = 0.005) -> Dict[str, int]:
        """Clones small and splits large Gaussians whose mean image-space gradient exceeds
        ``grad_threshold``, prunes those with opacity below ``min_opacity``, updates ``optimizer`` (one param
        group per parameter, Adam-style state) and resets the statistics. Returns the counts."""
        mean_grad = self.grad2d_sum / self.visible_count.clamp_min(1)
        big = self.log_scales.exp().amax(-1) > scale_threshold
        hot = mean_grad > grad_threshold
        clone, split = hot & ~big, hot & big
        # A split replaces one Gaussian by two samples from it, each 1/1.6 its size (3DGS's factor).
        samples = self._sample_inside(split)  # [2S, 3]
        sources = torch.cat([torch.arange(self.num_gaussians, device=clone.device), clone.nonzero()[:, 0],
                             split.nonzero()[:, 0].repeat(2)])
        keep = torch.cat([~split, torch.ones(int(clone.sum()) + 2 * int(split.sum()), dtype=torch.bool,
                                             device=clone.device)])
        new = {name: getattr(self, name)[sources] for name in self.PARAMS}
        n_old, n_clone = self.num_gaussians, int(clone.sum())
        new["means"][n_old + n_clone:] = samples
        new["log_scales"][n_old + n_clone:] -= math.log(1.6)
        keep &= torch.sigmoid(new["opacity_logits"]) >= min_opacity
        # Optimizer moments: originals keep theirs, clones copy them (gsplat), split samples start at zero.
        fresh = torch.arange(len(sources), device=sources.device) >= n_old + n_clone
        self._replace(optimizer, sources[keep], fresh[keep], {k: v[keep] for k, v in new.items()})
        return {"cloned": n_clone, "split": int(split.sum()), "pruned": int((~keep).sum()) - int(split.sum()),
                "total": self.num_gaussians}

    def _sample_inside(self, which: Tensor) -> Tensor:  # [N] bool -> [2 S, 3] points drawn from the Gaussians
        idx = which.nonzero()[:, 0].repeat(2)
        w, x, y, z = torch.nn.functional.normalize(self.quats[idx], dim=-1).unbind(-1)
        rot = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                           2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                           2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)
        offset = torch.randn_like(self.means[idx]) * self.log_scales[idx].exp()
        return self.means[idx] + (rot @ offset[..., None])[..., 0]

    def _replace(self, optimizer: torch.optim.Optimizer, sources: Tensor, fresh: Tensor,
                 values: Dict[str, Tensor]) -> None:
        """Swaps every parameter for its new rows (drawn from rows ``sources``); optimizer state rows follow
        their source except where ``fresh``, which start at zero."""
        for name in self.PARAMS:
            old = getattr(self, name)
            param = nn.Parameter(values[name].contiguous())
            for group in optimizer.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is not old:
                        continue
                    state = optimizer.state.pop(p, {})
                    for key, v in state.items():
                        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == old.shape[0]:
                            v = v[sources].clone()
                            v[fresh] = 0
                            state[key] = v
                    group["params"][i] = param
                    optimizer.state[param] = state
            setattr(self, name, param)
        self.grad2d_sum = torch.zeros(len(sources), dtype=self.means.dtype, device=self.means.device)
        self.visible_count = torch.zeros_like(self.grad2d_sum)
