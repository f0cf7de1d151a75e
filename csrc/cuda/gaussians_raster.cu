// CUDA backend of pyops::gs_rasterize_fwd / gs_rasterize_bwd, after gsplat's RasterizeToPixels3DGS{Fwd,Bwd}.cu
// (the intersection stages are in gaussians_intersect.cu), with the semantics of csrc/cpu/gaussians_raster.cpp
// (cut order, last_ids), the per-pixel math of pyops/gaussians_math.h (evaluate_hit, hit_vjp), so both backends
// make the same blend decisions, and the argument checks and allocation of pyops/gaussians.h.
//  - One block per (camera, tile), one thread per pixel, Gaussians staged through shared memory in batches of
//    the block size.
//  - The backward pass walks back to front from each pixel's last blended Gaussian, recovering T by dividing by
//    (1 - alpha) from the forward's exact T_final (gsplat starts from 1 - render_alpha, which has lost most of
//    T's digits once T is ~1e-4), and reduces each Gaussian's gradients over the warp before the atomics: all
//    of them at once with a reduce-scatter (about one shuffle per value instead of five), after which the
//    warp's lanes issue one atomicAdd each. Its kernel is tuned (register count): change it only with a
//    benchmark at hand.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "gaussians_launch.h"
#include "pyops/gaussians.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {
namespace {

constexpr int kMaxTileSize = 16;  // a block of tile_size^2 threads, at most kThreads

// ---------------------------------------------------------------------------------------------------------
// Rasterization
// ---------------------------------------------------------------------------------------------------------

template <typename T>
struct RasterArgs {
  const Vec2<T>* means2d;  // [C * N]
  const Vec3<T>* conics;   // [C * N]
  const T* colors;         // [C * N, D]
  const T* opacities;      // [C * N]
  const T* backgrounds;    // [C, D] or nullptr
  const int32_t* offsets;  // [C * TH * TW]
  const int32_t* flatten_ids;
  int64_t d, m, width, height, tile_size, tile_width, n_tiles, total_tiles;
};

template <typename T>
RasterArgs<T> raster_args(const RasterInputs& p) {
  return {reinterpret_cast<const Vec2<T>*>(p.means2d.data_ptr<T>()),
          reinterpret_cast<const Vec3<T>*>(p.conics.data_ptr<T>()),
          p.colors.data_ptr<T>(),
          p.opacities.data_ptr<T>(),
          p.backgrounds.has_value() ? p.backgrounds->data_ptr<T>() : nullptr,
          p.isect_offsets.data_ptr<int32_t>(),
          p.flatten_ids.data_ptr<int32_t>(),
          p.d,
          p.m,
          p.width,
          p.height,
          p.tile_size,
          p.tile_width,
          p.tile_width * p.tile_height,
          p.c * p.tile_width * p.tile_height};
}

// Shared-memory staging of one batch of Gaussians: wider types first so every array stays aligned. With
// CDIM > 0 the colors are staged too (the backward reads them for every lane that blends the Gaussian).
template <typename T, int CDIM = 0>
struct Batch {
  Vec2<T>* xy;
  Vec3<T>* conic;
  T* opacity;
  T* color;  // [block_size, CDIM]
  int32_t* id;
  static size_t bytes(int block_size) {
    return size_t(block_size) * (sizeof(Vec2<T>) + sizeof(Vec3<T>) + (1 + CDIM) * sizeof(T) + sizeof(int32_t));
  }
  __device__ Batch(unsigned char* smem, int block_size) {
    xy = reinterpret_cast<Vec2<T>*>(smem);
    conic = reinterpret_cast<Vec3<T>*>(xy + block_size);
    opacity = reinterpret_cast<T*>(conic + block_size);
    color = opacity + block_size;
    id = reinterpret_cast<int32_t*>(color + block_size * CDIM);
  }
  __device__ void load(const RasterArgs<T>& a, int slot, int64_t isect) {
    const int32_t g = a.flatten_ids[isect];
    id[slot] = g;
    xy[slot] = a.means2d[g];
    conic[slot] = a.conics[g];
    opacity[slot] = a.opacities[g];
#pragma unroll
    for (int k = 0; k < CDIM; ++k) color[slot * CDIM + k] = a.colors[int64_t(g) * CDIM + k];
  }
};

// The pixel a thread owns, and its tile's range [start, end) in flatten_ids.
struct TilePixel {
  int64_t camera, pid, start, end;
  bool inside;
  int tr, block_size;
};

template <typename T>
__device__ __forceinline__ TilePixel tile_pixel(const RasterArgs<T>& a, T& px, T& py) {
  TilePixel t;
  const int64_t flat_tile = blockIdx.x;
  t.camera = flat_tile / a.n_tiles;
  const int64_t tile = flat_tile % a.n_tiles;
  const int64_t i = (tile / a.tile_width) * a.tile_size + threadIdx.y;
  const int64_t j = (tile % a.tile_width) * a.tile_size + threadIdx.x;
  t.inside = i < a.height && j < a.width;
  t.pid = (t.camera * a.height + i) * a.width + j;
  px = static_cast<T>(j) + T(0.5);
  py = static_cast<T>(i) + T(0.5);
  t.start = a.offsets[flat_tile];
  t.end = flat_tile + 1 < a.total_tiles ? a.offsets[flat_tile + 1] : a.m;
  t.tr = threadIdx.y * blockDim.x + threadIdx.x;
  t.block_size = blockDim.x * blockDim.y;
  return t;
}

// CDIM > 0: that many channels, accumulated in registers; CDIM == 0: a.d channels accumulated in place in the
// thread's own pixel of render_colors (the generic fallback).
template <typename T, int CDIM>
__global__ void __launch_bounds__(kThreads)
    rasterize_fwd_kernel(RasterArgs<T> a, T* __restrict__ render_colors, T* __restrict__ render_alphas,
                         int32_t* __restrict__ last_ids, T* __restrict__ final_trans) {
  extern __shared__ __align__(16) unsigned char smem[];
  T px, py;
  const TilePixel tp = tile_pixel(a, px, py);
  Batch<T> batch(smem, tp.block_size);
  const int64_t d = CDIM > 0 ? CDIM : a.d;
  T* out = render_colors + tp.pid * d;  // only dereferenced inside the image
  T pix[CDIM > 0 ? CDIM : 1];
#pragma unroll
  for (int k = 0; k < (CDIM > 0 ? CDIM : 1); ++k) pix[k] = T(0);
  if (CDIM == 0 && tp.inside)
    for (int64_t k = 0; k < d; ++k) out[k] = T(0);

  T trans = T(1);
  T alpha = T(0);  // 1 - T_final, as the sum of the weights (see render_alphas in gaussians_math.h)
  int32_t last = -1;
  bool done = !tp.inside;
  const int64_t n_batches = (tp.end - tp.start + tp.block_size - 1) / tp.block_size;
  for (int64_t b = 0; b < n_batches; ++b) {
    // Also the barrier that lets the previous batch's shared memory be overwritten.
    if (__syncthreads_count(done) >= tp.block_size) break;
    const int64_t batch_start = tp.start + b * tp.block_size;
    if (batch_start + tp.tr < tp.end) batch.load(a, tp.tr, batch_start + tp.tr);
    __syncthreads();
    const int batch_size = static_cast<int>(min(int64_t(tp.block_size), tp.end - batch_start));
    for (int t = 0; t < batch_size && !done; ++t) {
      const PixelHit<T> h = evaluate_hit(batch.xy[t], batch.conic[t], batch.opacity[t], px, py);
      if (h.skip) continue;
      const T next_trans = trans * (T(1) - h.alpha);
      if (next_trans <= min_transmittance<T>()) {  // exclusive: this Gaussian is not blended
        done = true;
        break;
      }
      const T w = h.alpha * trans;
      const T* col = a.colors + int64_t(batch.id[t]) * d;
      if constexpr (CDIM > 0) {
#pragma unroll
        for (int k = 0; k < CDIM; ++k) pix[k] += col[k] * w;
      } else {
        for (int64_t k = 0; k < d; ++k) out[k] += col[k] * w;
      }
      alpha += w;
      last = static_cast<int32_t>(batch_start + t);
      trans = next_trans;
    }
  }
  if (!tp.inside) return;
  render_alphas[tp.pid] = alpha;
  final_trans[tp.pid] = trans;
  const T* bg = a.backgrounds ? a.backgrounds + tp.camera * d : nullptr;
  if constexpr (CDIM > 0) {
#pragma unroll
    for (int k = 0; k < CDIM; ++k) out[k] = pix[k] + (bg ? trans * bg[k] : T(0));
  } else {
    if (bg)
      for (int64_t k = 0; k < d; ++k) out[k] += trans * bg[k];
  }
  last_ids[tp.pid] = last;
}

// Runtime channel count -> CDIM template (0: the generic loop).
#define PYOPS_GS_CHANNEL_SWITCH(D, ...) \
  [&] {                                 \
    switch (D) {                        \
      case 1: {                         \
        constexpr static int CDIM = 1;  \
        return __VA_ARGS__();           \
      }                                 \
      case 2: {                         \
        constexpr static int CDIM = 2;  \
        return __VA_ARGS__();           \
      }                                 \
      case 3: {                         \
        constexpr static int CDIM = 3;  \
        return __VA_ARGS__();           \
      }                                 \
      case 4: {                         \
        constexpr static int CDIM = 4;  \
        return __VA_ARGS__();           \
      }                                 \
      default: {                        \
        constexpr static int CDIM = 0;  \
        return __VA_ARGS__();           \
      }                                 \
    }                                   \
  }()

// The CUDA kernels' own limits (RuntimeError: the CPU backend runs these sizes).
void check_launch(const char* op, const RasterInputs& p) {
  TORCH_CHECK(p.tile_size <= kMaxTileSize, op, ": tile_size=", p.tile_size,
              " is not supported by the CUDA kernels (at most ", kMaxTileSize, ": one thread per pixel of a tile)");
  TORCH_CHECK(p.c * p.tile_width * p.tile_height <= std::numeric_limits<int32_t>::max(), op, ": ",
              p.c * p.tile_width * p.tile_height, " (camera, tile) pairs exceed the CUDA grid");
}

// One block per (camera, tile), one thread per pixel of the tile.
dim3 raster_grid(const RasterInputs& p) { return dim3(static_cast<unsigned>(p.c * p.tile_width * p.tile_height)); }
dim3 raster_block(const RasterInputs& p) {
  return dim3(static_cast<unsigned>(p.tile_size), static_cast<unsigned>(p.tile_size));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cuda(
    const at::Tensor& means2d,                     // [C, N, 2]
    const at::Tensor& conics,                      // [C, N, 3]
    const at::Tensor& colors,                      // [C, N, D]
    const at::Tensor& opacities,                   // [C, N]
    const std::optional<at::Tensor>& backgrounds,  // [C, D]
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& isect_offsets,  // [C, TH, TW] int32
    const at::Tensor& flatten_ids,    // [M] int32
    bool /*absgrad: read by autograd only*/) {
  const char* op = "gs_rasterize_fwd";
  const RasterInputs p = prepare_rasterize(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                           tile_size, isect_offsets, flatten_ids, c10::DeviceType::CUDA);
  check_launch(op, p);
  const c10::cuda::CUDAGuard guard(p.colors.device());
  RasterOutputs o = allocate_raster_outputs(p);
  if (p.c == 0) return o.as_tuple();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.colors.scalar_type(), "gs_rasterize_fwd_cuda", [&] {
    using T = scalar_t;
    const RasterArgs<T> a = raster_args<T>(p);
    const size_t smem = Batch<T>::bytes(static_cast<int>(tile_size * tile_size));
    PYOPS_GS_CHANNEL_SWITCH(p.d, [&] {
      rasterize_fwd_kernel<T, CDIM><<<raster_grid(p), raster_block(p), smem, stream>>>(
          a, o.render_colors.data_ptr<T>(), o.render_alphas.data_ptr<T>(), o.last_ids.data_ptr<int32_t>(),
          o.final_transmittances.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return o.as_tuple();
}

// Lanes of this thread's warp that exist (a block of tile_size^2 threads may end in a partial warp).
struct WarpInfo {
  unsigned mask;
  int lane, lanes;
};

__device__ __forceinline__ WarpInfo warp_info(int tr, int block_size) {
  WarpInfo w;
  w.lane = tr & 31;
  w.lanes = min(32, block_size - (tr - w.lane));
  w.mask = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1u);
  return w;
}

// Sum over the warp's lanes, valid in lane 0. A full warp needs no bounds test (lane 0's sum never reads past
// lane 31), so the common case is a plain shuffle tree; the branch is uniform over the warp.
template <typename T>
__device__ __forceinline__ T warp_sum(const WarpInfo& w, T v) {
  if (w.lanes == 32) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const T o = __shfl_down_sync(w.mask, v, off);
    if (w.lane + off < w.lanes) v += o;
  }
  return v;
}

// Max over the warp's lanes, in every lane.
__device__ __forceinline__ int32_t warp_max(const WarpInfo& w, int32_t v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const int32_t o = __shfl_down_sync(w.mask, v, off);
    if (w.lane + off < w.lanes) v = max(v, o);
  }
  return __shfl_sync(w.mask, v, 0);
}

// Sums V values (a power of two, at most 32) over a full warp with V shuffles instead of the 5V of V separate
// reductions: each step halves the values a lane carries, keeping one half and trading the other with the lane
// `off` away. Afterwards v[0] of every lane holds the total of value reduce_scatter_index<V>(lane). (Steps are
// templates so every register index is a constant: a runtime index would put v in local memory.)
template <int V, int STEP = 0, typename T>
__device__ __forceinline__ void warp_reduce_scatter(T (&v)[V], int lane) {
  static_assert(V >= 1 && V <= 32 && (V & (V - 1)) == 0, "V must be a power of two, at most 32");
  if constexpr (STEP < 5) {
    constexpr int off = 16 >> STEP, half = V >> (STEP + 1);
    if constexpr (half >= 1) {
      const bool upper = lane & off;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const T send = upper ? v[i] : v[i + half];
        const T keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
    }
    warp_reduce_scatter<V, STEP + 1>(v, lane);
  }
}

template <int V>
__device__ __forceinline__ int reduce_scatter_index(int lane) {
  int idx = 0;
#pragma unroll
  for (int step = 0; (V >> (step + 1)) >= 1; ++step)
    if (lane & (16 >> step)) idx += V >> (step + 1);
  return idx;
}

template <typename T>
struct RasterGrads {
  T* v_means2d;      // [C * N, 2]
  T* v_conics;       // [C * N, 3]
  T* v_colors;       // [C * N, D]
  T* v_opacities;    // [C * N]
  T* v_backgrounds;  // [C, D] or nullptr
  T* v_means2d_abs;  // [C * N, 2] or nullptr
  T* scratch;        // [C * H * W, D] zeros for CDIM == 0 (the per-pixel color sum behind), else nullptr
};

// One Gaussian's gradients as the reduce-scatter's values: v_means2d (0, 1), v_conics (2-4), v_opacity (5),
// v_means2d_abs (6, 7), then CDIM colors; the rest is padding. The slot value `idx` adds to (nullptr: none).
constexpr int kGeomGrads = 8;

template <typename T, int CDIM>
__device__ __forceinline__ T* grad_slot(const RasterGrads<T>& out, int32_t g, int idx) {
  const int64_t gi = g;
  if (idx < 2) return out.v_means2d + gi * 2 + idx;
  if (idx < 5) return out.v_conics + gi * 3 + (idx - 2);
  if (idx == 5) return out.v_opacities + gi;
  if (idx < kGeomGrads) return out.v_means2d_abs ? out.v_means2d_abs + gi * 2 + (idx - 6) : nullptr;
  if (idx < kGeomGrads + CDIM) return out.v_colors + gi * CDIM + (idx - kGeomGrads);
  return nullptr;
}

template <typename T, int CDIM>
__global__ void __launch_bounds__(kThreads)
    rasterize_bwd_kernel(RasterArgs<T> a, const T* __restrict__ final_trans, const int32_t* __restrict__ last_ids,
                         const T* __restrict__ v_render_colors, const T* __restrict__ v_render_alphas,
                         RasterGrads<T> out) {
  extern __shared__ __align__(16) unsigned char smem[];
  T px, py;
  const TilePixel tp = tile_pixel(a, px, py);
  Batch<T, CDIM> batch(smem, tp.block_size);
  const WarpInfo w = warp_info(tp.tr, tp.block_size);
  const int64_t d = CDIM > 0 ? CDIM : a.d;
  constexpr int kRegs = CDIM > 0 ? CDIM : 1;

  const T t_final = tp.inside ? final_trans[tp.pid] : T(1);
  const int32_t bin_final = tp.inside ? last_ids[tp.pid] : -1;
  const T v_a = tp.inside ? v_render_alphas[tp.pid] : T(0);
  const T* v_c = v_render_colors + tp.pid * d;  // only dereferenced inside the image
  const T* bg = a.backgrounds ? a.backgrounds + tp.camera * d : nullptr;
  T v_rc[kRegs], behind[kRegs];
  T bg_dot = T(0);
#pragma unroll
  for (int k = 0; k < kRegs; ++k) {
    v_rc[k] = (CDIM > 0 && tp.inside) ? v_c[k] : T(0);
    behind[k] = T(0);
  }
  T* behind_g = CDIM == 0 ? out.scratch + tp.pid * d : nullptr;  // the fallback's per-pixel color sum
  // Backgrounds: d color / d bg = T_final, summed over the pixels (warp-reduced, one atomic per warp).
  if (bg) {
    for (int64_t k = 0; k < d; ++k) {
      const T vck = tp.inside ? v_c[k] : T(0);
      bg_dot += bg[k] * vck;
      const T s = warp_sum(w, t_final * vck);
      if (w.lane == 0) atomicAdd(out.v_backgrounds + tp.camera * d + k, s);
    }
  }

  const int32_t warp_bin_final = warp_max(w, bin_final);
  // Batches start at the tile's last blended intersection, not at its end: once the tile's pixels saturate,
  // the Gaussians behind are never blended, and gsplat's backward still loads every one of them.
  __shared__ int32_t tile_bin_final;
  if (tp.tr == 0) tile_bin_final = -1;
  __syncthreads();
  if (w.lane == 0) atomicMax(&tile_bin_final, warp_bin_final);
  __syncthreads();
  // 32-bit indices: intersection indices fit int32 (the offsets are int32). Clamped to the tile's range so
  // that last_ids from a caller (the op is public) cannot index past it.
  const int32_t last_isect = min(tile_bin_final, static_cast<int32_t>(tp.end - 1));
  T trans = t_final;
  const int n_batches = last_isect >= tp.start ? (last_isect - int32_t(tp.start)) / tp.block_size + 1 : 0;
  for (int b = 0; b < n_batches; ++b) {
    __syncthreads();  // the previous batch is no longer read
    const int32_t batch_end = last_isect - b * tp.block_size;
    const int batch_size = static_cast<int>(min(int64_t(tp.block_size), batch_end + 1 - tp.start));
    if (batch_end - tp.tr >= tp.start) batch.load(a, tp.tr, batch_end - tp.tr);
    __syncthreads();
    // Entry t is intersection batch_end - t; those beyond every lane's last blended one are skipped.
    for (int t = max(0, batch_end - warp_bin_final); t < batch_size; ++t) {
      bool valid = tp.inside && batch_end - t <= bin_final;
      PixelHit<T> h;
      if (valid) {
        h = evaluate_hit(batch.xy[t], batch.conic[t], batch.opacity[t], px, py);
        valid = !h.skip;
      }
      if (!__any_sync(w.mask, valid)) continue;
      const int32_t g = batch.id[t];
      const T* col = CDIM > 0 ? batch.color + t * CDIM : a.colors + int64_t(g) * d;
      HitGrad<T> hg = {{T(0), T(0)}, {T(0), T(0), T(0)}, T(0)};
      T fac = T(0);
      if (valid) {
        // T before this Gaussian from T after it; color = sum_k c_k a_k T_k + T_final bg, alpha = 1 - T_final:
        // d/da_k = c_k T_k - (behind_k + T_final bg) / (1 - a_k) for the color, T_final / (1 - a_k) for alpha.
        const T ra = T(1) / (T(1) - h.alpha);
        trans *= ra;
        fac = h.alpha * trans;
        T v_alpha = T(0);
        if constexpr (CDIM > 0) {
#pragma unroll
          for (int k = 0; k < CDIM; ++k) v_alpha += (col[k] * trans - behind[k] * ra) * v_rc[k];
        } else {
          for (int64_t k = 0; k < d; ++k) v_alpha += (col[k] * trans - behind_g[k] * ra) * v_c[k];
        }
        v_alpha += t_final * ra * v_a;
        if (bg) v_alpha -= t_final * ra * bg_dot;
        hg = hit_vjp(h, batch.conic[t], batch.opacity[t], v_alpha);
      }
      // Per-pixel gradients (colors: d color / d c_k = a_k T_k), summed over the warp, then added to global
      // memory: a full warp reduce-scatters them and its lanes issue the atomics together; a partial warp (a
      // tile of tile_size^2 threads not a multiple of 32) reduces each value into lane 0.
      constexpr int kValues = kGeomGrads + CDIM, kV = kValues > 8 ? 16 : 8;  // kV: padded to a power of two
      T v[kV] = {hg.v_mean2d.x, hg.v_mean2d.y, hg.v_conic.x,        hg.v_conic.y,
                 hg.v_conic.z,  hg.v_opacity,  fabs(hg.v_mean2d.x), fabs(hg.v_mean2d.y)};  // the rest zero
#pragma unroll
      for (int k = 0; k < CDIM; ++k) v[kGeomGrads + k] = fac * v_rc[k];
      if (w.lanes == 32) {
        warp_reduce_scatter(v, w.lane);
        T* dst = w.lane % (32 / kV) == 0 ? grad_slot<T, CDIM>(out, g, reduce_scatter_index<kV>(w.lane)) : nullptr;
        if (dst) atomicAdd(dst, v[0]);
      } else {
#pragma unroll
        for (int i = 0; i < kValues; ++i) {
          const T total = warp_sum(w, v[i]);
          T* dst = w.lane == 0 ? grad_slot<T, CDIM>(out, g, i) : nullptr;
          if (dst) atomicAdd(dst, total);
        }
      }
      if constexpr (CDIM > 0) {
        if (valid) {
#pragma unroll
          for (int k = 0; k < CDIM; ++k) behind[k] += col[k] * fac;
        }
      } else {
        for (int64_t k = 0; k < d; ++k) {
          const T s = warp_sum(w, valid ? fac * v_c[k] : T(0));
          if (w.lane == 0) atomicAdd(out.v_colors + int64_t(g) * d + k, s);
          if (valid) behind_g[k] += col[k] * fac;
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_bwd_cuda(
    const at::Tensor& means2d,                     // [C, N, 2]
    const at::Tensor& conics,                      // [C, N, 3]
    const at::Tensor& colors,                      // [C, N, D]
    const at::Tensor& opacities,                   // [C, N]
    const std::optional<at::Tensor>& backgrounds,  // [C, D]
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& isect_offsets,         // [C, TH, TW] int32
    const at::Tensor& flatten_ids,           // [M] int32
    const at::Tensor& final_transmittances,  // [C, H, W, 1]
    const at::Tensor& last_ids,              // [C, H, W] int32
    const at::Tensor& v_render_colors,       // [C, H, W, D]
    const at::Tensor& v_render_alphas,       // [C, H, W, 1]
    bool absgrad) {
  const char* op = "gs_rasterize_bwd";
  const RasterInputs p = prepare_rasterize(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                           tile_size, isect_offsets, flatten_ids, c10::DeviceType::CUDA);
  check_launch(op, p);
  const RasterGradInputs in =
      prepare_rasterize_grad(op, p, final_transmittances, last_ids, v_render_colors, v_render_alphas);
  const c10::cuda::CUDAGuard guard(p.colors.device());
  RasterGradOutputs out = allocate_raster_grads(p, absgrad);
  if (p.c == 0) return out.as_tuple();
  const bool generic_d = p.d < 1 || p.d > 4;
  const at::Tensor scratch = generic_d ? at::zeros({p.c * height * width * p.d}, p.colors.options()) : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.colors.scalar_type(), "gs_rasterize_bwd_cuda", [&] {
    using T = scalar_t;
    const RasterArgs<T> a = raster_args<T>(p);
    const RasterGrads<T> g = {out.v_means2d.data_ptr<T>(),
                              out.v_conics.data_ptr<T>(),
                              out.v_colors.data_ptr<T>(),
                              out.v_opacities.data_ptr<T>(),
                              p.backgrounds.has_value() ? out.v_backgrounds.data_ptr<T>() : nullptr,
                              absgrad ? out.v_means2d_abs.data_ptr<T>() : nullptr,
                              generic_d ? scratch.data_ptr<T>() : nullptr};
    PYOPS_GS_CHANNEL_SWITCH(p.d, [&] {
      const size_t smem = Batch<T, CDIM>::bytes(static_cast<int>(tile_size * tile_size));
      rasterize_bwd_kernel<T, CDIM><<<raster_grid(p), raster_block(p), smem, stream>>>(
          a, in.final_transmittances.data_ptr<T>(), in.last_ids.data_ptr<int32_t>(), in.v_render_colors.data_ptr<T>(),
          in.v_render_alphas.data_ptr<T>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out.as_tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("gs_rasterize_fwd", &rasterize_fwd_cuda);
  m.impl("gs_rasterize_bwd", &rasterize_bwd_cuda);
}

}  // namespace gs
}  // namespace pyops
