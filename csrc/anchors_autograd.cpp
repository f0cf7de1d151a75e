// Autograd kernels of pyops::anchor_blend_weight_{fwd,bwd} and pyops::anchor_decode_{fwd,bwd}, in C++ as
// PyTorch's own ops have them (why: pyops/autograd.h; anchor_decode's 29-argument schema cost ~260 us per call
// through torch.library.register_autograd). The Triton ops keep their Python registration (pyops/anchors.py).
//
// The fwd kernels save the inputs (the backward recomputes the MLP) and form what the bwd ops leave to the
// caller: the gradient of tau_t, -sum(v_offset) accumulated in fp32 (fp64), only when tau_t needs one. Undefined
// output gradients (an output the loss does not use) count as zeros, as the Python kernels' materialised ones
// did. neural_opacity is not differentiable. The bwd kernels make the gradients non-differentiable: a double
// backward raises a clear NotImplementedError instead of returning wrong values. Fake tensors take the same
// path (torch.compile's AOTAutograd traces through these kernels), so nothing here reads data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <utility>

#include "pyops/anchors.h"
#include "pyops/autograd.h"

namespace pyops {
namespace anchors {
namespace {

using autograd::optional;
using autograd::OptTensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using T = at::Tensor;

// ---------------------------------------------------------------------------------------------------------
// Shared: d/d tau.

// d/d tau of a function of (tau - offset): -sum(d/d offset), summed in fp32 (fp64) and cast to tau's dtype.
T neg_sum(const T& v_offset, const T& tau_t) {
  const auto acc = v_offset.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return v_offset.sum(acc).to(tau_t.scalar_type()).neg();
}

// ---------------------------------------------------------------------------------------------------------
// anchor_blend_weight.

using BlendFwd = T(const T&, const T&, const OptTensor&, double, double, int64_t);
using BlendBwd = std::tuple<T, T>(const T&, const T&, const T&, const OptTensor&, double, double, int64_t);

PYOPS_OP_HANDLE(blend_fwd_op, BlendFwd, "pyops::anchor_blend_weight_fwd")
PYOPS_OP_HANDLE(blend_bwd_op, BlendBwd, "pyops::anchor_blend_weight_bwd")

// Inputs (next edges): offset, decay, tau_t.
struct AnchorBlendWeightBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const T offset = offset_.unpack(), decay = decay_.unpack(), tau_t = tau_t_.unpack();
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_offset, v_decay] =
        blend_bwd_op().call(grads[0], offset, decay, optional(tau_t), tau_, lambda_decay_, blend_mode_);
    if (tau_t.defined() && task_should_compute_output(2)) out[2] = neg_sum(v_offset, tau_t);
    out[0] = std::move(v_offset);
    out[1] = std::move(v_decay);
    return out;
  }
  std::string name() const override { return "AnchorBlendWeightBackward0"; }
  void release_variables() override {
    offset_.reset_data();
    decay_.reset_data();
    tau_t_.reset_data();
  }

  SavedVariable offset_, decay_, tau_t_;
  double tau_ = 0.0, lambda_decay_ = 1.0;
  int64_t blend_mode_ = 0;
};

T blend_fwd_autograd(const T& offset, const T& decay, const OptTensor& tau_t, double tau, double lambda_decay,
                     int64_t blend_mode) {
  if (!autograd::needs_node(offset, decay, tau_t)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return blend_fwd_op().call(offset, decay, tau_t, tau, lambda_decay, blend_mode);
  }
  auto grad_fn = autograd::make_node<AnchorBlendWeightBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(offset, decay, tau_t));
  T w;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    w = blend_fwd_op().call(offset, decay, tau_t, tau, lambda_decay, blend_mode);
  }
  grad_fn->offset_ = autograd::save(offset);
  grad_fn->decay_ = autograd::save(decay);
  grad_fn->tau_t_ = autograd::save(tau_t);
  grad_fn->tau_ = tau;
  grad_fn->lambda_decay_ = lambda_decay;
  grad_fn->blend_mode_ = blend_mode;
  torch::autograd::set_history(w, grad_fn);
  return w;
}

std::tuple<T, T> blend_bwd_autograd(const T& v_w, const T& offset, const T& decay, const OptTensor& tau_t, double tau,
                                    double lambda_decay, int64_t blend_mode) {
  return autograd::run_bwd(
      "anchor_blend_weight",
      [&] { return blend_bwd_op().call(v_w, offset, decay, tau_t, tau, lambda_decay, blend_mode); }, v_w, offset, decay,
      tau_t);
}

// ---------------------------------------------------------------------------------------------------------
// anchor_decode.

constexpr int kTensors = 23;  // anchor_decode_fwd's tensor arguments: 5 inputs, 12 MLP tensors, 6 optional ones
// Their indices (the node's next edges and outputs are in schema order).
enum : int { kCamCenter = 4, kAppearance = 17, kOpacityScale = 18, kVisible = 19, kBlendOffset, kBlendDecay, kTauT };

