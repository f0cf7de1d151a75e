// AMX-INT8 score kernel of the CPU VQ search (see vq_int8.h): the same values as dots_vnni, from tile
// instructions. An ISA copy like the others (isa.h): its own object, compiled with real -mamx-tile
// -mamx-int8 flags (setup.py ISA_FLAGS / CMakeLists.txt PYOPS_ISA_FLAGS_amx), called only at the "amx" level,
// which cpu_isa grants only after the kernel has allowed this process the tile state (isa.cpp). Like the
// other copies it instantiates no library function out of line (tests/test_isa.py).
//
// Blocking: a micro-kernel owns a 32-row x 32-code block in four 16x16 int32 C tiles (tiles 0-3) and walks
// the padded dims 64 at a time: two A tiles (16 rows x 64 dims of the quantized rows, tiles 4-5), two B tiles
// (16 dim4 rows x 16 codes x 4 dims, i.e. 64 dims of one packed group, tiles 6-7), four tdpbsud. That is all
// 8 tiles, and each loaded tile feeds two multiplies. The code block (32 codes x D) stays in L1/L2 while the
// caller's rows (at most 256 rows x D in L2) sweep past it, so the codebook is read from memory once per call
// and row block.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "vq_int8.h"

#if !defined(__AMX_TILE__) || !defined(__AMX_INT8__) || !defined(__AVX512F__)
#error "vq_int8_amx.cpp needs the AMX compiler flags (see setup.py ISA_FLAGS)"
#endif

namespace pyops {
namespace vq {
namespace int8 {

namespace {

constexpr int kTile = 16;  // rows (and codes) per tile

// LDTILECFG's 64-byte operand (palette 1): bytes per row and rows of each of the 8 tiles.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Dims per pass over the rows: a 32-code panel of 512 dims is 16 KiB, so it stays in L1 while every 32-row
// block of the rows streams past it from L2; the C tiles go through `acc` between passes.
constexpr int64_t kDimChunk = 512;

// Rows r0.. x codes of groups g0.. (MR x NR tiles) over dims [d0, d1): C = acc (or 0 on the first pass) +
// the chunk's products; on the last pass out = (C - bias) * sx * sc, else C goes back to acc.
template <int MR, int NR>
void block(const int8_t* q, int64_t dp, int64_t d0, int64_t d1, const float* scale, const int32_t* bias,
           int64_t rows, const uint8_t* groups, const float* code_scale, int64_t cols, int32_t (*acc)[2 * kTile],
           float* out, int64_t ld) {
  constexpr int64_t kLd = 2 * kTile * sizeof(int32_t);  // acc's row stride in bytes
  const int64_t group_bytes = dp * kGroup;
  if (d0 == 0) {
    _tile_zero(0);
    if (NR > 1) _tile_zero(1);
    if (MR > 1) _tile_zero(2);
    if (MR > 1 && NR > 1) _tile_zero(3);
  } else {
    _tile_loadd(0, &acc[0][0], kLd);
    if (NR > 1) _tile_loadd(1, &acc[0][kTile], kLd);
    if (MR > 1) _tile_loadd(2, &acc[kTile][0], kLd);
    if (MR > 1 && NR > 1) _tile_loadd(3, &acc[kTile][kTile], kLd);
  }
  for (int64_t d = d0; d < d1; d += 64) {
    _tile_loadd(4, q + d, dp);
    if (MR > 1) _tile_loadd(5, q + kTile * dp + d, dp);
    _tile_loadd(6, groups + d * kGroup, 64);  // dim4 rows d/4 .. d/4 + 15 of the group
    if (NR > 1) _tile_loadd(7, groups + group_bytes + d * kGroup, 64);
    _tile_dpbsud(0, 4, 6);
    if (NR > 1) _tile_dpbsud(1, 4, 7);
    if (MR > 1) _tile_dpbsud(2, 5, 6);
    if (MR > 1 && NR > 1) _tile_dpbsud(3, 5, 7);
  }
  _tile_stored(0, &acc[0][0], kLd);
  if (NR > 1) _tile_stored(1, &acc[0][kTile], kLd);
  if (MR > 1) _tile_stored(2, &acc[kTile][0], kLd);
  if (MR > 1 && NR > 1) _tile_stored(3, &acc[kTile][kTile], kLd);
  if (d1 < dp) return;
  const int64_t m = rows < MR * kTile ? rows : MR * kTile;
  for (int64_t r = 0; r < m; ++r) {
    const __m512 sx = _mm512_set1_ps(scale[r]);
    const __m512i b = _mm512_set1_epi32(bias[r]);
    for (int h = 0; h < NR; ++h) {
      const int64_t left = cols - kTile * h;
      if (left <= 0) break;
      const __mmask16 mask = left >= kTile ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512i c = _mm512_load_si512(&acc[r][kTile * h]);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, b)), sx),
                                     _mm512_maskz_loadu_ps(mask, code_scale + kTile * h));
      _mm512_mask_storeu_ps(out + r * ld + kTile * h, mask, v);
    }
  }
}

}  // namespace

void dots_amx(const int8_t* q, const float* scale, const int32_t* bias, int64_t rows, const uint8_t* packed,
              const float* code_scale, int64_t cols, int64_t dim, float* out, int64_t ld) {
  const int64_t dp = padded_dim(dim), group_bytes = dp * kGroup;
  const int64_t row_blocks = (rows + 2 * kTile - 1) / (2 * kTile);
  // The C tiles of every 32-row block between dim passes: [row_blocks * 32 rows][32 codes] int32.
  auto* acc = static_cast<int32_t(*)[2 * kTile]>(
      std::aligned_alloc(64, row_blocks * 2 * kTile * sizeof(int32_t[2 * kTile])));
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = kTile;
  _tile_loadconfig(&cfg);
  for (int64_t j0 = 0; j0 < cols; j0 += 2 * kGroup) {
    const uint8_t* groups = packed + (j0 / kGroup) * group_bytes;
    const int64_t n = cols - j0 < 2 * kGroup ? cols - j0 : 2 * kGroup;
    for (int64_t d0 = 0; d0 < dp; d0 += kDimChunk) {
      const int64_t d1 = d0 + kDimChunk < dp ? d0 + kDimChunk : dp;
      // q holds round_up(rows, kRows) rows (zero padding), so a 32-row block never reads past it.
      for (int64_t r0 = 0; r0 < rows; r0 += 2 * kTile) {
        const int64_t m = rows - r0;
        const int8_t* qr = q + r0 * dp;
        int32_t(*a)[2 * kTile] = acc + r0;
        float* o = out + r0 * ld + j0;
        if (m > kTile && n > kGroup)
          block<2, 2>(qr, dp, d0, d1, scale + r0, bias + r0, m, groups, code_scale + j0, n, a, o, ld);
        else if (m > kTile)
          block<2, 1>(qr, dp, d0, d1, scale + r0, bias + r0, m, groups, code_scale + j0, n, a, o, ld);
        else if (n > kGroup)
          block<1, 2>(qr, dp, d0, d1, scale + r0, bias + r0, m, groups, code_scale + j0, n, a, o, ld);
        else
          block<1, 1>(qr, dp, d0, d1, scale + r0, bias + r0, m, groups, code_scale + j0, n, a, o, ld);
      }
    }
  }
  _tile_release();
  std::free(acc);
}

}  // namespace int8
}  // namespace vq
}  // namespace pyops
