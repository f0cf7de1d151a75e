// CPU backend of pyops::hexplane_fwd / hexplane_bwd: host entry points and registration; the kernels
// (hexplane_kernel.h) run in the ISA copy that pyops::cpu_isa::active() names (isa.h).
//
// Layout: each math plane (F, R_b, R_a) is re-laid per call in blocks of B = 8 channels (F zero-padded to F'):
// the inner loops over a block's B channels vectorise. The forward reads it channels-last, (R_b, R_a, F'), so
// the cache lines a point touches serve all its channels; the backward block-major, (F' / B, R_b, R_a, B), so
// a unit (below) touches only its own blocks' cache lines.
//  - forward: parallel over points; per point and level the twelve lerp coordinates once, then per block the
//    product of the six bilinear samples.
//  - backward: deterministic without atomics, by ownership. A unit is (level, group of blocks); it walks
//    every point in order, accumulates its blocks of the six planes' gradients (no other unit touches them)
//    and writes its share of each point's coordinate gradient to its own row of a [units, N, 4] buffer,
//    which a second pass sums in unit order. The group count per level is fixed (kGroupsPerLevel), so the
//    result does not depend on the thread count. Units are ordered group-major (levels interleaved) so each
//    thread's contiguous range mixes cheap coarse and expensive fine levels. A unit recomputes only the
//    coordinates and corner weights (cheap); its samples, products and scatters are for its own channels, so
//    no channel work is repeated, and its working set (its blocks of one level's planes and gradients) is a
//    fraction of the whole, which keeps the scattered read-modify-writes in cache. (Tried: one pass over a
//    fixed partition of the points into P chunks with private channels-last gradient buffers summed in chunk
//    order: no faster on 2 threads, 20% slower on 1, from the full working set per thread and P x plane
//    memory.)
// Both kernels visit the points grouped by a coarse cell of the box (cell_order), not in memory order.
// With a shared time the time planes arrive as (F, 1, R_a) lines (math_planes()), read as planes with R_b = 1.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "hexplane_kernel_isa.h"
#include "pyops/hexplane.h"

namespace pyops {
namespace hexplane {
namespace {

// (F, R_b, R_a) -> (R_b, R_a, F') (channels_last) or (F' / B, R_b, R_a, B), F' = ceil(F / B) * B, zero-padded
// channels.
at::Tensor to_blocks(const at::Tensor& plane, bool channels_last) {
  const int64_t f = plane.size(0), nblk = (f + kBlock - 1) / kBlock;
  at::Tensor padded = plane;
  if (nblk * kBlock != f) {
    padded = at::zeros({nblk * kBlock, plane.size(1), plane.size(2)}, plane.options());
    padded.narrow(0, 0, f).copy_(plane);
  }
  if (channels_last) return padded.permute({1, 2, 0}).contiguous();
  return padded.view({nblk, kBlock, plane.size(1), plane.size(2)}).permute({0, 2, 3, 1}).contiguous();
}

// Inverse of to_blocks(plane, false) for a gradient: a fresh (F, R_b, R_a) tensor.
at::Tensor from_blocks(const at::Tensor& blocks, int64_t f) {
  const int64_t nblk = blocks.size(0), rb = blocks.size(1), ra = blocks.size(2);
  return blocks.permute({0, 3, 1, 2}).reshape({nblk * kBlock, rb, ra}).narrow(0, 0, f).contiguous();
}

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const Problem& p) {
  using T = MathType<scalar_t>;
  Inputs<scalar_t> in;
  in.n = p.n;
  in.total_channels = p.total_channels;
  in.points = p.points.data_ptr<scalar_t>();
  in.times = p.shared_time() ? nullptr : p.times.data_ptr<scalar_t>();
  in.order = nullptr;  // memory order; the entry points set cell_order()
  in.time = static_cast<T>(p.time);
  const scalar_t* box = p.aabb.data_ptr<scalar_t>();
  for (int d = 0; d < 3; ++d) {
    in.lo[d] = static_cast<T>(box[d]);
    in.scale[d] = T(2) / (static_cast<T>(box[3 + d]) - in.lo[d]);
  }
  return in;
}

// The points' visiting order: grouped by a cell of a coarse kCells^3 grid over the box (a stable counting sort,
// O(N)), so consecutive points read and write nearby texels of the spatial planes. The kernels are bound by the
// latency of those scattered accesses, and points in memory order (random in space, as a Gaussian model's are)
// miss the cache on nearly every corner. The rows of features / v_features are then visited out of order too
// (the kernels prefetch them). At 4DGS's D-NeRF sizes (N = 200k, per-point times) forward+backward went from
// ~245 to ~220 ms; 8^3 to 32^3 cells measured the same. Any order gives the same features; the plane gradients'
// summation order is this fixed one (deterministic).
template <typename scalar_t>
at::Tensor cell_order(const Inputs<scalar_t>& in) {
  using T = MathType<scalar_t>;
  constexpr int64_t kCells = 8;
  std::vector<int16_t> cell(in.n);
  at::parallel_for(0, in.n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t key = 0;
      for (int d = 2; d >= 0; --d) {
        const T q = normalize<T>(static_cast<T>(in.points[i * 3 + d]), in.lo[d], in.scale[d]);  // [-1, 1] inside
        const int64_t c = static_cast<int64_t>((q + T(1)) * T(0.5 * kCells));  // points are finite (prepare)
        key = key * kCells + std::min<int64_t>(std::max<int64_t>(c, 0), kCells - 1);
      }
      cell[i] = static_cast<int16_t>(key);
    }
  });
  std::vector<int64_t> start(kCells * kCells * kCells + 1, 0);
  for (int64_t i = 0; i < in.n; ++i) ++start[cell[i] + 1];
  for (size_t c = 1; c < start.size(); ++c) start[c] += start[c - 1];
  at::Tensor order = at::empty({in.n}, at::kLong);
  int64_t* o = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < in.n; ++i) o[start[cell[i]]++] = i;
  return order;
}

