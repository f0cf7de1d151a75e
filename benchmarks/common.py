"""Shared benchmark harness: timing, the device's copy bandwidth, peak memory, and the result files.

Every ``bench_<op>.py`` gets a :class:`Context` and returns rows made by :meth:`Context.record`. A row has
the columns of Liger-Kernel's ``all_benchmark_data.csv`` (kernel_name, kernel_provider,
kernel_operation_mode, metric_name, metric_unit, x_name, x_value, y_value_50/20/80, extra config) plus what
a kernel engineer asks next: time relative to our best backend, GB/s and its fraction of the copy bandwidth
measured in the same run (memory-bound ops), TFLOP/s and its fraction of the matmul rate measured in the same
run (matmul-bound ops), peak memory, and agreement with an exact result where the op may differ from it.
"""

import csv
import datetime
import io
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
QUANTILES = (0.5, 0.2, 0.8)  # median first, then the 20th and 80th percentiles (as Liger reports them)
OURS = "pyops"  # providers named "pyops-<backend>" are ours; the others are peers

# CPU timing: warm up, then repeat for this many seconds per measurement (at least CPU_MIN_REPS times).
# 1.5 s keeps the full CPU suite at a few minutes on 2 cores.
CPU_BUDGET_S, CPU_BUDGET_QUICK_S, CPU_MIN_REPS, CPU_MAX_REPS = 1.5, 0.05, 3, 200
GPU_REP_MS, GPU_REP_QUICK_MS = 200, 20  # do_bench's time budget per measurement


