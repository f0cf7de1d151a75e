// Entry points of the per-ISA CPU Derf kernels (derf_kernel.h, compiled once per level: see isa.h), for
// scalar_t float, double, at::Half and at::BFloat16; derf.cpp dispatches on the dtype.
#pragma once

#include "isa.h"
#include "pyops/derf.h"

namespace pyops {
namespace derf {
PYOPS_CPU_ISA_DECLARE(int64_t num_chunks(const Problem& p);
                      template <typename scalar_t> void forward(const Problem& p, at::Tensor& y);  // y: [x's shape]
                      template <typename scalar_t>
                      void backward(const Problem& p, const at::Tensor& grad_out, at::Tensor& grad_x,
                                    at::Tensor& partials,  // [num_chunks, 4, C]
                                    at::Tensor* y);        // nullptr, or also derf(x) into *y
)
}  // namespace derf
}  // namespace pyops
