// Autograd kernels of the native derf_linear, contrastive and attribute_pair ops, in C++ as PyTorch's own ops
// have them (why: pyops/autograd.h; the model is csrc/derf_autograd.cpp). The Triton ops keep their Python
// registration (pyops/derf_linear.py, contrastive.py, attribute_pair.py).
//
// Each forward kernel runs the backend kernels below autograd and saves what the Python setup_context saved
// before; an undefined incoming gradient counts as zeros (as Python's materialised gradients did). Each backward
// op's kernel makes the gradients non-differentiable: a double backward raises a clear NotImplementedError
// instead of silently returning wrong values. Fake tensors take the same path (torch.compile's AOTAutograd traces
// through these kernels), so nothing here reads sizes or data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "pyops/autograd.h"

namespace pyops {
namespace {

using autograd::optional;
using autograd::OptTensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// ---------------------------------------------------------------------------------------------------------------
// derf_linear: saves x and the parameters (never derf(x), which the backward recomputes, nor the linear bias).

using LinearFwd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                             const OptTensor&, const at::Tensor&, const OptTensor&);
using LinearGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LinearBwd = LinearGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const OptTensor&, const OptTensor&, const at::Tensor&, bool);
PYOPS_OP_HANDLE(linear_fwd_op, LinearFwd, "pyops::derf_linear_fwd")
PYOPS_OP_HANDLE(linear_bwd_op, LinearBwd, "pyops::derf_linear_bwd")

struct DerfLinearBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(7);
    if (!grads[0].defined()) return out;  // y's gradient is undefined: so are the inputs'
    const at::Tensor weight = weight_.unpack(), bias = bias_.unpack();
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_x, v_alpha, v_shift, v_weight, v_bias, v_lw, v_lb] =
        linear_bwd_op().call(grads[0], x_.unpack(), alpha_.unpack(), shift_.unpack(), optional(weight), optional(bias),
                             linear_weight_.unpack(), has_linear_bias_);
    out[0] = std::move(v_x);
    out[1] = std::move(v_alpha);
    out[2] = std::move(v_shift);
    if (weight.defined()) out[3] = std::move(v_weight);
    if (bias.defined()) out[4] = std::move(v_bias);
    out[5] = std::move(v_lw);
    if (has_linear_bias_) out[6] = std::move(v_lb);
    return out;
  }
  std::string name() const override { return "DerfLinearBackward0"; }
  void release_variables() override {
    x_.reset_data();
    alpha_.reset_data();
    shift_.reset_data();
    weight_.reset_data();
    bias_.reset_data();
    linear_weight_.reset_data();
  }

  SavedVariable x_, alpha_, shift_, weight_, bias_, linear_weight_;
  bool has_linear_bias_ = false;
};

at::Tensor derf_linear_fwd_autograd(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                                    const OptTensor& weight, const OptTensor& bias, const at::Tensor& linear_weight,
                                    const OptTensor& linear_bias) {
  if (!autograd::needs_node(x, alpha, shift, weight, bias, linear_weight, linear_bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return linear_fwd_op().call(x, alpha, shift, weight, bias, linear_weight, linear_bias);
  }
  auto grad_fn = autograd::make_node<DerfLinearBackwardNode>();
  grad_fn->set_next_edges(
      torch::autograd::collect_next_edges(x, alpha, shift, weight, bias, linear_weight, linear_bias));
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = linear_fwd_op().call(x, alpha, shift, weight, bias, linear_weight, linear_bias);
  }
  grad_fn->x_ = autograd::save(x);
  grad_fn->alpha_ = autograd::save(alpha);
  grad_fn->shift_ = autograd::save(shift);
  grad_fn->weight_ = autograd::save(weight);
  grad_fn->bias_ = autograd::save(bias);
  grad_fn->linear_weight_ = autograd::save(linear_weight);
  grad_fn->has_linear_bias_ = linear_bias.has_value();
  torch::autograd::set_history(y, grad_fn);
  return y;
}

