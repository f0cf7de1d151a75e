// CPU backend of pyops::gs_project_fwd / gs_project_bwd / gs_sh_fwd / gs_sh_bwd: per-(camera, Gaussian)
// projection and per-row spherical harmonics, with the math in pyops/gaussians_math.h and the argument checks
// and output allocation in pyops/gaussians.h (shared with the CUDA backend).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pyops/gaussians_math.h"
#include "pyops/gaussians.h"

namespace pyops {
namespace gs {
namespace {

constexpr int64_t kProjectGrain = 256;
constexpr int64_t kShGrain = 1024;

template <typename T>
void project_fwd_kernel(const ProjectInputs& p, T eps2d, T near_plane, T far_plane, T radius_clip, bool antialiased,
                        ProjectOutputs& o) {
  const T* means = p.means.data_ptr<T>();
  const T* quats = p.quats.data_ptr<T>();
  const T* scales = p.scales.data_ptr<T>();
  const T* viewmats = p.viewmats.data_ptr<T>();
  const T* Ks = p.Ks.data_ptr<T>();
  const T* opacities = p.opacities.defined() ? p.opacities.data_ptr<T>() : nullptr;
  int32_t* radii_out = o.radii.data_ptr<int32_t>();
  T* means2d_out = o.means2d.data_ptr<T>();
  T* depths_out = o.depths.data_ptr<T>();
  T* conics_out = o.conics.data_ptr<T>();
  T* comp_out = o.compensations.data_ptr<T>();
  const int64_t n = p.n;
  const T w = static_cast<T>(p.width), h = static_cast<T>(p.height);
  // Culled pairs keep the zeros (ones for compensations without antialiasing) the outputs start with.
  at::parallel_for(0, p.c * n, kProjectGrain, [&](int64_t begin, int64_t end) {
    // Camera by camera: one division and one camera load per run of pairs, not per pair.
    for (int64_t idx = begin; idx < end;) {
      const int64_t c = idx / n, camera_end = std::min(end, (c + 1) * n);
      const Camera<T> cam = load_camera(viewmats + c * 16, Ks + c * 9, w, h);
      for (; idx < camera_end; ++idx) {
        const int64_t g = idx - c * n;
        const ProjectedPair<T> q =
            project_pair(cam, means + g * 3, quats + g * 4, scales + g * 3, opacities ? opacities + g : nullptr, eps2d,
                         near_plane, far_plane, radius_clip, antialiased);
        if (q.kept)
          store_projected(q, idx, radii_out, means2d_out, depths_out, conics_out, antialiased ? comp_out : nullptr);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_fwd_cpu(
    const at::Tensor& means,                     // [N, 3]
    const at::Tensor& quats,                     // [N, 4]
    const at::Tensor& scales,                    // [N, 3]
    const std::optional<at::Tensor>& opacities,  // [N]
    const at::Tensor& viewmats,                  // [C, 4, 4]
    const at::Tensor& Ks,                        // [C, 3, 3]
    int64_t width, int64_t height, double eps2d, double near_plane, double far_plane, double radius_clip,
    bool antialiased) {
  const ProjectInputs p = prepare_project("gs_project_fwd", means, quats, scales, opacities, viewmats, Ks, width,
                                          height, c10::DeviceType::CPU);
  ProjectOutputs o = allocate_project_outputs(p, antialiased);
  if (p.c * p.n == 0) return o.as_tuple();
  AT_DISPATCH_FLOATING_TYPES(p.means.scalar_type(), "gs_project_fwd_cpu", [&] {
    using T = scalar_t;
    project_fwd_kernel<T>(p, static_cast<T>(eps2d), static_cast<T>(near_plane), static_cast<T>(far_plane),
                          static_cast<T>(radius_clip), antialiased, o);
  });
  return o.as_tuple();
}

// One task per Gaussian, looping over the cameras: each Gaussian's gradients are summed in camera order by one
// thread, so the result is deterministic and needs no atomics or reduction buffers.
template <typename T>
void project_bwd_kernel(const ProjectInputs& p, T eps2d, bool antialiased, const ProjectGradInputs& in,
                        ProjectGradOutputs& out) {
  const T* means = p.means.data_ptr<T>();
  const T* quats = p.quats.data_ptr<T>();
  const T* scales = p.scales.data_ptr<T>();
  const T* viewmats = p.viewmats.data_ptr<T>();
  const T* Ks = p.Ks.data_ptr<T>();
  const int32_t* radii_in = in.radii.data_ptr<int32_t>();
  const T* conics_in = in.conics.data_ptr<T>();
  const T* comp_in = antialiased ? in.compensations.data_ptr<T>() : nullptr;
  const T* v_m2d = in.v_means2d.data_ptr<T>();
  const T* v_dep = in.v_depths.data_ptr<T>();
  const T* v_con = in.v_conics.data_ptr<T>();
  const T* v_comp = antialiased ? in.v_compensations.data_ptr<T>() : nullptr;
  T* v_means_out = out.v_means.data_ptr<T>();
  T* v_quats_out = out.v_quats.data_ptr<T>();
  T* v_scales_out = out.v_scales.data_ptr<T>();
  const int64_t n = p.n, n_cams = p.c;
  const T w = static_cast<T>(p.width), h = static_cast<T>(p.height);
  at::parallel_for(0, n, kProjectGrain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const Vec3<T> mean = {means[g * 3], means[g * 3 + 1], means[g * 3 + 2]};
      Mat3<T> covar;
      bool have_covar = false;
      Vec3<T> v_mean = {T(0), T(0), T(0)};
      Mat3<T> v_covar = zeros3<T>();
      bool any = false;
      for (int64_t c = 0; c < n_cams; ++c) {
        const int64_t idx = c * n + g;
        if (radii_in[idx * 2] <= 0 || radii_in[idx * 2 + 1] <= 0) continue;  // culled: no contribution
        if (!have_covar) {
          covar = world_covar(quats + g * 4, scales + g * 3);
          have_covar = true;
        }
        any = true;
        const Camera<T> cam = load_camera(viewmats + c * 16, Ks + c * 9, w, h);
        const Vec3<T> conic = {conics_in[idx * 3], conics_in[idx * 3 + 1], conics_in[idx * 3 + 2]};
        Mat2<T> v_cov2d = conic_vjp(conic, Vec3<T>{v_con[idx * 3], v_con[idx * 3 + 1], v_con[idx * 3 + 2]});
        const Vec3<T> mean_c = point_world_to_cam(cam.r, cam.t, mean);
        const Mat3<T> covar_c = covar_world_to_cam(cam.r, covar);
        if (antialiased) {  // the undilated 2D covariance, recomputed as the forward did
          const Mat2<T> cov2d = project_covar(projection_jacobian(cam.pinhole, mean_c), covar_c);
          compensation_vjp(eps2d, cov2d, comp_in[idx], v_comp[idx], v_cov2d);
        }
        Vec3<T> v_mean_c = {T(0), T(0), T(0)};
        Mat3<T> v_covar_c = zeros3<T>();
        project_vjp(cam.pinhole, mean_c, covar_c, v_cov2d, Vec2<T>{v_m2d[idx * 2], v_m2d[idx * 2 + 1]}, v_mean_c,
                    v_covar_c);
        v_mean_c.z += v_dep[idx];
        const Vec3<T> vm = point_world_to_cam_vjp(cam.r, v_mean_c);
        v_mean.x += vm.x;
        v_mean.y += vm.y;
        v_mean.z += vm.z;
        const Mat3<T> vc = covar_world_to_cam_vjp(cam.r, v_covar_c);
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) v_covar.m[i][j] += vc.m[i][j];
      }
      if (!any) continue;
      // Sigma is linear in its cotangent, so one VJP through (quat, scale) serves all cameras.
      Vec4<T> v_quat = {T(0), T(0), T(0), T(0)};
      Vec3<T> v_scale = {T(0), T(0), T(0)};
      covar_from_quat_scale_vjp(Vec4<T>{quats[g * 4], quats[g * 4 + 1], quats[g * 4 + 2], quats[g * 4 + 3]},
                                Vec3<T>{scales[g * 3], scales[g * 3 + 1], scales[g * 3 + 2]}, v_covar, v_quat, v_scale);
      v_means_out[g * 3] = v_mean.x;
      v_means_out[g * 3 + 1] = v_mean.y;
      v_means_out[g * 3 + 2] = v_mean.z;
      v_quats_out[g * 4] = v_quat.w;
      v_quats_out[g * 4 + 1] = v_quat.x;
      v_quats_out[g * 4 + 2] = v_quat.y;
      v_quats_out[g * 4 + 3] = v_quat.z;
      v_scales_out[g * 3] = v_scale.x;
      v_scales_out[g * 3 + 1] = v_scale.y;
      v_scales_out[g * 3 + 2] = v_scale.z;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_bwd_cpu(const at::Tensor& means,     // [N, 3]
                                                               const at::Tensor& quats,     // [N, 4]
                                                               const at::Tensor& scales,    // [N, 3]
                                                               const at::Tensor& viewmats,  // [C, 4, 4]
                                                               const at::Tensor& Ks,        // [C, 3, 3]
                                                               int64_t width, int64_t height, double eps2d,
                                                               bool antialiased,
                                                               const at::Tensor& radii,            // [C, N, 2] int32
                                                               const at::Tensor& conics,           // [C, N, 3]
                                                               const at::Tensor& compensations,    // [C, N]
                                                               const at::Tensor& v_means2d,        // [C, N, 2]
                                                               const at::Tensor& v_depths,         // [C, N]
                                                               const at::Tensor& v_conics,         // [C, N, 3]
                                                               const at::Tensor& v_compensations)  // [C, N]
{
  const ProjectInputs p = prepare_project("gs_project_bwd", means, quats, scales, std::nullopt, viewmats, Ks, width,
                                          height, c10::DeviceType::CPU);
  const ProjectGradInputs in = prepare_project_grad(p, antialiased, radii, conics, compensations, v_means2d, v_depths,
                                                    v_conics, v_compensations);
  ProjectGradOutputs out = allocate_project_grads(p);
  if (p.c * p.n == 0) return out.as_tuple();
  AT_DISPATCH_FLOATING_TYPES(p.means.scalar_type(), "gs_project_bwd_cpu", [&] {
    project_bwd_kernel<scalar_t>(p, static_cast<scalar_t>(eps2d), antialiased, in, out);
  });
  return out.as_tuple();
}

template <typename T>
void sh_fwd_kernel(const ShInputs& p, at::Tensor& colors) {
  const T* dirs = p.dirs.data_ptr<T>();
  const T* coeffs = p.coeffs.data_ptr<T>();
  T* out = colors.data_ptr<T>();
  const int degree = static_cast<int>(p.degree), nb = sh_num_bases(degree);
  const int64_t k = p.k;
  at::parallel_for(0, p.m, kShGrain, [&](int64_t begin, int64_t end) {
    T b[kMaxShBases];
    for (int64_t i = begin; i < end; ++i) {
      T x, y, z;
      unit_dir(dirs + i * 3, x, y, z);
      sh_bases(degree, x, y, z, b);
      const T* co = coeffs + i * k * 3;
      for (int ch = 0; ch < 3; ++ch) {
        T acc = T(0);
        for (int j = 0; j < nb; ++j) acc += b[j] * co[j * 3 + ch];
        out[i * 3 + ch] = acc;
      }
    }
  });
}

template <typename T>
void sh_bwd_kernel(const ShInputs& p, const at::Tensor& v_colors, at::Tensor& v_coeffs, at::Tensor& v_dirs) {
  const T* dirs = p.dirs.data_ptr<T>();
  const T* coeffs = p.coeffs.data_ptr<T>();
  const T* vc = v_colors.data_ptr<T>();
  T* v_co = v_coeffs.data_ptr<T>();
  T* v_d = v_dirs.data_ptr<T>();
  const int degree = static_cast<int>(p.degree), nb = sh_num_bases(degree);
  const int64_t k = p.k;
  at::parallel_for(0, p.m, kShGrain, [&](int64_t begin, int64_t end) {
    T b[kMaxShBases], gb[kMaxShBases];
    for (int64_t i = begin; i < end; ++i) {
      T x, y, z;
      const T norm = unit_dir(dirs + i * 3, x, y, z);
      sh_bases(degree, x, y, z, b);
      const T* co = coeffs + i * k * 3;
      const T* g = vc + i * 3;
      for (int j = 0; j < nb; ++j) {
        for (int ch = 0; ch < 3; ++ch) v_co[(i * k + j) * 3 + ch] = b[j] * g[ch];
        gb[j] = co[j * 3] * g[0] + co[j * 3 + 1] * g[1] + co[j * 3 + 2] * g[2];
      }
      if (degree == 0) continue;  // the constant band does not depend on the direction
      const Vec3<T> vu = sh_bases_vjp(degree, x, y, z, gb);
      const Vec3<T> vd = unit_dir_vjp(x, y, z, norm, vu);
      v_d[i * 3] = vd.x;
      v_d[i * 3 + 1] = vd.y;
      v_d[i * 3 + 2] = vd.z;
    }
  });
}

at::Tensor sh_fwd_cpu(int64_t degree, const at::Tensor& dirs /* [M, 3] */, const at::Tensor& coeffs /* [M, K, 3] */) {
  const ShInputs p = prepare_sh("gs_sh_fwd", degree, dirs, coeffs, c10::DeviceType::CPU);
  at::Tensor colors = allocate_sh_colors(p);
  if (p.m == 0) return colors;
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_fwd_cpu", [&] { sh_fwd_kernel<scalar_t>(p, colors); });
  return colors;
}

std::tuple<at::Tensor, at::Tensor> sh_bwd_cpu(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                                              const at::Tensor& v_colors /* [M, 3] */) {
  const char* op = "gs_sh_bwd";
  const ShInputs p = prepare_sh(op, degree, dirs, coeffs, c10::DeviceType::CPU);
  const at::Tensor v_colors_c = prepare_sh_grad(op, p, v_colors);
  at::Tensor v_coeffs, v_dirs;
  std::tie(v_coeffs, v_dirs) = allocate_sh_grads(p);
  if (p.m == 0) return {v_coeffs, v_dirs};
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_bwd_cpu",
                             [&] { sh_bwd_kernel<scalar_t>(p, v_colors_c, v_coeffs, v_dirs); });
  return {v_coeffs, v_dirs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("gs_project_fwd", &project_fwd_cpu);
  m.impl("gs_project_bwd", &project_bwd_cpu);
  m.impl("gs_sh_fwd", &sh_fwd_cpu);
  m.impl("gs_sh_bwd", &sh_bwd_cpu);
}

}  // namespace gs
}  // namespace pyops
