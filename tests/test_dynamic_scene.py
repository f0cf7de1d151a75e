"""The synthetic long dynamic scene (MoRel's ground truth): shapes, determinism, frames rendered by
rasterize_gaussians, continuous per-frame motion whatever the length, no repeats, the appearing and
disappearing objects, objects in view, the initial point cloud, and argument checks."""

import pytest
import torch

import pyops
from pyops.models.dynamic_scene import DynamicScene, synthetic_dynamic_scene
from pyops.reference.gaussians import quat_to_rotmat

W, H = 32, 24


@pytest.fixture(scope="module")
def scene() -> DynamicScene:
    return synthetic_dynamic_scene(90, width=W, height=H, n_cameras=3, n_points=1000, seed=1)


def object_gaussian_means(scene: DynamicScene, ts) -> torch.Tensor:
    """(T, K, G, 3) world positions of every object Gaussian at times ts, from the centres and orientations."""
    ts = torch.as_tensor(ts, dtype=torch.float32)
    rot = quat_to_rotmat(scene.orientations(ts))  # [T, K, 3, 3]
    return scene.centers(ts)[:, :, None] + torch.einsum("tkij,kgj->tkgi", rot, scene.objects["means"])


def project(scene: DynamicScene, points: torch.Tensor) -> torch.Tensor:
    """(C, ..., 2) pixel coordinates of points (..., 3) in every camera (in front of them: asserted)."""
    flat = points.reshape(-1, 3)
    cam = flat @ scene.viewmats[:, :3, :3].transpose(-1, -2) + scene.viewmats[:, None, :3, 3]
    assert (cam[..., 2] > 0.5).all()
    uv = cam @ scene.Ks.transpose(-1, -2)
    return (uv[..., :2] / uv[..., 2:]).reshape(scene.n_cameras, *points.shape[:-1], 2)


def render_objects(scene: DynamicScene, t: int, keep: torch.Tensor):
    """(colors, alphas) of the Gaussians selected by keep (N,) at frame t, as the scene renders them."""
    g = {k: v[keep] for k, v in scene.gaussians(t).items()}
    bg = scene.background.expand(scene.n_cameras, 3)
    colors, alphas, _ = pyops.rasterize_gaussians(**g, viewmats=scene.viewmats, Ks=scene.Ks, width=scene.width,
                                                  height=scene.height, backgrounds=bg)
    return colors, alphas


def test_shapes_and_dtypes(scene):
    k, g = scene.n_objects, 200
    n = scene.n_gaussians
    assert (scene.n_frames, scene.width, scene.height, scene.n_cameras, k) == (90, W, H, 3, 4)
    assert scene.viewmats.shape == (3, 4, 4) and scene.Ks.shape == (3, 3, 3)
    assert scene.points.shape == (1000, 3) and scene.colors.shape == (1000, 3)
    assert scene.colors.min() >= 0 and scene.colors.max() <= 1
    assert scene.background.shape == (3,) and scene.object_ids.shape == (n,) and scene.object_ids.dtype == torch.long
    assert (scene.object_ids[:k * g] == torch.arange(k).repeat_interleave(g)).all()
    assert (scene.object_ids[k * g:] == -1).all() and n - k * g > 500  # a backdrop
    gs = scene.gaussians(17)
    shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "colors": (n, 3)}
    assert {name: tuple(v.shape) for name, v in gs.items()} == shapes
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in gs.values())
    assert (gs["scales"] > 0).all() and gs["opacities"].min() >= 0 and gs["opacities"].max() <= 1
    assert torch.allclose(gs["quats"].norm(dim=-1), torch.ones(n), atol=1e-5)
    assert scene.centers(3).shape == (k, 3) and scene.centers([3, 4.5]).shape == (2, k, 3)
    assert scene.orientations(torch.arange(5)).shape == (5, k, 4) and scene.visibility(0.5).shape == (k,)
    image = scene.render(17)
    assert image.shape == (3, H, W, 3) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    frames = scene.frames([0, 17, 89], cameras=[2, 0])
    assert frames.shape == (3, 2, H, W, 3)
    assert torch.equal(frames[1], image[[2, 0]]) and torch.equal(scene.render(17, cameras=1)[0], image[1])
    assert torch.equal(scene.frames(torch.tensor([17]))[0], image)
    depth = scene.render(17, cameras=[0], render_mode="RGB+ED")
    assert depth.shape == (1, H, W, 4) and torch.equal(depth[..., :3], image[:1])
    assert depth[..., 3].min() > 2 and depth[..., 3].max() < 20  # objects ~4 away, the wall ~10
    # Fractional times lie between the frames around them.
    between = scene.gaussians(17.5)["means"]
    assert torch.allclose(between, 0.5 * (gs["means"] + scene.gaussians(18)["means"]), atol=0.01)
    assert "n_frames=90" in repr(scene)


