// Inline math of the MoRel anchor ops (pyops/reference/anchors.py is the spec), shared by the CPU kernels, the
// CUDA kernels and tests/cpp/test_anchors_math.cpp: the view direction/distance of an anchor, the blend weight
// and the per-(anchor, offset) epilogue that turns the three MLP heads' outputs into one Gaussian, each with its
// VJP. T is the math type: float (fp32/fp16/bf16 storage) or double (fp64).
//
//   view:      v = anchor - cam, dist = |v|, dir = v / max(dist, eps)                      (F.normalize's eps)
//   blend:     w = exp(-lambda * decay * d), d = |tau - o| (mode 0), relu(tau - o) (1), relu(o - tau) (2)
//   epilogue:  n = tanh(o_pre), kept = visible && n > 0, opacity = kept ? n * s : 0,
//              scale = anchor_scale[3:6] * sigmoid(cov[0:3]), quat = normalize(cov[3:7]), color = sigmoid(col),
//              mean = anchor + offset * anchor_scale[0:3]; invisible anchors: quat (1, 0, 0, 0), the rest 0.
// A dropped Gaussian (not kept) passes no gradient anywhere (Scaffold-GS drops it before the rasterizer).
#pragma once

#include <cmath>

#include "pyops/host_device.h"

namespace pyops {
namespace anchors {

// Outputs per offset of the three heads: 1 opacity logit, 7 covariance values (3 scale logits, 4 quaternion
// wxyz), 3 color logits. A row of the backward's head-gradient matrix G is [opacity K | cov 7K | color 3K].
constexpr int kOpacityOut = 1, kCovOut = 7, kColorOut = 3, kHeadOut = 11;

// F.normalize's floor on the length of a view direction or quaternion.
template <typename T>
PYOPS_HOST_DEVICE T normalize_eps() {
  return T(1e-12);
}

template <typename T>
PYOPS_HOST_DEVICE T sigmoid(T x) {
  using std::exp;
  return T(1) / (T(1) + exp(-x));
}

// ---------------------------------------------------------------------------------------------------------
// y = x / max(|x|, eps) for N-vectors (F.normalize) and its VJP. With n = |x| and c = max(n, eps):
// v_x = v_y / c - [n >= eps] * (v_y . x) / c^2 * x / n (clamp_min passes the gradient where n >= eps).
template <typename T, int N>
PYOPS_HOST_DEVICE T normalize(const T* x, T* y) {
  using std::sqrt;
  T n2 = T(0);
  for (int i = 0; i < N; ++i) n2 += x[i] * x[i];
  const T n = sqrt(n2);
  const T inv_c = T(1) / (n > normalize_eps<T>() ? n : normalize_eps<T>());
  for (int i = 0; i < N; ++i) y[i] = x[i] * inv_c;
  return n;
}

// Adds the VJP of normalize (and of n = |x| with gradient v_n, the view distance's) to v_x.
template <typename T, int N>
PYOPS_HOST_DEVICE void normalize_vjp(const T* x, const T* v_y, T v_n, T* v_x) {
  using std::sqrt;
  T n2 = T(0), dot = T(0);
  for (int i = 0; i < N; ++i) n2 += x[i] * x[i], dot += v_y[i] * x[i];
  const T n = sqrt(n2);
  const T eps = normalize_eps<T>();
  const T inv_c = T(1) / (n > eps ? n : eps);  // one division: the hot loops are latency bound on divides
  // Gradient reaching n: through c (where n >= eps) plus v_n; n's own gradient x / n is 0 at n == 0 (torch's).
  T v_len = v_n;
  if (n >= eps) v_len -= dot * inv_c * inv_c;
  const T g = n >= eps ? v_len * inv_c : (n > T(0) ? v_len / n : T(0));
  for (int i = 0; i < N; ++i) v_x[i] += v_y[i] * inv_c + g * x[i];
}

// View direction and distance of an anchor seen from cam; returns dist.
template <typename T>
PYOPS_HOST_DEVICE T view_dir(const T* anchor, const T* cam, T* dir) {
  const T v[3] = {anchor[0] - cam[0], anchor[1] - cam[1], anchor[2] - cam[2]};
  return normalize<T, 3>(v, dir);
}

// Adds d(loss)/d(anchor) given the gradients of dir and dist.
template <typename T>
PYOPS_HOST_DEVICE void view_dir_vjp(const T* anchor, const T* cam, const T* v_dir, T v_dist, T* v_anchor) {
  const T v[3] = {anchor[0] - cam[0], anchor[1] - cam[1], anchor[2] - cam[2]};
  normalize_vjp<T, 3>(v, v_dir, v_dist, v_anchor);
}

// ---------------------------------------------------------------------------------------------------------
// Blend weight. mode: 0 two-sided |tau - o|, 1 forward relu(tau - o), 2 backward relu(o - tau).

template <typename T>
PYOPS_HOST_DEVICE T blend_dist(T diff, int mode) {
  if (mode == 0) return diff < T(0) ? -diff : diff;
  if (mode == 1) return diff > T(0) ? diff : T(0);
  return diff < T(0) ? -diff : T(0);
}

// d(dist)/d(diff): abs's sign (0 at 0) and relu's step (0 at the kink), as torch's autograd has them.
template <typename T>
PYOPS_HOST_DEVICE T blend_dist_slope(T diff, int mode) {
  if (mode == 0) return diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
  if (mode == 1) return diff > T(0) ? T(1) : T(0);
  return diff < T(0) ? T(-1) : T(0);
}

template <typename T>
PYOPS_HOST_DEVICE T blend_weight(T offset, T decay, T tau, T lambda, int mode) {
  using std::exp;
  return exp(-lambda * decay * blend_dist(tau - offset, mode));
}

// Gradients of w = blend_weight(...) given v_w. The gradient of tau is -v_offset (the caller sums it).
template <typename T>
struct BlendGrad {
  T v_offset, v_decay;
};

template <typename T>
PYOPS_HOST_DEVICE BlendGrad<T> blend_weight_vjp(T v_w, T offset, T decay, T tau, T lambda, int mode) {
  using std::exp;
  const T diff = tau - offset;
  const T d = blend_dist(diff, mode);
  const T v_e = v_w * exp(-lambda * decay * d);  // e = -lambda * decay * d, w = exp(e)
  return {v_e * lambda * decay * blend_dist_slope(diff, mode), -v_e * lambda * d};
}

// ---------------------------------------------------------------------------------------------------------
// Epilogue of one (anchor, offset) pair.

// The head outputs of one offset: the opacity logit (pre-tanh), 7 covariance values, 3 color logits.
template <typename T>
struct HeadOut {
  T opacity, cov[7], color[3];
};

// One Gaussian. neural_opacity is the Tanh output (the densification statistic); kept says whether it counts.
template <typename T>
struct Gaussian {
  T mean[3], quat[4], scale[3], opacity, color[3], neural_opacity;
  bool kept;
};

// mean of any anchor (the only output an invisible anchor computes).
template <typename T>
PYOPS_HOST_DEVICE void gaussian_mean(const T* anchor, const T* offset, const T* anchor_scale, T* mean) {
  for (int i = 0; i < 3; ++i) mean[i] = anchor[i] + offset[i] * anchor_scale[i];
}

// The Gaussian of an invisible anchor: no MLP, the fills.
template <typename T>
PYOPS_HOST_DEVICE Gaussian<T> invisible_gaussian(const T* anchor, const T* offset, const T* anchor_scale) {
  Gaussian<T> g;
  gaussian_mean(anchor, offset, anchor_scale, g.mean);
  g.quat[0] = T(1);
  for (int i = 1; i < 4; ++i) g.quat[i] = T(0);
  for (int i = 0; i < 3; ++i) g.scale[i] = T(0), g.color[i] = T(0);
  g.opacity = T(0);
  g.neural_opacity = T(0);
  g.kept = false;
  return g;
}

// The activated head outputs: opacity = tanh, cov[0:3] and color = sigmoid; the quaternion cov[3:7] stays raw.
// (The CPU kernel applies these with ATen's vectorised tanh / sigmoid on a whole chunk, then runs the *_activated
// functions; the CUDA kernel calls the plain ones.)
template <typename T>
PYOPS_HOST_DEVICE HeadOut<T> activate(const HeadOut<T>& h) {
  using std::tanh;
  HeadOut<T> a = h;
  a.opacity = tanh(h.opacity);
  for (int i = 0; i < 3; ++i) a.cov[i] = sigmoid(h.cov[i]), a.color[i] = sigmoid(h.color[i]);
  return a;
}

// The Gaussian of a visible anchor's offset from activated head outputs; s is the anchor's opacity scale
// (opacity_scale * blend weight).
template <typename T>
PYOPS_HOST_DEVICE Gaussian<T> visible_gaussian_activated(const HeadOut<T>& a, const T* anchor, const T* offset,
                                                         const T* anchor_scale, T s) {
  Gaussian<T> g;
  gaussian_mean(anchor, offset, anchor_scale, g.mean);
  g.neural_opacity = a.opacity;
  g.kept = a.opacity > T(0);
  g.opacity = g.kept ? a.opacity * s : T(0);
  for (int i = 0; i < 3; ++i) {
    g.scale[i] = anchor_scale[3 + i] * a.cov[i];
    g.color[i] = a.color[i];
  }
  normalize<T, 4>(a.cov + 3, g.quat);
  return g;
}

template <typename T>
PYOPS_HOST_DEVICE Gaussian<T> visible_gaussian(const HeadOut<T>& h, const T* anchor, const T* offset,
                                               const T* anchor_scale, T s) {
  return visible_gaussian_activated(activate(h), anchor, offset, anchor_scale, s);
}

// Gradients of the five differentiable outputs of one Gaussian.
template <typename T>
struct GaussianGrad {
  T v_mean[3], v_quat[4], v_scale[3], v_opacity, v_color[3];
};

// VJP of a kept Gaussian (kept == true; a dropped one has no gradient at all) from its activated head outputs a.
// Writes the gradients v_h of the head *pre-activations* and adds the direct gradients: v_offset (3, written),
// v_anchor_scale (6), v_anchor (3, the means' part) and v_s (the anchor's opacity scale).
template <typename T>
PYOPS_HOST_DEVICE void kept_gaussian_vjp_activated(const HeadOut<T>& a, const GaussianGrad<T>& v, const T* offset,
                                                   const T* anchor_scale, T s, HeadOut<T>& v_h, T* v_offset,
                                                   T* v_anchor_scale, T* v_anchor, T& v_s) {
  const T n = a.opacity;
  v_h.opacity = v.v_opacity * s * (T(1) - n * n);
  v_s += v.v_opacity * n;
  for (int i = 0; i < 3; ++i) {
    const T sc = a.cov[i];
    v_h.cov[i] = v.v_scale[i] * anchor_scale[3 + i] * sc * (T(1) - sc);
    v_anchor_scale[3 + i] += v.v_scale[i] * sc;
    const T cc = a.color[i];
    v_h.color[i] = v.v_color[i] * cc * (T(1) - cc);
    v_offset[i] = v.v_mean[i] * anchor_scale[i];
    v_anchor_scale[i] += v.v_mean[i] * offset[i];
    v_anchor[i] += v.v_mean[i];
  }
  for (int i = 0; i < 4; ++i) v_h.cov[3 + i] = T(0);
  normalize_vjp<T, 4>(a.cov + 3, v.v_quat, T(0), v_h.cov + 3);
}

// The same from the raw head outputs h.
template <typename T>
PYOPS_HOST_DEVICE void kept_gaussian_vjp(const HeadOut<T>& h, const GaussianGrad<T>& v, const T* offset,
                                         const T* anchor_scale, T s, HeadOut<T>& v_h, T* v_offset, T* v_anchor_scale,
                                         T* v_anchor, T& v_s) {
  kept_gaussian_vjp_activated(activate(h), v, offset, anchor_scale, s, v_h, v_offset, v_anchor_scale, v_anchor, v_s);
}

// The opacity scale s = opacity_scale * blend weight of an anchor (either factor optional).
template <typename T>
PYOPS_HOST_DEVICE T opacity_scale_of(bool has_scale, T opacity_scale, bool has_blend, T offset, T decay, T tau,
                                     T lambda, int mode, T* blend_w) {
  T s = has_scale ? opacity_scale : T(1);
  T w = T(1);
  if (has_blend) w = blend_weight(offset, decay, tau, lambda, mode);
  if (blend_w) *blend_w = w;
  return s * w;
}

}  // namespace anchors
}  // namespace pyops
