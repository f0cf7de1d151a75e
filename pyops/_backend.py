"""Backend choice shared by every pyops op: "cuda", "triton", "cpu" (native C++) or "torch" (reference)."""

import importlib.util
import math
import os
from typing import List, Optional, Tuple

import torch

BACKENDS = ("cuda", "triton", "cpu", "torch")

try:
    from . import _C  # noqa: F401  (loading it registers the native kernels)

    _NATIVE_ERROR: Optional[str] = None
except ImportError as e:  # a source checkout that was never built
    _NATIVE_ERROR = f"pyops._C failed to import ({e}); build it with `pip install -e .` or `make build`"

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_CHECK_FINITE = os.environ.get("PYOPS_CHECK_FINITE")  # "1": always, "0": never, unset: CPU tensors only
HAS_TRITON = importlib.util.find_spec("triton") is not None


# Read once here: a plain set lookup keeps `resolve` traceable by torch.compile(fullgraph=True).
_NATIVE_KERNELS = frozenset(
    (name, key)
    for key in ("CPU", "CUDA")
    for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
    if name.startswith("pyops::")
) if _NATIVE_ERROR is None else frozenset()


def _native_kernel(op: str, dispatch_key: str) -> bool:
    return (f"pyops::{op}", dispatch_key) in _NATIVE_KERNELS


def why_unavailable(backend: str, device: torch.device, op: str) -> Optional[str]:
    """None when `backend` can run `op` on `device`, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"backend='cpu' needs CPU tensors, got {device}"
        if _NATIVE_ERROR:
            return _NATIVE_ERROR
        return None if _native_kernel(op, "CPU") else f"pyops._C has no CPU kernel for {op}; rebuild it"
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend='cuda' needs CUDA tensors, got {device}"
        if _NATIVE_ERROR:
            return _NATIVE_ERROR
        if not _native_kernel(op, "CUDA"):
            return "pyops was built without CUDA kernels; rebuild with PYOPS_BUILD_CUDA=1 and CUDA_HOME set"
        return None
    if backend == "triton":
        if not HAS_TRITON:
            return "Triton is not installed (pip install triton)"
        if not hasattr(torch.ops.pyops, f"{op}_triton"):
            return f"there is no Triton kernel for {op}"
        if device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET):
            return None
        return f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or None")


def available_backends(device, op: str = "derf_fwd") -> List[str]:
    """Backends that can run `op` on `device`, fastest first (interpreted Triton after the CPU kernels)."""
    device = torch.device(device)
    order = BACKENDS if device.type == "cuda" else ("cpu", "triton", "torch")
    return [b for b in order if why_unavailable(b, device, op) is None]


def resolve(backend: Optional[str], device: torch.device, op: str,
            gpu_order: Tuple[str, ...] = ("cuda", "triton")) -> str:
    """The backend to run: `backend` if given, else $PYOPS_BACKEND, else the fastest available (on a GPU, the
    first of `gpu_order` that is available: the op's measured order)."""
    if backend is None:
        backend = os.environ.get("PYOPS_BACKEND") or None
    if backend is None:
        preferred = gpu_order if device.type == "cuda" else ("cpu",)
        return next((b for b in preferred if why_unavailable(b, device, op) is None), "torch")
    reason = why_unavailable(backend, device, op)
    if reason is not None:
        raise RuntimeError(f"pyops: backend {backend!r} is unavailable: {reason}")
    return backend


def check_finite_enabled(t: torch.Tensor) -> bool:
    """Whether ops should check `t` for NaN/inf: a host sync on GPU, so by default only CPU tensors are."""
    return _CHECK_FINITE == "1" or (_CHECK_FINITE is None and t.device.type == "cpu")



def check_finite(op: str, name: str, t: torch.Tensor) -> None:
    """ValueError naming `name` if t holds NaN or inf (skipped when disabled for t's device or compiling).

    One read pass, no bool tensor the size of t: aminmax propagates NaN, and inf shows up in min or max."""
    if t.numel() == 0 or not check_finite_enabled(t) or torch.compiler.is_compiling():
        return
    lo, hi = torch.aminmax(t.detach())
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):  # 5x cheaper than tensor ops on scalars
        raise ValueError(f"{op}: {name} has non-finite values")


# ----------------------------------------------------------------------------------------------------------
# Eager fast paths (pyops.derf's scheme): the public functions cache their backend choice per (backend argument,
# $PYOPS_BACKEND, device type) and call the native op's C++ callable directly; only when it raises do the Python
# checks run, to raise pyops' own error.


def env_backend() -> Optional[str]:
    """$PYOPS_BACKEND, read on every call: it may change at run time."""
    return os.environ.get("PYOPS_BACKEND")


def native_callable(name: str):
    """torch.ops.pyops.<name>.default's C++ callable (an OpOverload's __call__ is one more Python frame per call)
    where this torch has one; None without the native library."""
    if _NATIVE_ERROR is not None:
        return None
    op = getattr(torch.ops.pyops, name).default
    return getattr(op, "_op", op)


def remember_choice(cache: dict, backend: Optional[str], device: torch.device, which: str) -> str:
    """Caches a resolve() answer for the fast path, "native" for the C++ kernels ("cpu", "cuda") and otherwise the
    backend's name, under (backend argument, $PYOPS_BACKEND, device type), and returns it. Only successful choices
    are cached: an unavailable backend raises every time."""
    which = "native" if which in ("cpu", "cuda") else which
    cache[(backend, env_backend(), device.type)] = which
    return which
