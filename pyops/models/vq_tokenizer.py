"""A VQRAE-shaped image tokenizer: frozen encoder -> projection -> VectorQuantizer -> ViT decoder.

Stage 1 of VQRAE: the encoder is frozen, a projection maps its features to the code space, a SimVQ codebook
quantizes them, and a ViT decoder (Derf-normalised blocks, as wide as the encoder: "symmetric") maps the
codes back. The decoder reconstructs the frozen encoder's features, not pixels: the target is free to
compute and keeps the module independent of any pixel decoder. Modules only (no training loop).
"""

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_tensor
from ..derf import Derf
from ..quantizer import VectorQuantizer
from .transformer import ViTBlock


class TokenizerOutput(NamedTuple):
    loss: Tensor  # () reconstruction + VQ loss
    recon_loss: Tensor  # () mean squared error against the encoder features
    vq_loss: Tensor  # () the quantizer's loss
    recon: Tensor  # [B, T, C] reconstructed features
    target: Tensor  # [B, T, C] frozen encoder features
    indices: Tensor  # [B, T] code indices


class VQTokenizer(nn.Module):
    """Tokenizer that quantizes a frozen encoder's features and learns to reconstruct them.

    Args:
        encoder: any callable mapping inputs to ``(B, T, C)`` features; frozen (an ``nn.Module`` is set to
            eval mode and ``requires_grad=False``, and runs under ``torch.no_grad()``).
        encoder_dim: C, the encoder's feature width (and the decoder's width).
        num_tokens: T, tokens per input (for the decoder's position embedding).
        code_dim: width of the code space.
        codebook_size: number of codes.
        decoder_depth: number of ViT blocks in the decoder.
        decoder_heads: attention heads per block; None for ``max(1, C // 64)``.
        backend: Derf backend of the decoder blocks (None: the fastest available).
        **quantizer_kwargs: passed to `VectorQuantizer` (default ``codebook="simvq"``, as VQRAE).
    """

    def __init__(
        self,
        encoder: Callable[[Tensor], Tensor],
        encoder_dim: int,
        num_tokens: int,
        *,
        code_dim: int = 1536,
        codebook_size: int = 16384,
        decoder_depth: int = 4,
        decoder_heads: Optional[int] = None,
        backend: Optional[str] = None,
        **quantizer_kwargs,
    ):
        super().__init__()
        self.encoder = encoder
        if isinstance(encoder, nn.Module):
            encoder.requires_grad_(False).eval()
        self.encoder_dim = encoder_dim
        self.to_code = nn.Linear(encoder_dim, code_dim)
        quantizer_kwargs.setdefault("codebook", "simvq")
        self.quantizer = VectorQuantizer(code_dim, codebook_size, **quantizer_kwargs)
        self.from_code = nn.Linear(code_dim, encoder_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, encoder_dim))
        heads = decoder_heads or max(1, encoder_dim // 64)
        self.blocks = nn.ModuleList(ViTBlock(encoder_dim, heads, backend=backend) for _ in range(decoder_depth))
        self.norm = Derf(encoder_dim, backend=backend)
        self.head = nn.Linear(encoder_dim, encoder_dim)

    def train(self, mode: bool = True) -> "VQTokenizer":
        super().train(mode)
        if isinstance(self.encoder, nn.Module):
            self.encoder.eval()  # frozen: dropout / norm statistics must not change with the tokenizer's mode
        return self

    @torch.no_grad()
    def features(self, inputs: Tensor) -> Tensor:  # -> [B, T, C]
        # The encoder's output is the tokenizer's first tensor: its shape and kind are checked here, by name.
        return check_tensor("VQTokenizer", "features (the encoder's output)", self.encoder(inputs),
                            (None, None, self.encoder_dim), floating=True)

    def encode(self, inputs: Tensor) -> Tensor:  # -> [B, T] code indices
        return self.quantizer(self.to_code(self.features(inputs)))[1]

    def decode_codes(self, codes: Tensor) -> Tensor:  # [B, T, code_dim] -> [B, T, C]
        h = self.from_code(codes) + self.pos_embed[:, :codes.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def decode(self, indices: Tensor) -> Tensor:  # [B, T] -> [B, T, C]
        return self.decode_codes(self.quantizer.codebook[indices])

    def forward(self, inputs: Tensor) -> TokenizerOutput:
        target = self.features(inputs)
        quantized, indices, vq_loss = self.quantizer(self.to_code(target))
        recon = self.decode_codes(quantized)
        recon_loss = F.mse_loss(recon.float(), target.float())
        return TokenizerOutput(recon_loss + vq_loss, recon_loss, vq_loss, recon, target, indices)
