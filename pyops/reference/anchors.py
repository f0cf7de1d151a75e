"""Pure-PyTorch anchor ops of MoRel (arXiv 2512.09270) on Scaffold-GS anchors: the specification every backend is
tested against.

- ``anchor_blend_weight``: the bidirectional blend weight of a keyframe anchor at frame time tau,
  ``w = exp(-lambda * decay * dist)`` with ``dist = |tau - offset|`` ("two_sided"), ``max(tau - offset, 0)``
  ("forward": flat before the offset, the set of keyframe n) or ``max(offset - tau, 0)`` ("backward": flat
  after it, the set of keyframe n + 1). At dist's kink (tau == offset) the gradient is 0 (abs and relu's).
- ``anchor_decode``: Scaffold-GS's ``generate_neural_gaussians`` without its boolean compaction. Every anchor
  gives K neural Gaussians in dense (M, K, ...) outputs; a Gaussian is *kept* when its anchor is visible and its
  Tanh opacity is > 0. Kept Gaussians have Scaffold's values and gradients. The others have opacity exactly 0 and
  no gradient through any output (Scaffold drops them; the rasterizer culls opacity < 1/255, so renders agree).
  Invisible anchors run no MLP: their Gaussians are ``means = anchor + offset * scale[0:3]``, ``quats = (1, 0,
  0, 0)``, ``scales = colors = opacities = neural_opacity = 0``. Visible anchors' dropped Gaussians keep the
  MLP's values (only opacity is zeroed). ``neural_opacity`` is the Tanh output, a statistic for densification
  (no gradient), as in Scaffold-GS.

Math runs in fp32 (fp64 for fp64 inputs); outputs come back in feats' dtype.
"""

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

BLEND_MODES = ("two_sided", "forward", "backward")  # the native ops' int blend_mode is the index here
NORMALIZE_EPS = 1e-12  # F.normalize's floor: view directions and quaternions of length 0 stay finite


class AnchorMLP(NamedTuple):
    """The three heads' weights in nn.Linear layout: w1 (hidden, in), b1 (hidden,), w2 (out, hidden), b2 (out,).

    Inputs per head: [feat (C), view direction (3), camera distance (1, if that head's *_dist flag)] and, for
    the color head only, the appearance embedding (A). Outputs: opacity K, cov 7K (per offset: 3 scale logits,
    4 quaternion wxyz), color 3K (per offset: rgb)."""
    w1_opacity: Tensor
    b1_opacity: Tensor
    w2_opacity: Tensor
    b2_opacity: Tensor
    w1_cov: Tensor
    b1_cov: Tensor
    w2_cov: Tensor
    b2_cov: Tensor
    w1_color: Tensor
    b1_color: Tensor
    w2_color: Tensor
    b2_color: Tensor


class DecodedGaussians(NamedTuple):
    means: Tensor  # (M, K, 3)
    quats: Tensor  # (M, K, 4) wxyz, unit
    scales: Tensor  # (M, K, 3)
    opacities: Tensor  # (M, K)
    colors: Tensor  # (M, K, 3)
    neural_opacity: Tensor  # (M, K) the Tanh output (0 for invisible anchors), no gradient


def _math_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def anchor_blend_weight(offset: Tensor, decay: Tensor, tau: Union[float, Tensor], lambda_decay: float = 1.0,
                        mode: str = "two_sided") -> Tensor:
    """(M,) blend weights in offset's dtype; tau is a float or a 0-dim tensor (then it gets a gradient)."""
    math = _math_dtype(offset)
    tau = tau.to(math) if isinstance(tau, Tensor) else tau
    diff = tau - offset.to(math)
    if mode == "two_sided":
        dist = diff.abs()
    elif mode == "forward":
        dist = torch.relu(diff)
    elif mode == "backward":
        dist = torch.relu(-diff)
    else:
        raise ValueError(f"anchor_blend_weight: unknown mode {mode!r}; expected one of {BLEND_MODES}")
    return torch.exp(-lambda_decay * decay.to(math) * dist).to(offset.dtype)


def _head(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)


