#include "pyops/hexplane.h"

#include "pyops/host_checks.h"

#include <ATen/Dispatch.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace pyops {
namespace hexplane {
namespace {

const char* const kPairNames[kPlanesPerLevel] = {"xy", "xz", "xt", "yz", "yt", "zt"};
const char kAxisNames[4] = {'x', 'y', 'z', 't'};

std::string plane_name(int64_t i) {
  return "planes[" + std::to_string(i) + "] (level " + std::to_string(i / kPlanesPerLevel) + ", " +
         kPairNames[i % kPlanesPerLevel] + ")";
}

// The plane as (F, R_b, R_a): 4DGS's (1, F, R_b, R_a) loses its leading 1.
at::Tensor plane_view(const at::Tensor& plane) { return plane.dim() == 4 ? plane.select(0, 0) : plane; }

void check_like(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& points) {
  TORCH_CHECK_VALUE(t.device() == points.device(), op, ": ", name, " is on ", t.device(), " but points is on ",
                    points.device());
  TORCH_CHECK_TYPE(t.scalar_type() == points.scalar_type(), op, ": ", name, " must have points' dtype (",
                   points.scalar_type(), "), got ", t.scalar_type());
}

// The lerp of the shared time along a time axis of `size` rows, in the math type T (the reference builds the
// time column in the math dtype).
template <typename T>
Lerp<T> time_lerp_t(double time, int64_t size) {
  return lerp_coord<T>(static_cast<T>(time), size);
}

struct TimeRows {
  int64_t i0, i1;
  double w0, w1;  // weights of rows i0 and i1, each exactly a value of the math type
};

TimeRows time_rows(const Problem& p, int64_t size) {
  if (p.math_dtype() == at::kDouble) {
    const auto l = time_lerp_t<double>(p.time, size);
    return {l.i0, l.i1, 1.0 - l.w, l.w};
  }
  const auto l = time_lerp_t<float>(p.time, size);
  return {l.i0, l.i1, double(1.0f - l.w), double(l.w)};
}

}  // namespace

Problem prepare(const char* op, const at::Tensor& points, const std::optional<at::Tensor>& times, double time,
                at::TensorList planes, const at::Tensor& aabb, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(points.device().type() == device_type, op, ": points is on ", points.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  const auto dtype = points.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && device_type == c10::DeviceType::CPU),
                   op, ": points must be ",
                   device_type == c10::DeviceType::CPU ? "float32, float16, bfloat16 or float64"
                                                       : "float32, float16 or bfloat16 (float64 on CPU only)",
                   ", got ", dtype);
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 3, op, ": points must have shape [N, 3], got ",
                    points.sizes());
  Problem p;
  p.points = points.contiguous();
  p.n = points.size(0);
  if (times.has_value()) {
    check_like(op, "times", *times, points);
    TORCH_CHECK_VALUE(times->dim() == 1 && times->size(0) == p.n, op, ": times must have shape [N] = [", p.n,
                      "] (one per point), got ", times->sizes());
    p.times = times->contiguous();
  } else {
    TORCH_CHECK_VALUE(std::isfinite(time), op, ": time must be finite, got ", time);
  }
  p.time = time;
  check_like(op, "aabb", aabb, points);
  TORCH_CHECK_VALUE(aabb.dim() == 2 && aabb.size(0) == 2 && aabb.size(1) == 3, op,
                    ": aabb must have shape [2, 3] (two corners of the box), got ", aabb.sizes());
  p.aabb = aabb.contiguous();
  // The forward ops check values (the backward ops get the same, already checked, tensors): with
  // PYOPS_CHECK_FINITE's policy (CPU tensors by default, a host sync on CUDA), so that pyops' eager fast path
  // (pyops/hexplane.py) runs no Python checks.
  const size_t op_len = std::strlen(op);
  const bool check_values =
      op_len >= 4 && std::strcmp(op + op_len - 4, "_fwd") == 0 && check_finite_enabled(device_type);
  if (check_values) {
    check_finite(op, points, "points");
    if (times.has_value()) check_finite(op, *times, "times");
  }
  if (device_type == c10::DeviceType::CPU || check_values) {  // aabb's extent: always on CPU (a cheap read)
    // Read in place on CPU (no conversion op: this runs on every call); every dtype converts to double exactly.
    const at::Tensor box = p.aabb.is_cpu() ? p.aabb : p.aabb.cpu();
    double b[6];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, box.scalar_type(), "hexplane_aabb", [&] {
      const scalar_t* data = box.const_data_ptr<scalar_t>();
      for (int i = 0; i < 6; ++i) b[i] = static_cast<double>(data[i]);
    });
    for (int d = 0; d < 3; ++d) {
      TORCH_CHECK_VALUE(std::isfinite(b[d]) && std::isfinite(b[3 + d]), op, ": aabb has non-finite values");
      TORCH_CHECK_VALUE(b[d] != b[3 + d], op,
                        ": aabb[1] must differ from aabb[0] on every axis; the box has no extent along ",
                        kAxisNames[d]);
    }
  }

  const int64_t count = static_cast<int64_t>(planes.size());
  TORCH_CHECK_VALUE(count > 0 && count % kPlanesPerLevel == 0, op,
                    ": planes must hold six planes per level (xy xz xt yz yt zt), got ", count);
  p.planes.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    const at::Tensor& plane = planes[i];
    const std::string name = plane_name(i);
    const int k = static_cast<int>(i % kPlanesPerLevel);
    check_like(op, name, plane, points);
    TORCH_CHECK_VALUE(plane.dim() == 3 || (plane.dim() == 4 && plane.size(0) == 1), op, ": ", name,
                      " must have shape [F, R_", kAxisNames[plane_b(k)], ", R_", kAxisNames[plane_a(k)],
                      "] or [1, F, R_", kAxisNames[plane_b(k)], ", R_", kAxisNames[plane_a(k)], "], got ",
                      plane.sizes());
    const at::Tensor v = plane_view(plane);
    TORCH_CHECK_VALUE(v.size(0) >= 1 && v.size(1) >= 1 && v.size(2) >= 1, op, ": ", name,
                      " must have at least one channel and one sample per axis, got shape ", plane.sizes());
    TORCH_CHECK_VALUE(v.size(1) * v.size(2) <= std::numeric_limits<int32_t>::max(), op, ": ", name, " has ",
                      v.size(1) * v.size(2), " texels per channel, more than 2^31 - 1");
    if (k == 0) {
      Level level;
      level.channels = v.size(0);
      level.offset = p.total_channels;
      p.total_channels += level.channels;
      p.levels.push_back(level);
    }
    Level& level = p.levels.back();
    TORCH_CHECK_VALUE(v.size(0) == level.channels, op, ": ", name, " has ", v.size(0), " channels but level ",
                      i / kPlanesPerLevel, "'s xy plane has ", level.channels, " (the six planes of a level share F)");
    const int axes[2] = {plane_a(k), plane_b(k)};
    const int64_t sizes[2] = {v.size(2), v.size(1)};
    for (int j = 0; j < 2; ++j) {
      int64_t& r = level.res[axes[j]];
      TORCH_CHECK_VALUE(r == 0 || r == sizes[j], op, ": ", name, " has ", sizes[j], " samples along ",
                        kAxisNames[axes[j]], " (shape ", plane.sizes(), ") but the level's earlier planes have ", r,
                        " (R_", kAxisNames[axes[j]], " must agree within a level)");
      r = sizes[j];
    }
    if (check_values) check_finite(op, plane, ("planes[" + std::to_string(i) + "]").c_str());
    p.planes.push_back(plane);
  }
  return p;
}

