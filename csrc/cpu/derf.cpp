// CPU backend of pyops::derf_fwd / derf_bwd: host entry points, ISA choice and registration.
#include <torch/library.h>

#include "derf_kernel_isa.h"
#include "pyops/derf.h"
#include "pyops/derf_math.h"

namespace pyops {
namespace derf {
namespace {

enum class Isa { kBase, kAvx2, kAvx512 };

Isa best_isa() {
#if PYOPS_HAVE_X86_KERNELS
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

// Calls fn with the kernel namespace's forward/backward for the best ISA this CPU has.
#if PYOPS_HAVE_X86_KERNELS
#define PYOPS_CPU_ISA_CALL(fn, ...)                      \
  switch (best_isa()) {                                  \
    case Isa::kAvx512: avx512::fn(__VA_ARGS__); break;   \
    case Isa::kAvx2: avx2::fn(__VA_ARGS__); break;       \
    default: base::fn(__VA_ARGS__);                      \
  }
#else
#define PYOPS_CPU_ISA_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

at::Tensor derf_fwd_cpu(const at::Tensor& x,  // [..., C, ...]
                        const at::Tensor& alpha, const at::Tensor& shift,  // [1] or [C]
                        const std::optional<at::Tensor>& weight,           // [C]
                        const std::optional<at::Tensor>& bias,             // [C]
                        int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CPU);
  at::Tensor y = at::empty_like(p.x);
  if (p.x.numel() == 0) return y;
  PYOPS_CPU_ISA_CALL(forward, p, y);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> derf_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CPU);
  const at::Tensor dy = prepare_grad(grad_out, p);
  at::Tensor dx = at::empty_like(p.x);
  at::Tensor partials = at::zeros({base::num_chunks(p), kNumPartials, p.channels}, p.alpha.options());
  if (p.x.numel() != 0) PYOPS_CPU_ISA_CALL(backward, p, dy, dx, partials);
  auto [ga, gs, gw, gb] = reduce_partials(partials, p, alpha, shift, weight, bias);
  return {dx, ga, gs, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("derf_fwd", &derf_fwd_cpu);
  m.impl("derf_bwd", &derf_bwd_cpu);
}

}  // namespace derf
}  // namespace pyops
