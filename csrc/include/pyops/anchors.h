// Host-side pieces of the MoRel anchor ops shared by the CPU and CUDA backends (pyops/derf.h's shape): the
// argument checks, the canonical tensors the kernels take (the three heads' first layers stacked as one matrix)
// and the backward's weight-gradient stage, which both backends run as ATen GEMMs (MKL / cuBLAS, deterministic).
// Kernels trust what prepare() hands them. The forward ops also check values: finite tau and lambda_decay, and
// finite tensors with PYOPS_CHECK_FINITE's policy (pyops/host_checks.h: CPU tensors by default, a host sync on
// CUDA), so that pyops' eager fast path (pyops/anchors.py) runs no Python checks.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace pyops {
namespace anchors {

// The three heads in schema order.
enum Head : int { kOpacity = 0, kCov = 1, kColor = 2, kNumHeads = 3 };

struct Problem {
  int64_t m = 0, c = 0, k = 0, h = 0, a = 0;  // anchors, feature channels, offsets, hidden units, appearance dim
  at::ScalarType dtype = at::kFloat;          // feats' dtype: every floating input, output and gradient
  at::ScalarType math = at::kFloat;           // float, or double for fp64
  // Per-anchor inputs, contiguous, in dtype (visible: bool); optional ones undefined when absent.
  at::Tensor anchors, feats, offsets, anchor_scales;             // [M, 3], [M, C], [M, K, 3], [M, 6]
  at::Tensor opacity_scale, visible, blend_offset, blend_decay;  // [M]
  // Math dtype, contiguous.
  at::Tensor cam;  // [3]
  at::Tensor w1s;  // [3H, C + 4]: rows h*H.. are head h's first layer over x = [feat, dir, dist] (a zero
                   // dist column where the head has no *_dist flag; the appearance columns are in b1s)
  at::Tensor b1s;  // [3H]: the color head's bias includes W1_color[:, appearance] @ appearance
  at::Tensor w2s;  // [11K, H]: the second layers stacked, rows [opacity K | cov 7K | color 3K]
  at::Tensor b2s;  // [11K]
  at::Tensor tau;  // 0-dim on the device: tau_t, or the float tau
  double tau_value = 0.0, lambda = 1.0;  // tau_value: the float tau (CPU kernels read tau_t's value instead)
  int64_t mode = 0;
  std::array<bool, kNumHeads> dist{};  // the *_dist flags

  int64_t x_cols() const { return c + 4; }
  // Rows [offset, offset + size) of w2s/b2s and columns of a G row belonging to head `head`.
  int64_t out_offset(int head) const { return head == kOpacity ? 0 : head == kCov ? k : 8 * k; }
  int64_t out_size(int head) const { return head == kOpacity ? k : head == kCov ? 7 * k : 3 * k; }
  bool has_scale() const { return opacity_scale.defined(); }
  bool has_visible() const { return visible.defined(); }
  bool has_blend() const { return blend_offset.defined(); }
};

// The MLP weights in schema order: w1, b1, w2, b2 of opacity, cov, color.
using Weights = std::array<at::Tensor, 12>;

// Validates every argument (naming the offending one) and builds the problem. `op` names the op in messages.
Problem prepare(const char* op, const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets,
                const at::Tensor& anchor_scales, const at::Tensor& cam_center, const Weights& w,
                const std::optional<at::Tensor>& appearance, const std::optional<at::Tensor>& opacity_scale,
                const std::optional<at::Tensor>& visible, const std::optional<at::Tensor>& blend_offset,
                const std::optional<at::Tensor>& blend_decay, const std::optional<at::Tensor>& tau_t, double tau,
                double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist, bool color_dist,
                c10::DeviceType device_type);

// The output gradients (v_means [M, K, 3], v_quats [M, K, 4], v_scales [M, K, 3], v_opacities [M, K],
// v_colors [M, K, 3]) checked against p, contiguous in p.dtype.
struct OutputGrads {
  at::Tensor means, quats, scales, opacities, colors;
};
// contiguous = false keeps their strides (p.dtype; e.g. the stride-0 expansions of a sum's backward, uncopied).
OutputGrads prepare_grads(const at::Tensor& v_means, const at::Tensor& v_quats, const at::Tensor& v_scales,
                          const at::Tensor& v_opacities, const at::Tensor& v_colors, const Problem& p,
                          bool contiguous = true);

// The forward's outputs, allocated (uninitialised) in p.dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const Problem& p);

// Backward's weight-gradient stage. G [rows, 11K] holds the head pre-activation gradients, R [rows, 3H] the
// hidden activations relu(W1s x + b1s) and X [rows, C + 4] the inputs x (math dtype; any strides at::mm takes,
// zero G rows for anchors without gradient). Returns the gradients of the 12 weights (in p.dtype, shaped as the
// weights), of appearance (empty without one) and v_X [rows, C + 4] (math dtype) for the feats / view VJP. The
// CPU backend accumulates the same sums chunk by chunk (csrc/cpu/anchors.cpp) and calls assemble_weight_grads.
struct WeightGrads {
  Weights v_w;
  at::Tensor v_appearance;
  at::Tensor v_x;
};
WeightGrads weight_grads(const Problem& p, const Weights& w, const std::optional<at::Tensor>& appearance,
                         const at::Tensor& G, const at::Tensor& R, const at::Tensor& X);

// The gradients of the 12 weights and of appearance (WeightGrads without v_x) from those of the stacked ones:
// v_w1s [3H, C + 4], v_b1s [3H], v_w2s [11K, H], v_b2s [11K] (math dtype).
WeightGrads assemble_weight_grads(const Problem& p, const Weights& w, const std::optional<at::Tensor>& appearance,
                                  const at::Tensor& v_w1s, const at::Tensor& v_b1s, const at::Tensor& v_w2s,
                                  const at::Tensor& v_b2s);

// anchor_decode_bwd's 20 results in schema order, from the per-anchor gradients and the weight gradients.
using DecodeBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
DecodeBwdResult decode_bwd_result(const at::Tensor& v_anchors, const at::Tensor& v_feats, const at::Tensor& v_offsets,
                                  const at::Tensor& v_anchor_scales, const WeightGrads& wg,
                                  const at::Tensor& v_opacity_scale, const at::Tensor& v_blend_offset,
                                  const at::Tensor& v_blend_decay);

// anchor_blend_weight_{fwd,bwd}: offset and decay [M] (contiguous, one floating dtype), the time and mode.
struct BlendProblem {
  at::Tensor offset, decay;  // contiguous, the storage dtype
  at::Tensor tau;            // 0-dim, math dtype, on the device
  at::ScalarType math = at::kFloat;
  double lambda = 1.0;
  int64_t mode = 0;
};
BlendProblem prepare_blend(const char* op, const at::Tensor& offset, const at::Tensor& decay,
                           const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay, int64_t blend_mode,
                           c10::DeviceType device_type);

// The float value of the time (tau_t's if given); CPU only (a read of the tensor).
double tau_on_host(const Problem& p);

}  // namespace anchors
}  // namespace pyops
