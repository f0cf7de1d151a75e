// Host-side pieces of the contrastive loss (pyops::contrastive_fwd / contrastive_bwd) shared by the CPU and CUDA
// backends: argument checks, the chunk size, and the chunked algorithm itself (csrc/contrastive.cpp), which calls
// the backend's GEMMs and small kernels through `Kernels`.
//
// Algorithm (pyops/reference/contrastive.py is the spec). S = logit_scale * q k^T is never materialised: rows
// run in chunks of c rows against all M columns, the chunk's raw dot products q_I k^T (math dtype, c x M, at
// most ~32 MiB) coming from one GEMM.
//  - forward, chunk by chunk in order: each row's exact log-sum-exp, positive sum and count give its loss; each
//    column's running state (max, sum of exp, positive sum, count) absorbs the chunk's c rows in row order.
//  - backward, chunk by chunk in order: the dots are recomputed and turned into G in place,
//      G_ij = a_i (p_ij - pos_ij / rn_i) + b_j (pc_ij - pos_ij / cn_j),  a_i = [rn_i > 0] v_row_i, ...
//    then v_q_I = scale G k, v_k += G^T q_I (GEMM accumulate) and v_logit_scale += sum(q_I * (G k)).
// 8 N M D FLOPs in all (one GEMM forward, three backward) and O((N + M) D + c M) memory. Every reduction has a
// fixed order (chunks in sequence, each row or column owned by one thread or block): bitwise reproducible.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <tuple>

namespace pyops {
namespace contrastive {

// at::mm with an fp32 output for fp16/bf16 operands (aten::mm.dtype_out, CUDA): tensor cores with fp32 logits.
// Older torch upcasts the 16-bit operands to fp32 once instead.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define PYOPS_CONTRASTIVE_MM_OUT_DTYPE 1
#else
#define PYOPS_CONTRASTIVE_MM_OUT_DTYPE 0
#endif

// The workspace bound: the chunk of c x M math-dtype dots stays at or under this many bytes (c >= 1).
constexpr int64_t kChunkBytes = int64_t(32) << 20;

// Rows per chunk for n rows against m columns with `elem_size`-byte math: the most that fit kChunkBytes, at least
// 1 and at most n. $PYOPS_CONTRASTIVE_CHUNK_ROWS (a positive int) overrides it, so tests can run several chunks
// at small sizes; it is read on every call.
int64_t chunk_rows(int64_t n, int64_t m, int64_t elem_size);

struct Problem {
  at::Tensor q, k;          // [N, D], [M, D] contiguous, input dtype
  at::Tensor q_mm, k_mm;    // the forward GEMM's operands: q, k (CUDA) or q, k in the math dtype (CPU)
  at::Tensor q_bwd, k_bwd;  // the backward GEMMs' right-hand operands, in grad_dtype
  at::Tensor scale;         // 0-d, math dtype, on the op's device
  at::Tensor qg, kg;        // [N], [M] int64 contiguous: S_ij is a positive iff qg[i] == kg[j]
  // The positives as lists, so kernels visit them instead of testing all N x M pairs: kperm holds the columns
  // sorted by group (stable), row i's positive columns are kperm[row_lo[i]:row_hi[i]]; qperm, col_lo, col_hi the
  // same for the columns' positive rows (in ascending row order; undefined when not symmetric). All int64.
  at::Tensor kperm, row_lo, row_hi, qperm, col_lo, col_hi;
  at::ScalarType math = at::kFloat;        // float, or double for float64 inputs
  at::ScalarType grad_dtype = at::kFloat;  // G is cast to this for the backward GEMMs
  int64_t n = 0, m = 0, d = 0;
  bool symmetric = true;
};

// Checks every argument (naming the bad one; TypeError for dtypes, ValueError for shapes, devices and values)
// and builds the canonical problem. `op` names the op in messages. logit_scale, q and k are checked for NaN/inf
// on CPU (on every device with PYOPS_CHECK_FINITE=1): pyops.contrastive_loss's eager path relies on it.
Problem prepare(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& logit_scale,
                const at::Tensor& qg, const at::Tensor& kg, bool symmetric, c10::DeviceType device_type);

// What a backend provides besides the GEMMs (ATen's). `dots` is a [c, M] math-dtype chunk for rows [r0, r0 + c); the
// kernels read the scale from p.scale (a device pointer on CUDA: no host sync).
struct Kernels {
  virtual ~Kernels() = default;
  // Forward, rows: lse, positive count and loss of rows r0 .. r0 + c (the output tensors' full [N] buffers).
  virtual void rows(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& lse, at::Tensor& npos,
                    at::Tensor& loss) const = 0;
  // Forward, columns: merges the chunk into the running column state (each [M], math dtype).
  virtual void cols(const Problem& p, int64_t r0, const at::Tensor& dots, at::Tensor& cmax, at::Tensor& csum,
                    at::Tensor& cpos, at::Tensor& cnpos) const = 0;
  // Backward: dots -> G in place. a/a_inv: [N] row coefficients [rn > 0] v_row and a / max(rn, 1); b/b_inv the
  // same per column, undefined when not symmetric. A backend that can also fills scale_terms ([c] float64) with
  // sum_j G_ij dots_ij per row and returns true: the logit_scale gradient from the logits it already holds,
  // summed in double (a single scalar over N x M terms that largely cancel). Otherwise the host sums q_i.(G k)_i.
  virtual bool grad(const Problem& p, int64_t r0, at::Tensor& dots, const at::Tensor& row_lse, const at::Tensor& a,
                    const at::Tensor& a_inv, const at::Tensor& col_lse, const at::Tensor& b, const at::Tensor& b_inv,
                    at::Tensor& scale_terms) const = 0;
};

// (row_loss, col_loss, row_lse, col_lse, row_npos, col_npos); col_* are empty when not symmetric.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const Problem& p,
                                                                                           const Kernels& kern);

// (v_q, v_k, v_logit_scale) in q's, k's and logit_scale's dtype (and logit_scale's shape).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const Problem& p, const Kernels& kern, const at::Tensor& v_row,
                                                        const at::Tensor& v_col, const at::Tensor& logit_scale,
                                                        const at::Tensor& row_lse, const at::Tensor& col_lse,
                                                        const at::Tensor& row_npos, const at::Tensor& col_npos);

}  // namespace contrastive
}  // namespace pyops
