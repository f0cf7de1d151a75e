// CUDA backend of pyops::attribute_pair_fwd / attribute_pair_bwd: one thread block per pair b; each thread owns
// VEC-element column chunks d of all the pair's slots (16-byte loads when D allows), so pooling, dots and
// gradients never exchange data between threads except through the block reductions of the A x A dots.
//  - forward: token inputs are mean-pooled over the kept tokens (masked tokens are not read) into px/py (fp32,
//    saved for the backward); then the dots and squared norms, kTile x kTile cells per pass over D, reduced
//    across the block in a fixed order; thread 0 forms the cosines and the loss (pair_loss).
//  - backward: thread 0 turns the saved cosines and norms into the per-pair coefficients (pair_backward,
//    shared with the CPU kernel) and writes the pair's v_logit_scale term; then one pass over D writes v_ex and
//    v_ey (for token inputs, w_l / count times the pooled gradient on every token). The [B] terms are summed by
//    at::sum: deterministic, no atomics.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "pyops/attribute_pair.h"
#include "pyops/attribute_pair_math.h"
#include "pyops/dispatch.h"

namespace pyops {
namespace attribute_pair {
namespace {

constexpr int kTile = 4;                         // slots per register tile, rows and columns
constexpr int kRed = kTile * kTile + 2 * kTile;  // values per block reduction: the tile's dots and norms
constexpr int kMaxThreads = 256;
constexpr int kUnroll = 4;          // tokens per step of the pooling loop
constexpr int64_t kMaxSlots = 100;  // dynamic shared memory (A^2 + 3A floats) stays under 48 KiB

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int VEC, typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  const auto in = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<float>(in.v[k]);
}

template <int VEC, typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[VEC], float scale) {
  Pack<T, VEC> out;
#pragma unroll
  for (int k = 0; k < VEC; ++k) out.v[k] = static_cast<T>(scale * v[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = out;
}

template <typename mask_t>
__device__ __forceinline__ float token_weight(const mask_t* mask, int64_t index) {
  return mask ? static_cast<float>(mask[index]) : 1.f;
}

// Sums v over the block (blockDim.x a multiple of 32): warp shuffles, then the warps' partials in warp order,
// so the result is bitwise the same on every run. Every thread gets the totals. red: [32 * N] shared floats.
template <int N>
__device__ void block_sum(float (&v)[N], float* red) {
#pragma unroll
  for (int k = 0; k < N; ++k)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) red[warp * N + k] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    float sum = 0.f;
    for (int w = 0; w < warps; ++w) sum += red[w * N + k];
    v[k] = sum;
  }
  __syncthreads();  // red is reused by the next call
}

// 1 / max(sum_l w, 1) per slot of pair b into inv_count[A] (shared); ends with a barrier.
template <typename mask_t>
__device__ void inverse_counts(const mask_t* mask, int64_t b, int A, int64_t L, float* inv_count) {
  for (int a = threadIdx.x; a < A; a += blockDim.x) {
    float count = 0.f;
    for (int64_t l = 0; l < L; ++l) count += token_weight(mask, (b * A + a) * L + l);
    inv_count[a] = 1.f / fmaxf(count, 1.f);
  }
  __syncthreads();
}

// The pair's A x A dots and 2A squared norms of the rows xs/ys ([A, D] each) into dots[A * A], sq[2A] (shared).
template <int VEC, typename in_t>
__device__ void pair_dots(const in_t* xs, const in_t* ys, int A, int64_t D, float* dots, float* sq, float* red) {
  for (int i0 = 0; i0 < A; i0 += kTile) {
    for (int j0 = 0; j0 < A; j0 += kTile) {
      float acc[kRed] = {};
      for (int64_t d = int64_t(threadIdx.x) * VEC; d < D; d += int64_t(blockDim.x) * VEC) {
        float xv[kTile][VEC], yv[kTile][VEC];
#pragma unroll
        for (int t = 0; t < kTile; ++t) {
          if (i0 + t < A) {
            load_vec<VEC>(xs + (i0 + t) * D + d, xv[t]);
          } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) xv[t][k] = 0.f;
          }
          if (j0 + t < A) {
            load_vec<VEC>(ys + (j0 + t) * D + d, yv[t]);
          } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) yv[t][k] = 0.f;
          }
        }
#pragma unroll
        for (int ti = 0; ti < kTile; ++ti)
#pragma unroll
          for (int tj = 0; tj < kTile; ++tj)
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[ti * kTile + tj] += xv[ti][k] * yv[tj][k];
#pragma unroll
        for (int t = 0; t < kTile; ++t)
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            acc[kTile * kTile + t] += xv[t][k] * xv[t][k];
            acc[kTile * kTile + kTile + t] += yv[t][k] * yv[t][k];
          }
      }
      block_sum(acc, red);
      if (threadIdx.x == 0) {
        for (int ti = 0; ti < kTile && i0 + ti < A; ++ti)
          for (int tj = 0; tj < kTile && j0 + tj < A; ++tj) dots[(i0 + ti) * A + j0 + tj] = acc[ti * kTile + tj];
        for (int t = 0; t < kTile; ++t) {
          if (j0 == 0 && i0 + t < A) sq[i0 + t] = acc[kTile * kTile + t];
          if (i0 == 0 && j0 + t < A) sq[A + j0 + t] = acc[kTile * kTile + kTile + t];
        }
      }
    }
  }
  __syncthreads();
}

