// CUDA backend of pyops::contrastive_fwd / contrastive_bwd: the shared chunk loop (csrc/contrastive.cpp) on the
// current stream with ATen's GEMMs (fp32: at::mm, so torch's TF32 setting applies; fp16/bf16 operands: at::mm with
// an fp32 output, tensor cores with fp32 accumulation; see contrastive.h) and three small kernels per chunk:
//  - rows: one block per row, max then sum of exp and positives over the M columns, a fixed-order block reduction;
//  - cols: one thread per column, looping over the chunk's rows in order, merged into the running column state;
//  - grad: one thread per element, dots -> G in place.
// No atomics, no host syncs (the scale is read on the device), 64-bit indexing.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pyops/contrastive.h"
#include "pyops/contrastive_math.h"

namespace pyops {
namespace contrastive {
namespace {

constexpr int kThreads = 256;

// Block-wide reduction of v in a fixed order (warp shuffles, then warp 0 over the per-warp values); every thread
// gets the result. op: max or sum with its identity. Needs blockDim.x == kThreads.
template <typename Op>
__device__ float block_reduce(float v, Op op, float identity, float* smem /* [kThreads / 32] */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? smem[lane] : identity;
    for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// grid: one block of kThreads threads per chunk row. Row i's positive columns are kperm[lo[i]:hi[i]].
__global__ void rows_kernel(const float* __restrict__ dots, int64_t m, const float* __restrict__ scale_ptr,
                            const int64_t* __restrict__ kperm, const int64_t* __restrict__ lo,
                            const int64_t* __restrict__ hi, float* __restrict__ lse, float* __restrict__ npos,
                            float* __restrict__ loss) {
  __shared__ float smem[kThreads / 32];
  const int64_t i = blockIdx.x;
  const float* x = dots + i * m;
  const float scale = *scale_ptr;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < m; j += kThreads) mx = fmaxf(mx, scale * x[j]);
  mx = block_reduce(mx, Max(), -INFINITY, smem);
  float sum = 0.f, ps = 0.f;
  for (int64_t j = threadIdx.x; j < m; j += kThreads) sum += expf(scale * x[j] - mx);
  for (int64_t t = lo[i] + threadIdx.x; t < hi[i]; t += kThreads) ps += scale * x[kperm[t]];
  sum = block_reduce(sum, Sum(), 0.f, smem);
  ps = block_reduce(ps, Sum(), 0.f, smem);
  if (threadIdx.x == 0) {
    const float np = float(hi[i] - lo[i]), l = mx + logf(sum);
    lse[i] = l;
    npos[i] = np;
    loss[i] = side_loss(l, ps, np);
  }
}

// The first t in [lo, hi) with sorted[t] >= value (hi if none).
__device__ int64_t lower_bound(const int64_t* sorted, int64_t lo, int64_t hi, int64_t value) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One thread per column (any block size), over the chunk's rows r0 .. r0 + c in order. Column j's
// positive rows are qperm[col_lo[j]:col_hi[j]], ascending.
__global__ void cols_kernel(const float* __restrict__ dots, int64_t c, int64_t m, const float* __restrict__ scale_ptr,
                            int64_t r0, const int64_t* __restrict__ qperm, const int64_t* __restrict__ col_lo,
                            const int64_t* __restrict__ col_hi, float* __restrict__ cmax, float* __restrict__ csum,
                            float* __restrict__ cpos, float* __restrict__ cnpos) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  const float scale = *scale_ptr;
  float mx = -INFINITY;
  for (int64_t i = 0; i < c; ++i) mx = fmaxf(mx, scale * dots[i * m + j]);
  float sum = 0.f, ps = 0.f;
  for (int64_t i = 0; i < c; ++i) sum += expf(scale * dots[i * m + j] - mx);
  const int64_t t0 = lower_bound(qperm, col_lo[j], col_hi[j], r0);
  const int64_t t1 = lower_bound(qperm, t0, col_hi[j], r0 + c);
  for (int64_t t = t0; t < t1; ++t) ps += scale * dots[(qperm[t] - r0) * m + j];
  const float np = float(t1 - t0);
  float state_max = cmax[j], state_sum = csum[j];
  merge_lse(state_max, state_sum, mx, sum);
  cmax[j] = state_max;
  csum[j] = state_sum;
  cpos[j] += ps;
  cnpos[j] += np;
}

// grid-stride over the chunk's c * M elements: dots -> G. col_lse, b, b_inv are nullptr when not symmetric.
__global__ void grad_kernel(float* __restrict__ dots, int64_t c, int64_t m, const float* __restrict__ scale_ptr,
                            const int64_t* __restrict__ qg, const int64_t* __restrict__ kg,
                            const float* __restrict__ row_lse, const float* __restrict__ a,
                            const float* __restrict__ a_inv, const float* __restrict__ col_lse,
                            const float* __restrict__ b, const float* __restrict__ b_inv) {
  const float scale = *scale_ptr;
  const int64_t total = c * m;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / m, j = e - i * m;
    const float s = scale * dots[e];
    float g = b != nullptr ? grad_softmax_terms(s, a[i], row_lse[i], b[j], col_lse[j])
                           : grad_softmax_terms(s, a[i], row_lse[i], 0.f, 0.f);
    if (qg[i] == kg[j]) g -= a_inv[i] + (b_inv != nullptr ? b_inv[j] : 0.f);
    dots[e] = g;
  }
}

struct CudaKernels final : Kernels {
  void rows(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& lse, at::Tensor& npos,
            at::Tensor& loss) const override {
    const int64_t c = dots.size(0);
    TORCH_CHECK(c <= INT32_MAX, "contrastive: chunk too large");
    rows_kernel<<<unsigned(c), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dots.data_ptr<float>(), p.m, p.scale.data_ptr<float>(), p.kperm.data_ptr<int64_t>(),
        p.row_lo.data_ptr<int64_t>() + r0, p.row_hi.data_ptr<int64_t>() + r0, lse.data_ptr<float>() + r0,
        npos.data_ptr<float>() + r0, loss.data_ptr<float>() + r0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  void cols(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& cmax, at::Tensor& csum, at::Tensor& cpos,
            at::Tensor& cnpos) const override {
    // Small blocks: M / 64 of them keep more SMs busy than M / 256 would (M = 8192: 128 blocks).
    constexpr int kColThreads = 64;
    const int64_t blocks = (p.m + kColThreads - 1) / kColThreads;
    cols_kernel<<<unsigned(blocks), kColThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dots.data_ptr<float>(), dots.size(0), p.m, p.scale.data_ptr<float>(), r0, p.qperm.data_ptr<int64_t>(),
        p.col_lo.data_ptr<int64_t>(), p.col_hi.data_ptr<int64_t>(), cmax.data_ptr<float>(), csum.data_ptr<float>(),
        cpos.data_ptr<float>(), cnpos.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  bool grad(const Problem& p, int64_t r0, at::Tensor& dots, const at::Tensor& row_lse, const at::Tensor& a,
            const at::Tensor& a_inv, const at::Tensor& col_lse, const at::Tensor& b, const at::Tensor& b_inv,
            at::Tensor& /*scale_terms*/) const override {  // one thread per element: the host sums q_i.(G k)_i
    const int64_t total = dots.numel();
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 16);
    const bool sym = p.symmetric;
    grad_kernel<<<unsigned(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dots.data_ptr<float>(), dots.size(0), p.m, p.scale.data_ptr<float>(), p.qg.data_ptr<int64_t>() + r0,
        p.kg.data_ptr<int64_t>(), row_lse.data_ptr<float>() + r0, a.data_ptr<float>() + r0,
        a_inv.data_ptr<float>() + r0, sym ? col_lse.data_ptr<float>() : nullptr, sym ? b.data_ptr<float>() : nullptr,
        sym ? b_inv.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return false;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& logit_scale, const at::Tensor& qg, const at::Tensor& kg,
    bool symmetric) {
  const Problem p = prepare("contrastive_fwd", q, k, logit_scale, qg, kg, symmetric, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.q.device());
  return forward(p, CudaKernels());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_bwd_cuda(
    const at::Tensor& v_row, const at::Tensor& v_col, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& logit_scale, const at::Tensor& qg, const at::Tensor& kg, const at::Tensor& row_lse,
    const at::Tensor& col_lse, const at::Tensor& row_npos, const at::Tensor& col_npos, bool symmetric) {
  const Problem p = prepare("contrastive_bwd", q, k, logit_scale, qg, kg, symmetric, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.q.device());
  return backward(p, CudaKernels(), v_row, v_col, logit_scale, row_lse, col_lse, row_npos, col_npos);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("contrastive_fwd", &contrastive_fwd_cuda);
  m.impl("contrastive_bwd", &contrastive_bwd_cuda);
}

}  // namespace contrastive
}  // namespace pyops
