// Vectorised CPU Derf kernels, compiled once per instruction set (derf_kernel_{base,avx2,avx512}.cpp) so
// derf.cpp can pick the widest copy at run time, as ATen's own CPU kernels do. Every name lives in
// pyops::derf::PYOPS_ISA_NAMESPACE so the copies never clash at link time (see isa.h).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "derf_kernel_isa.h"
#include "vec_util.h"
#include "pyops/derf.h"
#include "pyops/derf_math.h"

namespace pyops {
namespace derf {
namespace PYOPS_ISA_NAMESPACE {

using at::vec::Vectorized;
using cpu_isa::PYOPS_ISA_NAMESPACE::Buffer;

using cpu_isa::PYOPS_ISA_NAMESPACE::load_n;
using cpu_isa::PYOPS_ISA_NAMESPACE::store_n;

// Loads/stores one storage vector of scalar_t as kVecs vectors of the math type (two float vectors for
// fp16/bf16, one otherwise); n < kStep handles row tails (missing lanes read as zero, never written back).
template <typename scalar_t>
struct Io {
  using Math = scalar_t;
  static constexpr int kVecs = 1;
  static constexpr int64_t kStep = Vectorized<scalar_t>::size();
  static void load(const scalar_t* p, int64_t n, Vectorized<Math>* v) { v[0] = load_n<Vectorized<Math>>(p, n); }
  static void store(scalar_t* p, int64_t n, const Vectorized<Math>* v) { store_n(v[0], p, n); }
};

template <typename scalar_t>
struct ReducedIo {
  using Math = float;
  static constexpr int kVecs = 2;
  static constexpr int64_t kStep = Vectorized<scalar_t>::size();
  static void load(const scalar_t* p, int64_t n, Vectorized<float>* v) {
    const auto raw = load_n<Vectorized<scalar_t>>(p, n);
    std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(raw);
  }
  static void store(scalar_t* p, int64_t n, const Vectorized<float>* v) {
    store_n(at::vec::convert_from_float<scalar_t>(v[0], v[1]), p, n);
  }
};
template <>
struct Io<at::BFloat16> : ReducedIo<at::BFloat16> {};
template <>
struct Io<at::Half> : ReducedIo<at::Half> {};

// Per-channel parameter arrays with scalars broadcast and absent weight/bias filled with 1/0, so the
// channels-last loops index all four the same way.
template <typename Math>
struct ChannelParams {
  Buffer<Math> alpha, shift, weight, bias;
  explicit ChannelParams(const Problem& p)
      : alpha(p.channels), shift(p.channels), weight(p.channels), bias(p.channels) {
    auto expand = [&](const at::Tensor& t, Math absent, Buffer<Math>& out) {
      const Math* src = t.defined() ? t.data_ptr<Math>() : nullptr;
      for (int64_t c = 0; c < p.channels; ++c) out[c] = src ? src[t.numel() == 1 ? 0 : c] : absent;
    };
    expand(p.alpha, Math(0), alpha);
    expand(p.shift, Math(0), shift);
    expand(p.weight, Math(1), weight);
    expand(p.bias, Math(0), bias);
  }
};

// erf(z) and exp(-z^2) from one exp: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the approximation
// ATen's own vectorised float erf uses, so fp32 results match eager PyTorch's. Double keeps the library erf.
template <typename V>
inline void erf_and_gaussian(const V& z, V& erf_z, V& gaussian) {
  gaussian = (-(z * z)).exp();
  erf_z = z.erf();
}

// exp(x) for x <= 0, inline: Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial; ~1 ulp) with
// 2^n applied by scalef (AVX-512, subnormal results as Sleef's) or the exponent bits (AVX2: 0 below the normal
// range, exp(x) < 1.2e-38, a difference of less than that from Sleef's subnormals). ATen's exp is a call
// into Sleef's u10 expf, which was as costly as the whole rest of the Derf backward.
inline Vectorized<float> exp_nonpositive(const Vectorized<float>& x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  using V = Vectorized<float>;
  // Below -110 every float result is 0 (so exp(-inf) = 0 exactly, as Sleef's, and 0 * inf stays NaN in the
  // gradients); the clamp keeps n in int range. NaN propagates (maximum keeps it).
  const V xc = at::vec::maximum(x, V(-110.f));
  const V n = (xc * V(1.44269504088896341f)).round();
  V r = at::vec::fnmadd(n, V(0.693359375f), xc);  // ln2 in two parts (Cephes' C1, C2): r exact to ~1 ulp
  r = at::vec::fnmadd(n, V(-2.12194440e-4f), r);
  V p = at::vec::fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
  const V y = at::vec::fmadd(p * r, r, r + V(1.f));
#if defined(CPU_CAPABILITY_AVX512)
  return V(_mm512_scalef_ps(y, n));
#else
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const V scaled = y * V(_mm256_castsi256_ps(bits));
  return V::blendv(scaled, V(0.f), V(_mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_LT_OQ)));
#endif
#else
  return x.exp();
#endif
}

inline void erf_and_gaussian(const Vectorized<float>& z, Vectorized<float>& erf_z, Vectorized<float>& gaussian) {
  using V = Vectorized<float>;
  const V one(1.f);
  const V t = one / at::vec::fmadd(V(0.3275911f), z.abs(), one);
  V poly = at::vec::fmadd(V(1.061405429f), t, V(-1.453152027f));
  poly = at::vec::fmadd(poly, t, V(1.421413741f));
  poly = at::vec::fmadd(poly, t, V(-0.284496736f));
  poly = at::vec::fmadd(poly, t, V(0.254829592f));
  gaussian = exp_nonpositive(-(z * z));
  const V sign = z & V(-0.f);  // copysign by the sign bit (ATen's copysign is a Sleef call)
  erf_z = at::vec::fnmadd(poly * t, gaussian, one) | sign;  // 1 - p t e^{-z^2}, rounded once more (as ATen's)
}

// erf alone (the forward): the shared path above, whose exp is inline; double keeps the library erf.
template <typename V>
inline V fast_erf(const V& z) {
  return z.erf();
}
inline Vectorized<float> fast_erf(const Vectorized<float>& z) {
  Vectorized<float> erf_z, gaussian;
  erf_and_gaussian(z, erf_z, gaussian);
  return erf_z;
}

// Rows per backward chunk: sizes alone decide it (never the thread count) so the partial sums, and hence
// the parameter gradients, are bitwise reproducible. About 64 chunks of 32K-256K elements: enough chunks for
// the threads at transformer sizes (a ViT-S norm's 788 x 384 was 2 chunks of 256K and 44K elements, so the
// backward ran on one core), and few enough that [P, 4, C] stays small.
inline int64_t rows_per_chunk(int64_t rows, int64_t row_len) {
  constexpr int64_t kMinChunkElems = 1 << 15, kMaxChunkElems = 1 << 18, kChunks = 64;
  const int64_t len = std::max<int64_t>(row_len, 1);
  const int64_t chunk_elems = std::clamp(rows * len / kChunks, kMinChunkElems, kMaxChunkElems);
  return std::max<int64_t>(1, std::min(rows, chunk_elems / len));
}

int64_t num_chunks(const Problem& p) {
  const int64_t rows = p.outer, row_len = p.channels * p.inner;
  return rows == 0 ? 1 : (rows + rows_per_chunk(rows, row_len) - 1) / rows_per_chunk(rows, row_len);
}

template <typename scalar_t>
void forward(const Problem& p, at::Tensor& y) {
  using IO = Io<scalar_t>;
  using Math = typename IO::Math;
  using V = Vectorized<Math>;
  const scalar_t* x = p.x.data_ptr<scalar_t>();
  scalar_t* out = y.data_ptr<scalar_t>();
  const ChannelParams<Math> prm(p);
  constexpr int64_t kStep = IO::kStep;
  constexpr int64_t kLane = V::size();

  // Each "row" is a contiguous run: a token's C channels (channels-last), or one channel's spatial run.
  const bool channels_last = p.inner == 1;
  const int64_t rows = channels_last ? p.outer : p.outer * p.channels;
  const int64_t len = channels_last ? p.channels : p.inner;
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(len, 1)), [&](int64_t r0, int64_t r1) {
    V xv[IO::kVecs];
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xr = x + r * len;
      scalar_t* yr = out + r * len;
      const int64_t c_row = r % p.channels;  // channels-first: this run's channel
      for (int64_t i = 0; i < len; i += kStep) {
        const int64_t n = std::min(kStep, len - i);
        IO::load(xr + i, n, xv);
        for (int k = 0; k < IO::kVecs; ++k) {
          V a, s, w, b;
          if (channels_last) {
            const int64_t c = i + k * kLane, m = std::max<int64_t>(0, std::min(kLane, len - c));
            if (m == 0) break;
            a = load_n<V>(prm.alpha.data() + c, m), s = load_n<V>(prm.shift.data() + c, m);
            w = load_n<V>(prm.weight.data() + c, m), b = load_n<V>(prm.bias.data() + c, m);
          } else {
            a = V(prm.alpha[c_row]), s = V(prm.shift[c_row]), w = V(prm.weight[c_row]), b = V(prm.bias[c_row]);
          }
          xv[k] = at::vec::fmadd(w, fast_erf(at::vec::fmadd(a, xv[k], s)), b);
        }
        IO::store(yr + i, n, xv);
      }
    }
  });
}

