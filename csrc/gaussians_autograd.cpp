// Autograd kernels of the native Gaussian-splatting stage ops (gs_project, gs_sh, gs_rasterize; fwd and bwd), in
// C++ as PyTorch's own ops have them (why: pyops/autograd.h). The Triton ops keep their Python registration
// (pyops/gaussians.py), and so does rasterize_to_pixels(absgrad=True): gsplat's convention stores the summed
// |per-pixel gradient| as a Python attribute on the caller's means2d, which a C++ node cannot do.
//
// Each fwd kernel saves what pyops/gaussians.py's setup_context saved before: the inputs the backward rereads and
// the outputs it needs (conics and compensations of the projection, last_ids and final_transmittances of the
// rasterizer). A gradient autograd leaves undefined (an unused output) becomes zeros. Each bwd kernel makes the
// gradients non-differentiable: a double backward through them raises a clear NotImplementedError. Fake tensors
// take the same path (torch.compile's AOTAutograd traces through these kernels), so nothing here reads data.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <tuple>
#include <utility>

#include "pyops/autograd.h"

namespace pyops {
namespace gs {
namespace {

using autograd::optional;
using autograd::OptTensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using T = at::Tensor;
using Tuple3 = std::tuple<T, T, T>;
using Tuple4 = std::tuple<T, T, T, T>;
using Tuple5 = std::tuple<T, T, T, T, T>;
using Tuple6 = std::tuple<T, T, T, T, T, T>;

using ProjectFwd = Tuple5(const T&, const T&, const T&, const OptTensor&, const T&, const T&, int64_t, int64_t, double,
                          double, double, double, bool);
using ProjectBwd = Tuple3(const T&, const T&, const T&, const T&, const T&, int64_t, int64_t, double, bool, const T&,
                          const T&, const T&, const T&, const T&, const T&, const T&);
using ShFwd = T(int64_t, const T&, const T&);
using ShBwd = std::tuple<T, T>(int64_t, const T&, const T&, const T&);
using RasterFwd = Tuple4(const T&, const T&, const T&, const T&, const OptTensor&, int64_t, int64_t, int64_t, const T&,
                         const T&, bool);
using RasterBwd = Tuple6(const T&, const T&, const T&, const T&, const OptTensor&, int64_t, int64_t, int64_t, const T&,
                         const T&, const T&, const T&, const T&, const T&, bool);

PYOPS_OP_HANDLE(project_fwd_op, ProjectFwd, "pyops::gs_project_fwd")
PYOPS_OP_HANDLE(project_bwd_op, ProjectBwd, "pyops::gs_project_bwd")
PYOPS_OP_HANDLE(sh_fwd_op, ShFwd, "pyops::gs_sh_fwd")
PYOPS_OP_HANDLE(sh_bwd_op, ShBwd, "pyops::gs_sh_bwd")
PYOPS_OP_HANDLE(raster_fwd_op, RasterFwd, "pyops::gs_rasterize_fwd")
PYOPS_OP_HANDLE(raster_bwd_op, RasterBwd, "pyops::gs_rasterize_bwd")

// ---------------------------------------------------------------------------------------------------------
// Projection. Differentiable in means, quats and scales (opacities only cull; camera gradients need the torch
// backend, pyops.project_gaussians says so); outputs means2d, depths, conics, compensations (radii: int32).
// ---------------------------------------------------------------------------------------------------------

struct ProjectBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined() && !grads[3].defined()) return out;
    const T conics = conics_.unpack(autograd::self_ptr(this)),
            compensations = compensations_.unpack(autograd::self_ptr(this));
    const T radii = radii_.unpack();
    const auto zeros = [](const T& g, const T& like, c10::IntArrayRef shape) {
      return g.defined() ? g : at::zeros(shape, like.options());
    };
    const int64_t c = conics.size(0), n = conics.size(1);
    const T v_means2d = zeros(grads[0], conics, {c, n, 2});
    const T v_depths = zeros(grads[1], compensations, {c, n});
    const T v_conics = zeros(grads[2], conics, {c, n, 3});
    const T v_compensations = zeros(grads[3], compensations, {c, n});
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_means, v_quats, v_scales] = project_bwd_op().call(
        means_.unpack(), quats_.unpack(), scales_.unpack(), viewmats_.unpack(), Ks_.unpack(), width_, height_, eps2d_,
        antialiased_, radii, conics, compensations, v_means2d, v_depths, v_conics, v_compensations);
    out[0] = std::move(v_means);
    out[1] = std::move(v_quats);
    out[2] = std::move(v_scales);
    return out;
  }
  std::string name() const override { return "GsProjectBackward0"; }
  void release_variables() override {
    for (SavedVariable* v : {&means_, &quats_, &scales_, &viewmats_, &Ks_, &radii_, &conics_, &compensations_})
      v->reset_data();
  }

  SavedVariable means_, quats_, scales_, viewmats_, Ks_, radii_, conics_, compensations_;
  int64_t width_ = 0, height_ = 0;
  double eps2d_ = 0.0;
  bool antialiased_ = false;
};

