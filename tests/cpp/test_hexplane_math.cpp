// Unit tests of csrc/include/pyops/hexplane_math.h, the point math every native HexPlane kernel runs: the lerp
// coordinates against the reference's rule (clamp, cell, weight) at interior points, cell boundaries, both
// borders, outside the box and for one-sample axes; the bilinear VJP against central finite differences;
// the chain q -> weight -> sample by finite differences; and the plane order.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "pyops/hexplane_math.h"

namespace {

using namespace pyops::hexplane;

int failures = 0;

void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g (tol %.1e)\n", what, got, want, tol);
    ++failures;
  }
}

void expect_eq(const char* what, long long got, long long want) {
  if (got != want) {
    std::printf("FAIL %s: got %lld want %lld\n", what, got, want);
    ++failures;
  }
}

// The reference's _lerp_coords in double: u = clamp((q + 1) / 2 (R - 1), 0, R - 1), i0 = clamp(floor(u), 0,
// R - 2), i1 = min(i0 + 1, R - 1), w = u - i0.
void reference_lerp(double q, int64_t size, int64_t& i0, int64_t& i1, double& w) {
  const double u = std::min(std::max((q + 1) * 0.5 * double(size - 1), 0.0), double(size - 1));
  i0 = static_cast<int64_t>(std::floor(u));
  i0 = std::max<int64_t>(0, std::min<int64_t>(i0, std::max<int64_t>(size - 2, 0)));
  i1 = std::min<int64_t>(i0 + 1, size - 1);
  w = u - double(i0);
}

template <typename T>
void check_lerp(double q, int64_t size, double tol) {
  int64_t i0, i1;
  double w;
  reference_lerp(q, size, i0, i1, w);
  const Lerp<T> l = lerp_coord<T>(T(q), size);
  expect_eq("i0", l.i0, i0);
  expect_eq("i1", l.i1, i1);
  expect_near("w", l.w, w, tol);
  // dw/dq: (R - 1) / 2 strictly inside, 0 strictly outside (finite differences away from the clamp kinks).
  const double u = (q + 1) * 0.5 * double(size - 1);
  if (size > 1 && u > 1e-3 && u < double(size - 1) - 1e-3 && std::fabs(u - std::round(u)) > 1e-3) {
    const double h = 1e-6;
    int64_t a0, a1, b0, b1;
    double wp, wm;
    reference_lerp(q + h, size, a0, a1, wp);
    reference_lerp(q - h, size, b0, b1, wm);
    expect_near("dw (inside)", l.dw, (wp - wm) / (2 * h), 1e-6);
  }
  if (size == 1 || u < 0 || u > double(size - 1)) expect_near("dw (clamped)", l.dw, 0.0, 0.0);
}

template <typename T>
void check_bilinear(const double p[4], double wa, double wb, double g, double tol) {
  const T s = bilinear<T>(T(p[0]), T(p[1]), T(p[2]), T(p[3]), T(wa), T(wb));
  const double want = (p[0] * (1 - wa) + p[1] * wa) * (1 - wb) + (p[2] * (1 - wa) + p[3] * wa) * wb;
  expect_near("bilinear", s, want, tol);
  const auto r = bilinear_vjp<T>(T(p[0]), T(p[1]), T(p[2]), T(p[3]), T(wa), T(wb), T(g));
  const double h = 1e-6;
  auto loss = [&](const double* c, double a, double b) { return g * bilinear<double>(c[0], c[1], c[2], c[3], a, b); };
  const double grads[4] = {r.v00, r.v01, r.v10, r.v11};
  for (int i = 0; i < 4; ++i) {
    double cp[4] = {p[0], p[1], p[2], p[3]}, cm[4] = {p[0], p[1], p[2], p[3]};
    cp[i] += h;
    cm[i] -= h;
    expect_near("v_corner", grads[i], (loss(cp, wa, wb) - loss(cm, wa, wb)) / (2 * h), tol);
  }
  expect_near("v_wa", r.v_wa, (loss(p, wa + h, wb) - loss(p, wa - h, wb)) / (2 * h), tol);
  expect_near("v_wb", r.v_wb, (loss(p, wa, wb + h) - loss(p, wa, wb - h)) / (2 * h), tol);
}

