#include "pyops/anchors.h"

#include "pyops/host_checks.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace pyops {
namespace anchors {
namespace {

const char* const kHeadNames[kNumHeads] = {"opacity", "cov", "color"};

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& feats) {
  TORCH_CHECK_VALUE(t.device() == feats.device(), op, ": ", name, " is on ", t.device(), " but feats is on ",
                    feats.device());
}

// Same device and dtype as feats and the given shape (-1: any size).
at::Tensor checked(const char* op, const char* name, const at::Tensor& t, const at::Tensor& feats,
                   std::initializer_list<int64_t> shape) {
  check_device(op, name, t, feats);
  TORCH_CHECK_TYPE(t.scalar_type() == feats.scalar_type(), op, ": ", name, " must have feats' dtype ",
                   feats.scalar_type(), ", got ", t.scalar_type());
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  int64_t i = 0;
  for (int64_t d : shape) ok = ok && (d < 0 || t.size(i++) == d);
  if (!ok) {
    std::string want = "[";
    i = 0;
    for (int64_t d : shape) want += (i++ ? ", " : "") + (d < 0 ? std::string("*") : std::to_string(d));
    TORCH_CHECK_VALUE(false, op, ": ", name, " must have shape ", want, "], got ", t.sizes());
  }
  return t.contiguous();
}

// t in the math dtype: itself when it has it, without a dispatcher call (13 per forward).
at::Tensor as_math(const at::Tensor& t, at::ScalarType math) { return t.scalar_type() == math ? t : t.to(math); }

at::Tensor checked_tau(const char* op, const std::optional<at::Tensor>& tau_t, double tau, const at::Tensor& like,
                       const char* like_name, at::ScalarType math) {
  if (!tau_t.has_value()) return at::scalar_tensor(tau, like.options().dtype(math));
  TORCH_CHECK_VALUE(tau_t->device() == like.device(), op, ": tau_t is on ", tau_t->device(), " but ", like_name,
                    " is on ", like.device());
  TORCH_CHECK_TYPE(at::isFloatingType(tau_t->scalar_type()), op, ": tau_t must be a floating-point tensor, got ",
                   tau_t->scalar_type());
  TORCH_CHECK_VALUE(tau_t->dim() == 0, op, ": tau_t must be a 0-dim tensor, got shape ", tau_t->sizes());
  return tau_t->to(math);
}

void check_mode(const char* op, int64_t blend_mode) {
  TORCH_CHECK_VALUE(blend_mode >= 0 && blend_mode <= 2, op, ": blend_mode=", blend_mode,
                    " must be 0 (two_sided), 1 (forward) or 2 (backward)");
}

at::ScalarType checked_dtype(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device_type) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && device_type == c10::DeviceType::CPU),
                   op, ": ", name, " must be float32, float16 or bfloat16 (float64 on CPU), got ", dtype);
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The forward ops check values (the backward ops get the same, already checked, tensors).
bool is_forward(const char* op) {
  const size_t n = std::strlen(op);
  return n >= 4 && std::strcmp(op + n - 4, "_fwd") == 0;
}

// The float time and lambda_decay are finite; with PYOPS_CHECK_FINITE's policy, so are the given tensors'
// values ("<public op>: <name> has non-finite values", the Python layer's message).
void check_scalars(const char* op, const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay) {
  TORCH_CHECK_VALUE(tau_t.has_value() || std::isfinite(tau), op, ": tau=", tau, " is not finite");
  TORCH_CHECK_VALUE(std::isfinite(lambda_decay), op, ": lambda_decay=", lambda_decay, " is not finite");
}

}  // namespace

