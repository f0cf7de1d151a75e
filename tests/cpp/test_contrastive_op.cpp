// Calls pyops::contrastive_fwd / contrastive_bwd through the dispatcher from C++ (the libtorch build) and compares
// with the same loss computed densely by ATen in float64: labels with N != M, groups with rows and columns that
// have no positive, symmetric or not, fp32 and bf16, several chunks (PYOPS_CONTRASTIVE_CHUNK_ROWS).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  if (!(err <= tol)) {
    std::printf("FAIL %s: max error %.3e > %.1e\n", what, err, tol);
    ++failures;
  }
}

// One side of the dense float64 loss: per-row lse, positive count, loss, and d(sum(v * loss))/dS.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> side(const at::Tensor& s, const at::Tensor& pos,
                                                                const at::Tensor& v) {
  const at::Tensor npos = pos.sum(1), lse = at::logsumexp(s, {1});
  const at::Tensor has = npos > 0;
  const at::Tensor loss = at::where(has, lse - (s * pos).sum(1) / npos.clamp_min(1), at::zeros_like(lse));
  const at::Tensor a = at::where(has, v, at::zeros_like(v));
  const at::Tensor g = a.unsqueeze(1) * (at::softmax(s, 1) - pos / npos.clamp_min(1).unsqueeze(1));
  return {lse, npos, loss, g};
}

}  // namespace

int main() {
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
  using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::contrastive_fwd", "").typed<Fwd>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("pyops::contrastive_bwd", "").typed<Bwd>();
  setenv("PYOPS_CONTRASTIVE_CHUNK_ROWS", "6", 1);  // 29 rows: five chunks, the last one ragged
  at::manual_seed(0);
  const int64_t n = 29, m = 41, d = 13;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const double tol = dtype == at::kFloat ? 2e-5 : 2e-2;
    for (bool use_groups : {false, true}) {
      for (bool symmetric : {true, false}) {
        const at::Tensor q = at::randn({n, d}).div(4).to(dtype), k = at::randn({m, d}).div(4).to(dtype);
        const at::Tensor scale = at::full({}, 14.0);
        at::Tensor qg = at::randint(0, m, {n}, at::kLong), kg = at::arange(m, at::kLong);
        if (use_groups) {
          qg = at::randint(0, 4, {n}, at::kLong), kg = at::randint(0, 5, {m}, at::kLong);  // group 4: columns only
          qg.index_put_({0}, 7);                                                           // a row without positive
        }
        const at::Tensor qd = q.to(at::kDouble), kd = k.to(at::kDouble);
        const at::Tensor dots = at::mm(qd, kd.t()), s = 14.0 * dots;
        const at::Tensor pos = (qg.unsqueeze(1) == kg.unsqueeze(0)).to(at::kDouble);
        const at::Tensor v_row = at::randn({n}, at::kDouble), v_col = at::randn({symmetric ? m : 0}, at::kDouble);
        auto [r_lse, r_npos, r_loss, g_rows] = side(s, pos, v_row);
        at::Tensor g = g_rows;

        auto [row_loss, col_loss, row_lse, col_lse, row_npos, col_npos] = fwd.call(q, k, scale, qg, kg, symmetric);
        expect_close("row_loss", row_loss, r_loss, tol * 10);
        expect_close("row_lse", row_lse, r_lse, tol * 10);
        expect_close("row_npos", row_npos, r_npos, 0);
        if (symmetric) {
          auto [c_lse, c_npos, c_loss, g_cols] = side(s.t(), pos.t(), v_col);
          expect_close("col_loss", col_loss, c_loss, tol * 10);
          expect_close("col_lse", col_lse, c_lse, tol * 10);
          expect_close("col_npos", col_npos, c_npos, 0);
          g = g + g_cols.t();
        } else if (col_loss.numel() != 0 || col_lse.numel() != 0 || col_npos.numel() != 0) {
          std::printf("FAIL col_* not empty without symmetric\n");
          ++failures;
        }
        auto [v_q, v_k, v_scale] = bwd.call(v_row.to(at::kFloat), v_col.to(at::kFloat), q, k, scale, qg, kg, row_lse,
                                            col_lse, row_npos, col_npos, symmetric);
        expect_close("v_q", v_q, 14.0 * at::mm(g, kd), tol * 10);
        expect_close("v_k", v_k, 14.0 * at::mm(g.t(), qd), tol * 10);
        expect_close("v_logit_scale", v_scale, (g * dots).sum(), tol * 10);
      }
    }
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
