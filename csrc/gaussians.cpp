#include "pyops/gaussians.h"

#include "pyops/host_checks.h"

#include <limits>
#include <sstream>
#include <string>

namespace pyops {
namespace gs {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

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

void check_min(const char* op, const char* what, int64_t value, int64_t lo) {
  TORCH_CHECK_VALUE(value >= lo, op, ": ", what, "=", value, " must be >= ", lo);
}

}  // namespace

void check_devices(const char* op, c10::DeviceType backend, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& a : tensors) {
    if (a.t == nullptr || !a.t->defined()) continue;
    if (first == nullptr) {
      first = &a;
      continue;
    }
    TORCH_CHECK_VALUE(a.t->device() == first->t->device(), op, ": `", a.name, "` is on ", a.t->device(), " but `",
                      first->name, "` is on ", first->t->device());
  }
  if (first != nullptr)
    TORCH_CHECK_VALUE(first->t->device().type() == backend, op, ": `", first->name, "` is on ", first->t->device(),
                      ", expected a ", c10::DeviceTypeName(backend), " tensor for this backend");
}

at::Tensor checked(const at::Tensor& t, const char* op, const char* name, std::initializer_list<int64_t> shape,
                   std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(t.defined(), op, ": `", name, "` is undefined");
  if (dtype.has_value()) {
    TORCH_CHECK_TYPE(t.scalar_type() == *dtype, op, ": `", name, "` must be ", *dtype, ", got ", t.scalar_type());
  } else {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `", name,
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
  TORCH_CHECK_VALUE(ok, op, ": `", name, "` must have shape ", shape_string(shape), ", got ", t.sizes());
  return t.contiguous();
}

// ---------------------------------------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------------------------------------

ProjectInputs prepare_project(const char* op, const at::Tensor& means, const at::Tensor& quats,
                              const at::Tensor& scales, const std::optional<at::Tensor>& opacities,
                              const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                              c10::DeviceType backend) {
  check_devices(op, backend,
                {{"means", &means},
                 {"quats", &quats},
                 {"scales", &scales},
                 {"opacities", opacities.has_value() ? &*opacities : nullptr},
                 {"viewmats", &viewmats},
                 {"Ks", &Ks}});
  ProjectInputs p;
  p.backend = backend;
  p.means = checked(means, op, "means", {-1, 3});
  p.n = p.means.size(0);
  const auto dt = p.means.scalar_type();
  p.quats = checked(quats, op, "quats", {p.n, 4}, dt);
  p.scales = checked(scales, op, "scales", {p.n, 3}, dt);
  if (opacities.has_value()) p.opacities = checked(*opacities, op, "opacities", {p.n}, dt);
  p.viewmats = checked(viewmats, op, "viewmats", {-1, 4, 4}, dt);
  p.c = p.viewmats.size(0);
  p.Ks = checked(Ks, op, "Ks", {p.c, 3, 3}, dt);
  check_min(op, "width", width, 1);
  check_min(op, "height", height, 1);
  p.width = width;
  p.height = height;
  if (check_values(op, backend)) {  // pyops.project_gaussians' finiteness checks, so its eager path skips them
    check_finite(op, p.means, "means");
    check_finite(op, p.quats, "quats");
    check_finite(op, p.scales, "scales");
    if (p.opacities.defined()) check_finite(op, p.opacities, "opacities");
    check_finite(op, p.viewmats, "viewmats");
    check_finite(op, p.Ks, "Ks");
  }
  return p;
}

ProjectOutputs allocate_project_outputs(const ProjectInputs& p, bool antialiased) {
  const auto opt = p.means.options();
  ProjectOutputs o;
  o.radii = at::zeros({p.c, p.n, 2}, opt.dtype(at::kInt));
  o.means2d = at::zeros({p.c, p.n, 2}, opt);
  o.depths = at::zeros({p.c, p.n}, opt);
  o.conics = at::zeros({p.c, p.n, 3}, opt);
  o.compensations = antialiased ? at::zeros({p.c, p.n}, opt) : at::ones({p.c, p.n}, opt);
  return o;
}

ProjectGradInputs prepare_project_grad(const ProjectInputs& p, bool antialiased, const at::Tensor& radii,
                                       const at::Tensor& conics, const at::Tensor& compensations,
                                       const at::Tensor& v_means2d, const at::Tensor& v_depths,
                                       const at::Tensor& v_conics, const at::Tensor& v_compensations) {
  const char* op = "gs_project_bwd";
  // Without antialiasing the compensations are constant ones: neither they nor their cotangent are read.
  check_devices(op, p.backend,
                {{"means", &p.means},
                 {"radii", &radii},
                 {"conics", &conics},
                 {"compensations", antialiased ? &compensations : nullptr},
                 {"v_means2d", &v_means2d},
                 {"v_depths", &v_depths},
                 {"v_conics", &v_conics},
                 {"v_compensations", antialiased ? &v_compensations : nullptr}});
  const auto dt = p.means.scalar_type();
  ProjectGradInputs g;
  g.radii = checked(radii, op, "radii", {p.c, p.n, 2}, at::kInt);
  g.conics = checked(conics, op, "conics", {p.c, p.n, 3}, dt);
  g.v_means2d = checked(v_means2d, op, "v_means2d", {p.c, p.n, 2}, dt);
  g.v_depths = checked(v_depths, op, "v_depths", {p.c, p.n}, dt);
  g.v_conics = checked(v_conics, op, "v_conics", {p.c, p.n, 3}, dt);
  if (antialiased) {
    g.compensations = checked(compensations, op, "compensations", {p.c, p.n}, dt);
    g.v_compensations = checked(v_compensations, op, "v_compensations", {p.c, p.n}, dt);
  }
  return g;
}

ProjectGradOutputs allocate_project_grads(const ProjectInputs& p) {
  return {at::zeros_like(p.means), at::zeros_like(p.quats), at::zeros_like(p.scales)};
}

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics
// ---------------------------------------------------------------------------------------------------------

ShInputs prepare_sh(const char* op, int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                    c10::DeviceType backend) {
  TORCH_CHECK_VALUE(degree >= 0 && degree <= 3, op, ": degree=", degree, " must be in [0, 3]");
  check_devices(op, backend, {{"dirs", &dirs}, {"coeffs", &coeffs}});
  ShInputs p;
  p.backend = backend;
  p.degree = degree;
  p.dirs = checked(dirs, op, "dirs", {-1, 3});
  p.m = p.dirs.size(0);
  p.coeffs = checked(coeffs, op, "coeffs", {p.m, -1, 3}, p.dirs.scalar_type());
  p.k = p.coeffs.size(1);
  TORCH_CHECK_VALUE(p.k >= (degree + 1) * (degree + 1), op, ": `coeffs` has K=", p.k, " bases but degree ", degree,
                    " needs at least ", (degree + 1) * (degree + 1));
  if (check_values(op, backend)) {
    check_finite(op, p.dirs, "dirs");
    check_finite(op, p.coeffs, "coeffs");
  }
  return p;
}

at::Tensor allocate_sh_colors(const ShInputs& p) { return at::empty({p.m, 3}, p.dirs.options()); }

at::Tensor prepare_sh_grad(const char* op, const ShInputs& p, const at::Tensor& v_colors) {
  check_devices(op, p.backend, {{"dirs", &p.dirs}, {"v_colors", &v_colors}});
  return checked(v_colors, op, "v_colors", {p.m, 3}, p.dirs.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> allocate_sh_grads(const ShInputs& p) {
  return {at::zeros_like(p.coeffs), at::zeros_like(p.dirs)};
}

// ---------------------------------------------------------------------------------------------------------
// Tile intersection
// ---------------------------------------------------------------------------------------------------------

IntersectInputs prepare_intersect(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                  int64_t tile_size, int64_t tile_width, int64_t tile_height, c10::DeviceType backend) {
  const char* op = "gs_intersect_tiles";
  check_devices(op, backend, {{"means2d", &means2d}, {"radii", &radii}, {"depths", &depths}});
  IntersectInputs p;
  p.depths = checked(depths, op, "depths", {-1, -1});
  p.c = p.depths.size(0);
  p.n = p.depths.size(1);
  p.means2d = checked(means2d, op, "means2d", {p.c, p.n, 2}, p.depths.scalar_type());
  p.radii = checked(radii, op, "radii", {p.c, p.n, 2}, at::kInt);
  check_min(op, "tile_size", tile_size, 1);
  check_min(op, "tile_width", tile_width, 1);
  check_min(op, "tile_height", tile_height, 1);
  TORCH_CHECK_VALUE(tile_width <= (int64_t(1) << 31) / tile_height, op, ": tile_width * tile_height = ", tile_width,
                    " * ", tile_height, " is too large");
  p.tile_size = tile_size;
  p.tile_width = tile_width;
  p.tile_height = tile_height;
  p.tile_bits = bit_length(tile_width * tile_height);
  // gsplat's key: camera | tile | 32 depth bits in 64 bits, and the camera and tile fields share 32 bits.
  TORCH_CHECK_VALUE(bit_length(p.c) + p.tile_bits <= 32, op, ": ", p.c, " cameras of ", tile_width * tile_height,
                    " tiles do not fit the 32 key bits shared by the camera and tile ids");
  TORCH_CHECK_VALUE(p.c * p.n <= kInt32Max + 1, op, ": C * N = ", p.c * p.n, " does not fit the int32 flatten ids");
  if (check_finite_enabled(backend)) {  // pyops.intersect_tiles' finiteness checks
    check_finite(op, p.means2d, "means2d");
    check_finite(op, p.depths, "depths");
  }
  return p;
}

at::Tensor allocate_tiles_per_gauss(const IntersectInputs& p) {
  return at::zeros({p.c, p.n}, p.depths.options().dtype(at::kInt));
}

std::tuple<at::Tensor, at::Tensor> allocate_intersections(const IntersectInputs& p, int64_t m) {
  TORCH_CHECK_VALUE(m <= kInt32Max, "gs_intersect_tiles: ", m,
                    " (camera, Gaussian, tile) intersections do not fit int32 offsets; use fewer Gaussians or "
                    "cameras, larger tiles, or smaller radii");
  const auto opt = p.depths.options();
  return {at::empty({m}, opt.dtype(at::kLong)), at::empty({m}, opt.dtype(at::kInt))};
}

IsectOffsetsInputs prepare_isect_offsets(const at::Tensor& isect_ids, int64_t n_cameras, int64_t tile_width,
                                         int64_t tile_height, c10::DeviceType backend) {
  const char* op = "gs_isect_offsets";
  check_devices(op, backend, {{"isect_ids", &isect_ids}});
  IsectOffsetsInputs p;
  p.isect_ids = checked(isect_ids, op, "isect_ids", {-1}, at::kLong);
  check_min(op, "n_cameras", n_cameras, 0);
  check_min(op, "tile_width", tile_width, 1);
  check_min(op, "tile_height", tile_height, 1);
  p.m = p.isect_ids.size(0);
  TORCH_CHECK_VALUE(p.m <= kInt32Max, op, ": ", p.m, " intersections do not fit int32 offsets");
  // Before allocating the output: the camera and tile ids share the 32 key bits (as prepare_intersect checks).
  TORCH_CHECK_VALUE(tile_width <= (int64_t(1) << 40) / tile_height &&  // no overflow; more is > 32 bits anyway
                        bit_length(n_cameras) + bit_length(tile_width * tile_height) <= 32,
                    op, ": n_cameras=", n_cameras, " x tile_width=", tile_width, " x tile_height=", tile_height,
                    " tiles do not fit the 32 key bits of isect_ids");
  p.n_cameras = n_cameras;
  p.tile_width = tile_width;
  p.tile_height = tile_height;
  p.n_tiles = tile_width * tile_height;
  p.tile_bits = bit_length(p.n_tiles);
  return p;
}

at::Tensor allocate_isect_offsets(const IsectOffsetsInputs& p) {
  return at::zeros({p.n_cameras, p.tile_height, p.tile_width}, p.isect_ids.options().dtype(at::kInt));
}

// ---------------------------------------------------------------------------------------------------------
// Rasterization
// ---------------------------------------------------------------------------------------------------------

RasterInputs prepare_rasterize(const char* op, const at::Tensor& means2d, const at::Tensor& conics,
                               const at::Tensor& colors, const at::Tensor& opacities,
                               const std::optional<at::Tensor>& backgrounds, int64_t width, int64_t height,
                               int64_t tile_size, const at::Tensor& isect_offsets, const at::Tensor& flatten_ids,
                               c10::DeviceType backend) {
  const bool has_bg = backgrounds.has_value() && backgrounds->defined();
  check_devices(op, backend,
                {{"means2d", &means2d},
                 {"conics", &conics},
                 {"colors", &colors},
                 {"opacities", &opacities},
                 {"backgrounds", has_bg ? &*backgrounds : nullptr},
                 {"isect_offsets", &isect_offsets},
                 {"flatten_ids", &flatten_ids}});
  RasterInputs p;
  p.backend = backend;
  p.colors = checked(colors, op, "colors", {-1, -1, -1});
  p.c = p.colors.size(0);
  p.n = p.colors.size(1);
  p.d = p.colors.size(2);
  const auto dt = p.colors.scalar_type();
  p.means2d = checked(means2d, op, "means2d", {p.c, p.n, 2}, dt);
  p.conics = checked(conics, op, "conics", {p.c, p.n, 3}, dt);
  p.opacities = checked(opacities, op, "opacities", {p.c, p.n}, dt);
  if (has_bg) p.backgrounds = checked(*backgrounds, op, "backgrounds", {p.c, p.d}, dt);
  if (check_values(op, backend)) {  // pyops.rasterize_to_pixels' finiteness checks
    check_finite(op, p.means2d, "means2d");
    check_finite(op, p.conics, "conics");
    check_finite(op, p.colors, "colors");
    check_finite(op, p.opacities, "opacities");
    if (has_bg) check_finite(op, *p.backgrounds, "backgrounds");
  }
  check_min(op, "width", width, 1);
  check_min(op, "height", height, 1);
  check_min(op, "tile_size", tile_size, 1);
  p.width = width;
  p.height = height;
  p.tile_size = tile_size;
  p.tile_width = num_tiles(width, tile_size);
  p.tile_height = num_tiles(height, tile_size);
  p.isect_offsets = checked(isect_offsets, op, "isect_offsets", {p.c, p.tile_height, p.tile_width}, at::kInt);
  p.flatten_ids = checked(flatten_ids, op, "flatten_ids", {-1}, at::kInt);
  p.m = p.flatten_ids.size(0);
  TORCH_CHECK_VALUE(p.m <= kInt32Max, op, ": `flatten_ids` has ", p.m, " entries, more than int32 offsets can index");
  if (backend == c10::DeviceType::CPU) {
    const int32_t* off = p.isect_offsets.data_ptr<int32_t>();
    const int64_t n_off = p.isect_offsets.numel();
    for (int64_t i = 0; i < n_off; ++i) {
      TORCH_CHECK_VALUE(off[i] >= 0 && off[i] <= p.m && (i == 0 || off[i] >= off[i - 1]), op,
                        ": `isect_offsets` must be non-decreasing in [0, ", p.m,
                        "] (the start of each tile's range in flatten_ids); entry ", i, " is ", off[i]);
    }
    const int32_t* ids = p.flatten_ids.data_ptr<int32_t>();
    const int64_t cn = p.c * p.n;
    for (int64_t i = 0; i < p.m; ++i)
      TORCH_CHECK_VALUE(ids[i] >= 0 && ids[i] < cn, op, ": `flatten_ids` entry ", i, " is ", ids[i],
                        ", outside [0, C * N = ", cn, ")");
  }
  return p;
}

RasterOutputs allocate_raster_outputs(const RasterInputs& p) {
  const auto opt = p.colors.options();
  return {at::empty({p.c, p.height, p.width, p.d}, opt), at::empty({p.c, p.height, p.width, 1}, opt),
          at::empty({p.c, p.height, p.width}, opt.dtype(at::kInt)), at::empty({p.c, p.height, p.width, 1}, opt)};
}

RasterGradInputs prepare_rasterize_grad(const char* op, const RasterInputs& p, const at::Tensor& final_transmittances,
                                        const at::Tensor& last_ids, const at::Tensor& v_render_colors,
                                        const at::Tensor& v_render_alphas) {
  check_devices(op, p.backend,
                {{"colors", &p.colors},
                 {"final_transmittances", &final_transmittances},
                 {"last_ids", &last_ids},
                 {"v_render_colors", &v_render_colors},
                 {"v_render_alphas", &v_render_alphas}});
  const auto dt = p.colors.scalar_type();
  const int64_t c = p.c, h = p.height, w = p.width;
  RasterGradInputs g;
  g.final_transmittances = checked(final_transmittances, op, "final_transmittances", {c, h, w, 1}, dt);
  g.last_ids = checked(last_ids, op, "last_ids", {c, h, w}, at::kInt);
  g.v_render_colors = checked(v_render_colors, op, "v_render_colors", {c, h, w, p.d}, dt);
  g.v_render_alphas = checked(v_render_alphas, op, "v_render_alphas", {c, h, w, 1}, dt);
  if (p.backend == c10::DeviceType::CPU) {
    const int32_t* l = g.last_ids.data_ptr<int32_t>();
    for (int64_t i = 0, e = g.last_ids.numel(); i < e; ++i)
      TORCH_CHECK_VALUE(l[i] >= -1 && l[i] < p.m, op, ": `last_ids` entry ", i, " is ", l[i],
                        ", outside [-1, M = ", p.m, ")");
  }
  return g;
}

RasterGradOutputs allocate_raster_grads(const RasterInputs& p, bool absgrad) {
  RasterGradOutputs o;
  o.v_means2d = at::zeros_like(p.means2d);
  o.v_conics = at::zeros_like(p.conics);
  o.v_colors = at::zeros_like(p.colors);
  o.v_opacities = at::zeros_like(p.opacities);
  o.v_backgrounds = p.backgrounds.has_value() ? at::zeros_like(*p.backgrounds) : p.colors.new_empty({0});
  o.v_means2d_abs = absgrad ? at::zeros_like(p.means2d) : p.means2d.new_empty({0});
  return o;
}

}  // namespace gs
}  // namespace pyops
