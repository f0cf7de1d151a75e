// CUDA backend of pyops::derf_fwd / derf_bwd. x is the contiguous [outer, C, inner] view from prepare().
//  - channels-last (inner == 1): threads own VEC adjacent channels, keep their parameters in registers
//    and walk rows, so every load of x/v_y/y/v_x is a 16-byte vector and parameters are read once.
//  - channels-first (inner > 1): each run of `inner` elements shares one channel; forward is a flat
//    vectorised loop, backward gives each block one channel and a slice of `outer`.
// Backward writes v_x and per-block fp32 partial sums [P, 4, C] (no atomics); reduce_partials() sums them.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pyops/derf.h"
#include "pyops/derf_math.h"
#include "pyops/dispatch.h"

namespace pyops {
namespace derf {
namespace {

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Parameters as raw pointers: alpha/shift have stride 0 when scalar; absent weight/bias are nullptr.
struct Params {
  const float* alpha;
  const float* shift;
  const float* weight;
  const float* bias;
  int64_t alpha_stride, shift_stride;
  __device__ float a(int64_t c) const { return alpha[c * alpha_stride]; }
  __device__ float s(int64_t c) const { return shift[c * shift_stride]; }
  __device__ float w(int64_t c) const { return weight ? weight[c] : 1.f; }
  __device__ float b(int64_t c) const { return bias ? bias[c] : 0.f; }
};

Params make_params(const Problem& p) {
  return {p.alpha.data_ptr<float>(),
          p.shift.data_ptr<float>(),
          p.weight.defined() ? p.weight.data_ptr<float>() : nullptr,
          p.bias.defined() ? p.bias.data_ptr<float>() : nullptr,
          p.alpha.numel() == 1 ? 0 : 1,
          p.shift.numel() == 1 ? 0 : 1};
}

// ------------------------------------------------------------------------------------------------------
// Forward.

// Channels-last: grid (ceil(C / (VEC * blockDim.x)), row blocks); each thread walks rows_per_block rows.
template <typename scalar_t, int VEC>
__global__ void fwd_rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Params prm, int64_t rows,
                                int64_t C, int64_t rows_per_block) {
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  float a[VEC], s[VEC], w[VEC], b[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) a[j] = prm.a(c0 + j), s[j] = prm.s(c0 + j), w[j] = prm.w(c0 + j), b[j] = prm.b(c0 + j);
  const int64_t r_end = std::min(rows, (int64_t(blockIdx.y) + 1) * rows_per_block);
  for (int64_t r = int64_t(blockIdx.y) * rows_per_block; r < r_end; ++r) {
    const auto in = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + r * C + c0);
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      out.v[j] = static_cast<scalar_t>(forward(static_cast<float>(in.v[j]), a[j], s[j], w[j], b[j]));
    *reinterpret_cast<Pack<scalar_t, VEC>*>(y + r * C + c0) = out;
  }
}

// Channels-first: flat grid-stride loop over VEC-element packs, each inside one run (inner % VEC == 0).
template <typename scalar_t, int VEC>
__global__ void fwd_runs_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Params prm, int64_t numel,
                                int64_t C, int64_t inner) {
  const int64_t packs = numel / VEC;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < packs; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (k * VEC / inner) % C;
    const float a = prm.a(c), s = prm.s(c), w = prm.w(c), b = prm.b(c);
    const auto in = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + k * VEC);
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<scalar_t>(forward(static_cast<float>(in.v[j]), a, s, w, b));
    *reinterpret_cast<Pack<scalar_t, VEC>*>(y + k * VEC) = out;
  }
}

// ------------------------------------------------------------------------------------------------------
// Backward.

// Channels-last: block (TX, TY) threads; grid (ceil(C / (VEC * TX)), P). Thread (tx, ty) owns VEC channels
// and rows ty, ty + TY, ... of the block's row slice; the TY partial sums meet in shared memory.
template <typename scalar_t, int VEC>
__global__ void bwd_rows_kernel(const scalar_t* __restrict__ v_y, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ v_x, float* __restrict__ partials, Params prm, int64_t rows,
                                int64_t C, int64_t rows_per_block) {
  extern __shared__ float smem[];  // [TY][kNumPartials][TX * VEC]
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const int64_t c0 = (int64_t(blockIdx.x) * TX + tx) * VEC;
  const bool active = c0 < C;
  float acc[kNumPartials][VEC] = {};
  if (active) {
    float a[VEC], s[VEC], w[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) a[j] = prm.a(c0 + j), s[j] = prm.s(c0 + j), w[j] = prm.w(c0 + j);
    const int64_t r_end = std::min(rows, (int64_t(blockIdx.y) + 1) * rows_per_block);
    for (int64_t r = int64_t(blockIdx.y) * rows_per_block + ty; r < r_end; r += TY) {
      const auto xin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + r * C + c0);
      const auto gin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(v_y + r * C + c0);
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xv = static_cast<float>(xin.v[j]), gv = static_cast<float>(gin.v[j]);
        const auto e = backward(xv, gv, a[j], s[j], w[j]);
        out.v[j] = static_cast<scalar_t>(e.dx);
        acc[kSumVZTimesX][j] += e.grad_z_times_x;
        acc[kSumVZ][j] += e.grad_z;
        acc[kSumVYTimesErf][j] += e.grad_y_times_erf;
        acc[kSumVY][j] += gv;
      }
      *reinterpret_cast<Pack<scalar_t, VEC>*>(v_x + r * C + c0) = out;
    }
  }
  const int width = TX * VEC;
