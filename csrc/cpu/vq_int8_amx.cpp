// AMX-INT8 score kernel of the CPU VQ search (see vq_int8.h): the same values as dots_vnni, from tile
// instructions. An ISA copy like the others (isa.h): its own object, compiled with real -mamx-tile
// -mamx-int8 flags (setup.py ISA_FLAGS / CMakeLists.txt PYOPS_ISA_FLAGS_amx), called only at the "amx" level,
// which cpu_isa grants only after the kernel has allowed this process the tile state (isa.cpp). Like the
// other copies it instantiates no library function out of line (tests/test_isa.py).
//
// Blocking: a block is 32 rows x 32 codes in four 16x16 int32 C tiles (tiles 0-3), walked 64 padded dims at a
// time: two A tiles (16 rows x 64 dims of the quantized rows, tiles 4-5), two B tiles (16 dim4 rows x 16 codes
// x 4 dims, i.e. 64 dims of one packed group, tiles 6-7), four tdpbsud. That is all 8 tiles, and each loaded
// tile feeds two multiplies. The dims go in passes of kDimChunk so the 32-code panel of a pass stays in L1
// while the caller's rows (at most 256 rows x D, in L2) stream past it; the codebook is read from memory once
// per call and row block. C goes straight to the caller's int32 tile (no epilogue here: the scan scales it as
// it reads it). Measured on a 2-core Sapphire Rapids-class VM, one thread, int8 TOPS: 6.5 for a register-only
// tdpbsud loop on random bytes (7.6 on all-ones operands: the rate depends on the data), 5.4 for this block
// with both operands in L1, 3.3 with the rows in L2, 2.5 streaming the codes from memory, 3.0 with the
// prefetch below (the whole search at 256 x 65,536: 30 -> 26 ms with it and the load order). Full-D blocks
// (no passes) and AMX-tile-ordered rows (contiguous A tiles) were no faster.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
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

// Configures all 8 tiles as 16 rows x 64 bytes. GCC 12 does not model _tile_loadconfig as reading its operand
// and drops the stores that fill it (then every tile has 0 rows and the first tile instruction faults), so
// the address escapes through an empty asm with a memory clobber first.
void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = kTile;
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Dims per pass over the rows: a 32-code panel of 512 dims is 16 KiB, so it stays in L1 while every 32-row
// block of the rows streams past it from L2; the C tiles wait in acc between passes.
constexpr int64_t kDimChunk = 512;

// C (MR x NR tiles: 16-row blocks of q x groups of 16 codes) = acc (or zero on the first pass) + the products
// over dims [d0, d1), stored back to acc (row stride ld ints).
template <int MR, int NR>
void block(const int8_t* q, int64_t dp, int64_t d0, int64_t d1, const uint8_t* groups, int32_t* acc, int64_t ld) {
  const int64_t group_bytes = dp * kGroup, ld_bytes = ld * sizeof(int32_t);
  int32_t* c1 = acc + kTile;       // codes 16..31
  int32_t* c2 = acc + kTile * ld;  // rows 16..31
  int32_t* c3 = c2 + kTile;
  if (d0 == 0) {
    _tile_zero(0);
    if (NR > 1) _tile_zero(1);
    if (MR > 1) _tile_zero(2);
    if (MR > 1 && NR > 1) _tile_zero(3);
  } else {
    _tile_loadd(0, acc, ld_bytes);
    if (NR > 1) _tile_loadd(1, c1, ld_bytes);
    if (MR > 1) _tile_loadd(2, c2, ld_bytes);
    if (MR > 1 && NR > 1) _tile_loadd(3, c3, ld_bytes);
  }
  // Each tile is loaded right before its first multiply, so that multiply waits on one load, not four.
  for (int64_t d = d0; d < d1; d += 64) {
    _tile_loadd(4, q + d, dp);
    _tile_loadd(6, groups + d * kGroup, 64);  // dim4 rows d/4 .. d/4 + 15 of the group
    _tile_dpbsud(0, 4, 6);
    if (NR > 1) {
      _tile_loadd(7, groups + group_bytes + d * kGroup, 64);
      _tile_dpbsud(1, 4, 7);
    }
    if (MR > 1) {
      _tile_loadd(5, q + kTile * dp + d, dp);
      _tile_dpbsud(2, 5, 6);
      if (NR > 1) _tile_dpbsud(3, 5, 7);
    }
  }
  _tile_stored(0, acc, ld_bytes);
  if (NR > 1) _tile_stored(1, c1, ld_bytes);
  if (MR > 1) _tile_stored(2, c2, ld_bytes);
  if (MR > 1 && NR > 1) _tile_stored(3, c3, ld_bytes);
}

}  // namespace

void dots_amx(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc,
              int64_t ld) {
  const int64_t dp = padded_dim(dim), group_bytes = dp * kGroup;
  load_tile_config();
  const int64_t blocks = (rows + 2 * kTile - 1) / (2 * kTile);
  for (int64_t j0 = 0; j0 < cols; j0 += 2 * kGroup) {
    const uint8_t* groups = packed + (j0 / kGroup) * group_bytes;
    const bool two = cols - j0 > kGroup;
    for (int64_t d0 = 0; d0 < dp; d0 += kDimChunk) {
      const int64_t d1 = d0 + kDimChunk < dp ? d0 + kDimChunk : dp;
      // The next panel (this pair's next pass, else the next pair's first; prefetches past the end of the
      // codebook are dropped, they never fault) comes from memory while this one runs, each row block asking
      // for its share: without it the kernel waits on memory.
      const uint8_t* next = d1 < dp ? groups + d1 * kGroup : groups + 2 * group_bytes;
      const int64_t next_dims = d1 < dp ? std::min(kDimChunk, dp - d1) : std::min(kDimChunk, dp);
      const int64_t next_bytes = next_dims * kGroup;
      const int64_t share = (next_bytes / 64 + blocks - 1) / blocks * 64;
      // q and acc hold round_up(rows, kRows) rows, so a 32-row block never leaves them.
      for (int64_t r0 = 0, b = 0; r0 < rows; r0 += 2 * kTile, ++b) {
        for (int64_t o = b * share; o < std::min(next_bytes, (b + 1) * share); o += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + group_bytes + o), _MM_HINT_T0);
        }
        const int8_t* qr = q + r0 * dp;
        int32_t* a = acc + r0 * ld + j0;
        if (rows - r0 > kTile)
          two ? block<2, 2>(qr, dp, d0, d1, groups, a, ld) : block<2, 1>(qr, dp, d0, d1, groups, a, ld);
        else
          two ? block<1, 2>(qr, dp, d0, d1, groups, a, ld) : block<1, 1>(qr, dp, d0, d1, groups, a, ld);
      }
    }
  }
  _tile_release();
}

int64_t amx_peak_macs(int64_t reps) {
  load_tile_config();
  alignas(64) int8_t ones[kTile * 64];
  std::memset(ones, 1, sizeof(ones));
  _tile_zero(0);  // tile numbers are immediates
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (int64_t i = 0; i < reps; ++i) {  // four independent accumulators, as in dots_amx
    _tile_dpbsud(0, 4, 6);
    _tile_dpbsud(1, 4, 7);
    _tile_dpbsud(2, 5, 6);
    _tile_dpbsud(3, 5, 7);
  }
  _tile_release();
  return reps * 4 * kTile * kTile * 64;
}

}  // namespace int8
}  // namespace vq
}  // namespace pyops
