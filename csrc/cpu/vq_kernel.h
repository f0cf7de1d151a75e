// CPU nearest-code search and segment sum, compiled once per instruction set (vq_kernel_{base,avx2,avx512}.cpp)
// so vq.cpp can pick the widest copy at run time; every name lives in pyops::vq::PYOPS_ISA_NAMESPACE (isa.h).
//
// Search: tasks are (block of rows, range of codes). A task walks its codes in tiles: one BLAS call turns
// the tile into dot products [rows, tile] (single-threaded inside at::parallel_for, cache-blocked by the
// BLAS), then a vectorised pass turns them into search scores and updates each row's running top-k'
// while the tile is still in L2. Only the per-row candidate lists [splits, N, k'] outlive a task; the
// exact re-rank then merges them and recomputes distances from the inputs.
//
// Scores: exact=True (and fp64) uses the BLAS in fp32 (fp64); exact=False uses int8 dot products where the
// CPU has AVX512-VNNI or AMX (vq_int8.h), else fp32 too. Not bf16: on the AVX-512 Xeons we measured, vdpbf16ps
// gives half the fp32 FMA rate and ATen's bf16 matmul (oneDNN) 0.65x its fp32 rate. A prepared index
// (pyops.VQIndex: p.stat defined) brings the per-code terms and, for int8, the whole packed codebook, so the
// call packs nothing.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "vq_kernel_isa.h"
#include "pyops/vq.h"
#include "pyops/vq_math.h"
#include "vq_int8.h"