// A plane sampled at normalised (qa, qb): d sample / d qa through lerp_coord and bilinear_vjp against finite
// differences of the whole chain, away from cell boundaries and the clamp.
void check_chain(double qa, double qb, int64_t ra, int64_t rb) {
  auto plane = [](int64_t b, int64_t a) { return std::sin(0.7 * double(a) + 1.3 * double(b)) + 0.1 * double(a); };
  auto sample = [&](double x, double y) {
    const auto la = lerp_coord<double>(x, ra), lb = lerp_coord<double>(y, rb);
    return bilinear<double>(plane(lb.i0, la.i0), plane(lb.i0, la.i1), plane(lb.i1, la.i0), plane(lb.i1, la.i1), la.w,
                            lb.w);
  };
  const auto la = lerp_coord<double>(qa, ra), lb = lerp_coord<double>(qb, rb);
  const auto r = bilinear_vjp<double>(plane(lb.i0, la.i0), plane(lb.i0, la.i1), plane(lb.i1, la.i0),
                                      plane(lb.i1, la.i1), la.w, lb.w, 1.0);
  const double h = 1e-7;
  expect_near("d sample / d qa", r.v_wa * la.dw, (sample(qa + h, qb) - sample(qa - h, qb)) / (2 * h), 1e-6);
  expect_near("d sample / d qb", r.v_wb * lb.dw, (sample(qa, qb + h) - sample(qa, qb - h)) / (2 * h), 1e-6);
}

}  // namespace

int main() {
  // Interior, exactly on cells, both borders (the far border takes the last cell with weight 1), outside.
  const double qs[] = {-0.73, 0.1, 0.41, 0.999, -1.0, 1.0, -1.5, 2.5, 0.0, 1.0 / 3.0, -0.25};
  for (int64_t size : {1, 2, 3, 7, 64}) {
    for (double q : qs) {
      check_lerp<double>(q, size, 1e-12);
      check_lerp<float>(q, size, 1e-5);
    }
  }
  // The far border: u = R - 1 gives the last cell (R - 2, R - 1) with weight 1 and the inside slope.
  {
    const auto l = lerp_coord<double>(1.0, 5);
    expect_eq("far border i0", l.i0, 3);
    expect_eq("far border i1", l.i1, 4);
    expect_near("far border w", l.w, 1.0, 0.0);
    expect_near("far border dw", l.dw, 2.0, 0.0);
    const auto n = lerp_coord<double>(-1.0, 5);
    expect_near("near border dw", n.dw, 2.0, 0.0);
  }
  // One sample: cell 0, weight 0, no gradient, for any q.
  for (double q : {-3.0, -1.0, 0.2, 1.0, 7.0}) {
    const auto l = lerp_coord<float>(float(q), 1);
    expect_eq("R=1 i0", l.i0, 0);
    expect_eq("R=1 i1", l.i1, 0);
    expect_near("R=1 w", l.w, 0.0, 0.0);
    expect_near("R=1 dw", l.dw, 0.0, 0.0);
  }
  // NaN or inf never index memory; NaN propagates through the weight.
  {
    const auto l = lerp_coord<float>(std::numeric_limits<float>::quiet_NaN(), 9);
    expect_eq("NaN i0", l.i0, 0);
    expect_eq("NaN i1", l.i1, 1);
    if (!std::isnan(l.w)) {
      std::printf("FAIL NaN weight: got %g\n", double(l.w));
      ++failures;
    }
    const auto hi = lerp_coord<float>(std::numeric_limits<float>::infinity(), 9);
    expect_eq("+inf i0", hi.i0, 7);
    expect_eq("+inf i1", hi.i1, 8);
    const auto lo = lerp_coord<float>(-std::numeric_limits<float>::infinity(), 9);
    expect_eq("-inf i0", lo.i0, 0);
  }
  const double corners[][4] = {{0.3, -1.2, 0.8, 2.0}, {1.0, 1.0, 1.0, 1.0}, {-0.5, 0.0, 3.0, -2.5}};
  const double weights[][2] = {{0.25, 0.6}, {0.0, 1.0}, {0.93, 0.07}};
  for (const auto& c : corners)
    for (const auto& w : weights) {
      check_bilinear<double>(c, w[0], w[1], -1.7, 1e-8);
      check_bilinear<float>(c, w[0], w[1], 0.6, 2e-5);
    }
  check_chain(0.137, -0.41, 9, 5);
  check_chain(-0.9, 0.77, 4, 33);
  // Plane order xy xz xt yz yt zt.
  const int want_a[6] = {0, 0, 0, 1, 1, 2}, want_b[6] = {1, 2, 3, 2, 3, 3};
  for (int k = 0; k < kPlanesPerLevel; ++k) {
    expect_eq("plane_a", plane_a(k), want_a[k]);
    expect_eq("plane_b", plane_b(k), want_b[k]);
  }
  expect_near("normalize", normalize<double>(2.5, -1.0, 2.0 / 5.0), 0.4, 1e-15);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
