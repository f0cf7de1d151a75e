// CPU backend of pyops::hexplane_fwd / hexplane_bwd.
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
//    result does not depend on the thread count.
// With a shared time the time planes arrive as (F, 1, R_a) lines (math_planes()), read as planes with R_b = 1.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pyops/hexplane.h"
#include "pyops/hexplane_math.h"

namespace pyops {
namespace hexplane {
namespace {

constexpr int64_t kBlock = 8;           // channels per block
constexpr int64_t kGroupsPerLevel = 2;  // backward units per level (at most the level's block count)

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

template <typename T>
struct PlaneDesc {
  const T* data;  // texel (b, a), block blk at data + (b * ra + a) * texel_stride + blk * block_stride
  T* grad;        // same layout; backward only
  int64_t ra, rb, texel_stride, block_stride;
};

template <typename T>
struct LevelDesc {
  PlaneDesc<T> planes[kPlanesPerLevel];
  int64_t channels, offset, nblk;
};

// The four corner offsets (in elements, within one block) and the weights of one plane at one point.
template <typename T>
struct Corners {
  int64_t o00, o01, o10, o11;
  T wa, wb, dwa, dwb;
};

template <typename T>
inline Corners<T> corners(const PlaneDesc<T>& pl, const T* q, int k) {
  const Lerp<T> a = lerp_coord<T>(q[plane_a(k)], pl.ra);
  const Lerp<T> b = lerp_coord<T>(q[plane_b(k)], pl.rb);
  const int64_t ts = pl.texel_stride;
  return {(b.i0 * pl.ra + a.i0) * ts,
          (b.i0 * pl.ra + a.i1) * ts,
          (b.i1 * pl.ra + a.i0) * ts,
          (b.i1 * pl.ra + a.i1) * ts,
          a.w,
          b.w,
          a.dw,
          b.dw};
}

template <typename scalar_t, typename T>
struct Inputs {
  const scalar_t* points;  // [N, 3]
  const scalar_t* times;   // [N] or nullptr
  T time;
  T lo[3], scale[3];

