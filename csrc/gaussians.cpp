#include "pyops/gaussians.h"

#include <sstream>

namespace pyops {
namespace gs {
namespace {

std::string shape_string(std::initializer_list<int64_t> shape) {
  std::ostringstream s;
  s << "[";
  bool first = true;
  for (int64_t d : shape) {
    s << (first ? "" : ", ") << (d < 0 ? std::string("*") : std::to_string(d));
    first = false;
  }
  s << "]";
  return s.str();
}

void check_size(const char* op, const char* what, int64_t value, int64_t lo) {
  TORCH_CHECK(value >= lo, op, ": ", what, "=", value, " must be >= ", lo);
}

}  // namespace

at::Tensor checked(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device_type,
                   std::initializer_list<int64_t> shape, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(t.defined(), op, ": `", name, "` is undefined");
  TORCH_CHECK(t.device().type() == device_type, op, ": `", name, "` is on ", t.device(), ", expected a ",
              c10::DeviceTypeName(device_type), " tensor for this backend");
  if (dtype.has_value()) {
    TORCH_CHECK(t.scalar_type() == *dtype, op, ": `", name, "` must be ", *dtype, ", got ", t.scalar_type());
  } else {
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `", name,
                "` must be float32 or float64, got ", t.scalar_type());
  }
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  if (ok) {
    int64_t i = 0;
    for (int64_t d : shape) {
      ok = ok && (d < 0 || t.size(i) == d);
      ++i;
    }
  }
  TORCH_CHECK(ok, op, ": `", name, "` must have shape ", shape_string(shape), ", got ", t.sizes());
  return t.contiguous();
}

ProjectInputs prepare_project(const char* op, const at::Tensor& means, const at::Tensor& quats,
                              const at::Tensor& scales, const at::Tensor& viewmats, const at::Tensor& Ks,
                              int64_t width, int64_t height, c10::DeviceType device_type) {
  ProjectInputs p;
  p.means = checked(means, op, "means", device_type, {-1, 3});
  p.n = p.means.size(0);
  const auto dt = p.means.scalar_type();
  p.quats = checked(quats, op, "quats", device_type, {p.n, 4}, dt);
  p.scales = checked(scales, op, "scales", device_type, {p.n, 3}, dt);
  p.viewmats = checked(viewmats, op, "viewmats", device_type, {-1, 4, 4}, dt);
  p.c = p.viewmats.size(0);
  p.Ks = checked(Ks, op, "Ks", device_type, {p.c, 3, 3}, dt);
  check_size(op, "width", width, 1);
  check_size(op, "height", height, 1);
  return p;
}

ShInputs prepare_sh(const char* op, int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                    c10::DeviceType device_type) {
  TORCH_CHECK(degree >= 0 && degree <= 3, op, ": degree=", degree, " must be in [0, 3]");
  ShInputs p;
  p.dirs = checked(dirs, op, "dirs", device_type, {-1, 3});
  p.m = p.dirs.size(0);
  p.coeffs = checked(coeffs, op, "coeffs", device_type, {p.m, -1, 3}, p.dirs.scalar_type());
  p.k = p.coeffs.size(1);
  TORCH_CHECK(p.k >= (degree + 1) * (degree + 1), op, ": `coeffs` has K=", p.k, " bases but degree ", degree,
              " needs at least ", (degree + 1) * (degree + 1));
  return p;
}

IntersectInputs prepare_intersect(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                  int64_t tile_size, int64_t tile_width, int64_t tile_height,
                                  c10::DeviceType device_type) {
  const char* op = "gs_intersect_tiles";
  IntersectInputs p;
  p.depths = checked(depths, op, "depths", device_type, {-1, -1});
  p.c = p.depths.size(0);
  p.n = p.depths.size(1);
  p.means2d = checked(means2d, op, "means2d", device_type, {p.c, p.n, 2}, p.depths.scalar_type());
  p.radii = checked(radii, op, "radii", device_type, {p.c, p.n, 2}, at::kInt);
  check_size(op, "tile_size", tile_size, 1);
  check_size(op, "tile_width", tile_width, 1);
  check_size(op, "tile_height", tile_height, 1);
  TORCH_CHECK(tile_width <= (int64_t(1) << 31) / tile_height, op, ": tile_width * tile_height = ",
              tile_width, " * ", tile_height, " is too large");
  p.tile_bits = bit_length(tile_width * tile_height);
  // gsplat's key: camera | tile | 32 depth bits in 64 bits, and the camera and tile fields share 32 bits.
  TORCH_CHECK(bit_length(p.c) + p.tile_bits <= 32, op, ": ", p.c, " cameras of ", tile_width * tile_height,
              " tiles do not fit the 32 key bits shared by the camera and tile ids");
  return p;
}

RasterInputs prepare_rasterize(const char* op, const at::Tensor& means2d, const at::Tensor& conics,
                               const at::Tensor& colors, const at::Tensor& opacities,
                               const std::optional<at::Tensor>& backgrounds, int64_t width, int64_t height,
                               int64_t tile_size, const at::Tensor& isect_offsets, const at::Tensor& flatten_ids,
                               c10::DeviceType device_type) {
  RasterInputs p;
  p.colors = checked(colors, op, "colors", device_type, {-1, -1, -1});
  p.c = p.colors.size(0);
  p.n = p.colors.size(1);
  p.d = p.colors.size(2);
  const auto dt = p.colors.scalar_type();
  p.means2d = checked(means2d, op, "means2d", device_type, {p.c, p.n, 2}, dt);
  p.conics = checked(conics, op, "conics", device_type, {p.c, p.n, 3}, dt);
  p.opacities = checked(opacities, op, "opacities", device_type, {p.c, p.n}, dt);
  if (backgrounds.has_value() && backgrounds->defined())
    p.backgrounds = checked(*backgrounds, op, "backgrounds", device_type, {p.c, p.d}, dt);
  check_size(op, "width", width, 1);
  check_size(op, "height", height, 1);
  check_size(op, "tile_size", tile_size, 1);
  p.tile_width = num_tiles(width, tile_size);
  p.tile_height = num_tiles(height, tile_size);
  p.isect_offsets = checked(isect_offsets, op, "isect_offsets", device_type, {p.c, p.tile_height, p.tile_width},
                           at::kInt);
  p.flatten_ids = checked(flatten_ids, op, "flatten_ids", device_type, {-1}, at::kInt);
  p.m = p.flatten_ids.size(0);
  TORCH_CHECK(p.m <= std::numeric_limits<int32_t>::max(), op, ": `flatten_ids` has ", p.m,
              " entries, more than int32 offsets can index");
  if (device_type == c10::DeviceType::CPU) {
    const int32_t* off = p.isect_offsets.data_ptr<int32_t>();
    const int64_t n_off = p.isect_offsets.numel();
    for (int64_t i = 0; i < n_off; ++i) {
      TORCH_CHECK(off[i] >= 0 && off[i] <= p.m && (i == 0 || off[i] >= off[i - 1]), op,
                  ": `isect_offsets` must be non-decreasing in [0, ", p.m, "] (the start of each tile's range in "
                  "flatten_ids); entry ", i, " is ", off[i]);
    }
    const int32_t* ids = p.flatten_ids.data_ptr<int32_t>();
    const int64_t cn = p.c * p.n;
    for (int64_t i = 0; i < p.m; ++i)
      TORCH_CHECK(ids[i] >= 0 && ids[i] < cn, op, ": `flatten_ids` entry ", i, " is ", ids[i],
                  ", outside [0, C * N = ", cn, ")");
  }
  return p;
}

}  // namespace gs
}  // namespace pyops