def test_float64_and_tiny_configurations():
    s = synthetic_dynamic_scene(1, width=8, height=6, n_cameras=1, n_objects=1, gaussians_per_object=3, n_points=5,
                                dtype=torch.float64)
    assert s.appearing_object is None and s.disappearing_object is None and (s.visibility(0) == 1).all()
    assert s.render(0).shape == (1, 6, 8, 3) and s.render(0).dtype == torch.float64
    assert all(v.dtype == torch.float64 for v in s.gaussians(0).values()) and s.points.dtype == torch.float64
    ring = synthetic_dynamic_scene(20, width=8, height=8, n_cameras=5, camera_arc_deg=360, n_objects=2)
    eyes = -torch.einsum("cji,cj->ci", ring.viewmats[:, :3, :3], ring.viewmats[:, :3, 3])
    assert torch.allclose(eyes[:, :2].norm(dim=-1), torch.full((5,), 4.0))
    assert (ring.appearing_object, ring.disappearing_object) == (1, 0)


def test_deterministic_by_seed(scene):
    again = synthetic_dynamic_scene(90, width=W, height=H, n_cameras=3, n_points=1000, seed=1)
    other = synthetic_dynamic_scene(90, width=W, height=H, n_cameras=3, n_points=1000, seed=2)
    ts = [0, 45]
    assert torch.equal(again.frames(ts), scene.frames(ts))
    assert torch.equal(again.points, scene.points) and torch.equal(again.colors, scene.colors)
    assert (other.frames(ts) - scene.frames(ts)).abs().mean() > 0.02
    assert not torch.allclose(other.points, scene.points)


def test_render_is_one_rasterize_call_on_the_gaussians(scene):
    for t in (0, 44, 89):
        g = scene.gaussians(t)
        expected, _, _ = pyops.rasterize_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                                                   scene.viewmats, scene.Ks, W, H,
                                                   backgrounds=scene.background.expand(3, 3))
        assert torch.equal(scene.render(t), expected)


def test_frames_are_covered(scene):
    """The backdrop fills every pixel; the objects cover a fair part of each view."""
    is_object = scene.object_ids >= 0
    for t in (0, 30, 60, 89):
        _, alphas = render_objects(scene, t, torch.ones_like(is_object))
        assert (alphas > 0.99).float().mean() > 0.97, t
        _, object_alphas = render_objects(scene, t, is_object)
        coverage = (object_alphas > 0.5).float().mean((1, 2, 3))  # [C]
        assert (coverage > 0.06).all() and (coverage < 0.6).all(), (t, coverage)
        image = scene.render(t)
        assert image.std((1, 2)).min() > 0.08  # textured, not flat


