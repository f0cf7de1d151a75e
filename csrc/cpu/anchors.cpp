// CPU backend of pyops::anchor_blend_weight_{fwd,bwd} and pyops::anchor_decode_{fwd,bwd}.
//
// Decode works on chunks of kChunk anchors (at::parallel_for), so that every intermediate stays in the core's
// cache (the op is memory bound on CPU: a whole-batch GEMM pipeline moved ~3x the essential bytes). Per chunk:
// the visible anchors' x = [feat, dir, dist] [n, C + 4] in the math dtype, one GEMM for the three first layers
// (Problem::w1s), ReLU, one GEMM per second layer (ATen GEMMs on per-task buffers), then
// the epilogue writes the dense outputs; invisible anchors get the fills and no MLP work. The backward recomputes
// a chunk's MLP, runs the epilogue's VJP (head gradients G [n, 11K] and the direct gradients), adds the chunk's
// terms of the weight gradients to its segment's partial sums (the same GEMMs as weight_grads() in
// csrc/anchors.cpp, summed in a fixed order afterwards) and finishes with v_x = v_hpre W1s and the view VJP.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "pyops/anchors.h"
#include "pyops/anchors_math.h"

namespace pyops {
namespace anchors {
namespace {

constexpr int64_t kChunk = 512;       // anchors per MLP chunk: its buffers stay in the core's L2 cache
constexpr int64_t kMaxSegments = 64;  // backward: weight-gradient partial sums, one per fixed anchor range

// A row-major [rows, cols] matrix with leading dimension ld in a chunk buffer, for ATen's GEMMs (MKL; inside
// at::parallel_for they run single-threaded). libtorch does not export its raw BLAS wrapper, so the GEMMs go
// through the dispatcher: a few microseconds per call, a few hundred calls per pass.
template <typename T>
at::Tensor blob(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// The CPU kernels order the 11K head outputs as [opacity K | color 3K | scale logits 3K | quat 4K] (offset-major
// inside each block). perm[cpu row] = schema row (Problem::w2s order [opacity K | cov 7K | color 3K]).
at::Tensor cpu_row_order(int64_t K) {
  std::vector<int64_t> perm(kHeadOut * K);
  for (int64_t k = 0; k < K; ++k) {
    perm[k] = k;
    for (int64_t q = 0; q < 3; ++q) {
      perm[K + 3 * k + q] = 8 * K + 3 * k + q;
      perm[4 * K + 3 * k + q] = K + 7 * k + q;
    }
    for (int64_t q = 0; q < 4; ++q) perm[7 * K + 4 * k + q] = K + 7 * k + 3 + q;
  }
  return at::tensor(perm, at::kLong);
}

// A chunk's head outputs (and their gradients G) live in three contiguous row-major blocks of one buffer, so
// that tanh and sigmoid each run over one contiguous range (ATen's elementwise kernels are ~4x slower on
// strided views): O [n, K] (opacity) at 0, S [n, 6K] ([color 3K | scale 3K]) at kChunk * K, Q [n, 4K] (quat)
// at kChunk * 7K.
struct HeadLayout {
  int64_t k;
  int64_t o() const { return 0; }
  int64_t s() const { return kChunk * k; }
  int64_t q() const { return kChunk * 7 * k; }
};

// The second-layer row blocks in the CPU order: first row, number of rows, the head whose hidden units they read,
// and where their outputs go in the chunk buffer (first element, leading dimension).
struct RowBlock {
  int64_t row0, rows;
  int head;
  int64_t at, ld;
};
inline std::array<RowBlock, 4> row_blocks(int64_t K) {
  const HeadLayout l{K};
  return {RowBlock{0, K, kOpacity, l.o(), K}, RowBlock{K, 3 * K, kColor, l.s(), 6 * K},
          RowBlock{4 * K, 3 * K, kCov, l.s() + 3 * K, 6 * K}, RowBlock{7 * K, 4 * K, kCov, l.q(), 4 * K}};
}

// Activated head outputs of offset k of chunk row r (see activate() in anchors_math.h).
template <typename T>
HeadOut<T> head_out(const T* buf, int64_t r, int64_t k, int64_t K) {
  const HeadLayout l{K};
  const T* s = buf + l.s() + r * 6 * K;
  const T* qt = buf + l.q() + r * 4 * K + 4 * k;
  HeadOut<T> h;
  h.opacity = buf[l.o() + r * K + k];
  for (int q = 0; q < 3; ++q) h.color[q] = s[3 * k + q], h.cov[q] = s[3 * K + 3 * k + q];
  for (int q = 0; q < 4; ++q) h.cov[3 + q] = qt[q];
  return h;
}

// Head pre-activation gradients of offset k into a G row [11K] in the schema order [opacity K | cov 7K | color 3K]
// (G needs no activation; in this order each head's columns are one block: one GEMM per head and term).
template <typename T>
void store_head_grad(T* row, int64_t k, int64_t K, const HeadOut<T>& v) {
  row[k] = v.opacity;
  for (int q = 0; q < 7; ++q) row[K + 7 * k + q] = v.cov[q];
  for (int q = 0; q < 3; ++q) row[8 * K + 3 * k + q] = v.color[q];
}

// Raw pointers to everything the chunk kernels read.
template <typename scalar_t, typename T>
struct Inputs {
  const scalar_t *anchors, *feats, *offsets, *anchor_scales, *opacity_scale, *blend_offset, *blend_decay;
  const bool* visible;
  const T *cam, *w1s, *b1s, *w2s, *b2s, *w2_schema;
  T tau, lambda;
  int mode;
  int64_t c, h, k, xc, nout;  // xc = C + 4 columns of x, nout = 11K head outputs

  // w2p, b2p: the second layers in the CPU row order (w2_schema: Problem::w2s, in the schema's).
  Inputs(const Problem& p, const at::Tensor& w2p, const at::Tensor& b2p)
      : anchors(p.anchors.data_ptr<scalar_t>()),
        feats(p.feats.data_ptr<scalar_t>()),
        offsets(p.offsets.data_ptr<scalar_t>()),
        anchor_scales(p.anchor_scales.data_ptr<scalar_t>()),
        opacity_scale(p.has_scale() ? p.opacity_scale.data_ptr<scalar_t>() : nullptr),
        blend_offset(p.has_blend() ? p.blend_offset.data_ptr<scalar_t>() : nullptr),
        blend_decay(p.has_blend() ? p.blend_decay.data_ptr<scalar_t>() : nullptr),
        visible(p.has_visible() ? p.visible.data_ptr<bool>() : nullptr),
        cam(p.cam.data_ptr<T>()),
        w1s(p.w1s.data_ptr<T>()),
        b1s(p.b1s.data_ptr<T>()),
        w2s(w2p.data_ptr<T>()),
        b2s(b2p.data_ptr<T>()),
        w2_schema(p.w2s.data_ptr<T>()),
        tau(T(tau_on_host(p))),
        lambda(T(p.lambda)),
        mode(int(p.mode)),
        c(p.c),
        h(p.h),
        k(p.k),
        xc(p.x_cols()),
        nout(kHeadOut * p.k) {}

  bool is_visible(int64_t i) const { return visible == nullptr || visible[i]; }
  void load(int64_t i, T* a, T* as) const {
    for (int q = 0; q < 3; ++q) a[q] = T(anchors[3 * i + q]);
    for (int q = 0; q < 6; ++q) as[q] = T(anchor_scales[6 * i + q]);
  }
  void offset(int64_t ik, T* o) const {
    for (int q = 0; q < 3; ++q) o[q] = T(offsets[3 * ik + q]);
  }
  // The anchor's opacity scale s and the blend weight w (1 without blend).
  T scale(int64_t i, T* w) const {
    return opacity_scale_of<T>(opacity_scale != nullptr, opacity_scale ? T(opacity_scale[i]) : T(1),
                               blend_offset != nullptr, blend_offset ? T(blend_offset[i]) : T(0),
                               blend_decay ? T(blend_decay[i]) : T(0), tau, lambda, mode, w);
  }
};

// Per-task buffers of one chunk (row-major): the visible anchors' indices, x [n, C + 4], the hidden
// activations [n, 3H] and the head outputs (HeadLayout).
template <typename T>
struct Chunk {
  std::vector<int64_t> rows;
  std::vector<T> x, hid, heads;
  int64_t n = 0;
  template <typename In>
  explicit Chunk(const In& in) : rows(kChunk), x(kChunk * in.xc), hid(kChunk * 3 * in.h), heads(kChunk * in.nout) {}
};

// out [n, m] (leading dimension ldo) += in [n, k] (ld ldi) @ w[m, k]^T.
template <typename T>
void linear_rows(int64_t n, int64_t m, int64_t k, const T* w, const T* in, int64_t ldi, T* out, int64_t ldo) {
  blob(out, n, m, ldo).addmm_(blob(in, n, k, ldi), blob(w, m, k, k).t());
}

// The MLP of the chunk's visible anchors: x, relu(W1s x + b1s), the three heads.
template <typename scalar_t, typename T>
void chunk_mlp(const Inputs<scalar_t, T>& in, Chunk<T>& ch) {
  const int64_t n = ch.n, xc = in.xc, h3 = 3 * in.h;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = ch.rows[r];
    T* xr = ch.x.data() + r * xc;
    for (int64_t q = 0; q < in.c; ++q) xr[q] = T(in.feats[i * in.c + q]);
    const T a[3] = {T(in.anchors[3 * i]), T(in.anchors[3 * i + 1]), T(in.anchors[3 * i + 2])};
    xr[in.c + 3] = view_dir<T>(a, in.cam, xr + in.c);
    std::copy(in.b1s, in.b1s + h3, ch.hid.data() + r * h3);
  }
  linear_rows<T>(n, h3, xc, in.w1s, ch.x.data(), xc, ch.hid.data(), h3);
  for (int64_t q = 0; q < n * h3; ++q) ch.hid[q] = ch.hid[q] > T(0) ? ch.hid[q] : T(0);
  for (const RowBlock& b : row_blocks(in.k)) {
    T* out = ch.heads.data() + b.at;
    for (int64_t r = 0; r < n; ++r) std::copy(in.b2s + b.row0, in.b2s + b.row0 + b.rows, out + r * b.ld);
    linear_rows<T>(n, b.rows, in.h, in.w2s + b.row0 * in.h, ch.hid.data() + b.head * in.h, h3, out, b.ld);
  }
  // The activations over contiguous ranges: tanh over the opacity block, sigmoid over the color and scale block.
  const HeadLayout l{in.k};
  blob(ch.heads.data() + l.o(), 1, n * in.k, n * in.k).tanh_();
  blob(ch.heads.data() + l.s(), 1, n * 6 * in.k, n * 6 * in.k).sigmoid_();
}

// Collects the visible anchors of [c0, c1) into ch.rows; calls invisible(i) for the others.
template <typename scalar_t, typename T, typename F>
void gather_chunk(const Inputs<scalar_t, T>& in, Chunk<T>& ch, int64_t c0, int64_t c1, F&& invisible) {
  ch.n = 0;
  for (int64_t i = c0; i < c1; ++i) {
    if (in.is_visible(i)) {
      ch.rows[ch.n++] = i;
    } else {
      invisible(i);
    }
  }
}

template <typename scalar_t>
struct FwdOut {
  scalar_t *means, *quats, *scales, *opacities, *colors, *neural;
  template <typename T>
  void store(int64_t ik, const Gaussian<T>& g) const {
    for (int q = 0; q < 3; ++q) {
      means[3 * ik + q] = scalar_t(g.mean[q]);
      scales[3 * ik + q] = scalar_t(g.scale[q]);
      colors[3 * ik + q] = scalar_t(g.color[q]);
    }
    for (int q = 0; q < 4; ++q) quats[4 * ik + q] = scalar_t(g.quat[q]);
    opacities[ik] = scalar_t(g.opacity);
    neural[ik] = scalar_t(g.neural_opacity);
  }
};

template <typename scalar_t, typename T>
void decode_fwd_kernel(const Problem& p, const at::Tensor& w2p, const at::Tensor& b2p, const FwdOut<scalar_t>& out) {
  const Inputs<scalar_t, T> in(p, w2p, b2p);
  const int64_t K = p.k;
  at::parallel_for(0, p.m, kChunk, [&](int64_t begin, int64_t end) {
    Chunk<T> ch(in);
    for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
      gather_chunk(in, ch, c0, std::min(end, c0 + kChunk), [&](int64_t i) {
        T a[3], as[6], off[3];
        in.load(i, a, as);
        for (int64_t k = 0; k < K; ++k) {
          in.offset(i * K + k, off);
          out.store(i * K + k, invisible_gaussian<T>(a, off, as));
        }
      });
      if (ch.n == 0) continue;
      chunk_mlp(in, ch);
      for (int64_t r = 0; r < ch.n; ++r) {
        const int64_t i = ch.rows[r];
        T a[3], as[6], off[3], w;
        in.load(i, a, as);
        const T s = in.scale(i, &w);
        for (int64_t k = 0; k < K; ++k) {
          in.offset(i * K + k, off);
          out.store(i * K + k, visible_gaussian_activated<T>(head_out(ch.heads.data(), r, k, K), a, off, as, s));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> anchor_decode_fwd_cpu(
    const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets, const at::Tensor& anchor_scales,
    const at::Tensor& cam_center, const at::Tensor& w1_opacity, const at::Tensor& b1_opacity,
    const at::Tensor& w2_opacity, const at::Tensor& b2_opacity, const at::Tensor& w1_cov, const at::Tensor& b1_cov,
    const at::Tensor& w2_cov, const at::Tensor& b2_cov, const at::Tensor& w1_color, const at::Tensor& b1_color,
    const at::Tensor& w2_color, const at::Tensor& b2_color, const std::optional<at::Tensor>& appearance,
    const std::optional<at::Tensor>& opacity_scale, const std::optional<at::Tensor>& visible,
    const std::optional<at::Tensor>& blend_offset, const std::optional<at::Tensor>& blend_decay,
    const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay, int64_t blend_mode, bool opacity_dist,
    bool cov_dist, bool color_dist) {
  const Weights w = {w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,   b1_cov,
                     w2_cov,     b2_cov,     w1_color,   b1_color,   w2_color, b2_color};
  const Problem p = prepare("anchor_decode_fwd", anchors, feats, offsets, anchor_scales, cam_center, w, appearance,
                            opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode,
                            opacity_dist, cov_dist, color_dist, c10::DeviceType::CPU);
  auto outs = allocate_outputs(p);
  if (p.m == 0) return outs;
  auto& [means, quats, scales, opacities, colors, neural] = outs;
  const at::Tensor perm = cpu_row_order(p.k);
  const at::Tensor w2p = p.w2s.index_select(0, perm), b2p = p.b2s.index_select(0, perm);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "anchor_decode_fwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const FwdOut<scalar_t> out = {means.data_ptr<scalar_t>(),  quats.data_ptr<scalar_t>(),
                                  scales.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(),
                                  colors.data_ptr<scalar_t>(), neural.data_ptr<scalar_t>()};
    decode_fwd_kernel<scalar_t, T>(p, w2p, b2p, out);
  });
  return outs;
}

// The backward's outputs (storage dtype; the optional ones nullptr when absent) and its per-segment partial sums
// of the stacked weights' gradients [segments, 11K * H + 11K + 3H * (C + 4) + 3H] (math dtype; schema order).
// An output gradient [M, K(, D)] with any strides (the backward reads it in place, without a contiguous copy).
template <typename scalar_t>
struct GradIn {
  const scalar_t* data;
  int64_t s0, s1, s2;
  explicit GradIn(const at::Tensor& t)
      : data(t.data_ptr<scalar_t>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.dim() > 2 ? t.stride(2) : 0) {}
  scalar_t operator()(int64_t i, int64_t k, int64_t q = 0) const { return data[i * s0 + k * s1 + q * s2]; }
};

template <typename scalar_t, typename T>
struct BwdOut {
  GradIn<scalar_t> v_means, v_quats, v_scales, v_opacities, v_colors;
  scalar_t *v_anchors, *v_feats, *v_offsets, *v_anchor_scales, *v_opacity_scale, *v_blend_offset, *v_blend_decay;
  T* partials;
  int64_t partial_size;
};

// Offsets of the stacked weights' gradients in one partial-sum row.
struct PartialLayout {
  int64_t w2s, b2s, w1s, b1s, total;
  template <typename In>
  explicit PartialLayout(const In& in) {
    w2s = 0;
    b2s = w2s + in.nout * in.h;
    w1s = b2s + in.nout;
    b1s = w1s + 3 * in.h * in.xc;
    total = b1s + 3 * in.h;
  }
};

// One chunk of the backward: the epilogue VJP per (anchor, offset) into G [n, 11K] and the direct gradients, the
// chunk's terms of the weight gradients (added to `acc`), then v_x = v_hpre W1s and the view VJP.
template <typename scalar_t, typename T>
void chunk_bwd(const Inputs<scalar_t, T>& in, const BwdOut<scalar_t, T>& o, const PartialLayout& L, Chunk<T>& ch,
               std::vector<T>& g, std::vector<T>& v_hid, std::vector<T>& v_x, std::vector<T>& v_means_acc, T* acc) {
  const int64_t n = ch.n, K = in.k, nout = in.nout, h3 = 3 * in.h, xc = in.xc;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = ch.rows[r];
    T a[3], as[6], off[3], w = 1;
    in.load(i, a, as);
    const T s = in.scale(i, &w);
    T* v_anchor = v_means_acc.data() + 3 * r;
    T v_as[6] = {0, 0, 0, 0, 0, 0}, v_s = 0;
    v_anchor[0] = v_anchor[1] = v_anchor[2] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t ik = i * K + k;
      in.offset(ik, off);
      const HeadOut<T> h = head_out(ch.heads.data(), r, k, K);
      HeadOut<T> v_h{};
      T v_off[3] = {0, 0, 0};
      // A dropped Gaussian (visible_gaussian_activated's rule) runs the VJP of zero output gradients, which is
      // exactly zero: selects instead of a branch that mispredicts on ~half the Gaussians.
      const bool kept = h.opacity > T(0);
      auto grad = [kept](scalar_t v) { return kept ? T(v) : T(0); };
      GaussianGrad<T> vg;
      for (int q = 0; q < 3; ++q) {
        vg.v_mean[q] = grad(o.v_means(i, k, q));
        vg.v_scale[q] = grad(o.v_scales(i, k, q));
        vg.v_color[q] = grad(o.v_colors(i, k, q));
      }
      for (int q = 0; q < 4; ++q) vg.v_quat[q] = grad(o.v_quats(i, k, q));
      vg.v_opacity = grad(o.v_opacities(i, k));
      kept_gaussian_vjp_activated<T>(h, vg, off, as, s, v_h, v_off, v_as, v_anchor, v_s);
      store_head_grad(g.data() + r * in.nout, k, K, v_h);
      for (int q = 0; q < 3; ++q) o.v_offsets[3 * ik + q] = scalar_t(v_off[q]);
    }
    for (int q = 0; q < 6; ++q) o.v_anchor_scales[6 * i + q] = scalar_t(v_as[q]);
    // s = opacity_scale * w: each factor's gradient is v_s times the other.
    if (o.v_opacity_scale) o.v_opacity_scale[i] = scalar_t(v_s * w);
    if (o.v_blend_offset) {
      const T v_w = in.opacity_scale ? v_s * T(in.opacity_scale[i]) : v_s;
      const BlendGrad<T> bg =
          blend_weight_vjp<T>(v_w, T(in.blend_offset[i]), T(in.blend_decay[i]), in.tau, in.lambda, in.mode);
      o.v_blend_offset[i] = scalar_t(bg.v_offset);
      o.v_blend_decay[i] = scalar_t(bg.v_decay);
    }
  }
  // Second layers, per head (G's schema order): v_W2 += G_h^T relu(H)_h, v_b2 += sum G, v_relu_h = G_h W2_h.
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t q = 0; q < nout; ++q) acc[L.b2s + q] += g[r * nout + q];
  }
  for (int head = 0; head < kNumHeads; ++head) {
    const int64_t off = head == kOpacity ? 0 : head == kCov ? K : 8 * K;
    const int64_t size = head == kOpacity ? K : head == kCov ? 7 * K : 3 * K, hh = head * in.h;
    const at::Tensor g_h = blob(g.data() + off, n, size, nout);
    blob(acc + L.w2s + off * in.h, size, in.h, in.h).addmm_(g_h.t(), blob(ch.hid.data() + hh, n, in.h, h3));
    at::Tensor v_relu = blob(v_hid.data() + hh, n, in.h, h3);
    at::mm_out(v_relu, g_h, blob(in.w2_schema + off * in.h, size, in.h, in.h));
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t q = 0; q < h3; ++q) {
      T& v = v_hid[r * h3 + q];
      v = ch.hid[r * h3 + q] > T(0) ? v : T(0);  // relu's backward
      acc[L.b1s + q] += v;
    }
  }
  // First layers: v_W1s += v_hpre^T x, v_x = v_hpre W1s.
  const at::Tensor v_hpre = blob(v_hid.data(), n, h3, h3);
  blob(acc + L.w1s, h3, xc, xc).addmm_(v_hpre.t(), blob(ch.x.data(), n, xc, xc));
  at::Tensor v_x_t = blob(v_x.data(), n, xc, xc);
  at::mm_out(v_x_t, v_hpre, blob(in.w1s, h3, xc, xc));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = ch.rows[r];
    const T* vr = v_x.data() + r * xc;
    T* va = v_means_acc.data() + 3 * r;
    const T a[3] = {T(in.anchors[3 * i]), T(in.anchors[3 * i + 1]), T(in.anchors[3 * i + 2])};
    view_dir_vjp<T>(a, in.cam, vr + in.c, vr[in.c + 3], va);
    for (int q = 0; q < 3; ++q) o.v_anchors[3 * i + q] = scalar_t(va[q]);
    for (int64_t q = 0; q < in.c; ++q) o.v_feats[i * in.c + q] = scalar_t(vr[q]);
  }
}

