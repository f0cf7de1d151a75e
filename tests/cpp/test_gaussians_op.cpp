// Calls the Gaussian-splatting stage ops through the dispatcher from C++ (as a libtorch user would): projection
// against the pinhole formula, then intersection, isect offsets and blending against a dense float64 replay
// of the blending rules of pyops/reference/gaussians.py (every Gaussian at every pixel, front to back), and
// the colour gradient of the backward against the same replay (d render / d colour = alpha * T).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL %s\n", what.c_str());
    ++failures;
  }
}

using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

// Dense replay of the blend: (render [H, W, D], d render.sum() / d colors [N, D]) in float64.
std::pair<at::Tensor, at::Tensor> dense_blend(const at::Tensor& means2d, const at::Tensor& conics,
                                              const at::Tensor& colors, const at::Tensor& opacities,
                                              const at::Tensor& depths, int64_t width, int64_t height) {
  const int64_t n = means2d.size(0), d = colors.size(1);
  const at::Tensor order = std::get<1>(depths.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto m = means2d.accessor<double, 2>();
  auto q = conics.accessor<double, 2>();
  auto o = opacities.accessor<double, 1>();
  auto c = colors.accessor<double, 2>();
  auto ord = order.accessor<int64_t, 1>();
  at::Tensor render = at::zeros({height, width, d}, at::kDouble), v_colors = at::zeros({n, d}, at::kDouble);
  auto r = render.accessor<double, 3>();
  auto vc = v_colors.accessor<double, 2>();
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      double t = 1.0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t g = ord[k];
        const double dx = m[g][0] - (x + 0.5), dy = m[g][1] - (y + 0.5);
        const double sigma = 0.5 * (q[g][0] * dx * dx + q[g][2] * dy * dy) + q[g][1] * dx * dy;
        const double alpha = std::min(0.999, o[g] * std::exp(-sigma));
        if (sigma < 0 || alpha < 1.0 / 255) continue;
        if (t * (1 - alpha) <= 1e-4) break;  // this Gaussian is not blended and the pixel is done
        for (int64_t j = 0; j < d; ++j) {
          r[y][x][j] += c[g][j] * alpha * t;
          vc[g][j] += alpha * t;
        }
        t *= 1 - alpha;
      }
    }
  }
  return {render, v_colors};
}

}  // namespace

