"""MoRel (arXiv 2512.09270, "Long-Range Flicker-Free 4D Motion Modeling via Anchor Relay-based Bidirectional
Blending") as a thin model on pyops' ops: Scaffold-GS anchors decoded by :func:`pyops.anchor_decode`, 4DGS
HexPlane deformation fields through :func:`pyops.hexplane_features`, one :func:`pyops.rasterize_gaussians` call
per camera and frame.

The sequence (frames 0 .. T-1) is covered by keyframes at ``t_n = n * gop`` (the last one at or after T-1):

- **GCA**, the global canonical anchor set, trained on all frames with its own deformation field over the
  sequence's normalised time ``2 t / (T - 1) - 1``.
- **KfA** n, keyframe n's anchor set, cloned from the GCA deformed to ``t_n`` when its KfA stage starts, with its
  own bidirectional deformation field over the relative time ``tau = (t - t_n) / gop`` in [-1, 1] and per-anchor
  blend offsets and decays for the forward (towards n+1) and backward (towards n-1) directions.
- A frame t between keyframes n and n+1 renders both sets in one pass: set n deformed to ``tau_n = (t - t_n) /
  gop`` with forward blend weights ``exp(-lambda * d * max(tau_n - o, 0))``, set n+1 deformed to ``tau_n - 1``
  with backward weights ``exp(-lambda * d * max(o - tau_n + 1, 0))`` (:func:`pyops.anchor_blend_weight`, fused
  into the decode as its opacity scale). A keyframe's own frame renders that keyframe's set alone, undeformed.
- Residency: keyframe states live on a storage device (CPU memory, pinned when the compute device is CUDA) or on
  disk (one file per keyframe, memory-mapped when loaded), and at most two keyframes are on the compute device,
  whatever order frames are asked in (least recently used one evicted, written back when it was trained).

Where the paper is silent, these are our choices (MoDec-GS, by the same first author, and Scaffold-GS / 4DGS
defaults otherwise):

- A deformation field is a HexPlane (:class:`pyops.HexPlaneField`) at the canonical anchor positions and the time,
  a ReLU trunk and one linear head for the changes of anchor position, feature, offsets and log-scales. Each
  change is multiplied by the time (so a keyframe is exactly itself at tau = 0 and the relay is continuous) and
  by a per-anchor gate ``sigmoid(g)``; the head starts at zero (identity deformation).
- The decoder MLPs (Scaffold-GS's three heads) are global: trained in the GCA stage, frozen afterwards, so
  retraining one keyframe never changes another one's renders.
- Anchors are initialised as Scaffold-GS does (voxel centres of the point cloud, zero features and offsets); the
  point colours set the color head's initial bias to the cloud's mean colour. Initial log-scales are
  ``log(voxel_size)`` (Scaffold-GS uses the k-NN distance).
- FHD densification (:mod:`pyops.models.anchor_growth`) runs in the GCA stage; keyframes inherit its anchors.
- Visibility: an anchor is decoded when it is in front of the camera and projects within the image widened by
  ``frustum_margin`` on each side (Scaffold-GS's prefilter_voxel, without a rasterizer pass).

Training (the four stages, L1 + SSIM loss) lives in :mod:`pyops.models.morel_train`.
"""

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_tensor
from ..anchors import AnchorDecoder, DecodedGaussians, anchor_decode
from ..gaussians import rasterize_gaussians
from ..hexplane import HexPlaneField
from .anchor_growth import voxelize

STAGES = ("gca", "kfa", "pwd", "ifb")
ANCHOR_PARAMS = ("anchor", "feat", "offset", "scaling")  # Scaffold-GS's _anchor, _anchor_feat, _offset, _scaling
BLEND_PARAMS = ("fwd_offset", "fwd_decay", "bwd_offset", "bwd_decay")


