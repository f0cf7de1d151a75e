// Launch geometry shared by the Gaussian-splatting CUDA files (gaussians_project.cu, gaussians_intersect.cu,
// gaussians_raster.cu): one block size for the one-thread-per-item kernels, and the grid it needs.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace pyops {
namespace gs {

constexpr int kThreads = 256;

// Blocks of kThreads covering n work items. The CUDA grid's x dimension is the backend's own limit
// (RuntimeError), not a bad argument.
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  TORCH_CHECK(b <= std::numeric_limits<int32_t>::max(), "gaussians (CUDA): ", n, " work items exceed the grid limit");
  return static_cast<unsigned>(b);
}

}  // namespace gs
}  // namespace pyops
