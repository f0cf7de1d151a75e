// Host-side pieces of the attribute pair loss shared by the CPU and CUDA backends: argument checks and the
// canonical contiguous views every kernel works on. Kernels trust what prepare() hands them.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pyops {
namespace attribute_pair {

// ex, ey as contiguous [B, A, D] pooled inputs or [B, A, L, D] token inputs (`tokens`).
struct Problem {
  at::Tensor ex, ey;                   // contiguous, original dtype
  at::Tensor logit_scale;              // 0-d, math dtype (float, or double for fp64 inputs), contiguous
  at::Tensor mask;                     // contiguous [B, A, L], bool or ex's dtype; undefined when absent
  int64_t B = 0, A = 0, L = 1, D = 0;  // L is 1 for pooled inputs
  bool tokens = false;

  at::ScalarType math_dtype() const { return logit_scale.scalar_type(); }
};

// Validates the arguments (naming the offending one) and builds the canonical problem. `device_type` is the
// backend's device. Errors follow pyops/_checks.py's policy: a wrong dtype throws c10::TypeError, a wrong
// shape, value or device c10::ValueError; logit_scale, ex and ey are checked for NaN/inf on CPU (every device
// with PYOPS_CHECK_FINITE=1, never with PYOPS_CHECK_FINITE=0): pyops.attribute_pair_loss's eager path relies on it.
// `op` ("attribute_pair_fwd" / "_bwd"): only the forward checks the values (host_checks.h's check_values).
Problem prepare(const char* op, const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& logit_scale,
                const std::optional<at::Tensor>& mask, c10::DeviceType device_type);

// Checks the backward's extra arguments against the problem: v_loss [B] (returned contiguous in the math
// dtype), cos [B, A, A], norms [B, 2, A], px/py [B, A, D] for token inputs.
struct Saved {
  at::Tensor v_loss, cos, norms, px, py;
};
Saved prepare_backward(const Problem& p, const at::Tensor& v_loss, const at::Tensor& cos, const at::Tensor& norms,
                       const at::Tensor& px, const at::Tensor& py);

// The forward's outputs, allocated (loss [B], cos [B, A, A], norms [B, 2, A], px/py [B, A, D] or [0]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_forward(const Problem& p);

// v_logit_scale from the per-pair partials [B] (math dtype), summed in a fixed order, in logit_scale's dtype.
at::Tensor reduce_v_logit_scale(const at::Tensor& partials, const at::Tensor& logit_scale);

// Calls f(mask pointer) with the mask's element type: bool, the input's scalar_t, or no mask (a null bool*).
template <typename scalar_t, typename F>
void with_mask(const Problem& p, F&& f) {
  if (!p.mask.defined()) {
    f(static_cast<const bool*>(nullptr));
  } else if (p.mask.scalar_type() == at::kBool) {
    f(p.mask.const_data_ptr<bool>());
  } else {
    f(p.mask.const_data_ptr<scalar_t>());
  }
}

}  // namespace attribute_pair
}  // namespace pyops
