// Unit tests of csrc/include/pyops/attribute_pair_math.h: the pair loss against a direct logsumexp, and the
// backward coefficients (pair_backward) against central finite differences of the loss as a function of the raw
// pooled vectors and the logit scale, in double and float, including a zero (all-masked) vector.
#include <cmath>
#include <cstdio>
#include <vector>

#include "pyops/attribute_pair_math.h"

namespace {

int failures = 0;

void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g (tol %.1e)\n", what, got, want, tol);
    ++failures;
  }
}

// The loss of one pair from raw vectors p (A x D, x side) and q (A x D, y side), in double, as the spec does.
double loss_of(const std::vector<double>& p, const std::vector<double>& q, int A, int D, double s) {
  std::vector<double> r(2 * A), cos(A * A);
  for (int k = 0; k < 2 * A; ++k) {
    const double* v = k < A ? &p[k * D] : &q[(k - A) * D];
    double sq = 0;
    for (int d = 0; d < D; ++d) sq += v[d] * v[d];
    r[k] = std::sqrt(sq);
  }
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += p[i * D + d] * q[j * D + d];
      cos[i * A + j] = dot / (pyops::attribute_pair::clamp_norm(r[i]) * pyops::attribute_pair::clamp_norm(r[A + j]));
    }
  return pyops::attribute_pair::pair_loss(cos.data(), A, s);
}

template <typename T>
void check_pair(int A, int D, double s, double v, bool zero_slot, unsigned seed, double tol) {
  std::vector<double> p(A * D), q(A * D);
  unsigned state = seed;
  auto rnd = [&] {
    state = state * 1664525u + 1013904223u;
    return (state >> 8) / double(1 << 24) * 2 - 1;
  };
  for (auto& x : p) x = rnd();
  for (auto& x : q) x = rnd();
  if (zero_slot)
    for (int d = 0; d < D; ++d) p[(A - 1) * D + d] = 0;  // an all-masked slot pools to zero
  // Cosines and norms as the kernels save them, in T.
  std::vector<T> cos(A * A), r(2 * A), alpha(A * A), beta(A), gamma(A);
  std::vector<double> rd(2 * A);
  for (int k = 0; k < 2 * A; ++k) {
    const double* x = k < A ? &p[k * D] : &q[(k - A) * D];
    double sq = 0;
    for (int d = 0; d < D; ++d) sq += x[d] * x[d];
    rd[k] = std::sqrt(sq);
    r[k] = T(rd[k]);
  }
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += p[i * D + d] * q[j * D + d];
      cos[i * A + j] =
          T(dot / (pyops::attribute_pair::clamp_norm(rd[i]) * pyops::attribute_pair::clamp_norm(rd[A + j])));
    }
  // The loss itself: logsumexp over the cells minus the (0, 0) cell.
  double lse_sum = 0;
  for (int k = 0; k < A * A; ++k) lse_sum += std::exp(s * double(cos[k]));
  expect_near("pair_loss", pyops::attribute_pair::pair_loss(cos.data(), A, T(s)),
              std::log(lse_sum) - s * double(cos[0]), tol);
  const T v_s = pyops::attribute_pair::pair_backward(cos.data(), r.data(), r.data() + A, A, T(s), T(v), alpha.data(),
                                                     beta.data(), gamma.data());
  const double h = 1e-6;
  expect_near("v_logit_scale", v_s, v * (loss_of(p, q, A, D, s + h) - loss_of(p, q, A, D, s - h)) / (2 * h), tol);
  for (int side = 0; side < 2; ++side) {
    for (int a = 0; a < A; ++a) {
      if (side == 0 && zero_slot && a == A - 1) continue;  // F.normalize's gradient at 0 is 1/eps: not a FD check
      for (int d = 0; d < D; ++d) {
        auto& vec = side ? q : p;
        const double keep = vec[a * D + d];
        vec[a * D + d] = keep + h;
        const double up = loss_of(p, q, A, D, s);
        vec[a * D + d] = keep - h;
        const double down = loss_of(p, q, A, D, s);
        vec[a * D + d] = keep;
        // The coefficients' gradient: own coefficient * own row + sum_k alpha * other side's row k.
        double g = (side ? gamma[a] : beta[a]) * keep;
        for (int k = 0; k < A; ++k) g += (side ? alpha[k * A + a] : alpha[a * A + k]) * (side ? p : q)[k * D + d];
        expect_near(side ? "v_q" : "v_p", g, v * (up - down) / (2 * h), tol);
      }
    }
  }
}

}  // namespace

int main() {
  for (int A : {2, 3, 5}) {
    for (double s : {1.0, 10.0}) {
      check_pair<double>(A, 7, s, 0.7, false, 11u * A, 1e-6);
      check_pair<float>(A, 7, s, 0.7, false, 13u * A, 5e-3);
      check_pair<double>(A, 6, s, -1.3, true, 17u * A, 1e-6);
    }
  }
  // A large scale saturates the softmax without overflow.
  std::vector<float> cos = {1.f, -1.f, 0.5f, 0.2f};
  expect_near("saturated loss", pyops::attribute_pair::pair_loss(cos.data(), 2, 1000.f), 0.0, 1e-6);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
