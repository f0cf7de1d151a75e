"""What the Gaussian-splatting Triton stage modules share: gsplat's alpha threshold, the host-side argument
check and the block-size helper."""

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import _checks

# gsplat's constant (cuda/include/Common.h): alphas below it are skipped by the blending and, when the
# projection is given opacities, Gaussians whose opacity is below it are culled.
ALPHA_THRESHOLD: tl.constexpr = tl.constexpr(1.0 / 255.0)
# F.normalize's floor on a norm (gaussians_math.h's normalize_eps): a zero quaternion or SH direction
# normalises to zero instead of NaN.
NORM_EPS: tl.constexpr = tl.constexpr(1e-12)


def _check(op: str, name: str, t, shape: Sequence[Optional[int]], dtype: torch.dtype = torch.float32,
           like: Optional[Tuple[str, Tensor]] = None) -> Tensor:
    """One argument of a Triton launcher (pyops/_checks.py's policy): its dtype (float64 goes to the CPU and
    torch backends), shape (None: any size) and, with ``like=(other_name, other)``, its device."""
    if dtype == torch.float32 and isinstance(t, Tensor) and t.dtype == torch.float64:
        raise TypeError(f"{op}: float64 {name} runs on the CPU and torch backends only")
    return _checks.check_tensor(op, name, t, shape, dtype=dtype, like=like, same_dtype=False)


def _block(n: int, cap: int) -> int:
    """A power of two in [16, cap] covering n (the per-Gaussian and per-row kernels' lane count)."""
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))
