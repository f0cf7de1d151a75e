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

}  // namespace PYOPS_ISA_NAMESPACE
}  // namespace cpu_isa
}  // namespace pyops
