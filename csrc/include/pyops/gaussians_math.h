// Inline math of the 3D Gaussian-splatting stages (gsplat 1.5.3 conventions), shared by the CPU kernels, the
// CUDA kernels and tests/cpp/test_gaussians_math.cpp: projection (quaternion + scale -> covariance, world ->
// camera, pinhole EWA Jacobian, eps2d dilation, compensation, conic, radius), spherical harmonics, tile
// intersection (which tiles a Gaussian touches, the sort key) and per-pixel blending, each with its VJP.
//
// Everything is templated on the scalar type T (float or double) and written with plain structs so that it
// compiles for the device: no ATen, no std:: containers, no exceptions. Matrices are row-major (m[row][col]),
// unlike glm's column-major storage that gsplat uses; the formulas are written out from the math, not
// transcribed from gsplat. (About 700 lines on purpose: one header, so that every kernel and the test include
// the same formulas.)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pyops/host_device.h"

namespace pyops {
namespace gs {

// A Gaussian's alpha below this does not count (gsplat's ALPHA_THRESHOLD); the same cut on both passes. (These
// three are constexpr so that the CPU ISA copies can read them without instantiating shared code: see cpu/isa.h.)
template <typename T>
PYOPS_HOST_DEVICE constexpr T alpha_threshold() {
  return T(1) / T(255);
}
// Alpha is clamped here so that 1 - alpha never reaches 0 (the backward pass divides by it).
template <typename T>
PYOPS_HOST_DEVICE constexpr T max_alpha() {
  return T(0.999);
}
// A pixel stops once its transmittance would fall to or below this (the Gaussian that would cross it is not
// blended).
template <typename T>
PYOPS_HOST_DEVICE constexpr T min_transmittance() {
  return T(1e-4);
}
// render_alphas (1 - T_final) is accumulated as the sum of the blend weights alpha_k T_k, equal in exact
// arithmetic: 1 - T_final rounds to eps absolute, eps / alpha relative on a faint pixel, and the "ED" render
// modes divide the depth by it, so their gradients carried that error times the depth (the fuzz's Gaussians
// stacked on one point: 15x torch's error in fp32). The backward still differentiates 1 - T_final.
// Radius in standard deviations of the (conservative, opacity-unaware) screen-space bounding box.
template <typename T>
PYOPS_HOST_DEVICE T radius_sigmas() {
  return T(3.33);
}

template <typename T>
struct Vec2 {
  T x, y;
};

template <typename T>
struct Vec3 {
  T x, y, z;
};

template <typename T>
struct Vec4 {
  T w, x, y, z;  // quaternion order (w first), as gsplat stores quats
};

template <typename T>
struct Mat2 {
  T m[2][2];
};

template <typename T>
struct Mat3 {
  T m[3][3];
};

// 2x3 Jacobian of the pinhole projection at a camera-space point.
template <typename T>
struct Mat2x3 {
  T m[2][3];
};

// Overload-resolving wrappers: float stays float on host (std::) and device (CUDA's overloads).
template <typename T>
PYOPS_HOST_DEVICE T sqrt_(T x) {
  using std::sqrt;
  return sqrt(x);
}
template <typename T>
PYOPS_HOST_DEVICE T exp_(T x) {
  using std::exp;
  return exp(x);
}
template <typename T>
PYOPS_HOST_DEVICE T ceil_(T x) {
  using std::ceil;
  return ceil(x);
}
template <typename T>
PYOPS_HOST_DEVICE T floor_(T x) {
  using std::floor;
  return floor(x);
}
template <typename T>
PYOPS_HOST_DEVICE T log_(T x) {
  using std::log;
  return log(x);
}

template <typename T>
PYOPS_HOST_DEVICE T min_(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
PYOPS_HOST_DEVICE T max_(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
PYOPS_HOST_DEVICE Mat3<T> zeros3() {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = T(0);
  return r;
}

template <typename T>
PYOPS_HOST_DEVICE Mat3<T> matmul(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
  return r;
}

template <typename T>
PYOPS_HOST_DEVICE Mat3<T> transpose(const Mat3<T>& a) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
  return r;
}

template <typename T>
PYOPS_HOST_DEVICE Vec3<T> matvec(const Mat3<T>& a, const Vec3<T>& v) {
  return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z, a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
          a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}

// a^T v, without forming the transpose.
template <typename T>
PYOPS_HOST_DEVICE Vec3<T> matvec_t(const Mat3<T>& a, const Vec3<T>& v) {
  return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z, a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
          a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

// ---------------------------------------------------------------------------------------------------------
// Quaternion + scale -> 3D covariance
// ---------------------------------------------------------------------------------------------------------

// torch.nn.functional.normalize's floor on the norm: a zero quaternion (or SH direction) gives a zero vector
// instead of NaN, and the VJP below uses the same floor.
template <typename T>
PYOPS_HOST_DEVICE T normalize_eps() {
  return T(1e-12);
}

// Rotation matrix of the normalised quaternion (w, x, y, z).
template <typename T>
PYOPS_HOST_DEVICE Mat3<T> rotmat_from_unit_quat(const Vec4<T>& q) {
  const T w = q.w, x = q.x, y = q.y, z = q.z;
  Mat3<T> r;
  r.m[0][0] = T(1) - T(2) * (y * y + z * z);
  r.m[0][1] = T(2) * (x * y - w * z);
  r.m[0][2] = T(2) * (x * z + w * y);
  r.m[1][0] = T(2) * (x * y + w * z);
  r.m[1][1] = T(1) - T(2) * (x * x + z * z);
  r.m[1][2] = T(2) * (y * z - w * x);
  r.m[2][0] = T(2) * (x * z - w * y);
  r.m[2][1] = T(2) * (y * z + w * x);
  r.m[2][2] = T(1) - T(2) * (x * x + y * y);
  return r;
}

template <typename T>
PYOPS_HOST_DEVICE T quat_norm_floored(const Vec4<T>& q) {
  return max_(sqrt_(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z), normalize_eps<T>());
}

template <typename T>
PYOPS_HOST_DEVICE Vec4<T> normalize_quat(const Vec4<T>& q) {
  const T inv = T(1) / quat_norm_floored(q);
  return {q.w * inv, q.x * inv, q.y * inv, q.z * inv};
}

// Sigma = R diag(s) diag(s) R^T. Negative scales are allowed: only s^2 enters.
template <typename T>
PYOPS_HOST_DEVICE Mat3<T> covar_from_rotmat_scale(const Mat3<T>& r, const Vec3<T>& s) {
  Mat3<T> m;  // M = R diag(s)
  for (int i = 0; i < 3; ++i) {
    m.m[i][0] = r.m[i][0] * s.x;
    m.m[i][1] = r.m[i][1] * s.y;
    m.m[i][2] = r.m[i][2] * s.z;
  }
  Mat3<T> c;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) c.m[i][j] = m.m[i][0] * m.m[j][0] + m.m[i][1] * m.m[j][1] + m.m[i][2] * m.m[j][2];
  return c;
}

// World-space covariance of one Gaussian from its stored quaternion [4] (any norm) and scales [3].
template <typename T>
PYOPS_HOST_DEVICE Mat3<T> world_covar(const T* quat, const T* scale) {
  const Vec4<T> q = normalize_quat(Vec4<T>{quat[0], quat[1], quat[2], quat[3]});
  return covar_from_rotmat_scale(rotmat_from_unit_quat(q), Vec3<T>{scale[0], scale[1], scale[2]});
}

// VJP of Sigma(q, s) for an arbitrary (not necessarily symmetric) cotangent v_covar; adds into v_quat, v_scale.
// Sigma = M M^T with M = R diag(s): dL/dM = (G + G^T) M; dL/dR = dL/dM diag(s); dL/ds_j = sum_i R_ij dL/dM_ij.
template <typename T>
PYOPS_HOST_DEVICE void covar_from_quat_scale_vjp(const Vec4<T>& quat, const Vec3<T>& s, const Mat3<T>& v_covar,
                                                 Vec4<T>& v_quat, Vec3<T>& v_scale) {
  const T norm = quat_norm_floored(quat);
  const Vec4<T> q = {quat.w / norm, quat.x / norm, quat.y / norm, quat.z / norm};
  const Mat3<T> r = rotmat_from_unit_quat(q);
  const T sc[3] = {s.x, s.y, s.z};
  Mat3<T> gs;  // G + G^T
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) gs.m[i][j] = v_covar.m[i][j] + v_covar.m[j][i];
  Mat3<T> v_m = zeros3<T>();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) v_m.m[i][j] += gs.m[i][k] * r.m[k][j] * sc[j];
  T vs[3] = {T(0), T(0), T(0)};
  Mat3<T> g;  // dL/dR
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      g.m[i][j] = v_m.m[i][j] * sc[j];
      vs[j] += r.m[i][j] * v_m.m[i][j];
    }
  v_scale.x += vs[0];
  v_scale.y += vs[1];
  v_scale.z += vs[2];

