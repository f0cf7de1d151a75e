// Entry points of the per-ISA CPU HexPlane kernels (hexplane_kernel.h, compiled once per level: see isa.h) and
// the plain structs the host fills for them, for scalar_t float, double, at::Half and at::BFloat16.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "isa.h"
#include "pyops/hexplane_math.h"

namespace pyops {
namespace hexplane {

constexpr int64_t kBlock = 8;           // channels per block
constexpr int64_t kGroupsPerLevel = 2;  // backward units per level (at most the level's block count)

// fp32 math for fp32/fp16/bf16 storage, fp64 for fp64. (A trait struct, not std::conditional_t: the entry
// points' mangled names must stay demanglable for tests/test_isa.py's disassembly check.)
template <typename scalar_t>
struct MathOf {
  using type = float;
};
template <>
struct MathOf<double> {
  using type = double;
};
template <typename scalar_t>
using MathType = typename MathOf<scalar_t>::type;

// Plain data only (no member functions): the copies must not share inline code (isa.h).
template <typename T>
struct PlaneDesc {
  const T* data;  // texel (b, a), block blk at data + (b * ra + a) * texel_stride + blk * block_stride
  T* grad;        // same layout; backward only
  int64_t ra, rb, texel_stride, block_stride;
};

// Keyed by the storage type S (its planes hold MathType<S>) so the entry points' signatures name no
// dependent type.
template <typename S>
struct LevelDesc {
  PlaneDesc<MathType<S>> planes[kPlanesPerLevel];
  int64_t channels, offset, nblk;
};

template <typename scalar_t>
struct Inputs {
  const scalar_t* points;  // [N, 3]
  const scalar_t* times;   // [N] or nullptr (every point at `time`)
  const int64_t* order;    // [N] or nullptr: the kernels visit point order[0], order[1], ... (cell_order)
  MathType<scalar_t> time;
  MathType<scalar_t> lo[3], scale[3];  // aabb[0] and 2 / (aabb[1] - aabb[0])
  int64_t n, total_channels;
};

PYOPS_CPU_ISA_DECLARE(
    // features [N, total_channels]; levels: channels-last planes (texel_stride F', block_stride B).
    template <typename scalar_t>
    void forward(const Inputs<scalar_t>& in, const LevelDesc<scalar_t>* levels, int64_t num_levels, scalar_t* features);
    // levels: block-major planes with zeroed grads; v_times nullptr without times.
    template <typename scalar_t>
    void backward(const Inputs<scalar_t>& in, const LevelDesc<scalar_t>* levels, int64_t num_levels,
                  const scalar_t* v_features, scalar_t* v_points, scalar_t* v_times);)

}  // namespace hexplane
}  // namespace pyops
