"""attribute_pair_loss (Omni-Attribute's pair loss): pyops' backends against eager PyTorch (masked mean-pool +
F.normalize + bmm + logsumexp: pyops/reference/contrastive.py run in fp32) and torch.compile of it, forward and
forward+backward (gradients for ex, ey and logit_scale), pooled (B, A, D) and masked token (B, A, L, D) inputs.

Bytes moved (the GB/s column), the least a fused op must move: forward reads ex and ey; forward+backward ("full")
also writes v_ex and v_ey, and for pooled inputs reads ex and ey again (the backward needs the vectors; for token
inputs the saved pooled vectors are L times smaller and left out). The mask and the O(B A^2) outputs are
negligible.
"""

import torch

import pyops
from pyops.reference.contrastive import attribute_pair_loss as eager_loss

# (B, A, L, D), L None for pooled inputs: the sizes on a GPU, 4-16x smaller ones on the CPU.
GPU_SIZES = [(b, a, n, d) for b in (256, 4096) for a in (2, 4) for n, d in ((None, 4096), (64, 1024))]
CPU_SIZES = [(b, a, n, d) for b in (256, 1024) for a in (2, 4) for n, d in ((None, 1024), (16, 256))]
QUICK_SIZES = [(16, 4, None, 256), (16, 4, 8, 64)]
MODES = ("forward", "full")
OUR_BACKENDS = ("cuda", "triton", "cpu")


def providers(ctx):
    """name -> factory returning fn(ex, ey, logit_scale, mask); factories run once per case, so torch.compile
    compiles each shape afresh."""
    # On CPU tensors, "triton" is Triton's interpreter (TRITON_INTERPRET=1): a test tool, not worth timing.
    ours = [b for b in OUR_BACKENDS if b in pyops.available_backends(ctx.device, "attribute_pair_fwd")
            and (b != "triton" or ctx.device.type == "cuda")]
    if not ours:
        ctx.fail("attribute_pair", RuntimeError(f"no pyops backend runs on {ctx.device}"))
    out = {f"pyops-{b}": (lambda b=b: lambda ex, ey, s, m: pyops.attribute_pair_loss(ex, ey, s, mask=m, backend=b))
           for b in ours}
    out["eager"] = lambda: eager_loss

    def compiled():
        torch._dynamo.reset()  # one compile per case: no recompile limits, no dynamic shapes
        return torch.compile(eager_loss, dynamic=False)

    out["torch.compile"] = compiled
    return out


def make_inputs(b, a, n, d, dtype, device):
    """ex, ey (B, A, D), or (B, A, n, D) tokens with a bool mask keeping ~75% of them; logit_scale 10."""
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (b, a, d) if n is None else (b, a, n, d)
    ex = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    ey = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    mask = None if n is None else (torch.rand(b, a, n, generator=g) < 0.75).to(device)
    scale = torch.tensor(10.0, device=device, requires_grad=True)
    return ex, ey, scale, mask


def run(ctx):
    cuda = ctx.device.type == "cuda"
    sizes = QUICK_SIZES if ctx.quick else GPU_SIZES if cuda else CPU_SIZES
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32} if cuda else {"fp32": torch.float32}
    if not ctx.quick and not cuda:
        ctx.note("attribute_pair: CPU sizes are B in {256, 1024}, pooled D=1024 and tokens L=16, D=256 (the GPU's "
                 "B in {256, 4096}, D=4096 / L=64, D=1024 would take minutes per case on 2 cores); fp32 only")
    makers, rows = providers(ctx), []
    for b, a, n, d in sizes:
        for dname, dtype in dtypes.items():
            ex, ey, scale, mask = make_inputs(b, a, n, d, dtype, ctx.device)
            kind = "pooled" if n is None else "tokens"
            value = f"{b}x{a}x{d}" if n is None else f"{b}x{a}x{n}x{d}"
            case = dict(x_name="B x A (x L) x D", x_value=value,
                        extra={"B": b, "A": a, "L": n, "D": d, "inputs": kind, "dtype": dname})
            nbytes = ex.numel() * ex.element_size()
            moved = {"forward": 2 * nbytes, "full": (6 if n is None else 4) * nbytes}
            for name, make in makers.items():
                try:
                    fn = make()
                    forward = lambda fn=fn: fn(ex, ey, scale, mask)  # noqa: E731
                    torch.autograd.grad(forward(), (ex, ey, scale))  # warm-up; compiles forward and backward
                    for mode in MODES:
                        call = forward if mode == "forward" else (
                            lambda forward=forward: torch.autograd.grad(forward(), (ex, ey, scale)))
                        rows.append(ctx.record("attribute_pair", name, mode, fn=call, bytes_moved=moved[mode], **case))
                except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                    ctx.fail(f"attribute_pair {value} {dname} {name}", e, ours=name.startswith("pyops"))
                if cuda:
                    torch.cuda.empty_cache()
    return rows
