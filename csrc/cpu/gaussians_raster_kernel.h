// Vectorised front-to-back blending of one tile row on the CPU, compiled once per instruction set
// (gaussians_raster_kernel_{base,avx2,avx512}.cpp; see isa.h): one vector lane per pixel, so a candidate Gaussian is
// read once for a whole run of pixels and its exp is one vector exp. Raw pointers and ATen's Vectorized only.
//
// The per-pixel decisions are gsplat's cut order, as pyops/gaussians_math.h writes them for one pixel: skip when
// sigma is past the Gaussian's certain-skip cut (no exp), when sigma < 0 or alpha < 1/255; stop, without blending,
// once T * (1 - alpha) <= 1e-4. The forward pass and the backward's replay both run blend_lanes below, so they make
// the same decisions and compute the same transmittances bit for bit (this copy's vector exp, not std::exp:
// vec_util.h).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <limits>

#include "gaussians_raster_kernel_isa.h"
#include "vec_util.h"

namespace pyops {
namespace gs {
namespace PYOPS_ISA_NAMESPACE {

using at::vec::Vectorized;

// Lane masks are vectors with all bits set (true) or clear (false) per lane, as Vectorized's comparisons return.
template <typename T>
inline bool none(const Vectorized<T>& mask) {
  return mask.zero_mask() == (1 << Vectorized<T>::size()) - 1;
}

// Blends lanes [0, n_lanes) of pixels x0 .. x0 + n_lanes - 1 over the row's candidates with an intersection index
// below stop; for every candidate calls on_blend(j (row position), blend mask (lanes it blends into, maybe none),
// alpha, T before, T after) and returns the lanes' final transmittances. In batches of kBatch candidates: first
// each one's alphas (independent of the others, so their exp chains overlap), zero where it does not blend for
// sure; then the transmittance recurrence over the batch, a few operations per candidate. (One candidate at a
// time, the loop waited on each exp and mispredicted the branches that tested it: ~3x slower.)
template <typename T, typename OnBlend>
Vectorized<T> blend_lanes(const RowArgs<T>& row, int64_t stop, int64_t x0, int64_t n_lanes, OnBlend&& on_blend) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size(), kBatch = 8;
  constexpr T kThreshold = alpha_threshold<T>(), kMaxAlpha = max_alpha<T>(), kMinTrans = min_transmittance<T>();
  const V lane_x = V::arange(static_cast<T>(x0), T(1));  // pixel columns (exact: columns < 2^24)
  const V px = lane_x + V(T(0.5));
  const V all = V(T(0)) == V(T(0));
  V active = lane_x < V(static_cast<T>(x0 + n_lanes));
  V trans(T(1));
  alignas(64) T alphas[kBatch * L];
  int64_t n = 0;  // the candidates below stop (a row lists them in intersection order)
  while (n < row.n_hits && row.hits[n].i < stop) ++n;
  for (int64_t j0 = 0; j0 < n; j0 += kBatch) {
    const int64_t nb = n - j0 < kBatch ? n - j0 : kBatch;
    for (int64_t b = 0; b < nb; ++b) {
      const RowHit<T>& h = row.hits[j0 + b];
      V alpha(T(0));
      if (h.x_hi >= x0 && h.x_lo < x0 + n_lanes) {
        const V dx = V(h.mean2d.x) - px;
        const T dy = h.mean2d.y - row.py;
        const V sigma = V(T(0.5)) * (V(h.conic.x) * dx * dx + V(h.conic.z * dy * dy)) + V(h.conic.y * dy) * dx;
        // `sigma > cut` is false for NaNs, so a NaN sigma or cut reaches the exact test, which skips it.
        const V in_cut = (lane_x >= V(static_cast<T>(h.x_lo))) & (lane_x <= V(static_cast<T>(h.x_hi))) &
                         ((sigma > V(h.sigma_cut)) ^ all) & (sigma >= V(T(0)));
        // exp of sigma clamped to [0, cut]: the lanes it changes are skipped anyway, and far lanes' exp(-sigma)
        // would be subnormal, which costs a microcode assist per instruction (the clamp made the loop 3x faster).
        const V clamped = at::vec::clamp_max(at::vec::clamp_min(sigma, V(T(0))), V(h.sigma_cut));
        const V raw = V(h.opacity) * cpu_isa::PYOPS_ISA_NAMESPACE::exp_nonpositive(V(T(0)) - clamped);
        alpha = in_cut & (raw >= V(kThreshold)) & at::vec::clamp_max(raw, V(kMaxAlpha));  // NaN: not >= 1/255
      }
      alpha.store(alphas + b * L);
    }
    for (int64_t b = 0; b < nb; ++b) {
      const V alpha = V::loadu(alphas + b * L);
      const V pass = active & (alpha >= V(kThreshold));
      const V next = trans * (V(T(1)) - alpha);
      const V ended = pass & (next <= V(kMinTrans));  // exclusive: this Gaussian is not blended
      const V blend = pass ^ ended;
      active = active ^ ended;
      on_blend(j0 + b, blend, alpha, trans, next);
      trans = V::blendv(trans, next, blend);
    }
    if (none(active)) break;
  }
  return trans;
}

// Calls f(lane) for each lane of a mask, lowest first.
template <typename T, typename F>
inline void for_each_lane(const Vectorized<T>& mask, F&& f) {
  for (int bits = ~mask.zero_mask() & ((1 << Vectorized<T>::size()) - 1); bits != 0; bits &= bits - 1) {
    f(__builtin_ctz(bits));
  }
}

template <typename T>
void RowBlend<T>::forward(const RowArgs<T>& row, const T* colors, int64_t d, const T* bg, T* scratch, T* color,
                          T* alpha, T* trans, int32_t* last) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  static_assert(L <= kMaxRowLanes, "scratch holds d * kMaxRowLanes");
  const bool exact_positions = row.n_hits <= (int64_t(1) << std::numeric_limits<T>::digits);
  for (int64_t p0 = 0; p0 < row.n_px; p0 += L) {
    const int64_t n = row.n_px - p0 < L ? row.n_px - p0 : L;
    T* acc = scratch;  // [d][L]: the lanes' color sums
    for (int64_t k = 0; k < d; ++k) V(T(0)).store(acc + k * L);
    V weights(T(0));  // render_alphas: the sum of the weights (see gaussians_math.h)
    V last_j(T(-1));  // the last blended row position (exact: rows list fewer than kExactPositions candidates)
    int32_t* lane_last = last + p0;
    for (int64_t l = 0; l < n; ++l) lane_last[l] = -1;
    const V t_final =
        blend_lanes(row, row.stop, row.x0 + p0, n, [&](int64_t j, const V& blend, const V& a, const V& t, const V&) {
          const V w = blend & (a * t);
          weights = weights + w;
          const T* c = colors + int64_t(row.hits[j].g) * d;
          for (int64_t k = 0; k < d; ++k) at::vec::fmadd(V(c[k]), w, V::loadu(acc + k * L)).store(acc + k * L);
          if (exact_positions) {
            last_j = V::blendv(last_j, V(static_cast<T>(j)), blend);
          } else {
            for_each_lane(blend, [&](int l) { lane_last[l] = static_cast<int32_t>(row.hits[j].i); });
          }
        });
    t_final.store(trans + p0, static_cast<int>(n));
    weights.store(alpha + p0, static_cast<int>(n));
    if (exact_positions) {
      alignas(64) T lj[L];
      last_j.store(lj);
      for (int64_t l = 0; l < n; ++l)
        lane_last[l] = lj[l] < T(0) ? -1 : static_cast<int32_t>(row.hits[int64_t(lj[l])].i);
    }
    for (int64_t l = 0; l < n; ++l) {
      T* out = color + (p0 + l) * d;
      for (int64_t k = 0; k < d; ++k) out[k] = acc[k * L + l] + (bg ? trans[p0 + l] * bg[k] : T(0));
    }
  }
}

template <typename T>
void RowBlend<T>::replay(const RowArgs<T>& row, const int32_t* last, int64_t stride, int32_t* events_j, T* events_t,
                         int64_t* count, T* t_final, bool* fits) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  *fits = true;
  for (int64_t p0 = 0; p0 < row.n_px; p0 += L) {
    const int64_t n = row.n_px - p0 < L ? row.n_px - p0 : L;
    int64_t stop = 0;  // past every lane's last blended intersection
    for (int64_t l = 0; l < n; ++l) {
      count[p0 + l] = 0;
      t_final[p0 + l] = T(1);
      stop = last[p0 + l] + 1 > stop ? last[p0 + l] + 1 : stop;
    }
    stop = stop < row.stop ? stop : row.stop;
    alignas(64) T before[L], after[L];
    blend_lanes(row, stop, row.x0 + p0, n, [&](int64_t j, const V& blend, const V&, const V& t, const V& next) {
      const int64_t i = row.hits[j].i;
      t.store(before);
      next.store(after);
      for_each_lane(blend, [&](int l) {
        const int64_t p = p0 + l;
        if (i > last[p]) return;  // past this pixel's last (a lane may blend on beyond it; never recorded)
        if (count[p] == stride) {
          *fits = false;
          return;
        }
        events_j[p * stride + count[p]] = static_cast<int32_t>(j);
        events_t[p * stride + count[p]] = before[l];
        ++count[p];
        t_final[p] = after[l];
      });
    });
  }
}

template struct RowBlend<float>;
template struct RowBlend<double>;

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace gs
}  // namespace pyops
