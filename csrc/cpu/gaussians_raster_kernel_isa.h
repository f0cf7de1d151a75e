// Entry points of the per-ISA CPU rasterizer row kernels (gaussians_raster_kernel.h, compiled once per level: see
// isa.h) and the plain structs the host (gaussians_raster.cpp) fills for them, for T = float and double.
#pragma once

#include <cstdint>

#include "isa.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {

// One intersection of a tile, as a candidate for one pixel row of it: the pixel columns [x_lo, x_hi] where its
// sigma may be within the cut, and a copy of what blending reads of its Gaussian (a row's candidates are then
// one contiguous array, not gathers through flatten_ids).
template <typename T>
struct RowHit {
  int64_t i;  // intersection index (position in flatten_ids)
  int32_t g;  // the Gaussian's index among the listed ones (its colors: colors + g * D)
  int32_t x_lo, x_hi;
  Vec2<T> mean2d;
  Vec3<T> conic;
  T opacity, sigma_cut;
};

// One pixel row of a tile: pixels x0 .. x0 + n_px - 1 at pixel-centre height py, blended front to back over the
// row's candidates hits[0 .. n_hits) (intersection order) with an intersection index below stop.
template <typename T>
struct RowArgs {
  const RowHit<T>* hits;
  int64_t n_hits, stop, x0, n_px;
  T py;
};

// Where one row's backward (RowBlend::backward) reads the upstream gradients and adds its own.
template <typename T>
struct RowGrad {
  const T* v_color;  // [n_px, d]: dL/d render_colors of the row's pixels
  const T* v_alpha;  // [n_px]: dL/d render_alphas
  const T* bg;       // [d]; nullptr without backgrounds
  T* bg_grad;        // [d]: += the sum over the row's pixels of T_final * v_color; nullptr without backgrounds
  T* slots;          // intersection i's gradients at slots + i * slot_width: v_means2d (2), v_conics (3),
                     // v_opacity (1), at abs_off v_means2d_abs (2; abs_off < 0: none), at color_off v_colors (d)
  int64_t slot_width, abs_off, color_off;
  T* records;         // scratch: record_cap * 3 * kMaxRowLanes Ts
  int32_t* record_j;  // scratch: record_cap
  int64_t record_cap;
  T* scratch;  // scratch: 2 * d * kMaxRowLanes Ts
};

// At most this many Gaussians blend into one pixel: each blended alpha is >= 1/255 and blending stops before the
// transmittance falls to 1e-4, so k blends need (1 - 1/255)^k > 1e-4 (fp32 rounding included): k <= 2345.
constexpr int64_t kMaxBlendsPerPixel = 2400;
// The most pixels one vector of any copy holds (fp32 at AVX-512).
constexpr int64_t kMaxRowLanes = 16;

PYOPS_CPU_ISA_DECLARE(template <typename T> struct RowBlend {
  // Blends the row. Per pixel p: color[p * d + k] (the blended colors plus T_final * bg[k]; bg may be nullptr),
  // alpha[p] (the sum of the blend weights), trans[p] (T_final) and last[p] (the last blended intersection, -1
  // if none). colors is [*, d], a candidate's at colors + g * d; scratch holds d * kMaxRowLanes Ts.
  static void forward(const RowArgs<T>& row, const T* colors, int64_t d, const T* bg, T* scratch, T* color, T* alpha,
                      T* trans, int32_t* last);
  // The backward of one row: replays the forward's blending (its decisions and transmittances bit for bit) up to
  // each pixel's last blended intersection (last[p]), then adds every blended (pixel, Gaussian) pair's gradients
  // to the Gaussian's intersection slot (a vector's lanes summed in a fixed order: deterministic). Sets *fits to false
  // if more records than g.record_cap were needed (none is made past it).
  static void backward(const RowArgs<T>& row, const int32_t* last, const T* colors, int64_t d, const RowGrad<T>& g,
                       bool* fits);
};)

}  // namespace gs
}  // namespace pyops
