"""MoRel anchor ops: pyops' fused Scaffold-GS anchor decode and HexPlane features against the unfused peers.

Decode: ``pyops.anchor_decode`` (dense outputs, blend weight fused, no host sync) against Scaffold-GS's
``generate_neural_gaussians`` written here from its algorithm in eager PyTorch (visible-anchor gather, three MLPs,
``neural_opacity > 0`` boolean compaction, repeat/cat/split) and that peer under ``torch.compile``. Both multiply
the opacity by MoRel's forward blend weight. Scaffold-GS sizes: C = 32 features, K = 10 offsets, hidden 32, no
distance inputs, 80% of the anchors visible. Modes: forward, and forward+backward ("full") of the sum of every
output, with gradients for anchors, features, offsets, scales, all MLP weights and the blend parameters.

HexPlane: ``pyops.hexplane_features`` against 4DGS's ``interpolate_ms_features`` (six ``F.grid_sample`` calls per
level, products, concatenation) in eager PyTorch and under ``torch.compile``; 4DGS's D-NeRF field: 32 features,
resolution [64, 64, 64, 25], multires [1, 2]. Two time cases: one time per point, and MoRel's one time for the
frame (pyops' shared-time path; the peer gets the time expanded per point, as 4DGS does).

Notes record the device-to-host syncs per call (GPU: counted with torch.cuda.set_sync_debug_mode("warn")).
"""

import warnings

import torch
import torch.nn.functional as F

import pyops
from pyops.reference.hexplane import PLANE_AXES

DECODE_GPU_SIZES = [100_000, 500_000, 1_500_000]
DECODE_CPU_SIZES = [20_000]
HEX_GPU_SIZES = [1_000_000, 4_000_000]
HEX_CPU_SIZES = [200_000]
QUICK_DECODE, QUICK_HEX = [300], [2_000]
FEAT_DIM, N_OFFSETS, HIDDEN = 32, 10, 32
VISIBLE_FRACTION = 0.8
HEX_FEATURES, HEX_RESOLUTION, HEX_MULTIRES = 32, (64, 64, 64, 25), (1, 2)
OUR_BACKENDS = ("cuda", "triton", "cpu")


def _ours(ctx, op):
    # On CPU tensors "triton" is Triton's interpreter: a test tool, not worth timing.
    ours = [b for b in OUR_BACKENDS
            if b in pyops.available_backends(ctx.device, op) and (b != "triton" or ctx.device.type == "cuda")]
    if not ours:
        ctx.fail("anchors", RuntimeError(f"no pyops backend runs {op} on {ctx.device}"))
    return ours


def _compiled(fn):
    def make():
        torch._dynamo.reset()  # one compile per case
        return torch.compile(fn, dynamic=False)
    return make


def count_syncs(ctx, fn) -> int:
    """Device-to-host syncs of one call of fn (0 on CPU, where there is nothing to wait for)."""
    if ctx.device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------------------------------------
# Anchor decode.


