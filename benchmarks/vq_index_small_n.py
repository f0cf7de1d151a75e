# Small-N VQ search on GPU (issue 19: does the prepared index help the Triton search at N = 1..256?), run by
# benchmarks/gpu_run.sh (step "vqindex"): vq_search vs the
# prepared index (bf16 packed), Triton and CUDA, against a bandwidth baseline (torch bf16 matmul + topk).
# At small N the search is bound by one read of its codebook operand: GB/s = K * D * itemsize / time (bf16 2,
# fp32 4; the fp32 vq_search also reads the codebook once more for its norms); H200 HBM peak ~4.8 TB/s.
# cands/row: the Triton re-rank's exact distances per row (splits * (k + 8)), each a D-row gather of the
# codebook: at N >= 64 that traffic rivals the search's, so the profile below splits the time per kernel.
import os

import torch
from triton.testing import do_bench

import pyops  # noqa: F401  (registers the ops)
from pyops.triton_kernels import vq as tk

dev = os.environ.get("DEV", "cuda")
D, KS, NS, PROFILE_NS = 1536, [65536, 262144], [1, 4, 16, 64, 256], [16, 256]
if dev == "cpu":  # dry run under TRITON_INTERPRET=1
    D, KS, NS, PROFILE_NS = 64, [256], [1, 3], []
g = torch.Generator(device=dev).manual_seed(0)
print(f"{'K':>7} {'N':>4} {'impl':<30} {'us':>9} {'GB/s':>7} {'cands/row':>9} top1==exact")
for K in KS:
    c = torch.randn(K, D, device=dev, generator=g)
    cb = c.bfloat16()
    stat = (c.double() ** 2).sum(1).float()  # the l2 stat, as VQIndex prepares it
    empty = c.new_empty(0)
    for N in NS:
        x = torch.randn(N, D, device=dev, generator=g)
        ref = torch.ops.pyops.vq_search_triton(x, c, 1, "l2", True)[1]
        impls = {  # name: (call, bytes per element of the search operand)
            "triton vq_search fp32 (tf32)": (lambda: torch.ops.pyops.vq_search_triton(x, c, 1, "l2", False), 4),
            "triton index bf16": (lambda: torch.ops.pyops.vq_index_search_triton(x, c, cb, stat, 1, "l2"), 2),
            "triton index exact (empty)": (lambda: torch.ops.pyops.vq_index_search_triton(x, c, empty, stat, 1, "l2"),
                                           4),
        }
        if dev == "cuda":
            impls.update({
                "cuda vq_search fp32 (tf32)": (lambda: torch.ops.pyops.vq_search(x, c, 1, "l2", False), 4),
                "cuda index bf16": (lambda: torch.ops.pyops.vq_index_search(x, c, cb, empty, stat, 1, "l2"), 2),
                "torch bf16 mm+topk (baseline)": (
                    lambda: (stat - 2 * (x.bfloat16() @ cb.T).float()).topk(9, dim=1, largest=False), 2),
            })
        for name, (fn, itemsize) in impls.items():
            out = fn()
            agree = "" if name.startswith("torch") else f"{(out[1] == ref).float().mean().item():.3f}"
            us = 1e3 * do_bench(fn, warmup=25, rep=100) if dev == "cuda" else 0.0
            gbs = K * D * itemsize / (us * 1e3) if us else 0.0
            cands = ""
            if name.startswith("triton"):
                dtype = torch.bfloat16 if "bf16" in name else torch.float32
                s = tk._search_settings(N, K, min(K, 1 + tk.RERANK_EXTRA), dtype, "exact" in name, x.device)
                cands = str(s[5] * min(K, 1 + tk.RERANK_EXTRA))
            print(f"{K:>7} {N:>4} {name:<30} {us:9.1f} {gbs:7.0f} {cands:>9} {agree}", flush=True)
        if K == KS[0] and N in PROFILE_NS:  # per-kernel split: search vs re-rank (vs the x conversion)
            from torch.profiler import ProfilerActivity, profile

            for name in ("triton index bf16", "cuda index bf16"):
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(20):
                        impls[name][0]()
                    torch.cuda.synchronize()
                print(f"-- {name}, K={K}, N={N}, 20 calls")
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6))
