// CUDA backend of pyops::gs_project_fwd / gs_project_bwd / gs_sh_fwd / gs_sh_bwd. Same semantics as
// csrc/cpu/gaussians_project.cpp (culls, their order, culled outputs, compensations = 1 unless antialiased) with
// the math from pyops/gaussians_math.h and the host checks and allocation from pyops/gaussians.h, so both
// backends run the same formulas on the same validated inputs.
//  - projection: one thread per (camera, Gaussian). The backward pass sends each pair's gradient through the
//    covariance VJP itself and sums over cameras with atomicAdd (the CPU sums the world-space cotangents first
//    and runs one VJP per Gaussian; both are exact, they only round differently).
//  - spherical harmonics: one thread per row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "gaussians_launch.h"
#include "pyops/gaussians.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------------------------------------

template <typename T>
struct ProjectFwdArgs {
  const T *means, *quats, *scales, *opacities, *viewmats, *Ks;  // opacities may be nullptr
  int64_t c, n;
  T width, height, eps2d, near_plane, far_plane, radius_clip;
  bool antialiased;
};

// Culled pairs keep the zeros (ones for compensations without antialiasing) the outputs start with.
template <typename T>
__global__ void project_fwd_kernel(ProjectFwdArgs<T> a, int32_t* __restrict__ radii, T* __restrict__ means2d,
                                   T* __restrict__ depths, T* __restrict__ conics, T* __restrict__ compensations) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.c * a.n) return;
  const int64_t c = idx / a.n, g = idx % a.n;
  const Camera<T> cam = load_camera(a.viewmats + c * 16, a.Ks + c * 9, a.width, a.height);
  const ProjectedPair<T> q =
      project_pair(cam, a.means + g * 3, a.quats + g * 4, a.scales + g * 3, a.opacities ? a.opacities + g : nullptr,
                   a.eps2d, a.near_plane, a.far_plane, a.radius_clip, a.antialiased);
  if (q.kept) store_projected(q, idx, radii, means2d, depths, conics, a.antialiased ? compensations : nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_fwd_cuda(
    const at::Tensor& means,                     // [N, 3]
    const at::Tensor& quats,                     // [N, 4]
    const at::Tensor& scales,                    // [N, 3]
    const std::optional<at::Tensor>& opacities,  // [N]
    const at::Tensor& viewmats,                  // [C, 4, 4]
    const at::Tensor& Ks,                        // [C, 3, 3]
    int64_t width, int64_t height, double eps2d, double near_plane, double far_plane, double radius_clip,
    bool antialiased) {
  const ProjectInputs p = prepare_project("gs_project_fwd", means, quats, scales, opacities, viewmats, Ks, width,
                                          height, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.means.device());
  ProjectOutputs o = allocate_project_outputs(p, antialiased);
  if (p.c * p.n == 0) return o.as_tuple();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.means.scalar_type(), "gs_project_fwd_cuda", [&] {
    using T = scalar_t;
    const ProjectFwdArgs<T> a = {p.means.data_ptr<T>(),
                                 p.quats.data_ptr<T>(),
                                 p.scales.data_ptr<T>(),
                                 p.opacities.defined() ? p.opacities.data_ptr<T>() : nullptr,
                                 p.viewmats.data_ptr<T>(),
                                 p.Ks.data_ptr<T>(),
                                 p.c,
                                 p.n,
                                 static_cast<T>(width),
                                 static_cast<T>(height),
                                 static_cast<T>(eps2d),
                                 static_cast<T>(near_plane),
                                 static_cast<T>(far_plane),
                                 static_cast<T>(radius_clip),
                                 antialiased};
    project_fwd_kernel<T><<<blocks_for(p.c * p.n), kThreads, 0, stream>>>(
        a, o.radii.data_ptr<int32_t>(), o.means2d.data_ptr<T>(), o.depths.data_ptr<T>(), o.conics.data_ptr<T>(),
        o.compensations.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return o.as_tuple();
}

template <typename T>
struct ProjectBwdArgs {
  const T *means, *quats, *scales, *viewmats, *Ks;
  const int32_t* radii;
  const T *conics, *compensations;                             // compensations: nullptr unless antialiased
  const T *v_means2d, *v_depths, *v_conics, *v_compensations;  // v_compensations: nullptr unless antialiased
  int64_t c, n;
  T width, height, eps2d;
};

template <typename T>
__global__ void project_bwd_kernel(ProjectBwdArgs<T> a, T* __restrict__ v_means, T* __restrict__ v_quats,
                                   T* __restrict__ v_scales) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.c * a.n) return;
  if (a.radii[idx * 2] <= 0 || a.radii[idx * 2 + 1] <= 0) return;  // culled: no contribution
  const int64_t c = idx / a.n, g = idx % a.n;
  const Camera<T> cam = load_camera(a.viewmats + c * 16, a.Ks + c * 9, a.width, a.height);
  const Vec3<T> conic = {a.conics[idx * 3], a.conics[idx * 3 + 1], a.conics[idx * 3 + 2]};
  Mat2<T> v_cov2d = conic_vjp(conic, Vec3<T>{a.v_conics[idx * 3], a.v_conics[idx * 3 + 1], a.v_conics[idx * 3 + 2]});
  const T* mp = a.means + g * 3;
  const T* qp = a.quats + g * 4;
  const T* sp = a.scales + g * 3;
  const Vec3<T> mean_c = point_world_to_cam(cam.r, cam.t, Vec3<T>{mp[0], mp[1], mp[2]});
  const Mat3<T> covar_c = covar_world_to_cam(cam.r, world_covar(qp, sp));
  if (a.compensations != nullptr) {  // the undilated 2D covariance, recomputed as the forward did
    const Mat2<T> cov2d = project_covar(projection_jacobian(cam.pinhole, mean_c), covar_c);
    compensation_vjp(a.eps2d, cov2d, a.compensations[idx], a.v_compensations[idx], v_cov2d);
  }
  Vec3<T> v_mean_c = {T(0), T(0), T(0)};
  Mat3<T> v_covar_c = zeros3<T>();
  project_vjp(cam.pinhole, mean_c, covar_c, v_cov2d, Vec2<T>{a.v_means2d[idx * 2], a.v_means2d[idx * 2 + 1]}, v_mean_c,
              v_covar_c);
  v_mean_c.z += a.v_depths[idx];
  const Vec3<T> vm = point_world_to_cam_vjp(cam.r, v_mean_c);
  const Mat3<T> v_covar = covar_world_to_cam_vjp(cam.r, v_covar_c);
  Vec4<T> v_quat = {T(0), T(0), T(0), T(0)};
  Vec3<T> v_scale = {T(0), T(0), T(0)};
  covar_from_quat_scale_vjp(Vec4<T>{qp[0], qp[1], qp[2], qp[3]}, Vec3<T>{sp[0], sp[1], sp[2]}, v_covar, v_quat,
                            v_scale);
  // Per-Gaussian gradients are summed over cameras: one atomic per entry and camera.
  atomicAdd(v_means + g * 3, vm.x);
  atomicAdd(v_means + g * 3 + 1, vm.y);
  atomicAdd(v_means + g * 3 + 2, vm.z);
  atomicAdd(v_quats + g * 4, v_quat.w);
  atomicAdd(v_quats + g * 4 + 1, v_quat.x);
  atomicAdd(v_quats + g * 4 + 2, v_quat.y);
  atomicAdd(v_quats + g * 4 + 3, v_quat.z);
  atomicAdd(v_scales + g * 3, v_scale.x);
  atomicAdd(v_scales + g * 3 + 1, v_scale.y);
  atomicAdd(v_scales + g * 3 + 2, v_scale.z);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_bwd_cuda(const at::Tensor& means,     // [N, 3]
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
                                          height, c10::DeviceType::CUDA);
  const ProjectGradInputs in = prepare_project_grad(p, antialiased, radii, conics, compensations, v_means2d, v_depths,
                                                    v_conics, v_compensations);
  const c10::cuda::CUDAGuard guard(p.means.device());
  ProjectGradOutputs out = allocate_project_grads(p);
  if (p.c * p.n == 0) return out.as_tuple();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.means.scalar_type(), "gs_project_bwd_cuda", [&] {
    using T = scalar_t;
    const ProjectBwdArgs<T> a = {p.means.data_ptr<T>(),
                                 p.quats.data_ptr<T>(),
                                 p.scales.data_ptr<T>(),
                                 p.viewmats.data_ptr<T>(),
                                 p.Ks.data_ptr<T>(),
                                 in.radii.data_ptr<int32_t>(),
                                 in.conics.data_ptr<T>(),
                                 antialiased ? in.compensations.data_ptr<T>() : nullptr,
                                 in.v_means2d.data_ptr<T>(),
                                 in.v_depths.data_ptr<T>(),
                                 in.v_conics.data_ptr<T>(),
                                 antialiased ? in.v_compensations.data_ptr<T>() : nullptr,
                                 p.c,
                                 p.n,
                                 static_cast<T>(width),
                                 static_cast<T>(height),
                                 static_cast<T>(eps2d)};
    project_bwd_kernel<T><<<blocks_for(p.c * p.n), kThreads, 0, stream>>>(
        a, out.v_means.data_ptr<T>(), out.v_quats.data_ptr<T>(), out.v_scales.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.as_tuple();
}

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics
// ---------------------------------------------------------------------------------------------------------

// DEG is a template parameter so that the basis arrays unroll into registers (a runtime degree puts them on
// the stack).
template <typename T, int DEG>
__global__ void sh_fwd_kernel(int64_t m, int64_t k, const T* __restrict__ dirs, const T* __restrict__ coeffs,
                              T* __restrict__ colors) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  T x, y, z;
  unit_dir(dirs + i * 3, x, y, z);
  constexpr int degree = DEG, nb = sh_num_bases(DEG);
  T b[kMaxShBases];  // full size: sh_bases(_vjp) index up to their degree, constant-folded here
  sh_bases(degree, x, y, z, b);
  const T* co = coeffs + i * k * 3;
  T acc[3] = {T(0), T(0), T(0)};
#pragma unroll
  for (int j = 0; j < nb; ++j)
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) acc[ch] += b[j] * co[j * 3 + ch];
#pragma unroll
  for (int ch = 0; ch < 3; ++ch) colors[i * 3 + ch] = acc[ch];
}

// v_coeffs starts zeroed: bases beyond the degree (K > (degree + 1)^2) get no gradient.
template <typename T, int DEG>
__global__ void sh_bwd_kernel(int64_t m, int64_t k, const T* __restrict__ dirs, const T* __restrict__ coeffs,
                              const T* __restrict__ v_colors, T* __restrict__ v_coeffs, T* __restrict__ v_dirs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  T x, y, z;
  const T norm = unit_dir(dirs + i * 3, x, y, z);
  constexpr int degree = DEG, nb = sh_num_bases(DEG);
  T b[kMaxShBases], gb[kMaxShBases];
  sh_bases(degree, x, y, z, b);
  const T* co = coeffs + i * k * 3;
  const T g[3] = {v_colors[i * 3], v_colors[i * 3 + 1], v_colors[i * 3 + 2]};
  T* vco = v_coeffs + i * k * 3;
#pragma unroll
  for (int j = 0; j < nb; ++j) {
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) vco[j * 3 + ch] = b[j] * g[ch];
    gb[j] = co[j * 3] * g[0] + co[j * 3 + 1] * g[1] + co[j * 3 + 2] * g[2];
  }
  if constexpr (DEG == 0) return;  // the constant band does not depend on the direction (v_dirs stays zero)
  const Vec3<T> vd = unit_dir_vjp(x, y, z, norm, sh_bases_vjp(degree, x, y, z, gb));
  v_dirs[i * 3] = vd.x;
  v_dirs[i * 3 + 1] = vd.y;
  v_dirs[i * 3 + 2] = vd.z;
}