def test_motion_is_continuous_and_its_speed_does_not_depend_on_the_length():
    steps = {}
    for n in (600, 3600):
        s = synthetic_dynamic_scene(n, width=W, height=H, n_points=10)
        centers = s.centers(torch.arange(n))
        step = (centers[1:] - centers[:-1]).norm(dim=-1)  # [T - 1, K]
        steps[n] = step.mean().item()
        assert step.max() < 3 * 0.03, n  # smooth: no jumps (RMS speed 0.03 per frame)
        pixels = project(s, centers)  # [C, T, K, 2]
        pixel_steps = (pixels[:, 1:] - pixels[:, :-1]).norm(dim=-1) / W  # in image widths
        assert 0.003 < pixel_steps.mean() < 0.008 and pixel_steps.max() < 0.025, n
    assert abs(steps[600] / steps[3600] - 1) < 0.1 and 0.8 * 0.03 < steps[3600] < 1.2 * 0.03, steps


def test_frames_change_a_little_per_frame_and_a_lot_over_the_sequence():
    s = synthetic_dynamic_scene(600, width=W, height=H, n_points=10)
    frames = s.frames([100, 101, 400])
    near = (frames[1] - frames[0]).abs().mean()
    far = (frames[2] - frames[0]).abs().mean()
    assert 0 < near < far / 5, (near, far)


