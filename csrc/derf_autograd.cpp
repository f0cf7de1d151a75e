// Autograd kernels of pyops::derf_fwd and pyops::derf_bwd, in C++ as PyTorch's own ops have them (and as
// torchvision's do): a Python autograd kernel (torch.library.register_autograd) cost ~20 us per call on a
// tiny tensor, more than the kernels themselves. The Triton ops keep their Python registration
// (pyops/derf.py).
//
// derf_fwd's kernel runs the backend kernels below autograd and saves x and the parameters (never y: the
// backward recomputes erf from x). derf_bwd's kernel makes the gradients non-differentiable: a double
// backward through them raises a clear NotImplementedError instead of silently returning wrong values.
// Fake tensors take the same path (torch.compile's AOTAutograd traces through these kernels), so nothing
// here reads sizes or data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace pyops {
namespace derf {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
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
                             .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const OptTensor&, const OptTensor&, int64_t)>();
  return op;
}

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

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

class DerfForward : public torch::autograd::Function<DerfForward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                            const at::Tensor& shift, const OptTensor& weight, const OptTensor& bias,
                            int64_t channel_dim) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = fwd_op().call(x, alpha, shift, weight, bias, channel_dim);
    }
    ctx->save_for_backward({x, alpha, shift, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["channel_dim"] = channel_dim;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const OptTensor weight = optional(saved[3]), bias = optional(saved[4]);
    // Through derf_bwd's autograd kernel: with create_graph=True the gradients get a DerfBackward node.
    const auto [v_x, v_alpha, v_shift, v_weight, v_bias] = bwd_op().call(
        grad_outputs[0], saved[0], saved[1], saved[2], weight, bias, ctx->saved_data["channel_dim"].toInt());
    // One gradient per forward argument; an absent weight/bias (and channel_dim) gets none.
    return {v_x,
            v_alpha,
            v_shift,
            weight.has_value() ? v_weight : at::Tensor(),
            bias.has_value() ? v_bias : at::Tensor(),
            at::Tensor()};
  }
};

bool requires_grad(const OptTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); }

at::Tensor derf_fwd_autograd(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                             const OptTensor& weight, const OptTensor& bias, int64_t channel_dim) {
  // Inference (no_grad, or nothing requires grad): skip building the node, which costs about as much as the
  // whole CPU kernel on a tiny tensor.
  if (!at::GradMode::is_enabled() ||
      !(x.requires_grad() || alpha.requires_grad() || shift.requires_grad() || requires_grad(weight) ||
        requires_grad(bias))) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(x, alpha, shift, weight, bias, channel_dim);
  }
  return DerfForward::apply(x, alpha, shift, weight, bias, channel_dim);
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
