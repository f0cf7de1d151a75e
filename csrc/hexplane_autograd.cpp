// Autograd kernels of pyops::hexplane_fwd and pyops::hexplane_bwd, in C++ as PyTorch's own ops have them (why:
// pyops/autograd.h). The Triton ops keep their Python registration (pyops/hexplane.py).
//
// hexplane_fwd's kernel saves points, times, the planes and aabb (the backward resamples them). times absent:
// every point is at the float `time`, which has no gradient; aabb gets none either. hexplane_bwd's kernel makes
// the gradients non-differentiable: a double backward raises a clear NotImplementedError. Fake tensors take the
// same path (torch.compile's AOTAutograd traces through these kernels), so nothing here reads data.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "pyops/autograd.h"

namespace pyops {
namespace hexplane {
namespace {

using autograd::optional;
using autograd::OptTensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using T = at::Tensor;
using Grads = std::tuple<T, T, std::vector<T>>;
using Fwd = T(const T&, const OptTensor&, double, at::TensorList, const T&);
using Bwd = Grads(const T&, const T&, const OptTensor&, double, at::TensorList, const T&);

const c10::TypedOperatorHandle<Fwd>& fwd_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::hexplane_fwd", "").typed<Fwd>();
  return op;
}
const c10::TypedOperatorHandle<Bwd>& bwd_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::hexplane_bwd", "").typed<Bwd>();
  return op;
}

// Attached to the gradients a backward computes with create_graph=True: a backward through them raises.
struct HexplaneDoubleBackward : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&&) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "hexplane_features: double backward is not supported (the gradients of "
                                "pyops.hexplane_features / pyops.HexPlaneField are not differentiable); use "
                                "backend='torch' for higher-order gradients");
  }
  std::string name() const override { return "HexplaneDoubleBackward"; }
};

// Inputs (next edges): points, times, the planes, aabb.
struct HexplaneBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    const size_t n_planes = planes_.size();
    variable_list out(n_planes + 3);
    if (!grads[0].defined()) return out;  // the features' gradient is undefined: so are the inputs'
    std::vector<T> planes;
    planes.reserve(n_planes);
    for (const SavedVariable& p : planes_) planes.push_back(p.unpack());
    const T times = times_.unpack();
    // With create_graph=True, through hexplane_bwd's autograd kernel; else straight to the backend kernel.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [v_points, v_times, v_planes] =
        bwd_op().call(grads[0], points_.unpack(), optional(times), time_, planes, aabb_.unpack());
    out[0] = std::move(v_points);
    if (times.defined()) out[1] = std::move(v_times);  // else an empty placeholder: the float time has none
    for (size_t i = 0; i < n_planes; ++i) out[2 + i] = std::move(v_planes[i]);
    return out;  // aabb: no gradient
  }
  std::string name() const override { return "HexplaneBackward0"; }
  void release_variables() override {
    points_.reset_data();
    times_.reset_data();
    aabb_.reset_data();
    for (SavedVariable& p : planes_) p.reset_data();
  }

  SavedVariable points_, times_, aabb_;
  std::vector<SavedVariable> planes_;
  double time_ = 0.0;
};

T hexplane_fwd_autograd(const T& points, const OptTensor& times, double time, at::TensorList planes, const T& aabb) {
  // Inference (no_grad, or nothing requires grad): no node.
  if (!autograd::needs_node(points, times, planes, aabb)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(points, times, time, planes, aabb);
  }
  auto grad_fn = autograd::make_node<HexplaneBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(points, times, planes, aabb));
  T features;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    features = fwd_op().call(points, times, time, planes, aabb);
  }
  grad_fn->points_ = autograd::save(points);
  grad_fn->times_ = autograd::save(times);
  grad_fn->aabb_ = autograd::save(aabb);
  grad_fn->planes_.reserve(planes.size());
  for (const T& p : planes) grad_fn->planes_.push_back(autograd::save(p));
  grad_fn->time_ = time;
  torch::autograd::set_history(features, grad_fn);
  return features;
}

Grads hexplane_bwd_autograd(const T& v_features, const T& points, const OptTensor& times, double time,
                            at::TensorList planes, const T& aabb) {
  if (!autograd::needs_node(v_features, points, times, planes, aabb)) {  // the usual backward (no create_graph)
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return bwd_op().call(v_features, points, times, time, planes, aabb);
  }
  auto grad_fn = autograd::make_node<HexplaneDoubleBackward>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(v_features, points, times, planes, aabb));
  Grads out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = bwd_op().call(v_features, points, times, time, planes, aabb);
  }
  torch::autograd::set_history(std::get<0>(out), grad_fn);
  torch::autograd::set_history(std::get<1>(out), grad_fn);
  for (T& g : std::get<2>(out)) torch::autograd::set_history(g, grad_fn);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("hexplane_fwd", &hexplane_fwd_autograd);
  m.impl("hexplane_bwd", &hexplane_bwd_autograd);
}

}  // namespace hexplane
}  // namespace pyops
