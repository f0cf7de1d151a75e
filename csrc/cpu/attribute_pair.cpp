// CPU backend of pyops::attribute_pair_fwd / attribute_pair_bwd: at::parallel_for over the pairs b, each pair
// one pass over its 2A slots. Rows are streamed with plain loops that the compiler vectorises; the dot products
// keep kTile x kLanes independent accumulators summed in a fixed order (deterministic). One file, no per-ISA copies
// (derf_kernel_*.cpp): the op is memory-bound and the default SSE2 vectors already keep up with two cores' memory
// bandwidth.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "pyops/attribute_pair.h"
#include "pyops/attribute_pair_math.h"

namespace pyops {
namespace attribute_pair {
namespace {

template <typename scalar_t>
using math_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// xs[t] . ys[t] for t < kTile in one pass: kTile x kLanes independent accumulators (no loop-carried reduction,
// so the compiler vectorises the lane loops and the additions overlap), summed in a fixed order.
constexpr int kTile = 4, kLanes = 8;

template <typename T>
void dot_tile(const T* const* xs, const T* const* ys, int64_t n, T* out) {
  T acc[kTile][kLanes] = {};
  const int64_t main = n - n % kLanes;
  for (int64_t d = 0; d < main; d += kLanes)
    for (int t = 0; t < kTile; ++t)
      for (int k = 0; k < kLanes; ++k) acc[t][k] += xs[t][d + k] * ys[t][d + k];
  for (int t = 0; t < kTile; ++t) {
    T sum = 0;
    for (int k = 0; k < kLanes; ++k) sum += acc[t][k];
    for (int64_t d = main; d < n; ++d) sum += xs[t][d] * ys[t][d];
    out[t] = sum;
  }
}

// The pair's squared norms sq[2A] and dots[A * A] of its rows (x rows then y rows): the 2A + A^2 products in
// groups of kTile (a short last group repeats its last product: no branches in the loop).
template <typename T>
void pair_products(const std::vector<const T*>& rows, int64_t A, int64_t D, T* sq, T* dots) {
  const int64_t n = 2 * A + A * A;
  auto operands = [&](int64_t p, const T*& x, const T*& y) {
    if (p < 2 * A) {
      x = y = rows[p];
    } else {
      x = rows[(p - 2 * A) / A];
      y = rows[A + (p - 2 * A) % A];
    }
  };
  const T* xs[kTile];
  const T* ys[kTile];
  T out[kTile];
  for (int64_t p0 = 0; p0 < n; p0 += kTile) {
    for (int t = 0; t < kTile; ++t) operands(std::min(p0 + t, n - 1), xs[t], ys[t]);
    dot_tile(xs, ys, D, out);
    for (int t = 0; t < kTile && p0 + t < n; ++t) (p0 + t < 2 * A ? sq[p0 + t] : dots[p0 + t - 2 * A]) = out[t];
  }
}

// Pairs per parallel_for chunk: about 64K streamed elements, so tiny problems stay on one thread.
int64_t grain(const Problem& p) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, 2 * p.A * p.L * p.D));
}

// Token weights of pair b: w[a * L + l] (mask value, 1 without a mask) and 1 / max(sum_l w, 1) per slot.
template <typename math_t, typename mask_t>
void token_weights(const mask_t* mask, int64_t b, int64_t A, int64_t L, math_t* w, math_t* inv_count) {
  for (int64_t a = 0; a < A; ++a) {
    math_t count = 0;
    for (int64_t l = 0; l < L; ++l) {
      const math_t v = mask ? static_cast<math_t>(mask[(b * A + a) * L + l]) : math_t(1);
      w[a * L + l] = v;
      count += v;
    }
    inv_count[a] = math_t(1) / (count > math_t(1) ? count : math_t(1));
  }
}

// The pair's 2A pooled rows as math_t pointers (x rows then y rows): the saved pooled vectors for token inputs,
// the input rows when they already are math_t, else a converted copy in `scratch` (2A * D).
template <typename scalar_t, typename math_t>
void pair_rows(const Problem& p, int64_t b, const math_t* px, const math_t* py, std::vector<math_t>& scratch,
               std::vector<const math_t*>& rows) {
  const int64_t A = p.A, D = p.D;
  for (int side = 0; side < 2; ++side) {
    for (int64_t a = 0; a < A; ++a) {
      const int64_t row = (b * A + a) * D;
      if (p.tokens) {
        rows[side * A + a] = (side ? py : px) + row;
      } else if constexpr (std::is_same_v<scalar_t, math_t>) {
        rows[side * A + a] = (side ? p.ey : p.ex).template const_data_ptr<scalar_t>() + row;
      } else {
        const scalar_t* src = (side ? p.ey : p.ex).template const_data_ptr<scalar_t>() + row;
        math_t* dst = scratch.data() + (side * A + a) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<math_t>(src[d]);
        rows[side * A + a] = dst;
      }
    }
  }
}