  // dL/dq for the unit quaternion, entry by entry from rotmat_from_unit_quat.
  const T w = q.w, x = q.x, y = q.y, z = q.z;
  const Vec4<T> v_n = {T(2) * (x * (g.m[2][1] - g.m[1][2]) + y * (g.m[0][2] - g.m[2][0]) + z * (g.m[1][0] - g.m[0][1])),
                       T(2) * (y * (g.m[0][1] + g.m[1][0]) + z * (g.m[0][2] + g.m[2][0]) + w * (g.m[2][1] - g.m[1][2]) -
                               T(2) * x * (g.m[1][1] + g.m[2][2])),
                       T(2) * (x * (g.m[0][1] + g.m[1][0]) + z * (g.m[1][2] + g.m[2][1]) + w * (g.m[0][2] - g.m[2][0]) -
                               T(2) * y * (g.m[0][0] + g.m[2][2])),
                       T(2) * (x * (g.m[0][2] + g.m[2][0]) + y * (g.m[1][2] + g.m[2][1]) + w * (g.m[1][0] - g.m[0][1]) -
                               T(2) * z * (g.m[0][0] + g.m[1][1]))};
  // Through q / max(|q|, eps): project out the radial part; below the floor the map is linear (1 / eps).
  if (norm > normalize_eps<T>()) {
    const T dot = v_n.w * q.w + v_n.x * q.x + v_n.y * q.y + v_n.z * q.z;
    v_quat.w += (v_n.w - dot * q.w) / norm;
    v_quat.x += (v_n.x - dot * q.x) / norm;
    v_quat.y += (v_n.y - dot * q.y) / norm;
    v_quat.z += (v_n.z - dot * q.z) / norm;
  } else {
    v_quat.w += v_n.w / norm;
    v_quat.x += v_n.x / norm;
    v_quat.y += v_n.y / norm;
    v_quat.z += v_n.z / norm;
  }
}

