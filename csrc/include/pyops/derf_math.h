// Derf point-wise math shared by the CPU and CUDA kernels (and the C++ unit tests), so every native
// backend runs the same formulas. Math type T is float (fp32/fp16/bf16 storage) or double (fp64 on CPU).
//
//   z = alpha * x + shift,   e = erf(z),   y = weight * e + bias
//   v_z = v_y * weight * 2/sqrt(pi) * exp(-z^2)     (v_t: the gradient of the loss w.r.t. t)
//   v_x = v_z * alpha,  v_alpha += v_z * x,  v_shift += v_z,  v_weight += v_y * e,  v_bias += v_y
#pragma once

#include <cmath>

#include "pyops/host_device.h"

namespace pyops {
namespace derf {

// Rows of the per-block partial-sum buffer [P, kNumPartials, C] the backward kernels write.
enum Partial : int { kSumVZTimesX = 0, kSumVZ = 1, kSumVYTimesErf = 2, kSumVY = 3, kNumPartials = 4 };

template <typename T>
struct TwoOverSqrtPi {
  static constexpr T value = T(1.12837916709551257389615890312154517);
};

template <typename T>
PYOPS_HOST_DEVICE T forward(T x, T alpha, T shift, T weight, T bias) {
  using std::erf;
  return weight * erf(alpha * x + shift) + bias;
}

// One element of the backward pass: v_x and the per-element terms of v_alpha (v_z * x), v_shift (v_z) and
// v_weight (v_y * erf(z)); v_bias's term is v_y itself. (The field names predate the v_<name> convention and
// are kept because tests/cpp/test_derf_math.cpp reads them: dx is v_x, grad_z is v_z.)
template <typename T>
struct ElementGrad {
  T dx, grad_z_times_x, grad_z, grad_y_times_erf;
};

template <typename T>
PYOPS_HOST_DEVICE ElementGrad<T> backward(T x, T v_y, T alpha, T shift, T weight) {
  using std::erf;
  using std::exp;
  const T z = alpha * x + shift;
  const T v_z = v_y * weight * TwoOverSqrtPi<T>::value * exp(-z * z);
  return {v_z * alpha, v_z * x, v_z, v_y * erf(z)};
}

}  // namespace derf
}  // namespace pyops
