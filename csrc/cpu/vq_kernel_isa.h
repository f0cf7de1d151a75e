// Entry points of the per-ISA CPU VQ kernels (vq_kernel.h, compiled once per level: see isa.h), for scalar_t
// float, double, at::Half and at::BFloat16; vq.cpp dispatches on the dtype.
#pragma once

#include <type_traits>

#include "isa.h"
#include "pyops/vq.h"

namespace pyops {
namespace vq {

// Scores, GEMM and re-rank type: double for double inputs, float otherwise.
template <typename scalar_t>
using MathOf = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// out [rows, cols] = x [rows, dim] @ codes [cols, dim]^T through ATen's BLAS (single-threaded when called
// inside at::parallel_for). Defined in vq.cpp, baseline code: it wraps the pointers in tensors (see isa.h).
void gemm_nt(const float* x, const float* codes, int64_t rows, int64_t cols, int64_t dim, float* out);
void gemm_nt(const double* x, const double* codes, int64_t rows, int64_t cols, int64_t dim, double* out);

PYOPS_CPU_ISA_DECLARE(template <typename scalar_t>
                      void search(const SearchProblem& p, at::Tensor& out_d, at::Tensor& out_i);
                      // sums [S, D] (zeroed, out dtype) += the rows of each segment; indices already checked.
                      template <typename scalar_t> void segment_sum(const SegmentProblem& p, at::Tensor& sums);)

}  // namespace vq
}  // namespace pyops
