#!/usr/bin/env python
"""The benchmark suite (`make bench`): every benchmarks/bench_<op>.py on the best device present.

Prints a markdown table per op and writes benchmarks/results/<device-slug>/<op>.md, .json, .csv and .png
(--quick runs write to <device-slug>-quick/ instead, so they never overwrite a full run; ignored by git).

A new op adds one module, bench_<op>.py, with ``run(ctx: common.Context) -> list[row]``; nothing here changes.

    python benchmarks/run.py                     # everything, on cuda if available else cpu
    python benchmarks/run.py --quick             # tiny sizes, a few seconds (the smoke test)
    python benchmarks/run.py --only derf --device cpu
"""

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Inductor compiles in a pool of background worker processes that outlive the compile; on a small CPU they
# would share the cores with the kernels being timed. Serial compiles only cost compile time.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# The CPU peak-memory measurement (common._cpu_allocator_peak_mb) runs the profiler once per row: errors only.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import common  # noqa: E402
import torch  # noqa: E402

BENCHMARKS = {p.stem[len("bench_"):]: p.stem for p in sorted(HERE.glob("bench_*.py"))}  # op -> module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short timings (smoke test)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="OP",
                        help=f"run only this op (repeatable): {', '.join(sorted(BENCHMARKS))}")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: %(default)s)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU")
    start = time.perf_counter()
    info = common.device_info(device)
    print(f"device: {info['description']}", file=sys.stderr)
    ctx = common.Context.create(device, quick=args.quick)
    print(f"copy bandwidth (read + write): {ctx.copy_gbps:.1f} GB/s", file=sys.stderr)

    out = args.out / (info["slug"] + ("-quick" if args.quick else ""))
    rows, paths = [], []
    for op in args.only or sorted(BENCHMARKS):
        print(f"[{op}]", file=sys.stderr, flush=True)
        ctx.op, t0 = op, time.perf_counter()
        try:
            op_rows = importlib.import_module(BENCHMARKS[op]).run(ctx)
        except Exception as e:  # noqa: BLE001  (report it, run the other ops, exit non-zero)
            traceback.print_exc()
            ctx.fail(op, e)
            op_rows = []
        wall_s = time.perf_counter() - t0
        print(f"[{op}] {wall_s:.0f} s", file=sys.stderr, flush=True)
        # Written after every op, so a run stopped by a time box still leaves the ops it finished.
        common.add_ratios(op_rows)
        paths += common.write_results(op_rows, common.metadata(ctx, op, wall_s), out, op)
        rows += op_rows

    print(f"\n## {info['description']}; copy bandwidth {ctx.copy_gbps:.1f} GB/s\n")
    print(common.markdown_tables(rows) if rows else "(no results)")
    for n in (n for notes in ctx.notes.values() for n in notes):
        print(f"- {n}")
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    sys.exit(main())