namespace pyops {
namespace vq {
namespace PYOPS_ISA_NAMESPACE {

using at::vec::Vectorized;
using cpu_isa::PYOPS_ISA_NAMESPACE::Buffer;

// Index of a list slot no code has filled yet: sorts after every real code at equal (infinite) score.
constexpr int64_t kNoCode = std::numeric_limits<int64_t>::max();
// Rows per task and codes per tile: a [256, 1024] fp32 score tile is 1 MiB, a quarter of the 4 MiB L2,
// leaving room for the BLAS's packed panels; 256 rows amortise each tile's packing.
constexpr int64_t kRowBlock = 256;
constexpr int64_t kCodeTile = 1024;
// Bytes of int8-packed codes shared by all threads (a chunk of the codebook, reused by every row block).
constexpr int64_t kInt8Workspace = int64_t{8} << 20;

// dst[i] = float(src[i]) for fp16/bf16 (vectorised), plain copy otherwise.
template <typename scalar_t, typename M>
void to_math(const scalar_t* src, M* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, M>) {
    std::copy(src, src + n, dst);
  } else {
    using RV = Vectorized<scalar_t>;
    int64_t i = 0;
    for (; i + RV::size() <= n; i += RV::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(RV::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + Vectorized<float>::size());
    }
    for (; i < n; ++i) dst[i] = static_cast<M>(src[i]);
  }
}

// The n values at src in math type M: src itself when it already is, else widened into buf.
template <typename scalar_t, typename M>
const M* as_math(const scalar_t* src, M* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, M>) {
    return src;
  } else {
    to_math(src, buf, n);
    return buf;
  }
}

// Search score from a dot product x.c of code j (see vq_math.h); `stat` is ||c||^2 (l2) or
// 1 / max(||c||, eps) (cosine), unused for ip (the index's stat, see csrc/ops.cpp).
template <Metric kMetric, typename V>
inline V score_of(const V& dot, const V& stat) {
  if constexpr (kMetric == Metric::kL2)
    return stat - V(2) * dot;
  else if constexpr (kMetric == Metric::kCosine)
    return V(0) - dot * stat;
  else
    return V(0) - dot;
}

// A tile of dot products as the scan reads them, one row at a time: plain values [rows, ld] ...
template <typename S>
struct PlainDots {
  const S* dots;
  int64_t ld;
  struct Row {
    const S* d;
    Vectorized<S> vec(int64_t j) const { return Vectorized<S>::loadu(d + j); }
    S one(int64_t j) const { return d[j]; }
  };
  Row row(int64_t r) const { return {dots + r * ld}; }
};

// ... or the int8 kernels' int32 sums, scaled as they are read: x_r . c_j ~ (acc - bias_r) sx_r sc_j (vq_int8.h).
struct Int8Dots {
  const int32_t* acc;
  int64_t ld;
  const float *sx, *sc;
  const int32_t* bias;
  struct Row {
    const int32_t* a;
    int32_t bias;
    float sx;
    const float* sc;
    Vectorized<float> vec(int64_t j) const {
      const auto v = Vectorized<int32_t>::loadu(a + j) - Vectorized<int32_t>(bias);
      return at::vec::convert_to_fp_of_same_size<float>(v) * Vectorized<float>(sx) * Vectorized<float>::loadu(sc + j);
    }
    float one(int64_t j) const { return static_cast<float>(a[j] - bias) * sx * sc[j]; }
  };
  Row row(int64_t r) const { return {acc + r * ld, bias[r], sx[r], sc}; }
};

// Folds a [rows, cols] tile of dot products for codes code0.. into the rows' running top-kc lists (best_d/best_i,
// kc per row, sorted by before()). Codes arrive in increasing index order, so a score equal to a row's current
// kc-th never displaces it: the vector pre-test `s < kc-th` skips almost every code without touching the list.
template <Metric kMetric, typename S, typename Dots>
void scan_tile(const Dots& dots, int64_t rows, int64_t cols, const S* stat, int64_t code0, S* best_d, int64_t* best_i,
               int kc) {
  using V = Vectorized<S>;
  constexpr int64_t kLane = V::size();
  for (int64_t r = 0; r < rows; ++r) {
    const auto dr = dots.row(r);
    S* bd = best_d + r * kc;
    int64_t* bi = best_i + r * kc;
    S worst = bd[kc - 1];
    int64_t j = 0;
    for (; j + kLane <= cols; j += kLane) {
      const V s = score_of<kMetric>(dr.vec(j), V::loadu(stat + j));
      // zero_mask: bit set where the lane is zero, i.e. where `s < worst` failed.
      const int fails = (s < V(worst)).zero_mask();
      if (fails == (1 << kLane) - 1) continue;
      S lanes[kLane];
      s.store(lanes);
      for (int64_t l = 0; l < kLane; ++l) {
        if (fails & (1 << l)) continue;
        insert_sorted(bd, bi, kc, lanes[l], code0 + j + l);
      }
      worst = bd[kc - 1];
    }
    for (; j < cols; ++j) {
      const S s = score_of<kMetric>(dr.one(j), stat[j]);
      if (s < worst) {
        insert_sorted(bd, bi, kc, s, code0 + j);
        worst = bd[kc - 1];
      }
    }
  }
}

// scan_tile for the metric chosen at run time.
template <typename S, typename Dots>
void scan_tile(Metric metric, const Dots& dots, int64_t rows, int64_t cols, const S* stat, int64_t code0, S* best_d,
               int64_t* best_i, int kc) {
  switch (metric) {
    case Metric::kL2:
      return scan_tile<Metric::kL2>(dots, rows, cols, stat, code0, best_d, best_i, kc);
    case Metric::kCosine:
      return scan_tile<Metric::kCosine>(dots, rows, cols, stat, code0, best_d, best_i, kc);
    case Metric::kIp:
      return scan_tile<Metric::kIp>(dots, rows, cols, stat, code0, best_d, best_i, kc);
  }
}

// Dot product and squared norms / squared distance of two rows in math type M.
template <typename M>
struct RowStats {
  M dot = 0, xx = 0, cc = 0, dd = 0;  // x.c, ||x||^2, ||c||^2, ||x - c||^2
};
template <typename M>
RowStats<M> row_stats(const M* x, const M* c, int64_t d) {
  using V = Vectorized<M>;
  V dot(0), xx(0), cc(0), dd(0);
  int64_t i = 0;
  for (; i + V::size() <= d; i += V::size()) {
    const V a = V::loadu(x + i), b = V::loadu(c + i), diff = a - b;
    dot = at::vec::fmadd(a, b, dot);
    xx = at::vec::fmadd(a, a, xx);
    cc = at::vec::fmadd(b, b, cc);
    dd = at::vec::fmadd(diff, diff, dd);
  }
  auto sum = [](const V& v) { return at::vec::vec_reduce_all<M>([](V& a, V& b) { return a + b; }, v); };
  RowStats<M> st{sum(dot), sum(xx), sum(cc), sum(dd)};
  for (; i < d; ++i) {
    const M diff = x[i] - c[i];
    st.dot += x[i] * c[i], st.xx += x[i] * x[i], st.cc += c[i] * c[i], st.dd += diff * diff;
  }
  return st;
}

template <typename scalar_t>
void search(const SearchProblem& p, at::Tensor& out_d, at::Tensor& out_i) {
  using M = MathOf<scalar_t>;  // scores, GEMM and re-rank type
  const int64_t n = p.n, num_codes = p.num_codes, dim = p.dim;
  const int kc = static_cast<int>(p.candidates);
  const scalar_t* x = p.x.data_ptr<scalar_t>();
  const scalar_t* cb = p.codebook.data_ptr<scalar_t>();

  // Per-code term of the score: the index's, or once per call (O(K) memory).
  const bool prepared = p.stat.defined();
  Buffer<M> stat_buf(prepared ? 0 : num_codes);  // [K]
  const M* stat = prepared ? p.stat.data_ptr<M>() : stat_buf.data();
  if (!prepared && p.metric != Metric::kIp) {
    at::parallel_for(0, num_codes, 256, [&](int64_t c0, int64_t c1) {
      Buffer<M> row(dim);
      for (int64_t c = c0; c < c1; ++c) {
        const M* cr = as_math(cb + c * dim, row.data(), dim);
        const M cc = row_stats<M>(cr, cr, dim).cc;
        stat_buf[c] = p.metric == Metric::kL2 ? cc : M(1) / std::max(std::sqrt(cc), M(kNormEps));
      }
    });
  }

  // Split the codebook too when there are too few row blocks to keep every thread busy (small N).
  const int64_t rows_per_task = std::min(kRowBlock, n);
  const int64_t row_blocks = (n + rows_per_task - 1) / rows_per_task;
  const int64_t tiles = (num_codes + kCodeTile - 1) / kCodeTile;
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::clamp<int64_t>((2 * threads + row_blocks - 1) / row_blocks, 1, tiles);
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  Buffer<M> cand_d_buf(splits * n * kc);        // [splits, N, kc]
  Buffer<int64_t> cand_i_buf(splits * n * kc);  // [splits, N, kc]
  M* cand_d = cand_d_buf.data();
  int64_t* cand_i = cand_i_buf.data();

  std::fill(cand_d, cand_d + splits * n * kc, std::numeric_limits<M>::infinity());
  std::fill(cand_i, cand_i + splits * n * kc, kNoCode);

  // exact=False with fp32 math: int8 scores (vq_int8.h) when the CPU has VNNI. The codebook is packed a
  // chunk at a time (at most kInt8Workspace bytes), once per chunk for all row blocks, unless the index
  // holds it packed (one chunk). An int8 index searched at a level without the int8 kernels (PYOPS_CPU_ISA)
  // falls back to fp32 scores.
  const bool index_int8 = prepared && p.packed.numel() > 0;
  const bool use_int8 =
      std::is_same_v<M, float> && !p.exact && dim <= int8::kMaxDim && int8::supported() && (index_int8 || !prepared);
  const int64_t dp = int8::padded_dim(dim);
  const int64_t chunk = use_int8 && !index_int8
                            ? std::clamp<int64_t>(kInt8Workspace / dp / kCodeTile, 1, tiles) * kCodeTile
                            : tiles * kCodeTile;
  const bool pack_here = use_int8 && !index_int8;
  Buffer<uint8_t> pack_buf(pack_here ? std::min(chunk, tiles * kCodeTile) * dp : 0);  // [chunk/16, dp/4, 16, 4]
  Buffer<float> scale_buf(pack_here ? std::min(chunk, tiles * kCodeTile) : 0);        // [chunk]
  const uint8_t* packed = index_int8 ? p.packed.data_ptr<uint8_t>() : pack_buf.data();
  const float* code_scale = index_int8 ? p.code_scale.data_ptr<float>() : scale_buf.data();

  for (int64_t chunk0 = 0; chunk0 < num_codes; chunk0 += chunk) {
    const int64_t chunk_end = std::min(num_codes, chunk0 + chunk);
    if (pack_here) {
      const int64_t groups = (chunk_end - chunk0 + int8::kGroup - 1) / int8::kGroup;
      at::parallel_for(0, groups, 16, [&](int64_t g0, int64_t g1) {
        const int64_t c0 = chunk0 + g0 * int8::kGroup, cols = std::min(chunk_end, chunk0 + g1 * int8::kGroup) - c0;
        if constexpr (std::is_same_v<M, float>) {
          Buffer<float> buf(std::is_same_v<scalar_t, float> ? 0 : cols * dim);
          int8::pack_codes(as_math(cb + c0 * dim, buf.data(), cols * dim), cols, dim,
                           pack_buf.data() + g0 * int8::kGroup * dp, scale_buf.data() + g0 * int8::kGroup);
        }
      });
    }
    at::parallel_for(0, row_blocks * splits, 1, [&](int64_t t0, int64_t t1) {
      constexpr bool kConvert = !std::is_same_v<scalar_t, M>;
      const int64_t rows_padded = (rows_per_task + int8::kRows - 1) / int8::kRows * int8::kRows;
      Buffer<M> x_buf(kConvert ? rows_per_task * dim : 0);           // [rows, D] fp16/bf16 rows in fp32
      Buffer<M> c_buf(kConvert && !use_int8 ? kCodeTile * dim : 0);  // [tile, D]
      Buffer<int8_t> qx(use_int8 ? rows_padded * dp : 0);            // [rows, dp] int8 rows
      Buffer<float> qx_scale(use_int8 ? rows_padded : 0);
      Buffer<int32_t> qx_bias(use_int8 ? rows_padded : 0);
      // [rows, tile] dots: BLAS values, or the int8 kernels' int32 sums, which fill whole 32 x 32 blocks
      // (vq_int8.h) with a row stride padded off 4 KiB (a power-of-two stride maps a block's rows to one L1 set).
      constexpr int64_t kLd = kCodeTile + 16;
      Buffer<M> dots_buf(use_int8 ? 0 : rows_per_task * kCodeTile);
      Buffer<int32_t> acc_buf(use_int8 ? rows_padded * kLd : 0);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t block = task / splits, split = task % splits;
        const int64_t r0 = block * rows_per_task, rows = std::min(rows_per_task, n - r0);
        const int64_t code_begin = std::max(chunk0, split * tiles_per_split * kCodeTile);
        const int64_t code_end = std::min(chunk_end, (split + 1) * tiles_per_split * kCodeTile);
        if (code_begin >= code_end) continue;
        M* bd = cand_d + (split * n + r0) * kc;
        int64_t* bi = cand_i + (split * n + r0) * kc;
        const M* xr = as_math(x + r0 * dim, x_buf.data(), rows * dim);
        if constexpr (std::is_same_v<M, float>) {
          if (use_int8) int8::quantize_rows(xr, rows, dim, qx.data(), qx_scale.data(), qx_bias.data());
        }
        for (int64_t c0 = code_begin; c0 < code_end; c0 += kCodeTile) {
          const int64_t cols = std::min(kCodeTile, code_end - c0);
          if constexpr (std::is_same_v<M, float>) {
            if (use_int8) {
              int8::dots(qx.data(), rows, packed + (c0 - chunk0) * dp, cols, dim, acc_buf.data(), kLd);
              const Int8Dots dots{acc_buf.data(), kLd, qx_scale.data(), code_scale + (c0 - chunk0), qx_bias.data()};
              scan_tile(p.metric, dots, rows, cols, stat + c0, c0, bd, bi, kc);
              continue;
            }
          }
          gemm_nt(xr, as_math(cb + c0 * dim, c_buf.data(), cols * dim), rows, cols, dim, dots_buf.data());
          scan_tile(p.metric, PlainDots<M>{dots_buf.data(), cols}, rows, cols, stat + c0, c0, bd, bi, kc);
        }
      }
    });
  }

