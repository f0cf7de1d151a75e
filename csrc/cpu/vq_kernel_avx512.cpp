// AVX-512 copy of the CPU VQ kernels (twice the lanes of AVX2 for the score scan and the re-rank); see
// vq_kernel_avx2.cpp for why the pragma and macros.
#include "isa_prelude.h"  // before the pragma: see there
#if defined(__x86_64__) && !defined(__AVX2__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define PYOPS_CPU_ISA avx512
#include "vq_kernel.h"
#endif
