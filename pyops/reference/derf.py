"""Pure-PyTorch Derf: the specification every backend is tested against."""

from typing import Optional

import torch
from torch import Tensor


def derf(
    x: Tensor,  # [..., C, ...]
    alpha: Tensor,  # [1] or [C]
    shift: Tensor,  # [1] or [C]
    weight: Optional[Tensor] = None,  # [C]
    bias: Optional[Tensor] = None,  # [C]
    channel_dim: int = -1,
) -> Tensor:
    """y = weight * erf(alpha * x + shift) + bias, computed in fp32 (fp64 for fp64 x), returned in x's dtype."""
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    channel_dim = channel_dim % x.dim()
    shape = [1] * x.dim()
    shape[channel_dim] = -1

    def per_channel(p: Tensor) -> Tensor:
        return p.to(math_dtype).reshape(shape)

    y = torch.erf(per_channel(alpha) * x.to(math_dtype) + per_channel(shift))
    if weight is not None:
        y = y * per_channel(weight)
    if bias is not None:
        y = y + per_channel(bias)
    return y.to(x.dtype)
