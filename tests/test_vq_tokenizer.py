"""VQTokenizer: a few training steps on synthetic images lower the loss and keep most codes in use."""

import pytest
import torch
from torch import nn

from pyops.models import VQTokenizer


class PatchEncoder(nn.Module):
    """A small random 'pretrained' encoder: 4x4 patch embedding of 16x16 images -> (B, 16, 32)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, kernel_size=4, stride=4)

    def forward(self, images):  # [B, 3, 16, 16]
        return torch.tanh(self.patch(images)).flatten(2).transpose(1, 2)  # [B, 16, dim]


def test_tokenizer_trains_and_uses_its_codes():
    torch.manual_seed(0)
    encoder = PatchEncoder()
    model = VQTokenizer(encoder, 32, 16, code_dim=64, codebook_size=64, decoder_depth=2, decoder_heads=2,
                        kmeans_init=True, dead_code_threshold=1, usage_window=10)
    assert not any(p.requires_grad for p in encoder.parameters())
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    # Images are smooth blends of a few random patterns, so features have structure to learn.
    patterns = torch.randn(8, 3, 16, 16)
    losses = []
    for _ in range(40):
        weights = torch.softmax(2 * torch.randn(16, 8), dim=-1)
        images = torch.einsum("bp,pchw->bchw", weights, patterns) + 0.05 * torch.randn(16, 3, 16, 16)
        out = model(images)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.recon_loss.item())
    assert out.indices.shape == (16, 16) and out.recon.shape == out.target.shape == (16, 16, 32)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert model.quantizer.usage()["fraction_used"].item() > 0.5
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.state_dict().items())
    # encode -> decode agrees with the forward pass.
    model.eval()
    with torch.no_grad():
        out = model(images)
        torch.testing.assert_close(model.decode(model.encode(images)), out.recon)


def test_bad_encoder_output_and_sizes_are_named():
    model = VQTokenizer(PatchEncoder(16), 32, 16, code_dim=8, codebook_size=4, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match=r"VQTokenizer: features \(the encoder's output\) must have shape "
                                         r"\(\*, \*, 32\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="Attention: dim=32 is not divisible by num_heads=3"):
        VQTokenizer(PatchEncoder(), 32, 16, code_dim=8, codebook_size=4, decoder_depth=1, decoder_heads=3)
