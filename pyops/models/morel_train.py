"""Training a :class:`~pyops.models.morel.MoRelScene` through MoRel's four stages.

1. **GCA**: the global canonical anchors, their deformation field and the decoder MLPs on all frames, with FHD
   densification (:mod:`pyops.models.anchor_growth`).
2. **KfA** n: keyframe n's anchors (cloned from the GCA at t_n) on the frames within ``kfa_tolerance`` of t_n.
3. **PWD** n: keyframe n's anchors and deformation field on its window [t_n - gop, t_n + gop], keyframe by
   keyframe (the sliding window: load n, train, unload; two keyframes at most on the device).
4. **IFB** n: only the blend offsets/decays of keyframes n (forward) and n+1 (backward), on the frames between.

Each iteration renders one random (frame, camera) of the stage's range and steps Adam on
``(1 - ssim_weight) * L1 + ssim_weight * (1 - SSIM)`` (3DGS's loss, ssim_weight 0.2). Learning rates default to
Scaffold-GS's (anchors, features, offsets, scales, MLPs) and 4DGS's (HexPlane grids, deformation MLP) values;
MoRel's blend parameters get 0.01 (our choice).
"""

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from .._checks import check_int
from ..metrics import ssim
from . import anchor_growth as growth
from .morel import ANCHOR_PARAMS, MoRelScene


@dataclass
class MoRelLearningRates:
    anchor: float = 1e-4
    offset: float = 0.01
    feat: float = 0.0075
    scaling: float = 0.007
    mlp: float = 0.004
    grid: float = 0.0016
    deform: float = 0.0016
    gate: float = 0.01
    blend: float = 0.01


@dataclass
class DensifyConfig:
    """FHD densification in the GCA stage: every ``every`` iterations from ``start`` to ``stop``."""
    start: int = 100
    stop: int = 1_000_000
    every: int = 100
    grad_threshold: float = 2e-4
    min_opacity: float = 0.005
    quantiles: tuple = (0.5, 0.8)
    level_weights: tuple = (1.0, 1.5, 2.0)


def _lr_of(name: str, lr: MoRelLearningRates) -> float:
    last = name.rsplit(".", 1)[-1]
    if name.startswith("decoder."):
        return lr.mlp
    if ".grids." in name:
        return lr.grid
    if last == "gate":
        return lr.gate
    if ".deform." in f".{name}":
        return lr.deform
    if last in ANCHOR_PARAMS:
        return getattr(lr, last)
    return lr.blend