// Zero gradients of an invisible anchor.
template <typename scalar_t, typename T>
void invisible_bwd(const Inputs<scalar_t, T>& in, const BwdOut<scalar_t, T>& o, int64_t i) {
  const scalar_t zero(0);
  std::fill(o.v_offsets + 3 * in.k * i, o.v_offsets + 3 * in.k * (i + 1), zero);
  std::fill(o.v_anchor_scales + 6 * i, o.v_anchor_scales + 6 * (i + 1), zero);
  std::fill(o.v_anchors + 3 * i, o.v_anchors + 3 * (i + 1), zero);
  std::fill(o.v_feats + in.c * i, o.v_feats + in.c * (i + 1), zero);
  if (o.v_opacity_scale) o.v_opacity_scale[i] = zero;
  if (o.v_blend_offset) o.v_blend_offset[i] = zero, o.v_blend_decay[i] = zero;
}

// Anchors split into `segments` fixed ranges (independent of the thread count: the sums are deterministic), each
// processed chunk by chunk into its own row of partial sums.
template <typename scalar_t, typename T>
void decode_bwd_kernel(const Inputs<scalar_t, T>& in, const BwdOut<scalar_t, T>& o, int64_t m, int64_t segments,
                       int64_t seg_size) {
  const PartialLayout L(in);
  at::parallel_for(0, segments, 1, [&](int64_t begin, int64_t end) {
    Chunk<T> ch(in);
    std::vector<T> g(kChunk * in.nout), v_hid(kChunk * 3 * in.h), v_x(kChunk * in.xc), v_means_acc(kChunk * 3);
    for (int64_t seg = begin; seg < end; ++seg) {
      T* acc = o.partials + seg * o.partial_size;
      const int64_t s1 = std::min(m, (seg + 1) * seg_size);
      for (int64_t c0 = seg * seg_size; c0 < s1; c0 += kChunk) {
        gather_chunk(in, ch, c0, std::min(s1, c0 + kChunk), [&](int64_t i) { invisible_bwd(in, o, i); });
        if (ch.n == 0) continue;
        chunk_mlp(in, ch);
        chunk_bwd(in, o, L, ch, g, v_hid, v_x, v_means_acc, acc);
      }
    }
  });
}