template <typename S>
std::vector<LevelDesc<S>> describe(const Problem& p, const std::vector<at::Tensor>& blocks,
                                   const std::vector<at::Tensor>& grads, bool channels_last) {
  using T = MathType<S>;
  std::vector<LevelDesc<S>> levels(p.levels.size());
  for (size_t l = 0; l < levels.size(); ++l) {
    LevelDesc<S>& d = levels[l];
    d.channels = p.levels[l].channels;
    d.offset = p.levels[l].offset;
    d.nblk = (d.channels + kBlock - 1) / kBlock;
    for (int k = 0; k < kPlanesPerLevel; ++k) {
      const at::Tensor& b = blocks[l * kPlanesPerLevel + k];
      T* g = grads.empty() ? nullptr : grads[l * kPlanesPerLevel + k].data_ptr<T>();
      if (channels_last) {  // (rb, ra, F')
        d.planes[k] = {b.data_ptr<T>(), g, b.size(1), b.size(0), b.size(2), kBlock};
      } else {  // (nblk, rb, ra, B)
        d.planes[k] = {b.data_ptr<T>(), g, b.size(2), b.size(1), kBlock, b.size(1) * b.size(2) * kBlock};
      }
    }
  }
  return levels;
}

// ------------------------------------------------------------------------------------------------------
// Entry points.

std::vector<at::Tensor> blocked_planes(const Problem& p, bool channels_last) {
  std::vector<at::Tensor> blocks;
  for (const at::Tensor& plane : math_planes(p)) blocks.push_back(to_blocks(plane, channels_last));
  return blocks;
}

at::Tensor hexplane_fwd_cpu(const at::Tensor& points, const std::optional<at::Tensor>& times, double time,
                            at::TensorList planes, const at::Tensor& aabb) {
  const Problem p = prepare("hexplane_fwd", points, times, time, planes, aabb, c10::DeviceType::CPU);
  at::Tensor features = at::empty({p.n, p.total_channels}, p.points.options());
  if (p.n == 0) return features;
  const std::vector<at::Tensor> blocks = blocked_planes(p, /*channels_last=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype(), "hexplane_fwd_cpu", [&] {
    const auto levels = describe<scalar_t>(p, blocks, {}, true);
    Inputs<scalar_t> in = make_inputs<scalar_t>(p);
    const at::Tensor order = cell_order(in);
    in.order = order.data_ptr<int64_t>();
    PYOPS_CPU_ISA_CALL(forward<scalar_t>, in, levels.data(), int64_t(levels.size()), features.data_ptr<scalar_t>());
  });
  return features;
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> hexplane_bwd_cpu(const at::Tensor& v_features,
                                                                             const at::Tensor& points,
                                                                             const std::optional<at::Tensor>& times,
                                                                             double time, at::TensorList planes,
                                                                             const at::Tensor& aabb) {
  const Problem p = prepare("hexplane_bwd", points, times, time, planes, aabb, c10::DeviceType::CPU);
  const at::Tensor v_out = prepare_grad("hexplane_bwd", v_features, p);
  at::Tensor v_points = at::empty({p.n, 3}, p.points.options());
  at::Tensor v_times = at::empty({p.shared_time() ? 0 : p.n}, p.points.options());
  const std::vector<at::Tensor> blocks = blocked_planes(p, /*channels_last=*/false);
  std::vector<at::Tensor> grads;
  for (const at::Tensor& b : blocks) grads.push_back(at::zeros_like(b));
  if (p.n != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype(), "hexplane_bwd_cpu", [&] {
      const auto levels = describe<scalar_t>(p, blocks, grads, false);
      Inputs<scalar_t> in = make_inputs<scalar_t>(p);
      const at::Tensor order = cell_order(in);
      in.order = order.data_ptr<int64_t>();
      PYOPS_CPU_ISA_CALL(backward<scalar_t>, in, levels.data(), int64_t(levels.size()), v_out.data_ptr<scalar_t>(),
                         v_points.data_ptr<scalar_t>(), p.shared_time() ? nullptr : v_times.data_ptr<scalar_t>());
    });
  }
  std::vector<at::Tensor> math_grads;
  for (size_t i = 0; i < grads.size(); ++i)
    math_grads.push_back(from_blocks(grads[i], p.levels[i / kPlanesPerLevel].channels));
  return {v_points, v_times, plane_grads(p, math_grads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("hexplane_fwd", &hexplane_fwd_cpu);
  m.impl("hexplane_bwd", &hexplane_bwd_cpu);
}

}  // namespace hexplane
}  // namespace pyops
