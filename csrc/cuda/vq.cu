// CUDA backend of pyops::vq_search, pyops::vq_index_search and pyops::vq_segment_sum.
//
// vq_search runs three kernels and never builds the N x K score matrix:
//  1. code_stat_kernel: per code, stat[c] = ||c||^2 (l2) or 1 / max(||c||, eps) (cosine), in fp32, once per
//     call (none for ip). The search scores a code as offset + scale * (x.c) (l2: ||c||^2 and -2; cosine: 0
//     and -stat; ip: 0 and -1).
//  2. search_kernel: a block owns BM rows and walks its share of the codebook in BN-code tiles; the dot
//     products of a tile come from tensor cores (wmma; bf16/fp16 as given, tf32 for fp32) or, for
//     exact=True, from fp32 FMAs, with D staged through shared memory in 128-byte-per-row chunks (cp.async
//     double buffering when rows are 16-byte aligned). The fp32 score tile then goes to shared memory and
//     two threads per row scan half of it each into their own running top-k' list (k' = num_candidates),
//     kept sorted by before() in a global workspace [lists, N, k'] (inserts are rare after the first
//     tiles; the k'-th entry sits in registers for the fast reject).
//  3. rerank_kernel: one warp per row merges the row's lists (search scores) into the top k', recomputes
//     their exact fp32 distances from the inputs and writes the k nearest, ties to the lower index.
// vq_index_search (pyops.VQIndex) takes stat from the index and runs 2 and 3 only: the search reads the
// index's 16-bit copy of the codebook (x converted to its dtype, N x D per call) or, for an empty one, the
// codebook itself in exact fp32; the re-rank always reads x and the codebook.
// Extra memory: K floats and the workspace, 2 * splits * N * k' * 8 bytes with splits = 8 (more for small
// N, fewer to stay under 256 MiB).
//
// vq_segment_sum scatters with fp32 atomicAdd: the order of the additions, hence the last bits of the sums,
// can change from run to run (counts are exact below 2^24 rows per segment).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>

#include "pyops/dispatch.h"
#include "pyops/vq.h"
#include "pyops/vq_math.h"

