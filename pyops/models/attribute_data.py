"""Procedural image pairs annotated with attributes, for training and probing the attribute encoder on CPU.

An image is one shape on a background, described by six factors (``FACTORS``): shape, colour, background,
size, position and texture, each with a few discrete values; size, position and colours are jittered per image,
so two images sharing a factor are not pixel-identical in it. Everything is vectorised over the batch and
deterministic given a ``torch.Generator``.

Attribute "text" is a short sequence of word tokens (``TEXT_LEN`` of them, padded with ``PAD``): one synonym
per factor the attribute names, e.g. ``["hue", "<pad>"]`` (colour) or ``["outline", "tint"]`` (shape and
colour). Each factor has ``len(SYNONYMS[f]) - 1`` training synonyms and one held-out synonym used only for
evaluation. Words embed through a frozen table (``word_vectors``) that stands in for a pretrained text encoder:
synonyms of one factor lie near a shared concept vector (cosine ~0.8 to it), so a held-out synonym is new to the
model yet close to the words it was trained on, as an unseen phrasing is for a real text encoder.

A pair (x, y) shares a random subset S of 1..``max_shared`` factors: S is the positive attribute (its text names
every factor in S). ``num_neg`` other factors are forced to differ: each is one negative attribute. The remaining
("free") factors of y copy x's with probability ``free_same`` (default 0.5), else are drawn afresh; they are not
annotated. Real pairs are alike beyond their annotated attribute in the same way (same scene, lighting, style),
and this is what gives a generative objective a reason to copy more of x than the attribute (the leakage
Omni-Attribute's contrastive term removes).
"""

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

FACTORS = (
    ("shape", ("circle", "square", "triangle", "diamond", "cross", "ring")),
    ("colour", ("red", "green", "blue", "yellow", "magenta", "cyan")),
    ("background", ("black", "white", "grey", "brown", "teal", "pink")),
    ("size", ("small", "medium", "large")),
    ("position", ("top-left", "top-right", "bottom-left", "bottom-right")),
    ("texture", ("solid", "h-stripes", "v-stripes", "checker")),
)
FACTOR_NAMES = tuple(name for name, _ in FACTORS)
NUM_VALUES = tuple(len(values) for _, values in FACTORS)
NUM_FACTORS = len(FACTORS)

# Per factor: training synonyms first, the held-out synonym last.
SYNONYMS = (
    ("shape", "form", "outline", "silhouette", "geometry"),
    ("colour", "color", "hue", "tint", "paint"),
    ("background", "backdrop", "surroundings", "backcloth", "setting"),
    ("size", "scale", "extent", "magnitude", "bigness"),
    ("position", "location", "placement", "place", "spot"),
    ("texture", "pattern", "surface", "fill", "grain"),
)
NUM_TRAIN_SYNONYMS = len(SYNONYMS[0]) - 1
PAD = 0
VOCAB = ("<pad>",) + tuple(word for words in SYNONYMS for word in words)
TEXT_LEN = 2  # words per attribute text: at most max_shared factors

_FG = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95], [0.95, 0.9, 0.1], [0.9, 0.15, 0.85],
                    [0.1, 0.85, 0.9]])
_BG = torch.tensor([[0.05, 0.05, 0.05], [0.95, 0.95, 0.95], [0.5, 0.5, 0.5], [0.45, 0.3, 0.15], [0.0, 0.35, 0.35],
                    [1.0, 0.75, 0.8]])
# Large shapes: colour and texture then cover much of the image, so mean-pooled features carry them within a
# few hundred steps (at radius 0.16-0.3 only the background was learned that fast).
_RADIUS = (0.26, 0.34, 0.42)  # of the image size
_CELL = (0.36, 0.64)  # position cell centres, of the image size
_TEXTURE_DIM = 0.4  # intensity of the "off" cells of a texture


