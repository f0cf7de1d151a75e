// Autograd kernels of pyops::derf_fwd and pyops::derf_bwd, in C++ as PyTorch's own ops have them (why:
// pyops/autograd.h). The Triton ops keep their Python registration (pyops/derf.py).
//
// derf_fwd's kernel runs the backend kernels below autograd and saves x and the parameters (never y: the
// backward recomputes erf from x). derf_bwd's kernel makes the gradients non-differentiable: a double
// backward through them raises a clear NotImplementedError instead of silently returning wrong values.
// Fake tensors take the same path (torch.compile's AOTAutograd traces through these kernels), so nothing
// here reads sizes or data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "pyops/autograd.h"

namespace pyops {
namespace derf {
namespace {

using autograd::optional;
using autograd::OptTensor;
using torch::autograd::variable_list;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

using Fwd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                       int64_t);
using Bwd = Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                  const OptTensor&, int64_t);
PYOPS_OP_HANDLE(fwd_op, Fwd, "pyops::derf_fwd")
PYOPS_OP_HANDLE(bwd_op, Bwd, "pyops::derf_bwd")

// derf_fwd's backward node.
struct DerfBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(5);
    if (!grads[0].defined()) return out;  // y's gradient is undefined: so are the inputs'
    const at::Tensor weight = weight_.unpack(), bias = bias_.unpack();
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_x, v_alpha, v_shift, v_weight, v_bias] = bwd_op().call(
        grads[0], x_.unpack(), alpha_.unpack(), shift_.unpack(), optional(weight), optional(bias), channel_dim_);
    out[0] = std::move(v_x);
    out[1] = std::move(v_alpha);
    out[2] = std::move(v_shift);
    if (weight.defined()) out[3] = std::move(v_weight);
    if (bias.defined()) out[4] = std::move(v_bias);
    return out;
  }
  std::string name() const override { return "DerfBackward0"; }
  void release_variables() override {
    x_.reset_data();
    alpha_.reset_data();
    shift_.reset_data();
    weight_.reset_data();
    bias_.reset_data();
  }

  torch::autograd::SavedVariable x_, alpha_, shift_, weight_, bias_;
  int64_t channel_dim_ = -1;
};

at::Tensor derf_fwd_autograd(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                             const OptTensor& weight, const OptTensor& bias, int64_t channel_dim) {
  // Inference (no_grad, or nothing requires grad): skip building the node, which costs about as much as the
  // whole CPU kernel on a tiny tensor.
  if (!autograd::needs_node(x, alpha, shift, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(x, alpha, shift, weight, bias, channel_dim);
  }
  auto grad_fn = autograd::make_node<DerfBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(x, alpha, shift, weight, bias));
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = fwd_op().call(x, alpha, shift, weight, bias, channel_dim);
  }
  // Saves x and the parameters, never y: the backward recomputes erf from x.
  grad_fn->x_ = autograd::save(x);
  grad_fn->alpha_ = autograd::save(alpha);
  grad_fn->shift_ = autograd::save(shift);
  grad_fn->weight_ = autograd::save(weight);
  grad_fn->bias_ = autograd::save(bias);
  grad_fn->channel_dim_ = channel_dim;
  torch::autograd::set_history(y, grad_fn);
  return y;
}

Grads derf_bwd_autograd(const at::Tensor& v_y, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                        const OptTensor& weight, const OptTensor& bias, int64_t channel_dim) {
  return autograd::run_bwd(
      "derf", [&] { return bwd_op().call(v_y, x, alpha, shift, weight, bias, channel_dim); }, v_y, x, alpha, shift,
      weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("derf_fwd", &derf_fwd_autograd);
  m.impl("derf_bwd", &derf_bwd_autograd);
}

}  // namespace derf
}  // namespace pyops