namespace pyops {
namespace vq {
namespace {

namespace wmma = nvcuda::wmma;

// Tensor cores (bf16 / tf32 wmma) and cp.async need sm_80+. Device passes for older targets (a build for
// the visible GPU, e.g. TORCH_CUDA_ARCH_LIST=7.5) compile stubs that trap; the host refuses to launch there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define PYOPS_VQ_SM80 1
#else
#define PYOPS_VQ_SM80 0
#endif

// Search tiling: 8 warps, a 128 x 128 score tile per step, D in chunks of 128 bytes per row (Traits::BK).
constexpr int kThreads = 256;
constexpr int BM = 128;      // rows of x per block
constexpr int BN = 128;      // codes per tile
constexpr int LDC = BN + 4;  // score tile row stride (floats): a multiple of 4 for wmma, 4 mod 32 for the scan
constexpr int kListsPerBlock = kThreads / BM;   // threads (= top-k' lists) per row
constexpr int kScanCols = BN / kListsPerBlock;  // tile columns each of them scans
constexpr int kMaxCandidates = int(kMaxK + kRerankExtra);
// Index of an empty list slot: after every real code in before()'s order (so never displaces one).
constexpr int kNoCode = std::numeric_limits<int>::max();

static_assert(kThreads == 2 * BM && kThreads % 32 == 0, "two scanning threads per row");
static_assert((kScanCols & (kScanCols - 1)) == 0, "the scan rotates columns with a mask");

// Per storage type: chunk width BK (128 bytes of each row), its shared-memory row stride LDS and the wmma
// shape. 16-bit types use m16n16k16 with 8 elements of padding (144-byte rows); fp32 uses tf32 m16n16k8
// with 4 (144-byte rows). 144 = 36 words keeps the 8 rows of an ldmatrix phase in distinct banks, and
// every 16 x 16 fragment pointer 32-byte aligned, as wmma requires.
template <typename scalar_t>
struct Traits;
template <>
struct Traits<float> {
#if PYOPS_VQ_SM80
  using mma_t = wmma::precision::tf32;
#else
  using mma_t = float;
#endif
  using elem_t = float;
  static constexpr int kMmaK = 8;
  static constexpr int BK = 32;
  static constexpr int LDS = BK + 4;
};
template <>
struct Traits<c10::Half> {
  using mma_t = __half;
  using elem_t = __half;
  static constexpr int kMmaK = 16;
  static constexpr int BK = 64;
  static constexpr int LDS = BK + 8;
};
template <>
struct Traits<c10::BFloat16> {
  using mma_t = __nv_bfloat16;
  using elem_t = __nv_bfloat16;
  static constexpr int kMmaK = 16;
  static constexpr int BK = 64;
  static constexpr int LDS = BK + 8;
};

// Shared-memory layout of search_kernel (bytes). The score tile aliases the two staging buffers: it is
// written only after the last chunk's MMAs and read before the next tile's first load.
template <typename scalar_t>
struct SearchSmem {
  static constexpr int64_t kStage = int64_t(BM + BN) * Traits<scalar_t>::LDS * sizeof(scalar_t);  // A then B
  static constexpr int64_t kStages = 2 * kStage;
  static constexpr int64_t kScores = int64_t(BM) * LDC * sizeof(float);
  static constexpr int64_t kCoefOffset = ((kStages > kScores ? kStages : kScores) + 127) / 128 * 128;
  static constexpr int64_t kBytes = kCoefOffset + 2 * BN * sizeof(float);
};

// ------------------------------------------------------------------------------------------------------
// cp.async helpers (sm_80+). src_bytes = 0 zero-fills the 16 bytes without reading src.

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
#if PYOPS_VQ_SM80
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if PYOPS_VQ_SM80
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_all_but_one() {
#if PYOPS_VQ_SM80
  asm volatile("cp.async.wait_group 1;\n" ::);
#endif
}

// ------------------------------------------------------------------------------------------------------
// 1. Per-code statistic (l2 and cosine): stat [K] = ||c||^2 or 1 / max(||c||, eps). One warp per code.

template <typename scalar_t>
__global__ void code_stat_kernel(const scalar_t* __restrict__ codebook,  // [K, D]
                                 float* __restrict__ stat,               // [K]
                                 int64_t num_codes, int64_t dim, int metric) {
  const int lane = threadIdx.x % 32;
  const int64_t code = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (code >= num_codes) return;  // whole warp
  const scalar_t* c = codebook + code * dim;
  float ss = 0.f;
  for (int64_t d = lane; d < dim; d += 32) {
    const float v = static_cast<float>(c[d]);
    ss = fmaf(v, v, ss);
  }
  for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (lane == 0) stat[code] = metric == int(Metric::kCosine) ? 1.f / fmaxf(sqrtf(ss), kNormEps) : ss;
}

// ------------------------------------------------------------------------------------------------------
// 2. Search.

// Stages elements [k0, k0 + BK) of `rows` rows starting at row0 of src [total, dim] into dst [rows, LDS];
// rows >= total and columns >= dim become zeros, so they add nothing to the dot products.
template <typename scalar_t, bool kVec>
__device__ __forceinline__ void stage_chunk(scalar_t* dst, const scalar_t* __restrict__ src, int64_t row0,
                                            int64_t total, int64_t dim, int64_t k0, int rows) {
  constexpr int LDS = Traits<scalar_t>::LDS, BK = Traits<scalar_t>::BK;
  if constexpr (kVec) {
    // dim % V == 0, so a 16-byte vector is wholly inside or wholly outside the row.
    constexpr int V = 16 / sizeof(scalar_t);
    constexpr int kVecsPerRow = BK / V;
    for (int v = threadIdx.x; v < rows * kVecsPerRow; v += kThreads) {
      const int r = v / kVecsPerRow, cv = v % kVecsPerRow;
      const int64_t grow = row0 + r, gk = k0 + int64_t(cv) * V;
      const bool valid = grow < total && gk < dim;
      cp_async16(dst + r * LDS + cv * V, valid ? src + grow * dim + gk : src, valid ? 16 : 0);
    }
  } else {
    for (int e = threadIdx.x; e < rows * BK; e += kThreads) {
      const int r = e / BK, kk = e % BK;
      const int64_t grow = row0 + r, gk = k0 + kk;
      dst[r * LDS + kk] = (grow < total && gk < dim) ? src[grow * dim + gk] : scalar_t(0.f);
    }
  }
}

#if PYOPS_VQ_SM80
// Tensor-core tile: warp w owns rows (w / 4) * 64 .. +64 and codes (w % 4) * 32 .. +32 of the score tile,
// 4 x 2 fragments of 16 x 16.
template <typename scalar_t>
struct MmaTile {
  using T = Traits<scalar_t>;
  static constexpr int kM = 4, kN = 2;
  wmma::fragment<wmma::accumulator, 16, 16, T::kMmaK, float> acc[kM][kN];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  }