int main() {
  auto project = op("pyops::gs_project_fwd")
                     .typed<Tensors5(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t,
                                     int64_t, double, double, double, double, bool)>();
  auto intersect = op("pyops::gs_intersect_tiles")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t)>();
  auto offsets = op("pyops::gs_isect_offsets").typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  auto rasterize = op("pyops::gs_rasterize_fwd")
                       .typed<Tensors4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, const at::Tensor&,
                                       const at::Tensor&, bool)>();
  auto rasterize_bwd = op("pyops::gs_rasterize_bwd")
                           .typed<Tensors6(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const std::optional<at::Tensor>&, int64_t, int64_t, int64_t,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, bool)>();

  at::manual_seed(0);
  const int64_t n = 40, width = 37, height = 29, tile = 8, channels = 5;  // sizes not multiples of the tile
  const double focal = 30.0;
  for (auto dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-9 : 2e-4;
    const std::string what = c10::toString(dtype);
    const auto opts = at::TensorOptions().dtype(dtype);
    // Gaussians in front of a camera at the origin looking down +z (world = camera).
    at::Tensor means = at::stack({at::rand({n}) * 4 - 2, at::rand({n}) * 3 - 1.5, at::rand({n}) * 4 + 3}, 1);
    means = means.to(dtype);
    const at::Tensor quats = at::randn({n, 4}, opts), scales = (at::rand({n, 3}) * 0.2 + 0.05).to(dtype);
    const at::Tensor opacities = (at::rand({n}) * 0.8 + 0.1).to(dtype);
    const at::Tensor colors = at::rand({1, n, channels}, opts);
    const at::Tensor viewmats = at::eye(4, opts).unsqueeze(0);
    const at::Tensor Ks =
        at::tensor({focal, 0.0, width / 2.0, 0.0, focal, height / 2.0, 0.0, 0.0, 1.0}).to(dtype).reshape({1, 3, 3});
    auto [radii, means2d, depths, conics, comp] =
        project.call(means, quats, scales, opacities, viewmats, Ks, width, height, 0.3, 0.01, 1e10, 0.0, false);
    const at::Tensor md = means.to(at::kDouble);
    const at::Tensor pinhole = at::stack({focal * md.select(1, 0) / md.select(1, 2) + width / 2.0,
                                          focal * md.select(1, 1) / md.select(1, 2) + height / 2.0},
                                         1);
    const at::Tensor visible = (radii[0] > 0).all(1);
    expect(visible.sum().item<int64_t>() > n / 2, what + ": most Gaussians are visible");
    expect((means2d[0].to(at::kDouble) - pinhole).index({visible}).abs().max().item<double>() < tol * 100,
           what + ": means2d is the pinhole projection");
    expect((depths[0].to(at::kDouble) - md.select(1, 2)).abs().max().item<double>() < tol, what + ": depths");

    const int64_t tw = (width + tile - 1) / tile, th = (height + tile - 1) / tile;
    auto [tiles_per_gauss, isect_ids, flatten_ids] = intersect.call(means2d, radii, depths, tile, tw, th);
    expect(tiles_per_gauss.sum().item<int64_t>() == isect_ids.size(0), what + ": one key per touched tile");
    const at::Tensor isect_offsets = offsets.call(isect_ids, 1, tw, th);
    const at::Tensor opac = opacities.unsqueeze(0);
    auto [render, alphas, last_ids, final_t] = rasterize.call(means2d, conics, colors, opac, std::nullopt, width,
                                                              height, tile, isect_offsets, flatten_ids, false);
    // Culled Gaussians never blend: give the replay zero opacity for them.
    const at::Tensor replay_opac = opacities.to(at::kDouble) * visible.to(at::kDouble);
    auto [want, want_v_colors] =
        dense_blend(means2d[0].to(at::kDouble), conics[0].to(at::kDouble), colors[0].to(at::kDouble), replay_opac,
                    depths[0].to(at::kDouble), width, height);
    const double err = (render[0].to(at::kDouble) - want).abs().max().item<double>();
    expect(err < tol, what + ": render matches the dense replay, error " + std::to_string(err));
    expect(want.abs().max().item<double>() > 0.1, what + ": the scene is not empty");

    auto [v_means2d, v_conics, v_colors, v_opacities, v_bg, v_abs] =
        rasterize_bwd.call(means2d, conics, colors, opac, std::nullopt, width, height, tile, isect_offsets, flatten_ids,
                           final_t, last_ids, at::ones_like(render), at::zeros_like(alphas), false);
    const double err_v = (v_colors[0].to(at::kDouble) - want_v_colors).abs().max().item<double>();
    expect(err_v < tol * 10, what + ": v_colors = sum of alpha * T, error " + std::to_string(err_v));
    expect(v_abs.numel() == 0, what + ": no absgrad unless asked");

    // Autograd from C++ (the ops' C++ autograd kernels, csrc/gaussians_autograd.cpp): the node is built and
    // d render.sum() / d colors is the raw backward's v_colors.
    const at::Tensor colors_leaf = colors.detach().requires_grad_(true);
    const at::Tensor render_g = std::get<0>(rasterize.call(means2d, conics, colors_leaf, opac, std::nullopt, width,
                                                           height, tile, isect_offsets, flatten_ids, false));
    expect(render_g.grad_fn() != nullptr && render_g.grad_fn()->name() == "GsRasterizeBackward0",
           what + ": render has the C++ rasterize node");
    render_g.sum().backward();
    expect(colors_leaf.grad().defined() && at::equal(colors_leaf.grad(), v_colors),
           what + ": colors.grad is the raw backward's v_colors");
    const at::Tensor means_leaf = means.detach().requires_grad_(true);
    const at::Tensor means2d_g = std::get<1>(
        project.call(means_leaf, quats, scales, opacities, viewmats, Ks, width, height, 0.3, 0.01, 1e10, 0.0, false));
    expect(means2d_g.grad_fn() != nullptr && means2d_g.grad_fn()->name() == "GsProjectBackward0",
           what + ": means2d has the C++ projection node");
    {
      at::NoGradGuard no_grad;  // no node without grad mode
      const at::Tensor plain = std::get<1>(
          project.call(means_leaf, quats, scales, opacities, viewmats, Ks, width, height, 0.3, 0.01, 1e10, 0.0, false));
      expect(plain.grad_fn() == nullptr && at::equal(plain, means2d_g.detach()), what + ": no node under no_grad");
    }

    bool raised = false;
    try {  // isect_offsets of the wrong shape: a named error, never an out-of-bounds read
      rasterize.call(means2d, conics, colors, opac, std::nullopt, width, height, tile, isect_offsets.narrow(1, 0, 1),
                     flatten_ids, false);
    } catch (const c10::Error& e) {
      raised = std::string(e.what()).find("isect_offsets") != std::string::npos;
    }
    expect(raised, what + ": a bad isect_offsets raises an error naming it");
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
