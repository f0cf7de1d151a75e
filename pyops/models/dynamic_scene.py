"""A synthetic long dynamic scene: ground truth for long-range 4D reconstruction (MoRel) tests and benchmarks.

Rigid objects made of small Gaussians move in front of a static backdrop (a textured ground and a curved back
wall, also Gaussians) and are seen by cameras on an arc; ground-truth frames are rendered on demand with
`pyops.rasterize_gaussians`, so a 3,600-frame sequence costs nothing until a frame is asked for. Nothing is
downloaded: everything comes from one seed.

Motion. Each object's centre is a sum of sinusoids per axis with incommensurate frequencies (irrational base
ratios times random factors: a quasi-periodic wiggle that never repeats exactly) around a base point that
orbits the scene centre on a ring, half a turn over the whole sequence (so frames far apart show the objects
in different places: each object's centre at two frames more than n_frames / 2 apart differs by a good
fraction of the ring); each object also spins about its own axis at a constant rate with a sinusoidal wobble.
Speed is set per frame, not per sequence: the sinusoids' frequencies are scaled so that each centre's RMS
wiggle speed is ``speed`` world units per frame whatever ``n_frames`` is (a 3,600-frame scene moves as fast
per frame as a 600-frame one and simply goes on for longer; with one seed the two share their objects and
wiggles). Only the orbit, a small part of the motion, slows down as n_frames grows (pi * 0.65 / n_frames
units per frame, capped at half of ``speed`` on short sequences). The default speed is about 0.36 px per
frame at 64 px width (0.56% of the image width; the pixel speed scales with the resolution you render at).

Events. With two objects or more the last one appears at ``n_frames // 3`` and the one before it disappears at
``2 * n_frames // 3``, each over a short linear opacity ramp (`DynamicScene.visibility` says exactly when).
Gaussians never enter or leave the list: an absent object has opacity 0, which the rasterizer culls.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._checks import check_int
from ..reference.gaussians import quat_to_rotmat
from .gaussian_scene import look_at, pinhole

Times = Union[int, float, Sequence[float], Tensor]
Cameras = Union[None, int, Sequence[int], Tensor]

# Geometry of the default set (world units, z up). The objects move inside a ball of radius ~1.1 around
# SCENE_CENTER, which every camera sees whole (CAMERA_DISTANCE away, FOV_X_DEG wide).
SCENE_CENTER = (0.0, 0.0, 0.3)
CAMERA_DISTANCE, CAMERA_HEIGHT, FOV_X_DEG = 4.0, 0.9, 50.0
GROUND_Z, WALL_RADIUS, WALL_TOP = -0.8, 6.5, 5.0
GROUND_SPACING, WALL_SPACING, THIN = 0.2, 0.25, 0.02
OBJECT_RADIUS = (0.3, 0.45)  # object sizes are drawn in this range
WIGGLE = (0.35, 0.35, 0.2)  # per-axis amplitude budget of the sinusoids
RING, ORBIT = 0.65, math.pi  # objects circle on a ring of this radius, ORBIT radians over the whole sequence
FREQUENCY_RATIOS = (1.0, (1 + 5 ** 0.5) / 2, 2 ** 0.5 + 1.0)  # irrational ratios between an axis' sinusoids
SPIN = 0.5  # spin rate x object radius, in units of `speed` (the surface moves about half as fast as the centre)
PALETTE = ((0.9, 0.15, 0.1), (0.1, 0.75, 0.2), (0.15, 0.3, 0.95), (0.95, 0.85, 0.1), (0.85, 0.2, 0.8),
           (0.1, 0.8, 0.85), (1.0, 0.5, 0.05), (0.95, 0.95, 0.95))
BACKGROUND = (0.78, 0.84, 0.9)  # a pale sky above the wall


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions ``(..., 4)`` (broadcast): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


@dataclass(eq=False)
class DynamicScene:
    """A dynamic Gaussian scene with its cameras; made by `synthetic_dynamic_scene`.

    Attributes:
        n_frames, width, height: the sequence length (frames ``0 .. n_frames - 1``) and the image size.
        viewmats: ``(C, 4, 4)`` world-to-camera, OpenCV axes (`look_at`); Ks: ``(C, 3, 3)`` (`pinhole`).
        points, colors: ``(P, 3)`` an initial point cloud of the whole sequence and its RGB in [0, 1], as SfM
            (COLMAP) would give a MoRel / Scaffold-GS model: samples of the objects at several times and of
            the backdrop, with noise.
        background: ``(3,)`` the colour behind everything.
        object_ids: ``(N,)`` long: the object of each Gaussian of `gaussians`, -1 for the backdrop.
        appearing_object, disappearing_object: object indices, or None (a single object neither appears nor
            disappears); appear_frame, disappear_frame, ramp_frames: see `visibility`.
        objects: the objects' Gaussians in their own frames, ``(K, G, ...)``: means, quats, scales, opacities,
            colors. backdrop: the static Gaussians, ``(B, ...)``, same keys. motion: the trajectory parameters.
    """

    n_frames: int
    width: int
    height: int
    viewmats: Tensor
    Ks: Tensor
    points: Tensor
    colors: Tensor
    background: Tensor
    object_ids: Tensor
    appearing_object: Optional[int]
    disappearing_object: Optional[int]
    appear_frame: int
    disappear_frame: int
    ramp_frames: int
    objects: Dict[str, Tensor] = field(repr=False)
    backdrop: Dict[str, Tensor] = field(repr=False)
    motion: Dict[str, Tensor] = field(repr=False)

    def __repr__(self) -> str:
        return (f"DynamicScene(n_frames={self.n_frames}, width={self.width}, height={self.height}, "
                f"n_cameras={self.n_cameras}, n_objects={self.n_objects}, n_gaussians={self.n_gaussians}, "
                f"n_points={self.points.shape[0]}, appear_frame={self.appear_frame}, "
                f"disappear_frame={self.disappear_frame}, dtype={self.background.dtype}, "
                f"device={self.background.device})")

    @property
    def n_cameras(self) -> int:
        return self.viewmats.shape[0]

    @property
    def n_objects(self) -> int:
        return self.objects["means"].shape[0]

    @property
    def n_gaussians(self) -> int:
        return self.object_ids.shape[0]

    # -- time-dependent state; ``t`` a number gives (K, ...), a sequence or 1-D tensor of T times (T, K, ...) --

    def centers(self, t: Times) -> Tensor:
        """Object centres ``(K, 3)`` / ``(T, K, 3)`` at (possibly fractional) frame times."""
        ts, scalar = self._times("centers", t)
        out = self._centers(ts)
        return out[0] if scalar else out

    def orientations(self, t: Times) -> Tensor:
        """Object orientations, unit wxyz quaternions ``(K, 4)`` / ``(T, K, 4)`` (object to world)."""
        ts, scalar = self._times("orientations", t)
        out = self._orientations(ts)
        return out[0] if scalar else out

    def visibility(self, t: Times) -> Tensor:
        """Object opacity multipliers in [0, 1], ``(K,)`` / ``(T, K)``. The appearing object is absent (0)
        before ``appear_frame`` and fades in linearly to 1 at ``appear_frame + ramp_frames - 1``; the
        disappearing one is at 1 until ``disappear_frame - ramp_frames`` and absent from ``disappear_frame``
        on. Every other object is always 1."""
        ts, scalar = self._times("visibility", t)
        out = self._visibility(ts)
        return out[0] if scalar else out

    def gaussians(self, t: Union[int, float]) -> Dict[str, Tensor]:
        """The scene's Gaussians at frame time t (an int frame or a fractional time in [0, n_frames - 1]):
        `pyops.rasterize_gaussians` inputs ``means (N, 3), quats (N, 4), scales (N, 3), opacities (N,),
        colors (N, 3)``; objects first (``object_ids``), then the backdrop. O(N) tensor ops, no host sync."""
        return self._gaussians("gaussians", t)

    def render(self, t: Union[int, float], cameras: Cameras = None, *, render_mode: str = "RGB",
               backend: Optional[str] = None) -> Tensor:
        """Ground truth ``(C, H, W, 3)`` of frame t in all cameras or the selected ones (an index, a sequence
        or 1-D tensor of indices): one `pyops.rasterize_gaussians` call. ``render_mode`` ("RGB+ED" appends
        the expected depth, as gsplat) and ``backend`` are passed on."""
        from .. import rasterize_gaussians  # the package imports the models

        viewmats, Ks = self._cameras("render", cameras)
        g = self._gaussians("render", t)
        image, _, _ = rasterize_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats,
                                          Ks, self.width, self.height, render_mode=render_mode,
                                          backgrounds=self.background.expand(viewmats.shape[0], 3), backend=backend)
        return image

    def frames(self, ts: Times, cameras: Cameras = None, *, render_mode: str = "RGB",
               backend: Optional[str] = None) -> Tensor:
        """Ground truth ``(T, C, H, W, 3)`` of frames ``ts`` (a sequence or 1-D tensor), one render each."""
        times, _ = self._times("frames", ts)
        if times.shape[0] == 0:
            raise ValueError("DynamicScene.frames: ts must hold at least one frame")
        self._cameras("frames", cameras)  # fail before rendering anything
        return torch.stack([self.render(t, cameras, render_mode=render_mode, backend=backend)
                            for t in times.double().tolist()])

    def _centers(self, ts: Tensor) -> Tensor:  # [T] -> [T, K, 3]
        m = self.motion
        angle = m["ring_angles"] + m["orbit"] * ts[:, None] / max(self.n_frames - 1, 1)  # [T, K]
        ring = torch.stack([RING * angle.cos(), RING * angle.sin(), torch.zeros_like(angle)], -1)
        phases = m["omegas"] * ts[:, None, None, None] + m["phases"]  # [T, K, 3, J]
        return m["bases"] + ring + (m["amplitudes"] * phases.sin()).sum(-1)

    def _orientations(self, ts: Tensor) -> Tensor:  # [T] -> [T, K, 4]
        m = self.motion
        angle = m["spin_rates"] * ts[:, None] + m["wobble_amplitudes"] * (m["wobble_rates"] * ts[:, None]
                                                                          + m["wobble_phases"]).sin()  # [T, K]
        half = 0.5 * angle[..., None]
        spin = torch.cat([half.cos(), half.sin() * m["spin_axes"]], -1)  # [T, K, 4]
        return quat_multiply(spin, m["initial_quats"])

    def _visibility(self, ts: Tensor) -> Tensor:  # [T] -> [T, K]
        out = torch.ones(ts.shape[0], self.n_objects, dtype=ts.dtype, device=ts.device)
        ramp = self.ramp_frames
        if self.appearing_object is not None:
            out[:, self.appearing_object] = ((ts - self.appear_frame + 1) / ramp).clamp(0, 1)
        if self.disappearing_object is not None:
            out[:, self.disappearing_object] = ((self.disappear_frame - ts) / ramp).clamp(0, 1)
        return out

    def _gaussians(self, fn: str, t: Union[int, float]) -> Dict[str, Tensor]:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"DynamicScene.{fn}: t must be an int or float frame time, got {type(t).__name__}")
        ts, _ = self._times(fn, t)
        center, quat, vis = self._centers(ts)[0], self._orientations(ts)[0], self._visibility(ts)[0]  # [K, ...]
        o, b = self.objects, self.backdrop
        means = center[:, None, :] + o["means"] @ quat_to_rotmat(quat).transpose(-1, -2)  # [K, G, 3]
        out = {"means": means, "quats": quat_multiply(quat[:, None, :], o["quats"]), "scales": o["scales"],
               "opacities": o["opacities"] * vis[:, None], "colors": o["colors"]}
        return {name: torch.cat([v.flatten(0, 1), b[name]]) for name, v in out.items()}

    # -- argument checks --

    def _times(self, fn: str, t: Times) -> Tuple[Tensor, bool]:
        """``(times (T,) in the scene's dtype and device, whether t was a single number)``; range-checked."""
        like = {"dtype": self.background.dtype, "device": self.background.device}
        name = f"DynamicScene.{fn}"
        if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
            raise TypeError(f"{name}: t must be a frame time (int or float), got a bool")
        if isinstance(t, (int, float)):
            if not 0 <= t <= self.n_frames - 1:  # also rejects NaN
                raise ValueError(f"{name}: t={t} is out of range [0, {self.n_frames - 1}]")
            return torch.tensor([float(t)], **like), True
        if not isinstance(t, Tensor):
            try:
                t = torch.as_tensor(t, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"{name}: t must be a number, a sequence of numbers or a tensor, "
                                f"got {type(t).__name__}") from None
        if t.dim() > 1 or t.is_complex():
            raise ValueError(f"{name}: t must be a number or 1-D, got shape {tuple(t.shape)}")
        scalar = t.dim() == 0
        t = t.reshape(-1)
        if t.numel():
            lo, hi = torch.aminmax(t.double())
            if not (0 <= lo.item() and hi.item() <= self.n_frames - 1):  # a host sync; also rejects NaN
                raise ValueError(f"{name}: t must lie in [0, {self.n_frames - 1}], got values in "
                                 f"[{lo.item():g}, {hi.item():g}]")
        return t.to(**like), scalar

    def _cameras(self, fn: str, cameras: Cameras) -> Tuple[Tensor, Tensor]:
        """The selected ``(viewmats, Ks)``."""
        if cameras is None:
            return self.viewmats, self.Ks
        name = f"DynamicScene.{fn}"
        if isinstance(cameras, Tensor):
            if cameras.dtype == torch.bool or cameras.is_floating_point() or cameras.is_complex():
                raise TypeError(f"{name}: cameras must hold integer indices, got {cameras.dtype}")
            index = cameras.reshape(-1).tolist()
        elif isinstance(cameras, (int, list, tuple, range)):
            index = [cameras] if isinstance(cameras, int) else list(cameras)
        else:
            index = [cameras]  # rejected below
        if any(isinstance(i, bool) or not isinstance(i, int) for i in index):
            raise TypeError(f"{name}: cameras must be None, an int or a sequence of ints, got {cameras!r}")
        if not index or any(not 0 <= i < self.n_cameras for i in index):
            raise ValueError(f"{name}: cameras must be non-empty indices in [0, {self.n_cameras - 1}], got {index}")
        index = torch.tensor(index, device=self.viewmats.device)
        return self.viewmats[index], self.Ks[index]


def synthetic_dynamic_scene(n_frames: int, *, width: int = 64, height: int = 64, n_cameras: int = 2,
                            n_objects: int = 4, gaussians_per_object: int = 200, n_points: int = 4000,
                            speed: float = 0.03, camera_arc_deg: float = 60.0, ramp_frames: Optional[int] = None,
                            seed: int = 0, device=None, dtype=torch.float32) -> DynamicScene:
    """A `DynamicScene` of ``n_objects`` moving objects (ellipsoids, boxes and tori of ``gaussians_per_object``
    Gaussians, two or three colour bands each) in front of a ground and a back wall, seen by ``n_cameras``
    looking at the scene centre from an arc of ``camera_arc_deg`` degrees (360: a full ring), 4 units away,
    50 degrees wide. The backdrop keeps only the Gaussians these cameras see (a few thousand).

    Args:
        speed: RMS speed of each object's centre, world units per frame (the objects move within ~1.8 units;
            the default is ~0.35 px per frame at 64 px width), independent of ``n_frames``.
        ramp_frames: length of the appear / disappear opacity ramps; default ``clamp(n_frames // 20, 1, 8)``.
        n_points: size of the initial point cloud (half objects at 8 times across the sequence, half
            backdrop).
        seed: everything is drawn from ``torch.Generator().manual_seed(seed)`` (on the CPU, in float64) and
            then moved to ``device`` / ``dtype``: the same seed gives the same scene on every device.
    """
    fn = "synthetic_dynamic_scene"
    check_int(fn, "n_frames", n_frames, 1)
    check_int(fn, "width", width, 1)
    check_int(fn, "height", height, 1)
    check_int(fn, "n_cameras", n_cameras, 1)
    check_int(fn, "n_objects", n_objects, 1)
    check_int(fn, "gaussians_per_object", gaussians_per_object, 1)
    check_int(fn, "n_points", n_points, 1)
    check_int(fn, "seed", seed)
    ramp = min(max(n_frames // 20, 1), 8) if ramp_frames is None else check_int(fn, "ramp_frames", ramp_frames, 1)
    for name, v, lo, hi in (("speed", speed, 0.0, math.inf), ("camera_arc_deg", camera_arc_deg, 0.0, 360.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{fn}: {name} must be a number, got {type(v).__name__}")
        if not (lo < v <= hi and math.isfinite(v)):
            raise ValueError(f"{fn}: {name}={v} must be in ({lo}, {hi}]")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{fn}: dtype must be a floating-point torch.dtype, got {dtype}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    # Cameras on an arc around -y (a full ring spaces them evenly), all looking at the scene centre.
    if camera_arc_deg >= 360.0:
        angles = torch.arange(n_cameras, dtype=f64) * (2 * math.pi / n_cameras)
    else:
        angles = torch.linspace(-0.5, 0.5, n_cameras, dtype=f64) * math.radians(camera_arc_deg) * (n_cameras > 1)
    center = torch.tensor(SCENE_CENTER, dtype=f64)
    eyes = center + torch.stack([CAMERA_DISTANCE * angles.sin(), -CAMERA_DISTANCE * angles.cos(),
                                 torch.full_like(angles, CAMERA_HEIGHT)], -1)
    viewmats = look_at(eyes, center)
    Ks = pinhole(width, height, FOV_X_DEG, n_cameras, dtype=f64)

    objects, shape_radii = _objects(n_objects, gaussians_per_object, g)
    motion = _motion(n_objects, n_frames, speed, shape_radii, g)
    backdrop = _backdrop(viewmats, Ks, width, height, g)
    events = n_objects >= 2
    scene = DynamicScene(
        n_frames=n_frames, width=width, height=height, viewmats=viewmats, Ks=Ks, points=torch.empty(0, 3, dtype=f64),
        colors=torch.empty(0, 3, dtype=f64), background=torch.tensor(BACKGROUND, dtype=f64),
        object_ids=torch.cat([torch.arange(n_objects).repeat_interleave(gaussians_per_object),
                              torch.full((backdrop["means"].shape[0],), -1)]),
        appearing_object=n_objects - 1 if events else None, disappearing_object=n_objects - 2 if events else None,
        appear_frame=n_frames // 3, disappear_frame=2 * n_frames // 3, ramp_frames=ramp,
        objects=objects, backdrop=backdrop, motion=motion)
    scene.points, scene.colors = _point_cloud(scene, n_points, g)  # samples the float64 scene's motion

    def move(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)

    for name in ("viewmats", "Ks", "points", "colors", "background", "object_ids"):
        setattr(scene, name, move(getattr(scene, name)))
    for group in (scene.objects, scene.backdrop, scene.motion):
        group.update({k: move(v) for k, v in group.items()})
    return scene


def _rand(g: torch.Generator, *shape) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _randn(g: torch.Generator, *shape) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _objects(k: int, n: int, g: torch.Generator) -> Tuple[Dict[str, Tensor], Tensor]:
    """K objects of n Gaussians in their own frames (centred at the origin): ``(K, n, ...)`` tensors, and
    each object's radius ``(K,)``. A Python loop over objects only (construction time)."""
    # Sizes shrink past 4 objects so that the crowd keeps about the same screen coverage.
    radii = (OBJECT_RADIUS[0] + (OBJECT_RADIUS[1] - OBJECT_RADIUS[0]) * _rand(g, k)) * min(1.0, (4 / k) ** 0.5)
    palette = torch.tensor(PALETTE, dtype=torch.float64)
    means, colors = [], []
    for i in range(k):
        r = radii[i]
        u, v = _rand(g, n), _rand(g, n)
        kind = i % 3
        if kind == 0:  # an ellipsoid shell with some thickness
            axes = r * torch.cat([torch.ones(1, dtype=torch.float64), 0.55 + 0.45 * _rand(g, 2)])
            dirs = torch.nn.functional.normalize(_randn(g, n, 3), dim=-1)
            p = dirs * axes * (0.85 + 0.15 * u[:, None])
        elif kind == 1:  # the surface of a box: a face drawn by area, then a point on it
            half = r * torch.cat([torch.ones(1, dtype=torch.float64), 0.5 + 0.4 * _rand(g, 2)]) / 3 ** 0.25
            areas = torch.stack([half[1] * half[2], half[0] * half[2], half[0] * half[1]]).repeat(2)
            face = torch.multinomial(areas, n, replacement=True, generator=g)
            p = (2 * _rand(g, n, 3) - 1) * half
            axis = face % 3
            sign = torch.where(face < 3, 1.0, -1.0).to(torch.float64)
            p = p.scatter(1, axis[:, None], (sign * half[axis])[:, None])
        else:  # a torus around the local z axis
            major, minor = 0.72 * r, 0.28 * r
            a, b = 2 * math.pi * u, 2 * math.pi * v
            p = torch.stack([(major + minor * b.cos()) * a.cos(), (major + minor * b.cos()) * a.sin(),
                             minor * b.sin()], -1)
        # Colour bands along a random local direction, so that the rotation shows.
        n_colors = 2 + int(_rand(g, 1) < 0.5)
        chosen = palette[torch.randperm(len(PALETTE), generator=g)[:n_colors]]
        along = p @ torch.nn.functional.normalize(_randn(g, 3), dim=0) / r  # in [-1, 1]
        band = ((along + 1) * n_colors).floor().long() % n_colors
        means.append(p)
        colors.append((chosen[band] + 0.03 * _randn(g, n, 3)).clamp(0, 1))
    means = torch.stack(means)  # [K, n, 3]
    # Sizes from the spacing of n points on the object's surface (~4 pi r^2), so that they overlap.
    spacing = (4 * math.pi * radii ** 2 / n).sqrt()[:, None, None]
    return {"means": means, "quats": torch.nn.functional.normalize(_randn(g, k, n, 4), dim=-1),
            "scales": 0.6 * spacing * torch.exp(0.25 * _randn(g, k, n, 3)),
            "opacities": 0.85 + 0.15 * _rand(g, k, n), "colors": torch.stack(colors)}, radii


def _motion(k: int, n_frames: int, speed: float, radii: Tensor, g: torch.Generator) -> Dict[str, Tensor]:
    """Trajectory parameters: per object and axis J = 3 sinusoids (amplitudes, angular frequencies per frame,
    phases), a base point and a start angle on the ring, the orbit over the whole sequence, and the spin."""
    weights = 0.5 + _rand(g, k, 3, 3)
    amplitudes = torch.tensor(WIGGLE, dtype=torch.float64)[:, None] * weights / weights.sum(-1, keepdim=True)
    ratios = torch.tensor(FREQUENCY_RATIOS, dtype=torch.float64)
    omegas = ratios * torch.exp(0.3 * _randn(g, k, 3, 3))  # relative only: rescaled to the speed below
    # sum_j a_j sin(w_j t + p_j) has mean squared velocity sum_j (a_j w_j)^2 / 2 (incommensurate w_j).
    rms = ((amplitudes * omegas) ** 2 / 2).sum((-1, -2)).sqrt()  # [K]
    omegas = omegas * (speed / rms)[:, None, None]
    phases = 2 * math.pi * _rand(g, k, 3, 3)
    # Start angles on the ring evenly spaced (jittered) so that the objects mostly keep apart.
    ring_angles = 2 * math.pi * (torch.arange(k, dtype=torch.float64) + 0.3 * _rand(g, k) + _rand(g, 1)) / k
    heights = 0.1 * (2 * _rand(g, k) - 1)
    bases = torch.tensor(SCENE_CENTER, dtype=torch.float64) + torch.stack([0 * heights, 0 * heights, heights], -1)
    # The orbit's speed on the ring is capped at half `speed` (it matters on sequences under ~140 frames).
    orbit = torch.tensor(min(ORBIT, 0.5 * speed * max(n_frames - 1, 1) / RING), dtype=torch.float64)
    spin_rates = SPIN * speed / radii * torch.where(_rand(g, k) < 0.5, -1.0, 1.0).to(torch.float64)
    return {"amplitudes": amplitudes, "omegas": omegas, "phases": phases, "bases": bases, "ring_angles": ring_angles,
            "orbit": orbit,
            "spin_axes": torch.nn.functional.normalize(_randn(g, k, 3), dim=-1), "spin_rates": spin_rates,
            "wobble_amplitudes": 0.3 + 0.3 * _rand(g, k), "wobble_rates": spin_rates.abs() * (0.4 + 0.3 * _rand(g, k)),
            "wobble_phases": 2 * math.pi * _rand(g, k),
            "initial_quats": torch.nn.functional.normalize(_randn(g, k, 4), dim=-1)}


def _in_any_view(points: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int, margin: float) -> Tensor:
    """``(M,)`` bool: the point projects in front of and inside (within ``margin`` of the image size) some
    camera."""
    cam = points @ viewmats[:, :3, :3].transpose(-1, -2) + viewmats[:, None, :3, 3]  # [C, M, 3]
    z = cam[..., 2]
    uv = (cam @ Ks.transpose(-1, -2))[..., :2] / z.clamp_min(1e-6)[..., None]
    size = torch.tensor([width, height], dtype=points.dtype)
    inside = ((uv >= -margin * size) & (uv <= (1 + margin) * size)).all(-1) & (z > 0.1)
    return inside.any(0)


def _backdrop(viewmats: Tensor, Ks: Tensor, width: int, height: int, g: torch.Generator) -> Dict[str, Tensor]:
    """Flat Gaussians on a ground disk and a cylindrical back wall (radius WALL_RADIUS around the z axis, so
    any camera arc or ring inside it sees wall behind the objects), checker-textured, kept where a camera
    sees them."""
    f64 = torch.float64
    # Ground: a square grid, thin along z.
    ticks = torch.arange(-WALL_RADIUS, WALL_RADIUS + 1e-9, GROUND_SPACING, dtype=f64)
    x, y = torch.meshgrid(ticks, ticks, indexing="ij")
    ground = torch.stack([x.flatten(), y.flatten(), torch.full((x.numel(),), GROUND_Z, dtype=f64)], -1)
    ground = ground[ground[:, :2].norm(dim=-1) < WALL_RADIUS]
    checker = (ground[:, 0].floor() + ground[:, 1].floor()) % 2
    ground_rgb = torch.lerp(torch.tensor([0.62, 0.56, 0.46], dtype=f64), torch.tensor([0.40, 0.36, 0.30], dtype=f64),
                            checker[:, None])
    # Wall: a grid in (angle, height), thin along the radius.
    n_around = math.ceil(2 * math.pi * WALL_RADIUS / WALL_SPACING)
    phi = torch.arange(n_around, dtype=f64) * (2 * math.pi / n_around)
    zs = torch.arange(GROUND_Z, WALL_TOP, WALL_SPACING, dtype=f64)
    phi, z = torch.meshgrid(phi, zs, indexing="ij")
    phi, z = phi.flatten(), z.flatten()
    wall = torch.stack([WALL_RADIUS * phi.cos(), WALL_RADIUS * phi.sin(), z], -1)
    checker = ((phi * WALL_RADIUS / 1.2).floor() + ((z - GROUND_Z) / 1.2).floor()) % 2
    wall_rgb = torch.lerp(torch.tensor([0.45, 0.55, 0.65], dtype=f64), torch.tensor([0.28, 0.36, 0.46], dtype=f64),
                          checker[:, None])
    half = 0.5 * phi  # rotation about z by phi takes the thin local x axis to the radial direction
    wall_quats = torch.stack([half.cos(), torch.zeros_like(half), torch.zeros_like(half), half.sin()], -1)
    ground_quats = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64).expand(ground.shape[0], 4)

    means = torch.cat([ground, wall])
    keep = _in_any_view(means, viewmats, Ks, width, height, margin=0.15)
    s_g, s_w = 0.6 * GROUND_SPACING, 0.6 * WALL_SPACING
    scales = torch.cat([torch.tensor([s_g, s_g, THIN], dtype=f64).expand(ground.shape[0], 3),
                        torch.tensor([THIN, s_w, s_w], dtype=f64).expand(wall.shape[0], 3)])
    colors = (torch.cat([ground_rgb, wall_rgb]) + 0.04 * _randn(g, means.shape[0], 3)).clamp(0, 1)
    out = {"means": means, "quats": torch.cat([ground_quats, wall_quats]), "scales": scales,
           "opacities": torch.ones(means.shape[0], dtype=f64), "colors": colors}
    return {name: v[keep].contiguous() for name, v in out.items()}


def _point_cloud(scene: DynamicScene, n_points: int, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``(P, 3)`` points and colours: half drawn from the objects' Gaussians at 8 times spread over the
    sequence (each object only while fully visible), half from the backdrop, all with 1 cm of noise, as an
    SfM reconstruction of the whole sequence would give."""
    o, b = scene.objects, scene.backdrop
    k, n = o["means"].shape[:2]
    times = torch.linspace(0, scene.n_frames - 1, 8, dtype=torch.float64).round()
    pairs = (scene.visibility(times) >= 1).nonzero()  # [S, 2] (time index, object)
    n_object_points = n_points // 2
    which = pairs[torch.arange(n_object_points) % pairs.shape[0]]  # every visible (time, object) alike
    t_idx, obj = which[:, 0], which[:, 1]
    member = torch.randint(n, (n_object_points,), generator=g)

    def sample(means, quats, scales):  # a point drawn from each Gaussian
        offset = _randn(g, means.shape[0], 3) * scales
        return means + (quat_to_rotmat(quats) @ offset[..., None])[..., 0]

    local = sample(o["means"][obj, member], o["quats"][obj, member], o["scales"][obj, member])
    center, quat = scene.centers(times), scene.orientations(times)  # [8, K, 3], [8, K, 4]
    object_points = center[t_idx, obj] + (quat_to_rotmat(quat[t_idx, obj]) @ local[..., None])[..., 0]
    pick = torch.randint(b["means"].shape[0], (n_points - n_object_points,), generator=g)
    points = torch.cat([object_points, sample(b["means"][pick], b["quats"][pick], b["scales"][pick])])
    colors = torch.cat([o["colors"][obj, member], b["colors"][pick]])
    return points + 0.01 * _randn(g, n_points, 3), (colors + 0.02 * _randn(g, n_points, 3)).clamp(0, 1)
