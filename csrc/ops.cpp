// Schemas of every pyops operator, in one place; each backend registers kernels with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(pyops, m) {
  // Derf: y = weight * erf(alpha * x + shift) + bias, channels on `channel_dim`.
  m.def("derf_fwd(Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, int channel_dim) -> Tensor");
  // Returns (grad_x, grad_alpha, grad_shift, grad_weight, grad_bias); absent weight/bias give empty grads.
  m.def(
      "derf_bwd(Tensor grad_out, Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, "
      "int channel_dim) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Nearest-code search: the k nearest rows of codebook [K, D] for each row of x [N, D] (both contiguous,
  // same floating dtype). metric: "l2" | "cosine" | "ip". Returns (distances [N, k] fp32 (fp64 for fp64
  // inputs), indices [N, k] int64), ascending, ties to the lower index. Candidates come from a search in
  // the input precision (tensor cores on GPU, tf32 for fp32 unless exact) and are re-ranked exactly in fp32.
  m.def("vq_search(Tensor x, Tensor codebook, int k, str metric, bool exact) -> (Tensor, Tensor)");
  // Segment sum for EMA codebooks: (sums [S, D], counts [S]) of the rows of values [N, D] grouped by
  // indices [N] (int64 in [0, S)); fp32 outputs (fp64 for fp64 values).
  m.def("vq_segment_sum(Tensor values, Tensor indices, int num_segments) -> (Tensor, Tensor)");
}