Problem prepare(const char* op, const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets,
                const at::Tensor& anchor_scales, const at::Tensor& cam_center, const Weights& w,
                const std::optional<at::Tensor>& appearance, const std::optional<at::Tensor>& opacity_scale,
                const std::optional<at::Tensor>& visible, const std::optional<at::Tensor>& blend_offset,
                const std::optional<at::Tensor>& blend_decay, const std::optional<at::Tensor>& tau_t, double tau,
                double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist, bool color_dist,
                c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(feats.device().type() == device_type, op, ": feats is on ", feats.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  Problem p;
  p.math = checked_dtype(op, "feats", feats, device_type);
  p.dtype = feats.scalar_type();
  TORCH_CHECK_VALUE(feats.dim() == 2, op, ": feats must have shape [M, C], got ", feats.sizes());
  p.m = feats.size(0);
  p.c = feats.size(1);
  TORCH_CHECK_VALUE(offsets.dim() == 3, op, ": offsets must have shape [M, K, 3], got ", offsets.sizes());
  p.k = offsets.size(1);
  TORCH_CHECK_VALUE(p.k >= 1, op, ": offsets must have K >= 1 offsets per anchor, got shape ", offsets.sizes());
  p.feats = feats.contiguous();
  p.anchors = checked(op, "anchors", anchors, feats, {p.m, 3});
  p.offsets = checked(op, "offsets", offsets, feats, {p.m, p.k, 3});
  p.anchor_scales = checked(op, "anchor_scales", anchor_scales, feats, {p.m, 6});
  p.cam = as_math(checked(op, "cam_center", cam_center, feats, {3}), p.math);

  p.dist = {opacity_dist, cov_dist, color_dist};
  const char* const w1_names[kNumHeads] = {"w1_opacity", "w1_cov", "w1_color"};
  const char* const b1_names[kNumHeads] = {"b1_opacity", "b1_cov", "b1_color"};
  const char* const w2_names[kNumHeads] = {"w2_opacity", "w2_cov", "w2_color"};
  const char* const b2_names[kNumHeads] = {"b2_opacity", "b2_cov", "b2_color"};
  TORCH_CHECK_VALUE(w[0].dim() == 2, op, ": w1_opacity must have shape [H, in], got ", w[0].sizes());
  p.h = w[0].size(0);
  TORCH_CHECK_VALUE(p.h >= 1, op, ": w1_opacity must have H >= 1 hidden units, got shape ", w[0].sizes());
  if (appearance.has_value()) {
    TORCH_CHECK_VALUE(appearance->dim() == 1, op, ": appearance must have shape [A], got ", appearance->sizes());
    p.a = appearance->size(0);
    TORCH_CHECK_VALUE(p.a >= 1, op, ": appearance must have at least one element, got shape ", appearance->sizes());
  }
  std::array<at::Tensor, 12> wm;  // the weights, checked, in the math dtype
  for (int head = 0; head < kNumHeads; ++head) {
    const int64_t in = p.c + 3 + (p.dist[head] ? 1 : 0) + (head == kColor ? p.a : 0);
    const int64_t out = head == kOpacity ? p.k : head == kCov ? 7 * p.k : 3 * p.k;
    wm[4 * head + 0] = as_math(checked(op, w1_names[head], w[4 * head + 0], feats, {p.h, in}), p.math);
    wm[4 * head + 1] = as_math(checked(op, b1_names[head], w[4 * head + 1], feats, {p.h}), p.math);
    wm[4 * head + 2] = as_math(checked(op, w2_names[head], w[4 * head + 2], feats, {out, p.h}), p.math);
    wm[4 * head + 3] = as_math(checked(op, b2_names[head], w[4 * head + 3], feats, {out}), p.math);
  }
  const auto mopt = feats.options().dtype(p.math);
  p.w1s = at::zeros({kNumHeads * p.h, p.x_cols()}, mopt);
  std::vector<at::Tensor> b1;
  for (int head = 0; head < kNumHeads; ++head) {
    const at::Tensor& w1 = wm[4 * head];
    at::Tensor rows = p.w1s.narrow(0, head * p.h, p.h);
    rows.narrow(1, 0, p.c + 3).copy_(w1.narrow(1, 0, p.c + 3));
    if (p.dist[head]) rows.select(1, p.c + 3).copy_(w1.select(1, p.c + 3));
    b1.push_back(wm[4 * head + 1]);
  }
  if (appearance.has_value()) {
    at::Tensor app = as_math(checked(op, "appearance", *appearance, feats, {p.a}), p.math);
    const at::Tensor& w1c = wm[4 * kColor];
    b1[kColor] = at::addmv(b1[kColor], w1c.narrow(1, p.c + 3 + (color_dist ? 1 : 0), p.a), app);
  }
  p.b1s = at::cat(b1);
  p.w2s = at::cat({wm[2], wm[6], wm[10]}).contiguous();
  p.b2s = at::cat({wm[3], wm[7], wm[11]});

  if (opacity_scale.has_value()) p.opacity_scale = checked(op, "opacity_scale", *opacity_scale, feats, {p.m});
  if (visible.has_value()) {
    check_device(op, "visible", *visible, feats);
    TORCH_CHECK_TYPE(visible->scalar_type() == at::kBool, op, ": visible must be a bool tensor, got ",
                     visible->scalar_type());
    TORCH_CHECK_VALUE(visible->dim() == 1 && visible->size(0) == p.m, op, ": visible must have shape [", p.m, "], got ",
                      visible->sizes());
    p.visible = visible->contiguous();
  }
  TORCH_CHECK_VALUE(blend_offset.has_value() == blend_decay.has_value(), op,
                    ": blend_offset and blend_decay must be given together (",
                    blend_offset.has_value() ? "blend_decay" : "blend_offset", " is missing)");
  if (blend_offset.has_value()) {
    p.blend_offset = checked(op, "blend_offset", *blend_offset, feats, {p.m});
    p.blend_decay = checked(op, "blend_decay", *blend_decay, feats, {p.m});
  }
  check_mode(op, blend_mode);
  p.mode = blend_mode;
  p.lambda = lambda_decay;
  p.tau_value = tau;
  p.tau = checked_tau(op, tau_t, tau, feats, "feats", p.math);
  if (is_forward(op)) {
    check_scalars(op, tau_t, tau, lambda_decay);
    if (check_finite_enabled(device_type)) {
      const char* const names[] = {"anchors", "feats", "offsets", "anchor_scales", "cam_center"};
      const at::Tensor* const tensors[] = {&anchors, &feats, &offsets, &anchor_scales, &cam_center};
      for (int i = 0; i < 5; ++i) check_finite(op, *tensors[i], names[i]);
      for (int head = 0; head < kNumHeads; ++head) {
        check_finite(op, w[4 * head + 0], w1_names[head]);
        check_finite(op, w[4 * head + 1], b1_names[head]);
        check_finite(op, w[4 * head + 2], w2_names[head]);
        check_finite(op, w[4 * head + 3], b2_names[head]);
      }
      if (appearance.has_value()) check_finite(op, *appearance, "appearance");
      if (opacity_scale.has_value()) check_finite(op, *opacity_scale, "opacity_scale");
      if (blend_offset.has_value()) check_finite(op, *blend_offset, "blend_offset");
      if (blend_decay.has_value()) check_finite(op, *blend_decay, "blend_decay");
      if (tau_t.has_value()) check_finite(op, *tau_t, "tau");
    }
  }
  return p;
}

OutputGrads prepare_grads(const at::Tensor& v_means, const at::Tensor& v_quats, const at::Tensor& v_scales,
                          const at::Tensor& v_opacities, const at::Tensor& v_colors, const Problem& p,
                          bool contiguous) {
  const char* op = "anchor_decode_bwd";
  auto grad = [&](const char* name, const at::Tensor& g, std::initializer_list<int64_t> shape) {
    check_device(op, name, g, p.feats);
    TORCH_CHECK_TYPE(at::isFloatingType(g.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                     g.scalar_type());
    TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", at::IntArrayRef(shape),
                      ", got ", g.sizes());
    return contiguous ? g.to(p.dtype).contiguous() : g.to(p.dtype);
  };
  return {grad("v_means", v_means, {p.m, p.k, 3}), grad("v_quats", v_quats, {p.m, p.k, 4}),
          grad("v_scales", v_scales, {p.m, p.k, 3}), grad("v_opacities", v_opacities, {p.m, p.k}),
          grad("v_colors", v_colors, {p.m, p.k, 3})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const Problem& p) {
  const auto opt = p.feats.options();
  return {at::empty({p.m, p.k, 3}, opt), at::empty({p.m, p.k, 4}, opt), at::empty({p.m, p.k, 3}, opt),
          at::empty({p.m, p.k}, opt),    at::empty({p.m, p.k, 3}, opt), at::empty({p.m, p.k}, opt)};
}

WeightGrads assemble_weight_grads(const Problem& p, const Weights& w, const std::optional<at::Tensor>& appearance,
                                  const at::Tensor& v_w1s, const at::Tensor& v_b1s, const at::Tensor& v_w2s,
                                  const at::Tensor& v_b2s) {
  WeightGrads out;
  for (int head = 0; head < kNumHeads; ++head) {
    out.v_w[4 * head + 2] = v_w2s.narrow(0, p.out_offset(head), p.out_size(head)).to(p.dtype, false, /*copy=*/true);
    out.v_w[4 * head + 3] = v_b2s.narrow(0, p.out_offset(head), p.out_size(head)).to(p.dtype, false, /*copy=*/true);
    const at::Tensor rows = v_w1s.narrow(0, head * p.h, p.h);
    const at::Tensor v_b1 = v_b1s.narrow(0, head * p.h, p.h);
    const int64_t dist_cols = p.dist[head] ? 1 : 0;
    std::vector<at::Tensor> cols;
    cols.push_back(rows.narrow(1, 0, p.c + 3 + dist_cols));
    if (head == kColor && appearance.has_value()) {
      // b1s folds W1_color[:, app] @ appearance: its gradient is the outer product v_b1 appearance^T.
      const at::Tensor app = appearance->to(p.math);
      cols.push_back(at::outer(v_b1, app));
      const at::Tensor w_app = w[4 * kColor].narrow(1, p.c + 3 + dist_cols, p.a).to(p.math);
      out.v_appearance = at::mv(w_app.t(), v_b1).to(p.dtype);
    }
    // copy: the gradients must not be views of one buffer (outputs of an op may not alias).
    out.v_w[4 * head + 0] = at::cat(cols, 1).to(p.dtype);
    out.v_w[4 * head + 1] = v_b1.to(p.dtype, /*non_blocking=*/false, /*copy=*/true);
  }
  if (!out.v_appearance.defined()) out.v_appearance = at::empty({0}, p.feats.options());
  return out;
}

WeightGrads weight_grads(const Problem& p, const Weights& w, const std::optional<at::Tensor>& appearance,
                         const at::Tensor& G, const at::Tensor& R, const at::Tensor& X) {
  std::vector<at::Tensor> v_r, v_w2, v_b2;  // per head: d(loss)/d(relu output) [rows, H], the second layers'
  for (int head = 0; head < kNumHeads; ++head) {
    const at::Tensor g = G.narrow(1, p.out_offset(head), p.out_size(head));
    v_w2.push_back(at::mm(g.t(), R.narrow(1, head * p.h, p.h)));
    v_b2.push_back(g.sum(0));
    v_r.push_back(at::mm(g, p.w2s.narrow(0, p.out_offset(head), p.out_size(head))));
  }
  // relu's backward: the gradient passes where the activation is > 0.
  const at::Tensor v_hpre = at::threshold_backward(at::cat(v_r, 1), R, 0);
  WeightGrads out =
      assemble_weight_grads(p, w, appearance, at::mm(v_hpre.t(), X), v_hpre.sum(0), at::cat(v_w2), at::cat(v_b2));
  out.v_x = at::mm(v_hpre, p.w1s);
  return out;
}

double tau_on_host(const Problem& p) { return p.tau.item<double>(); }

BlendProblem prepare_blend(const char* op, const at::Tensor& offset, const at::Tensor& decay,
                           const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay, int64_t blend_mode,
                           c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(offset.device().type() == device_type, op, ": offset is on ", offset.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  BlendProblem b;
  b.math = checked_dtype(op, "offset", offset, device_type);
  TORCH_CHECK_VALUE(offset.dim() == 1, op, ": offset must have shape [M], got ", offset.sizes());
  b.offset = offset.contiguous();
  TORCH_CHECK_VALUE(decay.device() == offset.device(), op, ": decay is on ", decay.device(), " but offset is on ",
                    offset.device());
  TORCH_CHECK_TYPE(decay.scalar_type() == offset.scalar_type(), op, ": decay must have offset's dtype ",
                   offset.scalar_type(), ", got ", decay.scalar_type());
  TORCH_CHECK_VALUE(decay.sizes() == offset.sizes(), op, ": decay must have shape ", offset.sizes(), ", got ",
                    decay.sizes());
  b.decay = decay.contiguous();
  check_mode(op, blend_mode);
  b.mode = blend_mode;
  b.lambda = lambda_decay;
  b.tau = checked_tau(op, tau_t, tau, offset, "offset", b.math);
  if (is_forward(op)) {
    check_scalars(op, tau_t, tau, lambda_decay);
    if (check_finite_enabled(device_type)) {
      check_finite(op, offset, "offset");
      check_finite(op, decay, "decay");
      if (tau_t.has_value()) check_finite(op, *tau_t, "tau");
    }
  }
  return b;
}

DecodeBwdResult decode_bwd_result(const at::Tensor& v_anchors, const at::Tensor& v_feats, const at::Tensor& v_offsets,
                                  const at::Tensor& v_anchor_scales, const WeightGrads& wg,
                                  const at::Tensor& v_opacity_scale, const at::Tensor& v_blend_offset,
                                  const at::Tensor& v_blend_decay) {
  const Weights& g = wg.v_w;
  return {v_anchors,
          v_feats,
          v_offsets,
          v_anchor_scales,
          g[0],
          g[1],
          g[2],
          g[3],
          g[4],
          g[5],
          g[6],
          g[7],
          g[8],
          g[9],
          g[10],
          g[11],
          wg.v_appearance,
          v_opacity_scale,
          v_blend_offset,
          v_blend_decay};
}

}  // namespace anchors
}  // namespace pyops