// ---------------------------------------------------------------------------------------------------------
// World -> camera: p_c = R p + t, Sigma_c = R Sigma R^T, with [R | t] the top rows of the view matrix.
// ---------------------------------------------------------------------------------------------------------

template <typename T>
PYOPS_HOST_DEVICE Vec3<T> point_world_to_cam(const Mat3<T>& r, const Vec3<T>& t, const Vec3<T>& p) {
  const Vec3<T> q = matvec(r, p);
  return {q.x + t.x, q.y + t.y, q.z + t.z};
}

template <typename T>
PYOPS_HOST_DEVICE Mat3<T> covar_world_to_cam(const Mat3<T>& r, const Mat3<T>& covar) {
  return matmul(matmul(r, covar), transpose(r));
}

// VJPs (no view-matrix gradients: the schema has none). dL/dp = R^T dL/dp_c; dL/dSigma = R^T G R.
template <typename T>
PYOPS_HOST_DEVICE Vec3<T> point_world_to_cam_vjp(const Mat3<T>& r, const Vec3<T>& v_pc) {
  return matvec_t(r, v_pc);
}

template <typename T>
PYOPS_HOST_DEVICE Mat3<T> covar_world_to_cam_vjp(const Mat3<T>& r, const Mat3<T>& v_covar_c) {
  return matmul(matmul(transpose(r), v_covar_c), r);
}

// ---------------------------------------------------------------------------------------------------------
// Pinhole EWA projection
// ---------------------------------------------------------------------------------------------------------

template <typename T>
struct Pinhole {
  T fx, fy, cx, cy;
  T width, height;
};

// One camera as the projection reads it: [R | t] from the top rows of the row-major 4x4 world-to-camera
// matrix, the pinhole from the row-major 3x3 intrinsics.
template <typename T>
struct Camera {
  Mat3<T> r;  // world -> camera rotation
  Vec3<T> t;
  Pinhole<T> pinhole;
};

template <typename T>
PYOPS_HOST_DEVICE Camera<T> load_camera(const T* viewmat /* [4, 4] */, const T* K /* [3, 3] */, T width, T height) {
  Camera<T> cam;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) cam.r.m[i][j] = viewmat[i * 4 + j];
  cam.t = {viewmat[3], viewmat[7], viewmat[11]};
  cam.pinhole = {K[0], K[4], K[2], K[5], width, height};
  return cam;
}

// The Jacobian is evaluated with x/z and y/z clamped to 1.3x the field of view (as 3DGS and gsplat do) so
// that Gaussians far outside the frustum do not get huge screen footprints. The mean itself is not clamped.
template <typename T>
struct FovLimits {
  T x_pos, x_neg, y_pos, y_neg;
};

template <typename T>
PYOPS_HOST_DEVICE FovLimits<T> fov_limits(const Pinhole<T>& cam) {
  const T tan_fovx = T(0.5) * cam.width / cam.fx;
  const T tan_fovy = T(0.5) * cam.height / cam.fy;
  return {(cam.width - cam.cx) / cam.fx + T(0.3) * tan_fovx, cam.cx / cam.fx + T(0.3) * tan_fovx,
          (cam.height - cam.cy) / cam.fy + T(0.3) * tan_fovy, cam.cy / cam.fy + T(0.3) * tan_fovy};
}

template <typename T>
PYOPS_HOST_DEVICE Vec2<T> project_mean(const Pinhole<T>& cam, const Vec3<T>& p) {
  const T rz = T(1) / p.z;
  return {cam.fx * p.x * rz + cam.cx, cam.fy * p.y * rz + cam.cy};
}

template <typename T>
PYOPS_HOST_DEVICE Mat2x3<T> projection_jacobian(const Pinhole<T>& cam, const Vec3<T>& p) {
  const FovLimits<T> lim = fov_limits(cam);
  const T rz = T(1) / p.z;
  const T rz2 = rz * rz;
  const T tx = p.z * min_(lim.x_pos, max_(-lim.x_neg, p.x * rz));
  const T ty = p.z * min_(lim.y_pos, max_(-lim.y_neg, p.y * rz));
  Mat2x3<T> j;
  j.m[0][0] = cam.fx * rz;
  j.m[0][1] = T(0);
  j.m[0][2] = -cam.fx * tx * rz2;
  j.m[1][0] = T(0);
  j.m[1][1] = cam.fy * rz;
  j.m[1][2] = -cam.fy * ty * rz2;
  return j;
}

