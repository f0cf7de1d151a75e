#!/usr/bin/env python
"""Times the Triton VQ search under several tile settings on the GPU, so `_search_settings` can be chosen from
measurements (bf16, top-1, D = 1536, at the issue's target size N = K = 65,536 unless given).

    python benchmarks/tune_vq_triton.py [N K [--shipped]]     # --shipped: time only what pyops picks
"""

import sys

import torch
import triton.testing

import pyops
from pyops.triton_kernels import vq as tvq

# (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages); None is what `_search_settings` picks.
CONFIGS = [None, (64, 128, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3),
           (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (128, 256, 32, 8, 5), (64, 256, 64, 8, 3)]


def main() -> None:
    n, num_codes = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (65536, 65536)
    configs = CONFIGS[:1] if "--shipped" in sys.argv else CONFIGS
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1536, generator=g).cuda().bfloat16()
    codebook = torch.randn(num_codes, 1536, generator=g).cuda().bfloat16()
    want = pyops.vq_search(x, codebook, backend="triton")[1]
    shipped = tvq._search_settings
    for cfg in configs:
        def settings(n_, k_, kc, dtype, exact, device, cfg=cfg):
            picked = shipped(n_, k_, kc, dtype, exact, device)
            return picked if cfg is None else (*cfg, *picked[5:])
        name = "shipped " + " ".join(map(str, shipped(n, num_codes, 9, x.dtype, False, x.device)[:5])) \
            if cfg is None else "BM={} BN={} BD={} warps={} stages={}".format(*cfg)
        tvq._search_settings = settings
        try:
            same = (pyops.vq_search(x, codebook, backend="triton")[1] == want).float().mean().item()
            ms = triton.testing.do_bench(lambda: pyops.vq_search(x, codebook, backend="triton"), rep=300)
            print(f"triton vq {n}x{num_codes} {name}: {ms:.3f} ms, {2 * n * num_codes * 1536 / ms / 1e9:.0f} "
                  f"TFLOP/s, same top-1 as shipped {same:.5f}", flush=True)
        except Exception as e:  # noqa: BLE001  (a setting that does not fit shared memory or registers)
            print(f"triton vq {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        finally:
            tvq._search_settings = shipped


if __name__ == "__main__":
    main()
