// The contrastive loss's host algorithm, shared by the CPU and CUDA backends (see pyops/contrastive.h): argument
// checks, the chunk loop and the O(N + M) steps before and after it, in ATen ops on the op's device and stream.
#include "pyops/contrastive.h"
#include "pyops/host_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace pyops {
namespace contrastive {
namespace {

void check_groups(const char* op, const char* name, const at::Tensor& g, int64_t size, const at::Tensor& q) {
  TORCH_CHECK_VALUE(g.device() == q.device(), op, ": ", name, " is on ", g.device(), " but q is on ", q.device());
  TORCH_CHECK_TYPE(g.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", g.scalar_type());
  TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == size, op, ": ", name, " must have shape (", size, ",), got ",
                    g.sizes());
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// at::full({size}, value, opts); on CPU without a trip through the dispatcher (seven of these per forward).
at::Tensor filled(int64_t size, double value, const at::TensorOptions& opts) {
  if (opts.device().type() != c10::DeviceType::CPU) return at::full({size}, value, opts);
  at::Tensor t = at::detail::empty_cpu({size}, opts.dtype().toScalarType(), /*pin_memory=*/false);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "contrastive_filled",
                             [&] { std::fill_n(t.data_ptr<scalar_t>(), size, static_cast<scalar_t>(value)); });
  return t;
}

// CPU: perm = the stable argsort of groups, lo/hi[i] = the range of sorted groups equal to queries[i] (what
// at::sort(stable) and at::searchsorted(left/right) compute), without ATen calls. groups, queries: contiguous int64.
void ranges_cpu(const at::Tensor& groups, const at::Tensor& queries, at::Tensor& perm, at::Tensor& lo, at::Tensor& hi) {
  const int64_t n = groups.numel(), nq = queries.numel();
  perm = at::detail::empty_cpu({n}, at::kLong, /*pin_memory=*/false);
  lo = at::detail::empty_cpu({nq}, at::kLong, /*pin_memory=*/false);
  hi = at::detail::empty_cpu({nq}, at::kLong, /*pin_memory=*/false);
  const int64_t* g = groups.const_data_ptr<int64_t>();
  const int64_t* qs = queries.const_data_ptr<int64_t>();
  int64_t* pm = perm.data_ptr<int64_t>();
  std::iota(pm, pm + n, int64_t(0));
  std::stable_sort(pm, pm + n, [g](int64_t a, int64_t b) { return g[a] < g[b]; });
  std::vector<int64_t> sorted(n);
  for (int64_t i = 0; i < n; ++i) sorted[i] = g[pm[i]];
  int64_t* l = lo.data_ptr<int64_t>();
  int64_t* h = hi.data_ptr<int64_t>();
  for (int64_t i = 0; i < nq; ++i) {
    const auto range = std::equal_range(sorted.begin(), sorted.end(), qs[i]);
    l[i] = range.first - sorted.begin();
    h[i] = range.second - sorted.begin();
  }
}

// A [size] vector argument of the backward in the math dtype, contiguous.
at::Tensor vector_arg(const char* name, const at::Tensor& t, int64_t size, const Problem& p) {
  TORCH_CHECK_VALUE(t.device() == p.q.device(), "contrastive_bwd: ", name, " is on ", t.device(), " but q is on ",
                    p.q.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "contrastive_bwd: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, "contrastive_bwd: ", name, " must have shape (", size,
                    ",), got ", t.sizes());
  return contiguous(t.to(p.math));
}

// The backward's coefficients of rows (or columns) with gradient v and positive counts npos (math dtype,
// contiguous): a = [npos > 0] v and a / max(npos, 1). On CPU one loop instead of seven ATen calls, with the same
// IEEE operations (so the same values).
std::pair<at::Tensor, at::Tensor> coefficients(const at::Tensor& v, const at::Tensor& npos) {
  if (!v.device().is_cpu()) {
    const at::Tensor a = at::where(npos > 0, v, at::zeros_like(v));
    return {a, a / npos.clamp_min(1)};
  }
  at::Tensor a = at::detail::empty_cpu(v.sizes(), v.scalar_type(), /*pin_memory=*/false);
  at::Tensor a_inv = at::detail::empty_cpu(v.sizes(), v.scalar_type(), /*pin_memory=*/false);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "contrastive_coefficients", [&] {
    const scalar_t* vs = v.const_data_ptr<scalar_t>();
    const scalar_t* ns = npos.const_data_ptr<scalar_t>();
    scalar_t* as = a.data_ptr<scalar_t>();
    scalar_t* is = a_inv.data_ptr<scalar_t>();
    for (int64_t i = 0; i < v.numel(); ++i) {
      as[i] = ns[i] > 0 ? vs[i] : scalar_t(0);
      is[i] = as[i] / std::max(ns[i], scalar_t(1));
    }
  });
  return {a, a_inv};
}

// out = a @ b, or out += a @ b with accumulate; out in the math dtype, a and b in it or (CUDA) both 16-bit.
void mm(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate) {
  if (a.scalar_type() == out.scalar_type()) {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
#if PYOPS_CONTRASTIVE_MM_OUT_DTYPE
  if (accumulate) {
    out.add_(at::mm(a, b, out.scalar_type()));  // an [M, D] temporary: O((N + M) D) still
  } else {
    at::mm_out(out, a, b, out.scalar_type());
  }
#else
  TORCH_INTERNAL_ASSERT(false, "contrastive: 16-bit GEMM operands need torch >= 2.9");
#endif
}

}  // namespace

int64_t chunk_rows(int64_t n, int64_t m, int64_t elem_size) {
  int64_t c = kChunkBytes / std::max<int64_t>(1, m * elem_size);
  if (const char* env = std::getenv("PYOPS_CONTRASTIVE_CHUNK_ROWS")) {
    const long long v = std::atoll(env);
    if (v > 0) c = v;
  }
  return std::max<int64_t>(1, std::min(c, n));
}

Problem prepare(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& logit_scale,
                const at::Tensor& qg, const at::Tensor& kg, bool symmetric, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(q.device().type() == device_type, op, ": q is on ", q.device(), ", expected a ",
                    c10::DeviceTypeName(device_type), " tensor for this backend");
  const auto dtype = q.scalar_type();
  const bool cpu = device_type == c10::DeviceType::CPU;
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || (dtype == at::kDouble && cpu),
                   op, ": q must be float32, float16 or bfloat16", cpu ? " or float64" : "", ", got ", dtype);
  TORCH_CHECK_VALUE(k.device() == q.device(), op, ": k is on ", k.device(), " but q is on ", q.device());
  TORCH_CHECK_TYPE(k.scalar_type() == dtype, op, ": k has dtype ", k.scalar_type(), " but q has ", dtype);
  TORCH_CHECK_VALUE(q.dim() == 2, op, ": q must have shape (N, D), got ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 2 && k.size(1) == q.size(1), op, ": k must have shape (M, ", q.size(1), "), got ",
                    k.sizes());
  TORCH_CHECK_VALUE(logit_scale.device() == q.device(), op, ": logit_scale is on ", logit_scale.device(),
                    " but q is on ", q.device());
  TORCH_CHECK_TYPE(at::isFloatingType(logit_scale.scalar_type()), op,
                   ": logit_scale must be a floating-point tensor, got ", logit_scale.scalar_type());
  TORCH_CHECK_VALUE(logit_scale.numel() == 1 && logit_scale.dim() <= 1, op,
                    ": logit_scale must be a 0-d tensor (one element), got shape ", logit_scale.sizes());
  check_groups(op, "qg", qg, q.size(0), q);
  check_groups(op, "kg", kg, k.size(0), q);
  if (check_values(op, device_type)) {
    check_finite(op, logit_scale, "logit_scale");
    check_finite(op, q, "q");
    check_finite(op, k, "k");
  }

