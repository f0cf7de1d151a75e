// CPU backend of pyops::gs_rasterize_fwd / gs_rasterize_bwd (the intersection stages are in
// gaussians_intersect.cpp), with the per-pixel math of pyops/gaussians_math.h and the argument checks and
// allocation of pyops/gaussians.h.
//
// Tiles are the unit of parallel work. The backward pass writes each (tile, Gaussian) intersection's gradient
// into its own slot of a per-intersection buffer (a tile owns a contiguous range of intersections, so no two
// threads touch one slot) and then sums the slots per Gaussian in intersection order: the result does not
// depend on the thread count or schedule.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gaussians_raster_kernel_isa.h"
#include "pyops/gaussians.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {
namespace {

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

// What blending reads of one Gaussian, gathered once per Gaussian (tile_rows then reads one box per
// intersection), with the bounding box of its certain-skip ellipse.
//
// sigma_cut: a sigma above which opacity * exp(-sigma) < 1/255 for certain: log(255 opacity) plus a margin (1e-3,
// far above the rounding of exp and of the product) that leaves the decision near the bound to the exact test. A
// NaN cut (negative or NaN opacity) never skips; -inf (zero opacity) always does, as the exact test would.
//
// half_x, half_y: the half-widths of the ellipse sigma <= cut, sqrt(2 cut c / (ac - b^2)) and sqrt(2 cut a / (ac -
// b^2)) for the conic (a, b, c), in double; NaN where the box is not trusted. It is trusted only where the fp32
// sigma the blending computes is within the cut's 1e-3 margin of the exact one: a positive definite conic whose
// elongation 1 / (1 - |b| / sqrt(ac)) keeps the rounding of sigma's terms (relative 3e-7 each, terms up to
// elongation x sigma) under 3e-4.
template <typename T>
struct GaussianBox {
  Vec2<T> mean2d;
  Vec3<T> conic;
  T opacity, sigma_cut;
  double half_x, half_y;
};

// What blending reads, for the Gaussians some intersection lists only, packed in flatten-id order: their boxes
// and colors, and each intersection's index into them. The others (e.g. the dropped rows of a dense decoder's output)
// cost nothing here, and the gathers in depth order touch a smaller array (a MoRel frame, 2x10^5 Gaussians of which 45%
// are dropped: tile_rows' gathers took 40% longer from the sparse arrays than from a compacted input).
template <typename T>
struct ListedGaussians {
  int64_t count = 0;
  std::unique_ptr<GaussianBox<T>[]> boxes;  // [count]
  std::unique_ptr<T[]> colors;              // [count, D]
  std::unique_ptr<int32_t[]> box_of;        // [M]: intersection i's Gaussian's index in boxes and colors
};

template <typename T>
ListedGaussians<T> listed_gaussians(const RasterInputs& p) {
  const auto* means2d = reinterpret_cast<const Vec2<T>*>(p.means2d.data_ptr<T>());
  const auto* conics = reinterpret_cast<const Vec3<T>*>(p.conics.data_ptr<T>());
  const T* opacities = p.opacities.data_ptr<T>();
  const T* colors = p.colors.data_ptr<T>();
  const int32_t* flatten_ids = p.flatten_ids.data_ptr<int32_t>();
  const int64_t n = p.opacities.numel(), d = p.d;
  // slot[g]: 1 if listed, then g's index in boxes and colors (an exclusive prefix count), -1 if not listed.
  std::vector<int32_t> slot(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < p.m; ++i) slot[flatten_ids[i]] = 1;
  ListedGaussians<T> l;
  for (int64_t g = 0; g < n; ++g) slot[g] = slot[g] ? static_cast<int32_t>(l.count++) : -1;
  l.boxes.reset(new GaussianBox<T>[static_cast<size_t>(l.count)]);
  l.colors.reset(new T[static_cast<size_t>(l.count * d)]);
  l.box_of.reset(new int32_t[static_cast<size_t>(p.m)]);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      if (slot[g] < 0) continue;
      const T cut = std::log(opacities[g] / alpha_threshold<T>()) + T(1e-3);
      const double a = conics[g].x, b = conics[g].y, c = conics[g].z, dcut = cut;
      const double rho = std::abs(b) / std::sqrt(a * c);  // NaN unless a c > 0
      double half_x = std::numeric_limits<double>::quiet_NaN(), half_y = half_x;
      if (a > 0 && c > 0 && rho < 1 && std::isfinite(dcut) && std::isfinite(means2d[g].x) &&
          std::isfinite(means2d[g].y) && (std::abs(dcut) + 1) / (1 - rho) <= 1000) {
        const double scale = dcut > 0 ? 2 * dcut / (a * c - b * b) : 0;  // cut <= 0: at most the centre
        half_x = std::sqrt(scale * c);
        half_y = std::sqrt(scale * a);
      }
      l.boxes[slot[g]] = {means2d[g], conics[g], opacities[g], cut, half_x, half_y};
      std::copy(colors + g * d, colors + (g + 1) * d, l.colors.get() + slot[g] * d);
    }
  });
  at::parallel_for(0, p.m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) l.box_of[i] = slot[flatten_ids[i]];
  });
  return l;
}

