"""Triton kernels of gsplat's per-tile blending (rasterize_to_pixels, 3DGS), forward and backward, registered as
torch.library.triton_op pyops::gs_rasterize_{fwd,bwd}_triton; same signatures and outputs as the native schemas in
csrc/ops.cpp.

- Forward: one program per (tile, camera); the tile's pixels are the lanes of a [P] vector, the tile's
  depth-sorted Gaussians are walked in chunks of BLOCK_G loaded as vectors. Per chunk, [P, BLOCK_G] alphas,
  transmittance by a cumulative product along the chunk started from the pixel's carried T, and colors
  accumulated with one [P, BLOCK_G] x [BLOCK_G, D] fp32 dot.
- Backward: the same tile walked back to front in chunks, starting at the tile's last blended Gaussian. The
  transmittance before each Gaussian is replayed as T_after_chunk / (suffix product of (1 - alpha)) and the
  colour of what lies behind as a suffix sum, both along the chunk; per-Gaussian gradients are summed over the
  tile's pixels in the program and added to global memory with one atomic per Gaussian and tile.
- `_raster_settings` picks the block sizes (tuned on an H100, checked for register spills on sm_90 by
  tests/gaussians_triton_compile.py).
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gaussians_common import ALPHA_THRESHOLD, _check

# gsplat's constants (cuda/include/Common.h, the rasterization kernels).
MAX_ALPHA: tl.constexpr = tl.constexpr(0.999)
T_EPS: tl.constexpr = tl.constexpr(1e-4)  # a pixel stops before a Gaussian that would take T to <= T_EPS
SMALL_D = 8  # the backward loops over channels up to this many, above it uses fp32 dots


@triton.jit
def _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width, height, TILE: tl.constexpr,
                TILE_P2: tl.constexpr):
    """The tile's pixel lanes (row-major over a TILE_P2 x TILE_P2 square, lanes outside the tile or the image
    masked), and its range [start, end) of the sorted intersections."""
    tile = tl.program_id(0)
    cam = tl.program_id(1).to(tl.int64)
    ty = tile // tile_w
    tx = tile % tile_w
    p = tl.arange(0, TILE_P2 * TILE_P2)
    li = p // TILE_P2
    lj = p % TILE_P2
    i = ty * TILE + li
    j = tx * TILE + lj
    inside = (li < TILE) & (lj < TILE) & (i < height) & (j < width)
    pix = cam * height * width + tl.where(inside, i * width + j, 0).to(tl.int64)
    n_tiles_total = tile_w * tile_h * tl.num_programs(1)
    flat = cam * tile_w * tile_h + tile
    start = tl.load(offsets_ptr + flat)
    nxt = tl.load(offsets_ptr + tl.minimum(flat + 1, n_tiles_total - 1))
    end = tl.where(flat + 1 >= n_tiles_total, n_isects, nxt)
    return cam, inside, pix, j.to(tl.float32) + 0.5, i.to(tl.float32) + 0.5, start, end


@triton.jit
def _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr, flat_ptr, k, km, px, py):
    """Loads a chunk's Gaussians; returns their ids and [P, BLOCK_G] deltas, exp(-sigma), alpha and the
    not-skipped mask (sigma >= 0 and alpha >= 1/255), plus the conic."""
    fid = tl.load(flat_ptr + k, mask=km, other=0).to(tl.int64)
    mx = tl.load(means2d_ptr + fid * 2 + 0, mask=km, other=0.0)
    my = tl.load(means2d_ptr + fid * 2 + 1, mask=km, other=0.0)
    ca = tl.load(conics_ptr + fid * 3 + 0, mask=km, other=0.0)
    cb = tl.load(conics_ptr + fid * 3 + 1, mask=km, other=0.0)
    cc = tl.load(conics_ptr + fid * 3 + 2, mask=km, other=0.0)
    op = tl.load(opac_ptr + fid, mask=km, other=0.0)
    dx = mx[None, :] - px[:, None]
    dy = my[None, :] - py[:, None]
    sigma = 0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + cb[None, :] * dx * dy
    vis = tl.exp(-sigma)
    raw = op[None, :] * vis
    alpha = tl.minimum(MAX_ALPHA, raw)
    ok = km[None, :] & (sigma >= 0.0) & (alpha >= ALPHA_THRESHOLD)
    return fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op


@triton.jit
def _gs_rasterize_fwd_kernel(means2d_ptr, conics_ptr, colors_ptr, opac_ptr, bg_ptr, offsets_ptr, flat_ptr,
                             out_colors_ptr, out_alphas_ptr, last_ids_ptr, out_trans_ptr, n_isects, tile_w, tile_h,
                             width, height, D, HAS_BG: tl.constexpr, TILE: tl.constexpr, TILE_P2: tl.constexpr,
                             BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    P: tl.constexpr = TILE_P2 * TILE_P2
    cam, inside, pix, px, py, start, end = _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width,
                                                       height, TILE, TILE_P2)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    g_ar = tl.arange(0, BLOCK_G)
    T = tl.full((P,), 1.0, tl.float32)  # transmittance before the next Gaussian
    done = ~inside
    acc = tl.zeros((P, BLOCK_D), tl.float32)
    acc_alpha = tl.zeros((P,), tl.float32)  # 1 - T, as the sum of the weights (render_alphas, gaussians_math.h)
    last = tl.full((P,), -1, tl.int32)
    n_done = tl.sum(done.to(tl.int32), axis=0)
    k0 = start
    while (k0 < end) & (n_done < P):
        k = k0 + g_ar
        km = k < end
        fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op = _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr,
                                                                        flat_ptr, k, km, px, py)
        ok = ok & (~done)[:, None]
        one_m = tl.where(ok, 1.0 - alpha, 1.0)
        # T after each Gaussian if every unskipped one blends. T only falls, so the Gaussians that do blend
        # are exactly the unskipped ones before the first with T_after <= T_EPS, i.e. those with T_after > T_EPS.
        t_after = T[:, None] * tl.cumprod(one_m, axis=1)
        blend = ok & (t_after > T_EPS)
        w = tl.where(blend, alpha * (t_after / one_m), 0.0)
        col = tl.load(colors_ptr + fid[:, None] * D + d[None, :], mask=km[:, None] & dmask[None, :], other=0.0)
        acc += tl.dot(w, col, input_precision="ieee")
        acc_alpha += tl.sum(w, axis=1)
        T = tl.minimum(T, tl.min(tl.where(blend, t_after, 1.0), axis=1))
        last = tl.maximum(last, tl.max(tl.where(blend, k[None, :], -1), axis=1))
        done = done | (tl.max((ok & (t_after <= T_EPS)).to(tl.int32), axis=1) > 0)
        n_done = tl.sum(done.to(tl.int32), axis=0)
        k0 += BLOCK_G
    if HAS_BG:
        bg = tl.load(bg_ptr + cam * D + d, mask=dmask, other=0.0)
        acc += T[:, None] * bg[None, :]
    tl.store(out_colors_ptr + pix[:, None] * D + d[None, :], acc, mask=inside[:, None] & dmask[None, :])
    tl.store(out_alphas_ptr + pix, acc_alpha, mask=inside)
    tl.store(out_trans_ptr + pix, T, mask=inside)
    tl.store(last_ids_ptr + pix, last, mask=inside)


@triton.jit
def _gs_rasterize_bwd_kernel(means2d_ptr, conics_ptr, colors_ptr, opac_ptr, bg_ptr, offsets_ptr, flat_ptr,
                             trans_ptr, last_ids_ptr, v_out_colors_ptr, v_out_alphas_ptr, v_means2d_ptr,
                             v_conics_ptr, v_colors_ptr, v_opac_ptr, v_bg_ptr, v_abs_ptr, n_isects,
                             tile_w, tile_h, width, height, D, DC: tl.constexpr, HAS_BG: tl.constexpr,
                             ABSGRAD: tl.constexpr, TILE: tl.constexpr, TILE_P2: tl.constexpr,
                             BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    # DC: the channel count D as a constexpr when D <= SMALL_D (per-channel loops), else 0 (fp32 dots).
    cam, inside, pix, px, py, start, end = _tile_setup(offsets_ptr, n_isects, tile_w, tile_h, width,
                                                       height, TILE, TILE_P2)
    d = tl.arange(0, BLOCK_D)
    g_ar = tl.arange(0, BLOCK_G)
    t_final = tl.load(trans_ptr + pix, mask=inside, other=1.0)
    bin_final = tl.load(last_ids_ptr + pix, mask=inside, other=-1)
    v_a = tl.load(v_out_alphas_ptr + pix, mask=inside, other=0.0)
    # dL/dalpha_k has the term T_final / (1 - alpha_k) * (v_alpha - <bg, v_color>) from 1 - T_final and bg.
    extra = t_final * v_a
    if HAS_BG:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + d
            dm = dd < D
            v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :], mask=inside[:, None] & dm[None, :],
                          other=0.0)  # [P, BLOCK_D]
            bg = tl.load(bg_ptr + cam * D + dd, mask=dm, other=0.0)
            extra -= t_final * tl.sum(v_c * bg[None, :], axis=1)
            tl.atomic_add(v_bg_ptr + cam * D + dd, tl.sum(v_c * t_final[:, None], axis=0), mask=dm, sem="relaxed")
    T = t_final  # transmittance after the chunk being processed
    behind = tl.zeros_like(t_final)  # <colour blended behind the chunk, v_color>
    k_hi = tl.minimum(end, tl.max(bin_final, axis=0) + 1)
    while k_hi > start:
        k = k_hi - BLOCK_G + g_ar  # front to back inside the chunk
        km = k >= start
        fid, dx, dy, vis, raw, alpha, ok, ca, cb, cc, op = _chunk_alpha(means2d_ptr, conics_ptr, opac_ptr,
                                                                        flat_ptr, k, km, px, py)
        ok = ok & (k[None, :] <= bin_final[:, None])
        one_m = tl.where(ok, 1.0 - alpha, 1.0)
        t_before = T[:, None] / tl.cumprod(one_m, axis=1, reverse=True)
        w = tl.where(ok, alpha * t_before, 0.0)  # blend weight
        # q[p, k] = <colour_k, v_color[p]>: a channel loop for few channels (keeps v_color out of registers
        # across the loop; the [P, BLOCK_D] padded copy spills), an fp32 dot otherwise.
        if DC > 0:
            q = tl.zeros_like(alpha)
            for ch in tl.static_range(DC):
                vcd = tl.load(v_out_colors_ptr + pix * DC + ch, mask=inside, other=0.0)
                cd = tl.load(colors_ptr + fid * DC + ch, mask=km, other=0.0)
                q += vcd[:, None] * cd[None, :]
        else:
            # channel blocks re-read per chunk (cache hits), so no [P, D] block stays live across the loop.
            q = tl.zeros_like(alpha)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                dm = dd < D
                v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :],
                              mask=inside[:, None] & dm[None, :], other=0.0)
                col = tl.load(colors_ptr + fid[:, None] * D + dd[None, :], mask=km[:, None] & dm[None, :],
                              other=0.0)
                q += tl.dot(v_c, tl.trans(col), input_precision="ieee")
        wq = w * q
        buf = behind[:, None] + tl.cumsum(wq, axis=1, reverse=True) - wq  # behind each Gaussian
        ra = 1.0 / one_m
        v_alpha = tl.where(ok, q * t_before - buf * ra + extra[:, None] * ra, 0.0)
        # alpha = min(0.999, opacity * vis): no gradient through the clamp.
        live = ok & (raw <= MAX_ALPHA)
        v_sigma = tl.where(live, -raw * v_alpha, 0.0)
        gx = v_sigma * (ca[None, :] * dx + cb[None, :] * dy)
        gy = v_sigma * (cb[None, :] * dx + cc[None, :] * dy)
        tl.atomic_add(v_means2d_ptr + fid * 2 + 0, tl.sum(gx, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_means2d_ptr + fid * 2 + 1, tl.sum(gy, axis=0), mask=km, sem="relaxed")
        if ABSGRAD:
            tl.atomic_add(v_abs_ptr + fid * 2 + 0, tl.sum(tl.abs(gx), axis=0), mask=km, sem="relaxed")
            tl.atomic_add(v_abs_ptr + fid * 2 + 1, tl.sum(tl.abs(gy), axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 0, tl.sum(0.5 * v_sigma * dx * dx, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 1, tl.sum(v_sigma * dx * dy, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_conics_ptr + fid * 3 + 2, tl.sum(0.5 * v_sigma * dy * dy, axis=0), mask=km, sem="relaxed")
        tl.atomic_add(v_opac_ptr + fid, tl.sum(tl.where(live, vis * v_alpha, 0.0), axis=0), mask=km, sem="relaxed")
        if DC > 0:
            for ch in tl.static_range(DC):
                vcd = tl.load(v_out_colors_ptr + pix * DC + ch, mask=inside, other=0.0)
                tl.atomic_add(v_colors_ptr + fid * DC + ch, tl.sum(w * vcd[:, None], axis=0), mask=km,
                              sem="relaxed")
        else:
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                dm = dd < D
                v_c = tl.load(v_out_colors_ptr + pix[:, None] * D + dd[None, :],
                              mask=inside[:, None] & dm[None, :], other=0.0)
                v_col = tl.dot(tl.trans(w), v_c, input_precision="ieee")  # [BLOCK_G, BLOCK_D]
                tl.atomic_add(v_colors_ptr + fid[:, None] * D + dd[None, :], v_col,
                              mask=km[:, None] & dm[None, :], sem="relaxed")
        T = tl.max(t_before, axis=1)
        behind += tl.sum(wq, axis=1)
        k_hi -= BLOCK_G


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------


def _raster_settings(tile_size: int, channels: int, cuda: bool, backward: bool = False):
    """(TILE_P2, BLOCK_G, BLOCK_D, num_warps): pixels padded to a power-of-two square; Gaussian chunks sized so
    a [P, BLOCK_G] fp32 array is 16 values per thread in the forward and 8 in the backward, which holds about
    twice as many (no register spills on sm_90: the ptxas report of tests/gaussians_triton_compile.py);
    channels padded to a power of two >= 16 (tl.dot operands)."""
    tile_p2 = triton.next_power_of_2(tile_size)
    p = tile_p2 * tile_p2
    # The backward walks channels in blocks of 16; the forward keeps all of them as accumulators.
    block_d = 16 if backward else max(16, triton.next_power_of_2(channels))
    if not cuda:
        # Interpreter: small chunks so the tests walk several chunks per tile.
        return tile_p2, 16, block_d, 1
    warps = 8 if p >= 256 else 4
    block_g = max(16, min(64, 32 * warps * (8 if backward else 16) // p))
    return tile_p2, block_g, block_d, warps


def _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                  flatten_ids):
    _check(op, "means2d", means2d, (None, None, 2))
    c, n = means2d.shape[:2]
    like = ("means2d", means2d)
    _check(op, "conics", conics, (c, n, 3), like=like)
    _check(op, "colors", colors, (c, n, None), like=like)
    _check(op, "opacities", opacities, (c, n), like=like)
    if backgrounds is not None:
        _check(op, "backgrounds", backgrounds, (c, colors.shape[2]), like=like)
    if tile_size <= 0 or width < 0 or height < 0:
        raise ValueError(f"{op}: tile_size must be positive and width, height non-negative")
    tile_h, tile_w = triton.cdiv(height, tile_size), triton.cdiv(width, tile_size)
    _check(op, "isect_offsets", isect_offsets, (c, tile_h, tile_w), dtype=torch.int32, like=like)
    _check(op, "flatten_ids", flatten_ids, (None,), dtype=torch.int32, like=like)
    return c, n, colors.shape[2], tile_h, tile_w


@torch.library.triton_op("pyops::gs_rasterize_fwd_triton", mutates_args=())
def gs_rasterize_fwd_triton(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    backgrounds: Optional[Tensor],  # [C, D]
    width: int, height: int, tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    absgrad: bool = False,  # read by autograd only
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Front-to-back blending with gsplat's rules.

    Returns:
        render_colors [C, H, W, D], render_alphas [C, H, W, 1], last_ids [C, H, W] int32 (index into
        flatten_ids of the last blended Gaussian, -1: none) and final_transmittances [C, H, W, 1] (T, for the
        backward; render_alphas = 1 - T is the sum of the weights).
    """
    op = "gs_rasterize_fwd_triton"
    c, n, d, tile_h, tile_w = _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                            tile_size, isect_offsets, flatten_ids)
    means2d, conics, colors, opacities, isect_offsets, flatten_ids = (
        t.contiguous() for t in (means2d, conics, colors, opacities, isect_offsets, flatten_ids))
    bg = backgrounds.contiguous() if backgrounds is not None else colors
    out_colors = colors.new_empty(c, height, width, d)
    out_alphas = colors.new_empty(c, height, width, 1)
    last_ids = colors.new_empty(c, height, width, dtype=torch.int32)
    out_trans = colors.new_empty(c, height, width, 1)
    if c * tile_h * tile_w == 0 or d == 0:
        if d == 0 and c * height * width:
            out_alphas.zero_()
            out_trans.fill_(1.0)
            last_ids.fill_(-1)  # no channels: nothing to blend into
        return out_colors, out_alphas, last_ids, out_trans
    tile_p2, block_g, block_d, warps = _raster_settings(tile_size, d, colors.is_cuda)
    torch.library.wrap_triton(_gs_rasterize_fwd_kernel)[(tile_h * tile_w, c)](
        means2d, conics, colors, opacities, bg, isect_offsets, flatten_ids, out_colors, out_alphas, last_ids,
        out_trans, flatten_ids.shape[0], tile_w, tile_h, width, height, d, HAS_BG=backgrounds is not None,
        TILE=tile_size, TILE_P2=tile_p2, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=warps)
    return out_colors, out_alphas, last_ids, out_trans


