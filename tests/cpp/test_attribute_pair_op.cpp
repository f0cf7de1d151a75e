// Calls pyops::attribute_pair_fwd / attribute_pair_bwd through the dispatcher from C++ (the libtorch build) and
// compares with an ATen float64 computation of the spec, for pooled and masked token inputs, fp32 and bf16.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>
#include <optional>
#include <vector>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  if (!(err <= tol)) {
    std::printf("FAIL %s: max error %.3e > %.1e\n", what, err, tol);
    ++failures;
  }
}

// Per-pair losses of the spec in float64 (autograd on): masked mean-pool, F.normalize, logsumexp - cell (0, 0).
at::Tensor reference(const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& s, const at::Tensor& w) {
  at::Tensor x = ex, y = ey;
  if (ex.dim() == 4) {
    const at::Tensor cnt = w.sum(-1, true).clamp_min(1);
    x = (ex * w.unsqueeze(-1)).sum(-2) / cnt;
    y = (ey * w.unsqueeze(-1)).sum(-2) / cnt;
  }
  const at::Tensor nx = x / x.norm(2, -1, true).clamp_min(1e-12), ny = y / y.norm(2, -1, true).clamp_min(1e-12);
  const at::Tensor cells = s * at::bmm(nx, ny.transpose(1, 2));
  return at::logsumexp(cells.flatten(1), 1) - cells.select(1, 0).select(1, 0);
}

}  // namespace

int main() {
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::attribute_pair_fwd", "").typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::attribute_pair_bwd", "").typed<Bwd>();
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const double tol = dtype == at::kFloat ? 1e-4 : 5e-2;
    for (bool tokens : {false, true}) {
      const std::vector<int64_t> shape = tokens ? std::vector<int64_t>{4, 3, 6, 37} : std::vector<int64_t>{5, 4, 65};
      const at::Tensor ex = at::randn(shape).to(dtype), ey = at::randn(shape).to(dtype);
      const at::Tensor scale = at::full({}, 10.0);
      std::optional<at::Tensor> mask;
      at::Tensor w;
      if (tokens) {
        mask = at::rand({shape[0], shape[1], shape[2]}) < 0.6;
        mask->select(0, 0).select(0, 1).fill_(false);  // an all-masked slot
        w = mask->to(at::kDouble);
      }
      auto [loss, cos, norms, px, py] = fwd.call(ex, ey, scale, mask);
      const at::Tensor x64 = ex.to(at::kDouble).requires_grad_(), y64 = ey.to(at::kDouble).requires_grad_();
      const at::Tensor s64 = scale.to(at::kDouble).requires_grad_();
      const at::Tensor want = reference(x64, y64, s64, w);
      expect_close("loss", loss, want, tol);
      const at::Tensor v_loss = at::rand({shape[0]});
      auto grads = torch::autograd::grad({want}, {x64, y64, s64}, {v_loss.to(at::kDouble)});
      auto [v_ex, v_ey, v_s] = bwd.call(v_loss, ex, ey, scale, mask, cos, norms, px, py);
      expect_close("v_ex", v_ex, grads[0], tol);
      expect_close("v_ey", v_ey, grads[1], tol);
      expect_close("v_logit_scale", v_s, grads[2], tol * 10);
    }
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
