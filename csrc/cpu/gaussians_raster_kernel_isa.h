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
  int32_t g;  // flatten id: camera * N + Gaussian
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

// At most this many Gaussians blend into one pixel: each blended alpha is >= 1/255 and blending stops before the
// transmittance falls to 1e-4, so k blends need (1 - 1/255)^k > 1e-4 (fp32 rounding included): k <= 2345.
constexpr int64_t kMaxBlendsPerPixel = 2400;
// The most pixels one vector of any copy holds (fp32 at AVX-512).
constexpr int64_t kMaxRowLanes = 16;

PYOPS_CPU_ISA_DECLARE(template <typename T> struct RowBlend {
  // Blends the row. Per pixel p: color[p * d + k] (the blended colors plus T_final * bg[k]; bg may be nullptr),
  // alpha[p] (the sum of the blend weights), trans[p] (T_final) and last[p] (the last blended intersection, -1
  // if none). colors is [*, d] by flatten id; scratch holds d * lanes() Ts.
  static void forward(const RowArgs<T>& row, const T* colors, int64_t d, const T* bg, T* scratch, T* color, T* alpha,
                      T* trans, int32_t* last);
  // The forward's blending again, for the backward: per pixel p, the row positions of its blended candidates up
  // to intersection last[p] in blend order, with the transmittance before each (events_j / events_t [p * stride
  // + e], count[p] of them), and t_final[p], the transmittance after the last. Makes the forward's decisions and
  // transmittances bit for bit. Sets *fits to false if a pixel had more than `stride` events (none recorded past
  // it).
  static void replay(const RowArgs<T>& row, const int32_t* last, int64_t stride, int32_t* events_j, T* events_t,
                     int64_t* count, T* t_final, bool* fits);
};)

}  // namespace gs
}  // namespace pyops
