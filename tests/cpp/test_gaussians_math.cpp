// Unit tests of csrc/include/pyops/gaussians_math.h, the inline math every native Gaussian-splatting kernel
// runs: every VJP against central finite differences of its forward (double precision, random-ish points, both
// sides of the branches: FOV clamp, alpha clamp, normalisation floor), a float instantiation against the double
// one, and tile_rect / the intersection key on hand-checked cases. Header-only: no libtorch.
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>

#include "pyops/gaussians_math.h"

namespace {

using namespace pyops::gs;

int failures = 0;
int checks = 0;

void expect_near(const char* what, int index, double got, double want, double tol) {
  ++checks;
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s[%d]: got %.12g want %.12g (tol %.1e)\n", what, index, got, want, tol);
    ++failures;
  }
}

void expect_true(const char* what, bool ok) {
  ++checks;
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++failures;
  }
}

// Central differences of a scalar loss f(x) over the N entries of x.
template <size_t N, typename F>
std::array<double, N> numeric_grad(F&& f, std::array<double, N> x, double h = 1e-6) {
  std::array<double, N> g{};
  for (size_t i = 0; i < N; ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f(x);
    x[i] = keep - h;
    const double down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

template <size_t N>
void expect_grad(const char* what, const std::array<double, N>& got, const std::array<double, N>& want,
                 double tol = 1e-6) {
  for (size_t i = 0; i < N; ++i) expect_near(what, static_cast<int>(i), got[i], want[i], tol);
}

using Mat3d = Mat3<double>;
using Mat2d = Mat2<double>;
using Vec3d = Vec3<double>;

Mat3d mat3(const double* a) {
  Mat3d m;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) m.m[i][j] = a[i * 3 + j];
  return m;
}

double dot3(const Mat3d& a, const Mat3d& b) {
  double s = 0;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) s += a.m[i][j] * b.m[i][j];
  return s;
}

double dot2(const Mat2d& a, const Mat2d& b) {
  return a.m[0][0] * b.m[0][0] + a.m[0][1] * b.m[0][1] + a.m[1][0] * b.m[1][0] + a.m[1][1] * b.m[1][1];
}

// A fixed, non-symmetric cotangent (the VJPs take arbitrary ones).
const double kG3[9] = {0.3, -1.2, 0.7, 0.4, 0.9, -0.5, -0.8, 0.25, 1.1};

// A rotation (unit quaternion (0.8, 0.2, -0.4, 0.4) normalised) for world -> camera.
Mat3d test_rotation() { return rotmat_from_unit_quat(normalize_quat(Vec4<double>{0.8, 0.2, -0.4, 0.4})); }

// ---------------------------------------------------------------------------------------------------------

void test_covar_from_quat_scale(const std::array<double, 7>& qs) {
  const Mat3d g = mat3(kG3);
  auto loss = [&](const std::array<double, 7>& v) { return dot3(world_covar(v.data(), v.data() + 4), g); };
  Vec4<double> v_quat = {0, 0, 0, 0};
  Vec3d v_scale = {0, 0, 0};
  covar_from_quat_scale_vjp(Vec4<double>{qs[0], qs[1], qs[2], qs[3]}, Vec3d{qs[4], qs[5], qs[6]}, g, v_quat, v_scale);
  expect_grad("covar_from_quat_scale_vjp",
              std::array<double, 7>{v_quat.w, v_quat.x, v_quat.y, v_quat.z, v_scale.x, v_scale.y, v_scale.z},
              numeric_grad(loss, qs));
  // The rotation is orthonormal.
  const Mat3d r = rotmat_from_unit_quat(normalize_quat(Vec4<double>{qs[0], qs[1], qs[2], qs[3]}));
  const Mat3d rrt = matmul(r, transpose(r));
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) expect_near("R R^T = I", i * 3 + j, rrt.m[i][j], i == j ? 1.0 : 0.0, 1e-12);
}

