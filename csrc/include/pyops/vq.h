// Host-side pieces of the nearest-code search and segment-sum ops shared by the CPU and CUDA backends:
// argument checks (naming the offending argument) and the output allocation. Kernels trust what these
// hand them. Errors follow pyops/_checks.py's policy: a wrong dtype throws c10::TypeError (Python
// TypeError), a wrong shape, value, range or device c10::ValueError (Python ValueError).
#pragma once

#include <ATen/ATen.h>

#include <string_view>

#include "pyops/vq_math.h"

namespace pyops {
namespace vq {

struct SearchProblem {
  at::Tensor x;         // [N, D] contiguous
  at::Tensor codebook;  // [K, D] contiguous, x's dtype
  int64_t n = 0, num_codes = 0, dim = 0, k = 0;
  int64_t candidates = 0;  // num_candidates(k, num_codes)
  Metric metric = Metric::kL2;
  bool exact = false;
  // A prepared index (vq_index_search), else undefined: stat [K] out_dtype; packed (uint8 int8 tiles on CPU,
  // 16-bit [K, D] on GPU, or empty for exact scores) and code_scale (CPU int8 only), contiguous.
  at::Tensor stat, packed, code_scale;
  at::ScalarType out_dtype() const { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }
};

// `op` names the calling op in error messages.
Metric parse_metric(std::string_view metric, const char* op = "vq_search");

// Checks x [N, D] and codebook [K, D] (device of the backend, same floating dtype, float64 only on CPU),
// 1 <= k <= min(K, kMaxK) and the metric.
SearchProblem prepare_search(const at::Tensor& x, const at::Tensor& codebook, int64_t k, std::string_view metric,
                             bool exact, c10::DeviceType device_type, const char* op = "vq_search");

// prepare_search for a prepared index (see csrc/ops.cpp), plus its checks: stat [K] of the output dtype,
// packed either empty (exact scores) or, on CUDA, fp16/bf16 [K, D] with an empty code_scale; the CPU int8
// tiles are the CPU backend's to check (csrc/cpu/vq.cpp, vq_int8.h's layout). A shape that does not match the
// codebook names the argument and says the index is stale.
// The end of every error about prepared data that does not fit its codebook.
constexpr const char* kStaleIndex = " (a stale index? rebuild it or call update_ after changing the codebook)";
SearchProblem prepare_index_search(const at::Tensor& x, const at::Tensor& codebook, const at::Tensor& packed,
                                   const at::Tensor& code_scale, const at::Tensor& stat, int64_t k,
                                   std::string_view metric, c10::DeviceType device_type);

// Empty outputs (distances out_dtype, indices int64) of shape [N, k].
std::tuple<at::Tensor, at::Tensor> empty_search_outputs(const SearchProblem& p);

struct SegmentProblem {
  at::Tensor values;   // [N, D] contiguous
  at::Tensor indices;  // [N] int64 contiguous
  int64_t n = 0, dim = 0, num_segments = 0;
  at::ScalarType out_dtype() const { return values.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }
};

SegmentProblem prepare_segment_sum(const at::Tensor& values, const at::Tensor& indices, int64_t num_segments,
                                   c10::DeviceType device_type);

}  // namespace vq
}  // namespace pyops
