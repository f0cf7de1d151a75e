"""Nearest-code search (VQ top-1, D = 1536): pyops' backends against the ways people search today.

Peers: torch chunked matmul + argmin (what vector-quantize-pytorch and most tokenizers do, minus the N x K
matrix in one piece), the same under torch.compile, torch.cdist + argmin where N x K fits, FAISS's exact flat
index (faiss-cpu; faiss-gpu when importable), and vector-quantize-pytorch's VectorQuantize forward (eval mode,
our codebook loaded), which also builds the quantized output. `pyops.VQIndex` and FAISS's indexes are built
once outside the timing, as their users do; their build times are rows of their own (mode "build"). Mode
"top-1 ip" compares the inner-product searches (FAISS IndexFlatIP). On CPU the notes give the machine's
limits measured in the same run (streaming read GB/s, int8 VNNI and AMX peaks: `pyops::_cpu_limits`) and what
they mean for each case: the time to read the packed int8 codebook once, and the int8 compute time. TFLOP/s
counts 2*N*K*D; "% matmul" is that over the rate of a large torch matmul in the search dtype measured in the
same run; "agree %" is top-1 agreement with an fp32 brute-force search. GPU runs in bf16 (the VQRAE training
dtype), CPU in fp32.
"""

import importlib

import torch

import pyops

DIM = 1536
# (N, K): a training batch of 65,536 tokens and one 256-token image, against 16k to 262k codes.
GPU_CASES = [(65536, 16384), (65536, 65536), (65536, 262144), (256, 16384), (256, 65536), (256, 262144),
             (16, 262144)]  # small N: what a prepared index saves
CPU_CASES = [(4096, 16384), (256, 65536), (256, 262144)]  # the shapes (prepared-index targets)
QUICK_CASES, QUICK_DIM = [(64, 512)], 64
OUR_BACKENDS = ("cuda", "triton", "cpu")