void test_world_to_cam() {
  const Mat3d r = test_rotation();
  const Vec3d t = {0.1, -0.2, 3.0};
  const Vec3d v_pc = {0.5, -1.5, 0.75};
  auto point_loss = [&](const std::array<double, 3>& p) {
    const Vec3d q = point_world_to_cam(r, t, Vec3d{p[0], p[1], p[2]});
    return q.x * v_pc.x + q.y * v_pc.y + q.z * v_pc.z;
  };
  const Vec3d vp = point_world_to_cam_vjp(r, v_pc);
  expect_grad("point_world_to_cam_vjp", std::array<double, 3>{vp.x, vp.y, vp.z},
              numeric_grad(point_loss, std::array<double, 3>{0.3, -0.7, 1.9}));

  const Mat3d g = mat3(kG3);
  std::array<double, 9> cov{};
  const double c0[9] = {2.0, 0.3, -0.1, 0.3, 1.0, 0.2, -0.1, 0.2, 0.5};
  for (int i = 0; i < 9; ++i) cov[i] = c0[i];
  auto covar_loss = [&](const std::array<double, 9>& c) { return dot3(covar_world_to_cam(r, mat3(c.data())), g); };
  const Mat3d vc = covar_world_to_cam_vjp(r, g);
  std::array<double, 9> got{};
  for (int i = 0; i < 9; ++i) got[i] = vc.m[i / 3][i % 3];
  expect_grad("covar_world_to_cam_vjp", got, numeric_grad(covar_loss, cov));
}

// project_vjp at camera point p (inside or outside the FOV clamp).
void test_project(const Vec3d& p0, const char* what) {
  const Pinhole<double> cam = {300.0, 280.0, 160.0, 120.0, 320.0, 240.0};
  const Mat2d g2 = {{{0.7, -0.3}, {0.45, 1.2}}};  // non-symmetric
  const Vec2<double> v_mean2d = {0.6, -0.9};
  const double c0[9] = {0.5, 0.1, -0.05, 0.1, 0.3, 0.02, -0.05, 0.02, 0.2};
  std::array<double, 12> x{};  // p (3), Sigma_c (9)
  x[0] = p0.x;
  x[1] = p0.y;
  x[2] = p0.z;
  for (int i = 0; i < 9; ++i) x[3 + i] = c0[i];
  auto loss = [&](const std::array<double, 12>& v) {
    const Vec3d p = {v[0], v[1], v[2]};
    const Mat2d cov2d = project_covar(projection_jacobian(cam, p), mat3(v.data() + 3));
    const Vec2<double> m = project_mean(cam, p);
    return dot2(cov2d, g2) + m.x * v_mean2d.x + m.y * v_mean2d.y;
  };
  Vec3d v_p = {0, 0, 0};
  Mat3d v_cov = zeros3<double>();
  project_vjp(cam, p0, mat3(c0), g2, v_mean2d, v_p, v_cov);
  std::array<double, 12> got{};
  got[0] = v_p.x;
  got[1] = v_p.y;
  got[2] = v_p.z;
  for (int i = 0; i < 9; ++i) got[3 + i] = v_cov.m[i / 3][i % 3];
  expect_grad(what, got, numeric_grad(loss, x));
}

void test_conic() {
  const Vec3d v_conic = {0.8, -0.6, 1.3};
  auto loss = [&](const std::array<double, 4>& c) {
    const Mat2d m = {{{c[0], c[1]}, {c[2], c[3]}}};
    const double det = m.m[0][0] * m.m[1][1] - m.m[0][1] * m.m[1][0];
    const Vec3d k = conic_from_covar2d(m, det);
    return k.x * v_conic.x + k.y * v_conic.y + k.z * v_conic.z;
  };
  const std::array<double, 4> c = {2.0, 0.7, 0.7, 1.5};
  const Mat2d m = {{{c[0], c[1]}, {c[2], c[3]}}};
  const Vec3d conic = conic_from_covar2d(m, c[0] * c[3] - c[1] * c[2]);
  // The conic is the inverse: [[a, b], [b, c]] M = I.
  expect_near("conic * cov", 0, conic.x * c[0] + conic.y * c[2], 1.0, 1e-12);
  expect_near("conic * cov", 1, conic.x * c[1] + conic.y * c[3], 0.0, 1e-12);
  expect_near("conic * cov", 2, conic.y * c[1] + conic.z * c[3], 1.0, 1e-12);
  const Mat2d v = conic_vjp(conic, v_conic);
  expect_grad("conic_vjp", std::array<double, 4>{v.m[0][0], v.m[0][1], v.m[1][0], v.m[1][1]}, numeric_grad(loss, c));
}

