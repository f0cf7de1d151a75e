// CPU backend of pyops::vq_search / vq_segment_sum: host entry points and registration; the
// kernels run in the ISA copy that pyops::cpu_isa::active() names (isa.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "pyops/vq.h"
#include "vq_int8.h"
#include "vq_kernel_isa.h"

namespace pyops {
namespace vq {

namespace int8 {
// Baseline code: the VNNI copy (vq_int8_avx512vnni.cpp) runs only at the AVX-512 level (so PYOPS_CPU_ISA=base
// or avx2 turns it off too) on a CPU with VNNI.
bool supported() {
#if PYOPS_CPU_ISA_X86
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  return vnni && cpu_isa::active() == cpu_isa::Level::kAvx512;
#else
  return false;
#endif
}
#if !PYOPS_CPU_ISA_X86  // the VNNI copy is not built: never called, since supported() is false
void pack_codes(const float*, int64_t, int64_t, uint8_t*, float*) {}
void quantize_rows(const float*, int64_t, int64_t, int8_t*, float*, int32_t*) {}
void dots(const int8_t*, const float*, const int32_t*, int64_t, const uint8_t*, const float*, int64_t, int64_t, float*,
          int64_t) {}
#endif
}  // namespace int8

namespace {

std::tuple<at::Tensor, at::Tensor> vq_search_cpu(const at::Tensor& x,         // [N, D]
                                                 const at::Tensor& codebook,  // [K, D]
                                                 int64_t k, c10::string_view metric, bool exact) {
  const SearchProblem p =
      prepare_search(x, codebook, k, std::string_view(metric.data(), metric.size()), exact, c10::DeviceType::CPU);
  auto [dist, idx] = empty_search_outputs(p);  // [N, k], [N, k]
  if (p.n != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "vq_search_cpu",
                                    [&] { PYOPS_CPU_ISA_CALL(search<scalar_t>, p, dist, idx); });
  }
  return {dist, idx};
}

std::tuple<at::Tensor, at::Tensor> vq_segment_sum_cpu(const at::Tensor& values,   // [N, D]
                                                      const at::Tensor& indices,  // [N] int64
                                                      int64_t num_segments) {
  const SegmentProblem p = prepare_segment_sum(values, indices, num_segments, c10::DeviceType::CPU);
  const auto opts = p.values.options().dtype(p.out_dtype());
  at::Tensor sums = at::zeros({p.num_segments, p.dim}, opts);  // [S, D]
  at::Tensor counts = at::zeros({p.num_segments}, opts);       // [S]
  const int64_t* idx = p.indices.data_ptr<int64_t>();
  std::vector<int64_t> tally(p.num_segments, 0);  // exact counts, converted once
  for (int64_t r = 0; r < p.n; ++r) {
    TORCH_CHECK_VALUE(idx[r] >= 0 && idx[r] < p.num_segments, "vq_segment_sum: `indices` has value ", idx[r],
                      " at position ", r, ", outside [0, num_segments=", p.num_segments, ")");
    ++tally[idx[r]];
  }
  counts.copy_(at::from_blob(tally.data(), {p.num_segments}, at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.values.scalar_type(), "vq_segment_sum_cpu",
                                  [&] { PYOPS_CPU_ISA_CALL(segment_sum<scalar_t>, p, sums); });
  return {sums, counts};
}

template <typename M>
void gemm_nt_impl(const M* x, const M* codes, int64_t rows, int64_t cols, int64_t dim, M* out) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<M>::value);
  at::Tensor out_t = at::from_blob(out, {rows, cols}, opts);  // [rows, cols]
  at::mm_out(out_t, at::from_blob(const_cast<M*>(x), {rows, dim}, opts),
             at::from_blob(const_cast<M*>(codes), {cols, dim}, opts).t());
}

}  // namespace

void gemm_nt(const float* x, const float* codes, int64_t rows, int64_t cols, int64_t dim, float* out) {
  gemm_nt_impl(x, codes, rows, cols, dim, out);
}
void gemm_nt(const double* x, const double* codes, int64_t rows, int64_t cols, int64_t dim, double* out) {
  gemm_nt_impl(x, codes, rows, cols, dim, out);
}

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("vq_search", &vq_search_cpu);
  m.impl("vq_segment_sum", &vq_segment_sum_cpu);
}

}  // namespace vq
}  // namespace pyops
