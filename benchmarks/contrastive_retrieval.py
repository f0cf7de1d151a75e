"""Embedding retrieval (cosine top-10, D = 768): pyops.retrieve against the ways people search a bank today.

Called by bench_contrastive.py (this module has no bench_ prefix, so run.py does not run it twice).

Peers: torch normalise + matmul + topk, a chunk of queries at a time so the Q x B score block stays within
1 GiB (GPU) / 256 MiB (CPU), and FAISS's exact inner-product index (IndexFlatIP; faiss-gpu's GpuIndexFlatIP
when importable). The peers get the bank normalised once outside the timing (an index build); pyops.retrieve
runs both ways: cosine on the raw bank (normalising its rows on the fly in every call) and "ip" on the
pre-normalised bank. TFLOP/s counts 2*Q*B*D; the agreement column is recall@10 against a torch fp32 search of
the same (stored) values. GPU runs in bf16, CPU in fp32.
"""


import torch
import torch.nn.functional as F
from bench_vq import _faiss

import pyops

KERNEL = "retrieve"
DIM, TOP_K = 768, 10
GPU_BANK, GPU_QUERIES = 10**6, (1, 256, 4096)
CPU_BANK, CPU_QUERIES = 10**5, (1, 256)  # 2 cores: Q = 4096 would take ~6 s per call
QUICK_BANK, QUICK_QUERIES, QUICK_DIM = 2000, (1, 16), 64
OUR_BACKENDS = ("cuda", "triton", "cpu")


def _chunk_rows(bank_rows: int, cuda: bool) -> int:
    return max(1, ((1 << 30) if cuda else (256 << 20)) // (4 * bank_rows))


def torch_topk(queries, bank_n, k, rows):
    """Cosine top-k with a pre-normalised bank: normalise the queries, matmul, topk, a chunk at a time."""
    out_d, out_i = [], []
    for qb in queries.split(rows):
        scores = F.normalize(qb, dim=1) @ bank_n.T
        s, i = scores.float().topk(k, dim=1)
        out_d.append(1 - s)
        out_i.append(i)
    return torch.cat(out_d), torch.cat(out_i)


def providers(ctx, bank, bank_n):
    """name -> factory returning fn(queries) -> top-k indices (Q, k). Factories run once per case."""
    cuda = ctx.device.type == "cuda"
    ours = [b for b in OUR_BACKENDS if b in pyops.available_backends(ctx.device, "vq_search")
            and (b != "triton" or cuda)]
    if not ours:
        ctx.fail(KERNEL, RuntimeError(f"no pyops vq_search backend runs on {ctx.device}"))
    out = {}
    for b in ours:
        out[f"pyops-{b}"] = lambda b=b: lambda q: pyops.retrieve(q, bank, TOP_K, backend=b)[1]
        out[f"pyops-{b} exact"] = lambda b=b: lambda q: pyops.retrieve(q, bank, TOP_K, exact=True, backend=b)[1]
        # With the peers' pre-normalised bank, "ip" ranks as cosine (|q| is constant per query), without the
        # per-call pass over the bank for its norms.
        out[f"pyops-{b} ip, normalised bank"] = (
            lambda b=b: lambda q: pyops.retrieve(q, bank_n, TOP_K, metric="ip", backend=b)[1])
    # The bank prepared once (built outside the timing, like the peers' normalised bank and FAISS index).
    out["pyops VQIndex bank"] = lambda: (lambda index: lambda q: pyops.retrieve(q, index, TOP_K)[1])(
        pyops.VQIndex(bank, metric="cosine"))
    rows = _chunk_rows(bank.shape[0], cuda)
    out["torch normalise+matmul+topk"] = lambda: lambda q: torch_topk(q, bank_n, TOP_K, rows)[1]
    faiss, why = _faiss(cuda)
    if faiss is None:
        ctx.note(why)
    else:
        def flat():
            # Built once outside the timing, as a FAISS user would; FAISS searches fp32 numpy (CPU) arrays.
            data = bank_n.float()
            if cuda:
                res = faiss.StandardGpuResources()
                index = faiss.GpuIndexFlatIP(res, data.shape[1])
                index.add(data.cpu().numpy())
                return lambda q: torch.from_numpy(index.search(F.normalize(q.float(), dim=1).cpu().numpy(), TOP_K)[1])
            index = faiss.IndexFlatIP(data.shape[1])
            index.add(data.numpy())
            return lambda q: torch.from_numpy(index.search(F.normalize(q.float(), dim=1).numpy(), TOP_K)[1])

        out["faiss IndexFlatIP" + (" (GPU)" if cuda else "")] = flat
    return out


def recall(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Fraction of the reference top-k found anywhere in the returned top-k."""
    got, ref = got.cpu(), ref.cpu()
    return (got[:, :, None] == ref[:, None, :]).any(1).float().mean().item()


def run(ctx):
    cuda = ctx.device.type == "cuda"
    bank_rows = QUICK_BANK if ctx.quick else GPU_BANK if cuda else CPU_BANK
    queries_list = QUICK_QUERIES if ctx.quick else GPU_QUERIES if cuda else CPU_QUERIES
    dim = QUICK_DIM if ctx.quick else DIM
    dtype = torch.bfloat16 if cuda else torch.float32
    ctx.note(f"{KERNEL}: the agreement column is recall@{TOP_K} against torch fp32 brute force on the same values")
    g = torch.Generator(device=ctx.device).manual_seed(0)
    bank = torch.randn(bank_rows, dim, generator=g, device=ctx.device).to(dtype)
    bank_n = F.normalize(bank.float(), dim=1).to(dtype)  # the peers' index build
    rows = []
    for num_q in queries_list:
        queries = torch.randn(num_q, dim, generator=g, device=ctx.device).to(dtype)
        ref = torch_topk(queries.float(), F.normalize(bank.float(), dim=1), TOP_K,
                         _chunk_rows(bank_rows, cuda))[1]  # fp32 on the stored values: the recall reference
        case = dict(x_name="Q x B", x_value=f"{num_q}x{bank_rows}",
                    extra={"Q": num_q, "B": bank_rows, "D": dim, "k": TOP_K, "dtype": str(dtype).replace("torch.", "")})
        for name, make in providers(ctx, bank, bank_n).items():
            try:
                fn = make()
                rows.append(ctx.record(KERNEL, name, "top-10", fn=lambda: fn(queries),  # noqa: F821
                                       flops=2 * num_q * bank_rows * dim, matmul_dtype=dtype,
                                       agreement=recall(fn(queries), ref), **case))
            except torch.OutOfMemoryError as e:
                ctx.note(f"{KERNEL} {case['x_value']} {name}: out of memory ({str(e).splitlines()[0][:80]})")
            except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                ctx.fail(f"{KERNEL} {case['x_value']} {name}", e, ours=name.startswith("pyops"))
            if cuda:
                torch.cuda.empty_cache()
        del queries, ref
    return rows
