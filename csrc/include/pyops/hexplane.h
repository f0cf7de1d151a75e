// Host-side pieces of the HexPlane op shared by the CPU and CUDA backends: argument checks, the planes in the
// math dtype as (F, R_b, R_a) (with the shared-time fast path's time planes reduced to one row), and the way
// back from those planes' gradients to the gradients of the planes as given. Kernels trust what prepare()
// hands them.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "pyops/hexplane_math.h"

namespace pyops {
namespace hexplane {

struct Level {
  int64_t channels = 0;  // F of the level's six planes
  int64_t offset = 0;    // its first column in the features
  int64_t res[4] = {};   // resolution along x, y, z, t
};

struct Problem {
  at::Tensor points;               // [N, 3] contiguous, dtype
  at::Tensor times;                // [N] contiguous, dtype; undefined: every point is at `time`
  double time = 0.0;               // the shared time (used only without times)
  at::Tensor aabb;                 // [2, 3] contiguous, dtype
  std::vector<at::Tensor> planes;  // the planes as given (original shapes), dtype
  std::vector<Level> levels;
  int64_t n = 0, total_channels = 0;

  bool shared_time() const { return !times.defined(); }
  at::ScalarType dtype() const { return points.scalar_type(); }
  at::ScalarType math_dtype() const { return dtype() == at::kDouble ? at::kDouble : at::kFloat; }
};

// Validates the arguments (naming the offending one: "planes[7] (level 1, xz)") and builds the problem.
// `device_type` is the backend's device; every tensor must be on points' device. A wrong dtype throws
// c10::TypeError, a wrong shape, value or device c10::ValueError. Value checks that read tensor data (aabb's
// extent; for the forward op, "<op>_fwd", finite points, times and planes) follow PYOPS_CHECK_FINITE's policy
// (pyops/host_checks.h: CPU tensors by default; on CUDA they are host syncs); aabb's extent is always checked on CPU.
Problem prepare(const char* op, const at::Tensor& points, const std::optional<at::Tensor>& times, double time,
                at::TensorList planes, const at::Tensor& aabb, c10::DeviceType device_type);

// Checks v_features [N, sum of F] against the problem; returns it contiguous in points' dtype.
at::Tensor prepare_grad(const char* op, const at::Tensor& v_features, const Problem& p);

// The planes the kernels sample, (F, R_b, R_a) in the math dtype, level-major. With a shared time, each time
// plane (xt, yt, zt) is replaced by its (F, 1, R_a) line at that time (lerp of its two rows), which the
// kernels then read with R_b = 1: the same features, two texel reads instead of four.
std::vector<at::Tensor> math_planes(const Problem& p);

// Inverse of math_planes() for gradients: from the gradients of the math planes ((F, R_b, R_a), math dtype)
// to those of the planes as given (a time line's gradient spread back over its two rows), in their dtype
// and shape.
std::vector<at::Tensor> plane_grads(const Problem& p, const std::vector<at::Tensor>& math_grads);

}  // namespace hexplane
}  // namespace pyops
