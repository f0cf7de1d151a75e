// Calls pyops::hexplane_fwd / hexplane_bwd through the dispatcher from C++ (the libtorch build) and compares
// with a float64 ATen composition of the reference (pyops/reference/hexplane.py), differentiated by autograd:
// two levels with different F and resolutions, a one-sample axis, points outside the box, (1, F, R_b, R_a)
// planes, per-point times and the shared time, fp32 and bf16.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  if (got.sizes() != want.sizes()) {
    std::printf("FAIL %s: shape mismatch\n", what.c_str());
    ++failures;
    return;
  }
  const at::Tensor w = want.to(at::kDouble);
  const double scale = 1.0 + (w.numel() ? w.abs().max().item<double>() : 0.0);
  const double err = w.numel() ? (got.to(at::kDouble) - w).abs().max().item<double>() : 0.0;
  if (!(err <= tol * scale)) {
    std::printf("FAIL %s: max error %.3e > %.1e * %.3g\n", what.c_str(), err, tol, scale);
    ++failures;
  }
}

const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

// The reference's _lerp_coords: (i0, i1, w), w differentiable inside the closed [0, R - 1] (the spec's rule,
// written out: at::clamp's own subgradient at the bounds changed from 1 to 0 in torch 2.14).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lerp(const at::Tensor& q, int64_t size) {
  const at::Tensor u0 = (q + 1) * 0.5 * double(size - 1);
  const at::Tensor inside = (u0 >= 0).logical_and(u0 <= double(size - 1));
  const at::Tensor u = at::where(inside, u0, u0.clamp(0, double(size - 1)).detach());
  const at::Tensor i0 = u.detach().floor().clamp(0, std::max<int64_t>(size - 2, 0)).to(at::kLong);
  const at::Tensor i1 = (i0 + 1).clamp_max(size - 1);
  return {i0, i1, u - i0.to(u.scalar_type())};
}

at::Tensor sample_plane(const at::Tensor& plane, const at::Tensor& qa, const at::Tensor& qb) {  // (F, Rb, Ra) -> (N, F)
  const int64_t f = plane.size(0), rb = plane.size(1), ra = plane.size(2);
  auto [a0, a1, wa] = lerp(qa, ra);
  auto [b0, b1, wb] = lerp(qb, rb);
  const at::Tensor flat = plane.reshape({f, rb * ra});
  auto at_ = [&](const at::Tensor& b, const at::Tensor& a) { return flat.index_select(1, b * ra + a).t(); };
  wa = wa.unsqueeze(1);
  wb = wb.unsqueeze(1);
  return (at_(b0, a0) * (1 - wa) + at_(b0, a1) * wa) * (1 - wb) + (at_(b1, a0) * (1 - wa) + at_(b1, a1) * wa) * wb;
}

at::Tensor reference(const at::Tensor& points, const at::Tensor& t, const std::vector<at::Tensor>& planes,
                     const at::Tensor& aabb) {
  const at::Tensor p = (points - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1.0;
  const at::Tensor q = at::cat({p, t.reshape({-1, 1})}, 1);
  std::vector<at::Tensor> levels;
  for (size_t l = 0; l < planes.size() / 6; ++l) {
    at::Tensor product;
    for (int k = 0; k < 6; ++k) {
      const at::Tensor& pl = planes[l * 6 + k];
      const at::Tensor s =
          sample_plane(pl.dim() == 4 ? pl[0] : pl, q.select(1, kPairs[k][0]), q.select(1, kPairs[k][1]));
      product = product.defined() ? product * s : s;
    }
    levels.push_back(product);
  }
  return at::cat(levels, 1);
}

using Fwd = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, at::TensorList, const at::Tensor&);
using Bwd = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>(const at::Tensor&, const at::Tensor&,
                                                                        const std::optional<at::Tensor>&, double,
                                                                        at::TensorList, const at::Tensor&);