class PairBatch(NamedTuple):
    x: Tensor  # [B, 3, S, S] images in [0, 1]
    y: Tensor  # [B, 3, S, S]
    x_factors: Tensor  # [B, F] int64 factor values of x
    y_factors: Tensor  # [B, F]
    text: Tensor  # [B, A, TEXT_LEN] int64 word ids: slot 0 the positive attribute, slots 1.. the negatives
    shared: Tensor  # [B, F] bool: the factors of the positive attribute (x and y agree on them)
    neg_factors: Tensor  # [B, A - 1] int64: the factor of each negative attribute (x and y differ on it)


def word_vectors(dim: int = 32, seed: int = 1234) -> Tensor:
    """The frozen "pretrained" word table [len(VOCAB), dim]: unit vectors, synonyms of a factor at cosine ~0.8 to
    its concept vector (and ~0.64 to each other); ``<pad>`` is the zero vector. Fixed by ``seed``, not by the data
    seed, so every model and data stream sees the same table."""
    g = torch.Generator().manual_seed(seed)
    concept = torch.nn.functional.normalize(torch.randn(NUM_FACTORS, dim, generator=g), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(NUM_FACTORS, len(SYNONYMS[0]), dim, generator=g), dim=-1)
    words = torch.nn.functional.normalize(concept[:, None] + 0.75 * noise, dim=-1)
    return torch.cat([torch.zeros(1, dim), words.flatten(0, 1)])


def _word_id(factor: Tensor, synonym: Tensor) -> Tensor:
    return 1 + factor * len(SYNONYMS[0]) + synonym


def attribute_text(factors: Tensor, generator: torch.Generator, held_out: bool = False) -> Tensor:
    """Word ids [..., TEXT_LEN] naming each factor set in ``factors`` [..., TEXT_LEN] (int64 factor ids, -1 for
    an unused slot, which becomes ``PAD``). Each word is a random training synonym, or the held-out synonym."""
    if held_out:
        synonym = torch.full_like(factors, NUM_TRAIN_SYNONYMS)
    else:
        synonym = torch.randint(NUM_TRAIN_SYNONYMS, factors.shape, generator=generator)
    return torch.where(factors >= 0, _word_id(factors.clamp_min(0), synonym), PAD)


def sample_factors(n: int, generator: torch.Generator) -> Tensor:
    """[n, F] int64 uniformly random factor values."""
    return (torch.rand(n, NUM_FACTORS, generator=generator) * torch.tensor(NUM_VALUES)).long()