def _workspace_rows(num_codes: int, cuda: bool) -> int:
    """Rows per chunk for the torch peers: [rows, K] fp32 scores within 1 GiB (GPU) or 256 MiB (CPU)."""
    return max(1, ((1 << 30) if cuda else (256 << 20)) // (4 * num_codes))


def torch_chunked(x, codebook, c2, rows):
    """argmin_j ||c_j||^2 - 2 x.c_j, a chunk of rows at a time: the usual PyTorch VQ search."""
    return torch.cat([(c2 - 2 * (xb @ codebook.T).float()).argmin(1) for xb in x.split(rows)])


def _faiss(cuda: bool):
    try:
        faiss = importlib.import_module("faiss")
    except ImportError:
        return None, "faiss is not installed (pip install faiss-cpu)"
    if not cuda:
        _faiss_blas_note(faiss)
    if cuda and not hasattr(faiss, "StandardGpuResources"):
        return None, "faiss-gpu skipped: the installed faiss has no GPU support (no faiss-gpu wheel was carried)"
    return faiss, None


_FAISS_NOTES: list = []  # the FAISS BLAS note, made once per run and filed by run()


def _faiss_blas_note(faiss) -> None:
    """Which sgemm FAISS runs on: its wheel bundles OpenBLAS 0.3.15, which picks its kernels from the CPU model.
    Forcing that OpenBLAS's generic kernels (OPENBLAS_CORETYPE=Prescott) made IndexFlatL2 at 4096 x 16384 3.9x
    slower here (2362 against 613 ms): about the gap to the 3.1 s that the Nov 24 results show for faiss on a
    machine of this name. The likely cause there: a CPU model the 2021 OpenBLAS does not know, for which it
    falls back to such kernels (not reproducible on this machine, which it runs as SkylakeX). So every run
    records the kernels it got."""
    if _FAISS_NOTES:
        return
    import ctypes
    import glob
    import os

    core = "unknown"
    libs = glob.glob(os.path.join(os.path.dirname(faiss.__file__), "..", "faiss_cpu.libs", "libopenblas*"))
    if libs:
        lib = ctypes.CDLL(libs[0])
        lib.openblas_get_corename.restype = ctypes.c_char_p
        core = lib.openblas_get_corename().decode()
    _FAISS_NOTES.append(f"faiss {faiss.__version__}: {faiss.omp_get_max_threads()} OpenMP threads (all cores), "
                        f"bundled OpenBLAS kernels '{core}' (OPENBLAS_CORETYPE overrides)")


def providers(ctx, n, codebook, builds):
    """name -> factory returning fn(x, codebook) -> top-1 indices [N]. Factories run once per case; index
    build times go to `builds`."""
    num_codes, dim = codebook.shape
    cuda = ctx.device.type == "cuda"
    ours = [b for b in OUR_BACKENDS if b in pyops.available_backends(ctx.device, "vq_search")
            and (b != "triton" or cuda)]
    if not ours:
        ctx.fail("vq", RuntimeError(f"no pyops vq_search backend runs on {ctx.device}"))
    out = {}
    for b in ours:
        out[f"pyops-{b}"] = lambda b=b: lambda x, c: pyops.vq_search(x, c, backend=b)[1][:, 0]
        out[f"pyops-{b} exact"] = lambda b=b: lambda x, c: pyops.vq_search(x, c, exact=True, backend=b)[1][:, 0]
    rows = _workspace_rows(num_codes, cuda)

    def chunked():
        return lambda x, c: torch_chunked(x, c, c.float().pow(2).sum(1), rows)

    def compiled():
        torch._dynamo.reset()
        fn = torch.compile(torch_chunked, dynamic=False)
        return lambda x, c: fn(x, c, c.float().pow(2).sum(1), rows)

    out["torch chunked"], out["torch.compile chunked"] = chunked, compiled
    if n * num_codes * 4 <= ((16 << 30) if cuda else (1 << 30)):
        out["torch cdist"] = lambda: lambda x, c: torch.cdist(x.float(), c.float()).argmin(1)
    out["pyops VQIndex"] = lambda: _index_search(ctx, n, codebook, "l2", builds)
    if not cuda and torch.ops.pyops.cpu_isa() == "amx":  # what a CPU with VNNI but no AMX gets from the index
        out["pyops VQIndex, VNNI only"] = lambda: _at_isa_level("avx512", _index_search(ctx, n, codebook, "l2", []))
    faiss, why = _faiss(cuda)
    if faiss is None:
        ctx.note(why)
    elif not cuda:
        out["faiss IndexFlatL2"] = lambda: _faiss_search(ctx, n, faiss.IndexFlatL2, codebook, builds)
    if n * num_codes * 4 <= ((16 << 30) if cuda else (1 << 30)):
        out["vector-quantize-pytorch"] = lambda: _vqtorch(ctx, codebook)
    else:
        ctx.note(f"vector-quantize-pytorch skipped at N={n}, K={num_codes}: its N x K fp32 distance matrix "
                 f"would take {n * num_codes * 4 / 2**30:.0f} GiB")
    return out


def _index_search(ctx, n, codebook, metric, builds):
    """A VQIndex built once (its build time appended to `builds`); fn(x, c) -> top-1 indices."""
    index = pyops.VQIndex(codebook, metric=metric)
    builds.append(ctx.record("vq", "pyops VQIndex", _build_mode(metric), **_case(n, codebook, metric),
                             fn=lambda: pyops.VQIndex(codebook, metric=metric)))
    return lambda x, c: index.search(x)[1][:, 0]


def _at_isa_level(level, fn):
    """fn run with the CPU kernels at ISA `level` (pyops::cpu_isa), the active level restored after."""
    active = torch.ops.pyops.cpu_isa()

    def at_level(x, c):
        torch.ops.pyops.cpu_isa(level)
        try:
            return fn(x, c)
        finally:
            torch.ops.pyops.cpu_isa(active)
    return at_level


def _faiss_search(ctx, n, index_class, codebook, builds):
    """A FAISS flat index with the codebook added once (add time appended to `builds`); fn(x, c) -> top-1."""
    codes = codebook.float().numpy()

    def build():
        index = index_class(codes.shape[1])
        index.add(codes)
        return index

    index = build()
    metric = "ip" if "IP" in index_class.__name__ else "l2"
    builds.append(ctx.record("vq", f"faiss {index_class.__name__}", _build_mode(metric),
                             **_case(n, codebook, metric), fn=build))
    return lambda x, c: torch.from_numpy(index.search(x.float().numpy(), 1)[1][:, 0])


def _build_mode(metric):
    return "build" if metric == "l2" else f"build {metric}"


def _case(n, codebook, metric):
    num_codes, dim = codebook.shape
    return dict(x_name="N x K", x_value=f"{n}x{num_codes}", extra={
        "N": n, "K": num_codes, "D": dim, "metric": metric, "dtype": str(codebook.dtype).replace("torch.", "")})


def _ip_providers(ctx, n, codebook, builds):
    """The inner-product searches: pyops' index and vq_search against FAISS IndexFlatIP (CPU)."""
    out = {"pyops VQIndex": lambda: _index_search(ctx, n, codebook, "ip", builds),
           "pyops-cpu": lambda: lambda x, c: pyops.vq_search(x, c, metric="ip")[1][:, 0]}
    faiss, _ = _faiss(False)
    if faiss is not None:
        out["faiss IndexFlatIP"] = lambda: _faiss_search(ctx, n, faiss.IndexFlatIP, codebook, builds)
    return out


def _limits_note(ctx, cases, dim, read_bytes):
    """The CPU's measured limits, and what they mean for each case (see the module docstring)."""
    read_gbps, vnni_tops, amx_tops = torch.ops.pyops._cpu_limits(torch.ones(read_bytes, dtype=torch.uint8))
    int8_tops = amx_tops or vnni_tops
    ctx.note(f"machine limits ({torch.get_num_threads()} threads, `pyops::_cpu_limits`): streaming read "
             f"{read_gbps:.1f} GB/s, int8 VNNI {vnni_tops:.2f} TOPS, AMX {amx_tops:.2f} TOPS (0: not available)")
    for n, num_codes in cases:
        packed_mb = num_codes * -(-dim // 64) * 64 / 1e6
        read_ms = packed_mb / 1e3 / read_gbps * 1e3 if read_gbps else float("nan")
        compute_ms = 2 * n * num_codes * dim / (int8_tops * 1e12) * 1e3 if int8_tops else float("nan")
        ctx.note(f"{n}x{num_codes}: one read of the {packed_mb:.0f} MB packed int8 codebook takes {read_ms:.1f} ms; "
                 f"the int8 products at the peak take {compute_ms:.1f} ms; the search's floor is the larger")


# The targets compare a prepared index with FAISS's (CPU): ours first, then the peer.
PAIRED = {"top-1": ("pyops VQIndex", "faiss IndexFlatL2"), "top-1 ip": ("pyops VQIndex", "faiss IndexFlatIP")}


def _paired_notes(ctx, size, made, x, codebook):
    """The index and FAISS interleaved call by call (`ctx.paired_ratio`): their ratio free of the VM's drift
    between separately timed rows (on a 2-core EPYC VM one row's median was 1.9x its value in a quiet run)."""
    rounds = 2 if ctx.quick else 7  # faiss takes up to ~1.6 s a call at 256 x 262,144
    for mode, names in PAIRED.items():
        if all((mode, name) in made for name in names):
            calls = [(name, lambda fn=made[mode, name]: fn(x, codebook)) for name in names]
            ctx.note(f"{size} {mode}: {ctx.paired_ratio(*calls, rounds)}")


def _vqtorch(ctx, codebook):
    from vector_quantize_pytorch import VectorQuantize

    vq = VectorQuantize(dim=codebook.shape[1], codebook_size=codebook.shape[0]).to(ctx.device).eval()
    vq._codebook.embed.copy_(codebook.float()[None])

    def fn(x, c):
        with torch.no_grad():
            return vq(x[None])[1][0]

    return fn


def run(ctx):
    cuda = ctx.device.type == "cuda"
    cases = QUICK_CASES if ctx.quick else GPU_CASES if cuda else CPU_CASES
    dim = QUICK_DIM if ctx.quick else DIM
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        _limits_note(ctx, cases, dim, (64 if ctx.quick else 1024) << 20)
        faiss, _ = _faiss(False)
        for note in _FAISS_NOTES if faiss is not None else ():
            ctx.note(note)
    rows = []
    for n, num_codes in cases:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, dim, generator=g).to(ctx.device, dtype)
        codebook = torch.randn(num_codes, dim, generator=g).to(ctx.device, dtype)
        exact = torch_chunked(x.float(), codebook.float(), codebook.float().pow(2).sum(1),
                              _workspace_rows(num_codes, cuda))  # fp32 brute force: the agreement reference
        case = dict(x_name="N x K", x_value=f"{n}x{num_codes}",
                    extra={"N": n, "K": num_codes, "D": dim, "dtype": str(dtype).replace("torch.", "")})
        builds, made = [], {}  # made: (mode, provider) -> the search fn of PAIRED's providers
        searches = [("top-1", exact, name, make) for name, make in providers(ctx, n, codebook, builds).items()]
        if not cuda:
            exact_ip = torch.cat([(xb @ codebook.T).argmax(1) for xb in x.split(_workspace_rows(num_codes, False))])
            searches += [("top-1 ip", exact_ip, name, make)
                         for name, make in _ip_providers(ctx, n, codebook, builds).items()]
        for mode, reference, name, make in searches:
            try:
                fn = make()
                if name in PAIRED.get(mode, ()):
                    made[mode, name] = fn
                agreement = (fn(x, codebook).to(reference.device) == reference).float().mean().item()
                rows.append(ctx.record("vq", name, mode, fn=lambda: fn(x, codebook),  # noqa: F821
                                       flops=2 * n * num_codes * dim,
                                       matmul_dtype=dtype, agreement=agreement, **case))
            except torch.OutOfMemoryError as e:
                ctx.note(f"vq {case['x_value']} {name}: out of memory ({str(e).splitlines()[0][:80]})")
            except Exception as e:  # noqa: BLE001  (one broken provider must not hide the others)
                ctx.fail(f"vq {case['x_value']} {name}", e, ours=name.startswith("pyops"))
            if cuda:
                torch.cuda.empty_cache()
        rows += builds
        if not cuda:
            _paired_notes(ctx, case["x_value"], made, x, codebook)
        del x, codebook, exact, made  # the timed lambdas above are done with them
    return rows