// J Sigma J^T.
template <typename T>
PYOPS_HOST_DEVICE Mat2<T> project_covar(const Mat2x3<T>& j, const Mat3<T>& covar_c) {
  T js[2][3];
  for (int a = 0; a < 2; ++a)
    for (int k = 0; k < 3; ++k)
      js[a][k] = j.m[a][0] * covar_c.m[0][k] + j.m[a][1] * covar_c.m[1][k] + j.m[a][2] * covar_c.m[2][k];
  Mat2<T> c;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) c.m[a][b] = js[a][0] * j.m[b][0] + js[a][1] * j.m[b][1] + js[a][2] * j.m[b][2];
  return c;
}

// VJP of (mean2d, cov2d) = (project_mean(p), J(p) Sigma_c J(p)^T) w.r.t. p and Sigma_c; adds into v_p, v_covar_c.
// Inside the FOV limits J depends on x, y, z; where x/z (or y/z) is clamped, t_x = z * limit, so that entry of
// J depends on z alone (the clamp's derivative is 1 inside the closed interval, as torch.clamp's).
template <typename T>
PYOPS_HOST_DEVICE void project_vjp(const Pinhole<T>& cam, const Vec3<T>& p, const Mat3<T>& covar_c,
                                   const Mat2<T>& v_cov2d, const Vec2<T>& v_mean2d, Vec3<T>& v_p, Mat3<T>& v_covar_c) {
  const Mat2x3<T> j = projection_jacobian(cam, p);
  // dL/dSigma_c = J^T G J
  for (int k = 0; k < 3; ++k)
    for (int l = 0; l < 3; ++l) {
      T acc = T(0);
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) acc += j.m[a][k] * v_cov2d.m[a][b] * j.m[b][l];
      v_covar_c.m[k][l] += acc;
    }
  const T rz = T(1) / p.z;
  const T rz2 = rz * rz;
  const T rz3 = rz2 * rz;
  // Mean: u = fx x / z + cx, v = fy y / z + cy.
  v_p.x += cam.fx * rz * v_mean2d.x;
  v_p.y += cam.fy * rz * v_mean2d.y;
  v_p.z += -(cam.fx * p.x * v_mean2d.x + cam.fy * p.y * v_mean2d.y) * rz2;

  // dL/dJ = G J Sigma^T + G^T J Sigma.
  T v_j[2][3];
  for (int a = 0; a < 2; ++a)
    for (int k = 0; k < 3; ++k) {
      T acc = T(0);
      for (int b = 0; b < 2; ++b)
        for (int l = 0; l < 3; ++l)
          acc += v_cov2d.m[a][b] * j.m[b][l] * covar_c.m[k][l] + v_cov2d.m[b][a] * j.m[b][l] * covar_c.m[l][k];
      v_j[a][k] = acc;
    }
  const FovLimits<T> lim = fov_limits(cam);
  const T u = p.x * rz, v = p.y * rz;
  const T tx = p.z * min_(lim.x_pos, max_(-lim.x_neg, u));
  const T ty = p.z * min_(lim.y_pos, max_(-lim.y_neg, v));
  // J00 = fx / z, J11 = fy / z.
  v_p.z += -cam.fx * rz2 * v_j[0][0] - cam.fy * rz2 * v_j[1][1];
  // J02 = -fx tx / z^2: unclamped (tx = x) -> d/dx = -fx / z^2, d/dz = 2 fx x / z^3;
  // clamped (tx = z L) -> J02 = -fx L / z, d/dz = fx L / z^2 = fx tx / z^3.
  if (u <= lim.x_pos && u >= -lim.x_neg) {
    v_p.x += -cam.fx * rz2 * v_j[0][2];
    v_p.z += T(2) * cam.fx * tx * rz3 * v_j[0][2];
  } else {
    v_p.z += cam.fx * tx * rz3 * v_j[0][2];
  }
  if (v <= lim.y_pos && v >= -lim.y_neg) {
    v_p.y += -cam.fy * rz2 * v_j[1][2];
    v_p.z += T(2) * cam.fy * ty * rz3 * v_j[1][2];
  } else {
    v_p.z += cam.fy * ty * rz3 * v_j[1][2];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Screen-space dilation, compensation, conic, radius
// ---------------------------------------------------------------------------------------------------------

// Adds eps2d to the diagonal (a low-pass filter of about one pixel: no Gaussian is thinner than a pixel).
// Returns the dilated determinant; `compensation` = sqrt(det / det_dilated), the factor that keeps the
// dilated Gaussian's integral equal to the original's (antialiased mode multiplies opacities by it).
template <typename T>
PYOPS_HOST_DEVICE T dilate_covar2d(T eps2d, Mat2<T>& cov2d, T& compensation) {
  const T det_orig = cov2d.m[0][0] * cov2d.m[1][1] - cov2d.m[0][1] * cov2d.m[1][0];
  cov2d.m[0][0] += eps2d;
  cov2d.m[1][1] += eps2d;
  const T det = cov2d.m[0][0] * cov2d.m[1][1] - cov2d.m[0][1] * cov2d.m[1][0];
  compensation = sqrt_(max_(T(0), det_orig / det));
  return det;
}

// VJP of the compensation w.r.t. the undilated covariance Sigma = [[a, b], [b, c]] (recomputed by the caller).
// With r = det(Sigma) / det(Sigma + eps I) and comp = sqrt(r), dr/dSigma = ((1 - r) adj(Sigma) - r eps I) / det
// (det = det(Sigma + eps I)), written out as sums of positive terms: dr/da = eps (c^2 + eps c + b^2) / det^2,
// dr/dc = eps (a^2 + eps a + b^2) / det^2, dr/db (each off-diagonal entry) = -eps (a + c + eps) b / det^2. The
// equivalent (1 - comp^2) conic - eps det(conic) I (gsplat's) cancels to a small difference of O(1/eps) terms for
// a splat thinner than eps: fp32 gradients 20-30x less accurate than torch's (found by tests/test_fuzz.py).
// dcomp/dr = 0.5 / comp (exact, as the reference; gsplat adds 1e-6 to comp), taken as 0 at comp = 0 (a fully
// flat Gaussian), where the reference gives no gradient either.
template <typename T>
PYOPS_HOST_DEVICE void compensation_vjp(T eps2d, const Mat2<T>& cov2d, T compensation, T v_compensation,
                                        Mat2<T>& v_cov2d) {
  const T v_sq = compensation > T(0) ? v_compensation * T(0.5) / compensation : T(0);
  const T a = cov2d.m[0][0], c = cov2d.m[1][1], b = T(0.5) * (cov2d.m[0][1] + cov2d.m[1][0]);
  const T det = (a * c - b * b) + eps2d * (a + c + eps2d);
  const T k = det != T(0) ? v_sq * eps2d / (det * det) : T(0);
  v_cov2d.m[0][0] += k * (c * c + eps2d * c + b * b);
  v_cov2d.m[0][1] -= k * (a + c + eps2d) * b;
  v_cov2d.m[1][0] -= k * (a + c + eps2d) * b;
  v_cov2d.m[1][1] += k * (a * a + eps2d * a + b * b);
}

// Upper triangle (a, b, c) of the inverse of a symmetric 2x2 with determinant det: sigma = a dx^2 / 2 + b dx dy
// + c dy^2 / 2 in the pixel weight. (cov01 and cov10 are equal; their mean keeps this exact for any input.)
template <typename T>
PYOPS_HOST_DEVICE Vec3<T> conic_from_covar2d(const Mat2<T>& cov2d, T det) {
  const T inv = T(1) / det;
  return {cov2d.m[1][1] * inv, -T(0.5) * (cov2d.m[0][1] + cov2d.m[1][0]) * inv, cov2d.m[0][0] * inv};
}

// VJP of the inverse: with P = M^-1, dL/dM = -P (dL/dP) P. The conic's off-diagonal entry b stands for both
// P01 and P10, so each receives half of its cotangent.
template <typename T>
PYOPS_HOST_DEVICE Mat2<T> conic_vjp(const Vec3<T>& conic, const Vec3<T>& v_conic) {
  const T p[2][2] = {{conic.x, conic.y}, {conic.y, conic.z}};
  const T g[2][2] = {{v_conic.x, T(0.5) * v_conic.y}, {T(0.5) * v_conic.y, v_conic.z}};
  T pg[2][2];
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) pg[a][b] = p[a][0] * g[0][b] + p[a][1] * g[1][b];
  Mat2<T> r;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) r.m[a][b] = -(pg[a][0] * p[0][b] + pg[a][1] * p[1][b]);
  return r;
}