  __device__ void step(const scalar_t* As, const scalar_t* Bs) {  // [BM, LDS], [BN, LDS]
    const int warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
    const auto* a_base = reinterpret_cast<const typename T::elem_t*>(As) + (wm * 64) * T::LDS;
    const auto* b_base = reinterpret_cast<const typename T::elem_t*>(Bs) + (wn * 32) * T::LDS;
#pragma unroll
    for (int kk = 0; kk < T::BK; kk += T::kMmaK) {
      wmma::fragment<wmma::matrix_a, 16, 16, T::kMmaK, typename T::mma_t, wmma::row_major> a[kM];
      // B = codebook chunk transposed: element (k, n) sits at Bs[n * LDS + k], i.e. column-major.
      wmma::fragment<wmma::matrix_b, 16, 16, T::kMmaK, typename T::mma_t, wmma::col_major> b[kN];
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        wmma::load_matrix_sync(a[i], a_base + (i * 16) * T::LDS + kk, T::LDS);
        round_tf32(a[i]);
      }
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        wmma::load_matrix_sync(b[j], b_base + (j * 16) * T::LDS + kk, T::LDS);
        round_tf32(b[j]);
      }
#pragma unroll
      for (int i = 0; i < kM; ++i)
#pragma unroll
        for (int j = 0; j < kN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(float* Cs) const {  // [BM, LDC]
    const int warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j)
        wmma::store_matrix_sync(Cs + (wm * 64 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC, wmma::mem_row_major);
  }

 private:
  // tf32 fragments are loaded as fp32 and must be rounded before mma_sync; 16-bit ones are used as is.
  template <typename Frag>
  __device__ static void round_tf32(Frag& f) {
    if constexpr (std::is_same_v<scalar_t, float>) {
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
    }
  }
};
#else
template <typename scalar_t>
struct MmaTile {  // pre-sm_80 stub, never launched
  static_assert(Traits<scalar_t>::kMmaK > 0, "");
  __device__ void zero() { __trap(); }
  __device__ void step(const scalar_t*, const scalar_t*) {}
  __device__ void store(float*) const {}
};
#endif

// fp32 FMA tile (exact=True): thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16 i and codes
// tx + 16 j, i, j < 8.
template <typename scalar_t>
struct SimtTile {
  static constexpr int kR = BM / 16, kC = BN / 16;
  float acc[kR][kC];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < kR; ++i)
#pragma unroll
      for (int j = 0; j < kC; ++j) acc[i][j] = 0.f;
  }