template <typename scalar_t, typename mask_t, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
    fwd_kernel(const scalar_t* __restrict__ ex, const scalar_t* __restrict__ ey, const mask_t* __restrict__ mask,
               const float* __restrict__ scale, float* __restrict__ loss, float* __restrict__ cos,
               float* __restrict__ norms, float* __restrict__ px, float* __restrict__ py, int A, int64_t L, int64_t D,
               bool tokens) {
  extern __shared__ float dyn[];  // dots [A * A], squared norms [2A], inverse counts [A]
  __shared__ float red[32 * kRed];
  float* dots = dyn;
  float* sq = dots + A * A;
  float* inv_count = sq + 2 * A;
  const int64_t b = blockIdx.x;
  if (tokens) {
    inverse_counts(mask, b, A, L, inv_count);
    for (int side = 0; side < 2; ++side) {
      for (int a = 0; a < A; ++a) {
        const scalar_t* src = (side ? ey : ex) + (b * A + a) * L * D;
        float* dst = (side ? py : px) + (b * A + a) * D;
        for (int64_t d = int64_t(threadIdx.x) * VEC; d < D; d += int64_t(blockDim.x) * VEC) {
          // kUnroll tokens' loads in flight per step (memory-level parallelism); masked tokens are not read.
          // The sum still runs in token order.
          float acc[VEC] = {};
          for (int64_t l0 = 0; l0 < L; l0 += kUnroll) {
            float w[kUnroll], x[kUnroll][VEC];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              w[u] = l0 + u < L ? token_weight(mask, (b * A + a) * L + l0 + u) : 0.f;
              if (w[u] != 0.f) {
                load_vec<VEC>(src + (l0 + u) * D + d, x[u]);
              } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) x[u][k] = 0.f;
              }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u)
#pragma unroll
              for (int k = 0; k < VEC; ++k) acc[k] += w[u] * x[u][k];
          }
          store_vec<VEC>(dst + d, acc, inv_count[a]);  // read back below by this same thread only
        }
      }
    }
    pair_dots<VEC>(px + b * A * D, py + b * A * D, A, D, dots, sq, red);
  } else {
    pair_dots<VEC>(ex + b * A * D, ey + b * A * D, A, D, dots, sq, red);
  }
  if (threadIdx.x == 0) {
    float* r = norms + b * 2 * A;
    for (int k = 0; k < 2 * A; ++k) r[k] = sqrtf(sq[k]);
    float* c = cos + b * A * A;
    for (int i = 0; i < A; ++i)
      for (int j = 0; j < A; ++j) c[i * A + j] = dots[i * A + j] / (clamp_norm(r[i]) * clamp_norm(r[A + j]));
    loss[b] = pair_loss(c, int64_t(A), *scale);
  }
}

