// CPU backend of pyops::gs_intersect_tiles / gs_isect_offsets: which tiles each (camera, Gaussian) touches
// (tile_rect in pyops/gaussians_math.h, shared with CUDA), the sorted intersection keys, and the start of every
// (camera, tile) range in them. Argument checks and allocation are pyops/gaussians.h's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pyops/gaussians.h"
#include "pyops/gaussians_math.h"

namespace pyops {
namespace gs {
namespace {

constexpr int64_t kGaussGrain = 1024;

// Stable sort of words by their high 32 bits (the depth): LSD radix, a byte per pass, skipping the bytes all the
// words share (nearby depths share the high ones); insertion sort for short runs. (std::sort of the whole words
// took most of a MoRel frame's intersect.)
void sort_by_depth_bits(uint64_t* words, int64_t n, std::vector<uint64_t>& scratch) {
  if (n <= 32) {
    for (int64_t i = 1; i < n; ++i) {
      const uint64_t w = words[i];
      int64_t j = i;
      for (; j > 0 && (words[j - 1] >> 32) > (w >> 32); --j) words[j] = words[j - 1];
      words[j] = w;
    }
    return;
  }
  scratch.resize(static_cast<size_t>(n));
  uint64_t *from = words, *to = scratch.data();
  for (int shift = 32; shift < 64; shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((from[i] >> shift) & 0xff) + 1];
    if (count[((from[0] >> shift) & 0xff) + 1] == n) continue;  // one byte value: already in order
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) to[count[(from[i] >> shift) & 0xff]++] = from[i];
    std::swap(from, to);
  }
  if (from != words) std::copy(from, from + n, words);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> intersect_tiles_cpu(const at::Tensor& means2d,  // [C, N, 2]
                                                                   const at::Tensor& radii,    // [C, N, 2] int32
                                                                   const at::Tensor& depths,   // [C, N]
                                                                   int64_t tile_size, int64_t tile_width,
                                                                   int64_t tile_height) {
  const IntersectInputs p =
      prepare_intersect(means2d, radii, depths, tile_size, tile_width, tile_height, c10::DeviceType::CPU);
  const int64_t cn = p.c * p.n, n_tiles = tile_width * tile_height, n_buckets = p.c * n_tiles;
  at::Tensor tiles_per_gauss = allocate_tiles_per_gauss(p);

  // Counting sort on the (camera, tile) part of the key, in parallel over chunks of the (camera, Gaussian) pairs:
  // each chunk counts its intersections per bucket, and each bucket's range is split among the chunks in chunk
  // order, so every bucket lists its pairs in ascending flatten id whatever the number of chunks.
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), cn / kGaussGrain));
  auto chunk_begin = [&](int64_t k) { return cn * k / n_chunks; };
  // The pairs of a chunk that touch a tile, in flatten order, for the scatter: the others (radius 0, e.g. the
  // dropped half of a dense decoder's output) are read once, not three times (a rectangle for every pair was a
  // 3 MiB array that left L2 at a MoRel frame's 2x10^5 Gaussians).
  struct Touching {
    int32_t flat, camera;  // flatten ids fit int32 (prepare_intersect), and so do camera indices
    TileRect rect;
  };
  std::vector<std::vector<Touching>> touching(static_cast<size_t>(n_chunks));
  std::vector<int64_t> cursor(static_cast<size_t>(n_chunks * n_buckets), 0);  // counts, then write positions
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cpu_count", [&] {
    const scalar_t* m2d = p.means2d.data_ptr<scalar_t>();
    const int32_t* rad = p.radii.data_ptr<int32_t>();
    int32_t* tpg = tiles_per_gauss.data_ptr<int32_t>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        int64_t* count = cursor.data() + k * n_buckets;
        std::vector<Touching>& list = touching[k];
        list.reserve(static_cast<size_t>(chunk_begin(k + 1) - chunk_begin(k)));  // untouched pages cost nothing
        // Camera by camera, so that no pair pays a 64-bit division.
        for (int64_t flat = chunk_begin(k), stop = chunk_begin(k + 1); flat < stop;) {
          const int64_t camera = flat / p.n, camera_stop = std::min(stop, (camera + 1) * p.n);
          int64_t* camera_count = count + camera * n_tiles;
          for (; flat < camera_stop; ++flat) {
            const TileRect r = tile_rect(m2d[flat * 2], m2d[flat * 2 + 1], rad[flat * 2], rad[flat * 2 + 1], tile_size,
                                         tile_width, tile_height);
            tpg[flat] = static_cast<int32_t>(r.count());  // <= tile_width * tile_height < 2^31 (prepare_intersect)
            if (r.count() == 0) continue;
            list.push_back({static_cast<int32_t>(flat), static_cast<int32_t>(camera), r});
            for (int32_t y = r.y0; y < r.y1; ++y)
              for (int32_t x = r.x0; x < r.x1; ++x) ++camera_count[int64_t(y) * tile_width + x];
          }
        }
      }
    });
  });
  std::vector<int64_t> bucket_start(static_cast<size_t>(n_buckets) + 1, 0);
  int64_t m = 0;
  for (int64_t b = 0; b < n_buckets; ++b) {
    bucket_start[b] = m;
    for (int64_t k = 0; k < n_chunks; ++k) {
      const int64_t count = cursor[k * n_buckets + b];
      cursor[k * n_buckets + b] = m;
      m += count;
    }
  }
  bucket_start[n_buckets] = m;
  at::Tensor isect_ids, flatten_ids;
  std::tie(isect_ids, flatten_ids) = allocate_intersections(p, m);  // raises when M does not fit int32
  // (depth bits << 32) | flatten id: one 64-bit word per intersection sorts by depth, then flatten id.
  std::vector<uint64_t> depth_and_id(static_cast<size_t>(m));
  AT_DISPATCH_FLOATING_TYPES(p.depths.scalar_type(), "gs_intersect_tiles_cpu_scatter", [&] {
    const scalar_t* dep = p.depths.data_ptr<scalar_t>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        int64_t* next = cursor.data() + k * n_buckets;
        for (const Touching& t : touching[k]) {
          const uint64_t word = (uint64_t(depth_bits(dep[t.flat])) << 32) | uint64_t(uint32_t(t.flat));
          int64_t* camera_next = next + int64_t(t.camera) * n_tiles;
          for (int32_t y = t.rect.y0; y < t.rect.y1; ++y)
            for (int32_t x = t.rect.x0; x < t.rect.x1; ++x)
              depth_and_id[camera_next[int64_t(y) * tile_width + x]++] = word;
        }
      }
    });
  });
  // Each bucket holds its words in ascending flatten id, so a stable sort on the depth bits alone orders them by
  // (depth, flatten id), the order gsplat's (stable) radix sort of the full keys produces.
  int64_t* ids_out = isect_ids.data_ptr<int64_t>();
  int32_t* flat_out = flatten_ids.data_ptr<int32_t>();
  at::parallel_for(0, n_buckets, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> scratch;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t s = bucket_start[b], e = bucket_start[b + 1];
      if (s == e) continue;
      sort_by_depth_bits(depth_and_id.data() + s, e - s, scratch);
      const uint64_t camera = uint64_t(b / n_tiles), tile = uint64_t(b % n_tiles);
      for (int64_t i = s; i < e; ++i) {
        ids_out[i] =
            static_cast<int64_t>(isect_key(camera, tile, p.tile_bits, static_cast<uint32_t>(depth_and_id[i] >> 32)));
        flat_out[i] = static_cast<int32_t>(depth_and_id[i] & 0xffffffffu);
      }
    }
  });
  return {tiles_per_gauss, isect_ids, flatten_ids};
}

at::Tensor isect_offsets_cpu(const at::Tensor& isect_ids /* [M] int64, sorted */, int64_t n_cameras, int64_t tile_width,
                             int64_t tile_height) {
  const char* op = "gs_isect_offsets";
  const IsectOffsetsInputs p =
      prepare_isect_offsets(isect_ids, n_cameras, tile_width, tile_height, c10::DeviceType::CPU);
  at::Tensor offsets = allocate_isect_offsets(p);
  const int64_t n_buckets = p.n_cameras * p.n_tiles;
  // Counts per (camera, tile), then the exclusive prefix sum: an empty tile's offset is where the next
  // non-empty one starts (and M after the last), as in gsplat.
  std::vector<int64_t> count(static_cast<size_t>(n_buckets) + 1, 0);
  const int64_t* k = p.isect_ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < p.m; ++i) {
    const IsectBucket b = isect_bucket(static_cast<uint64_t>(k[i]), p.tile_bits);
    TORCH_CHECK_VALUE(k[i] >= 0 && b.camera < uint64_t(p.n_cameras) && b.tile < uint64_t(p.n_tiles), op,
                      ": `isect_ids` entry ", i, " encodes camera ", b.camera, ", tile ", b.tile, ", outside ",
                      p.n_cameras, " cameras of ", p.n_tiles, " tiles");
    TORCH_CHECK_VALUE(i == 0 || k[i] >= k[i - 1], op, ": `isect_ids` must be sorted (entry ", i, " < entry ", i - 1,
                      ")");
    ++count[b.camera * p.n_tiles + b.tile];
  }
  int32_t* out = offsets.data_ptr<int32_t>();
  int64_t run = 0;
  for (int64_t b = 0; b < n_buckets; ++b) {
    out[b] = static_cast<int32_t>(run);
    run += count[b];
  }
  return offsets;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("gs_intersect_tiles", &intersect_tiles_cpu);
  m.impl("gs_isect_offsets", &isect_offsets_cpu);
}

}  // namespace gs
}  // namespace pyops