using DecodeOuts = std::tuple<T, T, T, T, T, T>;
#define PYOPS_DECODE_INPUTS                                                                                        \
  const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&,    \
      const T&, const T&, const T&, const T&, const T&, const T&, const OptTensor&, const OptTensor&,              \
      const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, double, int64_t, bool, bool, \
      bool
using DecodeFwd = DecodeOuts(PYOPS_DECODE_INPUTS);
using DecodeBwd = DecodeBwdResult(const T&, const T&, const T&, const T&, const T&, PYOPS_DECODE_INPUTS);
#undef PYOPS_DECODE_INPUTS

PYOPS_OP_HANDLE(decode_fwd_op, DecodeFwd, "pyops::anchor_decode_fwd")
PYOPS_OP_HANDLE(decode_bwd_op, DecodeBwd, "pyops::anchor_decode_bwd")

// The non-tensor arguments.
struct DecodeScalars {
  double tau = 0.0, lambda_decay = 1.0;
  int64_t blend_mode = 0;
  bool opacity_dist = false, cov_dist = false, color_dist = false;
};

// The bwd op on output gradients g and the 23 tensor arguments t (undefined: an absent optional one).
DecodeBwdResult call_decode_bwd(const std::array<T, 5>& g, const std::array<T, kTensors>& t, const DecodeScalars& s) {
  return decode_bwd_op().call(g[0], g[1], g[2], g[3], g[4], t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9],
                              t[10], t[11], t[12], t[13], t[14], t[15], t[16], optional(t[17]), optional(t[18]),
                              optional(t[19]), optional(t[20]), optional(t[21]), optional(t[22]), s.tau, s.lambda_decay,
                              s.blend_mode, s.opacity_dist, s.cov_dist, s.color_dist);
}

// Inputs (next edges): the 23 tensor arguments; outputs: means, quats, scales, opacities, colors.
struct AnchorDecodeBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(kTensors);
    bool any = false;
    for (const T& g : grads) any = any || g.defined();
    if (!any) return out;
    std::array<T, kTensors> t;
    for (int i = 0; i < kTensors; ++i) t[i] = saved_[i].unpack();
    // Undefined gradients are zeros ([M, K, 3] like offsets, [M, K, 4], [M, K]).
    const T& offsets = t[2];
    const auto m = offsets.sym_size(0), k = offsets.sym_size(1);
    std::array<T, 5> g;
    for (int i = 0; i < 5; ++i) {
      if (grads[i].defined()) {
        g[i] = std::move(grads[i]);
      } else if (i == 1) {
        g[i] = at::zeros_symint({m, k, 4}, offsets.options());
      } else if (i == 3) {
        g[i] = at::zeros_symint({m, k}, offsets.options());
      } else {
        g[i] = at::zeros_symint(offsets.sym_sizes(), offsets.options());
      }
    }
    const autograd::BelowAutogradUnlessCreateGraph below;
    const DecodeBwdResult r = call_decode_bwd(g, t, scalars_);
    out[0] = std::get<0>(r);
    out[1] = std::get<1>(r);
    out[2] = std::get<2>(r);
    out[3] = std::get<3>(r);
    // cam_center (index 4) has no gradient; the 12 MLP tensors' follow.
    out[5] = std::get<4>(r);
    out[6] = std::get<5>(r);
    out[7] = std::get<6>(r);
    out[8] = std::get<7>(r);
    out[9] = std::get<8>(r);
    out[10] = std::get<9>(r);
    out[11] = std::get<10>(r);
    out[12] = std::get<11>(r);
    out[13] = std::get<12>(r);
    out[14] = std::get<13>(r);
    out[15] = std::get<14>(r);
    out[16] = std::get<15>(r);
    if (t[kAppearance].defined()) out[kAppearance] = std::get<16>(r);
    if (t[kOpacityScale].defined()) out[kOpacityScale] = std::get<17>(r);
    if (t[kBlendOffset].defined()) {
      out[kBlendOffset] = std::get<18>(r);
      out[kBlendDecay] = std::get<19>(r);
      if (t[kTauT].defined() && task_should_compute_output(kTauT)) out[kTauT] = neg_sum(std::get<18>(r), t[kTauT]);
    }
    return out;
  }
  std::string name() const override { return "AnchorDecodeBackward0"; }
  void release_variables() override {
    for (SavedVariable& s : saved_) s.reset_data();
  }

  std::array<SavedVariable, kTensors> saved_;
  DecodeScalars scalars_;
};

