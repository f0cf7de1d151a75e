// Entry points of the per-ISA CPU contrastive-loss kernels (contrastive_kernel.h, compiled once per level: see
// isa.h), for T = float and double (the math dtypes). Each works on one chunk of c rows: `dots` is the chunk's
// [c, M] raw dot products q_i.k_j (row-major), and qg, lse, a, a_inv point at the chunk's first row.
#pragma once

#include <cstdint>

#include "isa.h"

namespace pyops {
namespace contrastive {
// A class template rather than function templates: the OpenMP regions' symbols then name concrete types, which
// binutils demangles, so tests/test_isa.py can see which ISA copy they belong to.
PYOPS_CPU_ISA_DECLARE(template <typename T> struct Chunk {
  // Per row: lse = logsumexp_j S_ij, npos = #positives, loss = lse - mean of the positive S_ij (0 without one).
  // Row i's positive columns are kperm[lo[i]:hi[i]].
  static void rows(const T* dots, int64_t c, int64_t m, T scale, const int64_t* kperm, const int64_t* lo,
                   const int64_t* hi, T* lse, T* npos, T* loss);
  // Merges the chunk (rows r0 .. r0 + c) into the running per-column state ([M] each): max, sum of exp(S - max),
  // positive sum, count. Column j's positive rows are qperm[col_lo[j]:col_hi[j]], ascending.
  static void cols(const T* dots, int64_t c, int64_t m, T scale, int64_t r0, const int64_t* qperm,
                   const int64_t* col_lo, const int64_t* col_hi, T* cmax, T* csum, T* cpos, T* cnpos);
  // dots -> G in place (pyops/contrastive.h); col_lse, b, b_inv are nullptr when not symmetric. scale_terms[i] =
  // sum_j G_ij dots_ij (the row's share of the logit_scale gradient), accumulated in double.
  static void grad(T * dots, int64_t c, int64_t m, T scale, const int64_t* kperm, const int64_t* lo, const int64_t* hi,
                   const T* row_lse, const T* a, const T* a_inv, const T* col_lse, const T* b, const T* b_inv,
                   double* scale_terms);
};)
}  // namespace contrastive
}  // namespace pyops
