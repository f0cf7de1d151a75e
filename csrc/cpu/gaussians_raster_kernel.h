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
    V last_j(T(-1));  // the last blended row position (exact while rows list at most 2^digits candidates)
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
    // A lane's last as a row position (the candidates are in intersection order): the count of candidates at or
    // before it, minus one; as T, exact while rows list at most 2^digits candidates (else lane by lane below).
    alignas(64) T last_pos[L], t_final[L];
    for (int64_t l = 0; l < L; ++l) {
      int64_t lo = 0, hi = l < n ? row.n_hits : 0;  // hits[lo..) are past last[p0 + l]
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (row.hits[mid].i <= last[p0 + l]) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      last_pos[l] = static_cast<T>(lo - 1);
    }
    const bool exact_positions = row.n_hits <= (int64_t(1) << std::numeric_limits<T>::digits);
    const V last_j = V::loadu(last_pos);
    V t_after(T(1));
    int64_t n_rec = 0;
    blend_lanes(row, stop, row.x0 + p0, n, [&](int64_t j, const V& blend, const V& a, const V& t, const V& next) {
      V on = blend & (V(static_cast<T>(j)) <= last_j);
      if (!exact_positions) {  // per lane, on the integer positions
        alignas(64) T mask[L];
        V::blendv(V(T(0)), V(T(1)), blend).store(mask);
        for (int64_t l = 0; l < L; ++l) mask[l] = mask[l] == T(1) && row.hits[j].i <= last[p0 + l] ? T(1) : T(0);
        on = V::loadu(mask) == V(T(1));
      }
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
      // The forward's vis (its exp, on a sigma the records' lanes have within [0, cut]).
      const V dx = V(h.mean2d.x) - px;
      const T dy = h.mean2d.y - row.py;
      const V sigma = V(T(0.5)) * (V(h.conic.x) * dx * dx + V(h.conic.z * dy * dy)) + V(h.conic.y * dy) * dx;
      const V clamped = at::vec::clamp_max(at::vec::clamp_min(sigma, V(T(0))), V(h.sigma_cut));
      const V vis = cpu_isa::PYOPS_ISA_NAMESPACE::exp_nonpositive(V(T(0)) - clamped);
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
