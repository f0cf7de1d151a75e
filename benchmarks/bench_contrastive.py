"""Contrastive loss (CLIP's symmetric InfoNCE), forward + backward, and attribute retrieval.

Loss peers, all on the same normalised embeddings, logit_scale = 1/0.07 with a gradient: naive torch (logits =
s * q @ k.T, then (CE(logits) + CE(logits.T)) / 2: what most training scripts do), the same under
torch.compile, open_clip's ``ClipLoss``, Inf-CL (``inf_cl.cal_inf_loss``, one direction per call, so two calls;
it runs its Triton kernels in fp32) and Liger's fused linear cross-entropy used as one InfoNCE direction (two
calls). Inf-CL and Liger need a GPU. "agree %" is 100 x (1 - the loss value's relative error against
float64), where float64 fits. "peak MiB" is the memory the step allocates above its inputs (the logits and all
they imply: the point of a tiled loss). "TFLOP/s" counts 12 N M D, the work of the two-pass tiled design
(Inf-CL's), so "% matmul" >= 67% means "within 1.5x of 12 N^2 D at the measured matmul rate" (issue 14's GPU
target); naive torch does 6 N M D and pyops' CPU/CUDA backends 8 N M D. OOM is reported as a note.

Retrieval rows come from benchmarks/contrastive_retrieval.py.
"""

import importlib

import torch
import torch.nn.functional as F

import pyops

# (N = M, D). GPU: bf16 up to the 262k batch; CPU: fp32, the 8,192 x 768 speed case and the 32,768 x 256
# memory case (where the naive logits alone take 4 GiB).
GPU_CASES = [(4096, 768), (16384, 768), (65536, 768), (262144, 768), (4096, 4096), (16384, 4096), (65536, 4096)]
CPU_CASES = [(2048, 768), (8192, 768), (32768, 256)]
QUICK_CASES = [(128, 32)]
LOGIT_SCALE = 1 / 0.07
NAIVE_LIMIT_BYTES = {"cpu": 6 << 30, "cuda": 100 << 30}  # ~4 N x N logits-sized buffers must fit


def naive(q, k, s):
    logits = s * q @ k.T
    labels = torch.arange(q.shape[0], device=q.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _step(loss_fn):
    """fn(q, k, s) -> the gradients of loss_fn for q, k and s: one training step's loss work."""
    return lambda q, k, s: torch.autograd.grad(loss_fn(q, k, s), (q, k, s))


def providers(ctx, n, dim, dtype):
    """name -> factory returning the loss function (q, k, s) -> 0-d loss. Factories run once per case."""
    cuda = ctx.device.type == "cuda"
    out = {}
    for b in pyops.available_backends(ctx.device, "contrastive_fwd"):
        if b != "torch" and (b != "triton" or cuda):
            out[f"pyops-{b}"] = lambda b=b: lambda q, k, s: pyops.contrastive_loss(q, k, s, backend=b)
    logits_bytes = n * n * torch.finfo(dtype).bits // 8
    if 4 * logits_bytes <= NAIVE_LIMIT_BYTES[ctx.device.type]:
        out["torch eager"] = lambda: naive

        def compiled():
            torch._dynamo.reset()
            return torch.compile(naive, dynamic=False)

        out["torch.compile"] = compiled
        out["open_clip ClipLoss"] = lambda: _open_clip(ctx)
    else:
        ctx.note(f"contrastive N={n}: naive torch, torch.compile and open_clip skipped: their N x N logits take "
                 f"{logits_bytes / 2**30:.0f} GiB each and the step holds several")
    if cuda:
        out["Inf-CL"] = lambda: _inf_cl(ctx, dim)
        out["Liger FLCE x2"] = lambda: _liger(ctx)
    return out


def _open_clip(ctx):
    try:
        from open_clip.loss import ClipLoss
    except ImportError as e:
        raise _Skip(f"open_clip is not installed ({e}); pip install open_clip_torch") from e
    loss = ClipLoss()
    return lambda q, k, s: loss(q, k, s)


def _inf_cl(ctx, dim):
    try:
        from inf_cl import cal_inf_loss
    except ImportError as e:
        raise _Skip(f"Inf-CL is not installed ({e}); pip install inf-cl") from e
    head = 256 if dim % 256 == 0 else 128  # its kernels split D into heads of 16-256
    return lambda q, k, s: (cal_inf_loss(q, k, scale=s, head_dim=head) + cal_inf_loss(k, q, scale=s,
                                                                                       head_dim=head)) / 2


def _liger(ctx):
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as e:
        raise _Skip(f"liger-kernel is not installed ({e}); pip install liger-kernel") from e
    flce = LigerFusedLinearCrossEntropyLoss()

    def fn(q, k, s):
        labels = torch.arange(q.shape[0], device=q.device)
        return (flce(k, s * q, labels) + flce(q, s * k, labels)) / 2  # rows, then columns as rows

    return fn


class _Skip(Exception):
    """A peer that is not installed: a note, not a failure."""


def run(ctx):
    cuda = ctx.device.type == "cuda"
    cases = QUICK_CASES if ctx.quick else GPU_CASES if cuda else CPU_CASES
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for n, dim in cases:
        g = torch.Generator().manual_seed(0)
        q = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(ctx.device, dtype).requires_grad_()
        k = F.normalize(q.detach().float().cpu() + 0.5 * torch.randn(n, dim, generator=g), dim=1)
        k = k.to(ctx.device, dtype).requires_grad_()
        s = torch.tensor(LOGIT_SCALE, device=ctx.device, requires_grad=True)
        with torch.no_grad():
            exact = naive(q.double(), k.double(), s.double()).item() if 4 * n * n * 8 <= (4 << 30) else None
        case = dict(x_name="N x D", x_value=f"{n}x{dim}",
                    extra={"N": n, "D": dim, "dtype": str(dtype).replace("torch.", "")})
        for name, make in providers(ctx, n, dim, dtype).items():
            try:
                loss_fn = make()
                if exact is not None:  # agreement: 1 - relative error of the loss value against float64
                    got = loss_fn(q, k, s).item()
                    case["agreement"] = max(0.0, 1 - abs(got - exact) / abs(exact))
                else:
                    case.pop("agreement", None)
                fn = _step(loss_fn)
                rows.append(ctx.record("contrastive", name, "fwd+bwd", fn=lambda: fn(q, k, s),  # noqa: F821
                                       flops=12 * n * n * dim, matmul_dtype=dtype, **case))
            except _Skip as e:
                ctx.note(str(e))
            except torch.OutOfMemoryError as e:
                ctx.note(f"contrastive {case['x_value']} {name}: out of memory ({str(e).splitlines()[0][:80]})")
            except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                ctx.fail(f"contrastive {case['x_value']} {name}", e, ours=name.startswith("pyops"))
            if cuda:
                torch.cuda.empty_cache()
        del q, k, s
    try:
        retrieval = importlib.import_module("contrastive_retrieval")
    except ImportError as e:
        ctx.fail("contrastive retrieval", e)
        return rows
    return rows + retrieval.run(ctx)