  // Re-rank: merge the splits' lists by score, then exact distances in M, sorted by before().
  M* od = out_d.data_ptr<M>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  const int64_t k = p.k;
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    Buffer<M> xrow(dim), crow(dim), md(kc), ed(kc);
    Buffer<int64_t> mi(kc), ei(kc);
    for (int64_t r = r0; r < r1; ++r) {
      std::copy(cand_d + r * kc, cand_d + (r + 1) * kc, md.data());
      std::copy(cand_i + r * kc, cand_i + (r + 1) * kc, mi.data());
      for (int64_t s = 1; s < splits; ++s)
        for (int j = 0; j < kc; ++j) {
          const int64_t idx = cand_i[(s * n + r) * kc + j];
          if (idx != kNoCode) insert_sorted(md.data(), mi.data(), kc, cand_d[(s * n + r) * kc + j], idx);
        }
      const M* xr = as_math(x + r * dim, xrow.data(), dim);
      std::fill(ed.data(), ed.data() + kc, std::numeric_limits<M>::infinity());
      std::fill(ei.data(), ei.data() + kc, kNoCode);
      for (int j = 0; j < kc; ++j) {
        // Only non-finite scores leave a slot empty (finite inputs fill all kc <= K slots).
        if (mi[j] == kNoCode) continue;
        const RowStats<M> st = row_stats<M>(xr, as_math(cb + mi[j] * dim, crow.data(), dim), dim);
        const M d = p.metric == Metric::kL2       ? st.dd
                    : p.metric == Metric::kCosine ? cosine_distance<M>(st.dot, std::sqrt(st.xx), std::sqrt(st.cc))
                                                  : -st.dot;
        insert_sorted(ed.data(), ei.data(), kc, d, mi[j]);
      }
      for (int64_t j = 0; j < k; ++j) {
        od[r * k + j] = ei[j] == kNoCode ? std::numeric_limits<M>::quiet_NaN() : ed[j];
        oi[r * k + j] = ei[j] == kNoCode ? 0 : ei[j];
      }
    }
  });
}