LinearGrads derf_linear_bwd_autograd(const at::Tensor& v_y, const at::Tensor& x, const at::Tensor& alpha,
                                     const at::Tensor& shift, const OptTensor& weight, const OptTensor& bias,
                                     const at::Tensor& linear_weight, bool has_linear_bias) {
  return autograd::run_bwd(
      "derf_linear",
      [&] { return linear_bwd_op().call(v_y, x, alpha, shift, weight, bias, linear_weight, has_linear_bias); }, v_y, x,
      alpha, shift, weight, bias, linear_weight);
}

// ---------------------------------------------------------------------------------------------------------------
// contrastive: saves q, k, logit_scale, the group ids and the forward's log-sum-exps and positive counts, which are
// outputs without a gradient (only row_loss and col_loss are differentiable).

using Six = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Three = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ContrastiveFwd = Six(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool);
using ContrastiveBwd = Three(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
PYOPS_OP_HANDLE(contrastive_fwd_op, ContrastiveFwd, "pyops::contrastive_fwd")
PYOPS_OP_HANDLE(contrastive_bwd_op, ContrastiveBwd, "pyops::contrastive_bwd")

struct ContrastiveBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined() && !grads[1].defined()) return out;
    const at::Tensor row_lse = row_lse_.unpack(), col_lse = col_lse_.unpack();
    const at::Tensor v_row = grads[0].defined() ? grads[0] : at::zeros_like(row_lse);
    const at::Tensor v_col = grads[1].defined() ? grads[1] : at::zeros_like(col_lse);
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_q, v_k, v_scale] =
        contrastive_bwd_op().call(v_row, v_col, q_.unpack(), k_.unpack(), logit_scale_.unpack(), qg_.unpack(),
                                  kg_.unpack(), row_lse, col_lse, row_npos_.unpack(), col_npos_.unpack(), symmetric_);
    out[0] = std::move(v_q);
    out[1] = std::move(v_k);
    out[2] = std::move(v_scale);
    return out;
  }
  std::string name() const override { return "ContrastiveBackward0"; }
  void release_variables() override {
    for (SavedVariable* s : {&q_, &k_, &logit_scale_, &qg_, &kg_, &row_lse_, &col_lse_, &row_npos_, &col_npos_})
      s->reset_data();
  }

  SavedVariable q_, k_, logit_scale_, qg_, kg_, row_lse_, col_lse_, row_npos_, col_npos_;
  bool symmetric_ = true;
};

Six contrastive_fwd_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& logit_scale,
                             const at::Tensor& qg, const at::Tensor& kg, bool symmetric) {
  if (!autograd::needs_node(q, k, logit_scale)) {  // qg, kg are integer ids: never differentiable
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return contrastive_fwd_op().call(q, k, logit_scale, qg, kg, symmetric);
  }
  auto grad_fn = autograd::make_node<ContrastiveBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(q, k, logit_scale));
  Six out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = contrastive_fwd_op().call(q, k, logit_scale, qg, kg, symmetric);
  }
  auto& [row_loss, col_loss, row_lse, col_lse, row_npos, col_npos] = out;
  grad_fn->q_ = autograd::save(q);
  grad_fn->k_ = autograd::save(k);
  grad_fn->logit_scale_ = autograd::save(logit_scale);
  grad_fn->qg_ = autograd::save(qg);
  grad_fn->kg_ = autograd::save(kg);
  // Outputs, but without a gradient (no grad_fn): saved as plain tensors.
  grad_fn->row_lse_ = autograd::save(row_lse);
  grad_fn->col_lse_ = autograd::save(col_lse);
  grad_fn->row_npos_ = autograd::save(row_npos);
  grad_fn->col_npos_ = autograd::save(col_npos);
  grad_fn->symmetric_ = symmetric;
  torch::autograd::set_history(row_loss, grad_fn);  // the node's output 0
  torch::autograd::set_history(col_loss, grad_fn);  // and 1
  return out;
}

