// Calls pyops::anchor_decode_fwd / _bwd and anchor_blend_weight_fwd / _bwd through the dispatcher from C++ (the
// libtorch build) and compares with an ATen float64 computation of pyops/reference/anchors.py (its gradients by
// autograd) on a small random case: some anchors invisible, some Gaussians dropped, appearance, opacity scale,
// the blend weight and a distance input; float64 and float32 inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  if (got.sizes() != want.sizes()) {
    std::printf("FAIL %s: shape mismatch\n", what.c_str());
    ++failures;
    return;
  }
  const double err = got.numel() ? (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() : 0.0;
  const double scale = want.numel() ? std::max(1.0, want.abs().max().item<double>()) : 1.0;
  if (!(err <= tol * scale)) {
    std::printf("FAIL %s: max error %.3e > %.1e\n", what.c_str(), err, tol * scale);
    ++failures;
  }
}

std::vector<c10::IValue> call(const char* name, std::vector<c10::IValue> stack) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  op.callBoxed(&stack);
  return stack;
}

at::Tensor head(const at::Tensor& x, const at::Tensor* w) {
  return at::linear(at::relu(at::linear(x, w[0], w[1])), w[2], w[3]);
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t M = 23, K = 4, C = 6, H = 8, A = 3;
  const bool dist[3] = {true, false, true};
  const double tau = 0.3, lambda = 0.8;
  const int64_t mode = 0;
  auto opt = at::TensorOptions().dtype(at::kDouble);
  at::Tensor anchors = at::randn({M, 3}, opt) * 2, feats = at::randn({M, C}, opt), offsets = at::randn({M, K, 3}, opt),
             anchor_scales = at::rand({M, 6}, opt) + 0.1, cam = at::randn({3}, opt), appearance = at::randn({A}, opt),
             opacity_scale = at::rand({M}, opt) + 0.5, blend_offset = at::randn({M}, opt),
             blend_decay = at::rand({M}, opt);
  const at::Tensor visible = at::rand({M}) > 0.25;
  std::vector<at::Tensor> w;
  for (int h = 0; h < 3; ++h) {
    const int64_t in = C + 3 + (dist[h] ? 1 : 0) + (h == 2 ? A : 0), out = h == 0 ? K : h == 1 ? 7 * K : 3 * K;
    w.push_back(at::randn({H, in}, opt) / std::sqrt(double(in)));
    w.push_back(at::randn({H}, opt) * 0.3);
    w.push_back(at::randn({out, H}, opt) / std::sqrt(double(H)));
    w.push_back(at::randn({out}, opt) * 0.3 + (h == 0 ? 0.3 : 0.0));
  }

  // The reference in float64 with autograd: leaves in the order of the backward's outputs.
  std::vector<at::Tensor> leaves = {anchors, feats, offsets, anchor_scales};
  leaves.insert(leaves.end(), w.begin(), w.end());
  for (const auto& t : {appearance, opacity_scale, blend_offset, blend_decay}) leaves.push_back(t);
  for (auto& t : leaves) t = t.detach().clone().set_requires_grad(true);
  const at::Tensor &a = leaves[0], &f = leaves[1], &o = leaves[2], &s = leaves[3];
  const at::Tensor view = a - cam, dd = view.norm(2, {1}, true), dirs = view / dd.clamp_min(1e-12);
  auto inputs = [&](bool use_dist) { return use_dist ? at::cat({f, dirs, dd}, 1) : at::cat({f, dirs}, 1); };
  const at::Tensor color_in = at::cat({inputs(dist[2]), leaves[16].expand({M, A})}, 1);
  const at::Tensor neural = at::tanh(head(inputs(dist[0]), &leaves[4]));
  const at::Tensor cov = head(inputs(dist[1]), &leaves[8]).view({M, K, 7});
  const at::Tensor colors = at::sigmoid(head(color_in, &leaves[12])).view({M, K, 3});
  const at::Tensor scales = s.slice(1, 3, 6).unsqueeze(1) * at::sigmoid(cov.slice(2, 0, 3));
  const at::Tensor qr = cov.slice(2, 3, 7);
  const at::Tensor quats = qr / qr.norm(2, {2}, true).clamp_min(1e-12);
  const at::Tensor means = a.unsqueeze(1) + o * s.slice(1, 0, 3).unsqueeze(1);
  const at::Tensor bw = at::exp(-lambda * leaves[19] * (tau - leaves[18]).abs());
  const at::Tensor scale = leaves[17] * bw;
  const at::Tensor keep = (neural > 0) & visible.unsqueeze(1);
  const at::Tensor zero = at::zeros({}, opt);
  const at::Tensor opac = at::where(keep, neural * scale.unsqueeze(1), zero);
  auto kept = [&](const at::Tensor& v, const at::Tensor& fill) {
    return at::where(visible.view({M, 1, 1}), at::where(keep.unsqueeze(2), v, v.detach()), fill);
  };
  const std::vector<at::Tensor> ref = {at::where(keep.unsqueeze(2), means, means.detach()),
                                       kept(quats, at::tensor({1.0, 0.0, 0.0, 0.0}, opt)),
                                       kept(scales, at::zeros({3}, opt)),
                                       opac,
                                       kept(colors, at::zeros({3}, opt)),
                                       at::where(visible.unsqueeze(1), neural, zero).detach()};
  std::vector<at::Tensor> cots;
  for (int i = 0; i < 5; ++i) cots.push_back(at::randn(ref[i].sizes(), opt));
  const auto ref_grads = torch::autograd::grad({ref[0], ref[1], ref[2], ref[3], ref[4]}, leaves,
                                               {cots[0], cots[1], cots[2], cots[3], cots[4]}, true, false, true);

  for (auto dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-10 : 2e-4;
    const char* dn = dtype == at::kDouble ? " (float64)" : " (float32)";
    auto in = [&](const at::Tensor& t) { return t.detach().to(dtype); };
    std::vector<c10::IValue> args = {in(anchors), in(feats), in(offsets), in(anchor_scales), in(cam)};
    for (const auto& t : w) args.push_back(in(t));
    args.insert(args.end(), {in(appearance), in(opacity_scale), visible, in(blend_offset), in(blend_decay),
                             c10::IValue(), tau, lambda, mode, dist[0], dist[1], dist[2]});
    const auto out = call("pyops::anchor_decode_fwd", args);
    const char* names[6] = {"means", "quats", "scales", "opacities", "colors", "neural_opacity"};
    for (int i = 0; i < 6; ++i) {
      expect_close(std::string(names[i]) + dn, out[i].toTensor(), ref[i].detach(), tol);
      if (out[i].toTensor().scalar_type() != dtype) {
        std::printf("FAIL %s%s: wrong dtype\n", names[i], dn);
        ++failures;
      }
    }
    std::vector<c10::IValue> bargs;
    for (const auto& c : cots) bargs.push_back(c.to(dtype));
    bargs.insert(bargs.end(), args.begin(), args.end());
    const auto grads = call("pyops::anchor_decode_bwd", bargs);
    for (size_t i = 0; i < leaves.size(); ++i)
      expect_close("gradient " + std::to_string(i) + dn, grads[i].toTensor(), ref_grads[i], tol * 10);

    // Blend weight: the op against exp(-lambda * decay * |tau - offset|) and its autograd gradients.
    const auto bwo =
        call("pyops::anchor_blend_weight_fwd", {in(blend_offset), in(blend_decay), c10::IValue(), tau, lambda, mode});
    expect_close(std::string("blend weight") + dn, bwo[0].toTensor(), bw.detach(), tol);
    const at::Tensor v_w = at::randn({M}, opt);
    const auto bg = torch::autograd::grad({bw}, {leaves[18], leaves[19]}, {v_w}, true);
    const auto bwg = call("pyops::anchor_blend_weight_bwd",
                          {v_w.to(dtype), in(blend_offset), in(blend_decay), c10::IValue(), tau, lambda, mode});
    expect_close(std::string("blend v_offset") + dn, bwg[0].toTensor(), bg[0], tol * 10);
    expect_close(std::string("blend v_decay") + dn, bwg[1].toTensor(), bg[1], tol * 10);
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