def device_info(device: torch.device) -> Dict[str, str]:
    """Name, one-line description and file-name slug of the device."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name = p.name
        desc = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        name = _cpu_model()
        desc = f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    clean = re.sub(r"\((R|TM)\)|\bCPU\b|@.*", "", name, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", clean.lower()).strip("-")
    return {"type": device.type, "name": name, "description": desc,
            "slug": slug if device.type == "cuda" else f"cpu-{slug}"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """HEAD's commit, with "-dirty" when tracked files differ from it; None outside a git checkout.
    $PYOPS_GIT_COMMIT overrides it: a lent GPU machine gets a copy of the working tree whose git metadata
    can lag behind the commit that was sent."""
    if os.environ.get("PYOPS_GIT_COMMIT"):
        return os.environ["PYOPS_GIT_COMMIT"]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never let git refresh the index

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_seconds() -> Optional[Tuple[float, float]]:
    """(CPU seconds all cores spent busy since boot, CPU seconds of this process and its children); None
    where /proc/stat is missing."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    t = os.times()
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return busy, t.user + t.system + t.children_user + t.children_system


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Context:
    """What a benchmark module needs: the device, the timer, the ceiling, and where notes go."""

    device: torch.device
    quick: bool = False
    copy_gbps: float = float("nan")
    matmul_rates: Dict[torch.dtype, float] = field(default_factory=dict)  # TFLOP/s, measured on first use
    op: str = ""  # the op being benchmarked: notes and failures are filed under it
    notes: Dict[str, List[str]] = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)
    started: Tuple[float, Optional[Tuple[float, float]]] = field(
        default_factory=lambda: (time.perf_counter(), _cpu_seconds()))  # for the share of CPU others took

    @classmethod
    def create(cls, device, quick: bool = False) -> "Context":
        ctx = cls(torch.device(device), quick)
        ctx.copy_gbps = ctx.measure_copy_bandwidth()
        return ctx

    def time(self, fn: Callable[[], object]) -> Tuple[float, float, float]:
        """Median, 20th and 80th percentile of fn's time in ms."""
        if self.device.type == "cuda":
            from triton.testing import do_bench

            rep = GPU_REP_QUICK_MS if self.quick else GPU_REP_MS
            return tuple(do_bench(fn, warmup=max(5, rep // 8), rep=rep, quantiles=list(QUANTILES)))
        budget = CPU_BUDGET_QUICK_S if self.quick else CPU_BUDGET_S
        fn()  # warm-up: lazy init, allocator, caches
        times, end = [], time.perf_counter() + budget
        while len(times) < CPU_MIN_REPS or (time.perf_counter() < end and len(times) < CPU_MAX_REPS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return tuple(float(q) for q in np.quantile(np.array(times) * 1e3, QUANTILES))

    def peak_memory_mb(self, fn: Callable[[], object]) -> Optional[float]:
        """Memory fn allocates at its peak above what was in use before it (outputs, saved activations,
        temporaries), in MiB: the CUDA allocator's peak on GPU. On CPU the larger of two lower bounds: the peak
        of torch's live CPU allocations (from the profiler's allocation events; kernels' own C++ scratch is not
        in it) and the growth of the resident set sampled every ms (the process-wide ru_maxrss cannot be reset;
        it misses memory the C heap reuses, and very short spikes)."""
        if self.device.type != "cuda":
            # Two calls: the profiler's own event buffers would count in an RSS sampled around it.
            peaks = [p for p in (_sampled_rss_peak_mb(fn), _cpu_allocator_peak_mb(fn)) if p is not None]
            return max(peaks) if peaks else None
        _sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        _sync(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20

    def time_rounds(self, fns: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, List[float]]:
        """Each fn's time in ms in each of `rounds` rounds that call every fn once, the order alternating: for
        providers whose differences are smaller than the machine's drift between separately timed rows (compare
        per-round ratios)."""
        times = {name: [] for name in fns}
        order = list(fns)
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                _sync(self.device)
                t0 = time.perf_counter()
                fns[name]()
                _sync(self.device)
                times[name].append((time.perf_counter() - t0) * 1e3)
        return times

    def paired_ratio(self, ours: Tuple[str, Callable[[], object]], peer: Tuple[str, Callable[[], object]],
                     rounds: int) -> str:
        """The peer's time over ours per interleaved round (`time_rounds`), as a note's text: median ratio,
        its p20-p80 and both medians."""
        times = self.time_rounds(dict((ours, peer)), rounds)
        mine, theirs = np.array(times[ours[0]]), np.array(times[peer[0]])
        p20, p50, p80 = np.quantile(theirs / mine, (0.2, 0.5, 0.8))
        return (f"{peer[0]} / {ours[0]} paired over {rounds} interleaved rounds: {p50:.2f}x (p20-p80 "
                f"{p20:.2f}-{p80:.2f}); medians {np.median(theirs):.1f} vs {np.median(mine):.1f} ms")

    def measure_copy_bandwidth(self) -> float:
        """GB/s of a large device-to-device tensor copy, counting read + write bytes: the ceiling that
        memory-bound kernels are compared with."""
        nbytes = (32 if self.quick else 1024) * 2**20  # 1 GiB: well past any cache (this CPU's L3 is 260 MiB)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=self.device).uniform_()
        dst = torch.empty_like(src)
        ms = self.time(lambda: dst.copy_(src))[0]
        return 2 * nbytes / (ms * 1e-3) / 1e9

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        """TFLOP/s of a large square torch matmul in dtype: the ceiling matmul-bound kernels are compared with."""
        if dtype not in self.matmul_rates:
            n = 512 if self.quick else 8192 if self.device.type == "cuda" else 2048
            a = torch.randn(n, n, device=self.device).to(dtype)
            b = torch.randn(n, n, device=self.device).to(dtype)
            self.matmul_rates[dtype] = 2 * n**3 / (self.time(lambda: a @ b)[0] * 1e-3) / 1e12
            self.note(f"measured {dtype} matmul rate ({n}^3 torch matmul): {self.matmul_rates[dtype]:.2f} TFLOP/s")
        return self.matmul_rates[dtype]

    def record(self, kernel: str, provider: str, mode: str, x_name: str, x_value, fn: Callable[[], object],
               bytes_moved: Optional[float] = None, extra: Optional[dict] = None, flops: Optional[float] = None,
               matmul_dtype: Optional[torch.dtype] = None, agreement: Optional[float] = None,
               resident_mb: Optional[float] = None) -> dict:
        """Times fn (and its peak memory) and returns one result row. `flops` with `matmul_dtype` adds TFLOP/s
        and its fraction of that dtype's matmul rate; `agreement` is the caller's accuracy figure (0-1);
        `resident_mb` what a model keeps on the device between calls (tables and plots show it when given)."""
        q50, q20, q80 = self.time(fn)
        gbps = bytes_moved / (q50 * 1e-3) / 1e9 if bytes_moved else None
        tflops = flops / (q50 * 1e-3) / 1e12 if flops else None
        row = {"kernel_name": kernel, "kernel_provider": provider, "kernel_operation_mode": mode,
               "metric_name": "speed", "metric_unit": "ms", "x_name": x_name, "x_value": x_value,
               "y_value_50": q50, "y_value_20": q20, "y_value_80": q80, "extra_benchmark_config": extra or {},
               "gbps": gbps, "frac_copy_bw": gbps / self.copy_gbps if gbps else None, "tflops": tflops,
               "frac_matmul": tflops / self.matmul_tflops(matmul_dtype) if tflops and matmul_dtype else None,
               "agreement": agreement, "resident_mb": resident_mb,
               "peak_mem_mb": self.peak_memory_mb(fn), "ratio_to_pyops_best": None}
        print(f"  {kernel} {x_value} {_extra_str(row)} {mode:8s} {provider:14s} {q50:9.3f} ms", file=sys.stderr,
              flush=True)
        return row

    def note(self, msg: str) -> None:
        print(f"note: {msg}", file=sys.stderr, flush=True)
        self.notes.setdefault(self.op, []).append(msg)

    def fail(self, what: str, exc: BaseException, ours: bool = True) -> None:
        """A provider that raised: noted in the results; a failure of ours makes the run exit non-zero."""
        msg = f"{what} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.note(msg)
        if ours:
            self.failures.append(msg)


# ----------------------------------------------------------------------------------------------------------
# Results: ratios, the markdown table, JSON, CSV and plots.


def _sampled_rss_peak_mb(fn: Callable[[], object]) -> Optional[float]:
    if not os.path.exists("/proc/self/statm"):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(0, max(peak[0], rss()) - base) / 2**20


def _cpu_allocator_peak_mb(fn: Callable[[], object]) -> Optional[float]:
    """Peak of the CPU bytes torch allocates while fn runs, less what fn frees of them, from the profiler's
    allocation events (an experimental API: None where this torch lacks it). Frees of memory allocated before fn
    are not seen, so a training step counts its new gradients even where they replace the previous step's."""
    try:
        from torch._C._profiler import _EventType

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                events.append((node.start_time_ns, node.extra_fields.alloc_size))  # frees are negative
    except (ImportError, AttributeError, RuntimeError):
        return None
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak / 2**20


def _extra_str(row) -> str:
    return " ".join(str(v) for k, v in row["extra_benchmark_config"].items() if k == "dtype")


def _case(row) -> tuple:
    """Rows of the same case (kernel, size, config, mode) compare with each other."""
    return (row["kernel_name"], str(row["x_value"]), json.dumps(row["extra_benchmark_config"], sort_keys=True),
            row["kernel_operation_mode"])


def add_ratios(rows: List[dict]) -> None:
    """ratio_to_pyops_best = a row's median time / the fastest pyops backend's on the same case
    (> 1: pyops is that many times faster)."""
    best: Dict[tuple, float] = {}
    for r in rows:
        if r["kernel_provider"].startswith(OURS):
            best[_case(r)] = min(best.get(_case(r), float("inf")), r["y_value_50"])
    for r in rows:
        b = best.get(_case(r))
        r["ratio_to_pyops_best"] = r["y_value_50"] / b if b else None


def _fmt(v, spec: str, none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def markdown_table(rows: List[dict]) -> str:
    from tabulate import tabulate

    matmul = any(r.get("tflops") for r in rows)
    head = ["kernel", "size", "config", "mode", "provider", "median ms", "p20-p80 ms", "time / pyops best"]
    head += ["TFLOP/s", "% matmul", "agree %"] if matmul else ["GB/s", "% copy BW"]
    resident = any(r.get("resident_mb") is not None for r in rows)
    head += ["peak MiB"] + (["resident MiB"] if resident else [])
    body = []
    for r in rows:
        line = [r["kernel_name"], r["x_value"], _extra_str(r), r["kernel_operation_mode"], r["kernel_provider"],
                f"{r['y_value_50']:.4g}", f"{r['y_value_20']:.4g}-{r['y_value_80']:.4g}",
                _fmt(r["ratio_to_pyops_best"], ".2f")]
        if matmul:
            line += [_fmt(r.get("tflops"), ".2f"), _fmt(r.get("frac_matmul") and 100 * r["frac_matmul"], ".0f"),
                     _fmt(r.get("agreement") and 100 * r["agreement"], ".2f")]
        else:
            line += [_fmt(r["gbps"], ".1f"), _fmt(r["frac_copy_bw"] and 100 * r["frac_copy_bw"], ".0f")]
        body.append(line + [_fmt(r["peak_mem_mb"], ".1f")] + ([_fmt(r.get("resident_mb"), ".1f")] if resident else []))
    return tabulate(body, head, tablefmt="github", disable_numparse=True)


def markdown_tables(rows: List[dict]) -> str:
    """One table per op (their ceilings differ: copy bandwidth or matmul rate)."""
    out = []
    for kernel in dict.fromkeys(r["kernel_name"] for r in rows):
        out += [f"### {kernel}", "", markdown_table([r for r in rows if r["kernel_name"] == kernel]), ""]
    return "\n".join(out)


def write_results(rows: List[dict], meta: dict, out_dir: Path, op: str) -> List[Path]:
    """One op's results: <op>.md, .json, .csv and .png in out_dir (results/<device>/), so a run of some ops
    never overwrites another op's files; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def write(name: str, text: str) -> None:
        path = out_dir / name
        tmp = path.with_name(path.name + ".tmp")  # atomic: a reader never sees half a file
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)

    header = [f"# pyops {op} benchmarks: {meta['device']['description']}", "",
              f"- date: {meta['date']}, commit: {meta['git_commit']}, torch {meta['torch']}, "
              f"triton {meta['triton']}, python {meta['python']}",
              f"- measured copy bandwidth (read + write): {meta['copy_gbps']:.1f} GB/s"
              + (" (--quick: tiny sizes, short timings)" if meta["quick"] else ""),
              f"- timing: {meta['timing']}", f"- wall time: {meta['wall_s']:.0f} s; other processes used "
              f"{_fmt(meta['other_cpu_frac'] and 100 * meta['other_cpu_frac'], '.0f')}% of the CPU meanwhile",
              "- time / pyops best: a row's median over the fastest pyops backend's (> 1: pyops is faster); "
              "GB/s counts each tensor pass (x, y, dy, dx) once", ""]
    notes = [f"- {n}" for n in meta["notes"]]
    write(f"{op}.md", "\n".join(header + (["## Notes", ""] + notes + [""] if notes else [])
                                + ["## Results", "", markdown_table(rows) if rows else "(no results)", ""]))
    write(f"{op}.json", json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, (list(rows[0]) if rows else []) + ["device", "timestamp", "git_commit"])
    w.writeheader()
    for r in rows:
        w.writerow({**r, "extra_benchmark_config": json.dumps(r["extra_benchmark_config"]),
                    "device": meta["device"]["name"], "timestamp": meta["date"], "git_commit": meta["git_commit"]})
    write(f"{op}.csv", buf.getvalue())
    if rows:
        plot(op, rows, meta, out_dir / f"{op}.png")
        paths.append(out_dir / f"{op}.png")
    return paths


def plot(kernel: str, rows: List[dict], meta: dict, path: Path) -> None:
    """One row of panels per mode: median time (log scale), % of the ceiling (matmul rate for matmul-bound
    ops, else copy bandwidth) and, for rows that report it, the memory resident on the device; a bar per
    provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["kernel_operation_mode"] for r in rows))
    providers = list(dict.fromkeys(r["kernel_provider"] for r in rows))
    label = lambda r: f"{r['x_value']}\n{_extra_str(r)}"
    cases = list(dict.fromkeys(label(r) for r in rows))
    resident = any(r.get("resident_mb") is not None for r in rows)
    panels = 3 if resident else 2
    fig, axes = plt.subplots(len(modes), panels, figsize=(panels * max(6, 0.9 * len(cases)), 3.2 * len(modes)),
                             squeeze=False)
    width = 0.8 / len(providers)
    matmul = any(r.get("tflops") for r in rows)
    frac, ceiling = ("frac_matmul", "matmul rate") if matmul else ("frac_copy_bw", "copy bandwidth")
    for i, mode in enumerate(modes):
        for k, prov in enumerate(providers):
            got = {label(r): r for r in rows if r["kernel_operation_mode"] == mode and r["kernel_provider"] == prov}
            xs = [j + (k - (len(providers) - 1) / 2) * width for j, c in enumerate(cases) if c in got]
            axes[i, 0].bar(xs, [got[c]["y_value_50"] for c in cases if c in got], width, label=prov)
            axes[i, 1].bar(xs, [100 * (got[c].get(frac) or 0) for c in cases if c in got], width, label=prov)
            if resident:
                axes[i, 2].bar(xs, [got[c].get("resident_mb") or 0 for c in cases if c in got], width, label=prov)
        axes[i, 0].set(title=f"{kernel} {mode}: median ms (lower is better)", yscale="log")
        axes[i, 1].set(title=f"{kernel} {mode}: % of measured {ceiling} (higher is better)")
        if resident:
            axes[i, 2].set(title=f"{kernel} {mode}: MiB resident on the device", yscale="log")
        for ax in axes[i]:
            ax.set_xticks(range(len(cases)), cases, fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{kernel} on {meta['device']['description']} ({meta['date']})", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)


def metadata(ctx: Context, op: str, wall_s: float) -> dict:
    """The run's facts for one op's result files (its notes: the op's own plus the run-wide ones)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    timing = (f"triton.testing.do_bench, rep={GPU_REP_QUICK_MS if ctx.quick else GPU_REP_MS} ms"
              if ctx.device.type == "cuda" else
              f"warm-up call, then repeats for {CPU_BUDGET_QUICK_S if ctx.quick else CPU_BUDGET_S} s "
              f"(at least {CPU_MIN_REPS}); median and p20/p80")
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    (t0, cpu0), cpu1, other = ctx.started, _cpu_seconds(), None
    if cpu0 and cpu1:
        # CPU time the whole machine spent busy, less ours: the share other work took while we were timing.
        others_s = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
        other = max(0.0, others_s) / ((os.cpu_count() or 1) * (time.perf_counter() - t0))
    return {"device": device_info(ctx.device), "date": date, "git_commit": git_commit(), "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(), "copy_gbps": ctx.copy_gbps,
            "quick": ctx.quick, "timing": timing,
            "wall_s": wall_s, "other_cpu_frac": other, "notes": ctx.notes.get("", []) + ctx.notes.get(op, []) + (
                [f"other processes used {100 * other:.0f}% of the CPU during the run: CPU timings are skewed"]
                if other and other > 0.1 and ctx.device.type == "cpu" else []),
            "failures": [f for f in ctx.failures if f.startswith(op)]}
