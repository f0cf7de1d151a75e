// Host-side pieces of the Gaussian-splatting stage ops shared by the CPU and CUDA backends: argument checks
// (naming the offending argument) that hand kernels contiguous tensors of one floating dtype. Kernels trust
// what these return.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>

namespace pyops {
namespace gs {

// Checks device, dtype (float32/float64, or `dtype` when given) and shape (-1: any size) of `t`; returns it
// contiguous.
at::Tensor checked(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device_type,
                   std::initializer_list<int64_t> shape, std::optional<at::ScalarType> dtype = std::nullopt);

// Number of tiles: ceil(size / tile_size).
inline int64_t num_tiles(int64_t size, int64_t tile_size) { return (size + tile_size - 1) / tile_size; }

struct ProjectInputs {
  at::Tensor means, quats, scales, viewmats, Ks;  // [N, 3], [N, 4], [N, 3], [C, 4, 4], [C, 3, 3]
  int64_t c = 0, n = 0;
};

ProjectInputs prepare_project(const char* op, const at::Tensor& means, const at::Tensor& quats,
                              const at::Tensor& scales, const at::Tensor& viewmats, const at::Tensor& Ks,
                              int64_t width, int64_t height, c10::DeviceType device_type);

struct ShInputs {
  at::Tensor dirs, coeffs;  // [M, 3], [M, K, 3]
  int64_t m = 0, k = 0;
};

ShInputs prepare_sh(const char* op, int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                    c10::DeviceType device_type);

struct IntersectInputs {
  at::Tensor means2d, radii, depths;  // [C, N, 2], [C, N, 2] int32, [C, N]
  int64_t c = 0, n = 0;
  int64_t tile_bits = 0;  // bits of the tile id in an intersection key (bit length of tile_width * tile_height)
};

IntersectInputs prepare_intersect(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                  int64_t tile_size, int64_t tile_width, int64_t tile_height,
                                  c10::DeviceType device_type);

struct RasterInputs {
  at::Tensor means2d, conics, colors, opacities;  // [C, N, 2], [C, N, 3], [C, N, D], [C, N]
  std::optional<at::Tensor> backgrounds;          // [C, D]
  at::Tensor isect_offsets, flatten_ids;           // [C, TH, TW] int32, [M] int32
  int64_t c = 0, n = 0, d = 0, m = 0, tile_width = 0, tile_height = 0;
};

// Also checks (on CPU, where reading them is cheap) that tile offsets are non-decreasing in [0, M] and that
// flatten ids lie in [0, C * N), so that a bad intersection list cannot make a kernel read out of bounds.
RasterInputs prepare_rasterize(const char* op, const at::Tensor& means2d, const at::Tensor& conics,
                               const at::Tensor& colors, const at::Tensor& opacities,
                               const std::optional<at::Tensor>& backgrounds, int64_t width, int64_t height,
                               int64_t tile_size, const at::Tensor& isect_offsets, const at::Tensor& flatten_ids,
                               c10::DeviceType device_type);

// Bit length of v (0 for 0), as gsplat sizes the camera and tile fields of an intersection key.
inline int64_t bit_length(int64_t v) {
  int64_t b = 0;
  while (v > 0) {
    ++b;
    v >>= 1;
  }
  return b;
}

}  // namespace gs
}  // namespace pyops
