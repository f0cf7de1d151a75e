"""A thin Omni-Attribute (arXiv 2512.10955) attribute encoder, trainable on CPU in seconds on procedural pairs.

The encoder maps (image, attribute text) to attribute-specific embedding tokens: a stack of Derf-normalised
``ViTBlock``s runs over ``[attribute words; image patches; learned queries]``, the query outputs go through a
connector (LayerNorm, then a two-layer MLP) to ``num_queries`` embedding tokens, and their mean is the attribute's
vector (used by the contrastive loss and retrieval). Patches: a 3x3 conv then a patch_size-stride conv (a
linear patch embedding learned shape and size far more slowly), plus fixed 2-D sin-cos positions (learned
0.02-scale ones left position unlearned in hundreds of steps). Text: the frozen word table of
``attribute_data`` projected to the width; its mean is also added to every query (``text_queries``) and gates
the query outputs' channels (``text_gate``), cheap paths for text-conditioned selection that attention alone
learns slowly at this size. Training pairs come from ``attribute_data`` (x and y share the positive attribute,
differ in each negative one, and copy each remaining "free" factor with probability 0.5, unannotated).

Losses (``AttributeModel.losses``), total = generative + contrastive_weight * contrastive:

- generative (our choice, standing in for the paper's diffusion decoder): a small MLP decoder reconstructs y
  (pixels, mean squared error) from x's positive-attribute tokens plus a "prompt" for y, the one-hot values of
  y's negative factors (what the pair is annotated to differ in; the paper's generator likewise gets a text
  prompt of the target); and x from y's tokens, symmetrically. The shared factors, and the free ones, reach the
  decoder only through the other image's embedding. Since free factors are often alike (as real pairs are alike
  beyond their attribute: scene, light, style), this term rewards an embedding that carries more of the image
  than the attribute: the paper's leakage ("copy-paste"), which its contrastive term exists to remove.
- contrastive: ``attribute_pair_loss`` over each pair's A x A block of cosine similarities (A = 1 + num_neg
  attributes, slot 0 the positive), logit_scale 10 (tau = 0.1) as in the paper. It pulls the two images'
  positive-attribute embeddings together and pushes the negative ones (which differ) apart, so the embedding
  must follow the text. The paper weighs it 0.01 against its diffusion loss; against our pixel MSE (~0.07) the
  default is 0.02. It must stay small: the block has an easy partial solution, embeddings that depend on the
  text alone (different attributes orthogonal, the same attribute alike whatever the image: loss ~log 3), and
  from weight ~0.06 up (0.06, 0.1, 0.3, 1 tried, some ramped up linearly or switched on after a generative-only
  half) the short runs sat at or near it (pos and neg cosines both 0.9-1, Delta 0.03-0.15).

Evaluation:

- ``attribute_delta``: Delta(pos, neg) = mean_b cos(e(x_b, p_b), e(y_b, p_b)) - mean_{b,j} cos(e(x_b, n_bj),
  e(y_b, n_bj)), e the mean-pooled embedding, p_b the positive attribute of pair b and n_bj its negatives: how
  much more alike the pair's embeddings are for the attribute they share than for those they do not. ~0 for an
  encoder that ignores the text.
- ``retrieval_metrics``: per factor f, embed query and bank images with the text naming f, rank the bank with
  ``retrieve`` (cosine), a bank image is relevant iff it has the query's value of f: precision@k and mAP.
- ``leakage_probe``: ridge-regression linear probes from the embedding for factor f to every factor g's value;
  the diagonal is the attribute itself, the off-diagonal entries are leakage of other factors (accuracies
  normalised so chance = 0, perfect = 1).

Measured (CPU, one core, 500 steps of 16 pairs, ~25 s a run; Delta on 256 held-out pairs with held-out
synonyms), contrastive weight 0.02 vs 0, same seed, init, data and optimizer:

  seed    0            1            2            3            4            5            6
  Delta   0.215/0.054  0.194/0.101  0.207/0.072  0.239/0.072  0.231/0.030  0.253/0.039  0.154/0.058
  ratio   4.0          1.9          2.9          3.3          7.7          6.5          2.7
  diff    +0.16        +0.09        +0.14        +0.17        +0.20        +0.21        +0.10

(weight 0.03: 0.245/0.054, 0.154/0.101, 0.141/0.072, 0.240/0.072 on seeds 0-3; 1.5-4.5 times.) Seed 0 with weight
0.02 vs 0: pos 0.78 vs 0.53, neg 0.57 vs 0.48, cross-attribute cosine 0.25 vs 0.43; retrieval mean P@10 0.53 vs
0.40, mAP@128 0.31 vs 0.19 (colour P@10 0.92 vs 0.36, background 0.97 vs 0.85, size 0.50 vs 0.44; shape, position,
texture near chance in both); linear probes own 0.47 vs 0.37, leak 0.45 vs 0.35 (colour and background are linearly
decodable from every attribute's embedding in both runs: in 500 steps the term changes what dominates the cosine, it
does not remove the information). Without the contrastive term the embedding for every attribute carries x's
background and colour (what the decoder needs for the free factors), so the pair's cosines hardly depend on which
attribute is asked (pos ~ neg); the contrastive term makes them depend on it.
Both parts of the change are needed: with these pairs and prompt but the earlier encoder and shapes (patch 4, a
Derf before the connector, radius 0.16-0.3) Delta is 0.094 vs 0.060 and 0.125 vs 0.078 (seeds 0 / 1, +0.03 /
+0.05); with this encoder and shapes but the earlier pairs and prompt, see the next paragraph.

Why the contrastive term added little before (earlier setup: the prompt named all of y's non-shared factors and
free factors were drawn independently, so the generative term had no use for leakage; Delta 0.36 vs 0.32 at
1500 steps, patch 4, small shapes): the generative term alone then already made the embedding
attribute-specific for every factor the encoder perceived (in this architecture at 800 steps: colour negative
cosine -0.02 without the contrastive term, Delta 0.31 / 0.27 vs 0.34 / 0.32 with it, seeds 0 / 1), and the
factors it did not perceive (shape, size, position, texture) gave no Delta to either run. Perception is the
other limit: with supervised linear heads (a diagnostic, not part of training) the old encoder learned only
background in 200-400 steps, where a plain CNN with a flatten-linear readout learned all six factors in 100-300;
LayerNorm instead of a Derf before the connector (colour 0.92 vs 0.46 probe accuracy at 200 steps) and larger
shapes (colour and texture then cover much of the image) are what made colour (and background) reliable within
500 steps; a deeper conv stem, a larger Derf alpha, unit-scale queries and a stem gain did not help. Shape, size,
position and texture are still near chance in these short runs (see the probes).

Tried without success in the earlier setup (one core, 200-900 steps of 16-64 pairs, contrastive weight 1 vs 0):
subtracting the same text's tokens on a reference image (the text-only component), on a blank, fixed real or
fresh random image (the model learns to recognise the reference and the shortcut returns, or the loss sticks at
log 9); a text-free ViT with batch-centred query outputs mapped by a text-gated or text-routed linear map (the
centred features are dominated by one background-brightness direction: Delta 0-0.15); a simpler data set. A
text-routed mixture of linear heads in place of the channel gate, in the current setup, did not help either.

Ours, not the paper's: the procedural data and frozen toy word table (in place of an MLLM and its text encoder;
the paper fine-tunes Qwen2.5-VL with LoRA), the MLP pixel decoder and its one-hot prompt, the conv stem, the
LayerNorm before the connector, the text query/gate paths, the tiny sizes, the weight 0.02.
``python -m pyops.models.attribute_encoder --steps N --seed S`` trains with and without the contrastive term and
prints every metric.
"""

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import attribute_pair_loss, retrieve
from .._checks import check_int, check_tensor
from . import attribute_data as data
from .transformer import ViTBlock


