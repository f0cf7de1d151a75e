// Vectorised CPU HexPlane kernels, compiled once per instruction set (hexplane_kernel_{base,avx2,avx512}.cpp)
// so hexplane.cpp can pick the widest copy at run time. Every name lives in pyops::hexplane::PYOPS_ISA_NAMESPACE;
// the copies take raw pointers and plain structs (isa.h says why). The loops over a block's B channels are
// plain loops the compiler vectorises at each copy's width.
#pragma once

#include <ATen/Parallel.h>

#include "hexplane_kernel_isa.h"
#include "pyops/hexplane_math.h"

namespace pyops {
namespace hexplane {
namespace PYOPS_ISA_NAMESPACE {

using cpu_isa::PYOPS_ISA_NAMESPACE::Buffer;

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// dst[0..B) += src[0..B) as one GCC vector of B lanes (one AVX-512 / two AVX2 / four SSE registers for
// float): GCC leaves the plain loop scalar here (it cannot rule out dst overlapping the sources).
template <typename T>
inline void add_block(T* dst, const T* src) {
  typedef T Block __attribute__((vector_size(sizeof(T) * kBlock)));
  Block a, b;
  __builtin_memcpy(&a, dst, sizeof(Block));
  __builtin_memcpy(&b, src, sizeof(Block));
  a += b;
  __builtin_memcpy(dst, &a, sizeof(Block));
}

// The four corner offsets (in elements, within one block) and the weights of one plane at one point.
template <typename T>
struct Corners {
  int64_t o00, o01, o10, o11;
  T wa, wb, dwa, dwb;
};

template <typename T>
inline Corners<T> corners(const PlaneDesc<T>& pl, const T* q, int k) {
  const Lerp<T> a = lerp_coord<T>(q[plane_a(k)], pl.ra);
  const Lerp<T> b = lerp_coord<T>(q[plane_b(k)], pl.rb);
  const int64_t ts = pl.texel_stride;
  return {(b.i0 * pl.ra + a.i0) * ts,
          (b.i0 * pl.ra + a.i1) * ts,
          (b.i1 * pl.ra + a.i0) * ts,
          (b.i1 * pl.ra + a.i1) * ts,
          a.w,
          b.w,
          a.dw,
          b.dw};
}

// The point's normalised (x, y, z, t).
template <typename scalar_t, typename T>
inline void coords(const Inputs<scalar_t>& in, int64_t n, T* q) {
  for (int d = 0; d < 3; ++d) q[d] = normalize<T>(static_cast<T>(in.points[n * 3 + d]), in.lo[d], in.scale[d]);
  q[3] = in.times ? static_cast<T>(in.times[n]) : in.time;
}

// The n-th point the kernels visit.
template <typename scalar_t>
inline int64_t point_at(const Inputs<scalar_t>& in, int64_t n) {
  return in.order ? in.order[n] : n;
}

// Software prefetch of the texels point n will read (and, with grads, write), issued a few points ahead: the
// kernels are bound by the latency of these scattered reads (the planes of a level are megabytes), which the
// hardware prefetcher cannot predict. [first, first + count) elements of each of the plane's two rows.
constexpr int64_t kPrefetchAhead = 1;  // points
template <typename T>
inline void prefetch_rows(const T* base, const Corners<T>& c, int64_t count) {
  for (int64_t e = 0; e < count; e += 64 / int64_t(sizeof(T))) {
    __builtin_prefetch(base + c.o00 + e);
    __builtin_prefetch(base + c.o10 + e);
  }
  __builtin_prefetch(base + c.o00 + count - 1);
  __builtin_prefetch(base + c.o10 + count - 1);
}

// [p, p + count) elements, for a read or a write (the rows of features / v_features of the next point: in cell
// order the points' rows are scattered too).
template <typename S>
inline void prefetch_span(const S* p, int64_t count, bool write) {
  const int64_t step = 64 / int64_t(sizeof(S));
  for (int64_t e = 0; e < count; e += step) write ? __builtin_prefetch(p + e, 1) : __builtin_prefetch(p + e, 0);
  write ? __builtin_prefetch(p + count - 1, 1) : __builtin_prefetch(p + count - 1, 0);
}

// The point (and time) the kernels visit n-th, two prefetch distances ahead: its coordinates feed the texel
// prefetches of the next step.
template <typename scalar_t>
inline void prefetch_point(const Inputs<scalar_t>& in, int64_t n, int64_t end) {
  if (n >= end) return;
  const int64_t i = point_at(in, n);
  __builtin_prefetch(in.points + 3 * i);
  if (in.times) __builtin_prefetch(in.times + i);
}

// ------------------------------------------------------------------------------------------------------
// Forward.

// The parallel_for bodies are named functors, not lambdas: a lambda inside a function template whose signature
// names its template parameter gets a mangled name objdump cannot demangle, which tests/test_isa.py's check of
// the ISA copies needs.
template <typename scalar_t>
struct ForwardBody {
  const Inputs<scalar_t>& in;
  const LevelDesc<scalar_t>* levels;
  int64_t num_levels;
  scalar_t* out;