  __device__ void step(const scalar_t* As, const scalar_t* Bs) {  // [BM, LDS], [BN, LDS]
    constexpr int LDS = Traits<scalar_t>::LDS;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 4
    for (int kk = 0; kk < Traits<scalar_t>::BK; ++kk) {
      float a[kR], b[kC];
#pragma unroll
      for (int i = 0; i < kR; ++i) a[i] = static_cast<float>(As[(ty + 16 * i) * LDS + kk]);
#pragma unroll
      for (int j = 0; j < kC; ++j) b[j] = static_cast<float>(Bs[(tx + 16 * j) * LDS + kk]);
#pragma unroll
      for (int i = 0; i < kR; ++i)
#pragma unroll
        for (int j = 0; j < kC; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(float* Cs) const {  // [BM, LDC]
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < kR; ++i)
#pragma unroll
      for (int j = 0; j < kC; ++j) Cs[(ty + 16 * i) * LDC + tx + 16 * j] = acc[i][j];
  }
};

// 1-D grid of ceil(N / BM) * splits blocks, the split index fastest: the blocks running together then
// share few row panels of x (and few code tiles), which stay in L2 instead of streaming from HBM at
// every code tile. Split s walks code tiles [s * tiles_per_split, (s + 1) * tiles_per_split).
// Thread t scans row t % BM, columns of half t / BM of each tile, into list s * 2 + t / BM of the
// workspace ws_* [lists, N, kc], which it alone owns.
template <typename scalar_t, typename Tile, bool kVec>
__global__ void __launch_bounds__(kThreads, 2) search_kernel(const scalar_t* __restrict__ x,         // [N, D]
                                                             const scalar_t* __restrict__ codebook,  // [K, D]
                                                             const float* __restrict__ stat,  // [K], not read for ip
                                                             float* __restrict__ ws_score,    // [lists, N, kc]
                                                             int* __restrict__ ws_index,      // [lists, N, kc]
                                                             int64_t n, int64_t num_codes, int64_t dim, int kc,
                                                             int64_t splits, int64_t tiles_per_split, int metric) {
  using Smem = SearchSmem<scalar_t>;
  constexpr int LDS = Traits<scalar_t>::LDS, BK = Traits<scalar_t>::BK;
  extern __shared__ __align__(128) unsigned char smem[];
  float* Cs = reinterpret_cast<float*>(smem);                          // [BM, LDC], aliases the stages
  float* coef_s = reinterpret_cast<float*>(smem + Smem::kCoefOffset);  // [2, BN]: offset, scale
  auto stage_a = [&](int s) { return reinterpret_cast<scalar_t*>(smem + s * Smem::kStage); };  // [BM, LDS]
  auto stage_b = [&](int s) { return stage_a(s) + BM * LDS; };                                 // [BN, LDS]

  const int tid = threadIdx.x;
  const int64_t split = int64_t(blockIdx.x) % splits;
  const int64_t row0 = int64_t(blockIdx.x) / splits * BM;
  const int r = tid % BM, half = tid / BM;
  const int64_t row = row0 + r;
  const bool owns_row = row < n;
  const int64_t list = split * kListsPerBlock + half;
  float* list_score = ws_score + (list * n + row) * kc;  // only dereferenced when owns_row
  int* list_index = ws_index + (list * n + row) * kc;
  float thr_score = INFINITY;  // the list's last entry: a code must beat it to enter
  int thr_index = kNoCode;
  if (owns_row) {
    for (int j = 0; j < kc; ++j) list_score[j] = INFINITY, list_index[j] = kNoCode;
  }

  const int64_t num_tiles = (num_codes + BN - 1) / BN;
  const int64_t tile_begin = split * tiles_per_split;
  const int64_t tile_end = tile_begin + tiles_per_split < num_tiles ? tile_begin + tiles_per_split : num_tiles;
  const int64_t num_chunks = (dim + BK - 1) / BK;
  Tile tile;

  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t code0 = t * BN;
    if (tid < BN) {  // score = offset + scale * (x.c), see code_stat_kernel
      const int64_t code = code0 + tid;
      const float st = code < num_codes && metric != int(Metric::kIp) ? stat[code] : 0.f;
      coef_s[tid] = metric == int(Metric::kL2) ? st : 0.f;
      coef_s[BN + tid] = metric == int(Metric::kL2) ? -2.f : metric == int(Metric::kCosine) ? -st : -1.f;
    }
    tile.zero();
    if (num_chunks > 0) {
      stage_chunk<scalar_t, kVec>(stage_a(0), x, row0, n, dim, 0, BM);
      stage_chunk<scalar_t, kVec>(stage_b(0), codebook, code0, num_codes, dim, 0, BN);
    }
    if constexpr (kVec) cp_async_commit();
    for (int64_t c = 0; c < num_chunks; ++c) {
      const int s = int(c & 1);
      if (c + 1 < num_chunks) {  // prefetch the next chunk into the other stage
        stage_chunk<scalar_t, kVec>(stage_a(s ^ 1), x, row0, n, dim, (c + 1) * BK, BM);
        stage_chunk<scalar_t, kVec>(stage_b(s ^ 1), codebook, code0, num_codes, dim, (c + 1) * BK, BN);
      }
      if constexpr (kVec) {
        cp_async_commit();  // possibly empty, so that "all but the newest group" is always chunk c
        cp_async_wait_all_but_one();
      }
      __syncthreads();  // chunk c visible to every warp
      tile.step(stage_a(s), stage_b(s));
      __syncthreads();  // stage s free: the next iteration prefetches into it (and Cs aliases it)
    }
    tile.store(Cs);
    __syncthreads();  // scores and coefficients visible

    if (owns_row) {
      // Columns rotated by the row so that the 32 threads of a warp hit 32 different banks
      // (LDC = 4 mod 32, so row r's column j sits in bank 5 r + j mod 32). The resulting list does not
      // depend on the visiting order: before() is a strict total order over distinct codes.
      const float* scores = Cs + r * LDC + half * kScanCols;
      const float* offset = coef_s + half * kScanCols;
      const float* scale = coef_s + BN + half * kScanCols;
      const int64_t col0 = code0 + half * kScanCols;
      for (int j = 0; j < kScanCols; ++j) {
        const int jj = (j + r) & (kScanCols - 1);
        const int64_t code = col0 + jj;
        if (code >= num_codes) continue;
        const float score = fmaf(scale[jj], scores[jj], offset[jj]);
        if (before(score, code, thr_score, int64_t(thr_index))) {
          insert_sorted(list_score, list_index, kc, score, int(code));
          thr_score = list_score[kc - 1];
          thr_index = list_index[kc - 1];
        }
      }
    }
    __syncthreads();  // Cs and coef_s are rewritten by the next tile
  }
}

// ------------------------------------------------------------------------------------------------------
// 3. Merge + exact re-rank. One warp per row; lane 0 does the (short) serial list work in shared memory.

constexpr int kRerankWarps = 4;

template <typename scalar_t>
__global__ void __launch_bounds__(kRerankWarps * 32)
    rerank_kernel(const scalar_t* __restrict__ x,         // [N, D]
                  const scalar_t* __restrict__ codebook,  // [K, D]
                  const float* __restrict__ ws_score,     // [lists, N, kc]
                  const int* __restrict__ ws_index,       // [lists, N, kc]
                  float* __restrict__ out_dist,           // [N, k]
                  int64_t* __restrict__ out_index,        // [N, k]
                  int64_t n, int64_t num_codes, int64_t dim, int k, int kc, int64_t lists, int metric) {
  __shared__ float cand_score[kRerankWarps][kMaxCandidates];
  __shared__ int cand_index[kRerankWarps][kMaxCandidates];
  __shared__ float cand_dist[kRerankWarps][kMaxCandidates];
  __shared__ float best_dist[kRerankWarps][kMaxK];
  __shared__ int64_t best_index[kRerankWarps][kMaxK];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kRerankWarps + warp;
  if (row >= n) return;  // whole warp; no block-wide barriers below
  float* cs = cand_score[warp];
  int* ci = cand_index[warp];
  float* cd = cand_dist[warp];
  float* bd = best_dist[warp];
  int64_t* bi = best_index[warp];

  // Merge: the top kc of all lists by search score equals what one pass over the codebook would keep.
  // Lists are taken 32 at a time, one per lane, so that their global loads overlap (small N has hundreds
  // of lists); lane 0 inserts the lanes' entries in lane order into the shared-memory list.
  for (int j = lane; j < kc; j += 32) cs[j] = INFINITY, ci[j] = kNoCode;
  __syncwarp();
  for (int64_t l0 = 0; l0 < lists; l0 += 32) {
    const int64_t l = l0 + lane;
    bool active = l < lists;
    const float* ls = ws_score + (l * n + row) * kc;  // only dereferenced while active
    const int* li = ws_index + (l * n + row) * kc;
    for (int j = 0; j < kc; ++j) {
      float score = INFINITY;
      int code = kNoCode;
      if (active) {
        score = ls[j];
        code = li[j];
        active = code < num_codes;  // empty slots come last
      }
      if (!__any_sync(0xffffffffu, active)) break;  // warp-uniform
      for (int src = 0; src < 32; ++src) {
        const float s = __shfl_sync(0xffffffffu, score, src);
        const int c = __shfl_sync(0xffffffffu, code, src);
        if (lane == 0 && c < num_codes) insert_sorted(cs, ci, kc, s, c);
      }
      __syncwarp();
      // Lists are sorted and the threshold only falls: an entry that does not beat it now ends its list.
      active = active && before(score, int64_t(code), cs[kc - 1], int64_t(ci[kc - 1]));
    }
  }
  __syncwarp();

  // Exact fp32 distances, lanes striding over D.
  const scalar_t* xr = x + row * dim;
  float xx = 0.f;
  for (int64_t d = lane; d < dim; d += 32) {
    const float v = static_cast<float>(xr[d]);
    xx = fmaf(v, v, xx);
  }
  for (int off = 16; off > 0; off /= 2) xx += __shfl_xor_sync(0xffffffffu, xx, off);
  for (int j = 0; j < kc; ++j) {
    const int code = ci[j];  // warp-uniform
    if (code >= num_codes) {
      if (lane == 0) cd[j] = INFINITY;
      continue;
    }
    const scalar_t* cr = codebook + int64_t(code) * dim;
    float dot = 0.f, cc = 0.f, sq = 0.f;
    for (int64_t d = lane; d < dim; d += 32) {
      const float xv = static_cast<float>(xr[d]), cv = static_cast<float>(cr[d]);
      const float diff = xv - cv;
      dot = fmaf(xv, cv, dot);
      cc = fmaf(cv, cv, cc);
      sq = fmaf(diff, diff, sq);
    }
    for (int off = 16; off > 0; off /= 2) {
      dot += __shfl_xor_sync(0xffffffffu, dot, off);
      cc += __shfl_xor_sync(0xffffffffu, cc, off);
      sq += __shfl_xor_sync(0xffffffffu, sq, off);
    }
    if (lane == 0) {
      cd[j] = metric == int(Metric::kL2)       ? sq
              : metric == int(Metric::kCosine) ? cosine_distance(dot, sqrtf(xx), sqrtf(cc))
                                               : -dot;
    }
  }
  __syncwarp();

  if (lane == 0) {
    for (int j = 0; j < k; ++j) bd[j] = INFINITY, bi[j] = std::numeric_limits<int64_t>::max();
    for (int j = 0; j < kc; ++j) {
      if (ci[j] < num_codes) insert_sorted(bd, bi, k, cd[j], int64_t(ci[j]));
    }
  }
  __syncwarp();
  for (int j = lane; j < k; j += 32) {
    out_dist[row * k + j] = bd[j];
    // Fewer than k finite candidates happens only with non-finite inputs: -1 marks the empty slots.
    out_index[row * k + j] = bi[j] < num_codes ? bi[j] : int64_t(-1);
  }
}

// ------------------------------------------------------------------------------------------------------
// Segment sum: a block per row (grid-stride), threads over D.

template <typename scalar_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ values,  // [N, D]
                                   const int64_t* __restrict__ indices,  // [N]
                                   float* __restrict__ sums,             // [S, D]
                                   float* __restrict__ counts,           // [S]
                                   int64_t n, int64_t dim, int64_t num_segments) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t seg = indices[i];
    CUDA_KERNEL_ASSERT(seg >= 0 && seg < num_segments);
    if (seg < 0 || seg >= num_segments) continue;  // asserts may be compiled out
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      atomicAdd(sums + seg * dim + d, static_cast<float>(values[i * dim + d]));
    }
    if (threadIdx.x == 0) atomicAdd(counts + seg, 1.f);
  }
}