void test_compensation(double eps2d, const std::array<double, 4>& c) {
  const double v_comp = 0.7;
  auto loss = [&](const std::array<double, 4>& x) {
    Mat2d m = {{{x[0], x[1]}, {x[2], x[3]}}};
    double comp;
    dilate_covar2d(eps2d, m, comp);
    return v_comp * comp;
  };
  const Mat2d cov = {{{c[0], c[1]}, {c[2], c[3]}}};  // the undilated covariance, as the callers pass it
  Mat2d m = cov;
  double comp;
  dilate_covar2d(eps2d, m, comp);
  Mat2d v = {{{0, 0}, {0, 0}}};
  compensation_vjp(eps2d, cov, comp, v_comp, v);
  expect_grad("compensation_vjp", std::array<double, 4>{v.m[0][0], v.m[0][1], v.m[1][0], v.m[1][1]},
              numeric_grad(loss, c));
}

void test_sh(int degree, const std::array<double, 3>& u) {
  double g[kMaxShBases];
  for (int k = 0; k < kMaxShBases; ++k) g[k] = 0.1 * (k + 1) * (k % 2 ? -1.0 : 1.0);
  const int nb = sh_num_bases(degree);
  auto loss = [&](const std::array<double, 3>& d) {
    double b[kMaxShBases];
    sh_bases(degree, d[0], d[1], d[2], b);
    double s = 0;
    for (int k = 0; k < nb; ++k) s += g[k] * b[k];
    return s;
  };
  const Vec3d v = sh_bases_vjp(degree, u[0], u[1], u[2], g);
  static const char* names[] = {"sh_bases_vjp degree 0", "sh_bases_vjp degree 1", "sh_bases_vjp degree 2",
                                "sh_bases_vjp degree 3"};
  expect_grad(names[degree], std::array<double, 3>{v.x, v.y, v.z}, numeric_grad(loss, u));
}

void test_sh_values() {
  // b_0 is the constant 1 / (2 sqrt(pi)); on a unit direction the degree-1 bases are -a y, a z, -a x.
  double b[kMaxShBases];
  sh_bases(3, 0.6, 0.0, 0.8, b);
  expect_near("sh_bases b0", 0, b[0], 0.5 / std::sqrt(std::acos(-1.0)), 1e-12);
  expect_near("sh_bases b2", 2, b[2], 0.48860251190292 * 0.8, 1e-12);
  expect_near("sh_bases b3", 3, b[3], -0.48860251190292 * 0.6, 1e-12);
}

void test_unit_dir(const std::array<double, 3>& d0, const char* what) {
  const Vec3d vu = {0.4, -1.1, 0.9};
  auto loss = [&](const std::array<double, 3>& d) {
    double x, y, z;
    unit_dir(d.data(), x, y, z);
    return x * vu.x + y * vu.y + z * vu.z;
  };
  double x, y, z;
  const double norm = unit_dir(d0.data(), x, y, z);
  const Vec3d v = unit_dir_vjp(x, y, z, norm, vu);
  const double h = std::max(1e-6 * norm, 1e-18);
  expect_grad(what, std::array<double, 3>{v.x, v.y, v.z}, numeric_grad(loss, d0, h));
}

// hit_vjp for (mean2d (2), conic (3), opacity (1)) at pixel (px, py).
void test_hit(const std::array<double, 6>& x0, double px, double py, const char* what) {
  const double v_alpha = 0.8;
  auto loss = [&](const std::array<double, 6>& x) {
    const PixelHit<double> h = evaluate_hit(Vec2<double>{x[0], x[1]}, Vec3d{x[2], x[3], x[4]}, x[5], px, py);
    return v_alpha * h.alpha;
  };
  const Vec3d conic = {x0[2], x0[3], x0[4]};
  const PixelHit<double> h = evaluate_hit(Vec2<double>{x0[0], x0[1]}, conic, x0[5], px, py);
  expect_true("hit not skipped", !h.skip);
  const HitGrad<double> g = hit_vjp(h, conic, x0[5], v_alpha);
  expect_grad(what,
              std::array<double, 6>{g.v_mean2d.x, g.v_mean2d.y, g.v_conic.x, g.v_conic.y, g.v_conic.z, g.v_opacity},
              numeric_grad(loss, x0));
}