def anchor_decode(
    anchors: Tensor,  # (M, 3) anchor positions (deformed to the frame time, so they get gradients)
    feats: Tensor,  # (M, C)
    offsets: Tensor,  # (M, K, 3) learned offsets
    anchor_scales: Tensor,  # (M, 6) activated: [0:3] scale the offsets, [3:6] the Gaussians' scales
    cam_center: Tensor,  # (3,) camera centre in world space
    mlp: AnchorMLP,
    *,
    opacity_dist: bool = False,
    cov_dist: bool = False,
    color_dist: bool = False,
    appearance: Optional[Tensor] = None,  # (A,) this camera's appearance embedding (color head input)
    opacity_scale: Optional[Tensor] = None,  # (M,) multiplies the opacity (e.g. a blend weight)
    visible: Optional[Tensor] = None,  # (M,) bool; None: all anchors visible
    blend_offset: Optional[Tensor] = None,  # (M,) with blend_decay: opacity also times anchor_blend_weight(...)
    blend_decay: Optional[Tensor] = None,  # (M,)
    tau: Union[float, Tensor] = 0.0,
    lambda_decay: float = 1.0,
    blend_mode: str = "two_sided",
) -> DecodedGaussians:
    """Scaffold-GS's neural Gaussians of every anchor, dense (see the module docstring for the rules)."""
    math, out_dtype = _math_dtype(feats), feats.dtype
    m, k = offsets.shape[0], offsets.shape[1]
    anchors, feats, offsets, anchor_scales = (t.to(math) for t in (anchors, feats, offsets, anchor_scales))
    mlp = AnchorMLP(*(w.to(math) for w in mlp))
    view = anchors - cam_center.detach().to(math)  # the camera is a constant: no gradient (as in Scaffold-GS)
    dist = view.norm(dim=1, keepdim=True)
    dirs = view / dist.clamp_min(NORMALIZE_EPS)

    def inputs(use_dist: bool) -> Tensor:
        return torch.cat([feats, dirs, dist], 1) if use_dist else torch.cat([feats, dirs], 1)

    color_in = inputs(color_dist)
    if appearance is not None:
        color_in = torch.cat([color_in, appearance.to(math).expand(m, -1)], 1)
    neural_opacity = torch.tanh(_head(inputs(opacity_dist), *mlp[0:4]))  # (M, K)
    cov = _head(inputs(cov_dist), *mlp[4:8]).view(m, k, 7)
    colors = torch.sigmoid(_head(color_in, *mlp[8:12])).view(m, k, 3)
    scales = anchor_scales[:, None, 3:6] * torch.sigmoid(cov[..., :3])
    quats = F.normalize(cov[..., 3:7], dim=-1, eps=NORMALIZE_EPS)
    means = anchors[:, None, :] + offsets * anchor_scales[:, None, 0:3]

    scale = torch.ones(m, dtype=math, device=feats.device)
    if opacity_scale is not None:
        scale = scale * opacity_scale.to(math)
    if blend_offset is not None:
        scale = scale * anchor_blend_weight(blend_offset.to(math), blend_decay.to(math), tau, lambda_decay,
                                            blend_mode)
    vis = torch.ones(m, dtype=torch.bool, device=feats.device) if visible is None else visible
    keep = (neural_opacity > 0) & vis[:, None]  # (M, K)
    opacities = torch.where(keep, neural_opacity * scale[:, None], 0.0)

    def kept(value: Tensor, fill: Tensor) -> Tensor:
        # Dropped Gaussians: no gradient; invisible anchors' ones: the fill value.
        value = torch.where(keep[..., None], value, value.detach())
        return torch.where(vis[:, None, None], value, fill)

    zero3 = torch.zeros(3, dtype=math, device=feats.device)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=math, device=feats.device)
    out = DecodedGaussians(
        means=torch.where(keep[..., None], means, means.detach()),
        quats=kept(quats, identity),
        scales=kept(scales, zero3),
        opacities=opacities,
        colors=kept(colors, zero3),
        neural_opacity=torch.where(vis[:, None], neural_opacity, 0.0).detach(),
    )
    return DecodedGaussians(*(t.to(out_dtype) for t in out))