// sums[s] += the rows r with indices[r] == s (checked by vq.cpp), added in row order (deterministic); threads
// own disjoint column ranges, so no two threads touch one output element.
template <typename scalar_t>
void segment_sum(const SegmentProblem& p, at::Tensor& sums) {
  using M = MathOf<scalar_t>;
  const int64_t n = p.n, dim = p.dim;
  const scalar_t* v = p.values.data_ptr<scalar_t>();
  const int64_t* idx = p.indices.data_ptr<int64_t>();
  M* out = sums.data_ptr<M>();
  constexpr int64_t kColumns = 64;  // columns per task: a cache line or more of every touched row
  at::parallel_for(0, (dim + kColumns - 1) / kColumns, 1, [&](int64_t b0, int64_t b1) {
    const int64_t d0 = b0 * kColumns, d1 = std::min(dim, b1 * kColumns), w = d1 - d0;
    Buffer<M> row(w);
    for (int64_t r = 0; r < n; ++r) {
      to_math(v + r * dim + d0, row.data(), w);
      M* dst = out + idx[r] * dim + d0;
      for (int64_t i = 0; i < w; ++i) dst[i] += row[i];
    }
  });
}

// vq.cpp dispatches on the dtype (no error path here: see isa.h).
#define PYOPS_INSTANTIATE(T)                                               \
  template void search<T>(const SearchProblem&, at::Tensor&, at::Tensor&); \
  template void segment_sum<T>(const SegmentProblem&, at::Tensor&);
PYOPS_CPU_ISA_INSTANTIATE_DTYPES(PYOPS_INSTANTIATE)
#undef PYOPS_INSTANTIATE

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace vq
}  // namespace pyops
