// AVX512-VNNI int8 score kernels of the CPU VQ search (see vq_int8.h). An ISA copy like the others (isa.h):
// its own object, compiled with real -mavx512vnni flags (setup.py ISA_FLAGS / CMakeLists.txt
// PYOPS_ISA_FLAGS_avx512vnni), called only when int8::supported() (vq.cpp, baseline code). Like the other
// copies it instantiates no library function out of line (no std::vector, no TORCH_CHECK), so no shared
// name can carry its instructions into baseline code (tests/test_isa.py).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "vq_int8.h"

#if !defined(__AVX512VNNI__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "vq_int8_avx512vnni.cpp needs the AVX512-VNNI compiler flags (see setup.py ISA_FLAGS)"
#endif

namespace pyops {
namespace vq {
namespace int8 {

namespace {

// q[0, padded_dim) = round(v / s) for one row of `dim` values (zero past dim); returns s = max|v| / 127.
float quantize_row(const float* v, int64_t dim, int8_t* q) {
  const int64_t dp = padded_dim(dim);
  __m512 amax = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= dim; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(v + i)));
  float m = _mm512_reduce_max_ps(amax);
  for (; i < dim; ++i) m = m > std::fabs(v[i]) ? m : std::fabs(v[i]);
  std::memset(q, 0, dp);
  if (!(m > 0)) return 0.f;  // an all-zero row (NaN never reaches here: inputs are checked)
  const __m512 inv = _mm512_set1_ps(127.f / m);
  for (i = 0; i + 16 <= dim; i += 16)  // cvtps rounds to nearest even; |v| * 127 / m <= 127
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                     _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), inv))));
  for (; i < dim; ++i) q[i] = static_cast<int8_t>(std::nearbyint(v[i] * (127.f / m)));
  return m / 127.f;
}

constexpr int64_t kTileRows = 8;  // rows per micro-tile: 8 x 2 accumulators + 2 code vectors in registers

// One micro-tile: kTileRows rows x (16 * H) codes, accumulated over every dim in int32.
template <int H>
void micro_tile(const int8_t* q, int64_t ldq, int64_t rows, const uint8_t* panel, int64_t group_stride, int64_t cols,
                int64_t dim4, int32_t* acc, int64_t ld) {
  __m512i sum[kTileRows][H];
  for (int r = 0; r < kTileRows; ++r)
    for (int h = 0; h < H; ++h) sum[r][h] = _mm512_setzero_si512();
  for (int64_t t = 0; t < dim4; ++t) {
    __m512i c[H];
    for (int h = 0; h < H; ++h) c[h] = _mm512_loadu_si512(panel + h * group_stride + t * 64);
    for (int r = 0; r < kTileRows; ++r) {
      int32_t four;  // dims 4t..4t+3 of row r, broadcast to every lane
      std::memcpy(&four, q + r * ldq + 4 * t, 4);
      const __m512i xb = _mm512_set1_epi32(four);
      for (int h = 0; h < H; ++h) sum[r][h] = _mm512_dpbusd_epi32(sum[r][h], c[h], xb);
    }
  }
  for (int64_t r = 0; r < (rows < kTileRows ? rows : kTileRows); ++r)
    for (int h = 0; h < H; ++h) {
      const int64_t left = cols - 16 * h;
      if (left <= 0) break;
      const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      _mm512_mask_storeu_epi32(acc + r * ld + 16 * h, mask, sum[r][h]);
    }
}

}  // namespace

float pack_code(const float* code, int64_t dim, uint8_t* group, int64_t slot) {
  const int64_t dp = padded_dim(dim);
  int8_t* row = new int8_t[dp]();  // not std::vector: see the top of the file
  const float scale = quantize_row(code, dim, row);
  // Group layout [dim4][16 codes][4 dims]; xor 0x80 per byte = q + 128 (the unsigned operand).
  uint32_t* dst = reinterpret_cast<uint32_t*>(group) + slot;
  for (int64_t t = 0; t < dp / 4; ++t) {
    uint32_t four;
    std::memcpy(&four, row + 4 * t, 4);
    dst[t * kGroup] = four ^ 0x80808080u;
  }
  delete[] row;
  return scale;
}

