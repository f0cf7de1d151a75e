// Unit tests of csrc/include/pyops/anchors_math.h, the math every native anchor kernel runs: each VJP against
// central finite differences of its forward (in double, and in float for the fp32 kernels), the blend modes and
// their kinks, and the kept / dropped / invisible rules of the epilogue.
#include <cmath>
#include <cstdio>
#include <initializer_list>

#include "pyops/anchors_math.h"

namespace {

using namespace pyops::anchors;

int failures = 0;

void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g (tol %.1e)\n", what, got, want, tol);
    ++failures;
  }
}

constexpr double kH = 1e-6;

// d(loss)/d(x[i]) by central differences, loss(x) a function of a double array x of size n.
template <int N, typename Loss>
void numeric_grad(Loss loss, const double* x, double* g) {
  for (int i = 0; i < N; ++i) {
    double xp[N], xm[N];
    for (int j = 0; j < N; ++j) xp[j] = xm[j] = x[j];
    xp[i] += kH;
    xm[i] -= kH;
    g[i] = (loss(xp) - loss(xm)) / (2 * kH);
  }
}

template <typename T>
void check_normalize(const double* x4, const double* v4, double v_n, double tol) {
  // N = 4 (quaternions) without v_n, N = 3 (view directions) with it.
  auto loss4 = [&](const double* x) {
    double y[4];
    normalize<double, 4>(x, y);
    return y[0] * v4[0] + y[1] * v4[1] + y[2] * v4[2] + y[3] * v4[3];
  };
  double want[4];
  numeric_grad<4>(loss4, x4, want);
  T xt[4] = {T(x4[0]), T(x4[1]), T(x4[2]), T(x4[3])}, vt[4] = {T(v4[0]), T(v4[1]), T(v4[2]), T(v4[3])};
  T got[4] = {0, 0, 0, 0};
  normalize_vjp<T, 4>(xt, vt, T(0), got);
  for (int i = 0; i < 4; ++i) expect_near("normalize<4> vjp", got[i], want[i], tol);

  const double cam[3] = {0.3, -0.2, 0.1};
  auto loss3 = [&](const double* a) {
    double dir[3];
    const double dist = view_dir<double>(a, cam, dir);
    return dir[0] * v4[0] + dir[1] * v4[1] + dir[2] * v4[2] + v_n * dist;
  };
  double want3[3];
  numeric_grad<3>(loss3, x4, want3);
  const T camt[3] = {T(cam[0]), T(cam[1]), T(cam[2])};
  T got3[3] = {0, 0, 0};
  view_dir_vjp<T>(xt, camt, vt, T(v_n), got3);
  for (int i = 0; i < 3; ++i) expect_near("view_dir vjp", got3[i], want3[i], tol);
}

template <typename T>
void check_blend(double offset, double decay, double tau, double lambda, int mode, double v_w, double tol) {
  double want[2];
  const double x[2] = {offset, decay};
  numeric_grad<2>([&](const double* p) { return v_w * blend_weight<double>(p[0], p[1], tau, lambda, mode); }, x, want);
  const BlendGrad<T> g = blend_weight_vjp<T>(T(v_w), T(offset), T(decay), T(tau), T(lambda), mode);
  expect_near("blend v_offset", g.v_offset, want[0], tol);
  expect_near("blend v_decay", g.v_decay, want[1], tol);
  // The weight itself: exp(-lambda * decay * dist).
  const double diff = tau - offset;
  const double dist = mode == 0 ? std::fabs(diff) : mode == 1 ? std::fmax(diff, 0.0) : std::fmax(-diff, 0.0);
  expect_near("blend weight", blend_weight<T>(T(offset), T(decay), T(tau), T(lambda), mode),
              std::exp(-lambda * decay * dist), tol);
}

// Epilogue inputs packed as one array: h (11), offset (3), anchor_scale (6), anchor (3), s (1).
constexpr int kEpi = 24;

template <typename T>
struct Unpacked {
  HeadOut<T> h;
  T offset[3], as[6], anchor[3], s;
  explicit Unpacked(const double* x) {
    h.opacity = T(x[0]);
    for (int i = 0; i < 7; ++i) h.cov[i] = T(x[1 + i]);
    for (int i = 0; i < 3; ++i) h.color[i] = T(x[8 + i]), offset[i] = T(x[11 + i]), anchor[i] = T(x[20 + i]);
    for (int i = 0; i < 6; ++i) as[i] = T(x[14 + i]);
    s = T(x[23]);
  }
};