  void operator()(int64_t begin, int64_t end) const {
    using T = MathType<scalar_t>;
    const int64_t c_total = in.total_channels;
    for (int64_t n = begin; n < end; ++n) {
      T q[4];
      if (n + kPrefetchAhead < end) {
        const int64_t ahead = point_at(in, n + kPrefetchAhead);
        prefetch_point(in, n + 2 * kPrefetchAhead, end);
        prefetch_span(out + ahead * c_total, c_total, /*write=*/true);
        coords(in, ahead, q);
        for (int64_t l = 0; l < num_levels; ++l)
          for (int k = 0; k < kPlanesPerLevel; ++k) {
            const PlaneDesc<T>& pl = levels[l].planes[k];
            const Corners<T> c = corners(pl, q, k);
            prefetch_rows(pl.data, c, c.o01 - c.o00 + pl.texel_stride);
          }
      }
      const int64_t i = point_at(in, n);
      coords(in, i, q);
      for (int64_t l = 0; l < num_levels; ++l) {
        const LevelDesc<scalar_t>& lv = levels[l];
        Corners<T> cs[kPlanesPerLevel];
        for (int k = 0; k < kPlanesPerLevel; ++k) cs[k] = corners(lv.planes[k], q, k);
        for (int64_t blk = 0; blk < lv.nblk; ++blk) {
          T acc[kBlock];
          for (int k = 0; k < kPlanesPerLevel; ++k) {
            const PlaneDesc<T>& pl = lv.planes[k];
            const T* base = pl.data + blk * pl.block_stride;
            const Corners<T>& c = cs[k];
            T s[kBlock];
            for (int64_t j = 0; j < kBlock; ++j)
              s[j] = bilinear(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb);
            if (k == 0) {
              for (int64_t j = 0; j < kBlock; ++j) acc[j] = s[j];
            } else {
              for (int64_t j = 0; j < kBlock; ++j) acc[j] *= s[j];
            }
          }
          const int64_t c0 = blk * kBlock, width = min_i64(kBlock, lv.channels - c0);
          scalar_t* o = out + i * c_total + lv.offset + c0;
          for (int64_t j = 0; j < width; ++j) o[j] = static_cast<scalar_t>(acc[j]);
        }
      }
    }
  }
};

template <typename scalar_t>
void forward(const Inputs<scalar_t>& in, const LevelDesc<scalar_t>* levels, int64_t num_levels, scalar_t* out) {
  at::parallel_for(0, in.n, 256, ForwardBody<scalar_t>{in, levels, num_levels, out});
}

// ------------------------------------------------------------------------------------------------------
// Backward.

// Unit (level lv, blocks [blk_begin, blk_end)): plane gradients of those blocks, and the unit's share of each
// point's d loss / d (x', y', z', t) into coord_grad [N, 4].
template <typename scalar_t, typename T>
void backward_unit(const Inputs<scalar_t>& in, const LevelDesc<scalar_t>& lv, int64_t blk_begin, int64_t blk_end,
                   const scalar_t* v_features, T* coord_grad) {
  const int64_t c_total = in.total_channels;
  for (int64_t n = 0; n < in.n; ++n) {
    T q[4];
    if (n + kPrefetchAhead < in.n) {
      const int64_t ahead = point_at(in, n + kPrefetchAhead);
      prefetch_point(in, n + 2 * kPrefetchAhead, in.n);
      const int64_t c0 = lv.offset + blk_begin * kBlock;
      prefetch_span(v_features + ahead * c_total + c0, min_i64(blk_end * kBlock, lv.channels) - blk_begin * kBlock,
                    /*write=*/false);
      __builtin_prefetch(coord_grad + ahead * 4, 1);
      coords(in, ahead, q);
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const PlaneDesc<T>& pl = lv.planes[k];
        const Corners<T> c = corners(pl, q, k);
        for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
          prefetch_rows(pl.data + blk * pl.block_stride, c, c.o01 - c.o00 + kBlock);
          prefetch_rows(pl.grad + blk * pl.block_stride, c, c.o01 - c.o00 + kBlock);
        }
      }
    }
    const int64_t i = point_at(in, n);
    coords(in, i, q);
    Corners<T> cs[kPlanesPerLevel];
    for (int k = 0; k < kPlanesPerLevel; ++k) cs[k] = corners(lv.planes[k], q, k);
    // Per-lane sums of d loss / d weight, reduced over the lanes once per point: a reduction inside the
    // channel loops would keep them from vectorising (no reassociation without -ffast-math).
    T v_wa[kPlanesPerLevel][kBlock] = {}, v_wb[kPlanesPerLevel][kBlock] = {};
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t c0 = blk * kBlock, width = min_i64(kBlock, lv.channels - c0);
      T g[kBlock] = {};  // padded channels: 0, so they add nothing anywhere
      const scalar_t* vf = v_features + i * c_total + lv.offset + c0;
      for (int64_t j = 0; j < width; ++j) g[j] = static_cast<T>(vf[j]);
      // The six samples, then d loss / d sample_k = g * prod_{j != k} sample_j from prefix and suffix
      // products (no division: a zero sample is fine).
      T s[kPlanesPerLevel][kBlock];
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const T* base = lv.planes[k].data + blk * lv.planes[k].block_stride;
        const Corners<T>& c = cs[k];
        for (int64_t j = 0; j < kBlock; ++j)
          s[k][j] = bilinear(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb);
      }
      T gs[kPlanesPerLevel][kBlock];
      {
        T prefix[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) prefix[j] = g[j];
        for (int k = 0; k < kPlanesPerLevel; ++k)
          for (int64_t j = 0; j < kBlock; ++j) gs[k][j] = prefix[j], prefix[j] *= s[k][j];
        T suffix[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) suffix[j] = T(1);
        for (int k = kPlanesPerLevel - 1; k >= 0; --k)
          for (int64_t j = 0; j < kBlock; ++j) gs[k][j] *= suffix[j], suffix[j] *= s[k][j];
      }
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const int64_t block_offset = blk * lv.planes[k].block_stride;
        const T* base = lv.planes[k].data + block_offset;
        T* gbase = lv.planes[k].grad + block_offset;
        const Corners<T>& c = cs[k];
        T r00[kBlock], r01[kBlock], r10[kBlock], r11[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) {
          const auto r =
              bilinear_vjp(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb, gs[k][j]);
          r00[j] = r.v00, r01[j] = r.v01, r10[j] = r.v10, r11[j] = r.v11;
          v_wa[k][j] += r.v_wa;
          v_wb[k][j] += r.v_wb;
        }
        // One corner at a time: two corners can be the same texel (one-sample axes, time lines).
        add_block(gbase + c.o00, r00);
        add_block(gbase + c.o01, r01);
        add_block(gbase + c.o10, r10);
        add_block(gbase + c.o11, r11);
      }
    }
    T cg[4] = {};
    for (int k = 0; k < kPlanesPerLevel; ++k) {
      T sa = 0, sb = 0;
      for (int64_t j = 0; j < kBlock; ++j) sa += v_wa[k][j], sb += v_wb[k][j];
      cg[plane_a(k)] += sa * cs[k].dwa;
      cg[plane_b(k)] += sb * cs[k].dwb;
    }
    for (int d = 0; d < 4; ++d) coord_grad[i * 4 + d] = cg[d];
  }
}