at::Tensor prepare_grad(const char* op, const at::Tensor& v_features, const Problem& p) {
  TORCH_CHECK_VALUE(v_features.device() == p.points.device(), op, ": v_features is on ", v_features.device(),
                    " but points is on ", p.points.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_features.scalar_type()), op,
                   ": v_features must be a floating-point tensor, got ", v_features.scalar_type());
  TORCH_CHECK_VALUE(v_features.dim() == 2 && v_features.size(0) == p.n && v_features.size(1) == p.total_channels, op,
                    ": v_features must have shape [N, sum of F] = [", p.n, ", ", p.total_channels, "], got ",
                    v_features.sizes());
  return v_features.to(p.dtype()).contiguous();
}

std::vector<at::Tensor> math_planes(const Problem& p) {
  std::vector<at::Tensor> out;
  out.reserve(p.planes.size());
  for (size_t i = 0; i < p.planes.size(); ++i) {
    at::Tensor v = plane_view(p.planes[i]);
    if (v.scalar_type() != p.math_dtype()) v = v.to(p.math_dtype());
    if (p.shared_time() && plane_b(static_cast<int>(i % kPlanesPerLevel)) == 3) {
      const TimeRows r = time_rows(p, v.size(1));
      v = v.narrow(1, r.i0, 1) * r.w0 + v.narrow(1, r.i1, 1) * r.w1;
    }
    out.push_back(v);
  }
  return out;
}

std::vector<at::Tensor> plane_grads(const Problem& p, const std::vector<at::Tensor>& math_grads) {
  std::vector<at::Tensor> out;
  out.reserve(p.planes.size());
  for (size_t i = 0; i < p.planes.size(); ++i) {
    const at::Tensor& plane = p.planes[i];
    at::Tensor g = math_grads[i];
    if (p.shared_time() && plane_b(static_cast<int>(i % kPlanesPerLevel)) == 3) {
      const at::Tensor v = plane_view(plane);
      const TimeRows r = time_rows(p, v.size(1));
      at::Tensor full = at::zeros(v.sizes(), g.options());
      full.narrow(1, r.i0, 1).add_(g, r.w0);
      full.narrow(1, r.i1, 1).add_(g, r.w1);
      g = full;
    }
    // A fresh contiguous tensor each: outputs of an op may not alias each other or a kernel's buffer.
    out.push_back(at::empty(plane_view(plane).sizes(), plane.options()).copy_(g).view(plane.sizes()));
  }
  return out;
}

}  // namespace hexplane
}  // namespace pyops
