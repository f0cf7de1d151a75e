"""Thin transformer blocks normalised with Derf: a ViT-style encoder block and a GPT-style decoder block.

Modules only (no training loop); `backend` picks the Derf implementation so the same weights can run the
reference and the fused kernels side by side.
"""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..derf import Derf


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, causal: bool):
        super().__init__()
        check_int("Attention", "num_heads", num_heads, 1)
        if check_int("Attention", "dim", dim, 1) % num_heads:
            raise ValueError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, dim]
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, int(dim * ratio)), nn.Linear(int(dim * ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _PreNormBlock(nn.Module):
    causal = False

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, alpha_init: float = 0.5,
                 backend: Optional[str] = None):
        super().__init__()
        self.norm1 = Derf(dim, alpha_init, backend=backend)
        self.attn = Attention(dim, num_heads, causal=self.causal)
        self.norm2 = Derf(dim, alpha_init, backend=backend)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, dim]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBlock(_PreNormBlock):
    """Pre-norm ViT encoder block (bidirectional attention) with Derf in place of LayerNorm."""


class GPTBlock(_PreNormBlock):
    """Pre-norm GPT-2 decoder block (causal attention) with Derf in place of LayerNorm."""

    causal = True


def set_backend(model: nn.Module, backend: Optional[str]) -> nn.Module:
    """Points every Derf in `model` at `backend`."""
    for m in model.modules():
        if isinstance(m, Derf):
            m.backend = backend
    return model
