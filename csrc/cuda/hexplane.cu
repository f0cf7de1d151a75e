// CUDA backend of pyops::hexplane_fwd / hexplane_bwd.
//
// Each call re-lays the math planes (math_planes(): fp32, the shared time's lines in place of the time planes)
// channels-last, (R_b, R_a, F), so a texel's F channels are one coalesced run. One launch per level: a group
// of G lanes (G = the power of two >= F, at most 32; groups never straddle a warp) serves one point, lane j
// taking channels j, j + G, ...; every lane computes the point's twelve lerp coordinates itself (cheap ALU,
// no shared memory).
//  - forward: each lane multiplies its channels' six bilinear samples and writes them.
//  - backward: each lane forms d loss / d sample_k = v_f * prod_{j != k} s_j (prefix and suffix products),
//    scatters the four corner gradients of each plane with atomicAdd into fp32 channels-last buffers, and
//    sums its channels' share of d loss / d (x', y', z', t); a butterfly over the group's lanes adds the
//    channels up and the group's lane 0 adds the level's share into an fp32 [N, 4] buffer (one lane per point
//    in each level's launch, and the launches run in stream order: no atomics there, deterministic).
//    Plane gradients use atomics, so their low bits can vary from run to run.
// No host syncs: the box is read by the kernels (and by ATen ops on the device for the final chain rule).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "pyops/dispatch.h"
#include "pyops/hexplane.h"
#include "pyops/hexplane_math.h"