// Runtime SH degree (0-3, checked by prepare_sh) -> std::integral_constant.
template <typename F>
void with_degree(int64_t degree, F&& f) {
  switch (degree) {
    case 0:
      f(std::integral_constant<int, 0>{});
      break;
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    default:
      f(std::integral_constant<int, 3>{});
      break;
  }
}

at::Tensor sh_fwd_cuda(int64_t degree, const at::Tensor& dirs /* [M, 3] */, const at::Tensor& coeffs /* [M, K, 3] */) {
  const ShInputs p = prepare_sh("gs_sh_fwd", degree, dirs, coeffs, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.dirs.device());
  at::Tensor colors = allocate_sh_colors(p);
  if (p.m == 0) return colors;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_fwd_cuda", [&] {
    with_degree(degree, [&](auto deg) {
      sh_fwd_kernel<scalar_t, decltype(deg)::value><<<blocks_for(p.m), kThreads, 0, stream>>>(
          p.m, p.k, p.dirs.data_ptr<scalar_t>(), p.coeffs.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return colors;
}

std::tuple<at::Tensor, at::Tensor> sh_bwd_cuda(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                                               const at::Tensor& v_colors /* [M, 3] */) {
  const char* op = "gs_sh_bwd";
  const ShInputs p = prepare_sh(op, degree, dirs, coeffs, c10::DeviceType::CUDA);
  const at::Tensor v_colors_c = prepare_sh_grad(op, p, v_colors);
  const c10::cuda::CUDAGuard guard(p.dirs.device());
  at::Tensor v_coeffs, v_dirs;
  std::tie(v_coeffs, v_dirs) = allocate_sh_grads(p);
  if (p.m == 0) return {v_coeffs, v_dirs};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.dirs.scalar_type(), "gs_sh_bwd_cuda", [&] {
    with_degree(degree, [&](auto deg) {
      sh_bwd_kernel<scalar_t, decltype(deg)::value><<<blocks_for(p.m), kThreads, 0, stream>>>(
          p.m, p.k, p.dirs.data_ptr<scalar_t>(), p.coeffs.data_ptr<scalar_t>(), v_colors_c.data_ptr<scalar_t>(),
          v_coeffs.data_ptr<scalar_t>(), v_dirs.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {v_coeffs, v_dirs};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("gs_project_fwd", &project_fwd_cuda);
  m.impl("gs_project_bwd", &project_bwd_cuda);
  m.impl("gs_sh_fwd", &sh_fwd_cuda);
  m.impl("gs_sh_bwd", &sh_bwd_cuda);
}

}  // namespace gs
}  // namespace pyops
