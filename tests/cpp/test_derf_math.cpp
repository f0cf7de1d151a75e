// Unit tests of csrc/include/pyops/derf_math.h, the element math every native kernel runs: the forward
// against erf directly, and the backward against central finite differences, in float and double.
#include <cmath>
#include <cstdio>

#include "pyops/derf_math.h"

namespace {

int failures = 0;

void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g (tol %.1e)\n", what, got, want, tol);
    ++failures;
  }
}

template <typename T>
void check_point(T x, T dy, T alpha, T shift, T weight, T bias, double tol) {
  using pyops::derf::backward;
  using pyops::derf::forward;
  expect_near("forward", forward(x, alpha, shift, weight, bias),
              double(weight) * std::erf(double(alpha) * x + shift) + bias, tol);
  // d/dv of dy * forward(...) by central differences in double, for each input v.
  const double h = 1e-6;
  auto loss = [&](double xv, double a, double s, double w) {
    return double(dy) * pyops::derf::forward<double>(xv, a, s, w, double(bias));
  };
  const auto g = backward(x, dy, alpha, shift, weight);
  expect_near("dx", g.dx, (loss(x + h, alpha, shift, weight) - loss(x - h, alpha, shift, weight)) / (2 * h), tol);
  expect_near("dalpha term", g.grad_z_times_x,
              (loss(x, alpha + h, shift, weight) - loss(x, alpha - h, shift, weight)) / (2 * h), tol);
  expect_near("dshift term", g.grad_z,
              (loss(x, alpha, shift + h, weight) - loss(x, alpha, shift - h, weight)) / (2 * h), tol);
  expect_near("dweight term", g.grad_y_times_erf,
              (loss(x, alpha, shift, weight + h) - loss(x, alpha, shift, weight - h)) / (2 * h), tol);
}

}  // namespace

int main() {
  const double points[][6] = {{0.3, 1.0, 0.5, 0.0, 1.0, 0.0},   {-1.7, -0.4, 0.8, 0.2, 1.3, -0.1},
                              {2.5, 0.9, 1.2, -0.3, 0.7, 0.4},  {0.0, 1.0, 0.5, 0.0, 1.0, 0.0},
                              {-4.0, 2.0, 1.0, 0.5, -0.9, 1.0}, {10.0, 1.0, 1.0, 0.0, 1.0, 0.0}};
  for (const auto& p : points) {
    check_point<double>(p[0], p[1], p[2], p[3], p[4], p[5], 1e-8);
    check_point<float>(p[0], p[1], p[2], p[3], p[4], p[5], 2e-6);
  }
  // erf saturates: far from zero the gradient through z vanishes instead of overflowing.
  const auto far = pyops::derf::backward<float>(1e4f, 1.0f, 1.0f, 0.0f, 1.0f);
  expect_near("saturated dx", far.dx, 0.0, 0.0);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