def render(factors: Tensor, generator: torch.Generator, size: int = 24) -> Tensor:
    """Images [N, 3, size, size] in [0, 1] of the factor values [N, F], with per-image jitter (size +-8%,
    position +-5% of the image, colours +-0.06) and pixel noise (std 0.02) drawn from ``generator``."""
    n = factors.shape[0]
    shape, colour, background, size_id, position, texture = factors.unbind(1)
    radius = torch.tensor(_RADIUS)[size_id] * size * (1 + 0.08 * (2 * torch.rand(n, generator=generator) - 1))
    cell = torch.tensor(_CELL)
    centre = torch.stack([cell[position % 2], cell[position // 2]], 1) * size  # (cx, cy)
    centre = centre + 0.05 * size * (2 * torch.rand(n, 2, generator=generator) - 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # [N, 1, S]
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # [N, S, 1]
    ax, ay = dx.abs(), dy.abs()
    r = (dx * dx + dy * dy).sqrt()
    masks = torch.stack([  # [N, 6, S, S], in FACTORS' shape order
        r <= 1,
        torch.maximum(ax, ay) <= 0.85,
        (dy <= 0.8) & (ax <= 0.55 * (dy + 1)),
        ax + ay <= 1.1,
        ((ax <= 0.32) & (ay <= 1)) | ((ay <= 0.32) & (ax <= 1)),
        (r <= 1) & (r >= 0.55),
    ], 1)
    mask = masks.gather(1, shape[:, None, None, None].expand(n, 1, size, size)).float()  # [N, 1, S, S]
    i = torch.arange(size)
    rows, cols = (i[:, None] // 2 % 2 == 0).expand(size, size), (i[None, :] // 2 % 2 == 0).expand(size, size)
    patterns = torch.stack([torch.ones_like(rows), rows, cols, rows == cols])  # solid, h-/v-stripes, checker
    shade = torch.where(patterns[texture], 1.0, _TEXTURE_DIM)[:, None]  # [N, 1, S, S]
    fg = (_FG[colour] + 0.06 * (2 * torch.rand(n, 3, generator=generator) - 1))[:, :, None, None]
    bg = (_BG[background] + 0.06 * (2 * torch.rand(n, 3, generator=generator) - 1))[:, :, None, None]
    img = bg * (1 - mask) + fg * shade * mask + 0.02 * torch.randn(n, 3, size, size, generator=generator)
    return img.clamp(0, 1)


def sample_images(n: int, generator: torch.Generator, size: int = 24) -> Tuple[Tensor, Tensor]:
    """n independent random images: (images [n, 3, size, size], factors [n, F])."""
    factors = sample_factors(n, generator)
    return render(factors, generator, size), factors


def sample_pairs(n: int, generator: torch.Generator, *, num_neg: int = 2, max_shared: int = 2,
                 held_out: bool = False, size: int = 24, factors: Optional[Tensor] = None,
                 free_same: float = 0.5) -> PairBatch:
    """n annotated pairs (see the module docstring): A = 1 + num_neg attributes per pair. ``held_out`` names
    every attribute with its held-out synonym. ``factors`` [n, F] fixes x's factor values (default random).
    ``free_same``: the probability that y copies x's value of a factor that is neither shared nor negative."""
    if not 1 <= max_shared <= TEXT_LEN:
        raise ValueError(f"sample_pairs: max_shared={max_shared} is out of range [1, {TEXT_LEN}]")
    if not 1 <= num_neg <= NUM_FACTORS - max_shared:
        raise ValueError(f"sample_pairs: num_neg={num_neg} is out of range [1, {NUM_FACTORS - max_shared}]")
    if not 0 <= free_same <= 1:
        raise ValueError(f"sample_pairs: free_same={free_same} is out of range [0, 1]")
    nv = torch.tensor(NUM_VALUES)
    fx = sample_factors(n, generator) if factors is None else factors
    order = torch.rand(n, NUM_FACTORS, generator=generator).argsort(1)  # a random permutation of factors per pair
    k = torch.randint(1, max_shared + 1, (n,), generator=generator)  # |S|
    rank = order.argsort(1)  # rank[b, f]: where factor f sits in pair b's permutation
    shared = rank < k[:, None]
    neg_factors = order.gather(1, k[:, None] + torch.arange(num_neg))
    negative = torch.zeros_like(shared).scatter_(1, neg_factors, True)
    free = torch.where(torch.rand(n, NUM_FACTORS, generator=generator) < free_same, fx, sample_factors(n, generator))
    shift = 1 + (torch.rand(n, NUM_FACTORS, generator=generator) * (nv - 1)).long()  # in [1, nv): a new value
    fy = torch.where(shared, fx, torch.where(negative, (fx + shift) % nv, free))
    slots = torch.arange(TEXT_LEN)
    pos = torch.where(slots < k[:, None], order[:, :TEXT_LEN], -1)  # [n, TEXT_LEN] factors of S, then unused
    neg = torch.cat([neg_factors[..., None], torch.full((n, num_neg, TEXT_LEN - 1), -1)], -1)
    text = attribute_text(torch.cat([pos[:, None], neg], 1), generator, held_out)
    x, y = render(fx, generator, size), render(fy, generator, size)
    return PairBatch(x, y, fx, fy, text, shared, neg_factors)