void pack_codes(const float* codes, int64_t cols, int64_t dim, uint8_t* packed, float* scale) {
  const int64_t group_bytes = padded_dim(dim) * kGroup, groups = (cols + kGroup - 1) / kGroup;
  for (int64_t j = 0; j < groups * kGroup; ++j) {
    uint8_t* group = packed + (j / kGroup) * group_bytes;
    if (j < cols) {
      scale[j] = pack_code(codes + j * dim, dim, group, j % kGroup);
    } else {  // a padding code: q = 0
      scale[j] = 0.f;
      for (int64_t t = 0; t < group_bytes / 64; ++t) std::memset(group + t * 64 + (j % kGroup) * 4, 0x80, 4);
    }
  }
}

void quantize_rows(const float* x, int64_t rows, int64_t dim, int8_t* q, float* scale, int32_t* bias) {
  const int64_t dp = padded_dim(dim), padded_rows = (rows + kRows - 1) / kRows * kRows;
  for (int64_t r = 0; r < padded_rows; ++r) {
    int8_t* qr = q + r * dp;
    if (r >= rows) {
      std::memset(qr, 0, dp);
      scale[r] = 0.f, bias[r] = 0;
      continue;
    }
    scale[r] = quantize_row(x + r * dim, dim, qr);
    int32_t sum = 0;
    for (int64_t i = 0; i < dim; ++i) sum += qr[i];
    bias[r] = 128 * sum;
  }
}

void dots_vnni(const int8_t* q, int64_t rows, const uint8_t* packed, int64_t cols, int64_t dim, int32_t* acc,
               int64_t ld) {
  const int64_t dp = padded_dim(dim), dim4 = dp / 4, group_stride = dim4 * 64;
  // Two groups (32 codes) per panel: 16 accumulators + 2 code vectors stay in registers, and each 64-byte
  // code load feeds 8 vpdpbusd. The panel streams from L2; the 8 rows (8 * D bytes) sit in L1.
  for (int64_t j0 = 0; j0 < cols; j0 += 2 * kGroup) {
    const uint8_t* panel = packed + (j0 / kGroup) * group_stride;
    const int64_t n = (cols - j0 < 2 * kGroup ? cols - j0 : 2 * kGroup);
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int64_t m = (rows - r0 < kTileRows ? rows - r0 : kTileRows);
      if (n > kGroup)
        micro_tile<2>(q + r0 * dp, dp, m, panel, group_stride, n, dim4, acc + r0 * ld + j0, ld);
      else
        micro_tile<1>(q + r0 * dp, dp, m, panel, group_stride, n, dim4, acc + r0 * ld + j0, ld);
    }
  }
}

int64_t vnni_peak_macs(int64_t reps) {
  constexpr int kAcc = 12;  // enough independent chains to cover vpdpbusd's latency at 2 per cycle
  __m512i acc[kAcc];
  for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_set1_epi32(a);
  const __m512i u = _mm512_set1_epi8(1), s = _mm512_set1_epi8(2);
  for (int64_t i = 0; i < reps; ++i)
    for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_dpbusd_epi32(acc[a], u, s);
  int32_t sink = 0;
  for (int a = 0; a < kAcc; ++a) sink += _mm512_reduce_add_epi32(acc[a]);
  volatile int32_t keep = sink;  // the loop must run
  (void)keep;
  return reps * kAcc * 64;
}

uint64_t read_bytes(const uint8_t* data, int64_t bytes) {
  __m512i x0 = _mm512_setzero_si512(), x1 = x0, x2 = x0, x3 = x0;
  int64_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    x0 = _mm512_xor_si512(x0, _mm512_loadu_si512(data + i));
    x1 = _mm512_xor_si512(x1, _mm512_loadu_si512(data + i + 64));
    x2 = _mm512_xor_si512(x2, _mm512_loadu_si512(data + i + 128));
    x3 = _mm512_xor_si512(x3, _mm512_loadu_si512(data + i + 192));
  }
  uint64_t out = static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_xor_si512(_mm512_xor_si512(x0, x1), _mm512_xor_si512(x2, x3))));
  for (; i < bytes; ++i) out += data[i];
  return out;
}

}  // namespace int8
}  // namespace vq
}  // namespace pyops