template <typename T>
GaussianGrad<T> cotangents(const double* c) {
  GaussianGrad<T> v;
  for (int i = 0; i < 3; ++i) v.v_mean[i] = T(c[i]), v.v_scale[i] = T(c[3 + i]), v.v_color[i] = T(c[6 + i]);
  for (int i = 0; i < 4; ++i) v.v_quat[i] = T(c[9 + i]);
  v.v_opacity = T(c[13]);
  return v;
}

double epilogue_loss(const double* x, const double* c) {
  const Unpacked<double> u(x);
  const Gaussian<double> g = visible_gaussian<double>(u.h, u.anchor, u.offset, u.as, u.s);
  double l = g.opacity * c[13];
  for (int i = 0; i < 3; ++i) l += g.mean[i] * c[i] + g.scale[i] * c[3 + i] + g.color[i] * c[6 + i];
  for (int i = 0; i < 4; ++i) l += g.quat[i] * c[9 + i];
  return l;
}

template <typename T>
void check_epilogue(const double* x, const double* c, double tol) {
  double want[kEpi];
  numeric_grad<kEpi>([&](const double* p) { return epilogue_loss(p, c); }, x, want);
  const Unpacked<T> u(x);
  const Gaussian<T> g = visible_gaussian<T>(u.h, u.anchor, u.offset, u.as, u.s);
  if (!g.kept) {
    std::printf("FAIL epilogue point not kept\n");
    ++failures;
    return;
  }
  HeadOut<T> v_h{};
  T v_off[3], v_as[6] = {0, 0, 0, 0, 0, 0}, v_anchor[3] = {0, 0, 0}, v_s = 0;
  kept_gaussian_vjp<T>(u.h, cotangents<T>(c), u.offset, u.as, u.s, v_h, v_off, v_as, v_anchor, v_s);
  expect_near("v_h opacity", v_h.opacity, want[0], tol);
  for (int i = 0; i < 7; ++i) expect_near("v_h cov", v_h.cov[i], want[1 + i], tol);
  for (int i = 0; i < 3; ++i) {
    expect_near("v_h color", v_h.color[i], want[8 + i], tol);
    expect_near("v_offset", v_off[i], want[11 + i], tol);
    expect_near("v_anchor", v_anchor[i], want[20 + i], tol);
  }
  for (int i = 0; i < 6; ++i) expect_near("v_anchor_scale", v_as[i], want[14 + i], tol);
  expect_near("v_s", v_s, want[23], tol);
}