template <typename scalar_t, typename mask_t>
void forward(const Problem& p, const mask_t* mask, at::Tensor& loss, at::Tensor& cos, at::Tensor& norms, at::Tensor& px,
             at::Tensor& py) {
  using math_t = math_of<scalar_t>;
  const int64_t A = p.A, L = p.L, D = p.D;
  const math_t s = *p.logit_scale.const_data_ptr<math_t>();
  math_t* loss_out = loss.data_ptr<math_t>();
  math_t* cos_out = cos.data_ptr<math_t>();
  math_t* norms_out = norms.data_ptr<math_t>();
  math_t* px_out = p.tokens ? px.data_ptr<math_t>() : nullptr;
  math_t* py_out = p.tokens ? py.data_ptr<math_t>() : nullptr;
  at::parallel_for(0, p.B, grain(p), [&](int64_t b0, int64_t b1) {
    std::vector<math_t> w(A * L), inv_count(A), scratch(p.tokens || std::is_same_v<scalar_t, math_t> ? 0 : 2 * A * D);
    std::vector<int64_t> kept_l(L);
    std::vector<const math_t*> rows(2 * A);
    for (int64_t b = b0; b < b1; ++b) {
      if (p.tokens) {
        // Masked mean-pool: masked tokens are never read; kept ones are added four per pass over the row.
        token_weights(mask, b, A, L, w.data(), inv_count.data());
        for (int64_t a = 0; a < A; ++a) {
          int64_t kept = 0;
          for (int64_t l = 0; l < L; ++l)
            if (w[a * L + l] != 0) kept_l[kept++] = l;
          for (int side = 0; side < 2; ++side) {
            const scalar_t* src = (side ? p.ey : p.ex).template const_data_ptr<scalar_t>() + (b * A + a) * L * D;
            math_t* acc = (side ? py_out : px_out) + (b * A + a) * D;
            for (int64_t d = 0; d < D; ++d) acc[d] = 0;
            int64_t q = 0;
            for (; q + 4 <= kept; q += 4) {
              const int64_t* l = kept_l.data() + q;
              const scalar_t *x0 = src + l[0] * D, *x1 = src + l[1] * D, *x2 = src + l[2] * D, *x3 = src + l[3] * D;
              const math_t w0 = w[a * L + l[0]], w1 = w[a * L + l[1]], w2 = w[a * L + l[2]], w3 = w[a * L + l[3]];
#pragma omp simd
              for (int64_t d = 0; d < D; ++d)
                acc[d] += (w0 * static_cast<math_t>(x0[d]) + w1 * static_cast<math_t>(x1[d])) +
                          (w2 * static_cast<math_t>(x2[d]) + w3 * static_cast<math_t>(x3[d]));
            }
            for (; q < kept; ++q) {
              const scalar_t* x = src + kept_l[q] * D;
              const math_t wl = w[a * L + kept_l[q]];
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) acc[d] += wl * static_cast<math_t>(x[d]);
            }
            const math_t inv = inv_count[a];
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
          }
        }
      }
      pair_rows<scalar_t, math_t>(p, b, px_out, py_out, scratch, rows);
      math_t* r = norms_out + b * 2 * A;  // |x_a| then |y_a|
      math_t* c = cos_out + b * A * A;
      pair_products(rows, A, D, r, c);
      for (int64_t k = 0; k < 2 * A; ++k) r[k] = std::sqrt(r[k]);
      for (int64_t i = 0; i < A; ++i)
        for (int64_t j = 0; j < A; ++j) c[i * A + j] /= clamp_norm(r[i]) * clamp_norm(r[A + j]);
      loss_out[b] = pair_loss(c, A, s);
    }
  });
}

