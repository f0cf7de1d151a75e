"""Gaussian-splatting rasterizer: pyops' backends against gsplat and the dense reference.

Scenes come from `pyops.models.gaussian_scene.synthetic_scene` (trained-scene-like scales and bimodal
opacities, SH degree 3) seen by one camera at 2.2 scene radii. Modes: forward, backward (of the sum of the
image times a fixed random weight, so every pixel has a gradient) and forward+backward. GPU: pyops CUDA and
Triton vs gsplat's CUDA rasterizer (JIT-compiled from the PyPI wheel when it is importable), with peak memory
and the mean absolute difference of the image from gsplat's. CPU: pyops vs the dense float32 reference
(every pixel against every Gaussian) at small sizes, and pyops' throughput on a 100k-Gaussian 512 x 512 scene.
"""

import importlib

import torch

import pyops
from pyops.models.gaussian_scene import look_at, pinhole, synthetic_scene
from pyops.reference import gaussians as reference

# (Gaussians, width, height)
GPU_CASES = [(100_000, 1920, 1080), (1_000_000, 1920, 1080), (3_000_000, 1920, 1080), (1_000_000, 3840, 2160)]
CPU_CASES = [(5_000, 128, 128), (100_000, 512, 512)]
QUICK_CASES = [(200, 32, 24)]
DENSE_MAX = 5_000 * 128 * 128  # Gaussians x pixels the dense reference may take (about 1 GB per tensor)
OUR_BACKENDS = ("cuda", "triton", "cpu")


def scene(n, width, height, device):
    g = torch.Generator().manual_seed(0)
    s = synthetic_scene(n, sh_degree=3, generator=g, device=device)
    viewmats = look_at(torch.tensor([[2.2, 0.3, 0.4]], device=device))
    s.update(viewmats=viewmats, Ks=pinhole(width, height, cameras=1, device=device), width=width, height=height,
             sh_degree=3)
    weight = torch.rand(1, height, width, 3, generator=g).to(device)  # d loss / d image
    return s, weight


def _ours(backend):
    def render(s):
        return pyops.rasterize_gaussians(**s, backend=backend)[0]
    return render


def _dense(s):
    return reference.rasterize_gaussians(**s)[0]


def _gsplat(ctx):
    try:
        gsplat = importlib.import_module("gsplat")
        return gsplat.rasterization, None
    except Exception as e:  # noqa: BLE001  (not installed, or its CUDA build failed)
        return None, f"gsplat unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"


def providers(ctx, n, width, height):
    cuda = ctx.device.type == "cuda"
    ours = [b for b in OUR_BACKENDS if b in pyops.available_backends(ctx.device, "gs_rasterize_fwd")
            and (b != "triton" or cuda)]
    if not ours:
        ctx.fail("gaussians", RuntimeError(f"no pyops rasterizer backend runs on {ctx.device}"))
    out = {f"pyops-{b}": _ours(b) for b in ours}
    if cuda:
        rasterization, why = _gsplat(ctx)
        if rasterization is None:
            ctx.note(why)
        else:
            out["gsplat"] = lambda s: rasterization(**{k: v for k, v in s.items()})[0]
    elif n * width * height <= DENSE_MAX:
        out["dense reference"] = _dense
    return out


def run(ctx):
    cuda = ctx.device.type == "cuda"
    cases = QUICK_CASES if ctx.quick else GPU_CASES if cuda else CPU_CASES
    rows = []
    for n, width, height in cases:
        s, weight = scene(n, width, height, ctx.device)
        params = ("means", "quats", "scales", "opacities", "colors")
        case = dict(x_name="Gaussians x image", x_value=f"{n // 1000}k {width}x{height}" if n >= 1000 else
                    f"{n} {width}x{height}", extra={"N": n, "W": width, "H": height, "dtype": "float32"})
        reference_image = None
        for name, render in providers(ctx, n, width, height).items():
            try:
                leaves = {k: s[k].detach().requires_grad_(k in params) if torch.is_tensor(s[k]) else s[k]
                          for k in s}
                image = render(leaves)
                if reference_image is None:
                    reference_image = image.detach()
                agreement = None
                if name == "gsplat" or (not cuda and name == "dense reference"):
                    mae = (image.detach() - reference_image).abs().mean().item()
                    ctx.note(f"gaussians {case['x_value']}: mean |image - {name}| of the first pyops backend = "
                             f"{mae:.2e}")
                loss = (image * weight).sum()

                def fwd():
                    return render(leaves)

                def bwd(loss=loss):
                    torch.autograd.grad(loss, [leaves[k] for k in params], retain_graph=True)

                def full():
                    torch.autograd.grad((render(leaves) * weight).sum(), [leaves[k] for k in params])

                for mode, fn in (("forward", fwd), ("backward", bwd), ("full", full)):
                    rows.append(ctx.record("gaussians", name, mode, fn=fn, agreement=agreement, **case))
            except torch.OutOfMemoryError as e:
                ctx.note(f"gaussians {case['x_value']} {name}: out of memory ({str(e).splitlines()[0][:80]})")
            except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                ctx.fail(f"gaussians {case['x_value']} {name}", e, ours=name.startswith("pyops"))
            if cuda:
                torch.cuda.empty_cache()
    return rows
