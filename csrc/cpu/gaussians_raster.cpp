// CPU backend of pyops::gs_intersect_tiles / gs_isect_offsets / gs_rasterize_fwd / gs_rasterize_bwd.
//
// Tiles are the unit of parallel work. The backward pass writes each (tile, Gaussian) intersection's gradient
// into its own slot of a per-intersection buffer (a tile owns a contiguous range of intersections, so no two
// threads touch one slot) and then sums the slots per Gaussian in intersection order: the result does not
// depend on the thread count or schedule.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "pyops/gaussian_math.h"
#include "pyops/gaussians.h"

namespace pyops {
namespace gs {
namespace {

constexpr int64_t kGaussGrain = 1024;

// ---------------------------------------------------------------------------------------------------------
// Tile intersection
// ---------------------------------------------------------------------------------------------------------

struct TileRect {
  int32_t x0, y0, x1, y1;  // [x0, x1) x [y0, y1) in tiles
  int64_t count() const { return int64_t(x1 - x0) * (y1 - y0); }
};

// floor/ceil of a tile coordinate clamped to [0, limit]; NaN goes to 0 (an empty range).
template <typename T>
int32_t clamp_tile(T v, int64_t limit) {
  if (!(v > T(0))) return 0;
  if (v >= static_cast<T>(limit)) return static_cast<int32_t>(limit);
  return static_cast<int32_t>(v);
}

// The tiles overlapped by the radius box, as gsplat computes them: in units of tiles, [floor(m - r), ceil(m + r))
// per axis, clamped to the grid.
template <typename T>
TileRect tile_rect(T mx, T my, int32_t rx, int32_t ry, int64_t tile_size, int64_t tile_width, int64_t tile_height) {
  if (rx <= 0 || ry <= 0) return {0, 0, 0, 0};
  const T ts = static_cast<T>(tile_size);
  const T tx = mx / ts, ty = my / ts, trx = static_cast<T>(rx) / ts, try_ = static_cast<T>(ry) / ts;
  TileRect r;
  r.x0 = clamp_tile(std::floor(tx - trx), tile_width);
  r.y0 = clamp_tile(std::floor(ty - try_), tile_height);
  r.x1 = clamp_tile(std::ceil(tx + trx), tile_width);
  r.y1 = clamp_tile(std::ceil(ty + try_), tile_height);
  if (r.x1 < r.x0) r.x1 = r.x0;
  if (r.y1 < r.y0) r.y1 = r.y0;
  return r;
}

// The depth field of a key: the float32 bit pattern of the depth, zero-extended (gsplat's). Positive floats
// order like their bit patterns; for float64 depths we take the float32 value's bits (gsplat's CUDA kernel
// reinterprets the low half of the double, which is not an order; its torch reference uses float32 too).
template <typename T>
uint32_t depth_bits(T depth) {
  const float f = static_cast<float>(depth);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> intersect_tiles_cpu(const at::Tensor& means2d,  // [C, N, 2]
                                                                   const at::Tensor& radii,    // [C, N, 2] int32
                                                                   const at::Tensor& depths,   // [C, N]
                                                                   int64_t tile_size, int64_t tile_width,
                                                                   int64_t tile_height) {
  const IntersectInputs p =
      prepare_intersect(means2d, radii, depths, tile_size, tile_width, tile_height, c10::DeviceType::CPU);
  const int64_t cn = p.c * p.n, n_tiles = tile_width * tile_height, n_buckets = p.c * n_tiles;
  const auto opt = p.depths.options();
  at::Tensor tiles_per_gauss = at::zeros({p.c, p.n}, opt.dtype(at::kInt));
  std::vector<TileRect> rects(static_cast<size_t>(cn));
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cpu_rects", [&] {
    const scalar_t* m2d = p.means2d.data_ptr<scalar_t>();
    const int32_t* rad = p.radii.data_ptr<int32_t>();
    int32_t* tpg = tiles_per_gauss.data_ptr<int32_t>();
    at::parallel_for(0, cn, kGaussGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        rects[i] = tile_rect(m2d[i * 2], m2d[i * 2 + 1], rad[i * 2], rad[i * 2 + 1], tile_size, tile_width,
                             tile_height);
        tpg[i] = static_cast<int32_t>(rects[i].count());
      }
    });
  });