Tuple5 project_fwd_autograd(const T& means, const T& quats, const T& scales, const OptTensor& opacities,
                            const T& viewmats, const T& Ks, int64_t width, int64_t height, double eps2d,
                            double near_plane, double far_plane, double radius_clip, bool antialiased) {
  const auto call = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return project_fwd_op().call(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane,
                                 far_plane, radius_clip, antialiased);
  };
  // Inference (no_grad, or nothing requires grad): no node, which costs about as much as a tiny scene's kernel.
  if (!autograd::needs_node(means, quats, scales)) return call();
  auto grad_fn = autograd::make_node<ProjectBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(means, quats, scales));
  auto [radii, means2d, depths, conics, compensations] = call();
  for (const T& t : {means2d, depths, conics, compensations}) torch::autograd::set_history(t, grad_fn);
  grad_fn->means_ = autograd::save(means);
  grad_fn->quats_ = autograd::save(quats);
  grad_fn->scales_ = autograd::save(scales);
  grad_fn->viewmats_ = autograd::save(viewmats);
  grad_fn->Ks_ = autograd::save(Ks);
  grad_fn->radii_ = autograd::save(radii);
  grad_fn->conics_ = autograd::save(conics, /*is_output=*/true);
  grad_fn->compensations_ = autograd::save(compensations, /*is_output=*/true);
  grad_fn->width_ = width;
  grad_fn->height_ = height;
  grad_fn->eps2d_ = eps2d;
  grad_fn->antialiased_ = antialiased;
  return {radii, means2d, depths, conics, compensations};
}

Tuple3 project_bwd_autograd(const T& means, const T& quats, const T& scales, const T& viewmats, const T& Ks,
                            int64_t width, int64_t height, double eps2d, bool antialiased, const T& radii,
                            const T& conics, const T& compensations, const T& v_means2d, const T& v_depths,
                            const T& v_conics, const T& v_compensations) {
  return autograd::run_bwd(
      "project_gaussians",
      [&] {
        return project_bwd_op().call(means, quats, scales, viewmats, Ks, width, height, eps2d, antialiased, radii,
                                     conics, compensations, v_means2d, v_depths, v_conics, v_compensations);
      },
      means, quats, scales, viewmats, Ks, radii, conics, compensations, v_means2d, v_depths, v_conics, v_compensations);
}

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics: colors of (dirs, coeffs).
// ---------------------------------------------------------------------------------------------------------

struct ShBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(2);
    if (!grads[0].defined()) return out;
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_coeffs, v_dirs] = sh_bwd_op().call(degree_, dirs_.unpack(), coeffs_.unpack(), grads[0]);
    out[0] = std::move(v_dirs);
    out[1] = std::move(v_coeffs);
    return out;
  }
  std::string name() const override { return "GsShBackward0"; }
  void release_variables() override {
    dirs_.reset_data();
    coeffs_.reset_data();
  }

  SavedVariable dirs_, coeffs_;
  int64_t degree_ = 0;
};

T sh_fwd_autograd(int64_t degree, const T& dirs, const T& coeffs) {
  if (!autograd::needs_node(dirs, coeffs)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return sh_fwd_op().call(degree, dirs, coeffs);
  }
  auto grad_fn = autograd::make_node<ShBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(dirs, coeffs));
  T colors;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    colors = sh_fwd_op().call(degree, dirs, coeffs);
  }
  torch::autograd::set_history(colors, grad_fn);
  grad_fn->dirs_ = autograd::save(dirs);
  grad_fn->coeffs_ = autograd::save(coeffs);
  grad_fn->degree_ = degree;
  return colors;
}

std::tuple<T, T> sh_bwd_autograd(int64_t degree, const T& dirs, const T& coeffs, const T& v_colors) {
  return autograd::run_bwd(
      "spherical_harmonics", [&] { return sh_bwd_op().call(degree, dirs, coeffs, v_colors); }, dirs, coeffs, v_colors);
}

// ---------------------------------------------------------------------------------------------------------
// Rasterization. Differentiable in means2d, conics, colors, opacities and backgrounds; outputs render_colors,
// render_alphas and final_transmittances (= 1 - render_alphas up to rounding: its gradient folds into
// v_render_alphas with a minus sign); last_ids is int32. The node never computes absgrad (the raw op's absgrad
// only asks for v_means2d_abs, which autograd has nowhere to put): pyops.rasterize_to_pixels(absgrad=True) runs a
// Python autograd.Function around the op instead.
// ---------------------------------------------------------------------------------------------------------

