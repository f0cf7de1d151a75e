// CPU backend of pyops::derf_linear_fwd / derf_linear_bwd: y = derf(x) @ W^T + b without keeping derf(x).
//
// What the CPU path does (ATen GEMMs + the vectorised Derf kernels of csrc/cpu/derf_kernel.h, no new SIMD code):
//   forward:  n = derf(x) into a temporary [M, C] buffer (the Derf forward kernel), y = n @ W^T (+ b) (one
//             multi-threaded ATen GEMM); n is freed when the op returns, so autograd keeps only x.
//   backward: dn = dy @ W (the dgrad GEMM), then one pass of the Derf backward kernel on (dn, x) writes v_x, the
//             parameters' deterministic partial sums (its fixed chunking) and the recomputed derf(x) into a buffer
//             that lives only in this call (one extra store: erf(z) is computed there anyway); v_W = dy^T @
//             derf(x), v_b = dy.sum(0).
// Whole-matrix GEMMs, not row chunks: per-chunk GEMMs repack W for every chunk, which measured 20-25% slower
// than the unfused pair at 4096 x 768 -> 3072 (quiet 2-core Xeon, fp32 and bf16).
// There is no CUDA kernel for this op: on GPUs pyops.derf_linear uses the Triton pair (triton_kernels/).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/derf_kernel_isa.h"
#include "pyops/derf.h"
#include "pyops/derf_math.h"
#include "pyops/host_checks.h"

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

// The parameter in the Derf kernels' math dtype, contiguous and 1-D; the tensor itself (no new TensorImpl, no
// dispatcher call) when it already is: this runs four times per call.
at::Tensor as_math(const at::Tensor& t, at::ScalarType math) {
  if (t.scalar_type() == math && t.is_contiguous() && t.dim() == 1) return t;
  return t.to(math).contiguous().view({-1});
}

// Validates the arguments (naming the bad one) and returns the Derf problem of x [M, C] (channels last). With
// check_values (the forward) the Derf parameters are checked for NaN/inf too (host_checks.h's policy).
Problem prepare(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias, bool check_values) {
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
  if (weight.has_value()) check_param(*weight, "weight", x, channels, /*allow_scalar=*/false);
  if (bias.has_value()) check_param(*bias, "bias", x, channels, /*allow_scalar=*/false);
  if (check_values && check_finite_enabled(x.device().type())) {
    check_finite("derf_linear", alpha, "alpha");
    check_finite("derf_linear", shift, "shift");
    if (weight.has_value()) check_finite("derf_linear", *weight, "weight");
    if (bias.has_value()) check_finite("derf_linear", *bias, "bias");
  }
  Problem p;
  p.x = x.is_contiguous() ? x : x.contiguous();
  p.channels = channels;
  p.outer = x.size(0);
  p.inner = 1;
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.alpha = as_math(alpha, math);
  p.shift = as_math(shift, math);
  if (weight.has_value()) p.weight = as_math(*weight, math);
  if (bias.has_value()) p.bias = as_math(*bias, math);
  return p;
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
  const Problem p = prepare(x, alpha, shift, weight, bias, linear_weight, linear_bias, /*check_values=*/true);
  const int64_t rows = p.outer, out_features = linear_weight.size(0);
  at::Tensor y = at::empty({rows, out_features}, p.x.options());
  if (rows == 0 || out_features == 0) return y;
  if (p.channels == 0) return linear_bias.has_value() ? y.copy_(linear_bias->expand_as(y)) : y.zero_();
  at::Tensor n = at::empty_like(p.x);  // derf(x): freed on return, never saved
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_linear_fwd_cpu",
                                  [&] { PYOPS_CPU_ISA_CALL(forward<scalar_t>, p, n); });
  if (linear_bias.has_value()) {
    at::addmm_out(y, *linear_bias, n, linear_weight.t());
  } else {
    at::mm_out(y, n, linear_weight.t());
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> derf_linear_bwd_cpu(
    const at::Tensor& v_y, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const at::Tensor& linear_weight,
    bool has_linear_bias) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in derf_linear_fwd_cpu
  const Problem p = prepare(x, alpha, shift, weight, bias, linear_weight, std::nullopt, /*check_values=*/false);
  const int64_t rows = p.outer, C = p.channels, out_features = linear_weight.size(0);
  TORCH_CHECK_VALUE(v_y.device() == p.x.device(), "derf_linear_bwd: v_y is on ", v_y.device(), " but x is on ",
                    p.x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_y.scalar_type()), "derf_linear_bwd: v_y must be a floating-point tensor, got ",
                   v_y.scalar_type());
  TORCH_CHECK_VALUE(v_y.dim() == 2 && v_y.size(0) == rows && v_y.size(1) == out_features,
                    "derf_linear_bwd: v_y must have shape (", rows, ", ", out_features, "), got ", v_y.sizes());
  const at::Tensor dy = v_y.to(p.x.scalar_type()).contiguous();

  at::Tensor v_x = at::empty_like(p.x);
  at::Tensor n = at::empty_like(p.x);  // derf(x), recomputed; freed when this call returns
  at::Tensor partials = at::zeros({std::max<int64_t>(base::num_chunks(p), 1), kNumPartials, C}, p.alpha.options());
  if (rows > 0 && C > 0) {
    const at::Tensor dn = at::mm(dy, linear_weight);  // the dgrad GEMM
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_linear_bwd_cpu", [&] {
      PYOPS_CPU_ISA_CALL(backward<scalar_t>, p, dn, v_x, partials, &n);  // Derf backward on dn; n = derf(x)
    });
  } else {
    v_x.zero_();
    n.zero_();
  }
  at::Tensor v_lw = at::mm(dy.t(), n);
  at::Tensor v_lb = has_linear_bias ? dy.sum(0) : at::empty({0}, dy.options());
  // Deterministic second stage (Derf's): the partial rows summed in a fixed order, scalar alpha/shift over C.
  auto [v_alpha, v_shift, v_weight, v_bias] = reduce_partials(partials, p, alpha, shift, weight, bias);
  return {v_x, v_alpha, v_shift, v_weight, v_bias, v_lw, v_lb};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("derf_linear_fwd", &derf_linear_fwd_cpu);
  m.impl("derf_linear_bwd", &derf_linear_bwd_cpu);
}

}  // namespace linear
}  // namespace derf
}  // namespace pyops
