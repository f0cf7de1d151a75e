// CPU backend of pyops::gs_project_fwd / gs_project_bwd / gs_sh_fwd / gs_sh_bwd: per-(camera, Gaussian)
// projection and per-row spherical harmonics, with the math in pyops/gaussian_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "pyops/gaussian_math.h"
#include "pyops/gaussians.h"

namespace pyops {
namespace gs {
namespace {

constexpr int64_t kProjectGrain = 256;
constexpr int64_t kShGrain = 1024;

template <typename T>
struct Camera {
  Mat3<T> r;  // world -> camera rotation (top-left of the view matrix)
  Vec3<T> t;
  Pinhole<T> pinhole;
};

template <typename T>
Camera<T> load_camera(const T* viewmat, const T* K, int64_t width, int64_t height) {
  Camera<T> cam;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) cam.r.m[i][j] = viewmat[i * 4 + j];
  cam.t = {viewmat[3], viewmat[7], viewmat[11]};
  cam.pinhole = {K[0], K[4], K[2], K[5], static_cast<T>(width), static_cast<T>(height)};
  return cam;
}

template <typename T>
Mat3<T> world_covar(const T* quat, const T* scale) {
  const Vec4<T> q = normalize_quat(Vec4<T>{quat[0], quat[1], quat[2], quat[3]});
  return covar_from_rotmat_scale(rotmat_from_unit_quat(q), Vec3<T>{scale[0], scale[1], scale[2]});
}

template <typename T>
void project_fwd_kernel(const ProjectInputs& p, const T* opacities, int64_t width, int64_t height, T eps2d,
                        T near_plane, T far_plane, T radius_clip, bool antialiased, at::Tensor& radii,
                        at::Tensor& means2d, at::Tensor& depths, at::Tensor& conics, at::Tensor& compensations) {
  const T* means = p.means.data_ptr<T>();
  const T* quats = p.quats.data_ptr<T>();
  const T* scales = p.scales.data_ptr<T>();
  const T* viewmats = p.viewmats.data_ptr<T>();
  const T* Ks = p.Ks.data_ptr<T>();
  int32_t* radii_out = radii.data_ptr<int32_t>();
  T* means2d_out = means2d.data_ptr<T>();
  T* depths_out = depths.data_ptr<T>();
  T* conics_out = conics.data_ptr<T>();
  T* comp_out = compensations.data_ptr<T>();
  const int64_t n = p.n;
  const T w = static_cast<T>(width), h = static_cast<T>(height);
  // Culled pairs keep the zeros (ones for compensations without antialiasing) the outputs start with.
  at::parallel_for(0, p.c * n, kProjectGrain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t c = idx / n, g = idx % n;
      const Camera<T> cam = load_camera(viewmats + c * 16, Ks + c * 9, width, height);
      const Vec3<T> mean_c = point_world_to_cam(cam.r, cam.t, Vec3<T>{means[g * 3], means[g * 3 + 1], means[g * 3 + 2]});
      // Written as !(inside) so that NaN depths are culled too.
      if (!(mean_c.z >= near_plane && mean_c.z <= far_plane)) continue;
      const Mat3<T> covar_c = covar_world_to_cam(cam.r, world_covar(quats + g * 4, scales + g * 3));
      Mat2<T> cov2d = project_covar(projection_jacobian(cam.pinhole, mean_c), covar_c);
      const Vec2<T> mean2d = project_mean(cam.pinhole, mean_c);
      T compensation;
      const T det = dilate_covar2d(eps2d, cov2d, compensation);
      if (!(det > T(0))) continue;
      const Vec3<T> conic = conic_from_covar2d(cov2d, det);
      T sigmas = radius_sigmas<T>();
      if (opacities != nullptr) {  // gsplat's rasterization(): cull what never reaches the blend cut
        const T opacity = antialiased ? opacities[g] * compensation : opacities[g];
        if (!(opacity >= alpha_threshold<T>())) continue;
        sigmas = radius_sigmas_for_opacity(opacity);
      }
      const T rx = radius_from_variance(cov2d.m[0][0], sigmas);
      const T ry = radius_from_variance(cov2d.m[1][1], sigmas);
      if (rx <= radius_clip && ry <= radius_clip) continue;
      if (!(mean2d.x + rx > T(0) && mean2d.x - rx < w && mean2d.y + ry > T(0) && mean2d.y - ry < h)) continue;
      radii_out[idx * 2] = radius_to_int(rx);
      radii_out[idx * 2 + 1] = radius_to_int(ry);
      means2d_out[idx * 2] = mean2d.x;
      means2d_out[idx * 2 + 1] = mean2d.y;
      depths_out[idx] = mean_c.z;
      conics_out[idx * 3] = conic.x;
      conics_out[idx * 3 + 1] = conic.y;
      conics_out[idx * 3 + 2] = conic.z;
      if (antialiased) comp_out[idx] = compensation;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_fwd_cpu(
    const at::Tensor& means,     // [N, 3]
    const at::Tensor& quats,     // [N, 4]
    const at::Tensor& scales,    // [N, 3]
    const std::optional<at::Tensor>& opacities,  // [N]
    const at::Tensor& viewmats,  // [C, 4, 4]
    const at::Tensor& Ks,        // [C, 3, 3]
    int64_t width, int64_t height, double eps2d, double near_plane, double far_plane, double radius_clip,
    bool antialiased) {
  const ProjectInputs p =
      prepare_project("gs_project_fwd", means, quats, scales, viewmats, Ks, width, height, c10::DeviceType::CPU);
  const at::Tensor opac = opacities.has_value()
      ? checked(*opacities, "gs_project_fwd", "opacities", c10::DeviceType::CPU, {p.n}, p.means.scalar_type())
      : at::Tensor();
  const auto opt = p.means.options();
  at::Tensor radii = at::zeros({p.c, p.n, 2}, opt.dtype(at::kInt));
  at::Tensor means2d = at::zeros({p.c, p.n, 2}, opt);
  at::Tensor depths = at::zeros({p.c, p.n}, opt);
  at::Tensor conics = at::zeros({p.c, p.n, 3}, opt);
  at::Tensor compensations = antialiased ? at::zeros({p.c, p.n}, opt) : at::ones({p.c, p.n}, opt);
  if (p.c * p.n == 0) return {radii, means2d, depths, conics, compensations};
  AT_DISPATCH_FLOATING_TYPES(p.means.scalar_type(), "gs_project_fwd_cpu", [&] {
    project_fwd_kernel<scalar_t>(p, opac.defined() ? opac.data_ptr<scalar_t>() : nullptr, width, height, static_cast<scalar_t>(eps2d), static_cast<scalar_t>(near_plane),
                                 static_cast<scalar_t>(far_plane), static_cast<scalar_t>(radius_clip), antialiased,
                                 radii, means2d, depths, conics, compensations);
  });
  return {radii, means2d, depths, conics, compensations};
}

// One task per Gaussian, looping over the cameras: each Gaussian's gradients are summed in camera order by one
// thread, so the result is deterministic and needs no atomics or reduction buffers.
template <typename T>
void project_bwd_kernel(const ProjectInputs& p, int64_t width, int64_t height, T eps2d, bool antialiased,
                        const at::Tensor& radii, const at::Tensor& conics, const at::Tensor& compensations,
                        const at::Tensor& v_means2d, const at::Tensor& v_depths, const at::Tensor& v_conics,
                        const at::Tensor& v_compensations, at::Tensor& v_means, at::Tensor& v_quats,
                        at::Tensor& v_scales) {
  const T* means = p.means.data_ptr<T>();
  const T* quats = p.quats.data_ptr<T>();
  const T* scales = p.scales.data_ptr<T>();
  const T* viewmats = p.viewmats.data_ptr<T>();
  const T* Ks = p.Ks.data_ptr<T>();
  const int32_t* radii_in = radii.data_ptr<int32_t>();
  const T* conics_in = conics.data_ptr<T>();
  const T* comp_in = antialiased ? compensations.data_ptr<T>() : nullptr;
  const T* v_m2d = v_means2d.data_ptr<T>();
  const T* v_dep = v_depths.data_ptr<T>();
  const T* v_con = v_conics.data_ptr<T>();
  const T* v_comp = antialiased ? v_compensations.data_ptr<T>() : nullptr;
  T* v_means_out = v_means.data_ptr<T>();
  T* v_quats_out = v_quats.data_ptr<T>();
  T* v_scales_out = v_scales.data_ptr<T>();
  const int64_t n = p.n, n_cams = p.c;
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
        const Camera<T> cam = load_camera(viewmats + c * 16, Ks + c * 9, width, height);
        const Vec3<T> conic = {conics_in[idx * 3], conics_in[idx * 3 + 1], conics_in[idx * 3 + 2]};
        Mat2<T> v_cov2d =
            conic_vjp(conic, Vec3<T>{v_con[idx * 3], v_con[idx * 3 + 1], v_con[idx * 3 + 2]});
        if (antialiased) {
          const Mat2<T> conic_m = {{{conic.x, conic.y}, {conic.y, conic.z}}};
          compensation_vjp(eps2d, conic_m, comp_in[idx], v_comp[idx], v_cov2d);
        }
        const Vec3<T> mean_c = point_world_to_cam(cam.r, cam.t, mean);
        const Mat3<T> covar_c = covar_world_to_cam(cam.r, covar);
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
                                Vec3<T>{scales[g * 3], scales[g * 3 + 1], scales[g * 3 + 2]}, v_covar, v_quat,
                                v_scale);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_bwd_cpu(
    const at::Tensor& means,     // [N, 3]
    const at::Tensor& quats,     // [N, 4]
    const at::Tensor& scales,    // [N, 3]
    const at::Tensor& viewmats,  // [C, 4, 4]
    const at::Tensor& Ks,        // [C, 3, 3]
    int64_t width, int64_t height, double eps2d, bool antialiased,
    const at::Tensor& radii,            // [C, N, 2] int32
    const at::Tensor& conics,           // [C, N, 3]
    const at::Tensor& compensations,    // [C, N]
    const at::Tensor& v_means2d,        // [C, N, 2]
    const at::Tensor& v_depths,         // [C, N]
    const at::Tensor& v_conics,         // [C, N, 3]
    const at::Tensor& v_compensations)  // [C, N]
{
  const char* op = "gs_project_bwd";
  const ProjectInputs p = prepare_project(op, means, quats, scales, viewmats, Ks, width, height, c10::DeviceType::CPU);
  const auto cpu = c10::DeviceType::CPU;
  const auto dt = p.means.scalar_type();
  const at::Tensor radii_c = checked(radii, op, "radii", cpu, {p.c, p.n, 2}, at::kInt);
  const at::Tensor conics_c = checked(conics, op, "conics", cpu, {p.c, p.n, 3}, dt);
  const at::Tensor v_means2d_c = checked(v_means2d, op, "v_means2d", cpu, {p.c, p.n, 2}, dt);
  const at::Tensor v_depths_c = checked(v_depths, op, "v_depths", cpu, {p.c, p.n}, dt);
  const at::Tensor v_conics_c = checked(v_conics, op, "v_conics", cpu, {p.c, p.n, 3}, dt);
  // Without antialiasing the compensations are constant ones: neither they nor their cotangent are read.
  at::Tensor comp_c, v_comp_c;
  if (antialiased) {
    comp_c = checked(compensations, op, "compensations", cpu, {p.c, p.n}, dt);
    v_comp_c = checked(v_compensations, op, "v_compensations", cpu, {p.c, p.n}, dt);
  }
  at::Tensor v_means = at::zeros_like(p.means);
  at::Tensor v_quats = at::zeros_like(p.quats);
  at::Tensor v_scales = at::zeros_like(p.scales);
  if (p.c * p.n == 0) return {v_means, v_quats, v_scales};
  AT_DISPATCH_FLOATING_TYPES(dt, "gs_project_bwd_cpu", [&] {
    project_bwd_kernel<scalar_t>(p, width, height, static_cast<scalar_t>(eps2d), antialiased, radii_c, conics_c,
                                 comp_c, v_means2d_c, v_depths_c, v_conics_c, v_comp_c, v_means, v_quats, v_scales);
  });
  return {v_means, v_quats, v_scales};
}

template <typename T>
void sh_fwd_kernel(int degree, const ShInputs& p, at::Tensor& colors) {
  const T* dirs = p.dirs.data_ptr<T>();
  const T* coeffs = p.coeffs.data_ptr<T>();
  T* out = colors.data_ptr<T>();
  const int nb = sh_num_bases(degree);
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
void sh_bwd_kernel(int degree, const ShInputs& p, const at::Tensor& v_colors, at::Tensor& v_coeffs,
                   at::Tensor& v_dirs) {
  const T* dirs = p.dirs.data_ptr<T>();
  const T* coeffs = p.coeffs.data_ptr<T>();
  const T* vc = v_colors.data_ptr<T>();
  T* v_co = v_coeffs.data_ptr<T>();
  T* v_d = v_dirs.data_ptr<T>();
  const int nb = sh_num_bases(degree);
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
  at::Tensor colors = at::empty({p.m, 3}, p.dirs.options());
  if (p.m == 0) return colors;
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_fwd_cpu",
                             [&] { sh_fwd_kernel<scalar_t>(static_cast<int>(degree), p, colors); });
  return colors;
}

std::tuple<at::Tensor, at::Tensor> sh_bwd_cpu(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                                              const at::Tensor& v_colors /* [M, 3] */) {
  const char* op = "gs_sh_bwd";
  const ShInputs p = prepare_sh(op, degree, dirs, coeffs, c10::DeviceType::CPU);
  const at::Tensor v_colors_c = checked(v_colors, op, "v_colors", c10::DeviceType::CPU, {p.m, 3}, p.dirs.scalar_type());
  at::Tensor v_coeffs = at::zeros_like(p.coeffs);
  at::Tensor v_dirs = at::zeros_like(p.dirs);
  if (p.m == 0) return {v_coeffs, v_dirs};
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_bwd_cpu", [&] {
    sh_bwd_kernel<scalar_t>(static_cast<int>(degree), p, v_colors_c, v_coeffs, v_dirs);
  });
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
