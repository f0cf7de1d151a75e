// Calls pyops::derf_fwd / derf_bwd through the dispatcher from C++ (the libtorch build) and compares with
// ATen's own erf on random data, channels-last and channels-first, fp32 and bf16.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  if (!(err <= tol)) {
    std::printf("FAIL %s: max error %.3e > %.1e\n", what, err, tol);
    ++failures;
  }
}

}  // namespace

int main() {
  auto fwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("pyops::derf_fwd", "")
                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t)>();
  auto bwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("pyops::derf_bwd", "")
                 .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                     const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t)>();
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    for (int64_t channel_dim : {-1, 1}) {
      const at::Tensor x = at::randn({5, 37, 9}).to(dtype);
      const int64_t c = x.size(channel_dim);
      const at::Tensor alpha = at::rand({c}) + 0.5, shift = at::randn({1}), weight = at::randn({c}),
                       bias = at::randn({c});
      std::vector<int64_t> shape(3, 1);
      shape[channel_dim < 0 ? 2 : channel_dim] = c;
      const at::Tensor xf = x.to(at::kFloat);
      const at::Tensor y_ref = weight.view(shape) * at::erf(alpha.view(shape) * xf + shift) + bias.view(shape);
      expect_close("forward", fwd.call(x, alpha, shift, weight, bias, channel_dim), y_ref, tol * 4);

      const at::Tensor dy = at::randn(x.sizes()).to(dtype);
      const at::Tensor z = alpha.view(shape) * xf + shift;
      const at::Tensor g = dy.to(at::kFloat) * weight.view(shape) * 1.1283791670955126 * at::exp(-z * z);
      std::vector<int64_t> reduce_dims;
      for (int64_t d = 0; d < 3; ++d)
        if (d != (channel_dim < 0 ? 2 : channel_dim)) reduce_dims.push_back(d);
      auto [gx, ga, gs, gw, gb] = bwd.call(dy, x, alpha, shift, weight, bias, channel_dim);
      expect_close("grad_x", gx, g * alpha.view(shape), tol * 4);
      expect_close("grad_alpha", ga, (g * xf).sum(reduce_dims), tol * 40);
      expect_close("grad_shift", gs, g.sum().view({1}), tol * 40);
      expect_close("grad_weight", gw, (dy.to(at::kFloat) * at::erf(z)).sum(reduce_dims), tol * 40);
      expect_close("grad_bias", gb, dy.to(at::kFloat).sum(reduce_dims), tol * 40);
    }
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