@dataclass
class AttributeEncoderConfig:
    image_size: int = 24
    patch_size: int = 6
    width: int = 64
    depth: int = 2
    heads: int = 4
    num_queries: int = 4
    embed_dim: int = 32
    text_dim: int = 32  # width of the frozen word table
    decoder_hidden: int = 256
    num_neg: int = 2  # negative attributes per pair: A = 1 + num_neg
    max_shared: int = 2  # factors in a positive attribute: 1..max_shared
    logit_scale: float = 10.0  # 1 / tau
    contrastive_weight: float = 0.02
    batch_pairs: int = 32
    lr: float = 2e-3
    steps: int = 300
    seed: int = 0
    text_queries: bool = True  # add the projected mean of the attribute words to every query
    text_gate: bool = True  # gate the query outputs' channels by the attribute words
    pos_scale: float = 1.0  # scale of the fixed sin-cos position embeddings
    alpha_init: float = 0.5  # Derf's initial alpha


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings [1, grid * grid, dim] (MAE's), row-major patches: half of the
    channels encode the row, half the column, each as sin/cos pairs at geometric frequencies."""
    quarter = dim // 4
    freq = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1))
    pos = torch.arange(grid, dtype=torch.float32)[:, None] * freq  # [grid, quarter]
    rows, cols = pos[:, None].expand(grid, grid, quarter), pos[None].expand(grid, grid, quarter)
    emb = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], -1).reshape(1, grid * grid, 4 * quarter)
    return F.pad(emb, (0, dim - 4 * quarter))


class AttributeEncoder(nn.Module):
    """(images [N, 3, S, S], attribute text [N, A, T] word ids) -> embedding tokens [N, A, num_queries, D].

    Each image is patch-embedded once and shares those tokens across its A attributes; the transformer then runs
    on N * A sequences ``[T words; (S / patch)^2 patches; num_queries queries]`` (no loop over the batch)."""

    def __init__(self, config: AttributeEncoderConfig, backend: Optional[str] = None):
        super().__init__()
        c = self.config = config
        check_int("AttributeEncoder", "patch_size", c.patch_size, 1)
        if check_int("AttributeEncoder", "image_size", c.image_size, 1) % c.patch_size:
            raise ValueError(f"AttributeEncoder: image_size={c.image_size} is not a multiple of "
                             f"patch_size={c.patch_size}")
        self.register_buffer("words", data.word_vectors(c.text_dim), persistent=False)  # frozen
        self.text_proj = nn.Linear(c.text_dim, c.width)
        self.text_pos = nn.Parameter(0.02 * torch.randn(1, data.TEXT_LEN, c.width))
        # A 3x3 conv before the patch projection: local edges for shape; a linear patch embedding alone
        # learns shapes far more slowly at these sizes.
        self.patch_embed = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(),
                                         nn.Conv2d(16, c.width, c.patch_size, stride=c.patch_size))
        self.register_buffer("patch_pos", c.pos_scale * sincos_2d(c.image_size // c.patch_size, c.width),
                             persistent=False)
        self.queries = nn.Parameter(0.02 * torch.randn(1, c.num_queries, c.width))
        self.query_text = nn.Linear(c.text_dim, c.width) if c.text_queries else None
        self.blocks = nn.ModuleList(ViTBlock(c.width, c.heads, alpha_init=c.alpha_init, backend=backend)
                                    for _ in range(c.depth))
        # LayerNorm, not Derf, on the query outputs (the connector's input): it rescales each query output to unit
        # variance, and the encoder then learned colour in ~200 steps where a Derf here needed well over 400.
        self.norm = nn.LayerNorm(c.width)
        # Text-conditioned channel gate on the query outputs: the words pick which features reach the embedding
        # (multiplicatively), an easy path for attribute-specific selection that attention alone learns slowly.
        self.text_gate = nn.Linear(c.text_dim, c.width) if c.text_gate else None
        self.connector = nn.Sequential(nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.embed_dim))

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        c = self.config
        check_tensor("AttributeEncoder", "images", images, (None, 3, c.image_size, c.image_size), floating=True)
        check_tensor("AttributeEncoder", "text", text, (images.shape[0], None, data.TEXT_LEN), dtype=torch.int64)
        n, a = text.shape[:2]
        patches = self.patch_embed(2 * images - 1).flatten(2).transpose(1, 2) + self.patch_pos  # [N, P, W]
        words = self.text_proj(self.words[text]) + self.text_pos  # [N, A, T, W]
        queries = self.queries[:, None].expand(n, a, -1, -1)
        if c.text_queries:
            queries = queries + self.query_text(self.words[text].mean(2))[:, :, None]
        seq = torch.cat([words, patches[:, None].expand(n, a, -1, -1), queries], 2).flatten(0, 1)  # [N * A, L, W]
        for block in self.blocks:
            seq = block(seq)
        h = self.norm(seq[:, -c.num_queries:])  # [N * A, Q, W]
        if self.text_gate is not None:
            h = h * torch.sigmoid(self.text_gate(self.words[text].mean(2))).flatten(0, 1)[:, None]
        out = self.connector(h)
        return out.view(n, a, c.num_queries, c.embed_dim)

    def embed(self, images: Tensor, text: Tensor) -> Tensor:
        """Mean-pooled attribute vectors [N, A, D]."""
        return self(images, text).mean(2)


def factor_prompt(factors: Tensor, hidden: Tensor) -> Tensor:
    """One-hot factor values [B, F] -> [B, sum(NUM_VALUES)], zero for the factors where ``hidden`` [B, F]."""
    onehot = torch.cat([F.one_hot(factors[:, f], nv) for f, nv in enumerate(data.NUM_VALUES)], 1)
    keep = torch.repeat_interleave(~hidden, torch.tensor(data.NUM_VALUES, device=hidden.device), dim=1)
    return (onehot * keep).float()


class AttributeDecoder(nn.Module):
    """Small conditional pixel decoder: (attribute tokens [B, Q, D], prompt [B, sum(NUM_VALUES)]) -> image."""

    def __init__(self, config: AttributeEncoderConfig):
        super().__init__()
        c = self.config = config
        self.net = nn.Sequential(
            nn.Linear(c.num_queries * c.embed_dim + sum(data.NUM_VALUES), c.decoder_hidden), nn.GELU(),
            nn.Linear(c.decoder_hidden, c.decoder_hidden), nn.GELU(),
            nn.Linear(c.decoder_hidden, 3 * c.image_size ** 2))

    def forward(self, tokens: Tensor, prompt: Tensor) -> Tensor:
        s = self.config.image_size
        return self.net(torch.cat([tokens.flatten(1), prompt], 1)).view(-1, 3, s, s)


class AttributeLosses(NamedTuple):
    loss: Tensor  # () generative + contrastive_weight * contrastive
    generative: Tensor  # () pixel MSE, both directions
    contrastive: Tensor  # () attribute_pair_loss


class AttributeModel(nn.Module):
    """The encoder plus the decoder of the generative term, and the training losses on a ``PairBatch``."""

    def __init__(self, config: AttributeEncoderConfig, backend: Optional[str] = None):
        super().__init__()
        self.config = config
        self.encoder = AttributeEncoder(config, backend)
        self.decoder = AttributeDecoder(config)

    def losses(self, batch: data.PairBatch, contrastive_weight: Optional[float] = None) -> AttributeLosses:
        c = self.config
        w = c.contrastive_weight if contrastive_weight is None else contrastive_weight
        ex, ey = self.encoder(torch.cat([batch.x, batch.y]), torch.cat([batch.text, batch.text])).chunk(2)
        # y from x's positive-attribute tokens and a prompt naming y's values of the negative factors (what the
        # pair differs in); x from y's, the same way. The free factors are in neither: they come from the tokens.
        hidden = torch.ones_like(batch.shared).scatter_(1, batch.neg_factors, False)
        prompt = torch.cat([factor_prompt(batch.y_factors, hidden), factor_prompt(batch.x_factors, hidden)])
        recon = self.decoder(torch.cat([ex[:, 0], ey[:, 0]]), prompt)
        generative = F.mse_loss(recon, torch.cat([batch.y, batch.x]))
        scale = torch.tensor(c.logit_scale, device=ex.device)
        contrastive = attribute_pair_loss(ex, ey, scale)  # token inputs: mean-pooled inside
        return AttributeLosses(generative + w * contrastive, generative, contrastive)


def train_attribute_model(config: AttributeEncoderConfig, *, contrastive_weight: Optional[float] = None,
                          backend: Optional[str] = None) -> Tuple[AttributeModel, List[Dict[str, float]]]:
    """Trains a fresh model for ``config.steps`` Adam steps on fresh pairs each step; deterministic given
    ``config.seed`` (init and data). ``contrastive_weight`` overrides the config's (0: generative only).
    Returns (the model in eval mode, per-step {"loss", "generative", "contrastive"})."""
    torch.manual_seed(config.seed)
    model = AttributeModel(config, backend)
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = []
    for _ in range(config.steps):
        batch = data.sample_pairs(config.batch_pairs, gen, num_neg=config.num_neg, max_shared=config.max_shared,
                                  size=config.image_size)
        out = model.losses(batch, contrastive_weight)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in out._asdict().items()})
    return model.eval(), history


@torch.no_grad()
def attribute_delta(encoder: AttributeEncoder, batch: data.PairBatch) -> Dict[str, float]:
    """Delta(pos, neg) on a pair batch (definition in the module docstring): {"delta", "pos", "neg", "cross"}:
    "pos" and "neg" the mean cosines of the positive and of the negative attributes (the diagonal of each pair's
    A x A block), "cross" the mean cosine of x's and y's embeddings for two different attributes (the
    off-diagonal cells): the part of the block that text alone can separate."""
    ex, ey = encoder.embed(torch.cat([batch.x, batch.y]), torch.cat([batch.text, batch.text])).chunk(2)
    nx, ny = F.normalize(ex, dim=-1), F.normalize(ey, dim=-1)
    cos = nx @ ny.transpose(1, 2)  # [B, A, A]
    diag = cos.diagonal(dim1=1, dim2=2)
    a = cos.shape[1]
    pos, neg = diag[:, 0].mean().item(), diag[:, 1:].mean().item()
    cross = ((cos.sum((1, 2)) - diag.sum(1)) / (a * a - a)).mean().item()
    return {"delta": pos - neg, "pos": pos, "neg": neg, "cross": cross}


def _single_factor_text(factor: int, n: int, gen: torch.Generator, held_out: bool) -> Tensor:
    factors = torch.full((n, 1, data.TEXT_LEN), -1)
    factors[:, :, 0] = factor
    return data.attribute_text(factors, gen, held_out)


@torch.no_grad()
def embed_factors(encoder: AttributeEncoder, images: Tensor, gen: torch.Generator,
                  held_out: bool = False) -> Tensor:
    """The embedding of every image for every single-factor attribute: [F, N, D]."""
    n = images.shape[0]
    text = torch.cat([_single_factor_text(f, n, gen, held_out) for f in range(data.NUM_FACTORS)], 1)
    return encoder.embed(images, text).transpose(0, 1)


@torch.no_grad()
def retrieval_metrics(encoder: AttributeEncoder, *, num_queries: int = 64, bank_size: int = 512, k: int = 10,
                      seed: int = 0, held_out: bool = True) -> Dict[str, object]:
    """Per-factor attribute retrieval over a bank of random images: {"precision_at_k": [F], "map": [F],
    "mean_precision_at_k", "mean_map", "map_depth"}. Queries and bank are disjoint random images; relevant = same
    value of the named factor. ``retrieve`` returns at most 128 neighbours (vq_search's MAX_K), so "map" is mAP@d
    with d = min(bank_size, 128) ("map_depth"): per query, sum over the relevant hits in the top d of their
    precision at that rank, divided by min(#relevant in the bank, d); 1 = the top d is as relevant as it can be."""
    depth = min(bank_size, 128)
    if not 1 <= k <= depth:
        raise ValueError(f"retrieval_metrics: k={k} is out of range [1, min(bank_size, 128) = {depth}]")
    gen = torch.Generator().manual_seed(seed)
    size = encoder.config.image_size
    q_img, q_fac = data.sample_images(num_queries, gen, size)
    b_img, b_fac = data.sample_images(bank_size, gen, size)
    q_emb, b_emb = embed_factors(encoder, q_img, gen, held_out), embed_factors(encoder, b_img, gen, held_out)
    p_at_k, maps = [], []
    for f in range(data.NUM_FACTORS):
        _, idx = retrieve(q_emb[f], b_emb[f], depth)  # the top `depth` of the ranking
        rel = (b_fac[idx, f] == q_fac[:, f, None]).double()  # [Q, depth]
        p_at_k.append(rel[:, :k].mean().item())
        n_rel = (b_fac[None, :, f] == q_fac[:, f, None]).sum(1).clamp(1, depth)  # min(#relevant, depth)
        ranks = torch.arange(1, depth + 1, dtype=torch.float64)
        ap = (rel.cumsum(1) / ranks * rel).sum(1) / n_rel
        maps.append(ap.mean().item())
    return {"precision_at_k": p_at_k, "map": maps, "mean_precision_at_k": sum(p_at_k) / len(p_at_k),
            "mean_map": sum(maps) / len(maps), "map_depth": depth}


@torch.no_grad()
def leakage_probe(encoder: AttributeEncoder, *, num_images: int = 1024, seed: int = 0, ridge: float = 1.0,
                  held_out: bool = True) -> Dict[str, object]:
    """Linear probes on the embeddings: acc[f][g] = normalised test accuracy ((acc - chance) / (1 - chance)) of
    a ridge-regression probe predicting factor g's value from the embedding for the attribute naming factor f
    (trained on one half of the images, tested on the other). Returns {"accuracy": F x F list, "own": mean of
    the diagonal, "leak": mean off the diagonal}."""
    gen = torch.Generator().manual_seed(seed)
    images, factors = data.sample_images(num_images, gen, encoder.config.image_size)
    emb = embed_factors(encoder, images, gen, held_out).double()  # [F, N, D]
    half = num_images // 2
    acc = []
    for f in range(data.NUM_FACTORS):
        x = emb[f]
        x = (x - x[:half].mean(0)) / x[:half].std(0).clamp_min(1e-6)
        x = torch.cat([x, torch.ones(num_images, 1, dtype=x.dtype)], 1)
        gram = x[:half].T @ x[:half] + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        row = []
        for g, nv in enumerate(data.NUM_VALUES):
            target = F.one_hot(factors[:half, g], nv).double()
            w = torch.linalg.solve(gram, x[:half].T @ target)
            a = ((x[half:] @ w).argmax(1) == factors[half:, g]).double().mean().item()
            row.append((a - 1 / nv) / (1 - 1 / nv))
        acc.append(row)
    own = sum(acc[f][f] for f in range(data.NUM_FACTORS)) / data.NUM_FACTORS
    leak = sum(acc[f][g] for f in range(data.NUM_FACTORS) for g in range(data.NUM_FACTORS) if f != g)
    return {"accuracy": acc, "own": own, "leak": leak / (data.NUM_FACTORS * (data.NUM_FACTORS - 1))}


def _main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Train the attribute encoder with and without the contrastive "
                                                 "term and print Delta, retrieval and probe metrics.")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-pairs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="0.02,0", help="contrastive weights, comma-separated")
    args = parser.parse_args()
    held_out = data.sample_pairs(256, torch.Generator().manual_seed(99), held_out=True)
    for w in (float(x) for x in args.weights.split(",")):
        t = time.perf_counter()
        cfg = AttributeEncoderConfig(steps=args.steps, batch_pairs=args.batch_pairs, seed=args.seed)
        model, _ = train_attribute_model(cfg, contrastive_weight=w)
        seconds = time.perf_counter() - t
        enc = model.encoder
        d, r, p = attribute_delta(enc, held_out), retrieval_metrics(enc), leakage_probe(enc)
        print(f"contrastive_weight={w} ({seconds:.0f} s): " + " ".join(f"{k} {v:.3f}" for k, v in d.items()))
        for f, name in enumerate(data.FACTOR_NAMES):
            leak = [round(p["accuracy"][f][g], 2) for g in range(data.NUM_FACTORS) if g != f]
            print(f"  {name:10s} P@10 {r['precision_at_k'][f]:.3f} mAP {r['map'][f]:.3f} probe own "
                  f"{p['accuracy'][f][f]:.3f} leak {leak}")
        print(f"  mean P@10 {r['mean_precision_at_k']:.3f} mAP {r['mean_map']:.3f} probe own {p['own']:.3f} "
              f"leak {p['leak']:.3f}")


if __name__ == "__main__":
    _main()