def decode_inputs(m, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    dec = pyops.AnchorDecoder(FEAT_DIM, N_OFFSETS, HIDDEN)
    with torch.no_grad():
        dec.mlp_opacity[2].bias.add_(0.3)  # about 60% of the Tanh outputs > 0, like a trained scene
    dec = dec.to(device)
    data = dict(anchors=rnd(m, 3) * 2, feats=rnd(m, FEAT_DIM), offsets=rnd(m, N_OFFSETS, 3) * 0.5,
                anchor_scales=torch.rand(m, 6, generator=g) * 0.05 + 0.01, blend_offset=torch.rand(m, generator=g),
                blend_decay=torch.rand(m, generator=g) * 4)
    data = {k: v.to(device).requires_grad_() for k, v in data.items()}
    data["cam_center"] = torch.tensor([0.0, 0.0, -4.0], device=device)
    data["visible"] = (torch.rand(m, generator=g) < VISIBLE_FRACTION).to(device)
    return dec, data


def scaffold_decode(dec, anchors, feats, offsets, anchor_scales, cam_center, visible, blend_offset=None,
                    blend_decay=None, tau=0.5, mode="forward", lambda_decay=1.0):
    """Scaffold-GS's generate_neural_gaussians (eager, with its compactions) times MoRel's blend weight
    (mode "forward" or "backward"; none without blend_offset)."""
    feat, anchor = feats[visible], anchors[visible]
    grid_offsets, grid_scaling = offsets[visible], anchor_scales[visible]
    ob_view = anchor - cam_center
    ob_dist = ob_view.norm(dim=1, keepdim=True)
    ob_view = ob_view / ob_dist
    local_view = torch.cat([feat, ob_view], dim=1)
    neural_opacity = dec.mlp_opacity(local_view).reshape(-1, 1)
    if blend_offset is not None:
        diff = tau - blend_offset[visible] if mode == "forward" else blend_offset[visible] - tau
        weight = torch.exp(-lambda_decay * blend_decay[visible] * torch.relu(diff))
        neural_opacity = neural_opacity * weight.repeat_interleave(offsets.shape[1])[:, None]
    mask = (neural_opacity > 0.0).view(-1)
    opacity = neural_opacity[mask]
    color = dec.mlp_color(local_view).reshape(-1, 3)
    scale_rot = dec.mlp_cov(local_view).reshape(-1, 7)
    repeated = torch.cat([grid_scaling, anchor], dim=-1).repeat_interleave(offsets.shape[1], dim=0)
    masked = torch.cat([repeated, color, scale_rot, grid_offsets.view(-1, 3)], dim=-1)[mask]
    scaling_repeat, repeat_anchor, color, scale_rot, offs = masked.split([6, 3, 3, 7, 3], dim=-1)
    scaling = scaling_repeat[:, 3:] * torch.sigmoid(scale_rot[:, :3])
    rot = F.normalize(scale_rot[:, 3:7])
    xyz = repeat_anchor + offs * scaling_repeat[:, :3]
    return xyz, color, opacity, scaling, rot


def pyops_decode(backend):
    def decode(dec, anchors, feats, offsets, anchor_scales, cam_center, visible, blend_offset, blend_decay):
        mlp = [t for head in (dec.mlp_opacity, dec.mlp_cov, dec.mlp_color)
               for layer in (head[0], head[2]) for t in (layer.weight, layer.bias)]
        out = pyops.anchor_decode(anchors, feats, offsets, anchor_scales, cam_center, mlp,
                                  visible=visible, blend_offset=blend_offset, blend_decay=blend_decay, tau=0.5,
                                  blend_mode="forward", backend=backend)
        return out.means, out.colors, out.opacities, out.scales, out.quats
    return decode


def run_decode(ctx):
    rows = []
    sizes = QUICK_DECODE if ctx.quick else DECODE_GPU_SIZES if ctx.device.type == "cuda" else DECODE_CPU_SIZES
    for m in sizes:
        dec, data = decode_inputs(m, ctx.device)
        leaves = [data[k] for k in ("anchors", "feats", "offsets", "anchor_scales", "blend_offset", "blend_decay")]
        leaves += list(dec.parameters())
        providers = {f"pyops-{b}": (lambda b=b: pyops_decode(b)) for b in _ours(ctx, "anchor_decode_fwd")}
        providers["eager Scaffold-GS"] = lambda: scaffold_decode
        providers["torch.compile Scaffold-GS"] = _compiled(scaffold_decode)
        syncs = {}
        for name, make in providers.items():
            try:
                fn = make()
                forward = lambda fn=fn: fn(dec, **data)  # noqa: E731
                full = lambda forward=forward: torch.autograd.grad(  # noqa: E731
                    sum(o.sum() for o in forward()), leaves)
                for mode, call in (("forward", lambda: _no_grad(forward)), ("full", full)):
                    rows.append(ctx.record("anchor_decode", name, mode, "anchors", m, call,
                                           extra={"dtype": "fp32", "K": N_OFFSETS, "C": FEAT_DIM}))
                syncs[name] = count_syncs(ctx, full)
            except Exception as e:  # noqa: BLE001  (report it, go on with the other providers)
                ctx.fail(f"anchors: decode {name} M={m}", e, ours=name.startswith("pyops"))
        if ctx.device.type == "cuda":
            ctx.note(f"decode M={m}: host syncs per forward+backward: "
                     + ", ".join(f"{k} {v}" for k, v in syncs.items()))
    return rows


def _no_grad(fn):
    with torch.no_grad():
        return fn()


# ----------------------------------------------------------------------------------------------------------
# HexPlane features.


def hexplane_inputs(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = []
    for scale in HEX_MULTIRES:
        res = [r * scale for r in HEX_RESOLUTION[:3]] + [HEX_RESOLUTION[3]]
        for a, b in PLANE_AXES:
            init = torch.ones if 3 in (a, b) else (lambda *s: 0.1 + 0.4 * torch.rand(*s, generator=g))
            plane = init(1, HEX_FEATURES, res[b], res[a]) + (0.05 * torch.randn(1, HEX_FEATURES, res[b], res[a],
                                                                                generator=g) if 3 in (a, b) else 0)
            planes.append(plane.to(device).requires_grad_())
    points = (torch.rand(n, 3, generator=g) * 2.6 - 1.3).to(device).requires_grad_()
    times = torch.rand(n, generator=g).to(device)
    aabb = torch.tensor([[1.3, 1.3, 1.3], [-1.3, -1.3, -1.3]], device=device)  # 4DGS: [max, min]
    return points, times, planes, aabb


def fourdgs_features(points, times, planes, aabb):
    """4DGS's HexPlaneField.forward: normalize_aabb, cat time, interpolate_ms_features with grid_sample."""
    pts = (points - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1.0
    pts = torch.cat([pts, times.reshape(-1, 1)], dim=-1)
    levels = []
    for level in range(len(planes) // 6):
        product = 1.0
        for i, (a, b) in enumerate(PLANE_AXES):
            grid = planes[6 * level + i]
            coords = pts[:, [a, b]].view(1, 1, -1, 2)
            sample = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
            product = product * sample.view(grid.shape[1], -1).t()
        levels.append(product)
    return torch.cat(levels, dim=-1)


def run_hexplane(ctx):
    rows = []
    sizes = QUICK_HEX if ctx.quick else HEX_GPU_SIZES if ctx.device.type == "cuda" else HEX_CPU_SIZES
    for n in sizes:
        points, times, planes, aabb = hexplane_inputs(n, ctx.device)
        leaves = [points] + planes
        for time_case in ("per-point", "shared"):
            ours_time = times if time_case == "per-point" else 0.37
            peer_time = times if time_case == "per-point" else torch.full_like(times, 0.37)
            providers = {f"pyops-{b}": (lambda b=b: (lambda: pyops.hexplane_features(points, ours_time, planes, aabb,
                                                                                    backend=b)))
                         for b in _ours(ctx, "hexplane_fwd")}
            providers["eager 4DGS grid_sample"] = lambda: (lambda: fourdgs_features(points, peer_time, planes, aabb))
            compiled = _compiled(fourdgs_features)
            providers["torch.compile 4DGS"] = lambda: (lambda fn=compiled(): fn(points, peer_time, planes, aabb))
            syncs = {}
            for name, make in providers.items():
                try:
                    forward = make()
                    full = lambda forward=forward: torch.autograd.grad(forward().sum(), leaves)  # noqa: E731
                    for mode, call in (("forward", lambda: _no_grad(forward)), ("full", full)):
                        rows.append(ctx.record("hexplane", name, mode, "points, time", f"{n} {time_case}", call,
                                               extra={"dtype": "fp32", "F": HEX_FEATURES,
                                                      "levels": len(HEX_MULTIRES)}))
                    syncs[name] = count_syncs(ctx, full)
                except Exception as e:  # noqa: BLE001
                    ctx.fail(f"anchors: hexplane {name} N={n}", e, ours=name.startswith("pyops"))
            if ctx.device.type == "cuda":
                ctx.note(f"hexplane N={n} {time_case} time: host syncs per forward+backward: "
                         + ", ".join(f"{k} {v}" for k, v in syncs.items()))
    return rows


def run(ctx):
    return run_decode(ctx) + run_hexplane(ctx)
