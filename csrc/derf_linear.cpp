// CPU backend of pyops::derf_linear_fwd / derf_linear_bwd: y = derf(x) @ W^T + b without keeping derf(x).
//
// What the CPU path does (ATen GEMMs + the vectorised Derf kernels of csrc/cpu/derf_kernel.h, no new SIMD code):
// x [M, C] is cut into row chunks of 2^19 elements (682 rows at C = 768; 2^21 for fp16/bf16: see chunk_rows; the
// size never depends on the thread count, so the parameter gradients are bitwise the same for any thread count). With
// at least as many chunks as threads they run in parallel (at::parallel_for; each GEMM inside runs single-threaded on
// its chunk); with fewer, one after the other, each ATen call multi-threaded itself:
//   forward, per chunk:  n = derf(x_chunk) into a [rows, C] scratch the thread reuses (it stays in cache),
//                        y_chunk = n @ W^T (+ b) with at::addmm_out / at::mm_out straight into y.
//   backward, per chunk: dn = dy_chunk @ W (at::mm_out into a scratch), then the Derf backward kernel on (dn,
//                        x_chunk) writes v_x and the chunk's parameter partial sums [k, 4, C]; the Derf forward
//                        kernel recomputes derf(x_chunk) into a [M, C] buffer that lives only in this call.
//   after the chunks:    v_W = dy^T @ derf(x) (one multi-threaded at::mm), v_b = dy.sum(0), and the partials
//                        are summed in chunk order (deterministic), scalar alpha/shift folded over C.
// There is no CUDA kernel for this op: on GPUs pyops.derf_linear uses the Triton pair (triton_kernels/).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/derf_kernel_isa.h"
#include "pyops/derf.h"
#include "pyops/derf_math.h"

