// Host-side pieces of the Gaussian-splatting stage ops shared by the CPU and CUDA backends, in the shape of
// pyops/derf.h. Every backend's host function is prepare -> allocate -> launch:
//  - prepare_<stage> checks the forward arguments once and hands back contiguous tensors of one floating dtype;
//    prepare_<stage>_grad checks the backward's extra arguments against what prepare_<stage> returned;
//  - allocate_<stage>_outputs / allocate_<stage>_grads make the tensors the op returns (zeros where the kernels
//    only write some entries);
//  - the launch is the backend's own. Kernels trust what these hand them.
// Exception policy (pyops/_checks.py): a wrong dtype raises TypeError (TORCH_CHECK_TYPE); a wrong shape, value,
// index range or device raises ValueError (TORCH_CHECK_VALUE); messages start with the op's name and name the
// argument. Only a backend's own limits (CUDA grid and tile sizes) stay RuntimeError. prepare_project, prepare_sh and
// prepare_rasterize also check their floating inputs for NaN/inf where pyops/host_checks.h's policy asks for it
// (CPU tensors by default), as the Python checks do: the public functions' eager paths rely on these checks.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <tuple>
#include <utility>

namespace pyops {
namespace gs {

// One tensor argument, by name, for check_devices (t may be nullptr for an absent optional argument).
struct NamedTensor {
  const char* name;
  const at::Tensor* t;
};

// Every defined tensor must be on the first one's device ("op: `b` is on cpu but `a` is on cuda:0"), and that
// device must be the backend's.
void check_devices(const char* op, c10::DeviceType backend, std::initializer_list<NamedTensor> tensors);

// Checks dtype (float32/float64, or `dtype` when given) and shape (-1: any size) of `t`; returns it contiguous.
// Devices are check_devices' job.
at::Tensor checked(const at::Tensor& t, const char* op, const char* name, std::initializer_list<int64_t> shape,
                   std::optional<at::ScalarType> dtype = std::nullopt);

// Number of tiles: ceil(size / tile_size).
inline int64_t num_tiles(int64_t size, int64_t tile_size) { return (size + tile_size - 1) / tile_size; }

// Bit length of v (0 for 0), as gsplat sizes the camera and tile fields of an intersection key.
inline int64_t bit_length(int64_t v) {
  int64_t b = 0;
  while (v > 0) {
    ++b;
    v >>= 1;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// Projection: gs_project_fwd / gs_project_bwd
// ---------------------------------------------------------------------------------------------------------

struct ProjectInputs {
  at::Tensor means, quats, scales, viewmats, Ks;  // [N, 3], [N, 4], [N, 3], [C, 4, 4], [C, 3, 3]
  at::Tensor opacities;                           // [N]; undefined when absent (always in the backward)
  int64_t c = 0, n = 0, width = 0, height = 0;
  c10::DeviceType backend = c10::DeviceType::CPU;
};

ProjectInputs prepare_project(const char* op, const at::Tensor& means, const at::Tensor& quats,
                              const at::Tensor& scales, const std::optional<at::Tensor>& opacities,
                              const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                              c10::DeviceType backend);

struct ProjectOutputs {
  at::Tensor radii, means2d, depths, conics, compensations;  // [C, N, 2] int32, [C, N, 2], [C, N], [C, N, 3], [C, N]
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {radii, means2d, depths, conics, compensations};
  }
};

// Zeros (compensations: ones unless antialiased): culled pairs keep them.
ProjectOutputs allocate_project_outputs(const ProjectInputs& p, bool antialiased);

struct ProjectGradInputs {
  at::Tensor radii, conics;                   // [C, N, 2] int32, [C, N, 3]
  at::Tensor v_means2d, v_depths, v_conics;   // [C, N, 2], [C, N], [C, N, 3]
  at::Tensor compensations, v_compensations;  // [C, N]; undefined unless antialiased (then neither is read)
};

ProjectGradInputs prepare_project_grad(const ProjectInputs& p, bool antialiased, const at::Tensor& radii,
                                       const at::Tensor& conics, const at::Tensor& compensations,
                                       const at::Tensor& v_means2d, const at::Tensor& v_depths,
                                       const at::Tensor& v_conics, const at::Tensor& v_compensations);

struct ProjectGradOutputs {
  at::Tensor v_means, v_quats, v_scales;  // zeros like means, quats, scales
  std::tuple<at::Tensor, at::Tensor, at::Tensor> as_tuple() const { return {v_means, v_quats, v_scales}; }
};

ProjectGradOutputs allocate_project_grads(const ProjectInputs& p);

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics: gs_sh_fwd / gs_sh_bwd
// ---------------------------------------------------------------------------------------------------------

struct ShInputs {
  at::Tensor dirs, coeffs;  // [M, 3], [M, K, 3]
  int64_t degree = 0, m = 0, k = 0;
  c10::DeviceType backend = c10::DeviceType::CPU;
};

ShInputs prepare_sh(const char* op, int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                    c10::DeviceType backend);

// colors [M, 3], uninitialised (the kernels write every entry).
at::Tensor allocate_sh_colors(const ShInputs& p);

// Checks v_colors [M, 3] against dirs; returns it contiguous.
at::Tensor prepare_sh_grad(const char* op, const ShInputs& p, const at::Tensor& v_colors);

// (v_coeffs, v_dirs), zeros: bases beyond the degree and degree-0 directions get no gradient.
std::tuple<at::Tensor, at::Tensor> allocate_sh_grads(const ShInputs& p);

// ---------------------------------------------------------------------------------------------------------
// Tile intersection: gs_intersect_tiles / gs_isect_offsets
// ---------------------------------------------------------------------------------------------------------

struct IntersectInputs {
  at::Tensor means2d, radii, depths;  // [C, N, 2], [C, N, 2] int32, [C, N]
  int64_t c = 0, n = 0, tile_size = 0, tile_width = 0, tile_height = 0;
  int64_t tile_bits = 0;  // bits of the tile id in an intersection key (bit length of tile_width * tile_height)
};

IntersectInputs prepare_intersect(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                  int64_t tile_size, int64_t tile_width, int64_t tile_height, c10::DeviceType backend);

// tiles_per_gauss [C, N] int32, zeros.
at::Tensor allocate_tiles_per_gauss(const IntersectInputs& p);

// (isect_ids [M] int64, flatten_ids [M] int32), uninitialised; raises when M does not fit the int32 offsets.
std::tuple<at::Tensor, at::Tensor> allocate_intersections(const IntersectInputs& p, int64_t m);

struct IsectOffsetsInputs {
  at::Tensor isect_ids;  // [M] int64, sorted
  int64_t m = 0, n_cameras = 0, tile_width = 0, tile_height = 0, n_tiles = 0, tile_bits = 0;
};

IsectOffsetsInputs prepare_isect_offsets(const at::Tensor& isect_ids, int64_t n_cameras, int64_t tile_width,
                                         int64_t tile_height, c10::DeviceType backend);

// isect_offsets [C, TH, TW] int32, zeros (with no intersections every tile starts, and ends, at 0).
at::Tensor allocate_isect_offsets(const IsectOffsetsInputs& p);

// ---------------------------------------------------------------------------------------------------------
// Rasterization: gs_rasterize_fwd / gs_rasterize_bwd
// ---------------------------------------------------------------------------------------------------------

struct RasterInputs {
  at::Tensor means2d, conics, colors, opacities;  // [C, N, 2], [C, N, 3], [C, N, D], [C, N]
  std::optional<at::Tensor> backgrounds;          // [C, D]
  at::Tensor isect_offsets, flatten_ids;          // [C, TH, TW] int32, [M] int32
  int64_t c = 0, n = 0, d = 0, m = 0, width = 0, height = 0, tile_size = 0, tile_width = 0, tile_height = 0;
  c10::DeviceType backend = c10::DeviceType::CPU;
};

// On CPU, where reading them is cheap, also checks that isect_offsets are non-decreasing in [0, M] and that
// flatten_ids lie in [0, C * N), so that a bad intersection list cannot make a kernel read out of bounds.
RasterInputs prepare_rasterize(const char* op, const at::Tensor& means2d, const at::Tensor& conics,
                               const at::Tensor& colors, const at::Tensor& opacities,
                               const std::optional<at::Tensor>& backgrounds, int64_t width, int64_t height,
                               int64_t tile_size, const at::Tensor& isect_offsets, const at::Tensor& flatten_ids,
                               c10::DeviceType backend);

struct RasterOutputs {
  at::Tensor render_colors, render_alphas, last_ids, final_transmittances;  // [C, H, W, D], [.., 1], [C, H, W], [.., 1]
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {render_colors, render_alphas, last_ids, final_transmittances};
  }
};

// Uninitialised: the kernels write every pixel.
RasterOutputs allocate_raster_outputs(const RasterInputs& p);

struct RasterGradInputs {
  at::Tensor final_transmittances, last_ids;    // [C, H, W, 1], [C, H, W] int32
  at::Tensor v_render_colors, v_render_alphas;  // [C, H, W, D], [C, H, W, 1]
};

// On CPU also checks that last_ids lie in [-1, M) (the CUDA kernel clamps them to its tile's range instead).
RasterGradInputs prepare_rasterize_grad(const char* op, const RasterInputs& p, const at::Tensor& final_transmittances,
                                        const at::Tensor& last_ids, const at::Tensor& v_render_colors,
                                        const at::Tensor& v_render_alphas);

struct RasterGradOutputs {
  at::Tensor v_means2d, v_conics, v_colors, v_opacities;  // zeros like the inputs
  at::Tensor v_backgrounds;                               // zeros [C, D]; empty (0,) without backgrounds
  at::Tensor v_means2d_abs;                               // zeros [C, N, 2]; empty (0,) unless absgrad
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, v_means2d_abs};
  }
};

RasterGradOutputs allocate_raster_grads(const RasterInputs& p, bool absgrad);

}  // namespace gs
}  // namespace pyops
