"""Repeat / leak test (issue 16, point 2): thousands of forward+backward calls of every public op at a tiny size
(the cases of benchmarks/bench_overhead.py) must not grow the process's resident memory after a warm-up. A leak
of even 1 KiB per call (a tensor kept alive, a C++ buffer never freed) would add ~10 MiB over the calls."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_overhead  # noqa: E402

CALLS, WARMUP = 10_000, 500
BOUND_MIB = 4.0  # allocator noise after the warm-up stays well below this; a 1 KiB/call leak is 10 MiB
CASES = bench_overhead.cases()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _forward_backward(fn, leaves):
    """One call of a case: its forward, and the backward to its leaves when it has any."""
    def call():
        out = fn()
        if leaves:
            torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return call


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("pyops")])
def test_no_memory_growth(name):
    call = _forward_backward(*CASES[name])
    for _ in range(WARMUP):
        call()
    before = _rss_mib()
    for _ in range(CALLS):
        call()
    growth = _rss_mib() - before
    assert growth < BOUND_MIB, f"{name}: resident memory grew {growth:.1f} MiB over {CALLS} calls"


# GPU: the caching allocator keeps freed blocks, so the process RSS says nothing about device memory; instead
# torch.cuda.memory_allocated (bytes held by live tensors) is sampled and must not grow after the warm-up.
CUDA_CALLS, CUDA_BOUND_MIB = 2_000, 1.0


def _cuda_cases():
    """bench_overhead's cases built on the GPU: its generator and every factory call on cuda."""
    saved = bench_overhead.G
    bench_overhead.G = torch.Generator(device="cuda").manual_seed(0)
    try:
        with torch.device("cuda"):
            return bench_overhead.cases()
    finally:
        bench_overhead.G = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("pyops")])
def test_no_cuda_memory_growth(name):
    call = _forward_backward(*_cuda_cases()[name])
    for _ in range(WARMUP):
        call()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    samples = []
    for i in range(CUDA_CALLS):
        call()
        if i % 500 == 499:
            torch.cuda.synchronize()
            samples.append((torch.cuda.memory_allocated() - before) / 2**20)
    assert max(samples) < CUDA_BOUND_MIB, f"{name}: allocated CUDA memory grew {samples} MiB over {CUDA_CALLS} calls"