Three contrastive_bwd_autograd(const at::Tensor& v_row, const at::Tensor& v_col, const at::Tensor& q,
                               const at::Tensor& k, const at::Tensor& logit_scale, const at::Tensor& qg,
                               const at::Tensor& kg, const at::Tensor& row_lse, const at::Tensor& col_lse,
                               const at::Tensor& row_npos, const at::Tensor& col_npos, bool symmetric) {
  return autograd::run_bwd(
      "contrastive_loss",
      [&] {
        return contrastive_bwd_op().call(v_row, v_col, q, k, logit_scale, qg, kg, row_lse, col_lse, row_npos, col_npos,
                                         symmetric);
      },
      v_row, v_col, q, k, logit_scale, row_lse, col_lse);
}

// ---------------------------------------------------------------------------------------------------------------
// attribute_pair: saves ex, ey, logit_scale, mask and the forward's cosines, norms and pooled vectors, which are
// outputs without a gradient (only the loss is differentiable; the mask gets none).

using Five = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using PairFwd = Five(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
using PairBwd = Three(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
PYOPS_OP_HANDLE(pair_fwd_op, PairFwd, "pyops::attribute_pair_fwd")
PYOPS_OP_HANDLE(pair_bwd_op, PairBwd, "pyops::attribute_pair_bwd")

struct AttributePairBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const at::Tensor mask = mask_.unpack();
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_ex, v_ey, v_scale] =
        pair_bwd_op().call(grads[0], ex_.unpack(), ey_.unpack(), logit_scale_.unpack(), optional(mask), cos_.unpack(),
                           norms_.unpack(), px_.unpack(), py_.unpack());
    out[0] = std::move(v_ex);
    out[1] = std::move(v_ey);
    if (task_should_compute_output(2)) out[2] = std::move(v_scale);
    return out;
  }
  std::string name() const override { return "AttributePairBackward0"; }
  void release_variables() override {
    for (SavedVariable* s : {&ex_, &ey_, &logit_scale_, &mask_, &cos_, &norms_, &px_, &py_}) s->reset_data();
  }

  SavedVariable ex_, ey_, logit_scale_, mask_, cos_, norms_, px_, py_;
};

Five attribute_pair_fwd_autograd(const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& logit_scale,
                                 const OptTensor& mask) {
  if (!autograd::needs_node(ex, ey, logit_scale)) {  // the mask gets no gradient
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return pair_fwd_op().call(ex, ey, logit_scale, mask);
  }
  auto grad_fn = autograd::make_node<AttributePairBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(ex, ey, logit_scale));
  Five out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = pair_fwd_op().call(ex, ey, logit_scale, mask);
  }
  auto& [loss, cos, norms, px, py] = out;
  grad_fn->ex_ = autograd::save(ex);
  grad_fn->ey_ = autograd::save(ey);
  grad_fn->logit_scale_ = autograd::save(logit_scale);
  grad_fn->mask_ = autograd::save(mask);
  grad_fn->cos_ = autograd::save(cos);  // outputs without a gradient: saved as plain tensors
  grad_fn->norms_ = autograd::save(norms);
  grad_fn->px_ = autograd::save(px);
  grad_fn->py_ = autograd::save(py);
  torch::autograd::set_history(loss, grad_fn);
  return out;
}

Three attribute_pair_bwd_autograd(const at::Tensor& v_loss, const at::Tensor& ex, const at::Tensor& ey,
                                  const at::Tensor& logit_scale, const OptTensor& mask, const at::Tensor& cos,
                                  const at::Tensor& norms, const at::Tensor& px, const at::Tensor& py) {
  return autograd::run_bwd(
      "attribute_pair_loss", [&] { return pair_bwd_op().call(v_loss, ex, ey, logit_scale, mask, cos, norms, px, py); },
      v_loss, ex, ey, logit_scale, cos, norms, px, py);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("derf_linear_fwd", &derf_linear_fwd_autograd);
  m.impl("derf_linear_bwd", &derf_linear_bwd_autograd);
  m.impl("contrastive_fwd", &contrastive_fwd_autograd);
  m.impl("contrastive_bwd", &contrastive_bwd_autograd);
  m.impl("attribute_pair_fwd", &attribute_pair_fwd_autograd);
  m.impl("attribute_pair_bwd", &attribute_pair_bwd_autograd);
}

}  // namespace pyops
