// Host-side pieces of the Derf op shared by the CPU and CUDA backends: argument checks, the canonical
// [outer, channels, inner] view every kernel works on, and the second stage of the parameter-gradient
// reduction. Kernels trust what prepare() hands them.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pyops {
namespace derf {

// x viewed as a contiguous [outer, channels, inner] array: inner == 1 for channels-last (..., C) inputs,
// inner == prod(spatial) for channels-first (N, C, *spatial) inputs.
struct Problem {
  at::Tensor x;             // contiguous, original dtype
  at::Tensor alpha, shift;  // contiguous, math dtype (float, or double for fp64 x), 1 or C elements
  at::Tensor weight, bias;  // contiguous, math dtype, C elements; undefined when absent
  int64_t outer = 0, channels = 0, inner = 0;

  bool per_channel_alpha() const { return alpha.numel() != 1 || channels == 1; }
  bool per_channel_shift() const { return shift.numel() != 1 || channels == 1; }
  at::ScalarType math_dtype() const { return alpha.scalar_type(); }
};

// Validates the arguments (naming the offending one) and builds the canonical problem. `device_type` is
// the backend's device; every tensor must be on x's device. Errors follow pyops/_checks.py's policy: a
// wrong dtype throws c10::TypeError (Python TypeError), a wrong shape, value or device c10::ValueError.
// The parameters are also checked for NaN/inf ("derf: <name> has non-finite values"): on CPU by default,
// on every device with PYOPS_CHECK_FINITE=1 (a host sync on a GPU), never with PYOPS_CHECK_FINITE=0. These
// checks are the eager public API's only ones (pyops/derf.py does no per-call Python checks): keep them
// cheap, no ATen calls for what is already in shape.
Problem prepare(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t channel_dim,
                c10::DeviceType device_type);

// Checks v_y (the gradient w.r.t. the forward's output) against x; returns it contiguous in x's dtype.
at::Tensor prepare_grad(const at::Tensor& v_y, const Problem& p);

// Second, deterministic stage of the parameter-gradient reduction: sums the per-block partials
// [P, kNumPartials, C] (math dtype) over P, folds scalar alpha/shift over C, and casts each gradient to its
// parameter's dtype and shape. Absent weight/bias give empty (0,) gradients. Small CPU partials (a tiny
// tensor's single chunk) are summed in a plain loop in double instead of through ~12 ATen calls.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reduce_partials(const at::Tensor& partials, const Problem& p,
                                                                           const at::Tensor& alpha,
                                                                           const at::Tensor& shift,
                                                                           const std::optional<at::Tensor>& weight,
                                                                           const std::optional<at::Tensor>& bias);

}  // namespace derf
}  // namespace pyops