  // The point's normalised (x, y, z, t).
  void coords(int64_t n, T* q) const {
    for (int d = 0; d < 3; ++d) q[d] = normalize<T>(static_cast<T>(points[n * 3 + d]), lo[d], scale[d]);
    q[3] = times ? static_cast<T>(times[n]) : time;
  }
};

template <typename scalar_t, typename T>
Inputs<scalar_t, T> make_inputs(const Problem& p) {
  Inputs<scalar_t, T> in;
  in.points = p.points.data_ptr<scalar_t>();
  in.times = p.shared_time() ? nullptr : p.times.data_ptr<scalar_t>();
  in.time = static_cast<T>(p.time);
  const scalar_t* box = p.aabb.data_ptr<scalar_t>();
  for (int d = 0; d < 3; ++d) {
    in.lo[d] = static_cast<T>(box[d]);
    in.scale[d] = T(2) / (static_cast<T>(box[3 + d]) - in.lo[d]);
  }
  return in;
}

template <typename T>
std::vector<LevelDesc<T>> describe(const Problem& p, const std::vector<at::Tensor>& blocks,
                                   const std::vector<at::Tensor>& grads, bool channels_last) {
  std::vector<LevelDesc<T>> levels(p.levels.size());
  for (size_t l = 0; l < levels.size(); ++l) {
    LevelDesc<T>& d = levels[l];
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
// Forward.

template <typename scalar_t, typename T>
void forward(const Problem& p, const std::vector<LevelDesc<T>>& levels, scalar_t* out) {
  const auto in = make_inputs<scalar_t, T>(p);
  const int64_t c_total = p.total_channels;
  at::parallel_for(0, p.n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T q[4];
      in.coords(n, q);
      for (const LevelDesc<T>& lv : levels) {
        Corners<T> cs[kPlanesPerLevel];
        for (int k = 0; k < kPlanesPerLevel; ++k) cs[k] = corners(lv.planes[k], q, k);
        for (int64_t blk = 0; blk < lv.nblk; ++blk) {
          T acc[kBlock];
          for (int k = 0; k < kPlanesPerLevel; ++k) {
            const PlaneDesc<T>& pl = lv.planes[k];
            const T* base = pl.data + blk * pl.block_stride;
            const Corners<T>& c = cs[k];
            T s[kBlock];
            for (int64_t j = 0; j < kBlock; ++j)
              s[j] = bilinear(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb);
            if (k == 0) {
              for (int64_t j = 0; j < kBlock; ++j) acc[j] = s[j];
            } else {
              for (int64_t j = 0; j < kBlock; ++j) acc[j] *= s[j];
            }
          }
          const int64_t c0 = blk * kBlock, width = std::min(kBlock, lv.channels - c0);
          scalar_t* o = out + n * c_total + lv.offset + c0;
          for (int64_t j = 0; j < width; ++j) o[j] = static_cast<scalar_t>(acc[j]);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------------
// Backward.

// The units of one level: groups of consecutive blocks.
inline int64_t groups_of(int64_t nblk) { return std::min(nblk, kGroupsPerLevel); }

// Unit (level lv, blocks [blk_begin, blk_end)): plane gradients of those blocks, and the unit's share of each
// point's d loss / d (x', y', z', t) into coord_grad [N, 4].
template <typename scalar_t, typename T>
void backward_unit(const Problem& p, const Inputs<scalar_t, T>& in, const LevelDesc<T>& lv, int64_t blk_begin,
                   int64_t blk_end, const scalar_t* v_features, T* coord_grad) {
  const int64_t c_total = p.total_channels;
  for (int64_t n = 0; n < p.n; ++n) {
    T q[4];
    in.coords(n, q);
    Corners<T> cs[kPlanesPerLevel];
    for (int k = 0; k < kPlanesPerLevel; ++k) cs[k] = corners(lv.planes[k], q, k);
    // Per-lane sums of d loss / d weight, reduced over the lanes once per point: a reduction inside the
    // channel loops would keep them from vectorising (no reassociation without -ffast-math).
    T v_wa[kPlanesPerLevel][kBlock] = {}, v_wb[kPlanesPerLevel][kBlock] = {};
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t c0 = blk * kBlock, width = std::min(kBlock, lv.channels - c0);
      T g[kBlock] = {};  // padded channels: 0, so they add nothing anywhere
      const scalar_t* vf = v_features + n * c_total + lv.offset + c0;
      for (int64_t j = 0; j < width; ++j) g[j] = static_cast<T>(vf[j]);
      // The six samples, then d loss / d sample_k = g * prod_{j != k} sample_j from prefix and suffix
      // products (no division: a zero sample is fine).
      T s[kPlanesPerLevel][kBlock];
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const T* base = lv.planes[k].data + blk * lv.planes[k].block_stride;
        const Corners<T>& c = cs[k];
        for (int64_t j = 0; j < kBlock; ++j)
          s[k][j] = bilinear(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb);
      }
      T gs[kPlanesPerLevel][kBlock];
      {
        T prefix[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) prefix[j] = g[j];
        for (int k = 0; k < kPlanesPerLevel; ++k)
          for (int64_t j = 0; j < kBlock; ++j) gs[k][j] = prefix[j], prefix[j] *= s[k][j];
        T suffix[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) suffix[j] = T(1);
        for (int k = kPlanesPerLevel - 1; k >= 0; --k)
          for (int64_t j = 0; j < kBlock; ++j) gs[k][j] *= suffix[j], suffix[j] *= s[k][j];
      }
      for (int k = 0; k < kPlanesPerLevel; ++k) {
        const int64_t block_offset = blk * lv.planes[k].block_stride;
        const T* base = lv.planes[k].data + block_offset;
        T* gbase = lv.planes[k].grad + block_offset;
        const Corners<T>& c = cs[k];
        T r00[kBlock], r01[kBlock], r10[kBlock], r11[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) {
          const auto r =
              bilinear_vjp(base[c.o00 + j], base[c.o01 + j], base[c.o10 + j], base[c.o11 + j], c.wa, c.wb, gs[k][j]);
          r00[j] = r.v00, r01[j] = r.v01, r10[j] = r.v10, r11[j] = r.v11;
          v_wa[k][j] += r.v_wa;
          v_wb[k][j] += r.v_wb;
        }
        // One corner per loop: two corners can be the same texel (one-sample axes, time lines).
        for (int64_t j = 0; j < kBlock; ++j) gbase[c.o00 + j] += r00[j];
        for (int64_t j = 0; j < kBlock; ++j) gbase[c.o01 + j] += r01[j];
        for (int64_t j = 0; j < kBlock; ++j) gbase[c.o10 + j] += r10[j];
        for (int64_t j = 0; j < kBlock; ++j) gbase[c.o11 + j] += r11[j];
      }
    }
    T cg[4] = {};
    for (int k = 0; k < kPlanesPerLevel; ++k) {
      T sa = 0, sb = 0;
      for (int64_t j = 0; j < kBlock; ++j) sa += v_wa[k][j], sb += v_wb[k][j];
      cg[plane_a(k)] += sa * cs[k].dwa;
      cg[plane_b(k)] += sb * cs[k].dwb;
    }
    for (int d = 0; d < 4; ++d) coord_grad[n * 4 + d] = cg[d];
  }
}

template <typename scalar_t, typename T>
void backward(const Problem& p, const std::vector<LevelDesc<T>>& levels, const scalar_t* v_features, scalar_t* v_points,
              scalar_t* v_times) {
  const auto in = make_inputs<scalar_t, T>(p);
  struct Unit {
    int64_t level, blk_begin, blk_end;
  };
  std::vector<Unit> units;
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t nblk = levels[l].nblk, groups = groups_of(nblk);
    for (int64_t g = 0; g < groups; ++g) units.push_back({int64_t(l), nblk * g / groups, nblk * (g + 1) / groups});
  }
  const int64_t num_units = static_cast<int64_t>(units.size());
  std::vector<T> coord_grad(static_cast<size_t>(num_units * p.n * 4));
  at::parallel_for(0, num_units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const Unit& unit = units[u];
      backward_unit(p, in, levels[unit.level], unit.blk_begin, unit.blk_end, v_features,
                    coord_grad.data() + u * p.n * 4);
    }
  });
  // Fixed-order sum over units, then the chain rule through the normalisation.
  at::parallel_for(0, p.n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T cg[4] = {};
      for (int64_t u = 0; u < num_units; ++u)
        for (int d = 0; d < 4; ++d) cg[d] += coord_grad[(u * p.n + n) * 4 + d];
      for (int d = 0; d < 3; ++d) v_points[n * 3 + d] = static_cast<scalar_t>(cg[d] * in.scale[d]);
      if (v_times) v_times[n] = static_cast<scalar_t>(cg[3]);
    }
  });
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
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward<scalar_t, T>(p, describe<T>(p, blocks, {}, true), features.data_ptr<scalar_t>());
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
      using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      backward<scalar_t, T>(p, describe<T>(p, blocks, grads, false), v_out.data_ptr<scalar_t>(),
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