  // Counting sort on the (camera, tile) part of the key: count per bucket, prefix-sum, scatter. Each camera's
  // buckets are disjoint, so cameras run in parallel; within a camera Gaussians are visited in index order,
  // which leaves every bucket in ascending flatten id.
  std::vector<int64_t> bucket_start(static_cast<size_t>(n_buckets) + 1, 0);
  at::parallel_for(0, p.c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int64_t* count = bucket_start.data() + 1 + c * n_tiles;
      for (int64_t g = 0; g < p.n; ++g) {
        const TileRect& r = rects[c * p.n + g];
        for (int32_t y = r.y0; y < r.y1; ++y)
          for (int32_t x = r.x0; x < r.x1; ++x) ++count[int64_t(y) * tile_width + x];
      }
    }
  });
  for (int64_t b = 0; b < n_buckets; ++b) bucket_start[b + 1] += bucket_start[b];
  const int64_t m = bucket_start[n_buckets];
  TORCH_CHECK(m <= std::numeric_limits<int32_t>::max(), "gs_intersect_tiles: ", m,
              " (camera, Gaussian, tile) intersections do not fit int32 offsets; use fewer Gaussians or cameras, "
              "larger tiles, or smaller radii");
  // (depth bits << 32) | flatten id: one 64-bit word per intersection sorts by depth, then flatten id.
  std::vector<uint64_t> depth_and_id(static_cast<size_t>(m));
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cpu_scatter", [&] {
    const scalar_t* dep = p.depths.data_ptr<scalar_t>();
    at::parallel_for(0, p.c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        std::vector<int64_t> cursor(bucket_start.begin() + c * n_tiles, bucket_start.begin() + (c + 1) * n_tiles);
        for (int64_t g = 0; g < p.n; ++g) {
          const int64_t flat = c * p.n + g;
          const TileRect& r = rects[flat];
          if (r.count() == 0) continue;
          const uint64_t word = (uint64_t(depth_bits(dep[flat])) << 32) | uint64_t(uint32_t(flat));
          for (int32_t y = r.y0; y < r.y1; ++y)
            for (int32_t x = r.x0; x < r.x1; ++x) depth_and_id[cursor[int64_t(y) * tile_width + x]++] = word;
        }
      }
    });
  });
  // Sorting (depth, flatten id) within a bucket equals a stable sort of the full keys from flatten-id order,
  // which is the order gsplat's (stable) radix sort produces: equal keys stay in ascending flatten id.
  at::Tensor isect_ids = at::empty({m}, opt.dtype(at::kLong));
  at::Tensor flatten_ids = at::empty({m}, opt.dtype(at::kInt));
  int64_t* ids_out = isect_ids.data_ptr<int64_t>();
  int32_t* flat_out = flatten_ids.data_ptr<int32_t>();
  at::parallel_for(0, n_buckets, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t s = bucket_start[b], e = bucket_start[b + 1];
      if (s == e) continue;
      std::sort(depth_and_id.begin() + s, depth_and_id.begin() + e);
      const int64_t camera = b / n_tiles, tile = b % n_tiles;
      const int64_t high = (camera << (32 + p.tile_bits)) | (tile << 32);
      for (int64_t i = s; i < e; ++i) {
        ids_out[i] = high | static_cast<int64_t>(depth_and_id[i] >> 32);
        flat_out[i] = static_cast<int32_t>(depth_and_id[i] & 0xffffffffu);
      }
    }
  });
  return {tiles_per_gauss, isect_ids, flatten_ids};
}

