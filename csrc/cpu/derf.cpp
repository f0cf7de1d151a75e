// CPU backend of pyops::derf_fwd / derf_bwd: host entry points and registration; the
// kernels run in the ISA copy that pyops::cpu_isa::active() names (isa.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "derf_kernel_isa.h"
#include "pyops/derf.h"
#include "pyops/derf_math.h"

namespace pyops {
namespace derf {
namespace {

at::Tensor derf_fwd_cpu(const at::Tensor& x,                               // [..., C, ...]
                        const at::Tensor& alpha, const at::Tensor& shift,  // [1] or [C]
                        const std::optional<at::Tensor>& weight,           // [C]
                        const std::optional<at::Tensor>& bias,             // [C]
                        int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CPU);
  at::Tensor y = at::empty_like(p.x);
  if (p.x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_fwd_cpu",
                                  [&] { PYOPS_CPU_ISA_CALL(forward<scalar_t>, p, y); });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> derf_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t channel_dim) {
  const Problem p = prepare(x, alpha, shift, weight, bias, channel_dim, c10::DeviceType::CPU);
  const at::Tensor dy = prepare_grad(grad_out, p);
  at::Tensor dx = at::empty_like(p.x);
  at::Tensor partials = at::zeros({base::num_chunks(p), kNumPartials, p.channels}, p.alpha.options());
  if (p.x.numel() != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "derf_bwd_cpu",
                                    [&] { PYOPS_CPU_ISA_CALL(backward<scalar_t>, p, dy, dx, partials, nullptr); });
  }
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
