"""Shared test helpers: devices, backends and the low-precision tolerance rule."""

import torch

import pyops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def kernel_backends(device: str, op: str = "derf_fwd"):
    """The non-reference backends that can run `op` on `device` (Triton on CPU only under its interpreter)."""
    return [b for b in pyops.available_backends(device, op) if b != "torch"]


def backend_params(op: str = "derf_fwd", include_torch: bool = False):
    return [(d, b) for d in DEVICES for b in kernel_backends(d, op) + (["torch"] if include_torch else [])]


# Floors of the tolerance rule below, relative to the reference's magnitude: one fp32 / fp16 / bf16 rounding
# of an O(1) value times a small factor for the different erf/exp approximations and summation orders.
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close(name: str, got: torch.Tensor, exact: torch.Tensor, same_precision: torch.Tensor, dtype,
                 factor: float = 3.0):
    """FlashAttention's rule: the kernel's max error against the float64 `exact` result may be at most 3x
    PyTorch's own error when it runs the same math in the same precision (`same_precision`), plus a floor
    for results PyTorch happens to get exactly right. `factor` other than 3 only for a documented, measured gap."""
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    assert got.dtype == same_precision.dtype, f"{name}: dtype {got.dtype} != {same_precision.dtype}"
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    err = (got.double() - exact).abs().max().item() if exact.numel() else 0.0
    ref_err = (same_precision.double() - exact).abs().max().item() if exact.numel() else 0.0
    bound = factor * ref_err + FLOOR[dtype] * scale
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (torch's own error {ref_err:.3e})"