// The float instantiation runs the same formulas: close to the double one.
void test_float_matches_double() {
  const float qf[4] = {0.8f, 0.2f, -0.4f, 0.4f}, sf[3] = {0.5f, 1.5f, -0.7f};
  const double qd[4] = {0.8, 0.2, -0.4, 0.4}, sd[3] = {0.5, 1.5, -0.7};
  Mat3<float> gf;
  for (int i = 0; i < 9; ++i) gf.m[i / 3][i % 3] = static_cast<float>(kG3[i]);
  Vec4<float> vqf = {0, 0, 0, 0};
  Vec3<float> vsf = {0, 0, 0};
  Vec4<double> vqd = {0, 0, 0, 0};
  Vec3d vsd = {0, 0, 0};
  covar_from_quat_scale_vjp(Vec4<float>{qf[0], qf[1], qf[2], qf[3]}, Vec3<float>{sf[0], sf[1], sf[2]}, gf, vqf, vsf);
  covar_from_quat_scale_vjp(Vec4<double>{qd[0], qd[1], qd[2], qd[3]}, Vec3d{sd[0], sd[1], sd[2]}, mat3(kG3), vqd, vsd);
  expect_near("float v_quat", 0, vqf.w, vqd.w, 1e-5);
  expect_near("float v_quat", 1, vqf.x, vqd.x, 1e-5);
  expect_near("float v_scale", 2, vsf.z, vsd.z, 1e-5);
  const PixelHit<float> hf = evaluate_hit(Vec2<float>{3.2f, 4.1f}, Vec3<float>{0.3f, 0.05f, 0.2f}, 0.6f, 2.5f, 3.5f);
  const PixelHit<double> hd = evaluate_hit(Vec2<double>{3.2, 4.1}, Vec3d{0.3, 0.05, 0.2}, 0.6, 2.5, 3.5);
  expect_near("float alpha", 0, hf.alpha, hd.alpha, 1e-6);
}

// ---------------------------------------------------------------------------------------------------------
// Tile intersection
// ---------------------------------------------------------------------------------------------------------

template <typename T>
void expect_rect(const char* what, T mx, T my, int32_t rx, int32_t ry, TileRect want) {
  // 16-pixel tiles on a 4 x 3 tile grid (a 64 x 48 image).
  const TileRect r = tile_rect<T>(mx, my, rx, ry, 16, 4, 3);
  ++checks;
  if (r.x0 != want.x0 || r.y0 != want.y0 || r.x1 != want.x1 || r.y1 != want.y1) {
    std::printf("FAIL tile_rect %s (%s): got [%d, %d) x [%d, %d), want [%d, %d) x [%d, %d)\n", what,
                sizeof(T) == 4 ? "float" : "double", r.x0, r.x1, r.y0, r.y1, want.x0, want.x1, want.y0, want.y1);
    ++failures;
  }
}

template <typename T>
void test_tile_rect() {
  // Centre of tile (1, 1), radius half a tile: exactly that tile ([floor(1.0), ceil(2.0))).
  expect_rect<T>("one tile", T(24), T(24), 8, 8, {1, 1, 2, 2});
  // A pixel more reaches into the neighbours on every side.
  expect_rect<T>("3x3 tiles", T(24), T(24), 9, 9, {0, 0, 3, 3});
  // On a tile corner: the box [0, 32) covers tiles 0 and 1 per axis.
  expect_rect<T>("on a tile edge", T(16), T(16), 16, 16, {0, 0, 2, 2});
  // Anisotropic radius.
  expect_rect<T>("anisotropic", T(40), T(8), 20, 4, {1, 0, 4, 1});
  // Zero radius on either axis (a culled pair): empty.
  expect_rect<T>("zero radius", T(24), T(24), 0, 0, {0, 0, 0, 0});
  expect_rect<T>("zero x radius", T(24), T(24), 0, 8, {0, 0, 0, 0});
  expect_rect<T>("zero y radius", T(24), T(24), 8, 0, {0, 0, 0, 0});
  // Clamped at the image border: the left part is cut at tile 0, the bottom at the last row.
  expect_rect<T>("left border", T(-4), T(8), 8, 4, {0, 0, 1, 1});
  expect_rect<T>("bottom-right corner", T(60), T(44), 10, 10, {3, 2, 4, 3});
  // Wholly outside (right, and below): empty ranges at the clamp.
  expect_rect<T>("right of the image", T(200), T(24), 10, 10, {4, 0, 4, 3});
  expect_rect<T>("below the image", T(-10), T(60), 20, 5, {0, 3, 1, 3});
  // Larger than the image: the whole grid.
  expect_rect<T>("whole grid", T(32), T(24), 1000, 1000, {0, 0, 4, 3});
  // NaN mean: empty.
  expect_rect<T>("NaN mean", std::numeric_limits<T>::quiet_NaN(), T(24), 8, 8, {0, 1, 0, 2});
  expect_true("count of 3x3", tile_rect<T>(T(24), T(24), 9, 9, 16, 4, 3).count() == 9);
  expect_true("count of outside", tile_rect<T>(T(200), T(24), 10, 10, 16, 4, 3).count() == 0);
}