// ------------------------------------------------------------------------------------------------------
// Launch.

int device_attribute(cudaDeviceAttr attr) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, c10::cuda::current_device()));
  return value;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// PYOPS_VQ_SYNC_LOADS=1 stages D chunks with plain loads instead of cp.async: a switch to tell pipeline
// bugs from MMA or top-k bugs (exact=True swaps the MMA for fp32 FMAs in the same way).
bool sync_loads_forced() {
  static const bool forced = [] {
    const char* v = std::getenv("PYOPS_VQ_SYNC_LOADS");
    return v != nullptr && v[0] == '1';
  }();
  return forced;
}

template <typename scalar_t, typename Tile, bool kVec>
void launch_search(const SearchProblem& p, const at::Tensor& search_x, const at::Tensor& search_c, const float* stat,
                   float* ws_score, int* ws_index, int64_t splits, int64_t tiles_per_split, cudaStream_t stream) {
  auto kernel = search_kernel<scalar_t, Tile, kVec>;
  constexpr int64_t smem = SearchSmem<scalar_t>::kBytes;
  TORCH_CHECK(smem <= device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin), "vq_search: the CUDA kernel needs ",
              smem, " bytes of shared memory per block, more than this GPU allows");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int64_t blocks = (p.n + BM - 1) / BM * splits;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int>::max(), "vq_search: x has too many rows (", p.n,
                    ") for one launch");
  kernel<<<unsigned(blocks), kThreads, smem, stream>>>(search_x.data_ptr<scalar_t>(), search_c.data_ptr<scalar_t>(),
                                                       stat, ws_score, ws_index, p.n, p.num_codes, p.dim,
                                                       int(p.candidates), splits, tiles_per_split, int(p.metric));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_compute_capability(const char* op) {
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  TORCH_CHECK(major >= 8, op,
              ": the CUDA kernel needs compute capability 8.0 or newer (tensor-core bf16/tf32 "
              "and cp.async), this GPU has ",
              major, ".x; use backend='torch' or 'triton'");
}

