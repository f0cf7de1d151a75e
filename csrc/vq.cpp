#include "pyops/vq.h"

namespace pyops {
namespace vq {
namespace {

void check_float(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(t.device().type() == device_type, op, ": ", name, " is on ", t.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                       (dtype == at::kDouble && device_type == c10::DeviceType::CPU),
                   op, ": ", name, " must be float32, float16 or bfloat16 (float64 on CPU), got ", dtype);
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
}

}  // namespace

Metric parse_metric(std::string_view metric, const char* op) {
  if (metric == "l2") return Metric::kL2;
  if (metric == "cosine") return Metric::kCosine;
  TORCH_CHECK_VALUE(metric == "ip", op, ": unknown metric '", metric, "'; expected 'l2', 'cosine' or 'ip'");
  return Metric::kIp;
}

SearchProblem prepare_search(const at::Tensor& x, const at::Tensor& codebook, int64_t k, std::string_view metric,
                             bool exact, c10::DeviceType device_type, const char* op) {
  check_float(x, op, "x", device_type);
  check_float(codebook, op, "codebook", device_type);
  TORCH_CHECK_VALUE(codebook.device() == x.device(), op, ": codebook is on ", codebook.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_TYPE(codebook.scalar_type() == x.scalar_type(), op, ": codebook has dtype ", codebook.scalar_type(),
                   " but x has ", x.scalar_type());
  TORCH_CHECK_VALUE(codebook.size(1) == x.size(1), op, ": codebook has dimension ", codebook.size(1), " but x has ",
                    x.size(1));
  TORCH_CHECK_VALUE(codebook.size(0) >= 1, op, ": codebook is empty");
  TORCH_CHECK_VALUE(k >= 1 && k <= codebook.size(0) && k <= kMaxK, op, ": k=", k, " is out of range [1, min(K, ", kMaxK,
                    ")] for a codebook of K=", codebook.size(0), " codes");
  SearchProblem p;
  p.metric = parse_metric(metric, op);
  p.x = x.contiguous();
  p.codebook = codebook.contiguous();
  p.n = x.size(0);
  p.num_codes = codebook.size(0);
  p.dim = x.size(1);
  p.k = k;
  p.candidates = num_candidates(k, p.num_codes);
  p.exact = exact;
  return p;
}

SearchProblem prepare_index_search(const at::Tensor& x, const at::Tensor& codebook, const at::Tensor& packed,
                                   const at::Tensor& code_scale, const at::Tensor& stat, int64_t k,
                                   std::string_view metric, c10::DeviceType device_type) {
  const char* op = "vq_index_search";
  const bool exact = packed.numel() == 0;
  SearchProblem p = prepare_search(x, codebook, k, metric, exact, device_type, op);
  const char* stale = kStaleIndex;
  for (auto [t, name] : {std::pair{&stat, "stat"}, {&packed, "packed"}, {&code_scale, "code_scale"}})
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(stat.scalar_type() == p.out_dtype(), op, ": stat must be ",
                   p.out_dtype() == at::kDouble ? "float64" : "float32", ", got ", stat.scalar_type());
  TORCH_CHECK_VALUE(stat.dim() == 1 && stat.size(0) == p.num_codes, op, ": stat must have shape [", p.num_codes,
                    "] (one per code), got ", stat.sizes(), stale);
  if (!exact && device_type != c10::DeviceType::CPU) {  // the CPU int8 tiles: checked by csrc/cpu/vq.cpp
    TORCH_CHECK_TYPE(packed.scalar_type() == at::kHalf || packed.scalar_type() == at::kBFloat16, op,
                     ": packed must be float16 or bfloat16 (a GPU index) or empty (exact scores), got ",
                     packed.scalar_type());
    TORCH_CHECK_VALUE(packed.sizes() == codebook.sizes(), op, ": packed must have shape ", codebook.sizes(),
                      " (the codebook's), got ", packed.sizes(), stale);
  }
  if (device_type != c10::DeviceType::CPU || exact)
    TORCH_CHECK_VALUE(code_scale.numel() == 0, op,
                      ": code_scale must be empty (it holds the CPU int8 scales), got shape ", code_scale.sizes());
  p.stat = stat.contiguous();
  p.packed = packed.contiguous();
  p.code_scale = code_scale.contiguous();
  return p;
}

std::tuple<at::Tensor, at::Tensor> empty_search_outputs(const SearchProblem& p) {
  return {at::empty({p.n, p.k}, p.x.options().dtype(p.out_dtype())),
          at::empty({p.n, p.k}, p.x.options().dtype(at::kLong))};
}

SegmentProblem prepare_segment_sum(const at::Tensor& values, const at::Tensor& indices, int64_t num_segments,
                                   c10::DeviceType device_type) {
  check_float(values, "vq_segment_sum", "values", device_type);
  TORCH_CHECK_VALUE(indices.device() == values.device(), "vq_segment_sum: indices is on ", indices.device(),
                    " but values is on ", values.device());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "vq_segment_sum: indices must be int64, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.size(0) == values.size(0),
                    "vq_segment_sum: indices must have shape [", values.size(0), "] (one per row of values), got ",
                    indices.sizes());
  TORCH_CHECK_VALUE(num_segments >= 0, "vq_segment_sum: num_segments=", num_segments, " is out of range [0, inf]");
  SegmentProblem p;
  p.values = values.contiguous();
  p.indices = indices.contiguous();
  p.n = values.size(0);
  p.dim = values.size(1);
  p.num_segments = num_segments;
  return p;
}

}  // namespace vq
}  // namespace pyops
