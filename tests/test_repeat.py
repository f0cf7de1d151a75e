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


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("pyops")])
def test_no_memory_growth(name):
    fn, leaves = CASES[name]

    def call():
        out = fn()
        if leaves:
            torch.autograd.grad(out.sum(), leaves, allow_unused=True)

    for _ in range(WARMUP):
        call()
    before = _rss_mib()
    for _ in range(CALLS):
        call()
    growth = _rss_mib() - before
    assert growth < BOUND_MIB, f"{name}: resident memory grew {growth:.1f} MiB over {CALLS} calls"
