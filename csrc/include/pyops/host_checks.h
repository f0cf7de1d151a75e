// Host-side checks shared by the native ops' C++ entry points, with pyops/_backend.py's policy (host code only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

// Whether `op` checks its inputs' values: the forward ops only (on check_finite_enabled's devices). A backward op
// gets the tensors its forward checked; checking them again is one more pass over them per training step.
inline bool check_values(const char* op, c10::DeviceType device_type) {
  return std::strstr(op, "_bwd") == nullptr && check_finite_enabled(device_type);
}

// ValueError "<op>: <name> has non-finite values" if t holds NaN or inf (the caller asks check_finite_enabled
// first). A small contiguous fp32 CPU tensor (the usual parameter) is tested by its exponent bits in a loop the
// compiler vectorises: no ATen call, so it costs nanoseconds where per-call overhead matters. Anything else in
// one ATen pass (vectorised and parallel): aminmax propagates NaN, and inf shows in the min or the max. A plain
// scalar loop there cost MoRel's frame 5 ms (planes and anchor features of 10^5-10^6 values, twice a frame).
inline void check_finite(const char* op, const at::Tensor& t, const char* name) {
  const int64_t n = t.numel();
  if (n == 0) return;
  bool finite = true;
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && n <= (int64_t{1} << 15)) {
    const uint32_t* bits = static_cast<const uint32_t*>(t.const_data_ptr());
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((bits[i] & 0x7f800000u) == 0x7f800000u);
    finite = bad == 0;
  } else {
    const auto [lo, hi] = at::aminmax(t);  // on a GPU a host sync: only with PYOPS_CHECK_FINITE=1
    finite = std::isfinite(lo.item<double>()) && std::isfinite(hi.item<double>());
  }
  TORCH_CHECK_VALUE(finite, op, ": ", name, " has non-finite values");
}

}  // namespace pyops
