"""Whole-model training steps (forward, backward, AdamW) with LayerNorm, Derf and Derf + DerfLinear.

Models (random init, nothing downloaded):
- a timm ViT: ViT-S/16 at batch 4 on CPU, ViT-B/16 at batch 128 under bf16 autocast on GPU;
- a GPT-2-small-shaped stack of ``pyops.models.GPTBlock`` (12 x 768, 12 heads; CPU: batch 1 x 256 tokens,
  GPU: batch 8 x 1024 tokens, bf16 autocast).

Variants (the model's norms): "LayerNorm eager", "LayerNorm torch.compile", "Derf eager-composed" (Derf through
torch ops: pyops' float64-capable reference backend), "pyops Derf", "pyops Derf + DerfLinear" (each Derf fused with
the Linear it feeds: attn.qkv, mlp.fc1) and the compiled pyops variants. The timed call is one optimizer step
(zero_grad, forward, mean-squared loss, backward, AdamW). Notes give each variant's saved-activation bytes per
step (tensors autograd keeps for the backward, parameters excluded), the quantity DerfLinear lowers, and a paired
comparison of the eager variants: their steps interleaved round by round (the order alternating), each round's
step time over LayerNorm eager's in that round, median and p20-p80 of those ratios. Whole steps differ by a few
percent at most, less than a shared machine drifts between the rows' separate timings.
"""

import numpy as np
import torch
from torch import nn

import pyops
from pyops.models import GPTBlock

CPU = {"vit": ("vit_small_patch16_224", 4, 224), "gpt": (12, 768, 12, 1, 256)}
GPU = {"vit": ("vit_base_patch16_224", 128, 224), "gpt": (12, 768, 12, 8, 1024)}
QUICK = {"vit": ("vit_tiny_patch16_224", 2, 32), "gpt": (2, 64, 4, 1, 32)}


def _swap_norms(model: nn.Module, make) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, (nn.LayerNorm, pyops.Derf)):
            setattr(model, name, make(child))
        else:
            _swap_norms(child, make)
    return model


def _layernorm(model: nn.Module) -> nn.Module:
    """Every Derf of a pyops block -> nn.LayerNorm of its width (GPT-2's norm)."""
    def make(m):
        if isinstance(m, nn.LayerNorm):
            return m
        width = m.weight.numel()
        return nn.LayerNorm(width, device=m.weight.device, dtype=m.weight.dtype)
    return _swap_norms(model, make)


def build(kind: str, sizes, variant: str, device):
    """(model, input batch, target) of a model kind with a norm variant."""
    torch.manual_seed(0)
    if kind == "vit":
        import timm

        name, batch, img = sizes["vit"]
        model = timm.create_model(name, pretrained=False, img_size=img, num_classes=100)
        x = torch.randn(batch, 3, img, img)
        target = torch.randn(batch, 100)
        if variant.startswith("LayerNorm"):
            pass
        else:
            pyops.convert_to_derf(model)
    else:
        layers, dim, heads, batch, tokens = sizes["gpt"]
        model = nn.Sequential(*[GPTBlock(dim, heads) for _ in range(layers)])
        x = torch.randn(batch, tokens, dim)
        target = torch.randn(batch, tokens, dim)
        if variant.startswith("LayerNorm"):
            _layernorm(model)
    if variant.startswith("Derf eager-composed"):
        pyops.models.set_backend(model, "torch")
    if "DerfLinear" in variant:
        pyops.fuse_derf_linear(model)
    return model.to(device), x.to(device), target.to(device)


VARIANTS = ("LayerNorm eager", "LayerNorm torch.compile", "Derf eager-composed", "pyops Derf",
            "pyops Derf + DerfLinear", "pyops Derf torch.compile", "pyops Derf + DerfLinear torch.compile")


def _step_fn(model, x, target, compiled: bool, autocast: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = forward(x)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        return loss

    return step, forward


def saved_activation_bytes(model, forward, x, autocast: bool) -> int:
    """Bytes of the distinct tensors autograd saves in one forward, parameters excluded."""
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            forward(x)
    return sum(seen.values())


def run(ctx):
    rows = []
    cuda = ctx.device.type == "cuda"
    sizes = QUICK if ctx.quick else GPU if cuda else CPU
    autocast = cuda and not ctx.quick
    if not hasattr(pyops, "fuse_derf_linear"):
        ctx.fail("models", RuntimeError("pyops.fuse_derf_linear is missing"))
        return rows
    for kind in ("gpt", "vit"):
        label = sizes[kind][0] if kind == "vit" else "GPT-2-small stack" if not ctx.quick else "GPT stack"
        for variant in VARIANTS:
            try:
                torch._dynamo.reset()
                model, x, target = build(kind, sizes, variant, ctx.device)
                step, forward = _step_fn(model, x, target, "compile" in variant, autocast)
                step()  # warm-up: lazy init, optimizer state, compilation
                rows.append(ctx.record("models", variant, "train step", "model", label, step,
                                       extra={"dtype": "bf16 autocast" if autocast else "fp32"}))
                if "compile" not in variant:  # hooks see the compiled graph's saved tensors differently
                    saved = saved_activation_bytes(model, forward, x, autocast)
                    ctx.note(f"{label}, {variant}: {saved / 2**20:.1f} MiB of saved activations per step")
                del model, x, target
                if cuda:
                    torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001  (report it, go on with the other variants)
                ctx.fail(f"models: {label} {variant}", e, ours=variant.startswith("pyops"))
        try:
            _paired_ratios(ctx, kind, label, sizes, autocast)
        except Exception as e:  # noqa: BLE001
            ctx.fail(f"models: {label} paired comparison", e)
    return rows


PAIRED = ("LayerNorm eager", "pyops Derf", "pyops Derf + DerfLinear")


def _paired_ratios(ctx, kind, label, sizes, autocast):
    """The eager variants' steps interleaved (see the module docstring); notes the ratios to LayerNorm eager."""
    steps = {}
    for variant in PAIRED:
        model, x, target = build(kind, sizes, variant, ctx.device)
        steps[variant] = _step_fn(model, x, target, False, autocast)[0]
        steps[variant]()  # warm-up
    rounds = 2 if ctx.quick else 12
    times = ctx.time_rounds(steps, rounds)
    base = np.array(times[PAIRED[0]])
    for v in PAIRED[1:]:
        p20, p50, p80 = np.quantile(np.array(times[v]) / base, (0.2, 0.5, 0.8))
        ctx.note(f"{label}, {v} / LayerNorm eager, paired over {rounds} interleaved rounds: {p50:.3f}x "
                 f"(p20-p80 {p20:.3f}-{p80:.3f})")
