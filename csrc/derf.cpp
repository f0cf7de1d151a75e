#include "pyops/derf.h"

#include "pyops/derf_math.h"
#include "pyops/host_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace pyops {
namespace derf {
namespace {

void check_param(const at::Tensor& t, const char* name, const at::Tensor& x, int64_t channels, bool allow_scalar) {
  TORCH_CHECK_VALUE(t.device() == x.device(), "derf: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "derf: ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  const bool ok = t.numel() == channels || (allow_scalar && t.numel() == 1);
  TORCH_CHECK_VALUE(ok && t.dim() <= 1, "derf: ", name, " must have ", allow_scalar ? "1 or " : "", channels,
                    " elements (one per channel) in at most one dimension, got shape ", t.sizes());
}

// The parameter in the kernels' math dtype, contiguous; the tensor itself (no new TensorImpl) when it already
// is: this runs four times per call, and a tiny Derf's whole host cost is a few microseconds.
at::Tensor as_math(const at::Tensor& t, at::ScalarType math) {
  if (t.scalar_type() == math && t.is_contiguous()) return t;
  return t.to(math).contiguous();
}

}  // namespace

Problem prepare(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t channel_dim,
                c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(x.device().type() == device_type, "derf: x is on ", x.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && device_type == c10::DeviceType::CPU),
                   "derf: x must be float32, float16 or bfloat16 (float64 on CPU), got ", dtype);
  TORCH_CHECK_VALUE(x.dim() >= 1, "derf: x must have at least one dimension (the channels), got shape ", x.sizes());
  TORCH_CHECK_VALUE(channel_dim >= -x.dim() && channel_dim < x.dim(), "derf: channel_dim=", channel_dim,
                    " is out of range [", -x.dim(), ", ", x.dim() - 1, "]");
  const int64_t dim = channel_dim < 0 ? channel_dim + x.dim() : channel_dim;

  Problem p;
  p.x = x.is_contiguous() ? x : x.contiguous();  // skips a dispatcher call in the usual case
  p.channels = x.size(dim);
  p.outer = 1;
  for (int64_t d = 0; d < dim; ++d) p.outer *= x.size(d);
  p.inner = 1;
  for (int64_t d = dim + 1; d < x.dim(); ++d) p.inner *= x.size(d);

  check_param(alpha, "alpha", x, p.channels, /*allow_scalar=*/true);
  check_param(shift, "shift", x, p.channels, /*allow_scalar=*/true);
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (weight.has_value()) check_param(*weight, "weight", x, p.channels, /*allow_scalar=*/false);
  if (bias.has_value()) check_param(*bias, "bias", x, p.channels, /*allow_scalar=*/false);
  if (check_finite_enabled(device_type)) {
    check_finite("derf", alpha, "alpha");
    check_finite("derf", shift, "shift");
    if (weight.has_value()) check_finite("derf", *weight, "weight");
    if (bias.has_value()) check_finite("derf", *bias, "bias");
  }
  p.alpha = as_math(alpha, math);
  p.shift = as_math(shift, math);
  if (weight.has_value()) p.weight = as_math(*weight, math);
  if (bias.has_value()) p.bias = as_math(*bias, math);
  return p;
}

namespace {

// Up to this many partials (CPU) reduce_partials sums in a plain loop instead of ~12 ATen calls (sum,
// select, cast, reshape per gradient), which cost more than the whole kernel on a tiny tensor.
constexpr int64_t kSmallReduction = int64_t(1) << 16;

// The same reduction as below, fixed order (P, then C for a scalar parameter), accumulated in double.
template <typename math_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reduce_small(const at::Tensor& partials, int64_t channels,
                                                                        const at::Tensor& alpha,
                                                                        const at::Tensor& shift,
                                                                        const std::optional<at::Tensor>& weight,
                                                                        const std::optional<at::Tensor>& bias) {
  const at::Tensor part = partials.contiguous();
  const math_t* src = part.const_data_ptr<math_t>();
  const int64_t chunks = part.size(0), C = channels;
  auto grad = [&](int row, const at::Tensor& param) {
    // CPU-only path: the allocation without a trip through the dispatcher.
    at::Tensor g = at::detail::empty_cpu(param.sizes(), param.scalar_type(), /*pin_memory=*/false);
    const bool scalar = param.numel() == 1;
    double total = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "derf_reduce_partials", [&] {
      scalar_t* out = g.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        double sum = 0;
        for (int64_t k = 0; k < chunks; ++k) sum += static_cast<double>(src[(k * kNumPartials + row) * C + c]);
        if (scalar) {
          total += sum;
        } else {
          out[c] = static_cast<scalar_t>(static_cast<math_t>(sum));
        }
      }
      if (scalar) out[0] = static_cast<scalar_t>(static_cast<math_t>(total));
    });
    return g;
  };
  auto optional_grad = [&](int row, const std::optional<at::Tensor>& param) {
    return param.has_value() ? grad(row, *param) : at::empty({0}, alpha.options());
  };
  return {grad(kSumVZTimesX, alpha), grad(kSumVZ, shift), optional_grad(kSumVYTimesErf, weight),
          optional_grad(kSumVY, bias)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reduce_partials_small(
    const at::Tensor& partials, const Problem& p, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  return partials.scalar_type() == at::kDouble ? reduce_small<double>(partials, p.channels, alpha, shift, weight, bias)
                                               : reduce_small<float>(partials, p.channels, alpha, shift, weight, bias);
}

}  // namespace

at::Tensor prepare_grad(const at::Tensor& v_y, const Problem& p) {
  TORCH_CHECK_VALUE(v_y.device() == p.x.device(), "derf_bwd: v_y is on ", v_y.device(), " but x is on ", p.x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_y.scalar_type()), "derf_bwd: v_y must be a floating-point tensor, got ",
                   v_y.scalar_type());
  TORCH_CHECK_VALUE(v_y.sizes() == p.x.sizes(), "derf_bwd: v_y has shape ", v_y.sizes(), " but x has shape ",
                    p.x.sizes());
  if (v_y.scalar_type() == p.x.scalar_type() && v_y.is_contiguous()) return v_y;
  return v_y.to(p.x.scalar_type()).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reduce_partials(const at::Tensor& partials, const Problem& p,
                                                                           const at::Tensor& alpha,
                                                                           const at::Tensor& shift,
                                                                           const std::optional<at::Tensor>& weight,
                                                                           const std::optional<at::Tensor>& bias) {
  if (partials.device().is_cpu() && partials.numel() <= kSmallReduction)
    return reduce_partials_small(partials, p, alpha, shift, weight, bias);
  const at::Tensor totals = partials.sum(0);  // [kNumPartials, C]; at::sum is run-to-run deterministic
  auto as_param = [&](int row, const at::Tensor& param) {
    at::Tensor g = totals[row];
    if (param.numel() == 1) g = g.sum();
    // copy=true: the gradients must not be views of one buffer (outputs of an op may not alias).
    return g.to(param.scalar_type(), /*non_blocking=*/false, /*copy=*/true).reshape(param.sizes());
  };
  auto optional_grad = [&](int row, const std::optional<at::Tensor>& param) {
    return param.has_value() ? as_param(row, *param) : at::empty({0}, alpha.options());
  };
  return {as_param(kSumVZTimesX, alpha), as_param(kSumVZ, shift), optional_grad(kSumVYTimesErf, weight),
          optional_grad(kSumVY, bias)};
}

}  // namespace derf
}  // namespace pyops
