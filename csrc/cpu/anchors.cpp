// CPU backend of pyops::anchor_blend_weight_{fwd,bwd} and pyops::anchor_decode_{fwd,bwd}.
//
// Decode runs the MLP on the visible anchors only (a host-side index list): X = [feat, dir, dist] [Mv, C + 4]
// in the math dtype, one GEMM for the three first layers (Problem::w1s), ReLU, one GEMM per second layer, then
// one fused epilogue pass over the anchors (at::parallel_for) that writes the dense outputs (the fills for
// invisible anchors). The backward recomputes the GEMMs, runs the epilogue's VJP in one pass (the head gradients
// G [Mv, 11K] and the direct gradients), the shared GEMM stage (weight_grads) and finally the view VJP.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "pyops/anchors.h"
#include "pyops/anchors_math.h"

namespace pyops {
namespace anchors {
namespace {

constexpr int64_t kGrain = 64;  // anchors per at::parallel_for task

// Visible anchors: rows[j] is the anchor of compact row j; row_of[i] is i's row or -1.
struct Compaction {
  std::vector<int64_t> rows, row_of;
};

Compaction compact(const Problem& p) {
  Compaction c;
  c.row_of.assign(p.m, -1);
  c.rows.reserve(p.m);
  const bool* vis = p.has_visible() ? p.visible.data_ptr<bool>() : nullptr;
  for (int64_t i = 0; i < p.m; ++i) {
    if (vis && !vis[i]) continue;
    c.row_of[i] = int64_t(c.rows.size());
    c.rows.push_back(i);
  }
  return c;
}

template <typename T>
struct HeadMatrices {
  at::Tensor x, r;            // [Mv, C + 4], [Mv, 3H] (relu applied)
  at::Tensor out[kNumHeads];  // [Mv, K], [Mv, 7K], [Mv, 3K]
};

// X, the hidden activations and the three heads' outputs of the visible anchors.
template <typename scalar_t, typename T>
HeadMatrices<T> run_mlp(const Problem& p, const Compaction& cmp) {
  HeadMatrices<T> hm;
  const int64_t mv = int64_t(cmp.rows.size()), xc = p.x_cols(), c = p.c;
  hm.x = at::empty({mv, xc}, p.feats.options().dtype(p.math));
  const scalar_t* feats = p.feats.data_ptr<scalar_t>();
  const scalar_t* anchors = p.anchors.data_ptr<scalar_t>();
  const T* cam = p.cam.data_ptr<T>();
  T* x = hm.x.template data_ptr<T>();
  at::parallel_for(0, mv, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t i = cmp.rows[j];
      T* xr = x + j * xc;
      for (int64_t q = 0; q < c; ++q) xr[q] = static_cast<T>(feats[i * c + q]);
      const T a[3] = {T(anchors[3 * i]), T(anchors[3 * i + 1]), T(anchors[3 * i + 2])};
      xr[c + 3] = view_dir<T>(a, cam, xr + c);
    }
  });
  hm.r = at::addmm(p.b1s, hm.x, p.w1s.t()).relu_();
  for (int head = 0; head < kNumHeads; ++head) {
    const int64_t o = p.out_offset(head), n = p.out_size(head);
    hm.out[head] = at::addmm(p.b2s.narrow(0, o, n), hm.r.narrow(1, head * p.h, p.h), p.w2s.narrow(0, o, n).t());
  }
  return hm;
}

// Raw per-anchor inputs for the epilogues.
template <typename scalar_t, typename T>
struct AnchorInputs {
  const scalar_t *anchors, *offsets, *anchor_scales, *opacity_scale, *blend_offset, *blend_decay;
  T tau, lambda;
  int mode;

  AnchorInputs(const Problem& p)
      : anchors(p.anchors.data_ptr<scalar_t>()),
        offsets(p.offsets.data_ptr<scalar_t>()),
        anchor_scales(p.anchor_scales.data_ptr<scalar_t>()),
        opacity_scale(p.has_scale() ? p.opacity_scale.data_ptr<scalar_t>() : nullptr),
        blend_offset(p.has_blend() ? p.blend_offset.data_ptr<scalar_t>() : nullptr),
        blend_decay(p.has_blend() ? p.blend_decay.data_ptr<scalar_t>() : nullptr),
        tau(T(tau_on_host(p))),
        lambda(T(p.lambda)),
        mode(int(p.mode)) {}