def test_never_repeats():
    """No two frames more than 30 apart have every object within 5 cm (~1 px) of where it was, and every object
    is 15 cm (~3 px) or more away from its position of any frame more than half the sequence away."""
    for seed in (0, 1):
        for n in (600, 3600):
            centers = synthetic_dynamic_scene(n, seed=seed, n_points=10).centers(torch.arange(n))  # [T, K, 3]
            distances = torch.stack([torch.cdist(c, c) for c in centers.unbind(1)])  # [K, T, T]
            gap = torch.arange(n)
            gap = (gap[:, None] - gap[None]).abs()
            assert distances.amax(0)[gap > 30].min() > 0.05, (seed, n)
            assert distances[:, gap > n // 2].amin(-1).min() > 0.15, (seed, n)


def test_objects_stay_in_every_view():
    for seed, arc, (w, h) in ((0, 60.0, (64, 64)), (1, 90.0, (64, 36)), (2, 360.0, (48, 48))):
        s = synthetic_dynamic_scene(3600, width=w, height=h, n_cameras=4, camera_arc_deg=arc, seed=seed, n_points=10)
        pixels = project(s, object_gaussian_means(s, torch.arange(0, 3600, 7)))  # [C, T, K, G, 2]
        assert (pixels >= 0).all() and (pixels[..., 0] <= w).all() and (pixels[..., 1] <= h).all(), seed


def test_one_object_appears_and_one_disappears(scene):
    a, d, ramp = scene.appearing_object, scene.disappearing_object, scene.ramp_frames
    assert (a, d) == (3, 2) and (scene.appear_frame, scene.disappear_frame, ramp) == (30, 60, 4)
    vis = scene.visibility(torch.arange(90))  # [T, K]
    assert (vis[:30, a] == 0).all() and (vis[30:33, a] > 0).all() and (vis[33:, a] == 1).all()
    assert (vis[:, a].diff() >= 0).all() and (vis[:, d].diff() <= 0).all()
    assert (vis[:57, d] == 1).all() and (vis[57:60, d] < 1).all() and (vis[57:60, d] > 0).all()
    assert (vis[60:, d] == 0).all() and (vis[:, :2] == 1).all()
    for t, present in ((29, {0, 1, 2}), (45, {0, 1, 2, 3}), (60, {0, 1, 3})):
        opacities = scene.gaussians(t)["opacities"]
        for obj in range(4):
            mine = opacities[scene.object_ids == obj]
            assert (mine.min() >= 0.85) if obj in present else (mine == 0).all(), (t, obj)
    # An absent object leaves no trace in the frame; a present one does.
    for t, obj, present in ((29, a, False), (60, d, False), (33, a, True), (56, d, True)):
        without, _ = render_objects(scene, t, scene.object_ids != obj)
        assert torch.equal(scene.render(t), without) != present, (t, obj)


def test_point_cloud_covers_every_object_and_the_backdrop(scene):
    # The point cloud samples the objects at 8 times while fully visible: gather those Gaussians.
    times = torch.linspace(0, 89, 8).round()
    visible = scene.visibility(times) >= 1  # [8, K]
    gaussians = object_gaussian_means(scene, times)[visible]  # [V, G, 3]
    objects = visible.nonzero()[:, 1]  # [V]
    labels = objects[:, None].expand(gaussians.shape[:2])  # [V, G] the object of each
    colors = scene.objects["colors"][objects]  # [V, G, 3]
    gaussians, labels, colors = gaussians.flatten(0, 1), labels.flatten(), colors.flatten(0, 1)
    distances = torch.cdist(scene.points, gaussians)  # [P, V G]
    nearest = distances.argmin(-1)
    near_object = distances.amin(-1) < 0.15  # about two Gaussian sizes
    counts = torch.bincount(labels[nearest][near_object], minlength=scene.n_objects)
    assert (counts > 80).all() and counts.sum() > 480, counts  # half the cloud: 500 points in 25 (time, object)
    # The backdrop: the ground (z = -0.8) and the wall (radius 6.5 around the z axis).
    p = scene.points
    near_backdrop = ((p[:, 2] + 0.8).abs() < 0.1) | ((p[:, :2].norm(dim=-1) - 6.5).abs() < 0.1)
    assert near_backdrop.sum() > 450 and (near_object | near_backdrop).float().mean() > 0.98
    # Colours follow the geometry: an object point has the colour of an object Gaussian close to it.
    close = distances[near_object] < 0.15
    color_error = (scene.colors[near_object][:, None] - colors).abs().amax(-1).masked_fill(~close, 1.0).amin(-1)
    assert (color_error < 0.1).float().mean() > 0.97


def test_bad_arguments_raise(scene):
    for kwargs in ({"n_frames": 0}, {"width": 0}, {"height": -2}, {"n_cameras": 0}, {"n_objects": 0},
                   {"gaussians_per_object": 0}, {"n_points": 0}, {"ramp_frames": 0}, {"speed": 0.0},
                   {"speed": float("nan")}, {"camera_arc_deg": 0.0}, {"camera_arc_deg": 400.0}):
        args = {"n_frames": 10, **kwargs}
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"synthetic_dynamic_scene: {name}"):
            synthetic_dynamic_scene(args.pop("n_frames"), **args)
    for kwargs in ({"n_frames": 10.0}, {"width": "64"}, {"n_cameras": True}, {"speed": "fast"},
                   {"dtype": torch.int32}):
        args = {"n_frames": 10, **kwargs}
        with pytest.raises(TypeError, match="synthetic_dynamic_scene"):
            synthetic_dynamic_scene(args.pop("n_frames"), **args)
    for t in (-1, 90, 89.5, float("nan"), [0, 90], torch.tensor([-0.5])):
        with pytest.raises(ValueError, match=r"DynamicScene\.\w+: t"):
            scene.frames(t) if isinstance(t, (list, torch.Tensor)) else scene.render(t)
    for t in (True, None, "3", torch.tensor([True])):
        with pytest.raises(TypeError, match=r"DynamicScene\.\w+: t"):
            scene.centers(t)
    with pytest.raises(TypeError, match="DynamicScene.gaussians: t"):
        scene.gaussians(torch.tensor(3))
    with pytest.raises(TypeError, match="DynamicScene.render: t"):
        scene.render(True)
    with pytest.raises(ValueError, match=r"DynamicScene.centers: t must be a number or 1-D"):
        scene.centers(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="DynamicScene.frames: ts must hold at least one frame"):
        scene.frames([])
    for cameras in (3, [0, 3], [-1], []):
        with pytest.raises(ValueError, match="DynamicScene.render: cameras"):
            scene.render(0, cameras=cameras)
    for cameras in (0.5, [1.0], torch.tensor([1.0]), [True]):
        with pytest.raises(TypeError, match="DynamicScene.render: cameras"):
            scene.render(0, cameras=cameras)
