// CPU backend of pyops::contrastive_fwd / contrastive_bwd: the shared chunk loop (csrc/contrastive.cpp) with
// ATen's (MKL's, multi-threaded) GEMMs on math-dtype operands and the vectorised chunk kernels of the active ISA
// copy (contrastive_kernel.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "contrastive_kernel_isa.h"
#include "pyops/contrastive.h"

namespace pyops {
namespace contrastive {
namespace {

struct CpuKernels final : Kernels {
  void rows(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& lse, at::Tensor& npos,
            at::Tensor& loss) const override {
    AT_DISPATCH_FLOATING_TYPES(p.math, "contrastive_rows_cpu", [&] {
      PYOPS_CPU_ISA_CALL(Chunk<scalar_t>::rows, dots.const_data_ptr<scalar_t>(), dots.size(0), p.m,
                         p.scale.item<scalar_t>(), p.kperm.const_data_ptr<int64_t>(),
                         p.row_lo.const_data_ptr<int64_t>() + r0, p.row_hi.const_data_ptr<int64_t>() + r0,
                         lse.data_ptr<scalar_t>() + r0, npos.data_ptr<scalar_t>() + r0, loss.data_ptr<scalar_t>() + r0);
    });
  }

  void cols(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& cmax, at::Tensor& csum, at::Tensor& cpos,
            at::Tensor& cnpos) const override {
    AT_DISPATCH_FLOATING_TYPES(p.math, "contrastive_cols_cpu", [&] {
      PYOPS_CPU_ISA_CALL(
          Chunk<scalar_t>::cols, dots.const_data_ptr<scalar_t>(), dots.size(0), p.m, p.scale.item<scalar_t>(), r0,
          p.qperm.const_data_ptr<int64_t>(), p.col_lo.const_data_ptr<int64_t>(), p.col_hi.const_data_ptr<int64_t>(),
          cmax.data_ptr<scalar_t>(), csum.data_ptr<scalar_t>(), cpos.data_ptr<scalar_t>(), cnpos.data_ptr<scalar_t>());
    });
  }

  bool grad(const Problem& p, int64_t r0, at::Tensor& dots, const at::Tensor& row_lse, const at::Tensor& a,
            const at::Tensor& a_inv, const at::Tensor& col_lse, const at::Tensor& b, const at::Tensor& b_inv,
            at::Tensor& scale_terms) const override {
    AT_DISPATCH_FLOATING_TYPES(p.math, "contrastive_grad_cpu", [&] {
      const bool sym = p.symmetric;
      PYOPS_CPU_ISA_CALL(Chunk<scalar_t>::grad, dots.data_ptr<scalar_t>(), dots.size(0), p.m, p.scale.item<scalar_t>(),
                         p.kperm.const_data_ptr<int64_t>(), p.row_lo.const_data_ptr<int64_t>() + r0,
                         p.row_hi.const_data_ptr<int64_t>() + r0, row_lse.const_data_ptr<scalar_t>() + r0,
                         a.const_data_ptr<scalar_t>() + r0, a_inv.const_data_ptr<scalar_t>() + r0,
                         sym ? col_lse.const_data_ptr<scalar_t>() : nullptr,
                         sym ? b.const_data_ptr<scalar_t>() : nullptr, sym ? b_inv.const_data_ptr<scalar_t>() : nullptr,
                         scale_terms.data_ptr<double>());
    });
    return true;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& logit_scale, const at::Tensor& qg, const at::Tensor& kg,
    bool symmetric) {
  const Problem p = prepare("contrastive_fwd", q, k, logit_scale, qg, kg, symmetric, c10::DeviceType::CPU);
  return forward(p, CpuKernels());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_bwd_cpu(
    const at::Tensor& v_row, const at::Tensor& v_col, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& logit_scale, const at::Tensor& qg, const at::Tensor& kg, const at::Tensor& row_lse,
    const at::Tensor& col_lse, const at::Tensor& row_npos, const at::Tensor& col_npos, bool symmetric) {
  const Problem p = prepare("contrastive_bwd", q, k, logit_scale, qg, kg, symmetric, c10::DeviceType::CPU);
  return backward(p, CpuKernels(), v_row, v_col, logit_scale, row_lse, col_lse, row_npos, col_npos);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("contrastive_fwd", &contrastive_fwd_cpu);
  m.impl("contrastive_bwd", &contrastive_bwd_cpu);
}

}  // namespace contrastive
}  // namespace pyops
