// Declarations of the per-ISA CPU Derf kernels defined by derf_kernel_{base,avx2}.cpp.
#pragma once

#include "pyops/derf.h"

// x86-64 builds also carry AVX2 and AVX-512 copies (derf_kernel_avx{2,512}.cpp), chosen at run time.
#if defined(__x86_64__) && !defined(__AVX2__) && (defined(__GNUC__) || defined(__clang__))
#define PYOPS_HAVE_X86_KERNELS 1
#else
#define PYOPS_HAVE_X86_KERNELS 0
#endif

namespace pyops {
namespace derf {
#define PYOPS_DECLARE_CPU_KERNELS(isa)                                                                  \
  namespace isa {                                                                                       \
  int64_t num_chunks(const Problem& p);                                                                 \
  void forward(const Problem& p, at::Tensor& y);                                                        \
  void backward(const Problem& p, const at::Tensor& grad_out, at::Tensor& grad_x, at::Tensor& partials); \
  }
PYOPS_DECLARE_CPU_KERNELS(base)
#if PYOPS_HAVE_X86_KERNELS
PYOPS_DECLARE_CPU_KERNELS(avx2)
PYOPS_DECLARE_CPU_KERNELS(avx512)
#endif
#undef PYOPS_DECLARE_CPU_KERNELS
}  // namespace derf
}  // namespace pyops
