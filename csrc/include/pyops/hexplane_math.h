// HexPlane point math shared by the CPU and CUDA kernels (and the C++ unit tests), so every native backend
// runs the formulas of pyops/reference/hexplane.py. Math type T is float (fp32/fp16/bf16 storage) or double.
//
//   q = (p - lo) * scale - 1,  scale = 2 / (hi - lo)          (4DGS normalize_aabb; time is used as given)
//   u = clamp((q + 1) / 2 * (R - 1), 0, R - 1),  i0 = clamp(floor(u), 0, R - 2),  i1 = min(i0 + 1, R - 1),
//   w = u - i0 (the weight of i1),  dw/dq = (R - 1) / 2 on the closed [0, R - 1], else 0
// (the reference docstring's rule: the far border keeps the last cell's slope. The reference code gets it
// from torch.clamp's subgradient at the bounds, which is 1 before torch 2.14 and 0 from 2.14 on.)
//   s = (P[b0, a0] (1 - wa) + P[b0, a1] wa) (1 - wb) + (P[b1, a0] (1 - wa) + P[b1, a1] wa) wb
#pragma once

#include <cstdint>

#include "pyops/host_device.h"

namespace pyops {
namespace hexplane {

// The six planes of a level, in 4DGS's order: plane k reads coordinate kPlaneA[k] along its last dim (R_a)
// and kPlaneB[k] along the one before (R_b); coordinates are x y z t = 0 1 2 3.
constexpr int kPlanesPerLevel = 6;
PYOPS_HOST_DEVICE constexpr int plane_a(int k) { return k < 3 ? 0 : (k < 5 ? 1 : 2); }
PYOPS_HOST_DEVICE constexpr int plane_b(int k) { return k < 3 ? k + 1 : (k < 5 ? k - 1 : 3); }

// One normalised spatial coordinate: the reference's (p - aabb[0]) * (2 / (aabb[1] - aabb[0])) - 1.
template <typename T>
PYOPS_HOST_DEVICE T normalize(T p, T lo, T scale) {
  return (p - lo) * scale - T(1);
}

// Linear-interpolation coordinates of q along an axis of `size` (>= 1) samples: cells i0 and i1, the weight
// w of i1, and dw/dq (0 where the border clamp is active, and for size 1). NaN q gives a NaN weight (so NaN
// propagates to the features) but in-range cells: no NaN or inf ever indexes memory.
template <typename T>
struct Lerp {
  int64_t i0, i1;
  T w, dw;
};

template <typename T>
PYOPS_HOST_DEVICE Lerp<T> lerp_coord(T q, int64_t size) {
  const T hi = T(size - 1);
  const T u = (q + T(1)) * T(0.5) * hi;
  // Written with comparisons (not fmin/fmax) so NaN stays NaN in uc and fails every test below.
  const T uc = u < T(0) ? T(0) : (u > hi ? hi : u);
  int64_t i0 = 0;
  if (uc >= T(1)) {
    i0 = static_cast<int64_t>(uc);  // uc >= 1 here: truncation is floor
    if (i0 > size - 2) i0 = size - 2;
  }
  Lerp<T> l;
  l.i0 = i0;
  l.i1 = i0 + 1 < size ? i0 + 1 : size - 1;
  l.w = uc - T(i0);
  l.dw = (u >= T(0) && u <= hi) ? T(0.5) * hi : T(0);
  return l;
}

// Bilinear sample of one channel from its four corners p<b><a> (b along R_b, a along R_a).
template <typename T>
PYOPS_HOST_DEVICE T bilinear(T p00, T p01, T p10, T p11, T wa, T wb) {
  return (p00 * (T(1) - wa) + p01 * wa) * (T(1) - wb) + (p10 * (T(1) - wa) + p11 * wa) * wb;
}

// VJP of bilinear() for the cotangent g of the sample: the gradients of the four corners and of the two
// weights (multiply v_wa / v_wb by Lerp::dw for the coordinates).
template <typename T>
struct BilinearGrad {
  T v00, v01, v10, v11, v_wa, v_wb;
};

template <typename T>
PYOPS_HOST_DEVICE BilinearGrad<T> bilinear_vjp(T p00, T p01, T p10, T p11, T wa, T wb, T g) {
  const T ga0 = g * (T(1) - wb), ga1 = g * wb;
  BilinearGrad<T> r;
  r.v00 = ga0 * (T(1) - wa);
  r.v01 = ga0 * wa;
  r.v10 = ga1 * (T(1) - wa);
  r.v11 = ga1 * wa;
  r.v_wa = ga0 * (p01 - p00) + ga1 * (p11 - p10);
  r.v_wb = g * ((p10 * (T(1) - wa) + p11 * wa) - (p00 * (T(1) - wa) + p01 * wa));
  return r;
}

}  // namespace hexplane
}  // namespace pyops