struct Unit {
  int64_t level, blk_begin, blk_end;
};

template <typename scalar_t>
struct UnitsBody {
  const Inputs<scalar_t>& in;
  const LevelDesc<scalar_t>* levels;
  const Unit* units;
  const scalar_t* v_features;
  MathType<scalar_t>* coord_grad;  // [units, N, 4]

  void operator()(int64_t begin, int64_t end) const {
    for (int64_t u = begin; u < end; ++u) {
      const Unit& unit = units[u];
      backward_unit(in, levels[unit.level], unit.blk_begin, unit.blk_end, v_features, coord_grad + u * in.n * 4);
    }
  }
};

// Fixed-order sum over units, then the chain rule through the normalisation.
template <typename scalar_t>
struct PointGradBody {
  const Inputs<scalar_t>& in;
  const MathType<scalar_t>* coord_grad;
  int64_t num_units;
  scalar_t* v_points;
  scalar_t* v_times;

  void operator()(int64_t begin, int64_t end) const {
    using T = MathType<scalar_t>;
    for (int64_t n = begin; n < end; ++n) {
      T cg[4] = {};
      for (int64_t u = 0; u < num_units; ++u)
        for (int d = 0; d < 4; ++d) cg[d] += coord_grad[(u * in.n + n) * 4 + d];
      for (int d = 0; d < 3; ++d) v_points[n * 3 + d] = static_cast<scalar_t>(cg[d] * in.scale[d]);
      if (v_times) v_times[n] = static_cast<scalar_t>(cg[3]);
    }
  }
};