  Problem p;
  p.math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  p.n = q.size(0), p.m = k.size(0), p.d = q.size(1);
  p.symmetric = symmetric;
  p.q = contiguous(q), p.k = contiguous(k);
  p.qg = contiguous(qg), p.kg = contiguous(kg);
  // O((N + M) log) once per call, on the op's device (no host sync). On CPU a plain loop with the same results
  // (a stable sort, then lower/upper bounds): the seven ATen calls below cost ~12 us on a tiny batch, more than
  // its whole kernel.
  auto ranges = [cpu](const at::Tensor& groups, const at::Tensor& queries, at::Tensor& perm, at::Tensor& lo,
                      at::Tensor& hi) {
    if (cpu) {
      ranges_cpu(groups, queries, perm, lo, hi);
      return;
    }
    const auto sorted = at::sort(groups, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    perm = std::get<1>(sorted).contiguous();
    lo = at::searchsorted(std::get<0>(sorted), queries, /*out_int32=*/false, /*right=*/false).contiguous();
    hi = at::searchsorted(std::get<0>(sorted), queries, /*out_int32=*/false, /*right=*/true).contiguous();
  };
  ranges(p.kg, p.qg, p.kperm, p.row_lo, p.row_hi);
  if (symmetric) ranges(p.qg, p.kg, p.qperm, p.col_lo, p.col_hi);
  p.scale = logit_scale.reshape({}).to(p.math);
  if (cpu) {
    // MKL's GEMMs want the math dtype: 16-bit inputs are upcast once (O((N + M) D)), and G stays in it.
    p.q_mm = p.q.to(p.math), p.k_mm = p.k.to(p.math);
    p.q_bwd = p.q_mm, p.k_bwd = p.k_mm;
    p.grad_dtype = p.math;
  } else if (PYOPS_CONTRASTIVE_MM_OUT_DTYPE) {
    // CUDA: the forward GEMM reads the 16-bit inputs on tensor cores with fp32 output. The backward GEMMs take G
    // in bfloat16 for bfloat16 inputs (tensor cores; bf16 has fp32's range). float16's range would flush the
    // small entries of G (e.g. 1/N * softmax at N = 8192) to zero, so float16 inputs run those in fp32 instead.
    p.q_mm = p.q, p.k_mm = p.k;
    p.grad_dtype = dtype == at::kHalf ? at::kFloat : dtype;
    p.q_bwd = p.q.to(p.grad_dtype), p.k_bwd = p.k.to(p.grad_dtype);
  } else {
    p.q_mm = p.q.to(p.math), p.k_mm = p.k.to(p.math);  // older torch: fp32 GEMMs throughout
    p.q_bwd = p.q_mm, p.k_bwd = p.k_mm;
    p.grad_dtype = p.math;
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const Problem& p,
                                                                                           const Kernels& kern) {
  const auto opts = p.q.options().dtype(p.math);
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t mc = p.symmetric ? p.m : 0;
  at::Tensor row_loss = filled(p.n, 0, opts), row_lse = filled(p.n, -inf, opts), row_npos = filled(p.n, 0, opts);
  // The running column state: max, sum of exp(S - max), positive sum and count.
  at::Tensor cmax = filled(mc, -inf, opts), csum = filled(mc, 0, opts), cpos = filled(mc, 0, opts),
             cnpos = filled(mc, 0, opts);
  if (p.n > 0 && p.m > 0) {
    const int64_t c = chunk_rows(p.n, p.m, c10::elementSize(p.math));
    at::Tensor buffer = at::empty({c, p.m}, opts);
    for (int64_t r0 = 0; r0 < p.n; r0 += c) {
      const int64_t rows = std::min(c, p.n - r0);
      at::Tensor dots = buffer.narrow(0, 0, rows);
      mm(p.q_mm.narrow(0, r0, rows), p.k_mm.t(), dots, /*accumulate=*/false);
      kern.rows(p, r0, dots, row_lse, row_npos, row_loss);
      if (p.symmetric) kern.cols(p, r0, dots, cmax, csum, cpos, cnpos);
    }
  }
  if (!p.symmetric) return {row_loss, cpos, row_lse, cmax, row_npos, cnpos};  // the col_* are all empty
  at::Tensor col_lse = cmax + at::log(csum);  // -inf + log(0) = -inf for M > 0 = N: logsumexp of nothing
  at::Tensor col_loss = at::where(cnpos > 0, col_lse - cpos / cnpos.clamp_min(1), at::zeros_like(col_lse));
  return {row_loss, col_loss, row_lse, col_lse, row_npos, cnpos};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const Problem& p, const Kernels& kern, const at::Tensor& v_row,
                                                        const at::Tensor& v_col, const at::Tensor& logit_scale,
                                                        const at::Tensor& row_lse, const at::Tensor& col_lse,
                                                        const at::Tensor& row_npos, const at::Tensor& col_npos) {
  const int64_t mc = p.symmetric ? p.m : 0;
  const at::Tensor vr = vector_arg("v_row", v_row, p.n, p), rl = vector_arg("row_lse", row_lse, p.n, p),
                   rn = vector_arg("row_npos", row_npos, p.n, p);
  const at::Tensor vc = vector_arg("v_col", v_col, mc, p), cl = vector_arg("col_lse", col_lse, mc, p),
                   cn = vector_arg("col_npos", col_npos, mc, p);
  const auto opts = p.q.options().dtype(p.math);
  // Rows (columns) without a positive have loss 0: no gradient.
  const auto [a, a_inv] = coefficients(vr, rn);
  at::Tensor b, b_inv;
  if (p.symmetric) std::tie(b, b_inv) = coefficients(vc, cn);
  at::Tensor v_q = at::zeros({p.n, p.d}, opts), v_k = at::zeros({p.m, p.d}, opts);
  at::Tensor v_ls = at::zeros({}, opts.dtype(at::kDouble));  // sum_ij G_ij q_i.k_j, in chunk order
  if (p.n > 0 && p.m > 0) {
    const int64_t c = chunk_rows(p.n, p.m, c10::elementSize(p.math));
    at::Tensor buffer = at::empty({c, p.m}, opts), terms_buffer = at::empty({c}, opts.dtype(at::kDouble));
    for (int64_t r0 = 0; r0 < p.n; r0 += c) {
      const int64_t rows = std::min(c, p.n - r0);
      at::Tensor g = buffer.narrow(0, 0, rows), terms = terms_buffer.narrow(0, 0, rows);
      mm(p.q_mm.narrow(0, r0, rows), p.k_mm.t(), g, /*accumulate=*/false);
      const bool have_terms = kern.grad(p, r0, g, rl, a, a_inv, cl, b, b_inv, terms);
      const at::Tensor g_mm = p.grad_dtype == p.math ? g : g.to(p.grad_dtype);
      const at::Tensor q_rows = p.q_bwd.narrow(0, r0, rows);
      at::Tensor gk = v_q.narrow(0, r0, rows);  // G k, scaled below
      mm(g_mm, p.k_bwd, gk, /*accumulate=*/false);
      v_ls.add_(have_terms ? terms.sum() : (q_rows.to(at::kDouble) * gk.to(at::kDouble)).sum());
      mm(g_mm.t(), q_rows, v_k, /*accumulate=*/r0 > 0);
    }
    v_q.mul_(p.scale);
    v_k.mul_(p.scale);
  }
  return {v_q.to(p.q.scalar_type()), v_k.to(p.k.scalar_type()),
          v_ls.to(logit_scale.scalar_type()).reshape(logit_scale.sizes())};
}

}  // namespace contrastive
}  // namespace pyops
