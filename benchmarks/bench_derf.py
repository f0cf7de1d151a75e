"""Derf, y = weight * erf(alpha * x + shift) + bias: pyops' backends against eager PyTorch, torch.compile and
Liger-Kernel's fused DyT (y = weight * tanh(alpha * x) + bias, the closest fused peer), forward, backward and
forward+backward, with gradients for x, alpha, shift, weight and bias.

Bytes moved (the GB/s column): forward reads x and writes y; backward reads x and dy and writes dx;
forward+backward ("full") is the sum. Parameters and their gradients are negligible.

Per-call cost: a (4, 64) fp32 case times the modules as a model calls them (pyops.Derf, the eager Derf,
nn.LayerNorm), where the host, not the kernel, sets the pace; a note states each one's ratio to LayerNorm.
"""

import importlib

import torch

import pyops

# (tokens, hidden): ViT-B and GPT-2-medium-like rows, a 4096-wide LLM layer, and a long sequence of it.
SIZES = [(4096, 768), (8192, 1024), (8192, 4096), (32768, 4096)]
CPU_SIZES = SIZES  # all of them fit the CPU suite's ~10 minute budget on 2 cores (about 5 minutes in all)
QUICK_SIZES = [(256, 384)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("forward", "backward", "full")
BYTES_PER_ELEMENT_PASS = {"forward": 2, "backward": 3, "full": 5}  # x,y / x,dy,dx / both
OUR_BACKENDS = ("cuda", "triton", "cpu")  # "torch" is the reference: the eager peer below already times it
available_backends = pyops.available_backends  # (device) -> list of backend names that run there


def eager_derf(x, alpha, shift, weight, bias):
    # 1-element fp32 params promote bf16 x to fp32; pyops returns x's dtype, and so must its peer.
    return (weight * torch.erf(alpha * x + shift) + bias).to(x.dtype)


def _liger_dyt():
    """Liger's DyT autograd function (alpha, gamma, beta; no shift), or None when not importable."""
    for module, attr in (("liger_kernel.ops.dyt", "LigerDyTFunction"), ("liger_kernel.ops", "LigerDyTFunction")):
        try:
            return getattr(importlib.import_module(module), attr)
        except Exception:  # noqa: BLE001  (not installed, or broken against this torch/triton)
            continue
    return None


def providers(ctx):
    """name -> factory returning (fn(x, alpha, shift, weight, bias), indices of the inputs it has gradients
    for). Factories run once per case, so torch.compile compiles each shape and dtype afresh."""
    everything = (0, 1, 2, 3, 4)
    # On CPU tensors, "triton" is Triton's interpreter (TRITON_INTERPRET=1): a test tool, not worth timing.
    ours = [b for b in OUR_BACKENDS
            if b in available_backends(ctx.device) and (b != "triton" or ctx.device.type == "cuda")]
    if not ours:
        ctx.fail("derf", RuntimeError(f"no pyops backend runs on {ctx.device}"))
    out = {f"pyops-{b}": (lambda b=b: (lambda *a: pyops.derf(*a, backend=b), everything)) for b in ours}
    out["eager"] = lambda: (eager_derf, everything)

    def compiled():
        torch._dynamo.reset()  # one compile per case: no recompile limits, no dynamic shapes
        return torch.compile(eager_derf, dynamic=False), everything

    out["torch.compile"] = compiled
    if ctx.device.type == "cuda":
        dyt = _liger_dyt()
        if dyt is None:
            ctx.note("liger-dyt skipped: liger_kernel is not importable (pip install liger-kernel)")
        else:
            ctx.note("liger-dyt is Liger-Kernel's DyT (weight * tanh(alpha * x) + bias, no shift): the closest "
                     "fused peer, not the same function; its gradients are for x, alpha, weight, bias")
            out["liger-dyt"] = lambda: (lambda x, a, s, w, b: dyt.apply(x, a, w, b), (0, 1, 3, 4))
    return out


def make_inputs(tokens, hidden, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    x = rnd(tokens, hidden).to(device, dtype)
    params = [torch.full((1,), 0.5), torch.full((1,), 0.1), 1 + 0.1 * rnd(hidden), 0.1 * rnd(hidden)]
    inputs = [x] + [p.to(device) for p in params]  # fp32 parameters, as in mixed-precision training
    dy = rnd(tokens, hidden).to(device, dtype)
    return [t.requires_grad_() for t in inputs], dy


def run(ctx):
    cuda = ctx.device.type == "cuda"
    sizes = QUICK_SIZES if ctx.quick else SIZES if cuda else CPU_SIZES
    if not ctx.quick and not cuda and CPU_SIZES != SIZES:
        ctx.note(f"derf: sizes {[f'{t}x{h}' for t, h in SIZES if (t, h) not in CPU_SIZES]} dropped on CPU "
                 "to keep the suite within its time budget")
    makers, rows = providers(ctx), []
    for tokens, hidden in sizes:
        for dname, dtype in DTYPES.items():
            inputs, dy = make_inputs(tokens, hidden, dtype, ctx.device)
            case = dict(x_name="tokens x hidden", x_value=f"{tokens}x{hidden}",
                        extra={"tokens": tokens, "hidden": hidden, "dtype": dname})
            for name, make in makers.items():
                try:
                    rows += _bench_provider(ctx, name, make, inputs, dy, case)
                except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                    ctx.fail(f"derf {case['x_value']} {dname} {name}", e, ours=name.startswith("pyops"))
                if cuda:
                    torch.cuda.empty_cache()
    rows += _bench_per_call(ctx)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Per-call host cost: at a tiny size the host (Python, dispatch, autograd), not the kernel, sets the pace.

TINY = (4, 64)  # tokens x hidden


class EagerDerf(torch.nn.Module):
    """The paper's module: Derf composed of torch ops (the eager peer of pyops.Derf)."""

    def __init__(self, hidden, device):
        super().__init__()
        ref = pyops.Derf(hidden, device=device)
        self.alpha, self.shift, self.weight, self.bias = ref.alpha, ref.shift, ref.weight, ref.bias

    def forward(self, x):
        return self.weight * torch.erf(self.alpha * x + self.shift) + self.bias


def _bench_per_call(ctx):
    """Modules on a (4, 64) fp32 tensor, as a model calls them: pyops.Derf per backend, the eager Derf and
    nn.LayerNorm (the norm Derf replaces, and the target: Derf's per-call cost within 1.2x of LayerNorm's
    forward+backward and 1.5x of its forward), forward (graph built) and full (forward + backward into .grad)."""
    tokens, hidden = TINY
    ours = [b for b in OUR_BACKENDS
            if b in available_backends(ctx.device) and (b != "triton" or ctx.device.type == "cuda")]
    modules = {f"pyops-{b} Derf": pyops.Derf(hidden, backend=b, device=ctx.device) for b in ours}
    modules["eager Derf"] = EagerDerf(hidden, ctx.device)
    modules["nn.LayerNorm"] = torch.nn.LayerNorm(hidden, device=ctx.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g).to(ctx.device).requires_grad_()
    dy = torch.randn(tokens, hidden, generator=g).to(ctx.device)
    case = dict(x_name="tokens x hidden", x_value=f"{tokens}x{hidden}",
                extra={"tokens": tokens, "hidden": hidden, "dtype": "fp32", "case": "per-call (modules)"})
    rows, median_us = [], {}
    for name, module in modules.items():
        def full(module=module):
            module(x).backward(dy)

        for mode, fn in (("forward", lambda module=module: module(x)), ("full", full)):
            try:
                row = ctx.record("derf", name, mode, fn=fn, **case)
            except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                ctx.fail(f"derf per-call {name} {mode}", e, ours=name.startswith("pyops"))
                continue
            rows.append(row)
            median_us[name, mode] = row["y_value_50"] * 1e3
    for name in modules:
        if name == "nn.LayerNorm" or (name, "full") not in median_us:
            continue
        ln = {mode: median_us[key] for key in median_us if key[0] == "nn.LayerNorm" for mode in key[1:]}
        parts = [f"{mode} {median_us[name, mode]:.1f} us = {median_us[name, mode] / ln[mode]:.2f}x"
                 for mode in ("forward", "full") if mode in ln]
        ctx.note(f"derf per-call cost at {tokens}x{hidden} fp32 ({torch.get_num_threads()} threads): {name} "
                 f"{', '.join(parts)} nn.LayerNorm's ({ln.get('forward', float('nan')):.1f} / "
                 f"{ln.get('full', float('nan')):.1f} us; target <= 1.5x / 1.2x)")
    return rows


def _bench_provider(ctx, name, make, inputs, dy, case):
    fn, grad_idx = make()
    wrt = [inputs[i] for i in grad_idx]
    forward = lambda: fn(*inputs)
    torch.autograd.grad(forward(), wrt, dy)  # warm-up outside timing; compiles forward and backward
    nbytes = inputs[0].numel() * inputs[0].element_size()
    rows = []
    for mode in MODES:
        if mode == "forward":
            call = forward  # training forward: inputs require grad, so the graph is built and saved
        elif mode == "backward":
            y = forward()  # time only the backward of one saved graph
            call = lambda: torch.autograd.grad(y, wrt, dy, retain_graph=True)
        else:
            call = lambda: torch.autograd.grad(forward(), wrt, dy)
        rows.append(ctx.record("derf", name, mode, fn=call, bytes_moved=BYTES_PER_ELEMENT_PASS[mode] * nbytes,
                               **case))
    return rows