// y: nullptr, or a tensor of x's shape that also receives derf(x) (derf_linear's backward needs it for its weight
// gradient: erf(z) is computed here anyway, so it costs one store).
template <typename scalar_t>
void backward(const Problem& p, const at::Tensor& grad_out, at::Tensor& grad_x, at::Tensor& partials, at::Tensor* y) {
  using IO = Io<scalar_t>;
  using Math = typename IO::Math;
  using V = Vectorized<Math>;
  const scalar_t* x = p.x.data_ptr<scalar_t>();
  const scalar_t* dy = grad_out.data_ptr<scalar_t>();
  scalar_t* dx = grad_x.data_ptr<scalar_t>();
  scalar_t* y_out = y != nullptr ? y->data_ptr<scalar_t>() : nullptr;
  Math* part = partials.data_ptr<Math>();
  const ChannelParams<Math> prm(p);
  constexpr int64_t kStep = IO::kStep;
  constexpr int64_t kLane = V::size();
  const V two_over_sqrt_pi(TwoOverSqrtPi<Math>::value);
  const int64_t C = p.channels, row_len = C * p.inner;
  const int64_t chunk_rows = rows_per_chunk(p.outer, row_len);

  // Chunks of `outer` rows write disjoint partial rows [chunk, 4, C]: no atomics, fixed summation order.
  at::parallel_for(0, num_chunks(p), 1, [&](int64_t k0, int64_t k1) {
    V xv[IO::kVecs], gv[IO::kVecs], yv[IO::kVecs];
    for (int64_t chunk = k0; chunk < k1; ++chunk) {
      Math* acc = part + chunk * kNumPartials * C;
      std::fill(acc, acc + kNumPartials * C, Math(0));
      const int64_t o_end = std::min(p.outer, (chunk + 1) * chunk_rows);
      for (int64_t o = chunk * chunk_rows; o < o_end; ++o) {
        for (int64_t c_run = 0; c_run < (p.inner == 1 ? 1 : C); ++c_run) {
          // channels-last: one run of C channels; channels-first: C runs of `inner` sharing channel c_run.
          const int64_t len = p.inner == 1 ? C : p.inner;
          const int64_t base = o * row_len + c_run * p.inner;
          V sums[kNumPartials];  // channels-first running sums for channel c_run
          for (auto& sv : sums) sv = V(Math(0));
          for (int64_t i = 0; i < len; i += kStep) {
            const int64_t n = std::min(kStep, len - i);
            IO::load(x + base + i, n, xv);
            IO::load(dy + base + i, n, gv);
            for (int k = 0; k < IO::kVecs; ++k) {
              const int64_t c = i + k * kLane, m = std::max<int64_t>(0, std::min(kLane, len - c));
              if (m == 0) {
                xv[k] = yv[k] = V(Math(0));
                continue;
              }
              V a, s, w;
              if (p.inner == 1) {
                a = load_n<V>(prm.alpha.data() + c, m), s = load_n<V>(prm.shift.data() + c, m);
                w = load_n<V>(prm.weight.data() + c, m);
              } else {
                a = V(prm.alpha[c_run]), s = V(prm.shift[c_run]), w = V(prm.weight[c_run]);
              }
              V erf_z, gaussian;
              erf_and_gaussian(at::vec::fmadd(a, xv[k], s), erf_z, gaussian);
              if (y_out != nullptr) {
                const V b = p.inner == 1 ? load_n<V>(prm.bias.data() + c, m) : V(prm.bias[c_run]);
                yv[k] = at::vec::fmadd(w, erf_z, b);
              }
              const V g = gv[k] * w * two_over_sqrt_pi * gaussian;  // dL/dz; zero in padded lanes
              const V terms[kNumPartials] = {g * xv[k], g, gv[k] * erf_z, gv[k]};
              if (p.inner == 1) {
                for (int t = 0; t < kNumPartials; ++t) {
                  Math* dst = acc + t * C + c;
                  store_n(load_n<V>(dst, m) + terms[t], dst, m);
                }
              } else {
                for (int t = 0; t < kNumPartials; ++t) sums[t] = sums[t] + terms[t];
              }
              xv[k] = g * a;
            }
            IO::store(dx + base + i, n, xv);
            if (y_out != nullptr) IO::store(y_out + base + i, n, yv);
          }
          if (p.inner != 1) {
            for (int t = 0; t < kNumPartials; ++t)
              acc[t * C + c_run] += at::vec::vec_reduce_all<Math>([](V& u, V& v) { return u + v; }, sums[t]);
          }
        }
      }
    }
  });
}

// derf.cpp dispatches on the dtype (no error path here: see isa.h).
#define PYOPS_INSTANTIATE(T)                             \
  template void forward<T>(const Problem&, at::Tensor&); \
  template void backward<T>(const Problem&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor*);
PYOPS_CPU_ISA_INSTANTIATE_DTYPES(PYOPS_INSTANTIATE)
#undef PYOPS_INSTANTIATE

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace derf
}  // namespace pyops