namespace pyops {
namespace hexplane {
namespace {

constexpr int kThreads = 256;

// One level's planes on the device, channels-last fp32; grads (backward only) in the same layout.
struct LevelArgs {
  const float* planes[kPlanesPerLevel];
  float* grads[kPlanesPerLevel];
  int ra[kPlanesPerLevel], rb[kPlanesPerLevel];  // < 2^31: prepare() caps a plane's texels
  int64_t channels, offset;
};

template <typename scalar_t>
struct PointArgs {
  const scalar_t* points;  // [N, 3]
  const scalar_t* times;   // [N] or nullptr (then every point is at `time`)
  const scalar_t* aabb;    // [2, 3]
  float time;
  int64_t n;
};

template <typename scalar_t>
__device__ __forceinline__ void point_coords(const PointArgs<scalar_t>& pa, int64_t n, float* q) {
#pragma unroll
  for (int d = 0; d < 3; ++d) {
    const float lo = static_cast<float>(pa.aabb[d]);
    const float scale = 2.f / (static_cast<float>(pa.aabb[3 + d]) - lo);
    q[d] = normalize<float>(static_cast<float>(pa.points[n * 3 + d]), lo, scale);
  }
  q[3] = pa.times ? static_cast<float>(pa.times[n]) : pa.time;
}

// Texel indices (times F + c for the element; int32: prepare() caps a plane at 2^31 - 1 texels, and the
// narrower indices keep the backward's registers down) and weights of plane k at q.
struct Corners {
  int t00, t01, t10, t11;
  float wa, wb, dwa, dwb;
};

__device__ __forceinline__ Corners corners(const LevelArgs& lv, const float* q, int k) {
  const Lerp<float> a = lerp_coord<float>(q[plane_a(k)], lv.ra[k]);
  const Lerp<float> b = lerp_coord<float>(q[plane_b(k)], lv.rb[k]);
  const int ra = lv.ra[k], a0 = int(a.i0), a1 = int(a.i1), b0 = int(b.i0) * ra, b1 = int(b.i1) * ra;
  return {b0 + a0, b0 + a1, b1 + a0, b1 + a1, a.w, b.w, a.dw, b.dw};
}

// ------------------------------------------------------------------------------------------------------
// Kernels.

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fwd_level_kernel(PointArgs<scalar_t> pa, LevelArgs lv, int group, scalar_t* __restrict__ out, int64_t c_total) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = tid / group;
  const int lane = int(tid % group);
  if (n >= pa.n) return;
  float q[4];
  point_coords(pa, n, q);
  const int64_t f = lv.channels;
  for (int64_t c = lane; c < f; c += group) {
    float acc = 1.f;
#pragma unroll
    for (int k = 0; k < kPlanesPerLevel; ++k) {
      // Recomputed per channel rather than kept for all six planes: with F <= 32 a lane has one channel,
      // and registers are what limits occupancy here.
      const Corners cc = corners(lv, q, k);
      const float* pl = lv.planes[k];
      const float s =
          bilinear<float>(__ldg(pl + int64_t(cc.t00) * f + c), __ldg(pl + int64_t(cc.t01) * f + c),
                          __ldg(pl + int64_t(cc.t10) * f + c), __ldg(pl + int64_t(cc.t11) * f + c), cc.wa, cc.wb);
      acc = k == 0 ? s : acc * s;
    }
    out[n * c_total + lv.offset + c] = static_cast<scalar_t>(acc);
  }
}

// coord_grad [N, 4] fp32: this level's d loss / d (x', y', z', t) is added to the point's row.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_level_kernel(PointArgs<scalar_t> pa, LevelArgs lv, int group, const scalar_t* __restrict__ v_features,
                     int64_t c_total, float* __restrict__ coord_grad) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = tid / group;
  const int lane = int(tid % group);
  // Lanes past the last point stay for the shuffles below (groups share warps); they do no work.
  const bool active = n < pa.n;
  float cg[4] = {0.f, 0.f, 0.f, 0.f};
  if (active) {
    float q[4];
    point_coords(pa, n, q);
    const int64_t f = lv.channels;
    for (int64_t c = lane; c < f; c += group) {
      const float g = static_cast<float>(v_features[n * c_total + lv.offset + c]);
      float s[kPlanesPerLevel];
#pragma unroll
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const Corners cc = corners(lv, q, k);
        const float* pl = lv.planes[k];
        s[k] = bilinear<float>(__ldg(pl + int64_t(cc.t00) * f + c), __ldg(pl + int64_t(cc.t01) * f + c),
                               __ldg(pl + int64_t(cc.t10) * f + c), __ldg(pl + int64_t(cc.t11) * f + c), cc.wa, cc.wb);
      }
      // d loss / d s_k = g * prod_{j != k} s_j, by prefix and suffix products (a zero sample is fine).
      float gs[kPlanesPerLevel];
      float prefix = g;
#pragma unroll
      for (int k = 0; k < kPlanesPerLevel; ++k) gs[k] = prefix, prefix *= s[k];
      float suffix = 1.f;
#pragma unroll
      for (int k = kPlanesPerLevel - 1; k >= 0; --k) gs[k] *= suffix, suffix *= s[k];
#pragma unroll
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        // Corners and texels again (L1 hits) rather than 24 values held in registers across the products.
        const Corners cc = corners(lv, q, k);
        const float* pl = lv.planes[k];
        const auto r = bilinear_vjp<float>(__ldg(pl + int64_t(cc.t00) * f + c), __ldg(pl + int64_t(cc.t01) * f + c),
                                           __ldg(pl + int64_t(cc.t10) * f + c), __ldg(pl + int64_t(cc.t11) * f + c),
                                           cc.wa, cc.wb, gs[k]);
        float* gp = lv.grads[k];
        atomicAdd(gp + int64_t(cc.t00) * f + c, r.v00);
        atomicAdd(gp + int64_t(cc.t01) * f + c, r.v01);
        atomicAdd(gp + int64_t(cc.t10) * f + c, r.v10);
        atomicAdd(gp + int64_t(cc.t11) * f + c, r.v11);
        cg[plane_a(k)] += r.v_wa * cc.dwa;
        cg[plane_b(k)] += r.v_wb * cc.dwb;
      }
    }
  }
  // Butterfly over the group (aligned runs of `group` lanes of one warp; every lane of the warp is here).
  for (int off = group / 2; off > 0; off /= 2) {
#pragma unroll
    for (int d = 0; d < 4; ++d) cg[d] += __shfl_xor_sync(0xffffffffu, cg[d], off);
  }
  if (active && lane == 0) {
#pragma unroll
    for (int d = 0; d < 4; ++d) coord_grad[n * 4 + d] += cg[d];
  }
}

// ------------------------------------------------------------------------------------------------------
// Launch.

int group_size(int64_t channels) {
  int g = 1;
  while (g < channels && g < 32) g *= 2;
  return g;
}

// Math planes (F, R_b, R_a) -> channels-last (R_b, R_a, F) fp32.
std::vector<at::Tensor> channels_last(const Problem& p) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& plane : math_planes(p)) out.push_back(plane.permute({1, 2, 0}).contiguous());
  return out;
}