template <typename T>
struct RasterData {
  const GaussianBox<T>* boxes;  // [listed]
  const T* colors;              // [listed, D]
  const int32_t* box_of;        // [M]
  const T* backgrounds;         // [C, D] or nullptr
  const int32_t* offsets;       // [C * TH * TW]
  const int32_t* flatten_ids;   // [M]
  int64_t d, m;
};

template <typename T>
RasterData<T> raster_data(const RasterInputs& p, const ListedGaussians<T>& l) {
  return {l.boxes.get(),
          l.colors.get(),
          l.box_of.get(),
          p.backgrounds.has_value() ? p.backgrounds->data_ptr<T>() : nullptr,
          p.isect_offsets.data_ptr<int32_t>(),
          p.flatten_ids.data_ptr<int32_t>(),
          p.d,
          p.m};
}

// rows[y - y0] = the intersections [start, stop) of the tile whose Gaussian may blend a pixel of row y, in
// intersection order, with the columns where it may: its certain-skip box padded by 0.01 pixel (the whole tile if
// the box is not trusted). Every (pixel, Gaussian) pair left out has sigma above the cut, so blending would skip
// it anyway: the lists save walking those, most of a tile's pairs (a MoRel frame's rasterize, 2x10^5 Gaussians at
// 320 x 180, one thread: 145 -> 122 ms, when blending was one pixel at a time).
template <typename T>
void tile_rows(const RasterData<T>& r, int64_t start, int64_t stop, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
               std::vector<std::vector<RowHit<T>>>& rows) {
  for (int64_t y = y0; y < y1; ++y) rows[y - y0].clear();
  // [lo, hi] of pixel indices whose centre (index + 0.5) is within `half` of `centre`, clamped to [first, last].
  auto span = [](double centre, double half, int64_t first, int64_t last, int64_t& lo, int64_t& hi) {
    lo = std::max(first, static_cast<int64_t>(std::clamp(std::ceil(centre - 0.5 - half - 0.01), -1.0, 1e15)));
    hi = std::min(last, static_cast<int64_t>(std::clamp(std::floor(centre - 0.5 + half + 0.01), -1.0, 1e15)));
  };
  constexpr int64_t kAhead = 16;  // boxes and colors are gathered in depth order: fetch ahead (misses dominated)
  for (int64_t i = start; i < stop; ++i) {
    if (i + kAhead < stop) {
      const int64_t ahead = r.box_of[i + kAhead];
      __builtin_prefetch(&r.boxes[ahead]);
      __builtin_prefetch(r.colors + ahead * r.d);  // read when the rows blend
    }
    const int32_t g = r.box_of[i];
    const GaussianBox<T>& b = r.boxes[g];
    if (b.sigma_cut == -std::numeric_limits<T>::infinity()) continue;  // zero opacity: skipped everywhere
    int64_t x_lo = x0, x_hi = x1 - 1, y_lo = y0, y_hi = y1 - 1;
    if (!std::isnan(b.half_x)) {
      span(b.mean2d.x, b.half_x, x0, x1 - 1, x_lo, x_hi);
      span(b.mean2d.y, b.half_y, y0, y1 - 1, y_lo, y_hi);
    }
    if (x_lo > x_hi) continue;
    const RowHit<T> hit = {
        i, g, static_cast<int32_t>(x_lo), static_cast<int32_t>(x_hi), b.mean2d, b.conic, b.opacity, b.sigma_cut};
    for (int64_t y = y_lo; y <= y_hi; ++y) rows[y - y0].push_back(hit);
  }
}

// Runs body(state, flat_tile) for every tile, each worker taking the next tile as it finishes one (tiles' costs
// differ by orders of magnitude, and at::parallel_for's static halves left one thread idle for a third of a MoRel
// frame). make_state() builds a worker's scratch. Every tile writes only its own outputs, so the results do not
// depend on the schedule.
template <typename MakeState, typename Body>
void for_each_tile(int64_t total_tiles, MakeState&& make_state, Body&& body) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), total_tiles), 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t t = next++; t < total_tiles; t = next++) body(state, t);
  });
}

// One tile's share of the work: its camera, pixels [x0, x_end) x [y0, y_end) and intersections [start, stop).
struct TileView {
  int64_t c, x0, x_end, y0, y_end, start, stop;
};

