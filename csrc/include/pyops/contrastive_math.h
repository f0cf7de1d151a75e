// Scalar math of the contrastive loss shared by the CPU and CUDA kernels (the CPU's vectorised loops follow the
// same formulas lane by lane):
//   a side's loss (row i over its columns, or column j over its rows), with lse = logsumexp of the side's S,
//     loss = lse - possum / npos   (possum: the sum of its positives' S; 0 when npos == 0)
//   G_ij = d(sum_i v_row_i r_i + sum_j v_col_j c_j) / dS_ij
//        = a_i (exp(S_ij - row_lse_i) - pos_ij / rn_i) + b_j (exp(S_ij - col_lse_j) - pos_ij / cn_j)
//   with a_i = [rn_i > 0] v_row_i and b_j = [cn_j > 0] v_col_j.
#pragma once

#include <cmath>

#include "pyops/host_device.h"

namespace pyops {
namespace contrastive {

// (max, sum of exp(x - max)) of a set merged with a non-empty other set's: both sums rescaled to the larger max.
// The empty set is (-inf, 0).
template <typename T>
PYOPS_HOST_DEVICE void merge_lse(T& max, T& sum, T other_max, T other_sum) {
  using std::exp;
  const T new_max = max > other_max ? max : other_max;
  sum = sum * exp(max - new_max) + other_sum * exp(other_max - new_max);
  max = new_max;
}

// A row's (column's) loss from its log-sum-exp, positive sum and positive count; 0 without a positive.
template <typename T>
PYOPS_HOST_DEVICE T side_loss(T lse, T possum, T npos) {
  return npos > T(0) ? lse - possum / npos : T(0);
}

// G_ij without the positive terms: a_i exp(s - row_lse_i) + b_j exp(s - col_lse_j) (b_j = 0: rows only). A
// positive (i, j) also subtracts a_i / rn_i + b_j / cn_j.
template <typename T>
PYOPS_HOST_DEVICE T grad_softmax_terms(T s, T a, T row_lse, T b, T col_lse) {
  using std::exp;
  return a * exp(s - row_lse) + (b != T(0) ? b * exp(s - col_lse) : T(0));
}

}  // namespace contrastive
}  // namespace pyops
