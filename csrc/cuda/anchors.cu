// CUDA backend of pyops::anchor_blend_weight_{fwd,bwd} and pyops::anchor_decode_{fwd,bwd}. No host syncs.
//
// Decode is one thread per anchor. The block stages the packed MLP (Problem::w1s, b1s, w2s, b2s in fp32) in
// shared memory; every thread of a warp reads the same weight at the same time (a broadcast). A thread builds
// x = [feat, dir, dist], the 3H hidden activations, then streams over the K offsets: each offset's 11 head
// outputs and its epilogue (anchors_math.h). Invisible anchors write the fills and return before any MLP work.
// x and the hidden layer live in registers for the common Scaffold-GS sizes (C = 32, H = 32: compile-time
// loops) and in per-thread slices of shared memory otherwise (any C, H, K up to the shared-memory limit).
// The backward kernel recomputes the same, runs the epilogue's VJP and writes the head gradients G, the hidden
// activations R and the inputs X transposed ([rows, M]: coalesced stores, zero columns for invisible anchors)
// plus the direct gradients; weight_grads() (cuBLAS GEMMs, deterministic) and a small view-VJP kernel finish.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "pyops/anchors.h"
#include "pyops/anchors_math.h"
#include "pyops/dispatch.h"

namespace pyops {
namespace anchors {
namespace {

constexpr int kSpecC = 32, kSpecH = 32;  // Scaffold-GS's feature and hidden sizes: compiled loops
constexpr int kSpecThreads = 64;         // threads per block for the specialised kernels
constexpr int kMaxGenericThreads = 128;
constexpr int kElemThreads = 256;

// The per-thread vectors x [C + 4] and hidden [3H]: registers (compile-time size) or a shared-memory slice.
template <int N>
struct RegVec {
  float v[N];
  __device__ __forceinline__ float& operator[](int i) { return v[i]; }
};
struct SmemVec {
  float* p;
  int stride;
  __device__ __forceinline__ float& operator[](int i) { return p[i * stride]; }
};

template <typename scalar_t>
struct Inputs {
  const scalar_t *anchors, *feats, *offsets, *anchor_scales;
  const scalar_t *opacity_scale, *blend_offset, *blend_decay;  // nullptr when absent
  const bool* visible;                                         // nullptr: every anchor visible
  const float* weights;                                        // packed [w1s | b1s | w2s | b2s]
  const float* cam;                                            // [3]
  const float* tau;                                            // 0-dim
  float lambda;
  int mode;
  int64_t m;
  int c, h, k;
};

// Shared-memory layout of the packed weights.
struct Layout {
  int w1s, b1s, w2s, b2s, total;
  __host__ __device__ Layout(int c, int h, int k) {
    w1s = 0;
    b1s = w1s + 3 * h * (c + 4);
    w2s = b1s + 3 * h;
    b2s = w2s + kHeadOut * k * h;
    total = b2s + kHeadOut * k;
  }
};

template <typename scalar_t>
__device__ __forceinline__ void load3(const scalar_t* p, float* v) {
  for (int q = 0; q < 3; ++q) v[q] = static_cast<float>(p[q]);
}

// The anchor's hidden activations relu(W1s x + b1s), with x built first (read back by the backward).
template <int kC, int kH, typename scalar_t, typename XVec, typename HVec>
__device__ __forceinline__ void hidden_layer(const Inputs<scalar_t>& in, const float* sw, int64_t i, XVec& x,
                                             HVec& hid) {
  const int C = kC > 0 ? kC : in.c, H = kH > 0 ? kH : in.h;
#pragma unroll
  for (int q = 0; q < C; ++q) x[q] = static_cast<float>(in.feats[i * C + q]);
  float a[3], dir[3];
  load3(in.anchors + 3 * i, a);
  const float dist = view_dir<float>(a, in.cam, dir);
  x[C] = dir[0];
  x[C + 1] = dir[1];
  x[C + 2] = dir[2];
  x[C + 3] = dist;
  const Layout L(C, H, in.k);
#pragma unroll
  for (int j = 0; j < 3 * H; ++j) {
    const float* wr = sw + L.w1s + j * (C + 4);
    float acc = sw[L.b1s + j];
#pragma unroll
    for (int q = 0; q < C + 4; ++q) acc = fmaf(x[q], wr[q], acc);
    hid[j] = fmaxf(acc, 0.f);
  }
}

// The 11 head outputs of offset k.
template <int kH, typename HVec>
__device__ __forceinline__ HeadOut<float> head_outputs(HVec& hid, const float* sw, const Layout& L, int h_runtime,
                                                       int K, int k) {
  const int H = kH > 0 ? kH : h_runtime;  // compile-time for the register vectors
  HeadOut<float> o;
  auto dot = [&](int row, int head) {
    const float* wr = sw + L.w2s + row * H;
    float acc = sw[L.b2s + row];
#pragma unroll
    for (int q = 0; q < H; ++q) acc = fmaf(hid[head * H + q], wr[q], acc);
    return acc;
  };
  o.opacity = dot(k, kOpacity);
#pragma unroll
  for (int q = 0; q < 7; ++q) o.cov[q] = dot(K + 7 * k + q, kCov);
#pragma unroll
  for (int q = 0; q < 3; ++q) o.color[q] = dot(8 * K + 3 * k + q, kColor);
  return o;
}

// Copies the packed weights into shared memory (the whole block takes part; call before any early return).
__device__ __forceinline__ void stage_weights(const float* weights, float* sw, int total) {
  for (int q = threadIdx.x; q < total; q += blockDim.x) sw[q] = weights[q];
  __syncthreads();
}

template <typename scalar_t>
__device__ __forceinline__ float anchor_scale_factor(const Inputs<scalar_t>& in, int64_t i, float* w) {
  return opacity_scale_of<float>(
      in.opacity_scale != nullptr, in.opacity_scale ? static_cast<float>(in.opacity_scale[i]) : 1.f,
      in.blend_offset != nullptr, in.blend_offset ? static_cast<float>(in.blend_offset[i]) : 0.f,
      in.blend_decay ? static_cast<float>(in.blend_decay[i]) : 0.f, *in.tau, in.lambda, in.mode, w);
}

template <typename scalar_t>
struct Outputs {
  scalar_t *means, *quats, *scales, *opacities, *colors, *neural;
};

template <typename scalar_t>
__device__ __forceinline__ void store(const Outputs<scalar_t>& out, int64_t ik, const Gaussian<float>& g) {
  for (int q = 0; q < 3; ++q) {
    out.means[3 * ik + q] = static_cast<scalar_t>(g.mean[q]);
    out.scales[3 * ik + q] = static_cast<scalar_t>(g.scale[q]);
    out.colors[3 * ik + q] = static_cast<scalar_t>(g.color[q]);
  }
  for (int q = 0; q < 4; ++q) out.quats[4 * ik + q] = static_cast<scalar_t>(g.quat[q]);
  out.opacities[ik] = static_cast<scalar_t>(g.opacity);
  out.neural[ik] = static_cast<scalar_t>(g.neural_opacity);
}

// Per-thread vectors: registers for compile-time sizes, else slices of the scratch area after the weights.
template <int kC, int kH>
struct ThreadVecs {
  using X = std::conditional_t<(kC > 0), RegVec<(kC > 0 ? kC + 4 : 1)>, SmemVec>;
  using Hd = std::conditional_t<(kH > 0), RegVec<(kH > 0 ? 3 * kH : 1)>, SmemVec>;
  X x;
  Hd hid;
  __device__ __forceinline__ ThreadVecs(float* scratch, int c) {
    if constexpr (kC == 0) x = SmemVec{scratch + threadIdx.x, int(blockDim.x)};
    if constexpr (kH == 0) hid = SmemVec{scratch + (c + 4) * blockDim.x + threadIdx.x, int(blockDim.x)};
  }
};

template <typename scalar_t, int kC, int kH>
__global__ void decode_fwd_kernel(Inputs<scalar_t> in, Outputs<scalar_t> out) {
  extern __shared__ float smem[];
  const int C = kC > 0 ? kC : in.c, H = kH > 0 ? kH : in.h, K = in.k;
  const Layout L(C, H, K);
  stage_weights(in.weights, smem, L.total);
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= in.m) return;
  float a[3], as[6], off[3];
  load3(in.anchors + 3 * i, a);
  for (int q = 0; q < 6; ++q) as[q] = static_cast<float>(in.anchor_scales[6 * i + q]);
  if (in.visible && !in.visible[i]) {
    for (int k = 0; k < K; ++k) {
      load3(in.offsets + (i * K + k) * 3, off);
      store(out, i * K + k, invisible_gaussian<float>(a, off, as));
    }
    return;
  }
  ThreadVecs<kC, kH> v(smem + L.total, C);
  hidden_layer<kC, kH>(in, smem, i, v.x, v.hid);
  float w;
  const float s = anchor_scale_factor(in, i, &w);
  for (int k = 0; k < K; ++k) {
    load3(in.offsets + (i * K + k) * 3, off);
    const HeadOut<float> ho = head_outputs<kH>(v.hid, smem, L, H, K, k);
    store(out, i * K + k, visible_gaussian<float>(ho, a, off, as, s));
  }
}

template <typename scalar_t>
struct Grads {
  const scalar_t *v_means, *v_quats, *v_scales, *v_opacities, *v_colors;
  float *Gt, *Rt, *Xt;    // [11K, M], [3H, M], [C + 4, M]
  float* v_anchor_means;  // [M, 3]
  scalar_t *v_offsets, *v_anchor_scales;
  scalar_t *v_opacity_scale, *v_blend_offset, *v_blend_decay;  // nullptr when absent
};

template <typename scalar_t, int kC, int kH>
__global__ void decode_bwd_kernel(Inputs<scalar_t> in, Grads<scalar_t> gr) {
  extern __shared__ float smem[];
  const int C = kC > 0 ? kC : in.c, H = kH > 0 ? kH : in.h, K = in.k;
  const Layout L(C, H, K);
  stage_weights(in.weights, smem, L.total);
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= in.m) return;
  const int64_t M = in.m;
  float v_anchor[3] = {0.f, 0.f, 0.f}, v_as[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, v_s = 0.f, w = 1.f;
  if (in.visible && !in.visible[i]) {
    // No gradient: zero columns of G, R and X (the GEMMs then add nothing for this anchor).
    for (int r = 0; r < kHeadOut * K; ++r) gr.Gt[r * M + i] = 0.f;
    for (int r = 0; r < 3 * H; ++r) gr.Rt[r * M + i] = 0.f;
    for (int r = 0; r < C + 4; ++r) gr.Xt[r * M + i] = 0.f;
    for (int q = 0; q < 3 * K; ++q) gr.v_offsets[i * K * 3 + q] = static_cast<scalar_t>(0.f);
  } else {
    ThreadVecs<kC, kH> v(smem + L.total, C);
    hidden_layer<kC, kH>(in, smem, i, v.x, v.hid);
#pragma unroll
    for (int r = 0; r < C + 4; ++r) gr.Xt[r * M + i] = v.x[r];
#pragma unroll
    for (int r = 0; r < 3 * H; ++r) gr.Rt[r * M + i] = v.hid[r];
    float a[3], as[6], off[3];
    load3(in.anchors + 3 * i, a);
    for (int q = 0; q < 6; ++q) as[q] = static_cast<float>(in.anchor_scales[6 * i + q]);
    const float s = anchor_scale_factor(in, i, &w);
    for (int k = 0; k < K; ++k) {
      const int64_t ik = i * K + k;
      load3(in.offsets + ik * 3, off);
      const HeadOut<float> ho = head_outputs<kH>(v.hid, smem, L, H, K, k);
      const Gaussian<float> g = visible_gaussian<float>(ho, a, off, as, s);
      HeadOut<float> v_h{};
      float v_off[3] = {0.f, 0.f, 0.f};
      if (g.kept) {
        GaussianGrad<float> vg;
        load3(gr.v_means + 3 * ik, vg.v_mean);
        load3(gr.v_scales + 3 * ik, vg.v_scale);
        load3(gr.v_colors + 3 * ik, vg.v_color);
        for (int q = 0; q < 4; ++q) vg.v_quat[q] = static_cast<float>(gr.v_quats[4 * ik + q]);
        vg.v_opacity = static_cast<float>(gr.v_opacities[ik]);
        kept_gaussian_vjp<float>(ho, vg, off, as, s, v_h, v_off, v_as, v_anchor, v_s);
      }
      gr.Gt[int64_t(k) * M + i] = v_h.opacity;
      for (int q = 0; q < 7; ++q) gr.Gt[int64_t(K + 7 * k + q) * M + i] = v_h.cov[q];
      for (int q = 0; q < 3; ++q) {
        gr.Gt[int64_t(8 * K + 3 * k + q) * M + i] = v_h.color[q];
        gr.v_offsets[3 * ik + q] = static_cast<scalar_t>(v_off[q]);
      }
    }
  }
  for (int q = 0; q < 3; ++q) gr.v_anchor_means[3 * i + q] = v_anchor[q];
  for (int q = 0; q < 6; ++q) gr.v_anchor_scales[6 * i + q] = static_cast<scalar_t>(v_as[q]);
  // s = opacity_scale * w: each factor's gradient is v_s times the other.
  if (gr.v_opacity_scale) gr.v_opacity_scale[i] = static_cast<scalar_t>(v_s * w);
  if (gr.v_blend_offset) {
    const float v_w = in.opacity_scale ? v_s * static_cast<float>(in.opacity_scale[i]) : v_s;
    const BlendGrad<float> bg =
        blend_weight_vjp<float>(v_w, static_cast<float>(in.blend_offset[i]), static_cast<float>(in.blend_decay[i]),
                                *in.tau, in.lambda, in.mode);
    gr.v_blend_offset[i] = static_cast<scalar_t>(bg.v_offset);
    gr.v_blend_decay[i] = static_cast<scalar_t>(bg.v_decay);
  }
}

// v_anchors = the means' part + the view VJP of v_X's dir/dist columns; v_feats = v_X's feature columns (zero
// rows for invisible anchors, whose G rows were zero).
template <typename scalar_t>
__global__ void view_bwd_kernel(const scalar_t* __restrict__ anchors, const float* __restrict__ cam,
                                const float* __restrict__ v_x, const float* __restrict__ v_anchor_means,
                                scalar_t* __restrict__ v_anchors, scalar_t* __restrict__ v_feats, int64_t m, int c) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  const float* vr = v_x + i * (c + 4);
  float a[3], va[3];
  load3(anchors + 3 * i, a);
  for (int q = 0; q < 3; ++q) va[q] = v_anchor_means[3 * i + q];
  view_dir_vjp<float>(a, cam, vr + c, vr[c + 3], va);
  for (int q = 0; q < 3; ++q) v_anchors[3 * i + q] = static_cast<scalar_t>(va[q]);
  for (int q = 0; q < c; ++q) v_feats[i * c + q] = static_cast<scalar_t>(vr[q]);
}

// ---------------------------------------------------------------------------------------------------------
// Launch.

int max_shared_bytes() {
  int device = c10::cuda::current_device(), bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const Problem& p, const at::Tensor& packed) {
  return {p.anchors.data_ptr<scalar_t>(),
          p.feats.data_ptr<scalar_t>(),
          p.offsets.data_ptr<scalar_t>(),
          p.anchor_scales.data_ptr<scalar_t>(),
          p.has_scale() ? p.opacity_scale.data_ptr<scalar_t>() : nullptr,
          p.has_blend() ? p.blend_offset.data_ptr<scalar_t>() : nullptr,
          p.has_blend() ? p.blend_decay.data_ptr<scalar_t>() : nullptr,
          p.has_visible() ? p.visible.data_ptr<bool>() : nullptr,
          packed.data_ptr<float>(),
          p.cam.data_ptr<float>(),
          p.tau.data_ptr<float>(),
          float(p.lambda),
          int(p.mode),
          p.m,
          int(p.c),
          int(p.h),
          int(p.k)};
}

// Launches kernel<scalar_t, C, H> (the specialised one when C == H == 32) with the weights (and, generic, the
// per-thread vectors) in dynamic shared memory. The sizes beyond what one block's shared memory holds are an error.
template <typename Launch>
void launch_decode(const char* op, const Problem& p, Launch&& launch) {
  // In int64: the kernels' int Layout offsets are only formed once this size has passed the shared-memory check.
  const int64_t weight_floats = 3 * p.h * (p.c + 4) + 3 * p.h + kHeadOut * p.k * (p.h + 1);
  const int64_t weight_bytes = weight_floats * int64_t(sizeof(float));
  const int64_t max_bytes = max_shared_bytes();
  const bool spec = p.c == kSpecC && p.h == kSpecH;
  int threads = spec ? kSpecThreads : kMaxGenericThreads;
  const int64_t per_thread = spec ? 0 : (p.c + 4 + 3 * p.h) * int64_t(sizeof(float));
  while (threads > 32 && weight_bytes + threads * per_thread > max_bytes) threads /= 2;
  const int64_t bytes = weight_bytes + threads * per_thread;
  TORCH_CHECK(bytes <= max_bytes, op, ": the MLP (C=", p.c, ", H=", p.h, ", K=", p.k, ") needs ", bytes,
              " bytes of shared memory per block, more than this GPU's ", max_bytes,
              " (use the triton or torch backend)");
  const unsigned blocks = unsigned((p.m + threads - 1) / threads);
  launch(spec, blocks, threads, int(bytes));
}

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

at::Tensor packed_weights(const Problem& p) { return at::cat({p.w1s.reshape(-1), p.b1s, p.w2s.reshape(-1), p.b2s}); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> anchor_decode_fwd_cuda(
    const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets, const at::Tensor& anchor_scales,
    const at::Tensor& cam_center, const at::Tensor& w1_opacity, const at::Tensor& b1_opacity,
    const at::Tensor& w2_opacity, const at::Tensor& b2_opacity, const at::Tensor& w1_cov, const at::Tensor& b1_cov,
    const at::Tensor& w2_cov, const at::Tensor& b2_cov, const at::Tensor& w1_color, const at::Tensor& b1_color,
    const at::Tensor& w2_color, const at::Tensor& b2_color, const std::optional<at::Tensor>& appearance,
    const std::optional<at::Tensor>& opacity_scale, const std::optional<at::Tensor>& visible,
    const std::optional<at::Tensor>& blend_offset, const std::optional<at::Tensor>& blend_decay,
    const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay, int64_t blend_mode, bool opacity_dist,
    bool cov_dist, bool color_dist) {
  const c10::cuda::CUDAGuard guard(feats.device());
  const Weights w = {w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,   b1_cov,
                     w2_cov,     b2_cov,     w1_color,   b1_color,   w2_color, b2_color};
  const Problem p = prepare("anchor_decode_fwd", anchors, feats, offsets, anchor_scales, cam_center, w, appearance,
                            opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode,
                            opacity_dist, cov_dist, color_dist, c10::DeviceType::CUDA);
  auto outs = allocate_outputs(p);
  if (p.m == 0) return outs;
  auto& [means, quats, scales, opacities, colors, neural] = outs;
  const at::Tensor packed = packed_weights(p);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.dtype, "anchor_decode_fwd_cuda", [&] {
    const Inputs<scalar_t> in = make_inputs<scalar_t>(p, packed);
    const Outputs<scalar_t> out = {means.data_ptr<scalar_t>(),  quats.data_ptr<scalar_t>(),
                                   scales.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(),
                                   colors.data_ptr<scalar_t>(), neural.data_ptr<scalar_t>()};
    launch_decode("anchor_decode_fwd", p, [&](bool spec, unsigned blocks, int threads, int bytes) {
      auto kernel = spec ? decode_fwd_kernel<scalar_t, kSpecC, kSpecH> : decode_fwd_kernel<scalar_t, 0, 0>;
      set_smem(kernel, bytes);
      kernel<<<blocks, threads, bytes, stream>>>(in, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return outs;
}

DecodeBwdResult anchor_decode_bwd_cuda(
    const at::Tensor& v_means, const at::Tensor& v_quats, const at::Tensor& v_scales, const at::Tensor& v_opacities,
    const at::Tensor& v_colors, const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets,
    const at::Tensor& anchor_scales, const at::Tensor& cam_center, const at::Tensor& w1_opacity,
    const at::Tensor& b1_opacity, const at::Tensor& w2_opacity, const at::Tensor& b2_opacity, const at::Tensor& w1_cov,
    const at::Tensor& b1_cov, const at::Tensor& w2_cov, const at::Tensor& b2_cov, const at::Tensor& w1_color,
    const at::Tensor& b1_color, const at::Tensor& w2_color, const at::Tensor& b2_color,
    const std::optional<at::Tensor>& appearance, const std::optional<at::Tensor>& opacity_scale,
    const std::optional<at::Tensor>& visible, const std::optional<at::Tensor>& blend_offset,
    const std::optional<at::Tensor>& blend_decay, const std::optional<at::Tensor>& tau_t, double tau,
    double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist, bool color_dist) {
  const c10::cuda::CUDAGuard guard(feats.device());
  const Weights w = {w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,   b1_cov,
                     w2_cov,     b2_cov,     w1_color,   b1_color,   w2_color, b2_color};
  const Problem p = prepare("anchor_decode_bwd", anchors, feats, offsets, anchor_scales, cam_center, w, appearance,
                            opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode,
                            opacity_dist, cov_dist, color_dist, c10::DeviceType::CUDA);
  const OutputGrads v = prepare_grads(v_means, v_quats, v_scales, v_opacities, v_colors, p);
  const auto opt = p.feats.options();
  const auto fopt = opt.dtype(at::kFloat);
  auto per_anchor = [&](bool present) { return present ? at::empty({p.m}, opt) : at::empty({0}, opt); };
  at::Tensor v_offsets = at::empty({p.m, p.k, 3}, opt), v_anchor_scales = at::empty({p.m, 6}, opt);
  at::Tensor v_opacity_scale = per_anchor(p.has_scale()), v_blend_offset = per_anchor(p.has_blend()),
             v_blend_decay = per_anchor(p.has_blend());
  at::Tensor Gt = at::empty({kHeadOut * p.k, p.m}, fopt), Rt = at::empty({3 * p.h, p.m}, fopt),
             Xt = at::empty({p.x_cols(), p.m}, fopt), v_anchor_means = at::empty({p.m, 3}, fopt);
  at::Tensor v_anchors = at::empty({p.m, 3}, opt), v_feats = at::empty({p.m, p.c}, opt);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor packed = packed_weights(p);
  if (p.m > 0) {
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.dtype, "anchor_decode_bwd_cuda", [&] {
      const Inputs<scalar_t> in = make_inputs<scalar_t>(p, packed);
      auto ptr = [](at::Tensor& t) { return t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
      const Grads<scalar_t> gr = {v.means.data_ptr<scalar_t>(),
                                  v.quats.data_ptr<scalar_t>(),
                                  v.scales.data_ptr<scalar_t>(),
                                  v.opacities.data_ptr<scalar_t>(),
                                  v.colors.data_ptr<scalar_t>(),
                                  Gt.data_ptr<float>(),
                                  Rt.data_ptr<float>(),
                                  Xt.data_ptr<float>(),
                                  v_anchor_means.data_ptr<float>(),
                                  v_offsets.data_ptr<scalar_t>(),
                                  v_anchor_scales.data_ptr<scalar_t>(),
                                  p.has_scale() ? ptr(v_opacity_scale) : nullptr,
                                  p.has_blend() ? ptr(v_blend_offset) : nullptr,
                                  p.has_blend() ? ptr(v_blend_decay) : nullptr};
      launch_decode("anchor_decode_bwd", p, [&](bool spec, unsigned blocks, int threads, int bytes) {
        auto kernel = spec ? decode_bwd_kernel<scalar_t, kSpecC, kSpecH> : decode_bwd_kernel<scalar_t, 0, 0>;
        set_smem(kernel, bytes);
        kernel<<<blocks, threads, bytes, stream>>>(in, gr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  // [M, 11K], [M, 3H], [M, C + 4] views of the transposed buffers (at::mm takes either layout).
  WeightGrads wg = weight_grads(p, w, appearance, Gt.t(), Rt.t(), Xt.t());
  const at::Tensor v_x = wg.v_x.contiguous();
  if (p.m > 0) {
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.dtype, "anchor_decode_view_bwd_cuda", [&] {
      const unsigned blocks = unsigned((p.m + kElemThreads - 1) / kElemThreads);
      view_bwd_kernel<scalar_t><<<blocks, kElemThreads, 0, stream>>>(
          p.anchors.data_ptr<scalar_t>(), p.cam.data_ptr<float>(), v_x.data_ptr<float>(),
          v_anchor_means.data_ptr<float>(), v_anchors.data_ptr<scalar_t>(), v_feats.data_ptr<scalar_t>(), p.m,
          int(p.c));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return decode_bwd_result(v_anchors, v_feats, v_offsets, v_anchor_scales, wg, v_opacity_scale, v_blend_offset,
                           v_blend_decay);
}

// ---------------------------------------------------------------------------------------------------------
// Blend weight: elementwise.

template <typename scalar_t>
__global__ void blend_fwd_kernel(const scalar_t* __restrict__ offset, const scalar_t* __restrict__ decay,
                                 const float* __restrict__ tau, float lambda, int mode, scalar_t* __restrict__ w,
                                 int64_t n) {
  const float t = *tau;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    w[i] = static_cast<scalar_t>(
        blend_weight<float>(static_cast<float>(offset[i]), static_cast<float>(decay[i]), t, lambda, mode));
}

template <typename scalar_t>
__global__ void blend_bwd_kernel(const scalar_t* __restrict__ v_w, const scalar_t* __restrict__ offset,
                                 const scalar_t* __restrict__ decay, const float* __restrict__ tau, float lambda,
                                 int mode, scalar_t* __restrict__ v_offset, scalar_t* __restrict__ v_decay, int64_t n) {
  const float t = *tau;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const BlendGrad<float> g = blend_weight_vjp<float>(static_cast<float>(v_w[i]), static_cast<float>(offset[i]),
                                                       static_cast<float>(decay[i]), t, lambda, mode);
    v_offset[i] = static_cast<scalar_t>(g.v_offset);
    v_decay[i] = static_cast<scalar_t>(g.v_decay);
  }
}

unsigned elem_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kElemThreads - 1) / kElemThreads, 65535)); }

at::Tensor anchor_blend_weight_fwd_cuda(const at::Tensor& offset, const at::Tensor& decay,
                                        const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay,
                                        int64_t blend_mode) {
  const c10::cuda::CUDAGuard guard(offset.device());
  const BlendProblem b =
      prepare_blend("anchor_blend_weight_fwd", offset, decay, tau_t, tau, lambda_decay, blend_mode, c10::kCUDA);
  at::Tensor out = at::empty_like(b.offset);
  const int64_t n = b.offset.numel();
  if (n == 0) return out;
  PYOPS_DISPATCH_FLOAT_HALF_BF16(b.offset.scalar_type(), "anchor_blend_weight_fwd_cuda", [&] {
    blend_fwd_kernel<scalar_t><<<elem_blocks(n), kElemThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        b.offset.data_ptr<scalar_t>(), b.decay.data_ptr<scalar_t>(), b.tau.data_ptr<float>(), float(b.lambda),
        int(b.mode), out.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> anchor_blend_weight_bwd_cuda(const at::Tensor& v_w, const at::Tensor& offset,
                                                                const at::Tensor& decay,
                                                                const std::optional<at::Tensor>& tau_t, double tau,
                                                                double lambda_decay, int64_t blend_mode) {
  const char* op = "anchor_blend_weight_bwd";
  const c10::cuda::CUDAGuard guard(offset.device());
  const BlendProblem b = prepare_blend(op, offset, decay, tau_t, tau, lambda_decay, blend_mode, c10::kCUDA);
  TORCH_CHECK_VALUE(v_w.device() == offset.device(), op, ": v_w is on ", v_w.device(), " but offset is on ",
                    offset.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_w.scalar_type()), op, ": v_w must be a floating-point tensor, got ",
                   v_w.scalar_type());
  TORCH_CHECK_VALUE(v_w.sizes() == offset.sizes(), op, ": v_w must have shape ", offset.sizes(), ", got ", v_w.sizes());
  const at::Tensor vw = v_w.to(offset.scalar_type()).contiguous();
  at::Tensor v_offset = at::empty_like(b.offset), v_decay = at::empty_like(b.offset);
  const int64_t n = b.offset.numel();
  if (n == 0) return {v_offset, v_decay};
  PYOPS_DISPATCH_FLOAT_HALF_BF16(b.offset.scalar_type(), "anchor_blend_weight_bwd_cuda", [&] {
    blend_bwd_kernel<scalar_t><<<elem_blocks(n), kElemThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        vw.data_ptr<scalar_t>(), b.offset.data_ptr<scalar_t>(), b.decay.data_ptr<scalar_t>(), b.tau.data_ptr<float>(),
        float(b.lambda), int(b.mode), v_offset.data_ptr<scalar_t>(), v_decay.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {v_offset, v_decay};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("anchor_blend_weight_fwd", &anchor_blend_weight_fwd_cuda);
  m.impl("anchor_blend_weight_bwd", &anchor_blend_weight_bwd_cuda);
  m.impl("anchor_decode_fwd", &anchor_decode_fwd_cuda);
  m.impl("anchor_decode_bwd", &anchor_decode_bwd_cuda);
}

}  // namespace anchors
}  // namespace pyops