namespace pyops {
namespace derf {
// Inside pyops::derf so PYOPS_CPU_ISA_CALL finds the Derf kernels' ISA copies (pyops::derf::<level>::...).
namespace linear {
namespace {

void check_param(const at::Tensor& t, const char* name, const at::Tensor& x, int64_t channels, bool allow_scalar) {
  TORCH_CHECK_VALUE(t.device() == x.device(), "derf_linear: ", name, " is on ", t.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "derf_linear: ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  const bool ok = t.numel() == channels || (allow_scalar && t.numel() == 1);
  TORCH_CHECK_VALUE(ok && t.dim() <= 1, "derf_linear: ", name, " must have ", allow_scalar ? "1 or " : "", channels,
                    " elements (one per channel) in at most one dimension, got shape ", t.sizes());
}

// Validates the arguments (naming the bad one) and returns the Derf problem of x [M, C] (channels last).
Problem prepare(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "derf_linear: x is on ", x.device(), ", expected a CPU tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                   "derf_linear: x must be float32, float16, bfloat16 or float64, got ", dtype);
  TORCH_CHECK_VALUE(x.dim() == 2, "derf_linear: x must be 2-D [rows, C] (pyops.derf_linear flattens it), got shape ",
                    x.sizes());
  const int64_t channels = x.size(1);
  check_param(alpha, "alpha", x, channels, /*allow_scalar=*/true);
  check_param(shift, "shift", x, channels, /*allow_scalar=*/true);
  TORCH_CHECK_VALUE(linear_weight.device() == x.device(), "derf_linear: linear_weight is on ", linear_weight.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_TYPE(linear_weight.scalar_type() == dtype, "derf_linear: linear_weight has dtype ",
                   linear_weight.scalar_type(), " but x has ", dtype);
  TORCH_CHECK_VALUE(linear_weight.dim() == 2 && linear_weight.size(1) == channels,
                    "derf_linear: linear_weight must have shape (*, ", channels, "), got ", linear_weight.sizes());
  if (linear_bias.has_value()) {
    TORCH_CHECK_VALUE(linear_bias->device() == x.device(), "derf_linear: linear_bias is on ", linear_bias->device(),
                      " but x is on ", x.device());
    TORCH_CHECK_TYPE(linear_bias->scalar_type() == dtype, "derf_linear: linear_bias has dtype ",
                     linear_bias->scalar_type(), " but x has ", dtype);
    TORCH_CHECK_VALUE(linear_bias->dim() == 1 && linear_bias->size(0) == linear_weight.size(0),
                      "derf_linear: linear_bias must have shape (", linear_weight.size(0), ",), got ",
                      linear_bias->sizes());
  }
  Problem p;
  p.x = x.contiguous();
  p.channels = channels;
  p.outer = x.size(0);
  p.inner = 1;
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.alpha = alpha.to(math).contiguous().view({-1});
  p.shift = shift.to(math).contiguous().view({-1});
  if (weight.has_value()) {
    check_param(*weight, "weight", x, channels, /*allow_scalar=*/false);
    p.weight = weight->to(math).contiguous().view({-1});
  }
  if (bias.has_value()) {
    check_param(*bias, "bias", x, channels, /*allow_scalar=*/false);
    p.bias = bias->to(math).contiguous().view({-1});
  }
  return p;
}

// Rows per chunk, from C and the dtype alone (so results never depend on the thread count). fp32/fp64: a 2^19-element
// derf(x) chunk (2 MB in fp32, an L2's worth) between the elementwise pass and the GEMM; fp16/bf16: 2^21 elements,
// as their oneDNN GEMMs reorder W on every call and prefer fewer, taller chunks. Measured on a 2-core Xeon (noisy,
// shared) at 4096 x 768 -> 3072: fp32 forward 130 / 107 / 112 ms with 2^17 / 2^19 / 1.5 * 2^20 elements (unfused
// Derf + nn.Linear 112-120 ms); bf16 forward+backward median 152 / 142 / 162 ms with 2^19 / 2^21 / one chunk
// (unfused 145-150 ms).
int64_t chunk_rows(int64_t channels, at::ScalarType dtype) {
  const int64_t elems = int64_t{1} << (at::elementSize(dtype) == 2 ? 21 : 19);
  return std::clamp<int64_t>(elems / std::max<int64_t>(channels, 1), 16, 1 << 16);
}

// Runs body(k0, k1) over the chunks: in parallel when there are enough of them to occupy every thread (each chunk's
// ATen calls then run single-threaded), else in order on this thread with each ATen call parallel inside.
template <typename F>
void for_chunks(int64_t chunks, const F& body) {
  if (chunks >= at::get_num_threads() && chunks > 1) {
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;  // dispatch TLS does not reach worker threads
      body(k0, k1);
    });
  } else {
    body(0, chunks);
  }
}

// The problem restricted to rows [r0, r0 + rows) of x.
Problem rows_of(const Problem& p, int64_t r0, int64_t rows) {
  Problem q = p;
  q.x = p.x.narrow(0, r0, rows);
  q.outer = rows;
  return q;
}

at::Tensor derf_linear_fwd_cpu(const at::Tensor& x,                               // [M, C]
                               const at::Tensor& alpha, const at::Tensor& shift,  // [1] or [C]
                               const std::optional<at::Tensor>& weight,           // [C]
                               const std::optional<at::Tensor>& bias,             // [C]
                               const at::Tensor& linear_weight,                   // [O, C]
                               const std::optional<at::Tensor>& linear_bias) {    // [O]
  // The ATen calls below (addmm_out, mm_out) must not see autograd: this op's autograd is registered around it,
  // and out= variants refuse inputs that require grad (a direct call under torch.no_grad() reaches here so).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = prepare(x, alpha, shift, weight, bias, linear_weight, linear_bias);
  const int64_t rows = p.outer, out_features = linear_weight.size(0);
  at::Tensor y = at::empty({rows, out_features}, p.x.options());
  if (rows == 0 || out_features == 0) return y;
  if (p.channels == 0) return linear_bias.has_value() ? y.copy_(linear_bias->expand_as(y)) : y.zero_();
  const at::Tensor w_t = linear_weight.t();
  const int64_t step = chunk_rows(p.channels, p.x.scalar_type()), chunks = (rows + step - 1) / step;
  for_chunks(chunks, [&](int64_t k0, int64_t k1) {
    at::Tensor n = at::empty({std::min(step, rows), p.channels}, p.x.options());  // this thread's scratch
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * step, len = std::min(step, rows - r0);
      const Problem q = rows_of(p, r0, len);
      at::Tensor n_k = n.narrow(0, 0, len);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_linear_fwd_cpu",
                                      [&] { PYOPS_CPU_ISA_CALL(forward<scalar_t>, q, n_k); });
      at::Tensor y_k = y.narrow(0, r0, len);
      if (linear_bias.has_value()) {
        at::addmm_out(y_k, *linear_bias, n_k, w_t);
      } else {
        at::mm_out(y_k, n_k, w_t);
      }
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> derf_linear_bwd_cpu(
    const at::Tensor& v_y, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const at::Tensor& linear_weight,
    bool has_linear_bias) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in derf_linear_fwd_cpu
  const Problem p = prepare(x, alpha, shift, weight, bias, linear_weight, std::nullopt);
  const int64_t rows = p.outer, C = p.channels, out_features = linear_weight.size(0);
  TORCH_CHECK_VALUE(v_y.device() == p.x.device(), "derf_linear_bwd: v_y is on ", v_y.device(), " but x is on ",
                    p.x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_y.scalar_type()), "derf_linear_bwd: v_y must be a floating-point tensor, got ",
                   v_y.scalar_type());
  TORCH_CHECK_VALUE(v_y.dim() == 2 && v_y.size(0) == rows && v_y.size(1) == out_features,
                    "derf_linear_bwd: v_y must have shape (", rows, ", ", out_features, "), got ", v_y.sizes());
  const at::Tensor dy = v_y.to(p.x.scalar_type()).contiguous();

  at::Tensor v_x = at::empty_like(p.x);
  at::Tensor n_full = at::empty_like(p.x);  // derf(x), recomputed; freed when this call returns
  const int64_t step = chunk_rows(C, p.x.scalar_type()), chunks = rows == 0 ? 0 : (rows + step - 1) / step;
  // Each chunk's Derf backward writes num_chunks(chunk) rows of partials; their offsets are fixed first.
  std::vector<int64_t> part_offset(chunks + 1, 0);
  for (int64_t k = 0; k < chunks; ++k) {
    part_offset[k + 1] = part_offset[k] + base::num_chunks(rows_of(p, k * step, std::min(step, rows - k * step)));
  }
  at::Tensor partials = at::zeros({std::max<int64_t>(part_offset[chunks], 1), kNumPartials, C}, p.alpha.options());
  if (chunks > 0 && C > 0) {
    for_chunks(chunks, [&](int64_t k0, int64_t k1) {
      at::Tensor dn = at::empty({std::min(step, rows), C}, p.x.options());  // this thread's scratch
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = k * step, len = std::min(step, rows - r0);
        const Problem q = rows_of(p, r0, len);
        at::Tensor dn_k = dn.narrow(0, 0, len);
        at::mm_out(dn_k, dy.narrow(0, r0, len), linear_weight);  // the dgrad GEMM of this chunk
        at::Tensor v_x_k = v_x.narrow(0, r0, len), n_k = n_full.narrow(0, r0, len);
        at::Tensor part_k = partials.narrow(0, part_offset[k], part_offset[k + 1] - part_offset[k]);
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_linear_bwd_cpu", [&] {
          PYOPS_CPU_ISA_CALL(backward<scalar_t>, q, dn_k, v_x_k, part_k);  // its epilogue, dn in cache
          PYOPS_CPU_ISA_CALL(forward<scalar_t>, q, n_k);                   // derf(x) for the dW GEMM
        });
      }
    });
  } else {
    v_x.zero_();
    n_full.zero_();
  }
  at::Tensor v_lw = at::mm(dy.t(), n_full);
  at::Tensor v_lb = has_linear_bias ? dy.sum(0) : at::empty({0}, dy.options());
  // Deterministic second stage: the partial rows summed in a fixed order, scalar alpha/shift folded over C.
  const at::Tensor totals = partials.sum(0);
  auto as_param = [&](int row, const at::Tensor& param) {
    at::Tensor g = totals[row];
    if (param.numel() == 1) g = g.sum();
    return g.to(param.scalar_type(), /*non_blocking=*/false, /*copy=*/true).reshape(param.sizes());
  };
  auto optional_grad = [&](int row, const std::optional<at::Tensor>& param) {
    return param.has_value() ? as_param(row, *param) : at::empty({0}, alpha.options());
  };
  return {v_x,
          as_param(kSumVZTimesX, alpha),
          as_param(kSumVZ, shift),
          optional_grad(kSumVYTimesErf, weight),
          optional_grad(kSumVY, bias),
          v_lw,
          v_lb};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("derf_linear_fwd", &derf_linear_fwd_cpu);
  m.impl("derf_linear_bwd", &derf_linear_bwd_cpu);
}

}  // namespace linear
}  // namespace derf
}  // namespace pyops
