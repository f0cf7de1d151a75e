// CPU backend of pyops::vq_search / vq_segment_sum: host entry points and registration; the
// kernels run in the ISA copy that pyops::cpu_isa::active() names (isa.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "pyops/vq.h"
#include "vq_int8.h"
#include "vq_kernel_isa.h"

namespace pyops {
namespace vq {

namespace int8 {
// Baseline code: the VNNI copy (vq_int8_avx512vnni.cpp) runs only at the AVX-512 or AMX level (so
// PYOPS_CPU_ISA=base or avx2 turns it off too) on a CPU with VNNI; the AMX copy only at the AMX level
// (which implies VNNI, see isa.cpp).
bool supported() {
#if PYOPS_CPU_ISA_X86
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  return vnni && cpu_isa::active() >= cpu_isa::Level::kAvx512;
#else
  return false;
#endif
}
bool use_amx() { return cpu_isa::active() == cpu_isa::Level::kAmx; }

void dots(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc, int64_t ld) {
  // Fewer than 16 rows leave most of an A tile empty: below that VNNI is as fast (llama.cpp found the same
  // for batch-1 GEMV).
  if (use_amx() && rows >= 16)
    dots_amx(q, rows, packed, cols, dim, acc, ld);
  else
    dots_vnni(q, rows, packed, cols, dim, acc, ld);
}
#if !PYOPS_CPU_ISA_X86  // the int8 copies are not built: never called, since supported() is false
int64_t amx_peak_macs(int64_t) { return 0; }
int64_t vnni_peak_macs(int64_t) { return 0; }
uint64_t read_bytes(const uint8_t*, int64_t) { return 0; }
float pack_code(const float*, int64_t, uint8_t*, int64_t) { return 0.f; }
void pack_codes(const float*, int64_t, int64_t, uint8_t*, float*) {}
void quantize_rows(const float*, int64_t, int64_t, int8_t*, float*, int32_t*) {}
void dots_vnni(const int8_t*, int64_t, const uint8_t*, int64_t, int64_t, int32_t*, int64_t) {}
void dots_amx(const int8_t*, int64_t, const uint8_t*, int64_t, int64_t, int32_t*, int64_t) {}
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

// packed uint8 [ceil(K/16), padded D / 4, 16, 4] and code_scale fp32 [ceil(K/16) * 16], contiguous: the int8
// tiles of a codebook of K codes of dimension D (vq_int8.h's layout), or a ValueError naming `op`.
void check_int8_tiles(const char* op, const at::Tensor& packed, const at::Tensor& code_scale, int64_t num_codes,
                      int64_t dim) {
  const int64_t groups = (num_codes + int8::kGroup - 1) / int8::kGroup, dim4 = int8::padded_dim(dim) / 4;
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, op, ": packed must be uint8 (int8 tiles) on CPU, got ",
                   packed.scalar_type());
  TORCH_CHECK_VALUE(packed.sizes() == at::IntArrayRef({groups, dim4, int8::kGroup, 4}) && packed.is_contiguous(), op,
                    ": packed must be a contiguous [", groups, ", ", dim4, ", 16, 4] tensor for K=", num_codes,
                    ", D=", dim, ", got ", packed.sizes(), kStaleIndex);
  TORCH_CHECK_TYPE(code_scale.scalar_type() == at::kFloat, op, ": code_scale must be float32, got ",
                   code_scale.scalar_type());
  TORCH_CHECK_VALUE(code_scale.sizes() == at::IntArrayRef({groups * int8::kGroup}) && code_scale.is_contiguous(), op,
                    ": code_scale must be a contiguous [", groups * int8::kGroup, "] tensor, got ", code_scale.sizes(),
                    kStaleIndex);
}

std::tuple<at::Tensor, at::Tensor> vq_index_search_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                       const at::Tensor& packed, const at::Tensor& code_scale,
                                                       const at::Tensor& stat, int64_t k, c10::string_view metric) {
  const SearchProblem p = prepare_index_search(x, codebook, packed, code_scale, stat, k,
                                               std::string_view(metric.data(), metric.size()), c10::DeviceType::CPU);
  if (!p.exact) check_int8_tiles("vq_index_search", p.packed, p.code_scale, p.num_codes, p.dim);
  auto [dist, idx] = empty_search_outputs(p);  // [N, k], [N, k]
  if (p.n != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "vq_index_search_cpu",
                                    [&] { PYOPS_CPU_ISA_CALL(search<scalar_t>, p, dist, idx); });
  }
  return {dist, idx};
}

// A code as fp32: itself, or widened into buf (fp16/bf16; the dispatch also instantiates double, never called).
const float* as_float(const float* code, int64_t, std::vector<float>&) { return code; }
template <typename T>
const float* as_float(const T* code, int64_t dim, std::vector<float>& buf) {
  buf.assign(code, code + dim);
  return buf.data();
}

