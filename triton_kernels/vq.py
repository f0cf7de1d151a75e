"""Triton kernels of pyops::vq_search, pyops::vq_index_search and pyops::vq_segment_sum, registered as
torch.library.triton_op so torch.compile sees them. Same semantics as the native ops (csrc/include/pyops/
vq_math.h): the N x K distance matrix is never built. The search walks the codebook in [BLOCK_N, D] tiles
against [BLOCK_M, D] row blocks with tl.dot and keeps a running top-k' per row in registers
(k' = min(K, k + 8)); the re-rank recomputes the candidates' exact distances from the inputs and writes the
top k. Extra memory: the code norms [K], the candidates [N, splits * k'] and the outputs. The prepared-index
variant (pyops.VQIndex) takes the norms, and a 16-bit copy of the codebook for the search, from the index
instead of computing them per call."""

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

RERANK_EXTRA = 8  # kRerankExtra in vq_math.h
NORM_EPS: tl.constexpr = tl.constexpr(1e-12)  # kNormEps in vq_math.h
METRIC_IDS = {"l2": 0, "cosine": 1, "ip": 2}
# Placeholder code index of empty top-k slots: >= K for any codebook, so the re-rank skips it. Slot j holds
# _EMPTY - j, keeping every index in a row's running list distinct.
_EMPTY: tl.constexpr = tl.constexpr(2**31 - 1)
_MAX_CANDIDATES = 512  # bound on splits * k', the candidates one re-rank program holds
_MAX_K = 128  # kMaxK in vq_math.h


