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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using autograd::OptTensor;
using autograd::optional;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                          const OptTensor&, int64_t)>&
fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyops::derf_fwd", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const OptTensor&, const OptTensor&, int64_t)>();
  return op;
}

const c10::TypedOperatorHandle<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const OptTensor&, const OptTensor&, int64_t)>&
bwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyops::derf_bwd", "")
                             .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const OptTensor&, const OptTensor&, int64_t)>();
  return op;
}

// The gradients of derf_fwd, built by derf_bwd. If a double backward reaches them it stops here.
class DerfBackward : public torch::autograd::Function<DerfBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& v_y, const at::Tensor& x,
                               const at::Tensor& alpha, const at::Tensor& shift, const OptTensor& weight,
                               const OptTensor& bias, int64_t channel_dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [v_x, v_alpha, v_shift, v_weight, v_bias] = bwd_op().call(v_y, x, alpha, shift, weight, bias, channel_dim);
    return {v_x, v_alpha, v_shift, v_weight, v_bias};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "derf: double backward is not supported (the gradients of pyops.derf / pyops.Derf "
                                "are not differentiable); use backend='torch' for higher-order gradients");
  }
};

// derf_fwd's backward node, written as PyTorch's generated ones are (a Node with SavedVariables) rather than
// as a torch::autograd::Function: CppNode's generic bookkeeping (input/output info, saved_data, output
// wrapping) measured ~2 us of a tiny Derf's ~7 us forward.
struct DerfBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(5);
    if (!grads[0].defined()) return out;  // y's gradient is undefined: so are the inputs'
    const at::Tensor weight = weight_.unpack(), bias = bias_.unpack();
    // With create_graph=True, through derf_bwd's autograd kernel (the gradients get a DerfBackward node);
    // else straight to the backend kernel.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
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
  if (!at::GradMode::is_enabled()) {  // the usual backward (no create_graph): no node to build
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return bwd_op().call(v_y, x, alpha, shift, weight, bias, channel_dim);
  }
  const variable_list g = DerfBackward::apply(v_y, x, alpha, shift, weight, bias, channel_dim);
  return {g[0], g[1], g[2], g[3], g[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("derf_fwd", &derf_fwd_autograd);
  m.impl("derf_bwd", &derf_bwd_autograd);
}

}  // namespace derf
}  // namespace pyops
