// CPU backend of pyops::vq_search / vq_segment_sum: host entry points, ISA choice and registration.
#include <torch/library.h>

#include "pyops/vq.h"
#include "vq_kernel_isa.h"

namespace pyops {
namespace vq {
namespace {

enum class Isa { kBase, kAvx2, kAvx512 };

Isa best_isa() {
#if PYOPS_HAVE_X86_VQ_KERNELS
  static const Isa isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

// Calls fn from the kernel namespace of the best ISA this CPU has.
#if PYOPS_HAVE_X86_VQ_KERNELS
#define PYOPS_VQ_ISA_CALL(fn, ...)                       \
  switch (best_isa()) {                                  \
    case Isa::kAvx512: avx512::fn(__VA_ARGS__); break;   \
    case Isa::kAvx2: avx2::fn(__VA_ARGS__); break;       \
    default: base::fn(__VA_ARGS__);                      \
  }
#else
#define PYOPS_VQ_ISA_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

std::tuple<at::Tensor, at::Tensor> vq_search_cpu(const at::Tensor& x,         // [N, D]
                                                 const at::Tensor& codebook,  // [K, D]
                                                 int64_t k, c10::string_view metric, bool exact) {
  const SearchProblem p =
      prepare_search(x, codebook, k, std::string_view(metric.data(), metric.size()), exact, c10::DeviceType::CPU);
  auto [dist, idx] = empty_search_outputs(p);  // [N, k], [N, k]
  if (p.n != 0) PYOPS_VQ_ISA_CALL(search, p, dist, idx);
  return {dist, idx};
}

std::tuple<at::Tensor, at::Tensor> vq_segment_sum_cpu(const at::Tensor& values,   // [N, D]
                                                      const at::Tensor& indices,  // [N] int64
                                                      int64_t num_segments) {
  const SegmentProblem p = prepare_segment_sum(values, indices, num_segments, c10::DeviceType::CPU);
  const auto opts = p.values.options().dtype(p.out_dtype());
  at::Tensor sums = at::zeros({p.num_segments, p.dim}, opts);  // [S, D]
  at::Tensor counts = at::zeros({p.num_segments}, opts);       // [S]
  PYOPS_VQ_ISA_CALL(segment_sum, p, sums, counts);
  return {sums, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("vq_search", &vq_search_cpu);
  m.impl("vq_segment_sum", &vq_segment_sum_cpu);
}

}  // namespace vq
}  // namespace pyops