at::Tensor isect_offsets_cpu(const at::Tensor& isect_ids /* [M] int64, sorted */, int64_t n_cameras,
                            int64_t tile_width, int64_t tile_height) {
  const char* op = "gs_isect_offsets";
  const at::Tensor ids = checked(isect_ids, op, "isect_ids", c10::DeviceType::CPU, {-1}, at::kLong);
  TORCH_CHECK(n_cameras >= 0, op, ": n_cameras=", n_cameras, " must be >= 0");
  TORCH_CHECK(tile_width >= 1 && tile_height >= 1, op, ": tile_width and tile_height must be >= 1, got ",
              tile_width, " and ", tile_height);
  const int64_t m = ids.size(0), n_tiles = tile_width * tile_height;
  TORCH_CHECK(m <= std::numeric_limits<int32_t>::max(), op, ": ", m, " intersections do not fit int32 offsets");
  const int64_t tile_bits = bit_length(n_tiles);
  at::Tensor offsets = at::zeros({n_cameras, tile_height, tile_width}, ids.options().dtype(at::kInt));
  const int64_t n_buckets = n_cameras * n_tiles;
  // Counts per (camera, tile), then the exclusive prefix sum: an empty tile's offset is where the next
  // non-empty one starts (and M after the last), as in gsplat.
  std::vector<int64_t> count(static_cast<size_t>(n_buckets) + 1, 0);
  const int64_t* k = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t high = k[i] >> 32;
    const int64_t camera = high >> tile_bits, tile = high & ((int64_t(1) << tile_bits) - 1);
    TORCH_CHECK(k[i] >= 0 && camera < n_cameras && tile < n_tiles, op, ": `isect_ids` entry ", i,
                " encodes camera ", camera, ", tile ", tile, ", outside ", n_cameras, " cameras of ", n_tiles,
                " tiles");
    TORCH_CHECK(i == 0 || k[i] >= k[i - 1], op, ": `isect_ids` must be sorted (entry ", i, " < entry ", i - 1, ")");
    ++count[camera * n_tiles + tile];
  }
  int32_t* out = offsets.data_ptr<int32_t>();
  int64_t run = 0;
  for (int64_t b = 0; b < n_buckets; ++b) {
    out[b] = static_cast<int32_t>(run);
    run += count[b];
  }
  return offsets;
}

// ---------------------------------------------------------------------------------------------------------
// Rasterization
// ---------------------------------------------------------------------------------------------------------

struct TileGrid {
  int64_t width, height, tile_size, tile_width, tile_height, n_tiles;
};

// A tile's range [start, end) in flatten_ids; the last tile of the last camera ends at M.
inline void tile_range(const int32_t* offsets, int64_t flat_tile, int64_t total_tiles, int64_t m, int64_t& start,
                       int64_t& end) {
  start = offsets[flat_tile];
  end = flat_tile + 1 < total_tiles ? offsets[flat_tile + 1] : m;
}

template <typename T>
struct RasterData {
  const Vec2<T>* means2d;  // [C * N]
  const Vec3<T>* conics;   // [C * N]
  const T* colors;         // [C * N, D]
  const T* opacities;      // [C * N]
  const T* backgrounds;    // [C, D] or nullptr
  const int32_t* offsets;  // [C * TH * TW]
  const int32_t* flatten_ids;
  int64_t d, m;
};

template <typename T>
RasterData<T> raster_data(const RasterInputs& p) {
  return {reinterpret_cast<const Vec2<T>*>(p.means2d.data_ptr<T>()),
          reinterpret_cast<const Vec3<T>*>(p.conics.data_ptr<T>()),
          p.colors.data_ptr<T>(),
          p.opacities.data_ptr<T>(),
          p.backgrounds.has_value() ? p.backgrounds->data_ptr<T>() : nullptr,
          p.isect_offsets.data_ptr<int32_t>(),
          p.flatten_ids.data_ptr<int32_t>(),
          p.d,
          p.m};
}

