"""Derf + Linear: ``pyops.derf_linear`` (one op that keeps only x for the backward and recomputes derf(x) there)
against the unfused pair ``pyops.derf`` then ``F.linear`` (the "Derf kernel + torch's Linear" of issue 15), the
eager composition and its torch.compile form, forward and forward+backward (gradients for x, alpha, shift,
weight, bias and the Linear's weight and bias).

Sizes: GPT-2 / ViT-B widths, 4096 tokens, C = 768 -> O = 3072 (mlp.fc1) and C = 768 -> O = 2304 (attn.qkv);
fp32 and bf16 (fp32 Derf parameters, as in mixed-precision training). "peak MiB" includes what the forward keeps
for the backward: the unfused pair keeps derf(x) too.
"""

import torch
import torch.nn.functional as F
from bench_derf import eager_derf

import pyops

SIZES = [(4096, 768, 3072), (4096, 768, 2304)]
QUICK_SIZES = [(128, 64, 96)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def unfused(x, alpha, shift, weight, bias, lw, lb, backend=None):
    return F.linear(pyops.derf(x, alpha, shift, weight, bias, backend=backend), lw, lb)


def eager(x, alpha, shift, weight, bias, lw, lb):
    return F.linear(eager_derf(x, alpha, shift, weight, bias), lw, lb)


def run(ctx):
    cuda = ctx.device.type == "cuda"
    ours = [b for b in pyops.available_backends(ctx.device, "derf_linear_fwd")
            if b in ("triton", "cpu") and (b != "triton" or cuda)]
    rows = []
    for tokens, c, o in QUICK_SIZES if ctx.quick else SIZES:
        for dname, dtype in DTYPES.items():
            g = torch.Generator().manual_seed(0)
            rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
            x = rnd(tokens, c).to(ctx.device, dtype)
            params = [torch.full((1,), 0.5), torch.full((1,), 0.1), 1 + 0.1 * rnd(c), 0.1 * rnd(c)]
            params = [p.to(ctx.device) for p in params]
            lw, lb = (rnd(o, c) / c ** 0.5).to(ctx.device, dtype), (0.1 * rnd(o)).to(ctx.device, dtype)
            inputs = [t.requires_grad_() for t in [x, *params, lw, lb]]
            dy = rnd(tokens, o).to(ctx.device, dtype)
            providers = {f"pyops-{b}": (lambda b=b: lambda *a: pyops.derf_linear(*a, backend=b)) for b in ours}
            providers["Derf kernel + F.linear"] = lambda: unfused  # the unfused pair (pyops.derf)
            providers["eager"] = lambda: eager

            def compiled():
                torch._dynamo.reset()
                return torch.compile(eager, dynamic=False)

            providers["torch.compile"] = compiled
            for name, make in providers.items():
                try:
                    fn = make()
                    forward = lambda fn=fn: fn(*inputs)  # noqa: E731
                    full = lambda forward=forward: torch.autograd.grad(forward(), inputs, dy)  # noqa: E731
                    full()  # warm-up (compiles forward and backward)
                    for mode, call in (("forward", forward), ("full", full)):
                        rows.append(ctx.record("derf_linear", name, mode, "tokens x C -> O", f"{tokens}x{c}->{o}",
                                               call, extra={"dtype": dname}))
                except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                    ctx.fail(f"derf_linear {tokens}x{c}->{o} {dname} {name}", e, ours=name.startswith("pyops-"))
    return rows
