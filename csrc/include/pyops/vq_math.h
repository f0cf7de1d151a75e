// Nearest-code search math shared by the CPU and CUDA kernels (and the C++ tests): metrics, the search
// score each kernel ranks by, the exact fp32 re-rank distance, and the (distance, index) order.
//
// Search score of row x against code c, smaller is nearer (the per-row constant ||x||^2 is dropped):
//   l2:     ||c||^2 - 2 x.c          cosine: -(x.c) / max(||c||, eps)   (x's norm does not change the order)
//   ip:     -(x.c)
// Returned distance, recomputed exactly in fp32 for the few re-ranked candidates:
//   l2:     sum (x_i - c_i)^2        cosine: 1 - x.c / (max(||x||, eps) max(||c||, eps))      ip: -(x.c)
#pragma once

#include <cstdint>

#include "pyops/host_device.h"

namespace pyops {
namespace vq {

enum class Metric : int { kL2 = 0, kCosine = 1, kIp = 2 };

// F.normalize's eps: a zero vector normalises to zero, so its cosine distance to every code is 1, not NaN.
constexpr float kNormEps = 1e-12f;

// Candidates kept by the search stage beyond k, re-ranked exactly. A low-precision score (bf16/fp16/tf32)
// differs from the exact one by at most ~2^-8 ||x|| ||c||; keeping 8 more candidates makes a miss need 8
// codes whose exact distances all lie within that error of the k-th, see docs in pyops/vq.py.
constexpr int64_t kRerankExtra = 8;
// Largest k the fused kernels take (the running top-k lives in registers / shared memory).
constexpr int64_t kMaxK = 128;

PYOPS_HOST_DEVICE int64_t num_candidates(int64_t k, int64_t num_codes) {
  return k + kRerankExtra < num_codes ? k + kRerankExtra : num_codes;
}

// Strict order of (distance, index) pairs: nearer first, the lower index first among equal distances.
template <typename T>
PYOPS_HOST_DEVICE bool before(T d_a, int64_t i_a, T d_b, int64_t i_b) {
  return d_a < d_b || (d_a == d_b && i_a < i_b);
}

// Inserts (d, i) into the ascending list (dist, idx) of length n if it beats the last entry; the list is
// kept sorted by before(). Linear in n: fine for the small k of VQ (n <= kMaxK + kRerankExtra).
template <typename T, typename I>
PYOPS_HOST_DEVICE void insert_sorted(T* dist, I* idx, int n, T d, I i) {
  if (!before(d, int64_t(i), dist[n - 1], int64_t(idx[n - 1]))) return;
  int j = n - 1;
  while (j > 0 && before(d, int64_t(i), dist[j - 1], int64_t(idx[j - 1]))) {
    dist[j] = dist[j - 1];
    idx[j] = idx[j - 1];
    --j;
  }
  dist[j] = d;
  idx[j] = i;
}

// Exact distance from precomputed pieces in math type T: dot = x.c, plus for l2 the direct sum of squared
// differences (computed by the caller, which owns the loop), for cosine both norms.
template <typename T>
PYOPS_HOST_DEVICE T cosine_distance(T dot, T x_norm, T c_norm) {
  const T nx = x_norm > T(kNormEps) ? x_norm : T(kNormEps);
  const T nc = c_norm > T(kNormEps) ? c_norm : T(kNormEps);
  return T(1) - dot / (nx * nc);
}

}  // namespace vq
}  // namespace pyops
