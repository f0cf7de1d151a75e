// Calls pyops::vq_search / vq_segment_sum through the dispatcher from C++ (the libtorch build) and
// compares with a float64 brute-force search in ATen: every metric, fp32/fp64/bf16, odd sizes, ties,
// a split codebook (few rows), and the segment sums.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL %s\n", what.c_str());
    ++failures;
  }
}

// Float64 distances [N, K], as pyops/reference/vq.py defines them.
at::Tensor reference_distances(const at::Tensor& x, const at::Tensor& c, const std::string& metric) {
  const at::Tensor xd = x.to(at::kDouble), cd = c.to(at::kDouble);
  if (metric == "l2") return (xd.unsqueeze(1) - cd.unsqueeze(0)).pow(2).sum(-1);
  if (metric == "ip") return -at::mm(xd, cd.t());
  const at::Tensor xn = xd / xd.norm(2, {1}, true).clamp_min(1e-12), cn = cd / cd.norm(2, {1}, true).clamp_min(1e-12);
  return 1 - at::mm(xn, cn.t());
}

}  // namespace

int main() {
  auto search = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("pyops::vq_search", "")
                    .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                              c10::string_view, bool)>();
  auto segment_sum = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pyops::vq_segment_sum", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    const double tol = dtype == at::kDouble ? 1e-9 : 1e-4;
    for (const std::string metric : {"l2", "cosine", "ip"}) {
      for (int64_t n : {3, 300}) {
        for (int64_t num_codes : {1, 7, 1500}) {
          for (int64_t k : {int64_t(1), std::min<int64_t>(4, num_codes), num_codes}) {
            if (k > 128) continue;
            const at::Tensor x = at::randn({n, 19}).to(dtype), c = at::randn({num_codes, 19}).to(dtype);
            auto [d, i] = search.call(x, c, k, metric, true);
            const at::Tensor ref = reference_distances(x, c, metric);
            const at::Tensor want = std::get<0>(ref.sort(1, false)).narrow(1, 0, k);
            const std::string what = metric + " " + c10::toString(dtype) + " n=" + std::to_string(n) +
                                     " K=" + std::to_string(num_codes) + " k=" + std::to_string(k);
            // Distances of the returned codes must be the k smallest (indices may swap only within ties).
            const double err_d = (d.to(at::kDouble) - want).abs().max().item<double>();
            const double err_i = (ref.gather(1, i) - want).abs().max().item<double>();
            expect(err_d <= tol * 10 && err_i <= tol * 10, what + ": error " + std::to_string(err_d));
          }
        }
      }
    }
  }
  // Duplicated codes: equal distances go to the lowest index.
  at::Tensor c = at::randn({40, 16});
  c = at::cat({c, c, c});
  const at::Tensor x = c.narrow(0, 0, 40) + 0.01 * at::randn({40, 16});
  auto [d, i] = search.call(x, c, 3, "l2", true);
  const at::Tensor ar = at::arange(40, at::kLong);
  expect(at::equal(i.select(1, 0), ar) && at::equal(i.select(1, 1), ar + 40) && at::equal(i.select(1, 2), ar + 80),
         "ties go to the lowest index");

  const at::Tensor values = at::randn({500, 37});
  const at::Tensor idx = at::randint(0, 11, {500}, at::kLong);
  auto [sums, counts] = segment_sum.call(values, idx, 12);
  const at::Tensor want_sums = at::zeros({12, 37}).index_add_(0, idx, values);
  expect((sums - want_sums).abs().max().item<double>() < 1e-4, "segment sums");
  expect(at::equal(counts, at::bincount(idx, {}, 12).to(at::kFloat)), "segment counts");
  bool raised = false;
  try {
    segment_sum.call(values, idx, 5);
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "out-of-range indices raise");
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