// v_ex / v_ey of pair b from its rows xs/ys ([A, D]) and the coefficients (shared).
template <int VEC, typename in_t, typename scalar_t, typename mask_t>
__device__ void pair_grads(const in_t* xs, const in_t* ys, const mask_t* mask, int64_t b, int A, int64_t L, int64_t D,
                           bool tokens, const float* alpha, const float* beta, const float* gamma,
                           const float* inv_count, scalar_t* v_ex, scalar_t* v_ey) {
  for (int side = 0; side < 2; ++side) {
    const in_t* own = side ? ys : xs;
    const in_t* other = side ? xs : ys;
    const float* self = side ? gamma : beta;
    scalar_t* dst = side ? v_ey : v_ex;
    for (int a0 = 0; a0 < A; a0 += kTile) {
      for (int64_t d = int64_t(threadIdx.x) * VEC; d < D; d += int64_t(blockDim.x) * VEC) {
        float out[kTile][VEC], row[VEC];
#pragma unroll
        for (int t = 0; t < kTile; ++t) {
          if (a0 + t < A) {
            load_vec<VEC>(own + (a0 + t) * D + d, row);
#pragma unroll
            for (int k = 0; k < VEC; ++k) out[t][k] = self[a0 + t] * row[k];
          }
        }
        for (int j = 0; j < A; ++j) {
          load_vec<VEC>(other + j * D + d, row);
#pragma unroll
          for (int t = 0; t < kTile; ++t) {
            if (a0 + t >= A) continue;
            const float coef = side ? alpha[j * A + a0 + t] : alpha[(a0 + t) * A + j];
#pragma unroll
            for (int k = 0; k < VEC; ++k) out[t][k] += coef * row[k];
          }
        }
#pragma unroll
        for (int t = 0; t < kTile; ++t) {
          const int a = a0 + t;
          if (a >= A) continue;
          if (!tokens) {
            store_vec<VEC>(dst + (b * A + a) * D + d, out[t], 1.f);
            continue;
          }
          for (int64_t l = 0; l < L; ++l)
            store_vec<VEC>(dst + ((b * A + a) * L + l) * D + d, out[t],
                           token_weight(mask, (b * A + a) * L + l) * inv_count[a]);
        }
      }
    }
  }
}

template <typename scalar_t, typename mask_t, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
    bwd_kernel(const float* __restrict__ v_loss, const scalar_t* __restrict__ ex, const scalar_t* __restrict__ ey,
               const mask_t* __restrict__ mask, const float* __restrict__ scale, const float* __restrict__ cos,
               const float* __restrict__ norms, const float* __restrict__ px, const float* __restrict__ py,
               scalar_t* __restrict__ v_ex, scalar_t* __restrict__ v_ey, float* __restrict__ partials, int A, int64_t L,
               int64_t D, bool tokens) {
  extern __shared__ float dyn[];  // alpha [A * A], beta [A], gamma [A], inverse counts [A]
  float* alpha = dyn;
  float* beta = alpha + A * A;
  float* gamma = beta + A;
  float* inv_count = gamma + A;
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    const float* r = norms + b * 2 * A;
    partials[b] = pair_backward(cos + b * A * A, r, r + A, int64_t(A), *scale, v_loss[b], alpha, beta, gamma);
  }
  if (tokens) {
    inverse_counts(mask, b, A, L, inv_count);  // its barrier also publishes the coefficients
    pair_grads<VEC>(px + b * A * D, py + b * A * D, mask, b, A, L, D, true, alpha, beta, gamma, inv_count, v_ex, v_ey);
  } else {
    __syncthreads();
    pair_grads<VEC>(ex + b * A * D, ey + b * A * D, mask, b, A, L, D, false, alpha, beta, gamma, inv_count, v_ex, v_ey);
  }
}