// Stages 2 and 3 into out_dist / out_index (p.n > 0): the search scores search_x [N, D] against search_c [K, D]
// (p.x and p.codebook, or their 16-bit copies; contiguous, one dtype) with stat [K] (see code_stat_kernel; not
// read for ip), in fp32 FMAs if exact, else on tensor cores; the re-rank reads p.x and p.codebook.
void search_and_rerank(const SearchProblem& p, const at::Tensor& search_x, const at::Tensor& search_c,
                       const float* stat, bool exact, const char* op, at::Tensor& out_dist, at::Tensor& out_index) {
  TORCH_CHECK_VALUE(p.num_codes < kNoCode, op, ": the CUDA kernel takes fewer than 2^31 - 1 codes, codebook has ",
                    p.num_codes);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto f32 = p.x.options().dtype(at::kFloat);

  // Code splits: at least kMinSplits, so that the ~2 blocks per SM running together read ~1/kMinSplits as
  // many row panels of x (L2 reuse, see search_kernel), and more when N is small so that every SM gets 2
  // blocks; fewer if the workspace would pass kMaxWorkspaceBytes (large N times large k).
  constexpr int64_t kMinSplits = 8, kMaxWorkspaceBytes = int64_t(256) << 20;
  const int64_t row_blocks = (p.n + BM - 1) / BM;
  const int64_t num_tiles = (p.num_codes + BN - 1) / BN;
  const int64_t target_blocks = 2 * int64_t(device_attribute(cudaDevAttrMultiProcessorCount));
  const int64_t split_bytes = kListsPerBlock * p.n * p.candidates * int64_t(sizeof(float) + sizeof(int));
  int64_t splits = std::max<int64_t>(kMinSplits, (target_blocks + row_blocks - 1) / row_blocks);
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, num_tiles, kMaxWorkspaceBytes / split_bytes}));
  const int64_t tiles_per_split = (num_tiles + splits - 1) / splits;
  splits = (num_tiles + tiles_per_split - 1) / tiles_per_split;  // no empty split
  const int64_t lists = splits * kListsPerBlock;

  at::Tensor ws_score = at::empty({lists, p.n, p.candidates}, f32);
  at::Tensor ws_index = at::empty({lists, p.n, p.candidates}, p.x.options().dtype(at::kInt));
  float* wss = ws_score.data_ptr<float>();
  int* wsi = ws_index.data_ptr<int>();

  PYOPS_DISPATCH_FLOAT_HALF_BF16(search_x.scalar_type(), "vq_search_cuda", [&] {
    // cp.async moves 16-byte vectors: rows must start on 16-byte boundaries.
    const bool vec = p.dim % (16 / sizeof(scalar_t)) == 0 && aligned16(search_x.data_ptr()) &&
                     aligned16(search_c.data_ptr()) && !sync_loads_forced();
    if (exact) {
      if (vec)
        launch_search<scalar_t, SimtTile<scalar_t>, true>(p, search_x, search_c, stat, wss, wsi, splits,
                                                          tiles_per_split, stream);
      else
        launch_search<scalar_t, SimtTile<scalar_t>, false>(p, search_x, search_c, stat, wss, wsi, splits,
                                                           tiles_per_split, stream);
    } else {
      if (vec)
        launch_search<scalar_t, MmaTile<scalar_t>, true>(p, search_x, search_c, stat, wss, wsi, splits, tiles_per_split,
                                                         stream);
      else
        launch_search<scalar_t, MmaTile<scalar_t>, false>(p, search_x, search_c, stat, wss, wsi, splits,
                                                          tiles_per_split, stream);
    }
  });
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.x.scalar_type(), "vq_search_cuda", [&] {
    const int64_t blocks = (p.n + kRerankWarps - 1) / kRerankWarps;
    rerank_kernel<scalar_t><<<unsigned(blocks), kRerankWarps * 32, 0, stream>>>(
        p.x.data_ptr<scalar_t>(), p.codebook.data_ptr<scalar_t>(), wss, wsi, out_dist.data_ptr<float>(),
        out_index.data_ptr<int64_t>(), p.n, p.num_codes, p.dim, int(p.k), int(p.candidates), lists, int(p.metric));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> vq_search_cuda(const at::Tensor& x,         // [N, D]
                                                  const at::Tensor& codebook,  // [K, D]
                                                  int64_t k, c10::string_view metric, bool exact) {
  const SearchProblem p =
      prepare_search(x, codebook, k, std::string_view(metric.data(), metric.size()), exact, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.x.device());
  check_compute_capability("vq_search");
  auto [out_dist, out_index] = empty_search_outputs(p);
  if (p.n == 0) return {out_dist, out_index};

  // Stage 1: the code statistic, once per call (ip needs none).
  at::Tensor stat;
  if (p.metric != Metric::kIp) {
    stat = at::empty({p.num_codes}, p.x.options().dtype(at::kFloat));
    PYOPS_DISPATCH_FLOAT_HALF_BF16(p.x.scalar_type(), "vq_search_cuda", [&] {
      constexpr int kWarps = 8;
      const int64_t blocks = (p.num_codes + kWarps - 1) / kWarps;
      code_stat_kernel<scalar_t><<<unsigned(blocks), kWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
          p.codebook.data_ptr<scalar_t>(), stat.data_ptr<float>(), p.num_codes, p.dim, int(p.metric));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  search_and_rerank(p, p.x, p.codebook, stat.defined() ? stat.data_ptr<float>() : nullptr, p.exact, "vq_search",
                    out_dist, out_index);
  return {out_dist, out_index};
}

// ------------------------------------------------------------------------------------------------------
// Prepared index (pyops.VQIndex).

std::tuple<at::Tensor, at::Tensor> vq_index_search_cuda(const at::Tensor& x,           // [N, D]
                                                        const at::Tensor& codebook,    // [K, D]
                                                        const at::Tensor& packed,      // [K, D] 16-bit, or empty
                                                        const at::Tensor& code_scale,  // empty
                                                        const at::Tensor& stat,        // [K] float32
                                                        int64_t k, c10::string_view metric) {
  const SearchProblem p = prepare_index_search(x, codebook, packed, code_scale, stat, k,
                                               std::string_view(metric.data(), metric.size()), c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.x.device());
  check_compute_capability("vq_index_search");
  auto [out_dist, out_index] = empty_search_outputs(p);
  if (p.n == 0) return {out_dist, out_index};
  // contiguous() and to() return their input for a prepared index and x of packed's dtype; otherwise they
  // queue one copy on the current stream (x: N x D, cheap next to the K x D search).
  const float* stat_ptr = p.stat.data_ptr<float>();
  if (p.exact) {
    search_and_rerank(p, p.x, p.codebook, stat_ptr, true, "vq_index_search", out_dist, out_index);
  } else {
    const at::Tensor search_x = p.x.to(p.packed.scalar_type());
    search_and_rerank(p, search_x, p.packed, stat_ptr, false, "vq_index_search", out_dist, out_index);
  }
  return {out_dist, out_index};
}

std::tuple<at::Tensor, at::Tensor> vq_segment_sum_cuda(const at::Tensor& values,   // [N, D]
                                                       const at::Tensor& indices,  // [N] int64
                                                       int64_t num_segments) {
  const SegmentProblem p = prepare_segment_sum(values, indices, num_segments, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(p.values.device());
  const auto f32 = p.values.options().dtype(at::kFloat);
  at::Tensor sums = at::zeros({p.num_segments, p.dim}, f32);
  at::Tensor counts = at::zeros({p.num_segments}, f32);
  if (p.n == 0) return {sums, counts};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int threads = int(std::min<int64_t>(256, std::max<int64_t>(32, (p.dim + 31) / 32 * 32)));
  const int64_t blocks = std::min<int64_t>(p.n, 32 * int64_t(device_attribute(cudaDevAttrMultiProcessorCount)));
  PYOPS_DISPATCH_FLOAT_HALF_BF16(p.values.scalar_type(), "vq_segment_sum_cuda", [&] {
    segment_sum_kernel<scalar_t><<<unsigned(blocks), threads, 0, stream>>>(
        p.values.data_ptr<scalar_t>(), p.indices.data_ptr<int64_t>(), sums.data_ptr<float>(), counts.data_ptr<float>(),
        p.n, p.dim, p.num_segments);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sums, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) {
  m.impl("vq_search", &vq_search_cuda);
  m.impl("vq_segment_sum", &vq_segment_sum_cuda);
  m.impl("vq_index_search", &vq_index_search_cuda);
}

}  // namespace vq
}  // namespace pyops