template <typename scalar_t>
void backward(const Inputs<scalar_t>& in, const LevelDesc<scalar_t>* levels, int64_t num_levels,
              const scalar_t* v_features, scalar_t* v_points, scalar_t* v_times) {
  int64_t num_units = 0;
  for (int64_t l = 0; l < num_levels; ++l) num_units += min_i64(levels[l].nblk, kGroupsPerLevel);
  // Group-major order, (g0: l0 l1 ..), (g1: l0 l1 ..), ..: parallel_for hands each thread a contiguous range
  // of units, and the levels cost differently (finer levels miss the cache more), so a range should mix them
  // rather than hold one level.
  Buffer<Unit> units(num_units);
  for (int64_t g = 0, u = 0; g < kGroupsPerLevel; ++g)
    for (int64_t l = 0; l < num_levels; ++l) {
      const int64_t nblk = levels[l].nblk, groups = min_i64(nblk, kGroupsPerLevel);
      if (g < groups) units[u++] = {l, nblk * g / groups, nblk * (g + 1) / groups};
    }
  Buffer<MathType<scalar_t>> coord_grad(num_units * in.n * 4);
  at::parallel_for(0, num_units, 1, UnitsBody<scalar_t>{in, levels, units.data(), v_features, coord_grad.data()});
  at::parallel_for(0, in.n, 1024, PointGradBody<scalar_t>{in, coord_grad.data(), num_units, v_points, v_times});
}

// hexplane.cpp dispatches on the dtype (no error path here: see isa.h).
#define PYOPS_INSTANTIATE(S)                                                    \
  template void forward<S>(const Inputs<S>&, const LevelDesc<S>*, int64_t, S*); \
  template void backward<S>(const Inputs<S>&, const LevelDesc<S>*, int64_t, const S*, S*, S*);
PYOPS_CPU_ISA_INSTANTIATE_DTYPES(PYOPS_INSTANTIATE)
#undef PYOPS_INSTANTIATE

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace hexplane
}  // namespace pyops