#pragma unroll
  for (int t = 0; t < kNumPartials; ++t)
#pragma unroll
    for (int j = 0; j < VEC; ++j) smem[(ty * kNumPartials + t) * width + tx * VEC + j] = acc[t][j];
  __syncthreads();
  // Fixed-order sum over TY: deterministic. Thread (tx, ty) finishes the columns ty, ty + TY, ... of the
  // block's kNumPartials x width outputs.
  for (int k = ty * TX + tx; k < kNumPartials * width; k += TX * TY) {
    const int t = k / width, col = k % width;
    const int64_t c = int64_t(blockIdx.x) * width + col;
    if (c >= C) continue;
    float sum = 0.f;
    for (int yy = 0; yy < TY; ++yy) sum += smem[(yy * kNumPartials + t) * width + col];
    partials[(int64_t(blockIdx.y) * kNumPartials + t) * C + c] = sum;
  }
}

// Channels-first: grid (C, P); block kThreads threads over the runs of channel blockIdx.x in its slice of
// `outer`, VEC elements per load (inner % VEC == 0).
template <typename scalar_t, int VEC>
__global__ void bwd_runs_kernel(const scalar_t* __restrict__ v_y, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ v_x, float* __restrict__ partials, Params prm, int64_t outer,
                                int64_t C, int64_t inner, int64_t outer_per_block) {
  const int64_t c = blockIdx.x;
  const float a = prm.a(c), s = prm.s(c), w = prm.w(c);
  float acc[kNumPartials] = {};
  const int64_t o_end = std::min(outer, (int64_t(blockIdx.y) + 1) * outer_per_block);
  const int64_t packs = inner / VEC;
  for (int64_t o = int64_t(blockIdx.y) * outer_per_block; o < o_end; ++o) {
    const int64_t base = (o * C + c) * inner;
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      const auto xin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + base + k * VEC);
      const auto gin = *reinterpret_cast<const Pack<scalar_t, VEC>*>(v_y + base + k * VEC);
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xv = static_cast<float>(xin.v[j]), gv = static_cast<float>(gin.v[j]);
        const auto e = backward(xv, gv, a, s, w);
        out.v[j] = static_cast<scalar_t>(e.dx);
        acc[kSumVZTimesX] += e.grad_z_times_x;
        acc[kSumVZ] += e.grad_z;
        acc[kSumVYTimesErf] += e.grad_y_times_erf;
        acc[kSumVY] += gv;
      }
      *reinterpret_cast<Pack<scalar_t, VEC>*>(v_x + base + k * VEC) = out;
    }
  }
  // Block reduction in a fixed order: warp shuffles, then warp 0 over the per-warp sums.
  __shared__ float warp_sums[kNumPartials][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < kNumPartials; ++t) {
    float v = acc[t];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_sums[t][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < kNumPartials) {
    float sum = 0.f;
    for (int i = 0; i < int(blockDim.x) / 32; ++i) sum += warp_sums[threadIdx.x][i];
    partials[(int64_t(blockIdx.y) * kNumPartials + threadIdx.x) * C + c] = sum;
  }
}

// ------------------------------------------------------------------------------------------------------
// Launch.

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Runs body<VEC>() with VEC = 16 bytes of scalar_t when the run length and every pointer allow it, else 1.
template <typename scalar_t, typename Body>
void with_vec(int64_t run_length, std::initializer_list<const void*> ptrs, Body&& body) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  bool ok = run_length % kVec == 0;
  for (const void* p : ptrs) ok = ok && aligned16(p);
  if (ok) {
    body(std::integral_constant<int, kVec>{});
  } else {
    body(std::integral_constant<int, 1>{});
  }
}