template <typename T>
TileView tile_view(const TileGrid& grid, const RasterData<T>& r, int64_t flat_tile, int64_t total_tiles) {
  const int64_t tile = flat_tile % grid.n_tiles, ty = tile / grid.tile_width, tx = tile % grid.tile_width;
  TileView v;
  v.c = flat_tile / grid.n_tiles;
  v.y0 = ty * grid.tile_size;
  v.y_end = std::min(grid.height, v.y0 + grid.tile_size);
  v.x0 = tx * grid.tile_size;
  v.x_end = std::min(grid.width, v.x0 + grid.tile_size);
  tile_range(r.offsets, flat_tile, total_tiles, r.m, v.start, v.stop);
  return v;
}

// Pixel row y of a tile, over its candidates (tile_rows).
template <typename T>
RowArgs<T> row_args(const TileView& v, int64_t y, const std::vector<RowHit<T>>& hits) {
  return {hits.data(), static_cast<int64_t>(hits.size()), v.stop, v.x0, v.x_end - v.x0, static_cast<T>(y) + T(0.5)};
}

template <typename T>
void rasterize_fwd_kernel(const RasterInputs& p, const TileGrid& grid, RasterOutputs& o) {
  const ListedGaussians<T> listed = listed_gaussians<T>(p);
  const RasterData<T> r = raster_data<T>(p, listed);
  T* out_c = o.render_colors.data_ptr<T>();
  T* out_a = o.render_alphas.data_ptr<T>();
  int32_t* out_last = o.last_ids.data_ptr<int32_t>();
  T* out_t = o.final_transmittances.data_ptr<T>();
  const int64_t d = p.d, total_tiles = p.c * grid.n_tiles;
  struct Worker {
    std::vector<T> scratch;
    std::vector<std::vector<RowHit<T>>> rows;
  };
  auto make_worker = [&] {
    return Worker{std::vector<T>(static_cast<size_t>(d * kMaxRowLanes)),
                  std::vector<std::vector<RowHit<T>>>(static_cast<size_t>(grid.tile_size))};
  };
  for_each_tile(total_tiles, make_worker, [&](Worker& w, int64_t flat_tile) {
    const TileView v = tile_view(grid, r, flat_tile, total_tiles);
    tile_rows(r, v.start, v.stop, v.y0, v.y_end, v.x0, v.x_end, w.rows);
    const T* bg = r.backgrounds ? r.backgrounds + v.c * d : nullptr;
    for (int64_t y = v.y0; y < v.y_end; ++y) {
      const int64_t pid = (v.c * grid.height + y) * grid.width + v.x0;
      PYOPS_CPU_ISA_CALL(RowBlend<T>::forward, row_args(v, y, w.rows[y - v.y0]), r.colors, d, bg, w.scratch.data(),
                         out_c + pid * d, out_a + pid, out_t + pid, out_last + pid);
    }
  });
}

