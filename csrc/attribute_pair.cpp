#include "pyops/attribute_pair.h"
#include "pyops/host_checks.h"

#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace pyops {
namespace attribute_pair {
namespace {

constexpr const char* kOp = "attribute_pair_loss: ";

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ex, at::IntArrayRef shape, const char* what) {
  TORCH_CHECK_VALUE(t.device() == ex.device(), kOp, name, " is on ", t.device(), " but ex is on ", ex.device());
  TORCH_CHECK_VALUE(t.sizes() == shape, kOp, name, " must have shape ", shape, " (", what, "), got ", t.sizes());
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

}  // namespace

Problem prepare(const char* op, const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& logit_scale,
                const std::optional<at::Tensor>& mask, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(ex.device().type() == device_type, kOp, "ex is on ", ex.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  const auto dtype = ex.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && device_type == c10::DeviceType::CPU),
                   kOp, "ex must be float32, float16 or bfloat16",
                   device_type == c10::DeviceType::CPU ? " (or float64)" : "", ", got ", dtype);
  TORCH_CHECK_VALUE(ex.dim() == 3 || ex.dim() == 4, kOp,
                    "ex must have shape (B, A, D) (pooled) or (B, A, L, D) (tokens), got ", ex.sizes());
  TORCH_CHECK_VALUE(ex.size(1) >= 2, kOp, "ex must have at least 2 attribute slots (A, dim 1: the positive and ",
                    "a negative), got shape ", ex.sizes());
  TORCH_CHECK_VALUE(ey.device() == ex.device(), kOp, "ey is on ", ey.device(), " but ex is on ", ex.device());
  TORCH_CHECK_TYPE(ey.scalar_type() == dtype, kOp, "ey has dtype ", ey.scalar_type(), " but ex has ", dtype);
  TORCH_CHECK_VALUE(ey.sizes() == ex.sizes(), kOp, "ey must have ex's shape ", ex.sizes(), ", got ", ey.sizes());

  TORCH_CHECK_VALUE(logit_scale.device() == ex.device(), kOp, "logit_scale is on ", logit_scale.device(),
                    " but ex is on ", ex.device());
  TORCH_CHECK_TYPE(at::isFloatingType(logit_scale.scalar_type()), kOp,
                   "logit_scale must be a floating-point tensor, got ", logit_scale.scalar_type());
  TORCH_CHECK_VALUE(logit_scale.dim() == 0, kOp, "logit_scale must be a 0-dim tensor, got shape ", logit_scale.sizes());
  if (check_values(op, device_type)) {
    check_finite("attribute_pair_loss", logit_scale, "logit_scale");
    check_finite("attribute_pair_loss", ex, "ex");
    check_finite("attribute_pair_loss", ey, "ey");
  }

  Problem p;
  p.tokens = ex.dim() == 4;
  p.B = ex.size(0);
  p.A = ex.size(1);
  p.L = p.tokens ? ex.size(2) : 1;
  p.D = ex.size(-1);
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(p.tokens, kOp, "mask is only for token inputs (B, A, L, D); ex has shape ", ex.sizes());
    const at::Tensor& m = *mask;
    check_same(m, "mask", ex, ex.sizes().slice(0, 3), "(B, A, L) of ex");
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || m.scalar_type() == dtype, kOp, "mask must be bool or ex's dtype ",
                     dtype, ", got ", m.scalar_type());
    p.mask = contiguous(m);
  }
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.ex = contiguous(ex);
  p.ey = contiguous(ey);
  p.logit_scale = logit_scale.scalar_type() == math ? contiguous(logit_scale) : logit_scale.to(math);
  return p;
}

Saved prepare_backward(const Problem& p, const at::Tensor& v_loss, const at::Tensor& cos, const at::Tensor& norms,
                       const at::Tensor& px, const at::Tensor& py) {
  const auto math = p.math_dtype();
  TORCH_CHECK_VALUE(v_loss.device() == p.ex.device(), "attribute_pair_bwd: v_loss is on ", v_loss.device(),
                    " but ex is on ", p.ex.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_loss.scalar_type()),
                   "attribute_pair_bwd: v_loss must be a floating-point tensor, got ", v_loss.scalar_type());
  TORCH_CHECK_VALUE(v_loss.dim() == 1 && v_loss.size(0) == p.B, "attribute_pair_bwd: v_loss must have shape (", p.B,
                    ",), got ", v_loss.sizes());
  auto saved = [&](const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
    TORCH_CHECK_VALUE(t.device() == p.ex.device() && t.sizes() == at::IntArrayRef(shape), "attribute_pair_bwd: ", name,
                      " must have shape ", at::IntArrayRef(shape), " on ", p.ex.device(),
                      " (the forward's output), got ", t.sizes(), " on ", t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == math, "attribute_pair_bwd: ", name, " must be ", math, ", got ",
                     t.scalar_type());
    return contiguous(t);
  };
  Saved s;
  s.v_loss = v_loss.scalar_type() == math ? contiguous(v_loss) : v_loss.to(math).contiguous();
  s.cos = saved(cos, "cos", {p.B, p.A, p.A});
  s.norms = saved(norms, "norms", {p.B, 2, p.A});
  const std::vector<int64_t> pooled = p.tokens ? std::vector<int64_t>{p.B, p.A, p.D} : std::vector<int64_t>{0};
  s.px = saved(px, "px", pooled);
  s.py = saved(py, "py", pooled);
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_forward(const Problem& p) {
  const auto opts = p.ex.options().dtype(p.math_dtype());
  const std::vector<int64_t> pooled = p.tokens ? std::vector<int64_t>{p.B, p.A, p.D} : std::vector<int64_t>{0};
  return {at::empty({p.B}, opts), at::empty({p.B, p.A, p.A}, opts), at::empty({p.B, 2, p.A}, opts),
          at::empty(pooled, opts), at::empty(pooled, opts)};
}

at::Tensor reduce_v_logit_scale(const at::Tensor& partials, const at::Tensor& logit_scale) {
  // at::sum is run-to-run deterministic; copy=true: a fresh tensor even when the dtype matches.
  return partials.sum().to(logit_scale.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace attribute_pair
}  // namespace pyops