// Screen-space half extent in pixels along one axis of the dilated covariance (its variance on that axis).
template <typename T>
PYOPS_HOST_DEVICE T radius_from_variance(T variance, T sigmas = radius_sigmas<T>()) {
  return ceil_(sigmas * sqrt_(variance));
}

// Standard deviations at which a Gaussian of this opacity fades to the 1/255 blend cut (at most 3.33): the
// radius gsplat's rasterization() uses, since nothing beyond it is ever blended.
template <typename T>
PYOPS_HOST_DEVICE T radius_sigmas_for_opacity(T opacity) {
  return min_(sqrt_(T(2) * log_(opacity / alpha_threshold<T>())), radius_sigmas<T>());
}

// int32 radius; values beyond int32 (a huge Gaussian) saturate instead of overflowing the conversion.
template <typename T>
PYOPS_HOST_DEVICE int32_t radius_to_int(T r) {
  return r >= T(2147483647.0) ? int32_t(2147483647) : static_cast<int32_t>(r);
}

// What gs_project_fwd writes for one (camera, Gaussian) pair; kept is false when gsplat's culls drop the pair
// (its outputs then keep the zeros, and ones for compensations without antialiasing, they start with).
template <typename T>
struct ProjectedPair {
  bool kept;
  int32_t radius_x, radius_y;
  Vec2<T> mean2d;
  T depth;
  Vec3<T> conic;
  T compensation;
};

