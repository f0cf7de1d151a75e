"""VectorQuantizer: a VQ layer (learned, EMA or SimVQ codebook) built on `vq_search` and `vq_segment_sum`.

The nearest-code search never builds the N x K distance matrix (`pyops.vq_search`), EMA statistics and
k-means steps use the fused segment sum (`pyops.vq_segment_sum`) instead of a one-hot matmul, and the layer
runs on one process or over a `torch.distributed` group, with the codebook either replicated on every rank
or sharded across ranks (each rank owns K / world codes) so that it can outgrow one GPU.
"""

import functools
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_int, check_tensor
from .vq import METRICS, vq_search, vq_segment_sum
from .vq_index import VQIndex

CODEBOOKS = ("learned", "ema", "simvq")
DISTRIBUTED = ("replicated", "sharded")
_LOW32 = (1 << 32) - 1


def _mean_square(t: Tensor) -> Tensor:
    """F.mse_loss's value, but 0 rather than NaN for an empty batch."""
    return t.square().sum() / max(t.numel(), 1)


# ----------------------------------------------------------------------------------------------------------
# Helpers for the sharded search.


def pack_keys(distances: Tensor, indices: Tensor) -> Tensor:
    """int64 keys whose signed order is (distance, index) order: one all_reduce(MIN) finds the winner.

    High 32 bits: the fp32 distance's bits made order-preserving as a signed int32 (negative floats have
    their 31 magnitude bits flipped, so a larger magnitude sorts lower). Low 32 bits: the global index.
    """
    d = distances.float() + 0.0  # + 0.0 turns -0.0 into +0.0, so equal distances give equal keys
    bits = d.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()  # signed order == float order
    return ordered * (1 << 32) + indices.long()


def unpack_indices(keys: Tensor) -> Tensor:
    return keys & _LOW32


class _SumFromShards(torch.autograd.Function):
    """all_reduce(SUM) forward, identity backward: every rank computes the same loss from the same summed
    rows, so the gradient that reaches a rank's own contribution is just the local one (as Megatron's
    vocab-parallel embedding)."""

    @staticmethod
    def forward(ctx, rows: Tensor, group) -> Tensor:
        out = rows.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, v_out: Tensor):
        return v_out, None


def _all_reduce_grad(v_weight: Tensor, group) -> Tensor:
    v_weight = v_weight.clone()
    dist.all_reduce(v_weight, group=group)
    return v_weight


def _rotate_to(e: Tensor, q: Tensor) -> Tensor:  # [N, D], [N, D] -> [N, D]
    """The rotation trick (Fifty et al. 2024): ``lambda * R e`` with R rotating e's direction onto q's and
    lambda = |q| / |e|, both treated as constants, so the gradient to e is rotated and rescaled instead of
    copied. R = I - 2 w w^T + 2 v u^T (u = e/|e|, v = q/|q|, w = (u + v)/|u + v|) is applied as two dot
    products per row, never as a D x D matrix. The forward value is q (up to rounding)."""
    eps = 1e-12
    ef, qf = e.float(), q.detach().float()
    e_norm = ef.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = qf.norm(dim=-1, keepdim=True)
    u, v = ef.detach() / e_norm, qf / q_norm.clamp_min(eps)
    w = u + v
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(eps)
    rotated = ef - 2 * w * (w * ef).sum(-1, keepdim=True) + 2 * v * (u * ef).sum(-1, keepdim=True)
    return (q_norm / e_norm) * rotated


# ----------------------------------------------------------------------------------------------------------
# The module.