@torch.library.triton_op("pyops::gs_rasterize_bwd_triton", mutates_args=())
def gs_rasterize_bwd_triton(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    backgrounds: Optional[Tensor],  # [C, D]
    width: int, height: int, tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width] int32
    flatten_ids: Tensor,  # [M] int32
    final_transmittances: Tensor,  # [C, H, W, 1]
    last_ids: Tensor,  # [C, H, W] int32
    v_render_colors: Tensor,  # [C, H, W, D]
    v_render_alphas: Tensor,  # [C, H, W, 1]
    absgrad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Back-to-front replay of gs_rasterize_fwd_triton.

    Returns:
        v_means2d, v_conics, v_colors, v_opacities, v_backgrounds (empty without backgrounds) and
        v_means2d_abs (|per-pixel v_means2d| summed; empty unless absgrad).
    """
    op = "gs_rasterize_bwd_triton"
    c, n, d, tile_h, tile_w = _check_raster(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                            tile_size, isect_offsets, flatten_ids)
    like = ("means2d", means2d)
    _check(op, "final_transmittances", final_transmittances, (c, height, width, 1), like=like)
    _check(op, "last_ids", last_ids, (c, height, width), dtype=torch.int32, like=like)
    _check(op, "v_render_colors", v_render_colors, (c, height, width, d), like=like)
    _check(op, "v_render_alphas", v_render_alphas, (c, height, width, 1), like=like)
    tensors = (means2d, conics, colors, opacities, isect_offsets, flatten_ids, final_transmittances, last_ids,
               v_render_colors, v_render_alphas)
    (means2d, conics, colors, opacities, isect_offsets, flatten_ids, final_transmittances, last_ids, v_render_colors,
     v_render_alphas) = (t.contiguous() for t in tensors)
    bg = backgrounds.contiguous() if backgrounds is not None else colors
    # Zero-filled: every tile adds its Gaussians' gradients with atomics.
    v_means2d = torch.zeros_like(means2d)
    v_conics = torch.zeros_like(conics)
    v_colors = torch.zeros_like(colors)
    v_opacities = torch.zeros_like(opacities)
    v_bg = torch.zeros_like(backgrounds) if backgrounds is not None else colors.new_empty(0)
    v_abs = torch.zeros_like(means2d) if absgrad else means2d.new_empty(0)
    if c * tile_h * tile_w == 0 or d == 0:
        return v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs
    tile_p2, block_g, block_d, warps = _raster_settings(tile_size, d, colors.is_cuda, backward=True)
    torch.library.wrap_triton(_gs_rasterize_bwd_kernel)[(tile_h * tile_w, c)](
        means2d, conics, colors, opacities, bg, isect_offsets, flatten_ids, final_transmittances, last_ids,
        v_render_colors, v_render_alphas, v_means2d, v_conics, v_colors, v_opacities,
        v_bg if backgrounds is not None else v_means2d, v_abs if absgrad else v_means2d, flatten_ids.shape[0],
        tile_w, tile_h, width, height, d, DC=d if d <= SMALL_D else 0, HAS_BG=backgrounds is not None,
        ABSGRAD=absgrad,
        TILE=tile_size, TILE_P2=tile_p2, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=warps)
    return v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs
