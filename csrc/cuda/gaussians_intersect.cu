// CUDA backend of pyops::gs_intersect_tiles / gs_isect_offsets, after gsplat's IntersectTile.cu, with the
// semantics of csrc/cpu/gaussians_intersect.cpp: the same tiles per Gaussian (tile_rect) and key layout
// (isect_key, isect_bucket) from pyops/gaussians_math.h, the same tie order, and the argument checks and
// allocation of pyops/gaussians.h.
//  - intersect: count tiles per (camera, Gaussian), scan, write keys in flatten-id order, stable radix sort
//    over the key bits in use; equal keys keep ascending flatten id, as on the CPU.
//  - offsets: one thread per intersection marks where each (camera, tile) bucket starts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/device/device_radix_sort.cuh>

#include "gaussians_launch.h"
#include "pyops/gaussians.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {
namespace {

struct IsectArgs {
  int64_t cn, n, tile_size, tile_width, tile_height, tile_bits;
};

template <typename T>
__global__ void count_tiles_kernel(IsectArgs a, const T* __restrict__ means2d, const int32_t* __restrict__ radii,
                                   int32_t* __restrict__ tiles_per_gauss) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.cn) return;
  const TileRect r = tile_rect(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], a.tile_size,
                               a.tile_width, a.tile_height);
  tiles_per_gauss[i] = static_cast<int32_t>(r.count());  // <= tile_width * tile_height < 2^31 (prepare_intersect)
}

// Keys (isect_key) written per (camera, Gaussian) in flatten-id order and row-major over its tiles: the order a
// stable sort keeps ties in.
template <typename T>
__global__ void write_keys_kernel(IsectArgs a, const T* __restrict__ means2d, const int32_t* __restrict__ radii,
                                  const T* __restrict__ depths, const int32_t* __restrict__ tiles_per_gauss,
                                  const int64_t* __restrict__ cum_tiles, uint64_t* __restrict__ keys,
                                  int32_t* __restrict__ flatten_ids) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.cn || tiles_per_gauss[i] == 0) return;
  const TileRect r = tile_rect(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], a.tile_size,
                               a.tile_width, a.tile_height);
  const uint64_t camera = static_cast<uint64_t>(i / a.n);
  const uint32_t depth = depth_bits(depths[i]);
  int64_t cur = cum_tiles[i] - tiles_per_gauss[i];  // exclusive offset from the inclusive scan
  for (int32_t y = r.y0; y < r.y1; ++y)
    for (int32_t x = r.x0; x < r.x1; ++x) {
      const uint64_t tile = uint64_t(y) * uint64_t(a.tile_width) + uint64_t(x);
      keys[cur] = isect_key(camera, tile, a.tile_bits, depth);
      flatten_ids[cur] = static_cast<int32_t>(i);
      ++cur;
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> intersect_tiles_cuda(const at::Tensor& means2d,  // [C, N, 2]
                                                                    const at::Tensor& radii,    // [C, N, 2] int32
                                                                    const at::Tensor& depths,   // [C, N]
                                                                    int64_t tile_size, int64_t tile_width,
                                                                    int64_t tile_height) {
  const IntersectInputs p =
      prepare_intersect(means2d, radii, depths, tile_size, tile_width, tile_height, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.depths.device());
  const int64_t cn = p.c * p.n;
  at::Tensor tiles_per_gauss = allocate_tiles_per_gauss(p);
  at::Tensor isect_ids, flatten_ids;
  if (cn == 0) {
    std::tie(isect_ids, flatten_ids) = allocate_intersections(p, 0);
    return {tiles_per_gauss, isect_ids, flatten_ids};
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const IsectArgs a = {cn, p.n, tile_size, tile_width, tile_height, p.tile_bits};
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cuda_count", [&] {
    count_tiles_kernel<scalar_t><<<blocks_for(cn), kThreads, 0, stream>>>(
        a, p.means2d.data_ptr<scalar_t>(), p.radii.data_ptr<int32_t>(), tiles_per_gauss.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor cum_tiles = at::cumsum(tiles_per_gauss.view({cn}), 0, at::kLong);  // inclusive, [C * N]
  // The one host sync of the pipeline (gsplat has it too): the output size, and the int32 check, need M.
  const int64_t m = cum_tiles[cn - 1].item<int64_t>();
  std::tie(isect_ids, flatten_ids) = allocate_intersections(p, m);  // raises when M does not fit int32
  if (m == 0) return {tiles_per_gauss, isect_ids, flatten_ids};
  const auto opt = p.depths.options();
  at::Tensor keys_in = at::empty({m}, opt.dtype(at::kLong));
  at::Tensor ids_in = at::empty({m}, opt.dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cuda_keys", [&] {
    write_keys_kernel<scalar_t><<<blocks_for(cn), kThreads, 0, stream>>>(
        a, p.means2d.data_ptr<scalar_t>(), p.radii.data_ptr<int32_t>(), p.depths.data_ptr<scalar_t>(),
        tiles_per_gauss.data_ptr<int32_t>(), cum_tiles.data_ptr<int64_t>(),
        reinterpret_cast<uint64_t*>(keys_in.data_ptr<int64_t>()), ids_in.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // LSD radix sort is stable: equal keys keep the ascending flatten ids they were written in. Only the bits in
  // use are sorted (32 depth bits + tile bits + camera bits); the keys are non-negative, sorted as unsigned.
  const int end_bit = static_cast<int>(32 + p.tile_bits + bit_length(p.c));
  const auto* k_in = reinterpret_cast<const uint64_t*>(keys_in.data_ptr<int64_t>());
  auto* k_out = reinterpret_cast<uint64_t*>(isect_ids.data_ptr<int64_t>());
  const int32_t* v_in = ids_in.data_ptr<int32_t>();
  int32_t* v_out = flatten_ids.data_ptr<int32_t>();
  const int num_items = static_cast<int>(m);
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k_in, k_out, v_in, v_out, num_items, 0, end_bit, stream));
  // Temporary storage from the caching allocator, on the current stream.
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, opt.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, k_in, k_out, v_in, v_out, num_items, 0,
                                                 end_bit, stream));
  return {tiles_per_gauss, isect_ids, flatten_ids};
}

// One thread per intersection (gsplat's intersect_offset_kernel): where the (camera, tile) bucket changes from
// the previous key, every bucket in between starts here, so empty tiles point at the next non-empty one; the
// first key fills the buckets before it with 0 and the last fills those after it with M. Buckets decoded
// outside the grid are clamped to it (no out-of-bounds write; the CPU op rejects such keys, this one cannot
// without a host sync).
__global__ void isect_offsets_kernel(int64_t m, int64_t n_buckets, int64_t n_tiles, int64_t tile_bits,
                                     const int64_t* __restrict__ isect_ids, int32_t* __restrict__ offsets) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  const auto bucket_of = [&](int64_t key) -> int64_t {
    const IsectBucket k = isect_bucket(static_cast<uint64_t>(key), tile_bits);
    const uint64_t b = k.camera * uint64_t(n_tiles) + k.tile;
    return b < uint64_t(n_buckets) ? static_cast<int64_t>(b) : n_buckets;
  };
  const int64_t b = bucket_of(isect_ids[i]);
  const int64_t prev = i == 0 ? -1 : bucket_of(isect_ids[i - 1]);
  for (int64_t t = prev + 1; t <= b && t < n_buckets; ++t) offsets[t] = static_cast<int32_t>(i);
  if (i == m - 1)
    for (int64_t t = b + 1; t < n_buckets; ++t) offsets[t] = static_cast<int32_t>(m);
}

at::Tensor isect_offsets_cuda(const at::Tensor& isect_ids /* [M] int64, sorted */, int64_t n_cameras,
                              int64_t tile_width, int64_t tile_height) {
  const IsectOffsetsInputs p =
      prepare_isect_offsets(isect_ids, n_cameras, tile_width, tile_height, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.isect_ids.device());
  at::Tensor offsets = allocate_isect_offsets(p);
  const int64_t n_buckets = p.n_cameras * p.n_tiles;
  if (p.m == 0 || n_buckets == 0) return offsets;  // no intersections: every tile starts (and ends) at 0
  const auto stream = c10::cuda::getCurrentCUDAStream();
  isect_offsets_kernel<<<blocks_for(p.m), kThreads, 0, stream>>>(
      p.m, n_buckets, p.n_tiles, p.tile_bits, p.isect_ids.data_ptr<int64_t>(), offsets.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return offsets;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("gs_intersect_tiles", &intersect_tiles_cuda);
  m.impl("gs_isect_offsets", &isect_offsets_cuda);
}

}  // namespace gs
}  // namespace pyops