int num_threads(int64_t D, int vec) {
  const int64_t chunks = (D + vec - 1) / vec;
  int threads = 32;
  while (threads < kMaxThreads && threads < chunks) threads *= 2;
  return threads;
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_cuda_problem(const Problem& p) {
  TORCH_CHECK_VALUE(p.A <= kMaxSlots, "attribute_pair_loss: the CUDA backend takes at most ", kMaxSlots,
                    " attribute slots (A), got ", p.A, "; use backend='triton'");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attribute_pair_fwd_cuda(
    const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& logit_scale, const std::optional<at::Tensor>& mask) {
  const Problem p = prepare("attribute_pair_fwd", ex, ey, logit_scale, mask, c10::DeviceType::CUDA);
  check_cuda_problem(p);
  const c10::cuda::CUDAGuard guard(p.ex.device());
  auto [loss, cos, norms, px, py] = allocate_forward(p);
  if (p.B == 0) return {loss, cos, norms, px, py};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const size_t smem = size_t(p.A * p.A + 3 * p.A) * sizeof(float);
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.ex.scalar_type(), "attribute_pair_fwd_cuda", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* x = p.ex.const_data_ptr<scalar_t>();
    const scalar_t* y = p.ey.const_data_ptr<scalar_t>();
    const bool vec = p.D % kVec == 0 && aligned16(x) && aligned16(y);
    float* pxp = p.tokens ? px.data_ptr<float>() : nullptr;
    float* pyp = p.tokens ? py.data_ptr<float>() : nullptr;
    with_mask<scalar_t>(p, [&](auto m) {
      using mask_t = std::remove_const_t<std::remove_pointer_t<decltype(m)>>;
      const float* s = p.logit_scale.const_data_ptr<float>();
      if (vec) {
        fwd_kernel<scalar_t, mask_t, kVec><<<p.B, num_threads(p.D, kVec), smem, stream>>>(
            x, y, m, s, loss.data_ptr<float>(), cos.data_ptr<float>(), norms.data_ptr<float>(), pxp, pyp, int(p.A), p.L,
            p.D, p.tokens);
      } else {
        fwd_kernel<scalar_t, mask_t, 1><<<p.B, num_threads(p.D, 1), smem, stream>>>(
            x, y, m, s, loss.data_ptr<float>(), cos.data_ptr<float>(), norms.data_ptr<float>(), pxp, pyp, int(p.A), p.L,
            p.D, p.tokens);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, cos, norms, px, py};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attribute_pair_bwd_cuda(const at::Tensor& v_loss, const at::Tensor& ex,
                                                                       const at::Tensor& ey,
                                                                       const at::Tensor& logit_scale,
                                                                       const std::optional<at::Tensor>& mask,
                                                                       const at::Tensor& cos, const at::Tensor& norms,
                                                                       const at::Tensor& px, const at::Tensor& py) {
  const Problem p = prepare("attribute_pair_bwd", ex, ey, logit_scale, mask, c10::DeviceType::CUDA);
  check_cuda_problem(p);
  const c10::cuda::CUDAGuard guard(p.ex.device());
  const Saved sv = prepare_backward(p, v_loss, cos, norms, px, py);
  at::Tensor v_ex = at::empty_like(p.ex), v_ey = at::empty_like(p.ey);
  at::Tensor partials = at::zeros({p.B}, p.logit_scale.options());
  if (p.B > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    const size_t smem = size_t(p.A * p.A + 3 * p.A) * sizeof(float);
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.ex.scalar_type(), "attribute_pair_bwd_cuda", [&] {
      constexpr int kVec = 16 / sizeof(scalar_t);
      const scalar_t* x = p.ex.const_data_ptr<scalar_t>();
      const scalar_t* y = p.ey.const_data_ptr<scalar_t>();
      const float* pxp = p.tokens ? sv.px.const_data_ptr<float>() : nullptr;
      const float* pyp = p.tokens ? sv.py.const_data_ptr<float>() : nullptr;
      const bool vec =
          p.D % kVec == 0 && aligned16(x) && aligned16(y) && (!p.tokens || (aligned16(pxp) && aligned16(pyp)));
      with_mask<scalar_t>(p, [&](auto m) {
        using mask_t = std::remove_const_t<std::remove_pointer_t<decltype(m)>>;
        const float* s = p.logit_scale.const_data_ptr<float>();
        if (vec) {
          bwd_kernel<scalar_t, mask_t, kVec><<<p.B, num_threads(p.D, kVec), smem, stream>>>(
              sv.v_loss.const_data_ptr<float>(), x, y, m, s, sv.cos.const_data_ptr<float>(),
              sv.norms.const_data_ptr<float>(), pxp, pyp, v_ex.data_ptr<scalar_t>(), v_ey.data_ptr<scalar_t>(),
              partials.data_ptr<float>(), int(p.A), p.L, p.D, p.tokens);
        } else {
          bwd_kernel<scalar_t, mask_t, 1><<<p.B, num_threads(p.D, 1), smem, stream>>>(
              sv.v_loss.const_data_ptr<float>(), x, y, m, s, sv.cos.const_data_ptr<float>(),
              sv.norms.const_data_ptr<float>(), pxp, pyp, v_ex.data_ptr<scalar_t>(), v_ey.data_ptr<scalar_t>(),
              partials.data_ptr<float>(), int(p.A), p.L, p.D, p.tokens);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {v_ex, v_ey, reduce_v_logit_scale(partials, logit_scale)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("attribute_pair_fwd", &attribute_pair_fwd_cuda);
  m.impl("attribute_pair_bwd", &attribute_pair_bwd_cuda);
}

}  // namespace attribute_pair
}  // namespace pyops
