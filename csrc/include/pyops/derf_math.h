// Derf point-wise math shared by the CPU and CUDA kernels (and the C++ unit tests), so every native
// backend runs the same formulas. Math type T is float (fp32/fp16/bf16 storage) or double (fp64 on CPU).
//
//   z = alpha * x + shift,   e = erf(z),   y = weight * e + bias
//   g = dy * weight * 2/sqrt(pi) * exp(-z^2)        (dL/dz)
//   dx = g * alpha,  dalpha += g * x,  dshift += g,  dweight += dy * e,  dbias += dy
#pragma once

#include <cmath>

#include "pyops/host_device.h"

namespace pyops {
namespace derf {

// Rows of the per-block partial-sum buffer [P, kNumPartials, C] the backward kernels write.
enum Partial : int { kSumGradZTimesX = 0, kSumGradZ = 1, kSumGradYTimesErf = 2, kSumGradY = 3, kNumPartials = 4 };

template <typename T>
struct TwoOverSqrtPi {
  static constexpr T value = T(1.12837916709551257389615890312154517);
};

template <typename T>
PYOPS_HOST_DEVICE T forward(T x, T alpha, T shift, T weight, T bias) {
  using std::erf;
  return weight * erf(alpha * x + shift) + bias;
}

// One element of the backward pass: returns dx and the four per-element terms of the parameter gradients.
template <typename T>
struct ElementGrad {
  T dx, grad_z_times_x, grad_z, grad_y_times_erf;
};

template <typename T>
PYOPS_HOST_DEVICE ElementGrad<T> backward(T x, T dy, T alpha, T shift, T weight) {
  using std::erf;
  using std::exp;
  const T z = alpha * x + shift;
  const T grad_z = dy * weight * TwoOverSqrtPi<T>::value * exp(-z * z);
  return {grad_z * alpha, grad_z * x, grad_z, dy * erf(z)};
}

}  // namespace derf
}  // namespace pyops