  void load(int64_t i, T* a, T* as) const {
    for (int q = 0; q < 3; ++q) a[q] = T(anchors[3 * i + q]);
    for (int q = 0; q < 6; ++q) as[q] = T(anchor_scales[6 * i + q]);
  }
  void offset(int64_t i, int64_t k, int64_t K, T* o) const {
    for (int q = 0; q < 3; ++q) o[q] = T(offsets[(i * K + k) * 3 + q]);
  }
  // The anchor's opacity scale s and the blend weight w (1 without blend).
  T scale(int64_t i, T* w) const {
    return opacity_scale_of<T>(opacity_scale != nullptr, opacity_scale ? T(opacity_scale[i]) : T(1),
                               blend_offset != nullptr, blend_offset ? T(blend_offset[i]) : T(0),
                               blend_decay ? T(blend_decay[i]) : T(0), tau, lambda, mode, w);
  }
};

template <typename T>
HeadOut<T> head_out(const T* const* out, int64_t j, int64_t k, int64_t K) {
  HeadOut<T> h;
  h.opacity = out[kOpacity][j * K + k];
  for (int q = 0; q < 7; ++q) h.cov[q] = out[kCov][(j * K + k) * 7 + q];
  for (int q = 0; q < 3; ++q) h.color[q] = out[kColor][(j * K + k) * 3 + q];
  return h;
}

template <typename scalar_t, typename T>
void decode_fwd_kernel(const Problem& p, const Compaction& cmp, const HeadMatrices<T>& hm, at::Tensor& means,
                       at::Tensor& quats, at::Tensor& scales, at::Tensor& opacities, at::Tensor& colors,
                       at::Tensor& neural) {
  const AnchorInputs<scalar_t, T> in(p);
  const T* out[kNumHeads] = {hm.out[0].template data_ptr<T>(), hm.out[1].template data_ptr<T>(),
                             hm.out[2].template data_ptr<T>()};
  scalar_t *mp = means.data_ptr<scalar_t>(), *qp = quats.data_ptr<scalar_t>(), *sp = scales.data_ptr<scalar_t>(),
           *op = opacities.data_ptr<scalar_t>(), *cp = colors.data_ptr<scalar_t>(), *np = neural.data_ptr<scalar_t>();
  const int64_t K = p.k;
  at::parallel_for(0, p.m, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T a[3], as[6], w;
      in.load(i, a, as);
      const int64_t j = cmp.row_of[i];
      const T s = j >= 0 ? in.scale(i, &w) : T(0);
      for (int64_t k = 0; k < K; ++k) {
        T off[3];
        in.offset(i, k, K, off);
        const Gaussian<T> g =
            j >= 0 ? visible_gaussian<T>(head_out<T>(out, j, k, K), a, off, as, s) : invisible_gaussian<T>(a, off, as);
        const int64_t ik = i * K + k;
        for (int q = 0; q < 3; ++q) {
          mp[3 * ik + q] = scalar_t(g.mean[q]);
          sp[3 * ik + q] = scalar_t(g.scale[q]);
          cp[3 * ik + q] = scalar_t(g.color[q]);
        }
        for (int q = 0; q < 4; ++q) qp[4 * ik + q] = scalar_t(g.quat[q]);
        op[ik] = scalar_t(g.opacity);
        np[ik] = scalar_t(g.neural_opacity);
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
  const Compaction cmp = compact(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "anchor_decode_fwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const HeadMatrices<T> hm = run_mlp<scalar_t, T>(p, cmp);
    decode_fwd_kernel<scalar_t, T>(p, cmp, hm, means, quats, scales, opacities, colors, neural);
  });
  return outs;
}

// The backward's tensors: dense direct gradients in the storage dtype, G and the anchors' means gradient in
// the math dtype.
struct DecodeGrads {
  at::Tensor v_offsets, v_anchor_scales, v_opacity_scale, v_blend_offset, v_blend_decay;
  at::Tensor G, v_anchor_means;  // [Mv, 11K], [M, 3]
};

template <typename scalar_t, typename T>
void decode_bwd_kernel(const Problem& p, const Compaction& cmp, const HeadMatrices<T>& hm, const OutputGrads& v,
                       DecodeGrads& d) {
  const AnchorInputs<scalar_t, T> in(p);
  const T* out[kNumHeads] = {hm.out[0].template data_ptr<T>(), hm.out[1].template data_ptr<T>(),
                             hm.out[2].template data_ptr<T>()};
  const scalar_t *vm = v.means.data_ptr<scalar_t>(), *vq = v.quats.data_ptr<scalar_t>(),
                 *vs = v.scales.data_ptr<scalar_t>(), *vo = v.opacities.data_ptr<scalar_t>(),
                 *vc = v.colors.data_ptr<scalar_t>();
  T* G = d.G.data_ptr<T>();
  T* v_anchor_means = d.v_anchor_means.data_ptr<T>();
  scalar_t* v_offsets = d.v_offsets.data_ptr<scalar_t>();
  scalar_t* v_anchor_scales = d.v_anchor_scales.data_ptr<scalar_t>();
  scalar_t* v_opacity_scale = p.has_scale() ? d.v_opacity_scale.data_ptr<scalar_t>() : nullptr;
  scalar_t* v_blend_offset = p.has_blend() ? d.v_blend_offset.data_ptr<scalar_t>() : nullptr;
  scalar_t* v_blend_decay = p.has_blend() ? d.v_blend_decay.data_ptr<scalar_t>() : nullptr;
  const int64_t K = p.k, gcols = kHeadOut * K;
  at::parallel_for(0, p.m, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = cmp.row_of[i];
      T v_anchor[3] = {0, 0, 0}, v_as[6] = {0, 0, 0, 0, 0, 0}, v_s = 0, w = 1;
      if (j < 0) {
        for (int64_t q = 0; q < 3 * K; ++q) v_offsets[3 * i * K + q] = scalar_t(0);
      } else {
        T a[3], as[6];
        in.load(i, a, as);
        const T s = in.scale(i, &w);
        T* g_row = G + j * gcols;
        for (int64_t k = 0; k < K; ++k) {
          T off[3];
          in.offset(i, k, K, off);
          const HeadOut<T> h = head_out<T>(out, j, k, K);
          const Gaussian<T> g = visible_gaussian<T>(h, a, off, as, s);
          const int64_t ik = i * K + k;
          HeadOut<T> v_h{};
          T v_off[3] = {0, 0, 0};
          if (g.kept) {
            GaussianGrad<T> vg;
            for (int q = 0; q < 3; ++q) {
              vg.v_mean[q] = T(vm[3 * ik + q]);
              vg.v_scale[q] = T(vs[3 * ik + q]);
              vg.v_color[q] = T(vc[3 * ik + q]);
            }
            for (int q = 0; q < 4; ++q) vg.v_quat[q] = T(vq[4 * ik + q]);
            vg.v_opacity = T(vo[ik]);
            kept_gaussian_vjp<T>(h, vg, off, as, s, v_h, v_off, v_as, v_anchor, v_s);
          }
          g_row[k] = v_h.opacity;
          for (int q = 0; q < 7; ++q) g_row[K + 7 * k + q] = v_h.cov[q];
          for (int q = 0; q < 3; ++q) {
            g_row[8 * K + 3 * k + q] = v_h.color[q];
            v_offsets[3 * ik + q] = scalar_t(v_off[q]);
          }
        }
      }
      for (int q = 0; q < 3; ++q) v_anchor_means[3 * i + q] = v_anchor[q];
      for (int q = 0; q < 6; ++q) v_anchor_scales[6 * i + q] = scalar_t(v_as[q]);
      // s = opacity_scale * w: each factor's gradient is v_s times the other.
      if (v_opacity_scale) v_opacity_scale[i] = scalar_t(v_s * w);
      if (v_blend_offset) {
        const T v_w = v_opacity_scale ? v_s * T(in.opacity_scale[i]) : v_s;
        const BlendGrad<T> bg =
            blend_weight_vjp<T>(v_w, T(in.blend_offset[i]), T(in.blend_decay[i]), in.tau, in.lambda, in.mode);
        v_blend_offset[i] = scalar_t(bg.v_offset);
        v_blend_decay[i] = scalar_t(bg.v_decay);
      }
    }
  });
}