DecodeBwdResult anchor_decode_bwd_cpu(
    const at::Tensor& v_means, const at::Tensor& v_quats, const at::Tensor& v_scales, const at::Tensor& v_opacities,
    const at::Tensor& v_colors, const at::Tensor& anchors, const at::Tensor& feats, const at::Tensor& offsets,
    const at::Tensor& anchor_scales, const at::Tensor& cam_center, const at::Tensor& w1_opacity,
    const at::Tensor& b1_opacity, const at::Tensor& w2_opacity, const at::Tensor& b2_opacity, const at::Tensor& w1_cov,
    const at::Tensor& b1_cov, const at::Tensor& w2_cov, const at::Tensor& b2_cov, const at::Tensor& w1_color,
    const at::Tensor& b1_color, const at::Tensor& w2_color, const at::Tensor& b2_color,
    const std::optional<at::Tensor>& appearance, const std::optional<at::Tensor>& opacity_scale,
    const std::optional<at::Tensor>& visible, const std::optional<at::Tensor>& blend_offset,
    const std::optional<at::Tensor>& blend_decay, const std::optional<at::Tensor>& tau_t, double tau,
    double lambda_decay, int64_t blend_mode, bool opacity_dist, bool cov_dist, bool color_dist) {
  const Weights w = {w1_opacity, b1_opacity, w2_opacity, b2_opacity, w1_cov,   b1_cov,
                     w2_cov,     b2_cov,     w1_color,   b1_color,   w2_color, b2_color};
  const Problem p = prepare("anchor_decode_bwd", anchors, feats, offsets, anchor_scales, cam_center, w, appearance,
                            opacity_scale, visible, blend_offset, blend_decay, tau_t, tau, lambda_decay, blend_mode,
                            opacity_dist, cov_dist, color_dist, c10::DeviceType::CPU);
  const OutputGrads v = prepare_grads(v_means, v_quats, v_scales, v_opacities, v_colors, p, /*contiguous=*/false);
  const auto opt = p.feats.options();
  auto per_anchor = [&](bool present) { return present ? at::empty({p.m}, opt) : at::empty({0}, opt); };
  at::Tensor v_anchors = at::empty({p.m, 3}, opt), v_feats = at::empty({p.m, p.c}, opt),
             v_offsets = at::empty({p.m, p.k, 3}, opt), v_anchor_scales = at::empty({p.m, 6}, opt),
             v_opacity_scale = per_anchor(p.has_scale()), v_blend_offset = per_anchor(p.has_blend()),
             v_blend_decay = per_anchor(p.has_blend());
  const int64_t chunks = (p.m + kChunk - 1) / kChunk;
  const int64_t segments = std::min(chunks, kMaxSegments);
  const int64_t seg_size = segments ? (chunks + segments - 1) / segments * kChunk : kChunk;
  const int64_t nout = kHeadOut * p.k, h3 = 3 * p.h;
  const int64_t psize = nout * p.h + nout + h3 * p.x_cols() + h3;
  const at::Tensor perm = cpu_row_order(p.k);
  const at::Tensor w2p = p.w2s.index_select(0, perm), b2p = p.b2s.index_select(0, perm);
  at::Tensor partials = at::zeros({std::max<int64_t>(segments, 1), psize}, opt.dtype(p.math));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "anchor_decode_bwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    auto opt_ptr = [](at::Tensor& t, bool present) { return present ? t.data_ptr<scalar_t>() : nullptr; };
    const BwdOut<scalar_t, T> o = {GradIn<scalar_t>(v.means),
                                   GradIn<scalar_t>(v.quats),
                                   GradIn<scalar_t>(v.scales),
                                   GradIn<scalar_t>(v.opacities),
                                   GradIn<scalar_t>(v.colors),
                                   v_anchors.data_ptr<scalar_t>(),
                                   v_feats.data_ptr<scalar_t>(),
                                   v_offsets.data_ptr<scalar_t>(),
                                   v_anchor_scales.data_ptr<scalar_t>(),
                                   opt_ptr(v_opacity_scale, p.has_scale()),
                                   opt_ptr(v_blend_offset, p.has_blend()),
                                   opt_ptr(v_blend_decay, p.has_blend()),
                                   partials.data_ptr<T>(),
                                   psize};
    if (p.m > 0) decode_bwd_kernel<scalar_t, T>(Inputs<scalar_t, T>(p, w2p, b2p), o, p.m, segments, seg_size);
  });
  // Fixed-order sum of the partials (deterministic), then the per-head weight gradients.
  const at::Tensor total = partials.sum(0);
  int64_t at_ = 0;
  auto take = [&](int64_t size, at::IntArrayRef shape) {
    at::Tensor t = total.narrow(0, at_, size).view(shape);
    at_ += size;
    return t;
  };
  const at::Tensor v_w2s = take(nout * p.h, {nout, p.h}), v_b2s = take(nout, {nout});
  const at::Tensor v_w1s = take(h3 * p.x_cols(), {h3, p.x_cols()}), v_b1s = take(h3, {h3});
  const WeightGrads wg = assemble_weight_grads(p, w, appearance, v_w1s, v_b1s, v_w2s, v_b2s);
  return decode_bwd_result(v_anchors, v_feats, v_offsets, v_anchor_scales, wg, v_opacity_scale, v_blend_offset,
                           v_blend_decay);
}