void check_rules() {
  const double anchor[3] = {0.5, -1.0, 2.0}, offset[3] = {0.1, 0.2, -0.3}, as[6] = {1, 2, 3, 0.5, 0.6, 0.7};
  HeadOut<double> h{};
  h.opacity = -0.3;  // tanh < 0: dropped
  h.cov[3] = 2.0;
  const Gaussian<double> d = visible_gaussian<double>(h, anchor, offset, as, 0.8);
  expect_near("dropped: not kept", d.kept ? 1 : 0, 0, 0);
  expect_near("dropped: opacity exactly 0", d.opacity, 0.0, 0.0);
  expect_near("dropped: neural_opacity is the tanh", d.neural_opacity, std::tanh(-0.3), 1e-15);
  expect_near("dropped: keeps the MLP's quat", d.quat[0], 1.0, 1e-15);
  expect_near("dropped: keeps the MLP's scale", d.scale[1], 0.6 * 0.5, 1e-15);
  h.opacity = 0.0;  // tanh == 0 is dropped too (kept needs > 0)
  expect_near("tanh 0: not kept", visible_gaussian<double>(h, anchor, offset, as, 0.8).kept ? 1 : 0, 0, 0);
  h.opacity = 0.4;
  const Gaussian<double> k = visible_gaussian<double>(h, anchor, offset, as, 0.8);
  expect_near("kept", k.kept ? 1 : 0, 1, 0);
  expect_near("kept: opacity", k.opacity, std::tanh(0.4) * 0.8, 1e-15);
  expect_near("mean", k.mean[2], 2.0 - 0.3 * 3, 1e-15);
  const Gaussian<double> inv = invisible_gaussian<double>(anchor, offset, as);
  expect_near("invisible: not kept", inv.kept ? 1 : 0, 0, 0);
  expect_near("invisible: mean", inv.mean[0], 0.5 + 0.1, 1e-15);
  expect_near("invisible: quat w", inv.quat[0], 1.0, 0.0);
  double sum = 0;
  for (int i = 1; i < 4; ++i) sum += std::fabs(inv.quat[i]);
  for (int i = 0; i < 3; ++i) sum += std::fabs(inv.scale[i]) + std::fabs(inv.color[i]);
  expect_near("invisible: zero fills", sum + std::fabs(inv.opacity) + std::fabs(inv.neural_opacity), 0.0, 0.0);
  // A zero-length quaternion / view direction stays finite (F.normalize's floor) and has torch's gradient.
  const double z[4] = {0, 0, 0, 0}, v[4] = {1, 2, 3, 4};
  double y[4], gz[4] = {0, 0, 0, 0};
  normalize<double, 4>(z, y);
  normalize_vjp<double, 4>(z, v, 0.5, gz);
  for (int i = 0; i < 4; ++i) {
    expect_near("normalize(0)", y[i], 0.0, 0.0);
    expect_near("normalize(0) vjp = v / eps", gz[i], v[i] / 1e-12, 1e-12);
  }
  // Blend kinks: gradient 0 at tau == offset in every mode, and the flat sides of the one-sided modes.
  for (int mode = 0; mode < 3; ++mode) {
    const BlendGrad<double> g = blend_weight_vjp<double>(1.0, 0.5, 0.7, 0.5, 1.3, mode);
    expect_near("kink v_offset", g.v_offset, 0.0, 0.0);
    expect_near("kink v_decay", g.v_decay, 0.0, 0.0);
    expect_near("kink weight", blend_weight<double>(0.5, 0.7, 0.5, 1.3, mode), 1.0, 0.0);
  }
  expect_near("forward mode flat before", blend_weight<double>(0.9, 0.7, 0.5, 1.3, 1), 1.0, 0.0);
  expect_near("backward mode flat after", blend_weight<double>(0.1, 0.7, 0.5, 1.3, 2), 1.0, 0.0);
  double w = 0;
  const double s = opacity_scale_of<double>(true, 0.5, true, 0.1, 0.7, 0.5, 1.3, 0, &w);
  expect_near("opacity_scale_of: blend weight", w, std::exp(-1.3 * 0.7 * 0.4), 1e-15);
  expect_near("opacity_scale_of: product", s, 0.5 * w, 1e-15);
  expect_near("opacity_scale_of: neither", opacity_scale_of<double>(false, 0, false, 0, 0, 0, 1, 0, nullptr), 1, 0);
}

}  // namespace

int main() {
  const double xs[][4] = {{0.3, -1.2, 0.8, 0.5}, {2.0, 0.1, -0.4, -1.5}, {-0.05, 0.02, 0.01, 0.03}};
  const double vs[][4] = {{0.7, 0.2, -1.1, 0.4}, {-0.3, 0.9, 0.5, 1.2}, {1.0, -1.0, 0.5, 0.25}};
  for (int i = 0; i < 3; ++i) {
    check_normalize<double>(xs[i], vs[i], 0.6 - i, 1e-7);
    check_normalize<float>(xs[i], vs[i], 0.6 - i, 2e-3);
  }
  for (int mode = 0; mode < 3; ++mode) {
    for (double offset : {-0.4, 0.3, 1.1}) {
      for (double decay : {0.8, -0.6}) {
        check_blend<double>(offset, decay, 0.5, 1.3, mode, 0.9, 1e-7);
        check_blend<float>(offset, decay, 0.5, 1.3, mode, 0.9, 2e-3);
      }
    }
  }
  const double pts[][kEpi] = {{0.4,  0.3, -0.8, 1.2, 0.5, -0.2, 0.9,  0.1, -0.6, 0.2,  1.4, 0.3,
                               -0.7, 0.2, 0.9,  1.1, 0.4, 0.3,  0.25, 0.6, 1.0,  -2.0, 0.5, 0.8},
                              {1.7, -1.1, 0.2, 0.0, -0.9, 0.4, 0.3, -1.2, 2.2,  -0.3, 0.0, -0.5,
                               0.6, 1.1,  0.2, 0.3, 1.5,  1.3, 0.7, 0.1,  -0.4, 0.6,  0.0, 1.7}};
  const double cots[][14] = {{0.3, -0.5, 0.8, 1.1, -0.2, 0.4, 0.6, -0.9, 0.1, 0.5, -0.3, 0.2, 0.7, -1.3},
                             {-0.7, 0.2, 0.1, 0.4, 0.9, -0.6, -0.2, 0.3, 1.2, -0.1, 0.8, -0.4, 0.2, 0.6}};
  for (const auto& x : pts) {
    for (const auto& c : cots) {
      check_epilogue<double>(x, c, 1e-7);
      check_epilogue<float>(x, c, 3e-3);
    }
  }
  check_rules();
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