// v_anchors = the means' part + the view VJP of v_X's dir/dist columns; v_feats = v_X's feature columns.
template <typename scalar_t, typename T>
void view_bwd_kernel(const Problem& p, const Compaction& cmp, const at::Tensor& v_x_t, const at::Tensor& v_means_t,
                     at::Tensor& v_anchors_t, at::Tensor& v_feats_t) {
  const T* v_x = v_x_t.template data_ptr<T>();
  const T* v_means = v_means_t.data_ptr<T>();
  const T* cam = p.cam.data_ptr<T>();
  const scalar_t* anchors = p.anchors.data_ptr<scalar_t>();
  scalar_t* v_anchors = v_anchors_t.data_ptr<scalar_t>();
  scalar_t* v_feats = v_feats_t.data_ptr<scalar_t>();
  const int64_t c = p.c, xc = p.x_cols();
  at::parallel_for(0, p.m, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = cmp.row_of[i];
      T va[3] = {v_means[3 * i], v_means[3 * i + 1], v_means[3 * i + 2]};
      if (j >= 0) {
        const T* vr = v_x + j * xc;
        const T a[3] = {T(anchors[3 * i]), T(anchors[3 * i + 1]), T(anchors[3 * i + 2])};
        view_dir_vjp<T>(a, cam, vr + c, vr[c + 3], va);
        for (int64_t q = 0; q < c; ++q) v_feats[i * c + q] = scalar_t(vr[q]);
      } else {
        for (int64_t q = 0; q < c; ++q) v_feats[i * c + q] = scalar_t(0);
      }
      for (int q = 0; q < 3; ++q) v_anchors[3 * i + q] = scalar_t(va[q]);
    }
  });
}

using DecodeBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

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
  const OutputGrads v = prepare_grads(v_means, v_quats, v_scales, v_opacities, v_colors, p);
  const Compaction cmp = compact(p);
  const int64_t mv = int64_t(cmp.rows.size());
  const auto opt = p.feats.options();
  const auto mopt = opt.dtype(p.math);
  auto per_anchor = [&](bool present) { return present ? at::empty({p.m}, opt) : at::empty({0}, opt); };
  DecodeGrads d{at::empty({p.m, p.k, 3}, opt), at::empty({p.m, 6}, opt),  per_anchor(p.has_scale()),
                per_anchor(p.has_blend()),     per_anchor(p.has_blend()), at::empty({mv, kHeadOut * p.k}, mopt),
                at::empty({p.m, 3}, mopt)};
  at::Tensor v_anchors = at::empty({p.m, 3}, opt), v_feats = at::empty({p.m, p.c}, opt);
  WeightGrads wg;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dtype, "anchor_decode_bwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const HeadMatrices<T> hm = run_mlp<scalar_t, T>(p, cmp);
    if (p.m > 0) decode_bwd_kernel<scalar_t, T>(p, cmp, hm, v, d);
    wg = weight_grads(p, w, appearance, d.G, hm.r, hm.x);
    if (p.m > 0) view_bwd_kernel<scalar_t, T>(p, cmp, wg.v_x, d.v_anchor_means, v_anchors, v_feats);
  });
  const Weights& g = wg.v_w;
  return {v_anchors,
          v_feats,
          d.v_offsets,
          d.v_anchor_scales,
          g[0],
          g[1],
          g[2],
          g[3],
          g[4],
          g[5],
          g[6],
          g[7],
          g[8],
          g[9],
          g[10],
          g[11],
          wg.v_appearance,
          d.v_opacity_scale,
          d.v_blend_offset,
          d.v_blend_decay};
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