TileGrid tile_grid(const RasterInputs& p) {
  return {p.width, p.height, p.tile_size, p.tile_width, p.tile_height, p.tile_width * p.tile_height};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cpu(
    const at::Tensor& means2d,                     // [C, N, 2]
    const at::Tensor& conics,                      // [C, N, 3]
    const at::Tensor& colors,                      // [C, N, D]
    const at::Tensor& opacities,                   // [C, N]
    const std::optional<at::Tensor>& backgrounds,  // [C, D]
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& isect_offsets,  // [C, TH, TW] int32
    const at::Tensor& flatten_ids,    // [M] int32
    bool /*absgrad: read by autograd only*/) {
  const RasterInputs p = prepare_rasterize("gs_rasterize_fwd", means2d, conics, colors, opacities, backgrounds, width,
                                           height, tile_size, isect_offsets, flatten_ids, c10::DeviceType::CPU);
  RasterOutputs o = allocate_raster_outputs(p);
  if (p.c == 0) return o.as_tuple();
  AT_DISPATCH_FLOATING_TYPES(p.colors.scalar_type(), "gs_rasterize_fwd_cpu",
                             [&] { rasterize_fwd_kernel<scalar_t>(p, tile_grid(p), o); });
  return o.as_tuple();
}

// Per-intersection gradient slot layout: v_means2d (2), v_conics (3), v_opacity (1), [v_means2d_abs (2)], v_colors (D).
struct SlotLayout {
  int64_t abs_off, color_off, width;
};

template <typename T>
void rasterize_bwd_kernel(const RasterInputs& p, const TileGrid& grid, const RasterGradInputs& in, bool absgrad,
                          RasterGradOutputs& out) {
  const ListedGaussians<T> listed = listed_gaussians<T>(p);
  const RasterData<T> r = raster_data<T>(p, listed);
  const int32_t* last_in = in.last_ids.data_ptr<int32_t>();
  const T* v_rc = in.v_render_colors.data_ptr<T>();
  const T* v_ra = in.v_render_alphas.data_ptr<T>();
  const int64_t d = p.d, total_tiles = p.c * grid.n_tiles;
  const SlotLayout lay = {6, absgrad ? 8 : 6, (absgrad ? 8 : 6) + d};
  // One gradient slot per intersection, each written by the one tile that owns it.
  std::vector<T> slots(static_cast<size_t>(r.m * lay.width), T(0));
  // Per-tile background gradient (sum over the tile's pixels of T_final * dL/dcolor), reduced per camera below.
  std::vector<T> tile_bg(r.backgrounds ? static_cast<size_t>(total_tiles * d) : 0, T(0));

  struct Worker {
    std::vector<std::vector<RowHit<T>>> rows;
    std::vector<T> records, scratch;  // RowGrad's scratch buffers
    std::vector<int32_t> record_j;
  };
  auto make_worker = [&] {
    return Worker{std::vector<std::vector<RowHit<T>>>(static_cast<size_t>(grid.tile_size)),
                  {},
                  std::vector<T>(static_cast<size_t>(2 * d * kMaxRowLanes)),
                  {}};
  };
  for_each_tile(total_tiles, make_worker, [&](Worker& w, int64_t flat_tile) {
    const TileView v = tile_view(grid, r, flat_tile, total_tiles);
    tile_rows(r, v.start, v.stop, v.y0, v.y_end, v.x0, v.x_end, w.rows);
    const T* bg = r.backgrounds ? r.backgrounds + v.c * d : nullptr;
    for (int64_t y = v.y0; y < v.y_end; ++y) {
      const RowArgs<T> row = row_args(v, y, w.rows[y - v.y0]);
      const int64_t pid0 = (v.c * grid.height + y) * grid.width + v.x0;
      // A record per blending candidate of a vector of pixels: at most one per candidate, and at most
      // kMaxBlendsPerPixel per lane.
      const int64_t cap = std::min<int64_t>(row.n_hits, kMaxRowLanes * kMaxBlendsPerPixel);
      w.records.resize(static_cast<size_t>(cap * 3 * kMaxRowLanes));
      w.record_j.resize(static_cast<size_t>(cap));
      const RowGrad<T> grad = {v_rc + pid0 * d,
                               v_ra + pid0,
                               bg,
                               bg ? tile_bg.data() + flat_tile * d : nullptr,
                               slots.data(),
                               lay.width,
                               absgrad ? lay.abs_off : -1,
                               lay.color_off,
                               w.records.data(),
                               w.record_j.data(),
                               cap,
                               w.scratch.data()};
      bool fits = true;
      PYOPS_CPU_ISA_CALL(RowBlend<T>::backward, row, last_in + pid0, r.colors, d, grad, &fits);
      TORCH_CHECK(fits, "gs_rasterize_bwd: a pixel blends more than ", kMaxBlendsPerPixel,
                  " Gaussians (internal error: last_ids does not come from gs_rasterize_fwd?)");
    }
  });

  // Sum the slots per Gaussian in intersection order (sequential: the order, not the thread count, fixes the
  // rounding), and the tiles' background gradients per camera in tile order.
  T* vm = out.v_means2d.data_ptr<T>();
  T* vcn = out.v_conics.data_ptr<T>();
  T* vcol = out.v_colors.data_ptr<T>();
  T* vop = out.v_opacities.data_ptr<T>();
  T* vabs = absgrad ? out.v_means2d_abs.data_ptr<T>() : nullptr;
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
    T* vbg = out.v_backgrounds.data_ptr<T>();
    for (int64_t flat_tile = 0; flat_tile < total_tiles; ++flat_tile) {
      const int64_t c = flat_tile / grid.n_tiles;
      for (int64_t k = 0; k < d; ++k) vbg[c * d + k] += tile_bg[flat_tile * d + k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_bwd_cpu(
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
                                           tile_size, isect_offsets, flatten_ids, c10::DeviceType::CPU);
  // final_transmittances is checked but not read: the replay recomputes every transmittance (see the kernel).
  const RasterGradInputs in =
      prepare_rasterize_grad(op, p, final_transmittances, last_ids, v_render_colors, v_render_alphas);
  RasterGradOutputs out = allocate_raster_grads(p, absgrad);
  if (p.c == 0) return out.as_tuple();
  AT_DISPATCH_FLOATING_TYPES(p.colors.scalar_type(), "gs_rasterize_bwd_cpu",
                             [&] { rasterize_bwd_kernel<scalar_t>(p, tile_grid(p), in, absgrad, out); });
  return out.as_tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("gs_rasterize_fwd", &rasterize_fwd_cpu);
  m.impl("gs_rasterize_bwd", &rasterize_bwd_cpu);
}

}  // namespace gs
}  // namespace pyops
