// Schemas of every pyops operator, in one place; each backend registers kernels with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(pyops, m) {
  // Derf: y = weight * erf(alpha * x + shift) + bias, channels on `channel_dim`.
  m.def("derf_fwd(Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, int channel_dim) -> Tensor");
  // Returns (grad_x, grad_alpha, grad_shift, grad_weight, grad_bias); absent weight/bias give empty grads.
  m.def(
      "derf_bwd(Tensor grad_out, Tensor x, Tensor alpha, Tensor shift, Tensor? weight, Tensor? bias, "
      "int channel_dim) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
