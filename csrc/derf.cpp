#include "pyops/derf.h"

#include "pyops/derf_math.h"

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
  p.x = x.contiguous();
  p.channels = x.size(dim);
  p.outer = 1;
  for (int64_t d = 0; d < dim; ++d) p.outer *= x.size(d);
  p.inner = 1;
  for (int64_t d = dim + 1; d < x.dim(); ++d) p.inner *= x.size(d);

  check_param(alpha, "alpha", x, p.channels, /*allow_scalar=*/true);
  check_param(shift, "shift", x, p.channels, /*allow_scalar=*/true);
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.alpha = alpha.to(math).contiguous().view({-1});
  p.shift = shift.to(math).contiguous().view({-1});
  if (weight.has_value()) {
    check_param(*weight, "weight", x, p.channels, /*allow_scalar=*/false);
    p.weight = weight->to(math).contiguous().view({-1});
  }
  if (bias.has_value()) {
    check_param(*bias, "bias", x, p.channels, /*allow_scalar=*/false);
    p.bias = bias->to(math).contiguous().view({-1});
  }
  return p;
}

at::Tensor prepare_grad(const at::Tensor& v_y, const Problem& p) {
  TORCH_CHECK_VALUE(v_y.device() == p.x.device(), "derf_bwd: v_y is on ", v_y.device(), " but x is on ", p.x.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_y.scalar_type()), "derf_bwd: v_y must be a floating-point tensor, got ",
                   v_y.scalar_type());
  TORCH_CHECK_VALUE(v_y.sizes() == p.x.sizes(), "derf_bwd: v_y has shape ", v_y.sizes(), " but x has shape ",
                    p.x.sizes());
  return v_y.to(p.x.scalar_type()).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reduce_partials(const at::Tensor& partials, const Problem& p,
                                                                           const at::Tensor& alpha,
                                                                           const at::Tensor& shift,
                                                                           const std::optional<at::Tensor>& weight,
                                                                           const std::optional<at::Tensor>& bias) {
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