// One pair's projection with the culls in gsplat's order, the body of both backends' forward kernels. opacity:
// the Gaussian's, or nullptr without opacities.
template <typename T>
PYOPS_HOST_DEVICE ProjectedPair<T> project_pair(const Camera<T>& cam, const T* mean, const T* quat, const T* scale,
                                                const T* opacity, T eps2d, T near_plane, T far_plane, T radius_clip,
                                                bool antialiased) {
  ProjectedPair<T> q{};
  // Culled below whatever the covariance (the compensation is <= 1): skip its math. Decoders that keep a dense
  // layout hand over many of these (a MoRel frame: 45% of its Gaussians).
  if (opacity != nullptr && !(*opacity > T(0))) return q;
  const Vec3<T> mean_c = point_world_to_cam(cam.r, cam.t, Vec3<T>{mean[0], mean[1], mean[2]});
  // Written as !(inside) so that NaN depths are culled too.
  if (!(mean_c.z >= near_plane && mean_c.z <= far_plane)) return q;
  const Mat3<T> covar_c = covar_world_to_cam(cam.r, world_covar(quat, scale));
  Mat2<T> cov2d = project_covar(projection_jacobian(cam.pinhole, mean_c), covar_c);
  const Vec2<T> mean2d = project_mean(cam.pinhole, mean_c);
  T compensation;
  const T det = dilate_covar2d(eps2d, cov2d, compensation);
  if (!(det > T(0))) return q;
  T sigmas = radius_sigmas<T>();
  if (opacity != nullptr) {  // gsplat's rasterization(): cull what never reaches the blend cut
    const T o = antialiased ? *opacity * compensation : *opacity;
    if (!(o >= alpha_threshold<T>())) return q;
    sigmas = radius_sigmas_for_opacity(o);
  }
  const T rx = radius_from_variance(cov2d.m[0][0], sigmas);
  const T ry = radius_from_variance(cov2d.m[1][1], sigmas);
  if (rx <= radius_clip && ry <= radius_clip) return q;
  const T w = cam.pinhole.width, h = cam.pinhole.height;
  if (!(mean2d.x + rx > T(0) && mean2d.x - rx < w && mean2d.y + ry > T(0) && mean2d.y - ry < h)) return q;
  q.kept = true;
  q.radius_x = radius_to_int(rx);
  q.radius_y = radius_to_int(ry);
  q.mean2d = mean2d;
  q.depth = mean_c.z;
  q.conic = conic_from_covar2d(cov2d, det);
  q.compensation = compensation;
  return q;
}

// Writes a kept pair's outputs at pair index idx (compensations: nullptr unless antialiased).
template <typename T>
PYOPS_HOST_DEVICE void store_projected(const ProjectedPair<T>& q, int64_t idx, int32_t* radii, T* means2d, T* depths,
                                       T* conics, T* compensations) {
  radii[idx * 2] = q.radius_x;
  radii[idx * 2 + 1] = q.radius_y;
  means2d[idx * 2] = q.mean2d.x;
  means2d[idx * 2 + 1] = q.mean2d.y;
  depths[idx] = q.depth;
  conics[idx * 3] = q.conic.x;
  conics[idx * 3 + 1] = q.conic.y;
  conics[idx * 3 + 2] = q.conic.z;
  if (compensations != nullptr) compensations[idx] = q.compensation;
}

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics, degrees 0-3 (real SH in the 3DGS sign convention; Sloan's "Efficient Spherical
// Harmonic Evaluation" recurrences). Basis k multiplies coeffs[k].
// ---------------------------------------------------------------------------------------------------------

constexpr int kMaxShDegree = 3;
constexpr int kMaxShBases = (kMaxShDegree + 1) * (kMaxShDegree + 1);

PYOPS_HOST_DEVICE constexpr int sh_num_bases(int degree) { return (degree + 1) * (degree + 1); }

// Unit direction with torch.nn.functional.normalize's floor on the norm (a zero direction stays zero); returns
// the floored norm, which the VJP divides by.
template <typename T>
PYOPS_HOST_DEVICE T unit_dir(const T* dir, T& x, T& y, T& z) {
  const T norm = max_(sqrt_(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]), normalize_eps<T>());
  x = dir[0] / norm;
  y = dir[1] / norm;
  z = dir[2] / norm;
  return norm;
}

// VJP of unit_dir: the cotangent vu of the unit direction (x, y, z) back to the raw direction. Through
// d / max(|d|, eps): remove the radial component and scale by 1 / |d| (linear below the floor).
template <typename T>
PYOPS_HOST_DEVICE Vec3<T> unit_dir_vjp(T x, T y, T z, T norm, const Vec3<T>& vu) {
  const T dot = norm > normalize_eps<T>() ? vu.x * x + vu.y * y + vu.z * z : T(0);
  return {(vu.x - dot * x) / norm, (vu.y - dot * y) / norm, (vu.z - dot * z) / norm};
}