// ---------------------------------------------------------------------------------------------------------
// Blend weight.

at::Tensor anchor_blend_weight_fwd_cpu(const at::Tensor& offset, const at::Tensor& decay,
                                       const std::optional<at::Tensor>& tau_t, double tau, double lambda_decay,
                                       int64_t blend_mode) {
  const BlendProblem b =
      prepare_blend("anchor_blend_weight_fwd", offset, decay, tau_t, tau, lambda_decay, blend_mode, c10::kCPU);
  at::Tensor out = at::empty_like(b.offset);
  const double tau_v = b.tau.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.offset.scalar_type(), "anchor_blend_weight_fwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* o = b.offset.data_ptr<scalar_t>();
    const scalar_t* dc = b.decay.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const T t = T(tau_v), l = T(b.lambda);
    const int mode = int(b.mode);
    at::parallel_for(0, b.offset.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = scalar_t(blend_weight<T>(T(o[i]), T(dc[i]), t, l, mode));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> anchor_blend_weight_bwd_cpu(const at::Tensor& v_w, const at::Tensor& offset,
                                                               const at::Tensor& decay,
                                                               const std::optional<at::Tensor>& tau_t, double tau,
                                                               double lambda_decay, int64_t blend_mode) {
  const char* op = "anchor_blend_weight_bwd";
  const BlendProblem b = prepare_blend(op, offset, decay, tau_t, tau, lambda_decay, blend_mode, c10::kCPU);
  TORCH_CHECK_VALUE(v_w.device() == offset.device(), op, ": v_w is on ", v_w.device(), " but offset is on ",
                    offset.device());
  TORCH_CHECK_TYPE(at::isFloatingType(v_w.scalar_type()), op, ": v_w must be a floating-point tensor, got ",
                   v_w.scalar_type());
  TORCH_CHECK_VALUE(v_w.sizes() == offset.sizes(), op, ": v_w must have shape ", offset.sizes(), ", got ", v_w.sizes());
  const at::Tensor vw = v_w.to(offset.scalar_type()).contiguous();
  at::Tensor v_offset = at::empty_like(b.offset), v_decay = at::empty_like(b.offset);
  const double tau_v = b.tau.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.offset.scalar_type(), "anchor_blend_weight_bwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* o = b.offset.data_ptr<scalar_t>();
    const scalar_t* dc = b.decay.data_ptr<scalar_t>();
    const scalar_t* g = vw.data_ptr<scalar_t>();
    scalar_t *vo = v_offset.data_ptr<scalar_t>(), *vd = v_decay.data_ptr<scalar_t>();
    const T t = T(tau_v), l = T(b.lambda);
    const int mode = int(b.mode);
    at::parallel_for(0, b.offset.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const BlendGrad<T> bg = blend_weight_vjp<T>(T(g[i]), T(o[i]), T(dc[i]), t, l, mode);
        vo[i] = scalar_t(bg.v_offset);
        vd[i] = scalar_t(bg.v_decay);
      }
    });
  });
  return {v_offset, v_decay};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("anchor_blend_weight_fwd", &anchor_blend_weight_fwd_cpu);
  m.impl("anchor_blend_weight_bwd", &anchor_blend_weight_bwd_cpu);
  m.impl("anchor_decode_fwd", &anchor_decode_fwd_cpu);
  m.impl("anchor_decode_bwd", &anchor_decode_bwd_cpu);
}

}  // namespace anchors
}  // namespace pyops