void test_isect_key() {
  // 2 cameras of 12 tiles: tile_bits = bit_length(12) = 4.
  const uint32_t d = depth_bits(2.5f);
  const uint64_t key = isect_key(1, 11, 4, d);
  expect_true("isect_key layout", key == ((uint64_t(1) << 36) | (uint64_t(11) << 32) | d));
  const IsectBucket b = isect_bucket(key, 4);
  expect_true("isect_bucket camera", b.camera == 1);
  expect_true("isect_bucket tile", b.tile == 11);
  // Positive depths order like their key bits; float64 depths use their float32 value.
  expect_true("depth order", depth_bits(0.5f) < depth_bits(0.75f) && depth_bits(0.75f) < depth_bits(300.0f));
  expect_true("double depth", depth_bits(2.5) == d);
  expect_true("key order", isect_key(0, 3, 4, depth_bits(9.0f)) < isect_key(0, 4, 4, depth_bits(0.1f)) &&
                               isect_key(0, 11, 4, depth_bits(9.0f)) < isect_key(1, 0, 4, depth_bits(0.1f)));
}

}  // namespace

int main() {
  test_covar_from_quat_scale({0.8, 0.2, -0.4, 0.4, 0.5, 1.5, -0.7});
  test_covar_from_quat_scale({1.7, -0.3, 0.9, 0.1, 2.0, 0.3, 0.9});  // unnormalised quaternion
  test_covar_from_quat_scale({-0.2, 0.6, 0.1, -0.75, 0.05, 0.8, 1.2});
  test_world_to_cam();
  test_project({0.3, -0.2, 2.5}, "project_vjp (inside the FOV clamp)");
  test_project({5.0, -0.2, 2.5}, "project_vjp (x clamped)");
  test_project({0.3, -4.0, 2.0}, "project_vjp (y clamped)");
  test_project({-6.0, 5.0, 3.0}, "project_vjp (both clamped)");
  test_conic();
  test_compensation(0.3, {2.0, 0.7, 0.7, 1.5});
  test_compensation(0.3, {0.05, 0.01, 0.01, 0.02});  // small Gaussian: compensation well below 1
  for (int degree = 0; degree <= kMaxShDegree; ++degree) {
    test_sh(degree, {0.48, -0.6, 0.64});
    test_sh(degree, {-0.3, 0.2, -0.9});
  }
  test_sh_values();
  test_unit_dir({0.3, -1.2, 2.0}, "unit_dir_vjp");
  test_unit_dir({-4.0, 0.1, 0.5}, "unit_dir_vjp (long)");
  test_unit_dir({1e-14, -2e-14, 3e-14}, "unit_dir_vjp (below the norm floor)");
  test_hit({3.2, 4.1, 0.3, 0.05, 0.2, 0.6}, 2.5, 3.5, "hit_vjp");
  test_hit({10.0, 7.0, 0.1, -0.02, 0.15, 0.9}, 8.5, 9.5, "hit_vjp (off centre)");
  test_hit({2.5, 3.5, 0.3, 0.05, 0.2, 1.2}, 2.5, 3.5, "hit_vjp (alpha clamped at 0.999)");
  test_float_matches_double();
  test_tile_rect<float>();
  test_tile_rect<double>();
  test_isect_key();
  std::printf("test_gaussians_math: %s, %d checks, %d failures\n", failures ? "FAILED" : "OK", checks, failures);
  return failures ? 1 : 0;
}