// Bases at the unit direction (x, y, z), written into b[0 .. sh_num_bases(degree)).
template <typename T>
PYOPS_HOST_DEVICE void sh_bases(int degree, T x, T y, T z, T* b) {
  b[0] = T(0.2820947917738781);
  if (degree < 1) return;
  b[1] = T(-0.48860251190292) * y;
  b[2] = T(0.48860251190292) * z;
  b[3] = T(-0.48860251190292) * x;
  if (degree < 2) return;
  const T z2 = z * z;
  const T c1 = x * x - y * y;  // cos(2 phi) sin^2(theta)
  const T s1 = T(2) * x * y;   // sin(2 phi) sin^2(theta)
  b[4] = T(0.5462742152960395) * s1;
  b[5] = T(-1.092548430592079) * z * y;
  b[6] = T(0.9461746957575601) * z2 - T(0.3153915652525201);
  b[7] = T(-1.092548430592079) * z * x;
  b[8] = T(0.5462742152960395) * c1;
  if (degree < 3) return;
  const T c2 = x * c1 - y * s1;
  const T s2 = x * s1 + y * c1;
  const T p13 = T(-2.285228997322329) * z2 + T(0.4570457994644658);
  b[9] = T(-0.5900435899266435) * s2;
  b[10] = T(1.445305721320277) * z * s1;
  b[11] = p13 * y;
  b[12] = z * (T(1.865881662950577) * z2 - T(1.119528997770346));
  b[13] = p13 * x;
  b[14] = T(1.445305721320277) * z * c1;
  b[15] = T(-0.5900435899266435) * c2;
}

// Gradient of sum_k g[k] * b_k(x, y, z) w.r.t. the unit direction (treating x, y, z as independent).
template <typename T>
PYOPS_HOST_DEVICE Vec3<T> sh_bases_vjp(int degree, T x, T y, T z, const T* g) {
  Vec3<T> d = {T(0), T(0), T(0)};
  if (degree < 1) return d;
  const T a1 = T(0.48860251190292);
  d.y += -a1 * g[1];
  d.z += a1 * g[2];
  d.x += -a1 * g[3];
  if (degree < 2) return d;
  const T z2 = z * z;
  const T c1 = x * x - y * y, s1 = T(2) * x * y;
  const T k4 = T(0.5462742152960395), k5 = T(-1.092548430592079), k6 = T(0.9461746957575601);
  // b4 = k4 * 2xy, b5 = k5 z y, b6 = k6 z^2 - const, b7 = k5 z x, b8 = k4 (x^2 - y^2)
  d.x += k4 * T(2) * y * g[4] + k5 * z * g[7] + k4 * T(2) * x * g[8];
  d.y += k4 * T(2) * x * g[4] + k5 * z * g[5] - k4 * T(2) * y * g[8];
  d.z += k5 * y * g[5] + k6 * T(2) * z * g[6] + k5 * x * g[7];
  if (degree < 3) return d;
  const T k9 = T(-0.5900435899266435), k10 = T(1.445305721320277);
  const T k11a = T(-2.285228997322329), k11b = T(0.4570457994644658);
  const T k12a = T(1.865881662950577), k12b = T(1.119528997770346);
  const T p13 = k11a * z2 + k11b;
  // c2 = x^3 - 3 x y^2, s2 = 3 x^2 y - y^3 (expanding the recurrences)
  const T dc2_dx = T(3) * (x * x - y * y), dc2_dy = T(-6) * x * y;
  const T ds2_dx = T(6) * x * y, ds2_dy = T(3) * (x * x - y * y);
  // b9 = k9 s2
  d.x += k9 * ds2_dx * g[9];
  d.y += k9 * ds2_dy * g[9];
  // b10 = k10 z s1
  d.x += k10 * z * T(2) * y * g[10];
  d.y += k10 * z * T(2) * x * g[10];
  d.z += k10 * s1 * g[10];
  // b11 = p13 y, b13 = p13 x, dp13/dz = 2 k11a z
  d.y += p13 * g[11];
  d.x += p13 * g[13];
  d.z += T(2) * k11a * z * (y * g[11] + x * g[13]);
  // b12 = k12a z^3 - k12b z
  d.z += (T(3) * k12a * z2 - k12b) * g[12];
  // b14 = k10 z c1
  d.x += k10 * z * T(2) * x * g[14];
  d.y += -k10 * z * T(2) * y * g[14];
  d.z += k10 * c1 * g[14];
  // b15 = k9 c2
  d.x += k9 * dc2_dx * g[15];
  d.y += k9 * dc2_dy * g[15];
  return d;
}

// ---------------------------------------------------------------------------------------------------------
// Tile intersection
// ---------------------------------------------------------------------------------------------------------

// A rectangle of tiles [x0, x1) x [y0, y1).
struct TileRect {
  int32_t x0, y0, x1, y1;
  PYOPS_HOST_DEVICE int64_t count() const { return int64_t(x1 - x0) * (y1 - y0); }
};

// A tile coordinate clamped to [0, limit] and truncated to int; NaN goes to 0 (an empty range).
template <typename T>
PYOPS_HOST_DEVICE int32_t clamp_tile(T v, int64_t limit) {
  if (!(v > T(0))) return 0;
  if (v >= static_cast<T>(limit)) return static_cast<int32_t>(limit);
  return static_cast<int32_t>(v);
}