struct RasterizeBackwardNode : public torch::autograd::TraceableFunction {
  variable_list apply(variable_list&& grads) override {
    variable_list out(5);
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return out;
    const T trans = final_transmittances_.unpack(autograd::self_ptr(this)), colors = colors_.unpack();
    const T backgrounds = backgrounds_.unpack();
    T v_alphas = grads[1].defined() ? grads[1] : at::zeros_like(trans);
    if (grads[2].defined()) v_alphas = at::sub(v_alphas, grads[2]);  // final_transmittances = 1 - render_alphas
    T v_colors = grads[0];
    if (!v_colors.defined())
      v_colors = at::zeros({trans.size(0), trans.size(1), trans.size(2), colors.size(-1)}, colors.options());
    const autograd::BelowAutogradUnlessCreateGraph below;
    auto [v_means2d, v_conics, v_col, v_opacities, v_bg, v_abs] =
        raster_bwd_op().call(means2d_.unpack(), conics_.unpack(), colors, opacities_.unpack(), optional(backgrounds),
                             width_, height_, tile_size_, isect_offsets_.unpack(), flatten_ids_.unpack(), trans,
                             last_ids_.unpack(), v_colors, v_alphas, /*absgrad=*/false);
    out[0] = std::move(v_means2d);
    out[1] = std::move(v_conics);
    out[2] = std::move(v_col);
    out[3] = std::move(v_opacities);
    if (backgrounds.defined()) out[4] = std::move(v_bg);
    return out;
  }
  std::string name() const override { return "GsRasterizeBackward0"; }
  void release_variables() override {
    for (SavedVariable* v : {&means2d_, &conics_, &colors_, &opacities_, &backgrounds_, &isect_offsets_, &flatten_ids_,
                             &final_transmittances_, &last_ids_})
      v->reset_data();
  }

  SavedVariable means2d_, conics_, colors_, opacities_, backgrounds_, isect_offsets_, flatten_ids_,
      final_transmittances_, last_ids_;
  int64_t width_ = 0, height_ = 0, tile_size_ = 0;
};

Tuple4 rasterize_fwd_autograd(const T& means2d, const T& conics, const T& colors, const T& opacities,
                              const OptTensor& backgrounds, int64_t width, int64_t height, int64_t tile_size,
                              const T& isect_offsets, const T& flatten_ids, bool absgrad) {
  const auto call = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return raster_fwd_op().call(means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                                isect_offsets, flatten_ids, absgrad);
  };
  if (!autograd::needs_node(means2d, conics, colors, opacities, backgrounds)) return call();
  auto grad_fn = autograd::make_node<RasterizeBackwardNode>();
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(means2d, conics, colors, opacities, backgrounds));
  auto [render, alphas, last_ids, trans] = call();
  for (const T& t : {render, alphas, trans}) torch::autograd::set_history(t, grad_fn);
  grad_fn->means2d_ = autograd::save(means2d);
  grad_fn->conics_ = autograd::save(conics);
  grad_fn->colors_ = autograd::save(colors);
  grad_fn->opacities_ = autograd::save(opacities);
  grad_fn->backgrounds_ = autograd::save(backgrounds);
  grad_fn->isect_offsets_ = autograd::save(isect_offsets);
  grad_fn->flatten_ids_ = autograd::save(flatten_ids);
  grad_fn->final_transmittances_ = autograd::save(trans, /*is_output=*/true);
  grad_fn->last_ids_ = autograd::save(last_ids);
  grad_fn->width_ = width;
  grad_fn->height_ = height;
  grad_fn->tile_size_ = tile_size;
  return {render, alphas, last_ids, trans};
}

Tuple6 rasterize_bwd_autograd(const T& means2d, const T& conics, const T& colors, const T& opacities,
                              const OptTensor& backgrounds, int64_t width, int64_t height, int64_t tile_size,
                              const T& isect_offsets, const T& flatten_ids, const T& trans, const T& last_ids,
                              const T& v_render_colors, const T& v_render_alphas, bool absgrad) {
  return autograd::run_bwd(
      "rasterize_to_pixels",
      [&] {
        return raster_bwd_op().call(means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                                    isect_offsets, flatten_ids, trans, last_ids, v_render_colors, v_render_alphas,
                                    absgrad);
      },
      means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, trans, last_ids, v_render_colors,
      v_render_alphas);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  m.impl("gs_project_fwd", &project_fwd_autograd);
  m.impl("gs_project_bwd", &project_bwd_autograd);
  m.impl("gs_sh_fwd", &sh_fwd_autograd);
  m.impl("gs_sh_bwd", &sh_bwd_autograd);
  m.impl("gs_rasterize_fwd", &rasterize_fwd_autograd);
  m.impl("gs_rasterize_bwd", &rasterize_bwd_autograd);
}

}  // namespace gs
}  // namespace pyops