// SM count of the current device, cached per device (ATen/cuda/CUDAContext.h would pull in cuBLAS and
// cuSPARSE headers that a minimal toolkit lacks).
int64_t num_sms() {
  static int counts[64] = {};
  const int device = c10::cuda::current_device();
  if (device >= 64) return 132;
  if (counts[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  }
  return counts[device];
}

// Row-slice blocks so that ~4 blocks run per SM in total; never more slices than rows.
int64_t row_slices(int64_t rows, int64_t other_blocks) {
  const int64_t target = 4 * num_sms();
  return std::max<int64_t>(1, std::min(rows, (target + other_blocks - 1) / other_blocks));
}

at::Tensor derf_fwd_cuda(const at::Tensor& x,                               // [..., C, ...]
                         const at::Tensor& alpha, const at::Tensor& shift,  // [1] or [C]
                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,  // [C]
                         int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.x.device());
  at::Tensor y = at::empty_like(p.x);
  if (p.x.numel() == 0) return y;
  const Params prm = make_params(p);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.x.scalar_type(), "derf_fwd_cuda", [&] {
    const auto* xp = p.x.data_ptr<scalar_t>();
    auto* yp = y.data_ptr<scalar_t>();
    if (p.inner == 1) {
      with_vec<scalar_t>(p.channels, {xp, yp}, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        const int64_t col_threads = (p.channels + VEC - 1) / VEC;
        const int threads = int(std::min<int64_t>(kThreads, (col_threads + 31) / 32 * 32));
        const int64_t col_blocks = (col_threads + threads - 1) / threads;
        // Enough rows per block to amortise the parameter loads, enough blocks to fill the GPU.
        const int64_t slices = std::min<int64_t>(row_slices(p.outer, col_blocks) * 4, 65535);
        const int64_t rows_per_block = (p.outer + slices - 1) / slices;
        const dim3 grid(unsigned(col_blocks), unsigned((p.outer + rows_per_block - 1) / rows_per_block));
        fwd_rows_kernel<scalar_t, VEC><<<grid, threads, 0, stream>>>(xp, yp, prm, p.outer, p.channels, rows_per_block);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else {
      with_vec<scalar_t>(p.inner, {xp, yp}, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        const int64_t packs = p.x.numel() / VEC;
        const int64_t blocks = std::min<int64_t>((packs + kThreads - 1) / kThreads, 32 * num_sms());
        fwd_runs_kernel<scalar_t, VEC>
            <<<unsigned(blocks), kThreads, 0, stream>>>(xp, yp, prm, p.x.numel(), p.channels, p.inner);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> derf_bwd_cuda(
    const at::Tensor& v_y, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.x.device());
  const at::Tensor v_y_c = prepare_grad(v_y, p);  // contiguous, x's dtype
  at::Tensor v_x = at::empty_like(p.x);
  const Params prm = make_params(p);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partials;
  if (p.x.numel() == 0) partials = at::zeros({1, kNumPartials, p.channels}, p.alpha.options());
  if (p.x.numel() != 0) {
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.x.scalar_type(), "derf_bwd_cuda", [&] {
      const auto* xp = p.x.data_ptr<scalar_t>();
      const auto* v_y_p = v_y_c.data_ptr<scalar_t>();
      auto* v_x_p = v_x.data_ptr<scalar_t>();
      if (p.inner == 1) {
        with_vec<scalar_t>(p.channels, {xp, v_y_p, v_x_p}, [&](auto vec) {
          constexpr int VEC = decltype(vec)::value;
          const int64_t col_threads = (p.channels + VEC - 1) / VEC;
          // Narrow blocks (<= 64 channel threads, 4+ row threads) give more column blocks, hence fewer
          // row slices and a smaller partials buffer for the same number of blocks in flight.
          const int tx = int(std::min<int64_t>(64, (col_threads + 31) / 32 * 32));
          const int ty = kThreads / tx;
          const int64_t col_blocks = (col_threads + tx - 1) / tx;
          const int64_t slices = std::min<int64_t>(row_slices((p.outer + ty - 1) / ty, col_blocks), 65535);
          const int64_t rows_per_block = (p.outer + slices - 1) / slices;
          const int64_t blocks_y = (p.outer + rows_per_block - 1) / rows_per_block;
          partials = at::empty({blocks_y, kNumPartials, p.channels}, p.alpha.options());
          const size_t smem = size_t(ty) * kNumPartials * tx * VEC * sizeof(float);
          bwd_rows_kernel<scalar_t, VEC>
              <<<dim3(unsigned(col_blocks), unsigned(blocks_y)), dim3(tx, ty), smem, stream>>>(
                  v_y_p, xp, v_x_p, partials.data_ptr<float>(), prm, p.outer, p.channels, rows_per_block);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      } else {
        with_vec<scalar_t>(p.inner, {xp, v_y_p, v_x_p}, [&](auto vec) {
          constexpr int VEC = decltype(vec)::value;
          TORCH_CHECK_VALUE(p.channels <= INT32_MAX, "derf_bwd: x has ", p.channels,
                            " channels, more than the CUDA grid takes (2^31 - 1)");
          const int64_t slices = std::min<int64_t>(row_slices(p.outer, p.channels), 65535);
          const int64_t outer_per_block = (p.outer + slices - 1) / slices;
          const int64_t blocks_y = (p.outer + outer_per_block - 1) / outer_per_block;
          partials = at::empty({blocks_y, kNumPartials, p.channels}, p.alpha.options());
          bwd_runs_kernel<scalar_t, VEC><<<dim3(unsigned(p.channels), unsigned(blocks_y)), kThreads, 0, stream>>>(
              v_y_p, xp, v_x_p, partials.data_ptr<float>(), prm, p.outer, p.channels, p.inner, outer_per_block);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
  }
  auto [v_alpha, v_shift, v_weight, v_bias] = reduce_partials(partials, p, alpha, shift, weight, bias);
  return {v_x, v_alpha, v_shift, v_weight, v_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("derf_fwd", &derf_fwd_cuda);
  m.impl("derf_bwd", &derf_bwd_cuda);
}

}  // namespace derf
}  // namespace pyops
