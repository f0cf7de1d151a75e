// Vectorised CPU kernels of the contrastive loss's chunk steps (the formulas of pyops/contrastive_math.h, lane by
// lane), compiled once per instruction set (contrastive_kernel_{base,avx2,avx512}.cpp; see isa.h): raw pointers and
// ATen's Vectorized only. Rows and columns are each owned by one thread and reduced in a fixed order: the results never
// depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "contrastive_kernel_isa.h"
#include "vec_util.h"

namespace pyops {
namespace contrastive {
namespace PYOPS_ISA_NAMESPACE {

using at::vec::Vectorized;

using cpu_isa::PYOPS_ISA_NAMESPACE::load_n;
using cpu_isa::PYOPS_ISA_NAMESPACE::store_n;

// The first t in [lo, hi) with sorted[t] >= value (hi if none); std::lower_bound's job, written out because the ISA
// copies must not instantiate library templates (isa.h).
inline int64_t lower_bound(const int64_t* sorted, int64_t lo, int64_t hi, int64_t value) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Rows (or column blocks) per parallel task: ~32K elements each.
inline int64_t grain(int64_t row_len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1)); }

template <typename T>
void Chunk<T>::rows(const T* dots, int64_t c, int64_t m, T scale, const int64_t* kperm, const int64_t* lo,
                    const int64_t* hi, T* lse, T* npos, T* loss) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t mv = m - m % L;
  at::parallel_for(0, c, grain(m), [&](int64_t i0, int64_t i1) {
    const V vs(scale);
    for (int64_t i = i0; i < i1; ++i) {
      const T* x = dots + i * m;
      V vmax(-std::numeric_limits<T>::infinity());
      for (int64_t j = 0; j < mv; j += L) vmax = at::vec::maximum(vmax, V::loadu(x + j) * vs);
      T mx = at::vec::vec_reduce_all([](V u, V v) { return at::vec::maximum(u, v); }, vmax);
      for (int64_t j = mv; j < m; ++j) mx = std::max(mx, scale * x[j]);
      const V vmx(mx);
      V acc(T(0));
      for (int64_t j = 0; j < mv; j += L) acc += (V::loadu(x + j) * vs - vmx).exp();
      T sum = at::vec::vec_reduce_all([](V u, V v) { return u + v; }, acc);
      for (int64_t j = mv; j < m; ++j) sum += std::exp(scale * x[j] - mx);
      T ps = 0;
      for (int64_t t = lo[i]; t < hi[i]; ++t) ps += scale * x[kperm[t]];
      const T np = T(hi[i] - lo[i]);
      lse[i] = mx + std::log(sum);
      npos[i] = np;
      loss[i] = np > 0 ? lse[i] - ps / np : T(0);
    }
  });
}

