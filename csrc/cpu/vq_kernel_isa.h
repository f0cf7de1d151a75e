// Declarations of the per-ISA CPU VQ kernels defined by vq_kernel_{base,avx2,avx512}.cpp.
#pragma once

#include "pyops/vq.h"

// x86-64 builds also carry AVX2 and AVX-512 copies, chosen at run time (same guard as derf_kernel_isa.h).
#if defined(__x86_64__) && !defined(__AVX2__) && (defined(__GNUC__) || defined(__clang__))
#define PYOPS_HAVE_X86_VQ_KERNELS 1
#else
#define PYOPS_HAVE_X86_VQ_KERNELS 0
#endif

namespace pyops {
namespace vq {
#define PYOPS_DECLARE_VQ_KERNELS(isa)                                                \
  namespace isa {                                                                    \
  void search(const SearchProblem& p, at::Tensor& out_d, at::Tensor& out_i);         \
  void segment_sum(const SegmentProblem& p, at::Tensor& sums, at::Tensor& counts);   \
  }
PYOPS_DECLARE_VQ_KERNELS(base)
#if PYOPS_HAVE_X86_VQ_KERNELS
PYOPS_DECLARE_VQ_KERNELS(avx2)
PYOPS_DECLARE_VQ_KERNELS(avx512)
#endif
#undef PYOPS_DECLARE_VQ_KERNELS
}  // namespace vq
}  // namespace pyops