void run_case(const c10::TypedOperatorHandle<Fwd>& fwd, const c10::TypedOperatorHandle<Bwd>& bwd, at::ScalarType dtype,
              bool shared_time) {
  const std::string tag = std::string(c10::toString(dtype)) + (shared_time ? " shared time" : " per-point times");
  const double tol = dtype == at::kFloat ? 2e-5 : 4e-2;
  const int64_t n = 37;
  // Level 0: F = 5, resolutions (x, y, z, t) = (6, 1, 4, 3) as 3-dim planes; level 1: F = 3, (9, 5, 2, 7)
  // as (1, F, R_b, R_a) planes.
  const int64_t res[2][4] = {{6, 1, 4, 3}, {9, 5, 2, 7}};
  const int64_t channels[2] = {5, 3};
  std::vector<at::Tensor> planes64;
  for (int l = 0; l < 2; ++l)
    for (int k = 0; k < 6; ++k) {
      at::Tensor pl = at::rand({channels[l], res[l][kPairs[k][1]], res[l][kPairs[k][0]]}, at::kDouble) + 0.5;
      planes64.push_back(l == 1 ? pl.unsqueeze(0) : pl);
    }
  const at::Tensor aabb64 = at::tensor({-2.0, 0.5, -1.0, 3.0, 1.5, 2.0}, at::kDouble).view({2, 3});
  // Points spread past the box on every side (the border clamp).
  const at::Tensor points64 =
      at::rand({n, 3}, at::kDouble) * (aabb64[1] - aabb64[0]) * 1.4 + aabb64[0] - 0.2 * (aabb64[1] - aabb64[0]);
  const double time = 0.3;
  const at::Tensor times64 = shared_time ? at::full({n}, time, at::kDouble) : at::rand({n}, at::kDouble) * 2.4 - 1.2;

  // The op's inputs are the float64 values rounded to dtype; the reference runs on those rounded values.
  auto cast = [&](const at::Tensor& t) { return t.to(dtype); };
  const at::Tensor points = cast(points64), times = cast(times64), aabb = cast(aabb64);
  std::vector<at::Tensor> planes;
  for (const auto& pl : planes64) planes.push_back(cast(pl));
  const std::optional<at::Tensor> times_arg = shared_time ? std::nullopt : std::optional<at::Tensor>(times);

  at::Tensor rp = points.to(at::kDouble).requires_grad_(), rt = times.to(at::kDouble).requires_grad_();
  if (shared_time) rt = at::full({n}, double(float(time)), at::kDouble).requires_grad_();
  std::vector<at::Tensor> rpl;
  for (const auto& pl : planes) rpl.push_back(pl.to(at::kDouble).requires_grad_());
  const at::Tensor want = reference(rp, rt, rpl, aabb.to(at::kDouble));

  const at::Tensor got = fwd.call(points, times_arg, time, planes, aabb);
  expect_close(tag + " features", got, want, tol);

  const at::Tensor v = at::randn(want.sizes(), at::kDouble).to(dtype);
  (want * v.to(at::kDouble)).sum().backward();
  auto [v_points, v_times, v_planes] = bwd.call(v, points, times_arg, time, planes, aabb);
  expect_close(tag + " v_points", v_points, rp.grad(), tol * 4);
  if (shared_time) {
    if (v_times.numel() != 0) {
      std::printf("FAIL %s: v_times should be empty\n", tag.c_str());
      ++failures;
    }
  } else {
    expect_close(tag + " v_times", v_times, rt.grad(), tol * 4);
  }
  for (size_t i = 0; i < planes.size(); ++i) {
    expect_close(tag + " v_planes[" + std::to_string(i) + "]", v_planes[i], rpl[i].grad(), tol * 4);
    if (v_planes[i].sizes() != planes[i].sizes() || v_planes[i].scalar_type() != dtype) {
      std::printf("FAIL %s: v_planes[%zu] has the wrong shape or dtype\n", tag.c_str(), i);
      ++failures;
    }
  }
}

}  // namespace

int main() {
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::hexplane_fwd", "").typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::hexplane_bwd", "").typed<Bwd>();
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (bool shared_time : {false, true}) run_case(fwd, bwd, dtype, shared_time);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