@triton.jit
def _vq_code_norms_kernel(c_ptr, out_ptr, K, D, COSINE: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    # out[j] = ||c_j||^2 (l2) or 1 / max(||c_j||, eps) (cosine), in fp32.
    code = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = code < K
    acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        c = tl.load(c_ptr + code[:, None] * D + d[None, :], mask=kmask[:, None] & (d < D)[None, :], other=0.0)
        c = c.to(tl.float32)
        acc += c * c
    sq = tl.sum(acc, axis=1)
    if COSINE:
        sq = 1.0 / tl.maximum(tl.sqrt(sq), NORM_EPS)
    tl.store(out_ptr + code, sq, mask=kmask)


@triton.jit
def _vq_search_kernel(x_ptr, c_ptr, norm_ptr, cand_ptr, N, K, D, codes_per_split, cands_per_row,
                      METRIC: tl.constexpr, KC: tl.constexpr, KP: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    # Program (row block, split): rows [BLOCK_M), codes [split * codes_per_split, +codes_per_split). Writes
    # the split's top-KC code indices of every row (unordered) to cand[row, split * KC : (split + 1) * KC].
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    code_start = split * codes_per_split
    code_end = tl.minimum(code_start + codes_per_split, K)
    x_base = x_ptr + rows[:, None] * D  # [BLOCK_M, 1]
    row_mask = (rows < N)[:, None]
    acc_ty: tl.constexpr = tl.float32

    # The running top-KC of each row, unordered, in slots [0, KC); slots [KC, KP) are padding that is never
    # the worst entry. worst_* is the entry a better code replaces: the largest (score, index).
    slot = tl.arange(0, KP)[None, :]
    run_s = tl.where(slot < KC, tl.full((BLOCK_M, KP), float("inf"), acc_ty), -float("inf"))
    run_i = tl.where(slot < KC, _EMPTY - slot, -1 - slot) + tl.zeros((BLOCK_M, KP), tl.int32)
    worst_s = tl.full((BLOCK_M,), float("inf"), acc_ty)
    worst_i = tl.full((BLOCK_M,), _EMPTY, tl.int32)
    cols = tl.arange(0, BLOCK_N)

    for n0 in range(code_start, code_end, BLOCK_N):
        codes = n0 + cols  # [BLOCK_N]
        code_mask = codes < code_end
        c_base = c_ptr + codes.to(tl.int64)[None, :] * D  # [1, BLOCK_N]
        acc = tl.zeros((BLOCK_M, BLOCK_N), acc_ty)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_mask = d < D
            xv = tl.load(x_base + d[None, :], mask=row_mask & d_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
            # [BLOCK_D, BLOCK_N]
            cv = tl.load(c_base + d[:, None], mask=code_mask[None, :] & d_mask[:, None], other=0.0)
            if UPCAST:
                xv = xv.to(acc_ty)
                cv = cv.to(acc_ty)
            acc = tl.dot(xv, cv, acc, input_precision=PRECISION, out_dtype=acc_ty)
        # Search score, smaller is nearer (see vq_math.h); codes past the split are +inf.
        if METRIC == 0:
            s = tl.load(norm_ptr + codes, mask=code_mask, other=0.0)[None, :] - 2.0 * acc
        elif METRIC == 1:
            s = -acc * tl.load(norm_ptr + codes, mask=code_mask, other=0.0)[None, :]
        else:
            s = -acc
        # Only codes strictly better than the current worst can enter: every code of this tile has a larger
        # index than all the codes kept so far, so an equal score loses the tie.
        s = tl.where(code_mask[None, :] & (s < worst_s[:, None]), s, float("inf"))
        passing = tl.sum((s < float("inf")).to(tl.int32), axis=1)
        rounds = tl.minimum(tl.max(passing, axis=0), KC)
        # Each round moves every row's best remaining tile entry (lowest index among equal scores) into its
        # list if it beats the worst; after KC rounds nothing left in the tile can. Past the first tile
        # few codes pass, so most tiles take zero or one round.
        for _ in range(rounds):
            m, arg = tl.min(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
            hit = (run_i == worst_i[:, None]) & (m < worst_s)[:, None]
            run_s = tl.where(hit, m[:, None], run_s)
            run_i = tl.where(hit, (n0 + arg)[:, None], run_i)
            s = tl.where(cols[None, :] == arg[:, None], float("inf"), s)
            worst_s = tl.max(run_s, axis=1)
            worst_i = tl.max(tl.where(run_s == worst_s[:, None], run_i, -1 - KP), axis=1)

    out = cand_ptr + rows[:, None] * cands_per_row + split * KC + slot
    tl.store(out, run_i, mask=row_mask & (slot < KC))


@triton.jit
def _vq_rerank_kernel(x_ptr, c_ptr, cand_ptr, dist_ptr, idx_ptr, K, D, num_cands, k, METRIC: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    # Program = one row: exact fp32 distances of its num_cands candidates over D in
    # chunks, then the k best by (distance, index), nearest first.
    row = tl.program_id(0).to(tl.int64)
    p = tl.arange(0, BLOCK_C)
    idx = tl.load(cand_ptr + row * num_cands + p, mask=p < num_cands, other=-1)
    valid = (idx >= 0) & (idx < K)
    c_base = c_ptr + tl.where(valid, idx, 0).to(tl.int64)[:, None] * D  # [BLOCK_C, 1]
    math_ty: tl.constexpr = tl.float32
    acc = tl.zeros((BLOCK_C, BLOCK_D), math_ty)  # l2: squared differences; cosine, ip: products
    acc_cc = tl.zeros((BLOCK_C, BLOCK_D), math_ty)  # cosine: the codes' squares
    acc_xx = tl.zeros((BLOCK_D,), math_ty)  # cosine: x's squares
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        xv = tl.load(x_ptr + row * D + d, mask=d_mask, other=0.0).to(math_ty)[None, :]
        cv = tl.load(c_base + d[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0).to(math_ty)
        if METRIC == 0:
            diff = xv - cv
            acc += diff * diff
        else:
            acc += xv * cv
            if METRIC == 1:
                acc_cc += cv * cv
                acc_xx += tl.reshape(xv * xv, (BLOCK_D,))
    if METRIC == 0:
        dist = tl.sum(acc, axis=1)
    elif METRIC == 1:
        # IEEE-rounded sqrt and division (tl.sqrt and / are the approximate ones on GPU), as torch computes.
        nx = tl.maximum(tl.math.sqrt_rn(tl.sum(acc_xx, axis=0)), NORM_EPS)
        nc = tl.maximum(tl.math.sqrt_rn(tl.sum(acc_cc, axis=1)), NORM_EPS)
        dist = 1.0 - tl.math.div_rn(tl.sum(acc, axis=1), nx * nc)
    else:
        dist = -tl.sum(acc, axis=1)
    dist = tl.where(valid, dist, float("inf"))
    key = tl.where(valid, idx, _EMPTY)
    # k selection rounds: the smallest distance, the lowest index among equal ones, then strike it out.
    for j in range(k):
        m = tl.min(dist, axis=0)
        sel = tl.min(tl.where(dist == m, key, _EMPTY), axis=0)
        tl.store(dist_ptr + row * k + j, m)
        tl.store(idx_ptr + row * k + j, sel.to(tl.int64))
        taken = key == sel
        dist = tl.where(taken, float("inf"), dist)
        key = tl.where(taken, _EMPTY, key)


@triton.jit
def _vq_segment_sum_kernel(v_ptr, i_ptr, sums_ptr, counts_ptr, N, D, S, BLOCK_R: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    # Program (row block, column block) adds its [BLOCK_R, BLOCK_D] values into sums[indices]; the first
    # column block also counts the rows. Indices outside [0, S) are skipped.
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    seg = tl.load(i_ptr + r, mask=r < N, other=-1)
    ok = (r < N) & (seg >= 0) & (seg < S)
    mask = ok[:, None] & (d < D)[None, :]
    v = tl.load(v_ptr + r[:, None] * D + d[None, :], mask=mask, other=0.0).to(sums_ptr.dtype.element_ty)
    tl.atomic_add(sums_ptr + seg[:, None] * D + d[None, :], v, mask=mask, sem="relaxed")
    if tl.program_id(1) == 0:
        ones = tl.full((BLOCK_R,), 1.0, counts_ptr.dtype.element_ty)
        tl.atomic_add(counts_ptr + seg, ones, mask=ok, sem="relaxed")


def _math_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _search_settings(n: int, num_codes: int, kc: int, dtype: torch.dtype, exact: bool, device: torch.device):
    """Block sizes, warps and stages of the search, and the number of code splits per row block."""
    if device.type != "cuda":
        # Interpreter: small tiles and up to 3 splits so tests reach several code tiles, D chunks and splits.
        block_m, block_n, block_d, warps, stages = 16, 32, 32, 1, 1
        target, min_tiles = 3, 1
    else:
        props = torch.cuda.get_device_properties(device)
        target, min_tiles = 2 * props.multi_processor_count, 4
        block_m = 64 if n > 32 else 16
        block_n = 128 if block_m == 64 else 64
        block_d = 64 if dtype in (torch.float16, torch.bfloat16) and not exact else 32
        warps, stages = (8 if block_m == 64 else 4), 3
        # Many rows, 16-bit tensor-core search: 128 x 256 tiles ran at 412 TFLOP/s on an H100 against 254 for
        # 64 x 128 (benchmarks/tune_vq_triton.py, N = K = 65,536); they need 144 KiB of shared memory.
        big_tile_smem = stages * (128 * block_d + block_d * 256) * 2
        if (block_d == 64 and n >= 16384
                and getattr(props, "shared_memory_per_block_optin", 0) >= big_tile_smem):
            block_m, block_n = 128, 256
    row_blocks = triton.cdiv(n, block_m)
    tiles = triton.cdiv(num_codes, block_n)
    # Split the codebook when there are too few row blocks to fill the GPU (2 programs per SM); keep each
    # split at least min_tiles tiles long and the re-rank's splits * k' candidates bounded.
    splits = max(1, min(triton.cdiv(target, row_blocks), triton.cdiv(tiles, min_tiles), _MAX_CANDIDATES // kc))
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)
    return block_m, block_n, block_d, warps, stages, splits, tiles_per_split * block_n


def _search(x: Tensor, codebook: Tensor, search_x: Tensor, search_c: Tensor, stat, k: int, metric: str,
            exact: bool) -> Tuple[Tensor, Tensor]:
    """Search + exact re-rank shared by vq_search_triton and vq_index_search_triton. The search stage scores
    search_x [N, D] against search_c [K, D] (x and codebook, or their 16-bit copies) with the per-code stat
    [K] fp32 (None: computed here from codebook); the re-rank reads x and codebook."""
    n, dim = x.shape
    num_codes = codebook.shape[0]
    dist = x.new_empty(n, k, dtype=torch.float32)
    idx = x.new_empty(n, k, dtype=torch.long)
    if n == 0:
        return dist, idx
    metric_id = METRIC_IDS[metric]
    kc = min(num_codes, k + RERANK_EXTRA)
    kp = triton.next_power_of_2(kc)

    # (1) Code norms, once per call unless prepared: ||c||^2 for l2, 1 / max(||c||, eps) for cosine (unused
    # for ip).
    if stat is None:
        stat = codebook.new_empty(num_codes if metric_id != 2 else 1, dtype=torch.float32)
        if metric_id != 2:
            block_k = 64 if x.is_cuda else 32
            torch.library.wrap_triton(_vq_code_norms_kernel)[(triton.cdiv(num_codes, block_k),)](
                codebook, stat, num_codes, dim, COSINE=metric_id == 1, BLOCK_K=block_k, BLOCK_D=64, num_warps=4)

    # (2) Search: tensor cores in the operands' precision (tf32 for fp32) unless exact; fp32 math for exact.
    block_m, block_n, block_d, warps, stages, splits, codes_per_split = _search_settings(
        n, num_codes, kc, search_x.dtype, exact, x.device)
    cands_per_row = splits * kc
    cand = x.new_empty(n, cands_per_row, dtype=torch.int32)
    low_precision = search_x.dtype in (torch.float16, torch.bfloat16)
    if exact:
        upcast, precision = low_precision, "ieee"
    else:
        upcast, precision = False, "tf32"  # Triton's default; it only changes fp32 operands
    if search_x.dtype == torch.bfloat16 and not x.is_cuda:
        # Triton's interpreter multiplies bf16 tiles as their raw uint16 bits (triton 3.8); bf16 -> fp32 is
        # exact and a bf16 tensor-core dot accumulates exact products in fp32, so this is the same search.
        upcast = True
    torch.library.wrap_triton(_vq_search_kernel)[(triton.cdiv(n, block_m), splits)](
        search_x, search_c, stat, cand, n, num_codes, dim, codes_per_split, cands_per_row, METRIC=metric_id,
        KC=kc, KP=kp, UPCAST=upcast, PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages)

    # (3) Re-rank: exact distances of the candidates, top k by (distance, index).
    block_c = triton.next_power_of_2(cands_per_row)
    rerank_d = max(16, min(256, 4096 // block_c, triton.next_power_of_2(dim)))
    torch.library.wrap_triton(_vq_rerank_kernel)[(n,)](
        x, codebook, cand, dist, idx, num_codes, dim, cands_per_row, k, METRIC=metric_id, BLOCK_C=block_c,
        BLOCK_D=rerank_d, num_warps=4 if block_c * rerank_d <= 4096 else 8)
    return dist, idx


@torch.library.triton_op("pyops::vq_search_triton", mutates_args=())
def vq_search_triton(x: Tensor, codebook: Tensor, k: int, metric: str, exact: bool) -> Tuple[Tensor, Tensor]:
    if x.dtype == torch.float64:
        raise TypeError("vq_search_triton: float64 runs on the CPU and torch backends only")
    return _search(x, codebook, x, codebook, None, k, metric, exact)


def _check_index(x: Tensor, codebook: Tensor, packed: Tensor, stat: Tensor, k: int, metric: str) -> None:
    """Metadata checks of vq_index_search_triton (no device syncs): an index that does not match its codebook
    would make the kernels read out of bounds."""
    op = "vq_index_search_triton"
    for name, t in (("x", x), ("codebook", codebook)):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"{op}: codebook has dtype {codebook.dtype} but x has {x.dtype}")
    if codebook.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: codebook has dimension {codebook.shape[1]} but x has {x.shape[1]}")
    if codebook.shape[0] < 1:
        raise ValueError(f"{op}: codebook is empty")
    num_codes, dim = codebook.shape
    for name, t in (("codebook", codebook), ("packed", packed), ("stat", stat)):
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if packed.numel() != 0:
        if packed.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{op}: packed must be float16 or bfloat16 (or empty for exact fp32 scores), got "
                            f"{packed.dtype}")
        if tuple(packed.shape) != (num_codes, dim):
            raise ValueError(f"{op}: packed must have shape [{num_codes}, {dim}] (the codebook's), got "
                             f"{tuple(packed.shape)}")
    if stat.dtype != torch.float32:
        raise TypeError(f"{op}: stat must be float32, got {stat.dtype}")
    if tuple(stat.shape) != (num_codes,):
        raise ValueError(f"{op}: stat must have shape [{num_codes}] (one per code), got {tuple(stat.shape)}")
    if metric not in METRIC_IDS:
        raise ValueError(f"{op}: unknown metric {metric!r}; expected 'l2', 'cosine' or 'ip'")
    if not 1 <= k <= min(num_codes, _MAX_K):
        raise ValueError(f"{op}: k={k} is out of range [1, min(K, {_MAX_K})] for a codebook of K={num_codes} codes")


@torch.library.triton_op("pyops::vq_index_search_triton", mutates_args=())
def vq_index_search_triton(x: Tensor, codebook: Tensor, packed: Tensor, stat: Tensor, k: int,
                           metric: str) -> Tuple[Tensor, Tensor]:
    """vq_search_triton against a prepared index (pyops.VQIndex): stat [K] fp32 holds the code norms
    (||c||^2 for l2, 1 / max(||c||, eps) for cosine, unused for ip); packed is a bf16/fp16 copy of the
    codebook [K, D] that the search stage reads (x converted to its dtype, N x D per call), or empty for an
    exact fp32 search of codebook. The re-rank reads x and codebook: the same results contract."""
    _check_index(x, codebook, packed, stat, k, metric)
    x, codebook, stat = x.contiguous(), codebook.contiguous(), stat.contiguous()  # no-ops for a prepared index
    if packed.numel() == 0:
        return _search(x, codebook, x, codebook, stat, k, metric, True)
    search_x = x.to(packed.dtype).contiguous()
    return _search(x, codebook, search_x, packed.contiguous(), stat, k, metric, False)


@torch.library.triton_op("pyops::vq_segment_sum_triton", mutates_args=())
def vq_segment_sum_triton(values: Tensor, indices: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    n, dim = values.shape
    dtype = _math_dtype(values)
    # Zero-filled: the kernel accumulates into both with atomics.
    sums = values.new_zeros(num_segments, dim, dtype=dtype)
    counts = values.new_zeros(num_segments, dtype=dtype)
    if n == 0 or num_segments == 0:
        return sums, counts
    block_d = min(triton.next_power_of_2(max(dim, 1)), 128)
    block_r = max(1, 2048 // block_d) if values.is_cuda else 16
    grid = (triton.cdiv(n, block_r), max(1, triton.cdiv(dim, block_d)))
    torch.library.wrap_triton(_vq_segment_sum_kernel)[grid](
        values, indices, sums, counts, n, dim, num_segments, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)
    return sums, counts
