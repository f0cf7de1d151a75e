"""A codebook prepared once for many nearest-code searches: FAISS's IndexFlat for `pyops.vq_search`.

`vq_search(x, codebook)` prepares the codebook on every call: code norms, and on CPU an int8 copy (a read of
the whole fp32 codebook, more than the search itself when N is small); on GPU the tensor-core search converts
fp32 codes tile by tile. A tokenizer or an eval loop searches the same codebook thousands of times between
updates, so `VQIndex` keeps that preparation:

- ``stat`` ``(K,)``: ||c||^2 (l2), 1 / max(||c||, eps) (cosine) or zeros (ip), fp32 (fp64 for fp64 codes);
- ``packed``: on CPU the int8 tiles of `csrc/cpu/vq_int8.h` (per-code scales in ``code_scale``), which the
  AMX and AVX512-VNNI kernels read as they are; on GPU a 16-bit copy ``(K, D)``; empty for ``"fp32"``.

Searches return exactly what `vq_search` returns: candidates from the prepared scores, re-ranked against
the fp32 codes, so distances are exact and only near-ties can differ from an fp32 brute force (see
`pyops.vq`). The index references the codebook (no copy): after changing codes in place, call
``update_(rows=...)``; a search on a codebook changed behind the index's back raises a ValueError.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_int, check_tensor
from .reference import vq as reference
from .vq import MAX_K, METRICS, _fake_search, _out_dtype, _search_torch

if _backend.HAS_TRITON:
    from .triton_kernels import vq as _triton  # noqa: F401  (registers pyops::vq_index_search_triton)

PRECISIONS = ("auto", "int8", "bf16", "fp16", "fp32")
_GROUP = 16  # codes per packed int8 group (kGroup in vq_int8.h)


def _fake_index_search(x, codebook, packed, code_scale, stat, k, metric):
    return _fake_search(x, codebook, k, metric, packed.numel() == 0)


def _fake_index_pack(codebook, rows, packed, code_scale):
    return None


if _backend._NATIVE_ERROR is None:
    torch.library.register_fake("pyops::vq_index_search")(_fake_index_search)
    torch.library.register_fake("pyops::vq_index_pack")(_fake_index_pack)


def int8_supported() -> bool:
    """Whether the CPU search has int8 kernels (AVX512-VNNI or AMX) at the active ISA level."""
    return _backend._NATIVE_ERROR is None and torch.ops.pyops.vq_int8_supported()


def _resolve_precision(precision: str, codebook: Tensor) -> str:
    """The precision an index of `codebook` holds for `precision` ("auto" picks the fastest)."""
    op = "VQIndex"
    if codebook.dtype == torch.float64 and precision not in ("auto", "fp32"):
        raise TypeError(f"{op}: a float64 codebook searches in fp64 (precision='fp32' or 'auto'), got "
                        f"precision={precision!r}")
    if codebook.device.type == "cpu":
        if precision == "auto":
            return "int8" if codebook.dtype != torch.float64 and int8_supported() else "fp32"
        if precision in ("bf16", "fp16"):
            raise ValueError(f"{op}: precision={precision!r} is a GPU precision; on CPU use 'int8' or 'fp32'")
        if precision == "int8" and not int8_supported():
            raise RuntimeError(f"{op}: precision='int8' needs a CPU with AVX512-VNNI at the avx512 or amx ISA "
                               f"level (active: {torch.ops.pyops.cpu_isa()}); use precision='fp32'")
        return precision
    if precision == "auto":
        return "fp16" if codebook.dtype == torch.float16 else "bf16"
    if precision == "int8":
        raise ValueError(f"{op}: precision='int8' is a CPU precision; on GPU use 'bf16', 'fp16' or 'fp32'")
    return precision


def _code_stat(codes: Tensor, metric: str) -> Tensor:
    """The per-code score term (see the module docstring) of codes [M, D], fp32 (fp64 for fp64)."""
    math = _out_dtype(codes)
    if metric == "ip":
        return codes.new_zeros(codes.shape[0], dtype=math)
    norm = torch.linalg.vector_norm(codes, dim=1, dtype=math)  # one pass, no (K, D) temporary
    return norm.square() if metric == "l2" else 1 / norm.clamp_min(reference.NORM_EPS)


class VQIndex(torch.nn.Module):
    """The k nearest codes of many query batches against one prepared codebook.

    Args:
        codebook: ``(K, D)`` codes, fp32/fp16/bf16 (fp64 on CPU); referenced, not copied.
        metric: "l2", "cosine" or "ip" (see `pyops.vq_search`).
        precision: the search scores: "int8" (CPU: AMX or AVX512-VNNI tiles), "bf16" / "fp16" (GPU tensor
            cores), "fp32" (exact fp32 scores; fp64 for fp64 codes), or "auto": int8 on CPUs that have the
            int8 kernels, else fp32; the codebook's 16-bit type on GPU (bf16 for fp32 codes).

    ``index.search(x, k)`` returns what ``vq_search(x, codebook, k=k, metric=metric)`` returns. Moving the
    index (``.to(device)``) or loading a state dict re-prepares it; the state dict holds the codebook, the
    metric and the requested precision (loading writes the codes into the referenced codebook, as
    ``update_(codes, rows)`` does).
    """

    def __init__(self, codebook: Tensor, *, metric: str = "l2", precision: str = "auto"):
        super().__init__()
        check_choice("VQIndex", "metric", metric, METRICS)
        check_choice("VQIndex", "precision", precision, PRECISIONS)
        self.metric, self.requested_precision = metric, precision
        self.register_buffer("codebook", self._checked_codebook(codebook))
        for name in ("stat", "packed", "code_scale"):
            self.register_buffer(name, None, persistent=False)
        self._build()

    @staticmethod
    def _checked_codebook(codebook: Tensor) -> Tensor:
        check_tensor("VQIndex", "codebook", codebook, (None, None), floating=True)
        if codebook.shape[0] == 0:
            raise ValueError("VQIndex: codebook is empty")
        _backend.check_finite("VQIndex", "codebook", codebook)
        return codebook.detach()

    def _build(self) -> None:
        """(Re)prepares every code of the current codebook."""
        cb = self.codebook = self.codebook.contiguous()
        self.precision = _resolve_precision(self.requested_precision, cb)
        num_codes, dim = cb.shape
        self.stat = _code_stat(cb, self.metric)
        self.code_scale = cb.new_empty(0, dtype=torch.float32)
        if self.precision == "int8":
            groups = -(-num_codes // _GROUP)
            self.packed = torch.empty((groups, -(-dim // 64) * 16, _GROUP, 4), dtype=torch.uint8)
            self.packed[-1].fill_(128)  # the padding codes of a partial last group: q = 0, scale 0
            self.code_scale = torch.zeros(groups * _GROUP)
            torch.ops.pyops.vq_index_pack(cb, torch.arange(num_codes), self.packed, self.code_scale)
        elif self.precision in ("bf16", "fp16"):
            self.packed = cb.to(torch.bfloat16 if self.precision == "bf16" else torch.float16).contiguous()
        else:
            self.packed = cb.new_empty(0)
        self._version = cb._version

    # ------------------------------------------------------------------------------------------------------
    # Search.

    def search(self, x: Tensor, k: int = 1, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """``(distances, indices)``, each ``(..., k)``, of the k nearest codes of every vector of x ``(..., D)``
        (x in the codebook's dtype and device); the contract of `pyops.vq_search`."""
        cb = self.codebook
        check_tensor("VQIndex.search", "x", x, floating=True, like=("codebook", cb))
        if x.dim() == 0 or x.shape[-1] != cb.shape[1]:
            raise ValueError(f"VQIndex.search: x must have shape (..., D) with D={cb.shape[1]} (the codebook's), "
                             f"got {tuple(x.shape)}")
        check_int("VQIndex.search", "k", k, 1, min(cb.shape[0], MAX_K))
        if not torch.compiler.is_compiling() and cb._version != self._version:
            raise ValueError("VQIndex.search: the codebook was changed in place after the index was prepared "
                             "(a stale index); call index.update_(rows=...) for the changed rows, or update_()")
        _backend.check_finite("VQIndex.search", "x", x)
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, x.shape[-1])
        which = _backend.resolve(backend, x.device, "vq_index_search", gpu_order=("triton", "cuda"))
        if which == "torch":
            d, i = _search_torch(x2, cb, k, self.metric, exact=self.precision == "fp32")
        elif which == "triton":
            d, i = torch.ops.pyops.vq_index_search_triton(x2.contiguous(), cb, self.packed, self.stat, k, self.metric)
        else:
            d, i = torch.ops.pyops.vq_index_search(x2, cb, self.packed, self.code_scale, self.stat, k, self.metric)
        return d.reshape(*lead, k), i.reshape(*lead, k)

    def forward(self, x: Tensor, k: int = 1) -> Tuple[Tensor, Tensor]:
        return self.search(x, k)

    # ------------------------------------------------------------------------------------------------------
    # Updates, moves, state.

    @torch.no_grad()
    def update_(self, codes: Optional[Tensor] = None, rows: Optional[Tensor] = None) -> "VQIndex":
        """Refreshes changed codes.

        - ``update_(codes, rows)``: writes ``codes (M, D)`` into codebook rows ``rows (M,)`` (int64) and re-prepares
          those rows only (EMA, k-means and dead-code restarts change a few rows per step);
        - ``update_(rows=rows)``: the codebook's owner changed those rows in place; re-prepares them;
        - ``update_(codes)``: a new codebook ``(K', D')`` (any size) replaces the old one;
        - ``update_()``: re-prepares every row (the codebook changed in place).
        """
        op = "VQIndex.update_"
        if rows is None:
            if codes is not None:
                self.codebook = self._checked_codebook(codes)
            self._build()
            return self
        cb = self.codebook
        check_tensor(op, "rows", rows, (None,), dtype=torch.long, like=("codebook", cb), same_dtype=False)
        if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < cb.shape[0]):
            raise ValueError(f"{op}: rows has values outside [0, K={cb.shape[0]})")
        if codes is not None:
            check_tensor(op, "codes", codes, (rows.shape[0], cb.shape[1]), like=("codebook", cb))
            _backend.check_finite(op, "codes", codes)
            cb[rows] = codes
        else:
            _backend.check_finite(op, "codebook", cb[rows])
        self.stat[rows] = _code_stat(cb[rows], self.metric)
        if self.precision == "int8":
            torch.ops.pyops.vq_index_pack(cb, rows, self.packed, self.code_scale)
        elif self.packed.numel():
            self.packed[rows] = cb[rows].to(self.packed.dtype)
        self._version = cb._version
        return self

    def _apply(self, fn, recurse=True):
        # The prepared data is device-specific (int8 tiles on CPU, 16-bit copies on GPU): move or cast the
        # codebook, then prepare again.
        self.codebook = fn(self.codebook)
        self._build()
        return self

    def get_extra_state(self):
        return {"metric": self.metric, "precision": self.requested_precision}

    def set_extra_state(self, state) -> None:
        # Runs after load_state_dict has copied the codebook in: prepare the loaded codes.
        check_choice("VQIndex", "metric", state["metric"], METRICS)
        check_choice("VQIndex", "precision", state["precision"], PRECISIONS)
        self.metric, self.requested_precision = state["metric"], state["precision"]
        self._build()

    def extra_repr(self) -> str:
        return (f"codes={self.codebook.shape[0]}, dim={self.codebook.shape[1]}, metric={self.metric!r}, "
                f"precision={self.precision!r}")
