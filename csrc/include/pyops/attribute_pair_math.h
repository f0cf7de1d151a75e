// Per-pair math of the attribute pair loss, shared by the CPU and CUDA kernels (host and device, no libtorch).
// One pair holds A pooled x vectors p_i and A pooled y vectors q_j with norms r_i, t_j and cosines
// cos_ij = p_i.q_j / (max(r_i, eps) max(t_j, eps)) (F.normalize's clamp); with S = s * cos (s the logit scale)
// loss = logsumexp_ij S_ij - S_00. The kernels stream the D-long vectors; these functions work on the A x A
// cells only.
#pragma once

#include <cmath>
#include <cstdint>

#include "pyops/host_device.h"

namespace pyops {
namespace attribute_pair {

// F.normalize's eps (pyops/reference/vq.py: NORM_EPS): a zero vector normalises to zero, its cosine is 0.
constexpr double kNormEps = 1e-12;

template <typename T>
PYOPS_HOST_DEVICE T clamp_norm(T r) {
  return r > T(kNormEps) ? r : T(kNormEps);
}

// logsumexp over the n = A * A cells s * cos[k], max-shifted (finite for any finite s and |cos| <= 1).
template <typename T>
PYOPS_HOST_DEVICE T cell_lse(const T* cos, int64_t n, T s) {
  T m = s * cos[0];
  for (int64_t k = 1; k < n; ++k) m = s * cos[k] > m ? s * cos[k] : m;
  T sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += std::exp(s * cos[k] - m);
  return m + std::log(sum);
}

// The pair's loss from its A x A cosines.
template <typename T>
PYOPS_HOST_DEVICE T pair_loss(const T* cos, int64_t A, T s) {
  return cell_lse(cos, A * A, s) - s * cos[0];
}

// The backward of one pair as coefficients of the raw pooled vectors: with G_ij = v (softmax_ij(S) - [i=j=0])
// the gradient w.r.t. the cells' cosines (times s),
//   d loss / d p_i = sum_j alpha_ij q_j + beta_i p_i,   d loss / d q_j = sum_i alpha_ij p_i + gamma_j q_j,
//   alpha_ij = s G_ij / (max(r_i, eps) max(t_j, eps)),  beta_i = -s (sum_j G_ij cos_ij) / r_i^2 (0 when r_i < eps:
//   F.normalize's clamp passes no gradient to the norm), gamma_j likewise over column j.
// Returns sum_ij G_ij cos_ij, the pair's term of d loss / d s. alpha is A x A row-major; beta, gamma A long.
template <typename T>
PYOPS_HOST_DEVICE T pair_backward(const T* cos, const T* rx, const T* ry, int64_t A, T s, T v, T* alpha, T* beta,
                                  T* gamma) {
  const T lse = cell_lse(cos, A * A, s);
  for (int64_t j = 0; j < A; ++j) gamma[j] = 0;
  T v_s = 0;
  for (int64_t i = 0; i < A; ++i) {
    T row = 0;
    for (int64_t j = 0; j < A; ++j) {
      const int64_t k = i * A + j;
      const T g = v * (std::exp(s * cos[k] - lse) - (k == 0 ? T(1) : T(0)));
      alpha[k] = g;
      row += g * cos[k];
      gamma[j] += g * cos[k];  // the column sums, turned into gamma below
    }
    beta[i] = rx[i] >= T(kNormEps) ? -s * row / (rx[i] * rx[i]) : T(0);
    v_s += row;
  }
  for (int64_t j = 0; j < A; ++j) gamma[j] = ry[j] >= T(kNormEps) ? -s * gamma[j] / (ry[j] * ry[j]) : T(0);
  for (int64_t i = 0; i < A; ++i)
    for (int64_t j = 0; j < A; ++j) alpha[i * A + j] *= s / (clamp_norm(rx[i]) * clamp_norm(ry[j]));
  return v_s;
}

}  // namespace attribute_pair
}  // namespace pyops