class MoRelTrainer:
    """Trains a scene on ground-truth frames.

    Args:
        scene: the :class:`MoRelScene`.
        target: ``target(t) -> (C, H, W, 3)``, frame t's images for the C cameras (e.g.
            ``DynamicScene.render``); cached per frame.
        viewmats, Ks: ``(C, 4, 4)`` and ``(C, 3, 3)`` on the scene's device; width, height: image size.
        background: ``(3,)`` background colour of the targets (default black).
        kfa_tolerance: frames on each side of t_n the KfA stage trains on.
        densify: FHD densification in the GCA stage (None: off).
        progress: show a progress bar per stage.
    """

    def __init__(self, scene: MoRelScene, target: Callable[[int], Tensor], viewmats: Tensor, Ks: Tensor, width: int,
                 height: int, *, background: Optional[Tensor] = None, lr: Optional[MoRelLearningRates] = None,
                 ssim_weight: float = 0.2, kfa_tolerance: int = 1, densify: Optional[DensifyConfig] = DensifyConfig(),
                 seed: int = 0, progress: bool = True):
        self.scene, self.target = scene, target
        self.viewmats, self.Ks, self.width, self.height = viewmats, Ks, width, height
        device = scene.device
        bg = torch.zeros(3, device=device) if background is None else background.to(device)
        self.backgrounds = bg.reshape(1, 3)
        self.lr = lr or MoRelLearningRates()
        self.ssim_weight = ssim_weight
        self.kfa_tolerance = check_int("MoRelTrainer", "kfa_tolerance", kfa_tolerance, 0)
        self.densify = densify
        self.rng = random.Random(seed)
        self.progress = progress
        self._targets: Dict[int, Tensor] = {}

    # -- pieces -----------------------------------------------------------------------------------------

    def loss(self, image: Tensor, target: Tensor) -> Tensor:
        l1 = (image - target).abs().mean()
        return (1 - self.ssim_weight) * l1 + self.ssim_weight * (1 - ssim(image, target))

    def target_frame(self, t: int) -> Tensor:
        if t not in self._targets:
            self._targets[t] = self.target(t).to(self.scene.device)
        return self._targets[t]

    def frames(self, stage: str, n: Optional[int]) -> List[int]:
        """The frames a stage trains on."""
        last, gop = self.scene.cfg.n_frames - 1, self.scene.cfg.gop
        if stage == "gca":
            return list(range(last + 1))
        t_n = self.scene.keyframe_time(n)
        if stage == "kfa":
            lo, hi = t_n - self.kfa_tolerance, t_n + self.kfa_tolerance
        elif stage == "pwd":
            lo, hi = t_n - gop, t_n + gop
        else:  # ifb: the interval's inner frames (its ends render one keyframe alone)
            lo, hi = t_n + 1, t_n + gop - 1
        frames = [t for t in range(max(lo, 0), min(hi, last) + 1)]
        return frames or [min(t_n, last)]

    def _optimizer(self, params: List[torch.nn.Parameter]) -> torch.optim.Adam:
        names = {id(p): name for name, p in self.scene.named_parameters()}
        for n, kf in self.scene.store.resident.items():
            names.update({id(p): f"keyframes.{n}.{name}" for name, p in kf.named_parameters()})
        groups = [{"params": [p], "lr": _lr_of(names[id(p)], self.lr), "name": names[id(p)]} for p in params]
        return torch.optim.Adam(groups, eps=1e-15)

    def render_loss(self, t: int, camera: int):
        """The loss of frame t in one camera as the current stage renders it, and the render's meta."""
        scene, s = self.scene, slice(camera, camera + 1)
        args = (self.viewmats[s], self.Ks[s], self.width, self.height)
        if scene.stage == "gca":
            image, _, meta = scene.render_gca(t, *args, backgrounds=self.backgrounds)
        elif scene.stage in ("kfa", "pwd"):
            image, _, meta = scene.render_keyframe(scene.stage_keyframe, t, *args, backgrounds=self.backgrounds)
        else:
            image, _, meta = scene.render(t, *args, backgrounds=self.backgrounds)
        return self.loss(image, self.target_frame(t)[s]), meta

    # -- stages -----------------------------------------------------------------------------------------

    def train_stage(self, stage: str, iterations: int, keyframe: Optional[int] = None) -> List[float]:
        """Runs one stage (see the module docstring) and returns its losses."""
        check_int("MoRelTrainer.train_stage", "iterations", iterations, 0)
        params = self.scene.set_stage(stage, keyframe)
        optimizer = self._optimizer(params)
        frames = self.frames(stage, keyframe)
        stats = self._new_stats() if stage == "gca" and self.densify else None
        losses = []  # tensors: no host sync per iteration
        desc = stage if keyframe is None else f"{stage} {keyframe}"
        for it in _progress(range(iterations), desc, self.progress):
            t = self.rng.choice(frames)
            loss, meta = self.render_loss(t, self.rng.randrange(self.viewmats.shape[0]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stats is not None:
                self._accumulate(stats, meta)
            optimizer.step()
            losses.append(loss.detach())
            if stats is not None and self.densify.start <= it + 1 < self.densify.stop and \
                    (it + 1) % self.densify.every == 0:
                optimizer, stats = self._densify(optimizer, stats)
        self.scene.set_stage(None)
        self.scene.store.evict_all()  # the window's keyframes back to storage
        return torch.stack(losses).tolist() if losses else []

    def fit(self, gca: int, kfa: int, pwd: int, ifb: int) -> Dict[str, List[float]]:
        """The whole schedule: GCA, then KfA and PWD keyframe by keyframe, then IFB interval by interval.
        Returns each stage's losses (concatenated over keyframes)."""
        history = {"gca": self.train_stage("gca", gca), "kfa": [], "pwd": [], "ifb": []}
        for n in range(self.scene.n_keyframes):
            history["kfa"] += self.train_stage("kfa", kfa, n)
            history["pwd"] += self.train_stage("pwd", pwd, n)
        for n in range(self.scene.n_keyframes - 1):
            history["ifb"] += self.train_stage("ifb", ifb, n)
        return history

    # -- FHD densification (GCA stage) ------------------------------------------------------------------

    def _new_stats(self):
        gca = self.scene.gca
        return {"stats": growth.AnchorStats(gca.n_anchors, self.scene.cfg.n_offsets, device=self.scene.device),
                "feat_sum": torch.zeros(gca.n_anchors, self.scene.cfg.feat_dim, device=self.scene.device),
                "feat_sq": torch.zeros(gca.n_anchors, self.scene.cfg.feat_dim, device=self.scene.device),
                "count": 0, "weight": None}

    @torch.no_grad()
    def _accumulate(self, acc, meta) -> None:
        """Scaffold-GS's training statistics of one rendered view, weighted by the anchors' FHD levels, and the
        running moments of each anchor's deformed feature (its temporal variance gives the levels)."""
        cfg = self.densify
        view = meta["views"][0]
        visible, dec = view["decoded"][0]
        m, k = dec.opacities.shape
        feat = meta["deformed"][0]["feat"]
        acc["feat_sum"] += feat
        acc["feat_sq"] += feat * feat
        acc["count"] += 1
        grad = view["means2d"].grad[0].clone()  # (M*K, 2), in pixels -> units of half the image (gsplat)
        grad[:, 0] *= view["width"] / 2
        grad[:, 1] *= view["height"] / 2
        if acc["count"] % 10 == 1 or acc.get("weight") is None:  # the levels move slowly: a sort every 10 views
            acc["weight"] = growth.fhd_level_weight(self._feature_variance(acc), cfg.quantiles, cfg.level_weights)
        kept = (dec.opacities > 0) & (view["radii"][0] > 0).all(-1).view(m, k)
        acc["stats"].update(visible, dec.neural_opacity, grad.norm(dim=-1).view(m, k), kept, acc["weight"])

    @staticmethod
    def _feature_variance(acc) -> Tensor:
        mean = acc["feat_sum"] / max(acc["count"], 1)
        return (acc["feat_sq"] / max(acc["count"], 1) - mean * mean).clamp_min(0).mean(1)

    @torch.no_grad()
    def _densify(self, optimizer, acc):
        scene, cfg = self.scene, self.densify
        gca = scene.gca
        dec_means = _gaussian_means(gca)
        new_anchor, parent, new_size = growth.grow_anchors(gca.anchor, dec_means, acc["stats"], scene.cfg.voxel_size,
                                                           grad_threshold=cfg.grad_threshold)
        keep = growth.prune_mask(acc["stats"], min_opacity=cfg.min_opacity)
        rows = gca.per_anchor()
        g = new_anchor.shape[0]
        new_rows = {}
        for name, p in rows.items():
            if name == "anchor":
                new_rows[name] = new_anchor
            elif name == "feat":
                new_rows[name] = p[parent]
            elif name == "scaling":
                new_rows[name] = new_size.log()[:, None].expand(g, 6).to(p.dtype)
            elif name == "offset":
                new_rows[name] = torch.zeros(g, *p.shape[1:], device=p.device, dtype=p.dtype)
            else:  # blend parameters and gates: the parent's
                new_rows[name] = p[parent]
        new_params = growth.resize_parameters(optimizer, rows, keep, new_rows)
        for name, p in new_params.items():
            owner, attr = (gca.deform, "gate") if name == "deform.gate" else (gca, name)
            setattr(owner, attr, p)
        acc["stats"].finish_densify(keep, g)  # Scaffold-GS's partial restart of the statistics
        for key in ("feat_sum", "feat_sq"):
            acc[key] = torch.cat([acc[key][keep], acc[key].new_zeros(g, acc[key].shape[1])])
        acc["weight"] = None
        return optimizer, acc


def _gaussian_means(anchors) -> Tensor:
    """(M, K, 3) neural Gaussian centres of an anchor set (undeformed)."""
    return anchors.anchor[:, None] + anchors.offset * anchors.scaling.exp()[:, None, :3]


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return it
    return tqdm(it, desc=f"MoRel {desc}", leave=False)