class VectorQuantizer(nn.Module):
    """Vector quantization layer: ``quantized, indices, loss = vq(x)``.

    The return convention is vector-quantize-pytorch's ``VectorQuantize``: ``quantized`` has x's shape and
    dtype, ``indices`` is ``x.shape[:-1]`` (int64, global code indices), ``loss`` is an fp32 scalar.
    In eval mode the search runs on a `pyops.VQIndex` of the codebook, prepared on the first call and reused
    until the codebook changes (in place or by a move), so an eval loop or tokenizer prepares it once.

    Codebooks (``codebook=``):
        - "learned": an ``nn.Parameter`` trained by the codebook loss ``||sg(x) - q||^2``.
        - "ema": exponential moving averages of cluster sizes and sums (fp32 buffers), Laplace-smoothed;
          updated in training mode only; the loss is the commitment term only.
        - "simvq": ``codebook = W(basis)`` with a frozen random ``basis`` buffer and a learned linear map W
          (VQRAE stage 1); the codebook loss trains W. The effective codebook is computed once per forward.

    For ``metric="cosine"`` x and the codes are l2-normalised first (quantized is then a unit vector and the
    losses compare unit vectors). "l2" and "ip" quantize to the raw code.

    Usage statistics (``usage()``) are exact code counts over the last ``usage_window`` training steps (a
    ring buffer of per-step counts). A code is dead when it has been in the codebook for at least
    ``usage_window`` steps and was chosen fewer than ``dead_code_threshold`` times in that window; dead codes
    are restarted from randomly chosen rows of the current batch (training mode only).

    Distributed (``distributed=``, over ``process_group`` or the default group):
        - "replicated": data parallel, every rank holds all K codes. EMA statistics, k-means statistics and
          usage counts are all-reduced, and k-means seeds and dead-code restart features come from rank 0,
          so every rank keeps identical codes (rank 0's initial codes are broadcast on the first forward).
          Learned/SimVQ gradients are averaged as usual by DDP.
        - "sharded": model parallel, rank r owns global codes ``[r*K/world, (r+1)*K/world)`` and every rank
          must pass the same x (as with a vocab-parallel embedding). Each rank searches its shard, one
          all_reduce(MIN) of packed (distance, index) keys picks the global winner (ties to the lower
          global index), and one all_reduce(SUM) of the owned winner rows builds quantized; codebook
          gradients stay on the owning rank. ``vq.codebook`` is then the local shard. SimVQ keeps one map W
          on every rank (its gradient is summed over the group by a hook; the basis is sharded).

    Args:
        dim: size of the last dimension of x.
        codebook_size: K, the total number of codes (over all ranks when sharded).
        metric: "l2", "cosine" or "ip" (see `pyops.vq_search`).
        commitment_weight: weight of ``||x - sg(q)||^2``.
        codebook: "learned", "ema" or "simvq".
        ema_decay: decay of the EMA cluster statistics.
        ema_eps: Laplace smoothing constant of the EMA cluster sizes.
        kmeans_init: initialise the codebook with k-means on the first training batch.
        kmeans_iters: k-means iterations for ``kmeans_init``.
        dead_code_threshold: restart codes used fewer times than this over ``usage_window`` steps (0: never).
        usage_window: number of recent training steps that usage statistics cover.
        rotation_trick: pass gradients to x with the rotation trick instead of the straight-through copy.
        distributed: None (single process), "replicated" or "sharded".
        process_group: the group for ``distributed``; None means the default group.
        backend: the `vq_search` / `vq_segment_sum` backend; None picks the fastest available.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        metric: str = "l2",
        commitment_weight: float = 0.25,
        codebook: str = "learned",
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_window: int = 100,
        rotation_trick: bool = False,
        distributed: Optional[str] = None,
        process_group=None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("codebook_size", codebook_size), ("usage_window", usage_window)):
            check_int("VectorQuantizer", name, value, 1)
        check_choice("VectorQuantizer", "metric", metric, METRICS)
        check_choice("VectorQuantizer", "codebook", codebook, CODEBOOKS)
        check_choice("VectorQuantizer", "distributed", distributed, (None,) + DISTRIBUTED)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"VectorQuantizer: ema_decay={ema_decay} is out of range [0, 1)")
        self.dim, self.codebook_size, self.metric = dim, codebook_size, metric
        self.commitment_weight, self.kind = commitment_weight, codebook
        self.ema_decay, self.ema_eps = ema_decay, ema_eps
        self.kmeans_iters, self.dead_code_threshold = kmeans_iters, dead_code_threshold
        self.rotation_trick, self.backend = rotation_trick, backend

        self.distributed, self.group = distributed, None
        self.world, self.rank = 1, 0
        if distributed is not None:
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError(f"VectorQuantizer: distributed={distributed!r} needs an initialised "
                                   "torch.distributed process group")
            self.group = process_group if process_group is not None else dist.group.WORLD
            self.world, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        if distributed == "sharded" and codebook_size % self.world:
            raise ValueError(f"VectorQuantizer: codebook_size={codebook_size} must be divisible by the "
                             f"world size {self.world} when sharded")
        sharded = distributed == "sharded"
        self.num_local = codebook_size // self.world if sharded else codebook_size
        self.offset = self.rank * self.num_local if sharded else 0  # global index of local code 0

        init = torch.randn(self.num_local, dim) * dim ** -0.5
        if codebook == "learned":
            self.embed = nn.Parameter(init)
        elif codebook == "ema":
            # Starting cluster sizes at 1 with sums equal to the codes keeps an unused code where it is
            # (sum / size stays the code as both decay) instead of collapsing it to zero.
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.ones(self.num_local))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.register_buffer("basis", init)
            self.proj = nn.Linear(dim, dim, bias=False)
        self._fp32_buffers = ("embed", "cluster_size", "embed_sum", "usage_history", "code_age")
        self.register_buffer("usage_history", torch.zeros(usage_window, codebook_size))  # per-step counts
        self.register_buffer("code_age", torch.zeros(self.num_local))  # training steps since (re)start
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        # Replicated codes (and sharded SimVQ's one shared map W) start as rank 0's: broadcast on the first
        # forward, once the module is on its device (NCCL cannot broadcast the CPU tensors built here).
        self._needs_sync = distributed == "replicated" or (sharded and codebook == "simvq")
        if sharded and codebook == "simvq":
            self.proj.weight.register_hook(functools.partial(_all_reduce_grad, group=self.group))

    # ------------------------------------------------------------------------------------------------------
    # State.

    def _sync_from_rank0(self) -> None:
        if self.distributed == "sharded":
            state = [self.proj.weight]  # the basis is sharded, W is shared
        elif self.kind == "ema":
            state = [self.embed, self.cluster_size, self.embed_sum]
        else:
            state = [self.basis, self.proj.weight] if self.kind == "simvq" else [self.embed]
        for t in state:
            dist.broadcast(t.data, src=dist.get_global_rank(self.group, 0), group=self.group)
        self._needs_sync = False

    def _apply(self, fn, recurse=True):
        # Keep EMA and usage statistics in fp32 when the module is cast (e.g. vq.to(torch.bfloat16)).
        super()._apply(fn, recurse)
        for name in self._fp32_buffers:
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    @property
    def codebook(self) -> Tensor:  # [K, dim] (the local [K / world, dim] shard when sharded)
        """The effective codes (differentiable for "learned" and "simvq"); unit vectors for "cosine"."""
        if self.kind == "simvq":
            codes = self.proj(self.basis)
        else:
            codes = self.embed
        return F.normalize(codes, dim=-1) if self.metric == "cosine" else codes

    def usage(self) -> Dict[str, Tensor]:
        """Code usage over the last ``usage_window`` training steps (all ranks' batches when distributed).

        Returns:
            ``{"counts": (K,) fp32, "fraction_used": fraction of codes chosen at least once,
            "perplexity": exp(entropy) of the code distribution, K when uniform}``.
        """
        counts = self.usage_history.sum(0)
        total = counts.sum()
        p = counts / total.clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return {"counts": counts, "fraction_used": (counts > 0).float().mean(), "perplexity": entropy.exp()}

    # ------------------------------------------------------------------------------------------------------
    # Forward.

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Quantizes x ``(..., dim)``.

        Returns:
            ``(quantized (..., dim) like x, indices x.shape[:-1] int64, loss () fp32)``.
        """
        codes_at = self.basis if self.kind == "simvq" else self.embed  # where the codebook lives
        check_tensor("VectorQuantizer", "x", x, floating=True, like=("codebook", codes_at), same_dtype=False)
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: x must have shape (..., dim) with dim={self.dim}, got "
                             f"{tuple(x.shape)}")
        if self._needs_sync:
            self._sync_from_rank0()
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim)  # [N, dim]
        if self.metric == "cosine":
            flat = F.normalize(flat, dim=-1)
        # An empty batch has nothing to learn from; a rank skipping the update would stall the others' collectives.
        learn = self.training and flat.shape[0] > 0
        if self.training and flat.shape[0] == 0 and self.distributed is not None:
            raise ValueError("VectorQuantizer: x is empty; in distributed training every rank needs a non-empty batch")
        if learn and not bool(self.initted):
            self._kmeans_init(flat.detach().float())

        codes = self.codebook  # [K_local, dim], once per step: SimVQ's W(basis) and the code norms
        indices = self._search(flat.detach(), codes.detach().to(x.dtype))  # [N] global
        q = self._gather(codes, indices).to(x.dtype)  # [N, dim]; grads reach only the chosen codes

        commit = _mean_square(flat.float() - q.detach().float())
        loss = self.commitment_weight * commit
        if self.kind != "ema":
            loss = loss + _mean_square(q.float() - flat.detach().float())

        if self.rotation_trick:
            rotated = _rotate_to(flat, q)  # forward value q exactly, gradient through the rotation
            out = q.detach() + (rotated - rotated.detach()).to(x.dtype)
        else:
            # Straight-through, dL/dx = dL/dquantized; written so the forward value is exactly q (x + (q - x)
            # would round in bf16).
            out = q.detach() + (flat - flat.detach())

        if learn:
            with torch.no_grad():
                self._update(flat.detach().float(), indices)
        return out.reshape(x.shape), indices.reshape(lead), loss

    def _search(self, flat: Tensor, codes: Tensor) -> Tensor:  # [N, dim], [K_local, dim] -> [N]
        if self.training or torch.compiler.is_compiling():
            self.__dict__.pop("_index_cache", None)  # training changes the codes every step: free the index
            d, i = vq_search(flat, codes, metric=self.metric, backend=self.backend)
        else:
            d, i = self._eval_index(codes).search(flat, backend=self.backend)
        if self.distributed != "sharded":
            return i[:, 0]
        keys = pack_keys(d[:, 0], i[:, 0] + self.offset)
        dist.all_reduce(keys, op=dist.ReduceOp.MIN, group=self.group)
        return unpack_indices(keys)

    def _eval_index(self, codes: Tensor) -> VQIndex:
        """A prepared index of `codes` (the effective codebook in x's dtype), reused while the tensors it is
        computed from are unchanged: an eval loop or tokenizer then prepares the codebook once, not per call."""
        sources = (self.basis, self.proj.weight) if self.kind == "simvq" else (self.embed,)
        # In-place updates (optimizer steps, EMA, restarts, load_state_dict) bump _version; moves change data_ptr.
        key = tuple((t.data_ptr(), t._version) for t in sources) + (codes.dtype, codes.device)
        cached = self.__dict__.get("_index_cache")  # a plain attribute: not a submodule, not in the state dict
        if cached is None or cached[0] != key:
            cached = (key, VQIndex(codes, metric=self.metric))
            self.__dict__["_index_cache"] = cached
        return cached[1]

    def _gather(self, codes: Tensor, indices: Tensor) -> Tensor:  # [K_local, dim], [N] -> [N, dim]
        if self.distributed != "sharded":
            return codes[indices]
        local = indices - self.offset
        owned = (local >= 0) & (local < self.num_local)
        rows = codes[local.clamp(0, self.num_local - 1)] * owned[:, None].to(codes.dtype)
        return _SumFromShards.apply(rows, self.group)

    # ------------------------------------------------------------------------------------------------------
    # Training-time updates (no autograd).

    def _local(self, indices: Tensor) -> Tuple[Tensor, Tensor]:
        """This rank's rows of a global assignment: (row mask, local code index)."""
        local = indices - self.offset
        mask = (local >= 0) & (local < self.num_local)
        return mask, local[mask]

    def _all_reduce(self, *tensors: Tensor) -> None:
        if self.distributed == "replicated":
            for t in tensors:
                dist.all_reduce(t, group=self.group)

    def _from_rank0(self, t: Tensor) -> Tensor:
        """Replicated mode: rank 0's value of t on every rank (random choices must agree)."""
        if self.distributed == "replicated":
            dist.broadcast(t, src=dist.get_global_rank(self.group, 0), group=self.group)
        return t

    def _sample_rows(self, feats: Tensor, n: int) -> Tensor:  # [N, dim] -> [n, dim]
        if feats.shape[0] >= n:
            pick = torch.randperm(feats.shape[0], device=feats.device)[:n]
        else:
            pick = torch.randint(feats.shape[0], (n,), device=feats.device)
        return self._from_rank0(feats[pick].contiguous())

    def _segment_stats(self, feats: Tensor, indices: Tensor) -> Tuple[Tensor, Tensor]:
        """(sums (K_local, dim), counts (K_local,)) of this rank's codes, summed over ranks if replicated."""
        if self.distributed == "sharded":
            mask, local = self._local(indices)
            feats = feats[mask]
        else:
            local = indices
        sums, counts = vq_segment_sum(feats, local, self.num_local, backend=self.backend)
        self._all_reduce(sums, counts)
        return sums, counts

    @torch.no_grad()
    def _kmeans_init(self, feats: Tensor) -> None:  # [N, dim] fp32
        centroids = self._sample_rows(feats, self.num_local)  # [K_local, dim]
        for _ in range(self.kmeans_iters):
            indices = self._search(feats, centroids)
            sums, counts = self._segment_stats(feats, indices)
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]  # an empty cluster keeps its seed
            if self.metric == "cosine":
                centroids = F.normalize(centroids, dim=-1)
        if self.kind == "simvq":  # W = I, so the codes are the centroids and W trains from there
            self.proj.weight.copy_(torch.eye(self.dim, device=feats.device))
            self.basis.copy_(centroids)
        else:
            self._set_codes(torch.arange(self.num_local, device=feats.device), centroids)
        self.initted.fill_(True)

    def _set_codes(self, which: Tensor, values: Tensor) -> None:  # [M] local indices, [M, dim] fp32
        if self.kind == "simvq":
            # code = W basis, so the basis row that yields `values` solves W b = v.
            w = self.proj.weight.float()
            sol = torch.linalg.lstsq(w, values.T.to(w)).solution.T
            self.basis[which] = sol.to(self.basis.dtype)
            return
        self.embed.data[which] = values.to(self.embed.dtype)
        if self.kind == "ema":
            self.cluster_size[which] = 1.0
            self.embed_sum[which] = values

    @torch.no_grad()
    def _update(self, feats: Tensor, indices: Tensor) -> None:  # [N, dim] fp32, [N] global
        counts_all = torch.zeros(self.codebook_size, device=feats.device).index_add_(
            0, indices, torch.ones_like(indices, dtype=torch.float32))
        self._all_reduce(counts_all)
        slot = int(self.steps) % self.usage_history.shape[0]
        self.usage_history[slot] = counts_all
        self.steps += 1
        self.code_age += 1

        if self.kind == "ema":
            sums, counts = self._segment_stats(feats, indices)
            decay = self.ema_decay
            self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            # Laplace smoothing keeps every size positive while preserving the total (over all shards).
            n = self.cluster_size.sum()
            if self.distributed == "sharded":
                dist.all_reduce(n, group=self.group)
            size = (self.cluster_size + self.ema_eps) / (n + self.codebook_size * self.ema_eps) * n
            self.embed.copy_(self.embed_sum / size[:, None])

        if self.dead_code_threshold > 0:
            window = self.usage_history.shape[0]
            recent = self.usage_history.sum(0)[self.offset:self.offset + self.num_local]
            dead = ((recent < self.dead_code_threshold) & (self.code_age >= window)).nonzero()[:, 0]
            if len(dead):  # identical on every rank when replicated: built from all-reduced counts
                self._set_codes(dead, self._sample_rows(feats, len(dead)))
                self.code_age[dead] = 0