template <typename T>
void Chunk<T>::cols(const T* dots, int64_t c, int64_t m, T scale, int64_t r0, const int64_t* qperm,
                    const int64_t* col_lo, const int64_t* col_hi, T* cmax, T* csum, T* cpos, T* cnpos) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  // Column blocks of up to kMaxBlock columns (a 4 KiB run of each fp32 row: the hardware prefetchers stream it;
  // narrow blocks would touch a few lines per row at a power-of-two stride and wait on every one), narrower when
  // that leaves threads idle. Each column still reduces its rows in order, whatever its block.
  constexpr int64_t kMaxBlock = 1024;
  const int64_t per_thread = m / (2 * at::get_num_threads()) / L * L;
  const int64_t width = std::max<int64_t>(L, std::min<int64_t>(kMaxBlock, per_thread));
  const int64_t blocks = (m + width - 1) / width;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const V vs(scale);
    alignas(64) T mx[kMaxBlock], sm[kMaxBlock];  // the block's max and sum of exp, in L1
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * width, w = std::min(width, m - j0);
      // Lanes past the last column read as 0 and are never stored: columns are independent lanes.
      for (int64_t jj = 0; jj < w; jj += L) {
        V(-std::numeric_limits<T>::infinity()).store(mx + jj);
        V(T(0)).store(sm + jj);
      }
      for (int64_t i = 0; i < c; ++i) {
        const T* x = dots + i * m + j0;
        for (int64_t jj = 0; jj < w; jj += L) {
          at::vec::maximum(V::loadu(mx + jj), load_n<V>(x + jj, std::min(L, w - jj)) * vs).store(mx + jj);
        }
      }
      for (int64_t i = 0; i < c; ++i) {
        const T* x = dots + i * m + j0;
        for (int64_t jj = 0; jj < w; jj += L) {
          const V e = (load_n<V>(x + jj, std::min(L, w - jj)) * vs - V::loadu(mx + jj)).exp();
          (V::loadu(sm + jj) + e).store(sm + jj);
        }
      }
      // Merge into the running state: rescale both sums to the new max (exp(-inf) = 0 for the empty state).
      for (int64_t jj = 0; jj < w; jj += L) {
        const int64_t j = j0 + jj, n = std::min(L, w - jj);
        const V old_max = load_n<V>(cmax + j, n), old_sum = load_n<V>(csum + j, n);
        const V chunk_max = V::loadu(mx + jj), chunk_sum = V::loadu(sm + jj);
        const V new_max = at::vec::maximum(old_max, chunk_max);
        const V new_sum = old_sum * (old_max - new_max).exp() + chunk_sum * (chunk_max - new_max).exp();
        store_n(new_max, cmax + j, n);
        store_n(new_sum, csum + j, n);
      }
      // Positives: the column's positive rows inside this chunk, a sub-range of its ascending list.
      for (int64_t j = j0; j < j0 + w; ++j) {
        const int64_t t0 = lower_bound(qperm, col_lo[j], col_hi[j], r0);
        const int64_t t1 = lower_bound(qperm, t0, col_hi[j], r0 + c);
        T ps = 0;
        for (int64_t t = t0; t < t1; ++t) ps += scale * dots[(qperm[t] - r0) * m + j];
        cpos[j] += ps;
        cnpos[j] += T(t1 - t0);
      }
    }
  });
}

template <typename T>
void Chunk<T>::grad(T* dots, int64_t c, int64_t m, T scale, const int64_t* kperm, const int64_t* lo, const int64_t* hi,
                    const T* row_lse, const T* a, const T* a_inv, const T* col_lse, const T* b, const T* b_inv,
                    double* scale_terms) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  at::parallel_for(0, c, grain(m), [&](int64_t i0, int64_t i1) {
    const V vs(scale);
    T lanes[L];
    for (int64_t i = i0; i < i1; ++i) {
      T* x = dots + i * m;
      const V va(a[i]), vlse(row_lse[i]);
      // sum_j G_ij dots_ij: the positives' part first, while x still holds their dots.
      double terms = 0;
      for (int64_t t = lo[i]; t < hi[i]; ++t) {
        const int64_t j = kperm[t];
        terms -= double(a_inv[i] + (b_inv != nullptr ? b_inv[j] : T(0))) * double(x[j]);
      }
      V acc(T(0));
      for (int64_t j = 0; j < m; j += L) {
        const int64_t n = std::min(L, m - j);
        const V d = load_n<V>(x + j, n), s = d * vs;  // the tail lanes load 0, so they add nothing to acc
        V gv = va * (s - vlse).exp();
        if (b != nullptr) gv = at::vec::fmadd(load_n<V>(b + j, n), (s - load_n<V>(col_lse + j, n)).exp(), gv);
        acc = at::vec::fmadd(gv, d, acc);
        store_n(gv, x + j, n);
      }
      acc.store(lanes);
      for (int64_t l = 0; l < L; ++l) terms += double(lanes[l]);
      scale_terms[i] = terms;
      for (int64_t t = lo[i]; t < hi[i]; ++t) {
        const int64_t j = kperm[t];
        x[j] -= a_inv[i] + (b_inv != nullptr ? b_inv[j] : T(0));
      }
    }
  });
}

template struct Chunk<float>;
template struct Chunk<double>;

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace contrastive
}  // namespace pyops
