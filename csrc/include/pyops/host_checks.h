// Host-side checks shared by the native ops' C++ entry points, with pyops/_backend.py's policy (host code only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace pyops {

// PYOPS_CHECK_FINITE, read once with pyops/_backend.py's rule: "1" checks on every device, unset CPU tensors
// only (on a GPU the check is a host sync), any other value never.
inline bool check_finite_enabled(c10::DeviceType device_type) {
  static const int mode = [] {
    const char* env = std::getenv("PYOPS_CHECK_FINITE");
    return env == nullptr ? -1 : std::string(env) == "1" ? 1 : 0;
  }();
  return mode == 1 || (mode == -1 && device_type == c10::DeviceType::CPU);
}

// ValueError "<op>: <name> has non-finite values" if t holds NaN or inf (the caller asks check_finite_enabled
// first). On CPU a plain loop: no ATen call, so it costs nanoseconds on the tiny parameters where per-call
// overhead matters.
inline void check_finite(const char* op, const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  bool finite = true;
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {  // the usual parameter
    const float* data = t.const_data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) finite &= std::isfinite(data[i]);
  } else if (t.device().is_cpu()) {
    const at::Tensor c = t.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "pyops_check_finite", [&] {
      const scalar_t* data = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel() && finite; ++i) finite = std::isfinite(static_cast<double>(data[i]));
    });
  } else {
    finite = at::isfinite(t).all().item<bool>();  // opt-in (PYOPS_CHECK_FINITE=1): syncs the host
  }
  TORCH_CHECK_VALUE(finite, op, ": ", name, " has non-finite values");
}

}  // namespace pyops