LevelArgs level_args(const Problem& p, size_t l, const std::vector<at::Tensor>& planes,
                     const std::vector<at::Tensor>& grads) {
  LevelArgs a;
  for (int k = 0; k < kPlanesPerLevel; ++k) {
    const at::Tensor& t = planes[l * kPlanesPerLevel + k];
    a.planes[k] = t.data_ptr<float>();
    a.grads[k] = grads.empty() ? nullptr : grads[l * kPlanesPerLevel + k].data_ptr<float>();
    a.rb[k] = int(t.size(0));
    a.ra[k] = int(t.size(1));
  }
  a.channels = p.levels[l].channels;
  a.offset = p.levels[l].offset;
  return a;
}

template <typename scalar_t>
PointArgs<scalar_t> point_args(const Problem& p) {
  return {p.points.data_ptr<scalar_t>(), p.shared_time() ? nullptr : p.times.data_ptr<scalar_t>(),
          p.aabb.data_ptr<scalar_t>(), static_cast<float>(p.time), p.n};
}

int64_t num_blocks(int64_t n, int group) { return (n * group + kThreads - 1) / kThreads; }

void check_grid(const char* op, const Problem& p) {
  TORCH_CHECK_VALUE(num_blocks(p.n, 32) <= std::numeric_limits<int32_t>::max(), op, ": ", p.n,
                    " points are more than one CUDA launch takes");
}

at::Tensor hexplane_fwd_cuda(const at::Tensor& points, const std::optional<at::Tensor>& times, double time,
                             at::TensorList planes, const at::Tensor& aabb) {
  const Problem p = prepare("hexplane_fwd", points, times, time, planes, aabb, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.points.device());
  check_grid("hexplane_fwd", p);
  at::Tensor features = at::empty({p.n, p.total_channels}, p.points.options());
  if (p.n == 0) return features;
  const std::vector<at::Tensor> cl = channels_last(p);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.dtype(), "hexplane_fwd_cuda", [&] {
    const PointArgs<scalar_t> pa = point_args<scalar_t>(p);
    for (size_t l = 0; l < p.levels.size(); ++l) {
      const int group = group_size(p.levels[l].channels);
      fwd_level_kernel<scalar_t><<<unsigned(num_blocks(p.n, group)), kThreads, 0, stream>>>(
          pa, level_args(p, l, cl, {}), group, features.data_ptr<scalar_t>(), p.total_channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return features;
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> hexplane_bwd_cuda(const at::Tensor& v_features,
                                                                              const at::Tensor& points,
                                                                              const std::optional<at::Tensor>& times,
                                                                              double time, at::TensorList planes,
                                                                              const at::Tensor& aabb) {
  const Problem p = prepare("hexplane_bwd", points, times, time, planes, aabb, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.points.device());
  check_grid("hexplane_bwd", p);
  const at::Tensor v_out = prepare_grad("hexplane_bwd", v_features, p);
  const std::vector<at::Tensor> cl = channels_last(p);
  std::vector<at::Tensor> grads;
  for (const at::Tensor& t : cl) grads.push_back(at::zeros_like(t));
  at::Tensor coord_grad = at::zeros({p.n, 4}, p.points.options().dtype(at::kFloat));
  if (p.n != 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.dtype(), "hexplane_bwd_cuda", [&] {
      const PointArgs<scalar_t> pa = point_args<scalar_t>(p);
      for (size_t l = 0; l < p.levels.size(); ++l) {
        const int group = group_size(p.levels[l].channels);
        bwd_level_kernel<scalar_t><<<unsigned(num_blocks(p.n, group)), kThreads, 0, stream>>>(
            pa, level_args(p, l, cl, grads), group, v_out.data_ptr<scalar_t>(), p.total_channels,
            coord_grad.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  // d loss / d p = d loss / d p' * 2 / (aabb[1] - aabb[0]), with the box read on the device.
  const at::Tensor box = p.aabb.to(at::kFloat);
  const at::Tensor scale = at::div(at::full({3}, 2.0, box.options()), box.select(0, 1) - box.select(0, 0));
  at::Tensor v_points = (coord_grad.narrow(1, 0, 3) * scale).to(p.dtype());
  at::Tensor v_times = p.shared_time() ? at::empty({0}, p.points.options())
                                       : coord_grad.select(1, 3).to(p.dtype(), false, /*copy=*/true);
  std::vector<at::Tensor> math_grads;
  for (const at::Tensor& g : grads) math_grads.push_back(g.permute({2, 0, 1}));
  return {v_points, v_times, plane_grads(p, math_grads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("hexplane_fwd", &hexplane_fwd_cuda);
  m.impl("hexplane_bwd", &hexplane_bwd_cuda);
}

}  // namespace hexplane
}  // namespace pyops
