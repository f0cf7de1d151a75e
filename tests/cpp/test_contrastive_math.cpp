// Unit tests of csrc/include/pyops/contrastive_math.h: the log-sum-exp merge against a direct log-sum-exp, the
// side loss on hand-checked cases, and G (the loss's gradient w.r.t. the logits) against central finite
// differences of the loss, with rows and columns that have no positive.
#include <cmath>
#include <cstdio>
#include <vector>

#include "pyops/contrastive_math.h"

namespace {

int failures = 0;

void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g (tol %.1e)\n", what, got, want, tol);
    ++failures;
  }
}

double logsumexp(const std::vector<double>& x) {
  double mx = -INFINITY, sum = 0;
  for (double v : x) mx = std::fmax(mx, v);
  for (double v : x) sum += std::exp(v - mx);
  return mx + std::log(sum);
}

// Merges the parts one by one (the running column state across chunks) and compares with the whole set.
template <typename T>
void check_merge(const std::vector<std::vector<double>>& parts, double tol) {
  T max = -INFINITY, sum = 0;
  std::vector<double> all;
  for (const auto& part : parts) {
    double part_max = -INFINITY, part_sum = 0;
    for (double v : part) part_max = std::fmax(part_max, v);
    for (double v : part) part_sum += std::exp(v - part_max);
    pyops::contrastive::merge_lse<T>(max, sum, T(part_max), T(part_sum));
    all.insert(all.end(), part.begin(), part.end());
  }
  expect_near("merge_lse", double(max) + std::log(double(sum)), logsumexp(all), tol);
}

// Dense loss of logits s [n][m] with positives pos, weighted by v_row, v_col (the backward's incoming gradients).
struct Case {
  int n, m;
  std::vector<double> s, v_row, v_col;
  std::vector<int> pos;

  double side(bool rows, int idx, const std::vector<double>& x) const {
    const int len = rows ? m : n;
    std::vector<double> vals(len);
    double possum = 0, npos = 0;
    for (int t = 0; t < len; ++t) {
      const int e = rows ? idx * m + t : t * m + idx;
      vals[t] = x[e];
      if (pos[e]) possum += x[e], npos += 1;
    }
    return pyops::contrastive::side_loss(logsumexp(vals), possum, npos);
  }
  double loss(const std::vector<double>& x) const {
    double total = 0;
    for (int i = 0; i < n; ++i) total += v_row[i] * side(true, i, x);
    for (int j = 0; j < m; ++j) total += v_col[j] * side(false, j, x);
    return total;
  }
};

void check_grad(const Case& c) {
  std::vector<double> rn(c.n, 0), cn(c.m, 0), rl(c.n), cl(c.m);
  for (int i = 0; i < c.n; ++i)
    for (int j = 0; j < c.m; ++j) rn[i] += c.pos[i * c.m + j], cn[j] += c.pos[i * c.m + j];
  for (int i = 0; i < c.n; ++i)
    rl[i] = logsumexp(std::vector<double>(c.s.begin() + i * c.m, c.s.begin() + (i + 1) * c.m));
  for (int j = 0; j < c.m; ++j) {
    std::vector<double> col(c.n);
    for (int i = 0; i < c.n; ++i) col[i] = c.s[i * c.m + j];
    cl[j] = logsumexp(col);
  }
  const double h = 1e-6;
  for (int i = 0; i < c.n; ++i) {
    for (int j = 0; j < c.m; ++j) {
      const double a = rn[i] > 0 ? c.v_row[i] : 0, b = cn[j] > 0 ? c.v_col[j] : 0;
      double g = pyops::contrastive::grad_softmax_terms(c.s[i * c.m + j], a, rl[i], b, cl[j]);
      if (c.pos[i * c.m + j]) g -= a / rn[i] + b / cn[j];
      std::vector<double> up = c.s, down = c.s;
      up[i * c.m + j] += h, down[i * c.m + j] -= h;
      expect_near("G vs finite differences", g, (c.loss(up) - c.loss(down)) / (2 * h), 1e-6);
    }
  }
}

}  // namespace

int main() {
  // Parts far apart in scale (logit_scale = 100 territory) and a part that raises the max late.
  check_merge<double>({{0.5, -1.0, 2.0}, {3.0}, {-4.0, 1.5}}, 1e-14);
  check_merge<double>({{-100.0, -90.0}, {95.0, 100.0}, {-100.0}}, 1e-14);
  check_merge<float>({{0.5f, -1.0f, 2.0f}, {30.0f, 29.5f}, {-4.0f}}, 1e-6);

  expect_near("side_loss", pyops::contrastive::side_loss(2.5, 3.0, 2.0), 1.0, 1e-15);
  expect_near("side_loss without a positive", pyops::contrastive::side_loss(2.5, 0.0, 0.0), 0.0, 0.0);
  // Rows only (b = 0): no column term, even where exp(s - col_lse) would overflow.
  expect_near("grad rows only", pyops::contrastive::grad_softmax_terms(1000.0, 0.5, 1000.0, 0.0, 0.0), 0.5, 1e-15);

  // 3 x 4 logits: row 2 and column 3 have no positive; row 0 has two.
  Case c{3,
         4,
         {1.2, -0.3, 0.8, 2.0, -1.1, 0.4, 0.9, -0.2, 0.3, 1.7, -0.6, 0.1},
         {0.7, -0.4, 1.3},
         {0.2, 0.9, -0.5, 1.1},
         {1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}};
  check_grad(c);
  c.v_col.assign(4, 0.0);  // symmetric = false
  check_grad(c);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
