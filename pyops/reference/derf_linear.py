"""Pure-PyTorch Derf + Linear: the specification pyops.derf_linear's backends are tested against."""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .derf import derf


def derf_linear(
    x: Tensor,  # [..., C]
    alpha: Tensor,  # [1] or [C]
    shift: Tensor,  # [1] or [C]
    weight: Optional[Tensor],  # [C]
    bias: Optional[Tensor],  # [C]
    linear_weight: Tensor,  # [O, C]
    linear_bias: Optional[Tensor] = None,  # [O]
) -> Tensor:
    """F.linear(derf(x), linear_weight, linear_bias): derf in fp32 (fp64 for fp64 x) rounded to x's dtype, then
    the Linear in x's dtype, exactly as the unfused Derf -> nn.Linear pair computes it."""
    return F.linear(derf(x, alpha, shift, weight, bias, -1), linear_weight, linear_bias)