template <typename scalar_t, typename mask_t>
void backward(const Problem& p, const Saved& sv, const mask_t* mask, at::Tensor& v_ex, at::Tensor& v_ey,
              at::Tensor& partials) {
  using math_t = math_of<scalar_t>;
  const int64_t A = p.A, L = p.L, D = p.D;
  const math_t s = *p.logit_scale.const_data_ptr<math_t>();
  const math_t* v_loss = sv.v_loss.const_data_ptr<math_t>();
  const math_t* cos = sv.cos.const_data_ptr<math_t>();
  const math_t* norms = sv.norms.const_data_ptr<math_t>();
  const math_t* px = p.tokens ? sv.px.const_data_ptr<math_t>() : nullptr;
  const math_t* py = p.tokens ? sv.py.const_data_ptr<math_t>() : nullptr;
  math_t* part = partials.data_ptr<math_t>();
  at::parallel_for(0, p.B, grain(p), [&](int64_t b0, int64_t b1) {
    std::vector<math_t> w(A * L), inv_count(A), alpha(A * A), beta(A), gamma(A), out(D);
    std::vector<math_t> scratch(p.tokens || std::is_same_v<scalar_t, math_t> ? 0 : 2 * A * D);
    std::vector<const math_t*> rows(2 * A);
    for (int64_t b = b0; b < b1; ++b) {
      const math_t* r = norms + b * 2 * A;
      part[b] = pair_backward(cos + b * A * A, r, r + A, A, s, v_loss[b], alpha.data(), beta.data(), gamma.data());
      if (p.tokens) token_weights(mask, b, A, L, w.data(), inv_count.data());
      pair_rows<scalar_t, math_t>(p, b, px, py, scratch, rows);
      for (int side = 0; side < 2; ++side) {
        scalar_t* dst = (side ? v_ey : v_ex).template data_ptr<scalar_t>();
        for (int64_t a = 0; a < A; ++a) {
          // d loss / d (pooled row a of this side) = own coefficient * own row + sum_k alpha * other side's row k.
          const math_t* own = rows[side * A + a];
          const math_t self = side ? gamma[a] : beta[a];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) out[d] = self * own[d];
          for (int64_t k = 0; k < A; ++k) {
            const math_t coef = side ? alpha[k * A + a] : alpha[a * A + k];
            const math_t* other = rows[(1 - side) * A + k];
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) out[d] += coef * other[d];
          }
          // Token inputs: the pooled gradient times w_l / count on every token (zero on masked ones).
          for (int64_t l = 0; l < L; ++l) {
            const math_t scale = p.tokens ? w[a * L + l] * inv_count[a] : math_t(1);
            scalar_t* g = dst + ((b * A + a) * L + l) * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) g[d] = static_cast<scalar_t>(scale * out[d]);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attribute_pair_fwd_cpu(
    const at::Tensor& ex, const at::Tensor& ey, const at::Tensor& logit_scale, const std::optional<at::Tensor>& mask) {
  const Problem p = prepare("attribute_pair_fwd", ex, ey, logit_scale, mask, c10::DeviceType::CPU);
  auto [loss, cos, norms, px, py] = allocate_forward(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.ex.scalar_type(), "attribute_pair_fwd_cpu", [&] {
    with_mask<scalar_t>(p, [&](auto m) { forward<scalar_t>(p, m, loss, cos, norms, px, py); });
  });
  return {loss, cos, norms, px, py};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attribute_pair_bwd_cpu(const at::Tensor& v_loss, const at::Tensor& ex,
                                                                      const at::Tensor& ey,
                                                                      const at::Tensor& logit_scale,
                                                                      const std::optional<at::Tensor>& mask,
                                                                      const at::Tensor& cos, const at::Tensor& norms,
                                                                      const at::Tensor& px, const at::Tensor& py) {
  const Problem p = prepare("attribute_pair_bwd", ex, ey, logit_scale, mask, c10::DeviceType::CPU);
  const Saved sv = prepare_backward(p, v_loss, cos, norms, px, py);
  at::Tensor v_ex = at::empty_like(p.ex), v_ey = at::empty_like(p.ey);
  at::Tensor partials = at::empty({p.B}, p.logit_scale.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.ex.scalar_type(), "attribute_pair_bwd_cpu", [&] {
    with_mask<scalar_t>(p, [&](auto m) { backward<scalar_t>(p, sv, m, v_ex, v_ey, partials); });
  });
  return {v_ex, v_ey, reduce_v_logit_scale(partials, logit_scale)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("attribute_pair_fwd", &attribute_pair_fwd_cpu);
  m.impl("attribute_pair_bwd", &attribute_pair_bwd_cpu);
}

}  // namespace attribute_pair
}  // namespace pyops