// Writes the int8 tiles and scales of codebook rows `rows` into packed / code_scale (vq_int8.h's layout).
void vq_index_pack_cpu(const at::Tensor& codebook, const at::Tensor& rows, const at::Tensor& packed,
                       const at::Tensor& code_scale) {
  const char* op = "vq_index_pack";
  TORCH_CHECK(int8::supported(), op, ": int8 tiles need a CPU with AVX512-VNNI at the avx512 or amx ISA level (",
              "active level: ", cpu_isa::name(cpu_isa::active()), "); use precision='fp32'");
  TORCH_CHECK_TYPE(codebook.scalar_type() == at::kFloat || codebook.scalar_type() == at::kHalf ||
                       codebook.scalar_type() == at::kBFloat16,
                   op, ": codebook must be float32, float16 or bfloat16 for int8 tiles, got ", codebook.scalar_type());
  for (auto [t, name] :
       {std::pair{&codebook, "codebook"}, {&rows, "rows"}, {&packed, "packed"}, {&code_scale, "code_scale"}})
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, ": ", name, " is on ", t->device(), ", expected a CPU tensor");
  TORCH_CHECK_VALUE(codebook.dim() == 2, op, ": codebook must be 2-D, got shape ", codebook.sizes());
  const int64_t num_codes = codebook.size(0), dim = codebook.size(1);
  TORCH_CHECK_VALUE(dim <= int8::kMaxDim, op, ": codebook dimension ", dim, " is above the int8 limit ", int8::kMaxDim);
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong, op, ": rows must be int64, got ", rows.scalar_type());
  TORCH_CHECK_VALUE(rows.dim() == 1, op, ": rows must be 1-D, got shape ", rows.sizes());
  check_int8_tiles(op, packed, code_scale, num_codes, dim);
  const at::Tensor idx = rows.contiguous();
  const int64_t* r = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i)
    TORCH_CHECK_VALUE(r[i] >= 0 && r[i] < num_codes, op, ": rows has value ", r[i], " at position ", i,
                      ", outside [0, K=", num_codes, ")");
  const at::Tensor codes = codebook.contiguous();
  const int64_t group_bytes = int8::padded_dim(dim) * int8::kGroup;
  uint8_t* out = packed.data_ptr<uint8_t>();
  float* scale = code_scale.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "vq_index_pack_cpu", [&] {
    const scalar_t* cb = codes.data_ptr<scalar_t>();
    // Distinct codes own distinct 4-byte words of a group; a repeated row writes the same bytes twice.
    at::parallel_for(0, idx.numel(), 64, [&](int64_t i0, int64_t i1) {
      std::vector<float> row;
      for (int64_t i = i0; i < i1; ++i)
        scale[r[i]] = int8::pack_code(as_float(cb + r[i] * dim, dim, row), dim,
                                      out + (r[i] / int8::kGroup) * group_bytes, r[i] % int8::kGroup);
    });
  });
}

// pyops::_cpu_limits(buffer): what the CPU search is measured against, on every thread of at::parallel_for:
// (read GB/s of `buffer`, which should be well past the caches, VNNI int8 TOPS, AMX int8 TOPS). A limit this CPU
// or ISA level lacks is 0. Each is the best of 3 timings.
std::tuple<double, double, double> cpu_limits(const at::Tensor& buffer) {
  TORCH_CHECK_VALUE(buffer.device().is_cpu() && buffer.scalar_type() == at::kByte && buffer.is_contiguous(),
                    "_cpu_limits: buffer must be a contiguous CPU uint8 tensor");
  const int64_t threads = at::get_num_threads();
  auto best_rate = [&](auto&& body) {  // body(thread) -> units of work; returns the best units per second
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      std::atomic<int64_t> work{0};
      const auto t0 = std::chrono::steady_clock::now();
      at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) work += body(t);
      });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, double(work) / s);
    }
    return best;
  };
  const int64_t bytes = buffer.numel(), per_thread = bytes / threads / 64 * 64;
  const uint8_t* data = buffer.data_ptr<uint8_t>();
  std::atomic<uint64_t> sink{0};
  const bool vnni = int8::supported(), amx = int8::use_amx();
  const double read = !vnni ? 0.0 : best_rate([&](int64_t t) {
    sink += int8::read_bytes(data + t * per_thread, per_thread);
    return per_thread;
  });
  const double vnni_ops = !vnni ? 0.0 : 2 * best_rate([](int64_t) { return int8::vnni_peak_macs(int64_t{1} << 22); });
  const double amx_ops = !amx ? 0.0 : 2 * best_rate([](int64_t) { return int8::amx_peak_macs(int64_t{1} << 16); });
  return {read / 1e9, vnni_ops / 1e12, amx_ops / 1e12};
}

// pyops::vq_int8_supported(): whether the CPU search has int8 kernels at the active ISA level.
bool vq_int8_supported() { return int8::supported(); }

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

TORCH_LIBRARY_FRAGMENT(pyops, m) {
  m.def("vq_int8_supported() -> bool", &vq_int8_supported);
  m.def("_cpu_limits(Tensor buffer) -> (float, float, float)", &cpu_limits);
}

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("vq_search", &vq_search_cpu);
  m.impl("vq_index_search", &vq_index_search_cpu);
  m.impl("vq_index_pack", &vq_index_pack_cpu);
  m.impl("vq_segment_sum", &vq_segment_sum_cpu);
}

}  // namespace vq
}  // namespace pyops
