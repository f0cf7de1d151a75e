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

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

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

// How many of the row's candidates have an intersection index below `limit` (they are in intersection order).
template <typename T>
int64_t count_below(const RowArgs<T>& row, int64_t limit) {
  int64_t lo = 0, hi = row.n_hits;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (row.hits[mid].i < limit) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Candidate h's sigma at the lanes' pixel centres px (one row, centre height py).
template <typename T>
inline Vectorized<T> lane_sigma(const RowHit<T>& h, const Vectorized<T>& px, T py) {
  using V = Vectorized<T>;
  const V dx = V(h.mean2d.x) - px;
  const T dy = h.mean2d.y - py;
  return V(T(0.5)) * (V(h.conic.x) * dx * dx + V(h.conic.z * dy * dy)) + V(h.conic.y * dy) * dx;
}

// exp(-sigma) on sigma clamped to [0, cut]: the lanes the clamp changes are skipped anyway, and far lanes'
// exp(-sigma) would be subnormal, which costs a microcode assist per instruction (the clamp made blending 3x faster).
template <typename T>
inline Vectorized<T> lane_vis(const RowHit<T>& h, const Vectorized<T>& sigma) {
  using V = Vectorized<T>;
  const V clamped = at::vec::clamp_max(at::vec::clamp_min(sigma, V(T(0))), V(h.sigma_cut));
  return cpu_isa::PYOPS_ISA_NAMESPACE::exp_nonpositive(V(T(0)) - clamped);
}

// A row position j (0 <= j < 2^31, or -1) as two vectors' lanes, j = hi * 2^24 + lo, each exact in fp32 too.
template <typename T>
struct LanePosition {
  Vectorized<T> hi, lo;
  static LanePosition of(int64_t j) {
    return {Vectorized<T>(static_cast<T>(j >> 24)), Vectorized<T>(static_cast<T>(j & 0xffffff))};
  }
  // Lanes where this position is at or before `other`'s.
  Vectorized<T> at_or_before(const LanePosition& other) const {
    return (hi < other.hi) | ((hi == other.hi) & (lo <= other.lo));
  }
};

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
  const int64_t n = stop >= row.stop ? row.n_hits : count_below(row, stop);  // the candidates below stop
  for (int64_t j0 = 0; j0 < n; j0 += kBatch) {
    const int64_t nb = n - j0 < kBatch ? n - j0 : kBatch;
    for (int64_t b = 0; b < nb; ++b) {
      const RowHit<T>& h = row.hits[j0 + b];
      V alpha(T(0));
      if (h.x_hi >= x0 && h.x_lo < x0 + n_lanes) {
        const V sigma = lane_sigma(h, px, row.py);
        // `sigma > cut` is false for NaNs, so a NaN sigma or cut reaches the exact test, which skips it.
        const V in_cut = (lane_x >= V(static_cast<T>(h.x_lo))) & (lane_x <= V(static_cast<T>(h.x_hi))) &
                         ((sigma > V(h.sigma_cut)) ^ all) & (sigma >= V(T(0)));
        const V raw = V(h.opacity) * lane_vis(h, sigma);
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

template <typename T>
void RowBlend<T>::forward(const RowArgs<T>& row, const T* colors, int64_t d, const T* bg, T* scratch, T* color,
                          T* alpha, T* trans, int32_t* last) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  static_assert(L <= kMaxRowLanes, "scratch holds d * kMaxRowLanes");
  for (int64_t p0 = 0; p0 < row.n_px; p0 += L) {
    const int64_t n = row.n_px - p0 < L ? row.n_px - p0 : L;
    T* acc = scratch;  // [d][L]: the lanes' color sums
    for (int64_t k = 0; k < d; ++k) V(T(0)).store(acc + k * L);
    V weights(T(0));                                   // render_alphas: the sum of the weights (see gaussians_math.h)
    LanePosition<T> last_j = LanePosition<T>::of(-1);  // the last blended row position
    const V t_final =
        blend_lanes(row, row.stop, row.x0 + p0, n, [&](int64_t j, const V& blend, const V& a, const V& t, const V&) {
          const V w = blend & (a * t);
          weights = weights + w;
          const T* c = colors + int64_t(row.hits[j].g) * d;
          for (int64_t k = 0; k < d; ++k) at::vec::fmadd(V(c[k]), w, V::loadu(acc + k * L)).store(acc + k * L);
          const LanePosition<T> pos = LanePosition<T>::of(j);
          last_j = {V::blendv(last_j.hi, pos.hi, blend), V::blendv(last_j.lo, pos.lo, blend)};
        });
    t_final.store(trans + p0, static_cast<int>(n));
    weights.store(alpha + p0, static_cast<int>(n));
    alignas(64) T hi[L], lo[L];
    last_j.hi.store(hi);
    last_j.lo.store(lo);
    for (int64_t l = 0; l < n; ++l) {
      const int64_t j = (static_cast<int64_t>(hi[l]) << 24) + static_cast<int64_t>(lo[l]);
      last[p0 + l] = j < 0 ? -1 : static_cast<int32_t>(row.hits[j].i);
    }
    for (int64_t l = 0; l < n; ++l) {
      T* out = color + (p0 + l) * d;
      for (int64_t k = 0; k < d; ++k) out[k] = acc[k * L + l] + (bg ? trans[p0 + l] * bg[k] : T(0));
    }
  }
}

template <typename T>
inline T sum_lanes(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all([](const Vectorized<T>& x, const Vectorized<T>& y) { return x + y; }, v);
}

template <typename T>
void RowBlend<T>::backward(const RowArgs<T>& row, const int32_t* last, const T* colors, int64_t d, const RowGrad<T>& g,
                           bool* fits) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr T kMaxAlpha = max_alpha<T>();
  static_assert(L <= kMaxRowLanes, "the scratch buffers hold kMaxRowLanes lanes");
  for (int64_t p0 = 0; p0 < row.n_px; p0 += L) {
    const int64_t n = row.n_px - p0 < L ? row.n_px - p0 : L;
    int64_t stop = 0;  // past every lane's last blended intersection
    for (int64_t l = 0; l < n; ++l) stop = last[p0 + l] + 1 > stop ? last[p0 + l] + 1 : stop;
    stop = stop < row.stop ? stop : row.stop;

    // The forward's blending again: a record per candidate that blends into some lane at or before that lane's
    // last (last_ids), with the lanes (1 or 0), the transmittance before it and its alpha; and per lane T_final.
    // A lane's last as a row position: the count of candidates at or before it, minus one.
    alignas(64) T last_hi[L], last_lo[L], t_final[L];
    for (int64_t l = 0; l < L; ++l) {
      const int64_t pos = l < n ? count_below(row, int64_t(last[p0 + l]) + 1) - 1 : -1;
      last_hi[l] = static_cast<T>(pos >> 24);
      last_lo[l] = static_cast<T>(pos & 0xffffff);
    }
    const LanePosition<T> last_j = {V::loadu(last_hi), V::loadu(last_lo)};
    V t_after(T(1));
    int64_t n_rec = 0;
    blend_lanes(row, stop, row.x0 + p0, n, [&](int64_t j, const V& blend, const V& a, const V& t, const V& next) {
      const V on = blend & LanePosition<T>::of(j).at_or_before(last_j);
      if (none(on)) return;
      if (n_rec == g.record_cap) {
        *fits = false;
        return;
      }
      T* rec = g.records + n_rec * 3 * L;
      V::blendv(V(T(0)), V(T(1)), on).store(rec);
      t.store(rec + L);
      a.store(rec + 2 * L);
      t_after = V::blendv(t_after, next, on);
      g.record_j[n_rec++] = static_cast<int32_t>(j);
    });
    t_after.store(t_final);

    // Back to front over the records, all lanes at once. color = sum_k c_k a_k T_k + T_final bg, alpha = 1 -
    // T_final, with T_j = prod_{i<j} (1 - a_i): d/da_k = c_k T_k - (behind_k + T_final bg) / (1 - a_k) for the
    // color, T_final / (1 - a_k) for alpha. A record's lanes are summed into its intersection's slot.
    T* behind = g.scratch;   // [d][L]: per lane, the sum of color * weight of the Gaussians behind
    T* vc = behind + d * L;  // [d][L]: per lane, dL/dcolor (0 past the row)
    alignas(64) T va[L];
    for (int64_t l = 0; l < L; ++l) va[l] = l < n ? g.v_alpha[p0 + l] : T(0);
    for (int64_t k = 0; k < d; ++k) {
      V(T(0)).store(behind + k * L);
      for (int64_t l = 0; l < L; ++l) vc[k * L + l] = l < n ? g.v_color[(p0 + l) * d + k] : T(0);
    }
    const V tf = V::loadu(t_final), v_a = V::loadu(va);
    V bg_dot(T(0));
    if (g.bg != nullptr) {
      for (int64_t k = 0; k < d; ++k) {
        const V vck = V::loadu(vc + k * L);
        bg_dot = at::vec::fmadd(V(g.bg[k]), vck, bg_dot);
        g.bg_grad[k] += sum_lanes(tf * vck);
      }
    }
    const V px = V::arange(static_cast<T>(row.x0 + p0), T(1)) + V(T(0.5));
    for (int64_t r = n_rec - 1; r >= 0; --r) {
      const RowHit<T>& h = row.hits[g.record_j[r]];
      const T* rec = g.records + r * 3 * L;
      const V on = V::loadu(rec) == V(T(1));
      const V t_before = V::loadu(rec + L), alpha = V::loadu(rec + 2 * L);
      const V dx = V(h.mean2d.x) - px;
      const T dy = h.mean2d.y - row.py;
      const V vis = lane_vis(h, lane_sigma(h, px, row.py));  // the forward's (a record's lanes have sigma in [0, cut])
      const V ra = V(T(1)) / (V(T(1)) - alpha);
      const V weight = alpha * t_before;
      const T* col = colors + int64_t(h.g) * d;
      T* slot = g.slots + h.i * g.slot_width;
      V v_alpha(T(0));
      for (int64_t k = 0; k < d; ++k) {
        const V vck = V::loadu(vc + k * L), bk = V::loadu(behind + k * L);
        slot[g.color_off + k] += sum_lanes(on & (weight * vck));
        v_alpha = at::vec::fmadd(V(col[k]) * t_before - bk * ra, vck, v_alpha);
        (bk + (on & (V(col[k]) * weight))).store(behind + k * L);
      }
      v_alpha = v_alpha + tf * ra * v_a;
      if (g.bg != nullptr) v_alpha = v_alpha - tf * ra * bg_dot;
      // Through alpha = opacity exp(-sigma) unless the 0.999 clamp was active (then alpha does not depend on the
      // inputs, as in autograd through the clamp).
      const V raw = V(h.opacity) * vis;
      const V live = on & (raw <= V(kMaxAlpha));
      // (Masked after each product: a lane outside the record may hold anything.)
      const V v_sigma = V(T(0)) - raw * v_alpha;
      const V v_mx = live & (v_sigma * (V(h.conic.x) * dx + V(h.conic.y * dy)));
      const V v_my = live & (v_sigma * (V(h.conic.y) * dx + V(h.conic.z * dy)));
      slot[0] += sum_lanes(v_mx);
      slot[1] += sum_lanes(v_my);
      slot[2] += sum_lanes(live & (V(T(0.5)) * v_sigma * dx * dx));
      slot[3] += sum_lanes(live & (v_sigma * dx * V(dy)));
      slot[4] += sum_lanes(live & (V(T(0.5) * dy * dy) * v_sigma));
      slot[5] += sum_lanes(live & (vis * v_alpha));
      if (g.abs_off >= 0) {
        slot[g.abs_off] += sum_lanes(v_mx.abs());
        slot[g.abs_off + 1] += sum_lanes(v_my.abs());
      }
    }
  }
}

template struct RowBlend<float>;
template struct RowBlend<double>;

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace gs
}  // namespace pyops
