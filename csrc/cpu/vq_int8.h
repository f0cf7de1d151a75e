// Int8 search scores for the CPU VQ search (exact=False): row-wise symmetric int8 quantization of rows and
// codes, and int8 dot products: AMX tiles (tdpbsud: 16x16x64 multiply-adds per instruction, measured 7.6x
// the VNNI rate on a Sapphire Rapids-class Xeon) at the "amx" ISA level, else AVX512-VNNI (vpdpbusd: 64
// multiply-adds per instruction, 1.6x the fp32 FMA rate; bf16's vdpbf16ps runs at half the fp32 rate there).
// The scores only pick the k + 8 candidates; the caller re-ranks them in fp32, so returned distances stay exact.
//
// The packed code layout is both kernels' operand as is: a group of 16 codes is [dim4][16 codes][4 dims], so
// 16 consecutive dim4 rows (64 dims) of a group are one 1 KiB AMX B tile in VNNI order, and one dim4 row is
// one 64-byte vpdpbusd operand.
//
// A value v of a row with scale s = max|v| / 127 becomes q = round(v / s), so |v - s q| <= s / 2 and
// |x.c - sx sc qx.qc| <= (sc |x|_1 + sx |c|_1) / 2 + D sx sc / 4 <= |x| |c| (sqrt(D) / 127 + D / 64516).
#pragma once

#include <cstdint>

namespace pyops {
namespace vq {
namespace int8 {

constexpr int64_t kGroup = 16;      // codes per packed group: one 64-byte vector holds 16 codes x 4 dims
constexpr int64_t kRows = 32;       // quantized row buffers are padded to it: two 16-row AMX A tiles
constexpr int64_t kMaxDim = 65536;  // |sum of D products| <= D * 127 * 255 stays below 2^31

// Whether this CPU (and build) can run the kernels below (VNNI at the "avx512" or "amx" level), and whether
// dots() uses AMX tiles ("amx" level).
bool supported();
bool use_amx();
// Dims padded to whole 64-byte tile rows (zeros, which add nothing to a dot product).
inline int64_t padded_dim(int64_t dim) { return (dim + 63) / 64 * 64; }

// Code `code` [dim] fp32 -> its slot (0..15) of a packed group [padded_dim / 4, 16, 4] bytes (q + 128);
// returns the code's scale. Padding dims quantize to 0.
float pack_code(const float* code, int64_t dim, uint8_t* group, int64_t slot);
// Codes [cols, dim] fp32 -> packed [ceil(cols / 16), padded_dim / 4, 16, 4] and scales [ceil(cols / 16) * 16];
// padding codes quantize to 0 with scale 0.
void pack_codes(const float* codes, int64_t cols, int64_t dim, uint8_t* packed, float* scale);

// Rows [rows, dim] fp32 -> q [round_up(rows, kRows), padded_dim] int8, scale and bias (128 * sum q, the
// unsigned-offset correction) per row; padding rows are zero.
void quantize_rows(const float* x, int64_t rows, int64_t dim, int8_t* q, float* scale, int32_t* bias);

// acc[r, j] = the int32 dot product of row r's int8 values (quantize_rows) with code j's unsigned packed
// values (pack_codes, `packed` pointing at the first code's group), so x_r . c_j ~ (acc[r, j] - bias[r]) *
// scale[r] * code_scale[j]; the search's scan applies that as it reads acc. acc has row stride ld (a multiple
// of 16) and room for round_up(rows, kRows) rows x round_up(cols, 32) columns: the AMX kernel stores whole
// 16 x 16 tiles. dots() picks dots_amx when use_amx() and rows >= 16, else dots_vnni; the sums are exact, so
// both give identical results.
void dots(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc, int64_t ld);
void dots_vnni(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc,
               int64_t ld);
void dots_amx(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc,
              int64_t ld);

// Machine limits for the benchmarks (pyops::_cpu_limits): int8 multiply-adds done by `reps` rounds of a
// register-only loop of the AMX / VNNI instruction (the instruction's peak rate), and a streaming read of
// `bytes` bytes at `data` (returns a value that depends on every byte, so the reads cannot be elided).
int64_t amx_peak_macs(int64_t reps);
int64_t vnni_peak_macs(int64_t reps);
uint64_t read_bytes(const uint8_t* data, int64_t bytes);

}  // namespace int8
}  // namespace vq
}  // namespace pyops