DecodeOuts decode_fwd_autograd(const T& anchors, const T& feats, const T& offsets, const T& anchor_scales,
                               const T& cam_center, const T& w1_opacity, const T& b1_opacity, const T& w2_opacity,
                               const T& b2_opacity, const T& w1_cov, const T& b1_cov, const T& w2_cov, const T& b2_cov,
                               const T& w1_color, const T& b1_color, const T& w2_color, const T& b2_color,
                               const OptTensor& appearance, const OptTensor& opacity_scale, const OptTensor& visible,
                               const OptTensor& blend_offset, const OptTensor& blend_decay, const OptTensor& tau_t,
                               double tau, double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist,
                               bool color_dist) {
  auto call = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return decode_fwd_op().call(anchors, feats, offsets, anchor_scales, cam_center, w1_opacity, b1_opacity, w2_opacity,
                                b2_opacity, w1_cov, b1_cov, w2_cov, b2_cov, w1_color, b1_color, w2_color, b2_color,
                                appearance, opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay,
                                blend_mode, opacity_dist, cov_dist, color_dist);
  };
  // Inference (no_grad, or nothing requires grad): no node. visible (bool) never requires grad.
  if (!autograd::needs_node(anchors, feats, offsets, anchor_scales, cam_center, w1_opacity, b1_opacity, w2_opacity,
                            b2_opacity, w1_cov, b1_cov, w2_cov, b2_cov, w1_color, b1_color, w2_color, b2_color,
                            appearance, opacity_scale, blend_offset, blend_decay, tau_t)) {
    return call();
  }
  auto grad_fn = autograd::make_node<AnchorDecodeBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(
      anchors, feats, offsets, anchor_scales, cam_center, w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,
      b1_cov, w2_cov, b2_cov, w1_color, b1_color, w2_color, b2_color, appearance, opacity_scale, visible, blend_offset,
      blend_decay, tau_t));
  DecodeOuts outs = call();
  const std::array<const T*, 17> dense = {
      &anchors, &feats,  &offsets, &anchor_scales, &cam_center, &w1_opacity, &b1_opacity, &w2_opacity, &b2_opacity,
      &w1_cov,  &b1_cov, &w2_cov,  &b2_cov,        &w1_color,   &b1_color,   &w2_color,   &b2_color};
  for (int i = 0; i < 17; ++i) grad_fn->saved_[i] = autograd::save(*dense[i]);
  const std::array<const OptTensor*, 6> opt = {&appearance,   &opacity_scale, &visible,
                                               &blend_offset, &blend_decay,   &tau_t};
  for (int i = 0; i < 6; ++i) grad_fn->saved_[17 + i] = autograd::save(*opt[i]);
  grad_fn->scalars_ = {tau, lambda_decay, blend_mode, opacity_dist, cov_dist, color_dist};
  auto& [means, quats, scales, opacities, colors, neural_opacity] = outs;
  torch::autograd::set_history(means, grad_fn);
  torch::autograd::set_history(quats, grad_fn);
  torch::autograd::set_history(scales, grad_fn);
  torch::autograd::set_history(opacities, grad_fn);
  torch::autograd::set_history(colors, grad_fn);
  (void)neural_opacity;  // a densification statistic: no history, no gradient
  return outs;
}

DecodeBwdResult decode_bwd_autograd(
    const T& v_means, const T& v_quats, const T& v_scales, const T& v_opacities, const T& v_colors, const T& anchors,
    const T& feats, const T& offsets, const T& anchor_scales, const T& cam_center, const T& w1_opacity,
    const T& b1_opacity, const T& w2_opacity, const T& b2_opacity, const T& w1_cov, const T& b1_cov, const T& w2_cov,
    const T& b2_cov, const T& w1_color, const T& b1_color, const T& w2_color, const T& b2_color,
    const OptTensor& appearance, const OptTensor& opacity_scale, const OptTensor& visible,
    const OptTensor& blend_offset, const OptTensor& blend_decay, const OptTensor& tau_t, double tau,
    double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist, bool color_dist) {
  return autograd::run_bwd(
      "anchor_decode",
      [&] {
        return decode_bwd_op().call(v_means, v_quats, v_scales, v_opacities, v_colors, anchors, feats, offsets,
                                    anchor_scales, cam_center, w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,
                                    b1_cov, w2_cov, b2_cov, w1_color, b1_color, w2_color, b2_color, appearance,
                                    opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay,
                                    blend_mode, opacity_dist, cov_dist, color_dist);
      },
      v_means, v_quats, v_scales, v_opacities, v_colors, anchors, feats, offsets, anchor_scales, cam_center, w1_opacity,
      b1_opacity, w2_opacity, b2_opacity, w1_cov, b1_cov, w2_cov, b2_cov, w1_color, b1_color, w2_color, b2_color,
      appearance, opacity_scale, blend_offset, blend_decay, tau_t);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("anchor_blend_weight_fwd", &blend_fwd_autograd);
  m.impl("anchor_blend_weight_bwd", &blend_bwd_autograd);
  m.impl("anchor_decode_fwd", &decode_fwd_autograd);
  m.impl("anchor_decode_bwd", &decode_bwd_autograd);
}

}  // namespace anchors
}  // namespace pyops