// Front-to-back blending of one pixel over [start, stop): gsplat's cut order (skip on sigma < 0 or alpha < 1/255;
// stop, without blending, once T * (1 - alpha) <= 1e-4). Calls on_blend(isect index, flatten id, hit, T before)
// for every blended Gaussian and returns the transmittance after the last one; last_idx gets its index (-1: none).
// The forward pass and the backward pass's replay both run this, so they make identical decisions and
// compute bit-identical transmittances.
template <typename T, typename OnBlend>
T blend_pixel(const RasterData<T>& r, int64_t start, int64_t stop, T px, T py, int64_t& last_idx, OnBlend&& on_blend) {
  T trans = T(1);
  last_idx = -1;
  for (int64_t i = start; i < stop; ++i) {
    const int32_t g = r.flatten_ids[i];
    const PixelHit<T> h = evaluate_hit(r.means2d[g], r.conics[g], r.opacities[g], px, py);
    if (h.skip) continue;
    const T next_trans = trans * (T(1) - h.alpha);
    if (next_trans <= min_transmittance<T>()) break;  // exclusive: this Gaussian is not blended
    on_blend(i, g, h, trans);
    last_idx = i;
    trans = next_trans;
  }
  return trans;
}

template <typename T>
void rasterize_fwd_kernel(const RasterInputs& p, const TileGrid& grid, at::Tensor& render_colors,
                          at::Tensor& render_alphas, at::Tensor& last_ids, at::Tensor& final_trans) {
  const RasterData<T> r = raster_data<T>(p);
  T* out_c = render_colors.data_ptr<T>();
  T* out_a = render_alphas.data_ptr<T>();
  int32_t* out_last = last_ids.data_ptr<int32_t>();
  T* out_t = final_trans.data_ptr<T>();
  const int64_t d = p.d, total_tiles = p.c * grid.n_tiles;
  at::parallel_for(0, total_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pix(static_cast<size_t>(d));
    for (int64_t flat_tile = begin; flat_tile < end; ++flat_tile) {
      const int64_t c = flat_tile / grid.n_tiles, tile = flat_tile % grid.n_tiles;
      const int64_t ty = tile / grid.tile_width, tx = tile % grid.tile_width;
      int64_t start, stop;
      tile_range(r.offsets, flat_tile, total_tiles, r.m, start, stop);
      const int64_t y_end = std::min(grid.height, (ty + 1) * grid.tile_size);
      const int64_t x_end = std::min(grid.width, (tx + 1) * grid.tile_size);
      for (int64_t y = ty * grid.tile_size; y < y_end; ++y) {
        for (int64_t x = tx * grid.tile_size; x < x_end; ++x) {
          std::fill(pix.begin(), pix.end(), T(0));
          int64_t last;
          const T trans = blend_pixel(r, start, stop, static_cast<T>(x) + T(0.5), static_cast<T>(y) + T(0.5), last,
                                      [&](int64_t, int32_t g, const PixelHit<T>& h, T t_before) {
                                        const T w = h.alpha * t_before;
                                        const T* col = r.colors + int64_t(g) * d;
                                        for (int64_t k = 0; k < d; ++k) pix[k] += col[k] * w;
                                      });
          const int64_t pid = (c * grid.height + y) * grid.width + x;
          out_a[pid] = T(1) - trans;
          out_t[pid] = trans;
          for (int64_t k = 0; k < d; ++k) out_c[pid * d + k] = pix[k] + (r.backgrounds ? trans * r.backgrounds[c * d + k] : T(0));
          out_last[pid] = static_cast<int32_t>(last);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cpu(
    const at::Tensor& means2d,    // [C, N, 2]
    const at::Tensor& conics,     // [C, N, 3]
    const at::Tensor& colors,     // [C, N, D]
    const at::Tensor& opacities,  // [C, N]
    const std::optional<at::Tensor>& backgrounds,  // [C, D]
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& isect_offsets,  // [C, TH, TW] int32
    const at::Tensor& flatten_ids,    // [M] int32
    bool /*absgrad: read by autograd only*/)
{
  const RasterInputs p = prepare_rasterize("gs_rasterize_fwd", means2d, conics, colors, opacities, backgrounds, width,
                                           height, tile_size, isect_offsets, flatten_ids, c10::DeviceType::CPU);
  const auto opt = p.colors.options();
  at::Tensor render_colors = at::empty({p.c, height, width, p.d}, opt);
  at::Tensor render_alphas = at::empty({p.c, height, width, 1}, opt);
  at::Tensor last_ids = at::empty({p.c, height, width}, opt.dtype(at::kInt));
  at::Tensor final_trans = at::empty({p.c, height, width, 1}, opt);
  const TileGrid grid = {width, height, tile_size, p.tile_width, p.tile_height, p.tile_width * p.tile_height};
  if (p.c == 0) return {render_colors, render_alphas, last_ids, final_trans};
  AT_DISPATCH_FLOATING_TYPES(p.colors.scalar_type(), "gs_rasterize_fwd_cpu", [&] {
    rasterize_fwd_kernel<scalar_t>(p, grid, render_colors, render_alphas, last_ids, final_trans);
  });
  return {render_colors, render_alphas, last_ids, final_trans};
}

// Per-intersection gradient slot layout: v_means2d (2), v_conics (3), v_opacity (1), [v_means2d_abs (2)], v_colors (D).
struct SlotLayout {
  int64_t abs_off, color_off, width;
};

template <typename T>
void rasterize_bwd_kernel(const RasterInputs& p, const TileGrid& grid, const at::Tensor& last_ids,
                          const at::Tensor& v_render_colors, const at::Tensor& v_render_alphas, bool absgrad,
                          at::Tensor& v_means2d, at::Tensor& v_conics, at::Tensor& v_colors, at::Tensor& v_opacities,
                          at::Tensor& v_backgrounds, at::Tensor& v_means2d_abs) {
  const RasterData<T> r = raster_data<T>(p);
  const int32_t* last_in = last_ids.data_ptr<int32_t>();
  const T* v_rc = v_render_colors.data_ptr<T>();
  const T* v_ra = v_render_alphas.data_ptr<T>();
  const int64_t d = p.d, total_tiles = p.c * grid.n_tiles;
  const SlotLayout lay = {6, absgrad ? 8 : 6, (absgrad ? 8 : 6) + d};
  // One gradient slot per intersection, each written by the one tile that owns it.
  std::vector<T> slots(static_cast<size_t>(r.m * lay.width), T(0));
  // Per-tile background gradient (sum over the tile's pixels of T_final * dL/dcolor), reduced per camera below.
  std::vector<T> tile_bg(r.backgrounds ? static_cast<size_t>(total_tiles * d) : 0, T(0));

  struct Blended {
    int64_t idx;
    T t_before;
  };
  at::parallel_for(0, total_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<Blended> stack;
    std::vector<T> behind(static_cast<size_t>(d));  // sum of color * weight of the Gaussians behind
    for (int64_t flat_tile = begin; flat_tile < end; ++flat_tile) {
      const int64_t c = flat_tile / grid.n_tiles, tile = flat_tile % grid.n_tiles;
      const int64_t ty = tile / grid.tile_width, tx = tile % grid.tile_width;
      int64_t start, stop;
      tile_range(r.offsets, flat_tile, total_tiles, r.m, start, stop);
      const int64_t y_end = std::min(grid.height, (ty + 1) * grid.tile_size);
      const int64_t x_end = std::min(grid.width, (tx + 1) * grid.tile_size);
      const T* bg = r.backgrounds ? r.backgrounds + c * d : nullptr;
      for (int64_t y = ty * grid.tile_size; y < y_end; ++y) {
        for (int64_t x = tx * grid.tile_size; x < x_end; ++x) {
          const int64_t pid = (c * grid.height + y) * grid.width + x;
          const T px = static_cast<T>(x) + T(0.5), py = static_cast<T>(y) + T(0.5);
          // Replay the forward pass up to the last blended Gaussian, keeping each one's transmittance: the
          // forward's T bit for bit, where CUDA and Triton divide T_final by (1 - alpha) Gaussian after Gaussian.
          const int64_t last = last_in[pid];
          const int64_t replay_stop = std::min<int64_t>(stop, last + 1);
          stack.clear();
          int64_t replay_last;
          const T t_final = blend_pixel(r, start, replay_stop, px, py, replay_last,
                                        [&](int64_t i, int32_t, const PixelHit<T>&, T t_before) {
                                          stack.push_back({i, t_before});
                                        });
          const T* v_c = v_rc + pid * d;
          const T v_a = v_ra[pid];
          T bg_dot = T(0);
          if (bg) {
            for (int64_t k = 0; k < d; ++k) {
              bg_dot += bg[k] * v_c[k];
              tile_bg[flat_tile * d + k] += t_final * v_c[k];
            }
          }
          std::fill(behind.begin(), behind.end(), T(0));
          for (auto it = stack.rbegin(); it != stack.rend(); ++it) {
            const int32_t g = r.flatten_ids[it->idx];
            const PixelHit<T> h = evaluate_hit(r.means2d[g], r.conics[g], r.opacities[g], px, py);
            const T t_before = it->t_before;
            const T ra = T(1) / (T(1) - h.alpha);
            const T weight = h.alpha * t_before;
            const T* col = r.colors + int64_t(g) * d;
            T* slot = slots.data() + it->idx * lay.width;
            // color = sum_k c_k a_k T_k + T_final bg, alpha = 1 - T_final, with T_j = prod_{i<j} (1 - a_i):
            // d/da_k = c_k T_k - (behind_k + T_final bg) / (1 - a_k) for the color, T_final / (1 - a_k) for alpha.
            T v_alpha = T(0);
            for (int64_t k = 0; k < d; ++k) {
              slot[lay.color_off + k] += weight * v_c[k];
              v_alpha += (col[k] * t_before - behind[k] * ra) * v_c[k];
            }
            v_alpha += t_final * ra * v_a;
            if (bg) v_alpha -= t_final * ra * bg_dot;
            const HitGrad<T> hg = hit_vjp(h, r.conics[g], r.opacities[g], v_alpha);
            slot[0] += hg.v_mean2d.x;
            slot[1] += hg.v_mean2d.y;
            slot[2] += hg.v_conic.x;
            slot[3] += hg.v_conic.y;
            slot[4] += hg.v_conic.z;
            slot[5] += hg.v_opacity;
            if (absgrad) {
              slot[lay.abs_off] += std::abs(hg.v_mean2d.x);
              slot[lay.abs_off + 1] += std::abs(hg.v_mean2d.y);
            }
            for (int64_t k = 0; k < d; ++k) behind[k] += col[k] * weight;
          }
        }
      }
    }
  });

  // Sum the slots per Gaussian in intersection order (sequential: the order, not the thread count, fixes the
  // rounding), and the tiles' background gradients per camera in tile order.
  T* vm = v_means2d.data_ptr<T>();
  T* vcn = v_conics.data_ptr<T>();
  T* vcol = v_colors.data_ptr<T>();
  T* vop = v_opacities.data_ptr<T>();
  T* vabs = absgrad ? v_means2d_abs.data_ptr<T>() : nullptr;
  for (int64_t i = 0; i < r.m; ++i) {
    const int64_t g = r.flatten_ids[i];
    const T* slot = slots.data() + i * lay.width;
    vm[g * 2] += slot[0];
    vm[g * 2 + 1] += slot[1];
    vcn[g * 3] += slot[2];
    vcn[g * 3 + 1] += slot[3];
    vcn[g * 3 + 2] += slot[4];
    vop[g] += slot[5];
    if (vabs) {
      vabs[g * 2] += slot[lay.abs_off];
      vabs[g * 2 + 1] += slot[lay.abs_off + 1];
    }
    for (int64_t k = 0; k < d; ++k) vcol[g * d + k] += slot[lay.color_off + k];
  }
  if (r.backgrounds) {
    T* vbg = v_backgrounds.data_ptr<T>();
    for (int64_t flat_tile = 0; flat_tile < total_tiles; ++flat_tile) {
      const int64_t c = flat_tile / grid.n_tiles;
      for (int64_t k = 0; k < d; ++k) vbg[c * d + k] += tile_bg[flat_tile * d + k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_bwd_cpu(
    const at::Tensor& means2d,    // [C, N, 2]
    const at::Tensor& conics,     // [C, N, 3]
    const at::Tensor& colors,     // [C, N, D]
    const at::Tensor& opacities,  // [C, N]
    const std::optional<at::Tensor>& backgrounds,  // [C, D]
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& isect_offsets,     // [C, TH, TW] int32
    const at::Tensor& flatten_ids,      // [M] int32
    const at::Tensor& final_trans,      // [C, H, W, 1]
    const at::Tensor& last_ids,         // [C, H, W] int32
    const at::Tensor& v_render_colors,  // [C, H, W, D]
    const at::Tensor& v_render_alphas,  // [C, H, W, 1]
    bool absgrad) {
  const char* op = "gs_rasterize_bwd";
  const auto cpu = c10::DeviceType::CPU;
  const RasterInputs p = prepare_rasterize(op, means2d, conics, colors, opacities, backgrounds, width, height,
                                           tile_size, isect_offsets, flatten_ids, cpu);
  const auto dt = p.colors.scalar_type();
  // Checked but not read: the replay recomputes every transmittance (see the kernel).
  checked(final_trans, op, "final_transmittances", cpu, {p.c, height, width, 1}, dt);
  const at::Tensor last_c = checked(last_ids, op, "last_ids", cpu, {p.c, height, width}, at::kInt);
  const at::Tensor v_rc = checked(v_render_colors, op, "v_render_colors", cpu, {p.c, height, width, p.d}, dt);
  const at::Tensor v_ra = checked(v_render_alphas, op, "v_render_alphas", cpu, {p.c, height, width, 1}, dt);
  {
    const int32_t* l = last_c.data_ptr<int32_t>();
    for (int64_t i = 0, e = last_c.numel(); i < e; ++i)
      TORCH_CHECK(l[i] >= -1 && l[i] < std::max<int64_t>(p.m, 0), op, ": `last_ids` entry ", i, " is ", l[i],
                  ", outside [-1, M = ", p.m, ")");
  }
  at::Tensor v_means2d = at::zeros_like(p.means2d);
  at::Tensor v_conics = at::zeros_like(p.conics);
  at::Tensor v_colors = at::zeros_like(p.colors);
  at::Tensor v_opacities = at::zeros_like(p.opacities);
  at::Tensor v_backgrounds = p.backgrounds.has_value() ? at::zeros_like(*p.backgrounds) : p.colors.new_empty({0});
  at::Tensor v_abs = absgrad ? at::zeros_like(p.means2d) : p.means2d.new_empty({0});
  const TileGrid grid = {width, height, tile_size, p.tile_width, p.tile_height, p.tile_width * p.tile_height};
  if (p.c == 0) return {v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, v_abs};
  AT_DISPATCH_FLOATING_TYPES(dt, "gs_rasterize_bwd_cpu", [&] {
    rasterize_bwd_kernel<scalar_t>(p, grid, last_c, v_rc, v_ra, absgrad, v_means2d, v_conics, v_colors, v_opacities,
                                   v_backgrounds, v_abs);
  });
  return {v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, v_abs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("gs_intersect_tiles", &intersect_tiles_cpu);
  m.impl("gs_isect_offsets", &isect_offsets_cpu);
  m.impl("gs_rasterize_fwd", &rasterize_fwd_cpu);
  m.impl("gs_rasterize_bwd", &rasterize_bwd_cpu);
}

}  // namespace gs
}  // namespace pyops