@dataclass
class MoRelConfig:
    """Sizes of a MoRel scene (saved with its state dict)."""
    n_frames: int
    gop: int
    voxel_size: float
    feat_dim: int = 32
    n_offsets: int = 10
    hidden_dim: int = 32
    hex_features: int = 16  # F per HexPlane level
    hex_resolution: Tuple[int, int, int, int] = (32, 32, 32, 9)  # x, y, z, time (MoRel's fields see 2 GOPs)
    hex_multires: Tuple[int, ...] = (1, 2)
    deform_width: int = 64
    lambda_decay: float = 1.0
    frustum_margin: float = 0.25
    bounds: Tuple[Tuple[float, ...], Tuple[float, ...]] = field(default=((1.0,) * 3, (-1.0,) * 3))  # [max, min]

    @property
    def n_keyframes(self) -> int:
        return math.ceil((self.n_frames - 1) / self.gop) + 1


# ----------------------------------------------------------------------------------------------------------
# One anchor set with its deformation field.


class DeformField(nn.Module):
    """A bidirectional deformation field: HexPlane features of (canonical anchor, time) -> changes of anchor
    position (3), feature (C), offsets (3K) and log-scales (6), each times the time and the anchor's gate."""

    def __init__(self, n_anchors: int, cfg: MoRelConfig, *, device=None):
        super().__init__()
        kw = {"device": device}
        self.field = HexPlaneField(planeconfig={"output_coordinate_dim": cfg.hex_features,
                                                "resolution": list(cfg.hex_resolution)},
                                   multires=cfg.hex_multires, **kw)
        self.field.set_aabb(cfg.bounds[0], cfg.bounds[1])
        self.trunk = nn.Sequential(nn.Linear(self.field.feat_dim, cfg.deform_width, **kw), nn.ReLU())
        # One linear head for the four changes (position 3, feature C, offsets 3K, log-scales 6): one GEMM per
        # deformed set instead of four.
        self.sizes = {"anchor": 3, "feat": cfg.feat_dim, "offset": 3 * cfg.n_offsets, "scaling": 6}
        self.head = nn.Linear(cfg.deform_width, sum(self.sizes.values()), **kw)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.gate = nn.Parameter(torch.zeros(n_anchors, **kw))  # per-anchor gate logits: sigmoid(0) = 0.5

    def forward(self, anchors: Dict[str, Tensor], time: float, features: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The anchor tensors deformed to ``time`` (a float in [-1, 1]); the same tensors at time 0. ``features``:
        the HexPlane features of (anchors["anchor"], time) if already computed (by default the fused op)."""
        if time == 0.0:
            return dict(anchors)
        if features is None:
            features = self.field(anchors["anchor"], time)
        delta = self.head(self.trunk(features)) * (torch.sigmoid(self.gate)[:, None] * time)
        parts = dict(zip(self.sizes, delta.split(list(self.sizes.values()), dim=1)))
        return {name: value + parts[name].view_as(value) for name, value in anchors.items()}


class AnchorSet(nn.Module):
    """Scaffold-GS anchors with a deformation field and MoRel's per-anchor blend parameters. The GCA and every
    keyframe are one of these (the GCA's blend parameters are unused)."""

    def __init__(self, n_anchors: int, cfg: MoRelConfig, *, device=None):
        super().__init__()
        m, k, c = n_anchors, cfg.n_offsets, cfg.feat_dim
        kw = {"device": device}
        self.anchor = nn.Parameter(torch.zeros(m, 3, **kw))
        self.feat = nn.Parameter(torch.zeros(m, c, **kw))
        self.offset = nn.Parameter(torch.zeros(m, k, 3, **kw))
        self.scaling = nn.Parameter(torch.full((m, 6), math.log(cfg.voxel_size), **kw))
        self.fwd_offset = nn.Parameter(torch.zeros(m, **kw))
        self.fwd_decay = nn.Parameter(torch.ones(m, **kw))
        self.bwd_offset = nn.Parameter(torch.zeros(m, **kw))
        self.bwd_decay = nn.Parameter(torch.ones(m, **kw))
        self.deform = DeformField(m, cfg, device=device)

    @property
    def n_anchors(self) -> int:
        return self.anchor.shape[0]

    def per_anchor(self) -> Dict[str, nn.Parameter]:
        """Every parameter with one row per anchor (what densification resizes)."""
        names = ANCHOR_PARAMS + BLEND_PARAMS
        return {**{n: getattr(self, n) for n in names}, "deform.gate": self.deform.gate}

    def deformed(self, time: float) -> Dict[str, Tensor]:
        return self.deform({n: getattr(self, n) for n in ANCHOR_PARAMS}, time)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


def trainable(module: nn.Module) -> List[nn.Parameter]:
    """A module's parameters without the HexPlane boxes (4DGS never optimises ``aabb``)."""
    return [p for name, p in module.named_parameters() if not name.endswith("aabb")]


def _anchor_count(state: Dict[str, Tensor]) -> int:
    return state["anchor"].shape[0]


# ----------------------------------------------------------------------------------------------------------
# Keyframe storage: CPU memory or one file per keyframe; at most two keyframes on the compute device.


class KeyframeStore:
    """Keyframe states on a storage device and the (at most ``capacity``) keyframes resident on the compute
    device, least recently used evicted first. A resident keyframe is written back on eviction when it may
    have changed (``mark_dirty``)."""

    def __init__(self, cfg: MoRelConfig, device: torch.device, storage: Union[str, os.PathLike, None],
                 capacity: int = 2):
        self.cfg, self.device, self.capacity = cfg, device, capacity
        self.directory = None if storage in (None, "cpu") else os.fspath(storage)
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        self.pin = device.type == "cuda"
        self.stored: Dict[int, Dict[str, Tensor]] = {}  # CPU storage (empty with a directory)
        self.resident: "OrderedDict[int, AnchorSet]" = OrderedDict()
        self.dirty: set = set()
        self.pinned: set = set()  # resident keyframes that must not be evicted (being trained)

    def path(self, n: int) -> str:
        return os.path.join(self.directory, f"keyframe_{n:05d}.pt")

    def put(self, n: int, state: Dict[str, Tensor], *, shared: bool = False) -> None:
        """Stores keyframe n's state (replacing a resident copy). ``shared``: in CPU memory, keep this state
        object itself, which other keyframes may share (it is only ever read: loads copy it, writes replace it)."""
        self.resident.pop(n, None)
        self.dirty.discard(n)
        self._write(n, state, shared)

    def host_copy(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A CPU copy of a state (one copy; pinned when it stays in CPU memory for a CUDA device)."""
        pin = self.pin and self.directory is None
        return {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=pin).copy_(v.detach()) for k, v in state.items()}

    def _write(self, n: int, state: Dict[str, Tensor], shared: bool = False) -> None:
        if shared and self.directory is None:
            self.stored[n] = state
            return
        state = self.host_copy(state)
        if self.directory is not None:
            # A new file, then a rename: tensors memory-mapped from the old file stay valid.
            tmp = self.path(n) + ".tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.path(n))
        else:
            self.stored[n] = state

    def state(self, n: int) -> Dict[str, Tensor]:
        """Keyframe n's state as stored, or the resident copy's if newer (CPU or memory-mapped tensors)."""
        if n in self.resident:
            return {k: v.detach().cpu() for k, v in self.resident[n].state_dict().items()}
        if self.directory is not None:
            return torch.load(self.path(n), map_location="cpu", mmap=True, weights_only=True)
        return self.stored[n]

    def get(self, n: int) -> AnchorSet:
        """Keyframe n on the compute device (loaded, and the least recently used one evicted, if needed)."""
        if n in self.resident:
            self.resident.move_to_end(n)
            return self.resident[n]
        while len(self.resident) >= self.capacity:
            unpinned = [k for k in self.resident if k not in self.pinned]
            if not unpinned:
                raise RuntimeError(f"MoRelScene: keyframe {n} cannot be loaded while keyframes {sorted(self.pinned)} "
                                   f"are held for training and {self.capacity} may be resident; call "
                                   "set_stage(None) first")
            self.evict(unpinned[0])
        state = self.state(n)
        kf = AnchorSet(_anchor_count(state), self.cfg, device="meta")  # no initialisation: the state replaces it
        # copy=True: on a CPU compute device the stored tensors must not become the (trained) parameters.
        kf.load_state_dict({k: v.to(self.device, non_blocking=True, copy=True) for k, v in state.items()},
                           assign=True)
        kf.requires_grad_(False)  # MoRelScene.set_stage chooses what trains
        self.resident[n] = kf
        return kf

    def mark_dirty(self, n: int) -> None:
        self.dirty.add(n)

    def evict(self, n: int) -> None:
        kf = self.resident.pop(n)
        if n in self.dirty:
            self.dirty.discard(n)
            self._write(n, kf.state_dict())

    def evict_all(self) -> None:
        self.pinned.clear()
        for n in list(self.resident):
            self.evict(n)


# ----------------------------------------------------------------------------------------------------------
# The scene.


def _camera_args(viewmats, Ks, device) -> Tuple[Tensor, Tensor]:
    op = "MoRelScene.render"
    check_tensor(op, "viewmats", viewmats, (None, 4, 4), floating=True)
    check_tensor(op, "Ks", Ks, (viewmats.shape[0], 3, 3), floating=True, like=("viewmats", viewmats))
    if viewmats.shape[0] == 0:
        raise ValueError(f"{op}: viewmats must hold at least one camera, got shape {tuple(viewmats.shape)}")
    if viewmats.device != device:
        raise ValueError(f"{op}: viewmats is on {viewmats.device} but the scene is on {device}")
    return viewmats, Ks


def frustum_visible(anchors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, margin: float,
                    near: float = 0.01) -> Tensor:
    """(M,) bool: in front of the camera and projecting inside the image widened by ``margin`` (a fraction of
    its size) on each side. No host sync."""
    cam = anchors @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    zs = z.clamp_min(near)
    u = K[0, 0] * cam[:, 0] / zs + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zs + K[1, 2]
    mu, mv = margin * width, margin * height
    return (z > near) & (u > -mu) & (u < width + mu) & (v > -mv) & (v < height + mv)


class MoRelScene(nn.Module):
    """A long dynamic sequence as MoRel keyframe anchor sets (see the module docstring).

    Args:
        points, colors: ``(P, 3)`` initial point cloud and its colours in [0, 1] (e.g. SfM over the sequence).
        n_frames: T, the sequence length; gop: frames between keyframes.
        voxel_size: Scaffold-GS's anchor voxel size.
        storage: "cpu" (CPU memory, pinned for CUDA) or a directory (one file per keyframe).
        max_resident: keyframes kept on the compute device (MoRel: 2, the least that renders an interval;
            more only trades memory for fewer loads).
        device: the compute device (default: the points' device).
        bounds: the HexPlane box ``(xyz_max, xyz_min)`` (default: the cloud's box padded by 10%).
        Other keyword arguments: :class:`MoRelConfig` fields.
    """

    def __init__(self, points: Tensor, colors: Tensor, n_frames: int, gop: int, *, voxel_size: float,
                 storage: Union[str, os.PathLike, None] = "cpu", device=None, bounds=None, max_resident: int = 2,
                 **config):
        super().__init__()
        op = "MoRelScene"
        check_tensor(op, "points", points, (None, 3), floating=True, finite=True)
        check_tensor(op, "colors", colors, (points.shape[0], 3), floating=True, finite=True)
        check_int(op, "n_frames", n_frames, 1)
        check_int(op, "gop", gop, 1)
        check_int(op, "max_resident", max_resident, 2)
        if points.shape[0] == 0:
            raise ValueError(f"{op}: points must not be empty")
        if not voxel_size > 0:
            raise ValueError(f"{op}: voxel_size must be > 0, got {voxel_size}")
        device = torch.device(device) if device is not None else points.device
        if bounds is None:
            lo, hi = points.amin(0), points.amax(0)
            pad = 0.1 * (hi - lo).clamp_min(voxel_size)
            bounds = ((hi + pad).tolist(), (lo - pad).tolist())
        self.cfg = MoRelConfig(n_frames=n_frames, gop=gop, voxel_size=float(voxel_size),
                               bounds=(tuple(map(float, bounds[0])), tuple(map(float, bounds[1]))), **config)
        cfg = self.cfg
        self.decoder = AnchorDecoder(cfg.feat_dim, cfg.n_offsets, cfg.hidden_dim, device=device)
        with torch.no_grad():  # the color head starts at the cloud's mean colour
            mean = colors.to(device).float().mean(0).clamp(0.02, 0.98)
            self.decoder.mlp_color[2].bias.copy_(torch.logit(mean).repeat(cfg.n_offsets))
        centres, _ = voxelize(points.to(device).float(), cfg.voxel_size)
        self.gca = AnchorSet(centres.shape[0], cfg, device=device)
        with torch.no_grad():
            self.gca.anchor.copy_(centres)
        self.store = KeyframeStore(cfg, device, storage, max_resident)
        # Every keyframe starts as the initial GCA (the KfA stage re-clones it): one stored copy, shared.
        initial = self.store.host_copy(self.gca.state_dict())
        for n in range(cfg.n_keyframes):
            self.store.put(n, initial, shared=True)
        self.stage, self.stage_keyframe = None, None

    # -- frames and keyframes --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.gca.anchor.device

    @property
    def n_keyframes(self) -> int:
        return self.cfg.n_keyframes

    def keyframe_time(self, n: int) -> int:
        return n * self.cfg.gop

    def _check_frame(self, op: str, t) -> float:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"{op}: t must be an int or float frame index, got {type(t).__name__}")
        if not 0 <= t <= self.cfg.n_frames - 1:
            raise ValueError(f"{op}: t={t} is out of range [0, {self.cfg.n_frames - 1}]")
        return float(t)

    def _check_keyframe(self, op: str, n) -> int:
        return check_int(op, "keyframe", n, 0, self.n_keyframes - 1)

    def keyframe(self, n: int) -> AnchorSet:
        """Keyframe n on the compute device (loads it; at most two are resident)."""
        return self.store.get(self._check_keyframe("MoRelScene.keyframe", n))

    def resident_keyframes(self) -> List[int]:
        return sorted(self.store.resident)

    def resident_bytes(self) -> int:
        """Bytes the resident keyframes hold on the compute device (parameters and buffers)."""
        return sum(kf.nbytes() for kf in self.store.resident.values())

    def global_time(self, t: float) -> float:
        """The GCA field's time of frame t: the sequence mapped to [-1, 1]."""
        return 2.0 * t / max(self.cfg.n_frames - 1, 1) - 1.0

    def frame_sets(self, t) -> List[Tuple[int, float, Optional[str]]]:
        """(keyframe, its relative time, blend mode or None) of the sets frame t renders."""
        t = self._check_frame("MoRelScene.frame_sets", t)
        n = min(int(t // self.cfg.gop), self.n_keyframes - 1)
        tau = (t - self.keyframe_time(n)) / self.cfg.gop
        if tau == 0.0:
            return [(n, 0.0, None)]
        return [(n, tau, "forward"), (n + 1, tau - 1.0, "backward")]

    # -- stages ----------------------------------------------------------------------------------------

    def set_stage(self, stage: Optional[str], keyframe: Optional[int] = None, *,
                  clone: bool = True) -> List[nn.Parameter]:
        """Chooses what trains and returns those parameters (for the optimizer):

        - "gca": the GCA (anchors, deformation field) and the decoder MLPs (render with :meth:`render_gca`);
        - "kfa": keyframe n's anchors, first cloned from the GCA deformed to t_n (``clone=False`` keeps them);
        - "pwd": keyframe n's anchors and deformation field (both render with :meth:`render_keyframe`);
        - "ifb": keyframe n's forward and keyframe n+1's backward blend offsets and decays (interval n,
          rendered by :meth:`render`);
        - None: nothing (the state after construction).
        Everything else gets ``requires_grad=False``; the stage's keyframes stay resident until the next call.
        """
        op = "MoRelScene.set_stage"
        if stage is not None:
            check_choice(op, "stage", stage, STAGES)
        if stage in (None, "gca"):
            if keyframe is not None:
                raise ValueError(f"{op}: the {stage} stage takes no keyframe, got {keyframe}")
        else:
            if keyframe is None:
                raise ValueError(f"{op}: the {stage} stage needs a keyframe")
            self._check_keyframe(op, keyframe)
            if stage == "ifb" and keyframe + 1 >= self.n_keyframes:
                raise ValueError(f"{op}: ifb trains interval (keyframe, keyframe + 1); keyframe={keyframe} is the last")
        self.stage, self.stage_keyframe = stage, keyframe
        self.store.pinned.clear()
        for p in trainable(self):
            p.requires_grad_(stage == "gca")
        for kf in self.store.resident.values():
            kf.requires_grad_(False)
        if stage in (None, "gca"):
            return trainable(self) if stage == "gca" else []
        if stage == "kfa" and clone:
            self.clone_keyframe(keyframe)
        held = [keyframe, keyframe + 1] if stage == "ifb" else [keyframe]
        for n in held:
            self.keyframe(n)
            self.store.mark_dirty(n)
        self.store.pinned.update(held)  # training holds references to their parameters: never evicted meanwhile
        kf = self.keyframe(keyframe)
        if stage == "kfa":
            params = [getattr(kf, n) for n in ANCHOR_PARAMS]
        elif stage == "pwd":
            params = [getattr(kf, n) for n in ANCHOR_PARAMS] + trainable(kf.deform)
        else:
            nxt = self.keyframe(keyframe + 1)
            params = [kf.fwd_offset, kf.fwd_decay, nxt.bwd_offset, nxt.bwd_decay]
        for p in params:
            p.requires_grad_(True)
        return params

    @torch.no_grad()
    def clone_keyframe(self, n: int) -> None:
        """Keyframe n := the GCA deformed to t_n, with a fresh deformation field and blend parameters."""
        n = self._check_keyframe("MoRelScene.clone_keyframe", n)
        deformed = self.gca.deformed(self.global_time(min(self.keyframe_time(n), self.cfg.n_frames - 1)))
        fresh = AnchorSet(self.gca.n_anchors, self.cfg, device=self.device)
        for name in ANCHOR_PARAMS:
            getattr(fresh, name).copy_(deformed[name])
        self.store.put(n, fresh.state_dict())

    # -- rendering -------------------------------------------------------------------------------------

    def deform(self, source: AnchorSet, time: float) -> Dict[str, Tensor]:
        """A set's anchor tensors at its field's ``time``."""
        return source.deformed(time)

    def decode(self, anchors: Dict[str, Tensor], source: AnchorSet, cam_center: Tensor, visible: Tensor,
               time: float, mode: Optional[str]) -> Tuple[Tuple[Tensor, ...], DecodedGaussians]:
        """One set's neural Gaussians for one camera: the rasterizer's (means, quats, scales, opacities, colors),
        flattened to M*K rows, and the dense :class:`DecodedGaussians` (densification statistics)."""
        blend = {} if mode is None else {
            "blend_offset": source.fwd_offset if mode == "forward" else source.bwd_offset,
            "blend_decay": source.fwd_decay if mode == "forward" else source.bwd_decay,
            "tau": time, "lambda_decay": self.cfg.lambda_decay, "blend_mode": mode}
        out = anchor_decode(anchors["anchor"], anchors["feat"], anchors["offset"], anchors["scaling"].exp(),
                            cam_center, self.decoder.mlp(), visible=visible, **blend)
        flat = tuple(t.flatten(0, 1) for t in (out.means, out.quats, out.scales, out.opacities, out.colors))
        return flat, out

    def view_gaussians(self, deformed, viewmat: Tensor, K: Tensor, cam_center: Tensor, width: int, height: int):
        """The Gaussians deformed sets (from :meth:`deform`: (set, its anchors, time, mode)) give one camera:
        ((means, quats, scales, opacities, colors) flattened and concatenated over the sets, and per set its
        visible mask and :class:`DecodedGaussians`)."""
        parts, decoded = [], []
        for src, anchors, time, mode in deformed:
            visible = frustum_visible(anchors["anchor"], viewmat, K, width, height, self.cfg.frustum_margin)
            flat, out = self.decode(anchors, src, cam_center, visible, time, mode)
            decoded.append((visible, out))
            parts.append(flat)
        return [torch.cat(column) if len(parts) > 1 else column[0] for column in zip(*parts)], decoded

    def render_sets(self, sets: Sequence[Tuple[AnchorSet, float, Optional[str]]], viewmats: Tensor, Ks: Tensor,
                    width: int, height: int, **rasterize_kwargs) -> Tuple[Tensor, Tensor, Dict]:
        """Renders anchor sets (each with its field time and blend mode) together, camera by camera (the decode
        is view dependent): ``(image (C, H, W, 3), alpha (C, H, W, 1), meta)``. meta["views"] holds, per
        camera, the rasterizer's meta plus "decoded" (per set: its visible mask and DecodedGaussians);
        meta["deformed"] per set its deformed anchor tensors."""
        viewmats, Ks = _camera_args(viewmats, Ks, self.device)
        deformed = [(src, self.deform(src, time), time, mode) for src, time, mode in sets]
        cam_centers = torch.linalg.inv(viewmats)[:, :3, 3]
        images, alphas, views = [], [], []
        backgrounds = rasterize_kwargs.pop("backgrounds", None)  # (C, D): one row per camera's call
        for c in range(viewmats.shape[0]):
            gaussians, decoded = self.view_gaussians(deformed, viewmats[c], Ks[c], cam_centers[c], width, height)
            bg = None if backgrounds is None else backgrounds[c:c + 1]
            image, alpha, meta = rasterize_gaussians(*gaussians, viewmats[c:c + 1], Ks[c:c + 1], width, height,
                                                     backgrounds=bg, **rasterize_kwargs)
            if meta["means2d"].requires_grad:
                meta["means2d"].retain_grad()  # densification statistics
            meta["decoded"] = decoded
            images.append(image)
            alphas.append(alpha)
            views.append(meta)
        return torch.cat(images), torch.cat(alphas), {"views": views, "deformed": [d[1] for d in deformed]}

    def _relay_sources(self, t: float):
        sets = self.frame_sets(t)
        return sets, [(self.store.get(n), time, mode) for n, time, mode in sets]

    def render(self, t, viewmats: Tensor, Ks: Tensor, width: int, height: int,
               **rasterize_kwargs) -> Tuple[Tensor, Tensor, Dict]:
        """Frame t (0 <= t <= T-1) seen by C cameras through the keyframe relay: keyframe n alone at its own
        frame, else keyframes n and n+1 blended (both made resident). Returns ``(image (C, H, W, 3), alpha
        (C, H, W, 1), meta)``; meta["sets"] lists (keyframe, relative time, blend mode), meta["views"] per camera
        the rasterizer's meta and the decoded sets. Keyword arguments go to `pyops.rasterize_gaussians`."""
        sets, sources = self._relay_sources(self._check_frame("MoRelScene.render", t))
        image, alpha, meta = self.render_sets(sources, viewmats, Ks, width, height, **rasterize_kwargs)
        meta["sets"] = sets
        return image, alpha, meta

    def render_keyframe(self, n: int, t, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                        **rasterize_kwargs) -> Tuple[Tensor, Tensor, Dict]:
        """Keyframe n alone, deformed to frame t (within its field's window: |t - t_n| <= gop), no blending:
        what the KfA and PWD stages train."""
        op = "MoRelScene.render_keyframe"
        n, t = self._check_keyframe(op, n), self._check_frame(op, t)
        tau = (t - self.keyframe_time(n)) / self.cfg.gop
        if abs(tau) > 1.0:
            raise ValueError(f"{op}: t={t} is outside keyframe {n}'s window [{self.keyframe_time(n) - self.cfg.gop}, "
                             f"{self.keyframe_time(n) + self.cfg.gop}]")
        image, alpha, meta = self.render_sets([(self.store.get(n), tau, None)], viewmats, Ks, width, height,
                                              **rasterize_kwargs)
        meta["sets"] = [(n, tau, None)]
        return image, alpha, meta

    def render_gca(self, t, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                   **rasterize_kwargs) -> Tuple[Tensor, Tensor, Dict]:
        """The global canonical anchors deformed to frame t (the GCA stage's render); meta["sets"] is
        [(-1, global time, None)]."""
        time = self.global_time(self._check_frame("MoRelScene.render_gca", t))
        image, alpha, meta = self.render_sets([(self.gca, time, None)], viewmats, Ks, width, height,
                                              **rasterize_kwargs)
        meta["sets"] = [(-1, time, None)]
        return image, alpha, meta

    def frame_gaussians(self, t, viewmat: Tensor, K: Tensor, width: int, height: int) -> List[Tensor]:
        """What :meth:`render` rasterizes for frame t and one camera (``viewmat (4, 4)``, ``K (3, 3)``): the
        deformed and decoded sets' ``[means (N, 3), quats (N, 4), scales (N, 3), opacities (N,), colors (N, 3)]``
        (dropped Gaussians have opacity 0)."""
        viewmats, Ks = _camera_args(viewmat[None], K[None], self.device)
        _, sources = self._relay_sources(self._check_frame("MoRelScene.frame_gaussians", t))
        deformed = [(src, self.deform(src, time), time, mode) for src, time, mode in sources]
        cam_center = torch.linalg.inv(viewmats[0])[:3, 3]
        return self.view_gaussians(deformed, viewmats[0], Ks[0], cam_center, width, height)[0]

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self, *args, **kwargs) -> Dict:  # noqa: D102  (the whole sequence, CPU tensors)
        sd = OrderedDict()
        for k, v in self.decoder.state_dict().items():
            sd[f"decoder.{k}"] = v.detach().cpu()
        for k, v in self.gca.state_dict().items():
            sd[f"gca.{k}"] = v.detach().cpu()
        for n in range(self.n_keyframes):
            for k, v in self.store.state(n).items():
                sd[f"keyframes.{n}.{k}"] = v.clone()
        sd["config"] = asdict(self.cfg)
        return sd

    def load_state_dict(self, state_dict: Dict, strict: bool = True, assign: bool = False):  # noqa: D102
        cfg = state_dict.get("config")
        if cfg is not None and {k: v for k, v in cfg.items()} != asdict(self.cfg):
            raise ValueError(f"MoRelScene.load_state_dict: config {cfg} differs from this scene's {asdict(self.cfg)}")
        self.decoder.load_state_dict({k[8:]: v for k, v in state_dict.items() if k.startswith("decoder.")})
        gca = {k[4:]: v for k, v in state_dict.items() if k.startswith("gca.")}
        self.gca = AnchorSet(_anchor_count(gca), self.cfg, device=self.device)
        self.gca.load_state_dict({k: v.to(self.device) for k, v in gca.items()})
        self.store.resident.clear()
        self.store.dirty.clear()
        for n in range(self.n_keyframes):
            prefix = f"keyframes.{n}."
            state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not state:
                raise KeyError(f"MoRelScene.load_state_dict: no tensors for keyframe {n}")
            self.store.put(n, state)
        self.set_stage(None)

    def save_keyframe(self, n: int, path: Union[str, os.PathLike]) -> None:
        """Saves keyframe n alone (its anchors, field and blend parameters)."""
        torch.save(dict(self.store.state(self._check_keyframe("MoRelScene.save_keyframe", n))), path)

    def load_keyframe(self, n: int, path: Union[str, os.PathLike]) -> None:
        """Replaces keyframe n by a file from :meth:`save_keyframe`."""
        n = self._check_keyframe("MoRelScene.load_keyframe", n)
        state = torch.load(path, map_location="cpu", weights_only=True)
        AnchorSet(_anchor_count(state), self.cfg).load_state_dict(state)  # validates the keys and shapes
        self.store.put(n, state)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"frames={c.n_frames}, gop={c.gop}, keyframes={c.n_keyframes}, anchors={self.gca.n_anchors}, "
                f"K={c.n_offsets}, C={c.feat_dim}, storage={self.store.directory or 'cpu'}")
