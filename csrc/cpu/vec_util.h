// Small helpers over ATen's Vectorized shared by the vectorised kernel headers. Included only from ISA copies
// (csrc/cpu/*_kernel_{base,avx2,avx512}.cpp), so every name lives in the copy's own namespace (see isa.h).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "isa.h"

namespace pyops {
namespace cpu_isa {
namespace PYOPS_ISA_NAMESPACE {

// Full-width loads/stores unless at a ragged tail: ATen's counted loadu/store go through a stack buffer (and a
// counted load fills the lanes past n with zeros).
template <typename V, typename T>
inline V load_n(const T* p, int64_t n) {
  return n == V::size() ? V::loadu(p) : V::loadu(p, n);
}
template <typename V, typename T>
inline void store_n(const V& v, T* p, int64_t n) {
  n == V::size() ? v.store(p) : v.store(p, n);
}

// exp(x) for lanes x <= 0 (a lane above 0 or NaN gets an unspecified finite value or NaN, without a trap): at
// AVX2 / AVX-512 fp32, inline, where V::exp() calls Sleef's u10 out of line and spills every live vector around
// the call (the rasterizer's blend loop spent a third of its time there). Reduction by ln 2 (Cody-Waite
// constants, exact with FMA for |n| <= 150), degree-7 Taylor polynomial on |r| <= ln 2 / 2 (truncation 6e-9
// relative), then 2^n: within 2 ulp where Sleef is within 1. Below -150 the result is 0, as exp rounds to there.
template <typename T>
inline at::vec::Vectorized<T> exp_nonpositive(const at::vec::Vectorized<T>& x) {
  return x.exp();
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
using Packed = __m512;
#define PYOPS_PS(op) _mm512_##op##_ps
#else
using Packed = __m256;
#define PYOPS_PS(op) _mm256_##op##_ps
#endif
template <>
inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& x) {
  const Packed v = PYOPS_PS(max)(x, PYOPS_PS(set1)(-150.f));
  const Packed t = PYOPS_PS(mul)(v, PYOPS_PS(set1)(1.44269504088896341f));
#if defined(CPU_CAPABILITY_AVX512)
  const Packed n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const Packed n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  Packed r = PYOPS_PS(fnmadd)(n, PYOPS_PS(set1)(0.693359375f), v);
  r = PYOPS_PS(fnmadd)(n, PYOPS_PS(set1)(-2.12194440e-4f), r);
  constexpr float kTaylor[] = {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f};
  Packed p = PYOPS_PS(set1)(1.f / 5040.f);
  for (const float c : kTaylor) p = PYOPS_PS(fmadd)(p, r, PYOPS_PS(set1)(c));
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_scalef_ps(p, n);
#else
  // 2^n as two normal factors (n >= -150, so each half is >= -75).
  const __m256i ni = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, a), b);
#endif
}
#undef PYOPS_PS
#endif

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace cpu_isa
}  // namespace pyops