// The tiles a Gaussian's radius box touches, as gsplat computes them: in units of tiles, [floor(m - r),
// ceil(m + r)) per axis, clamped to the tile_width x tile_height grid; empty for a zero radius (a culled pair).
template <typename T>
PYOPS_HOST_DEVICE TileRect tile_rect(T mx, T my, int32_t rx, int32_t ry, int64_t tile_size, int64_t tile_width,
                                     int64_t tile_height) {
  if (rx <= 0 || ry <= 0) return {0, 0, 0, 0};
  const T ts = static_cast<T>(tile_size);
  const T tx = mx / ts, ty = my / ts, trx = static_cast<T>(rx) / ts, try_ = static_cast<T>(ry) / ts;
  TileRect r;
  r.x0 = clamp_tile(floor_(tx - trx), tile_width);
  r.y0 = clamp_tile(floor_(ty - try_), tile_height);
  r.x1 = clamp_tile(ceil_(tx + trx), tile_width);
  r.y1 = clamp_tile(ceil_(ty + try_), tile_height);
  if (r.x1 < r.x0) r.x1 = r.x0;
  if (r.y1 < r.y0) r.y1 = r.y0;
  return r;
}

// The depth field of an intersection key: the float32 bit pattern of the depth (gsplat's). Positive floats
// order like their bit patterns; float64 depths use the float32 value's bits (gsplat's CUDA kernel reinterprets
// the low half of the double, which is not an order; its torch reference uses float32 too).
template <typename T>
PYOPS_HOST_DEVICE uint32_t depth_bits(T depth) {
  const float f = static_cast<float>(depth);
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

// Intersection key: camera << (32 + tile_bits) | tile << 32 | depth bits, with tile_bits the bit length of
// tile_width * tile_height; the camera and tile fields share the upper 32 bits. Keys are non-negative.
PYOPS_HOST_DEVICE uint64_t isect_key(uint64_t camera, uint64_t tile, int64_t tile_bits, uint32_t depth) {
  return (camera << (32 + tile_bits)) | (tile << 32) | uint64_t(depth);
}

// The (camera, tile) fields of a key.
struct IsectBucket {
  uint64_t camera, tile;
};

PYOPS_HOST_DEVICE IsectBucket isect_bucket(uint64_t key, int64_t tile_bits) {
  const uint64_t high = key >> 32;
  return {high >> tile_bits, high & ((uint64_t(1) << tile_bits) - 1)};
}

// ---------------------------------------------------------------------------------------------------------
// Per-pixel blending
// ---------------------------------------------------------------------------------------------------------

// Mahalanobis half-distance of the pixel centre from the Gaussian; delta = mean2d - pixel centre.
template <typename T>
PYOPS_HOST_DEVICE T gaussian_sigma(const Vec3<T>& conic, T dx, T dy) {
  return T(0.5) * (conic.x * dx * dx + conic.z * dy * dy) + conic.y * dx * dy;
}

// Per-(pixel, Gaussian) evaluation: sigma, vis = exp(-sigma), alpha = min(0.999, opacity * vis), and whether it
// blends at all. The cut order is gsplat's: a negative sigma (a conic that is not positive definite) or an
// alpha under 1/255 skips the Gaussian; the transmittance stop is applied by the caller, before blending.
template <typename T>
struct PixelHit {
  T dx, dy, vis, alpha;
  bool skip;
};

// (The CPU rasterizer blends a vector of pixels at a time with the same decisions: csrc/cpu/gaussians_raster_kernel.h.)
template <typename T>
PYOPS_HOST_DEVICE PixelHit<T> evaluate_hit(const Vec2<T>& mean2d, const Vec3<T>& conic, T opacity, T px, T py) {
  PixelHit<T> h;
  h.dx = mean2d.x - px;
  h.dy = mean2d.y - py;
  const T sigma = gaussian_sigma(conic, h.dx, h.dy);
  h.vis = exp_(-sigma);
  h.alpha = min_(max_alpha<T>(), opacity * h.vis);
  // `!(alpha >= threshold)` also skips NaN alphas.
  h.skip = sigma < T(0) || !(h.alpha >= alpha_threshold<T>());
  return h;
}

// Gradients of one blended Gaussian at one pixel given dL/dalpha: through alpha = opacity * exp(-sigma) unless
// the 0.999 clamp was active (then alpha does not depend on the inputs, as in autograd through the clamp).
template <typename T>
struct HitGrad {
  Vec2<T> v_mean2d;
  Vec3<T> v_conic;
  T v_opacity;
};

template <typename T>
PYOPS_HOST_DEVICE HitGrad<T> hit_vjp(const PixelHit<T>& h, const Vec3<T>& conic, T opacity, T v_alpha) {
  HitGrad<T> g = {{T(0), T(0)}, {T(0), T(0), T(0)}, T(0)};
  if (opacity * h.vis <= max_alpha<T>()) {
    const T v_sigma = -opacity * h.vis * v_alpha;
    g.v_conic = {T(0.5) * v_sigma * h.dx * h.dx, v_sigma * h.dx * h.dy, T(0.5) * v_sigma * h.dy * h.dy};
    g.v_mean2d = {v_sigma * (conic.x * h.dx + conic.y * h.dy), v_sigma * (conic.y * h.dx + conic.z * h.dy)};
    g.v_opacity = h.vis * v_alpha;
  }
  return g;
}

}  // namespace gs
}  // namespace pyops
