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

PYOPS_OP_HANDLE(fwd_op, Fwd, "pyops::hexplane_fwd")
PYOPS_OP_HANDLE(bwd_op, Bwd, "pyops::hexplane_bwd")

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
    const autograd::BelowAutogradUnlessCreateGraph below;
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
  return autograd::run_bwd(
      "hexplane_features", [&] { return bwd_op().call(v_features, points, times, time, planes, aabb); }, v_features,
      points, times, planes, aabb);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("hexplane_fwd", &hexplane_fwd_autograd);
  m.impl("hexplane_bwd", &hexplane_bwd_autograd);
}

}  // namespace hexplane
}  // namespace pyops
