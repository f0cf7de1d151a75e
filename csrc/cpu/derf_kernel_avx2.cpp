// AVX2+FMA copy of the CPU Derf kernels; derf.cpp only calls it when the CPU has AVX2, FMA and F16C.
// setuptools has no per-file flags, so the target pragma plays -mavx2 -mfma -mf16c. GCC does not define
// the ISA macros for a pragma, and ATen's vector headers (and sleef.h) key on them, so define them here.
// Keep the guard in step with PYOPS_HAVE_X86_KERNELS (derf_kernel_isa.h); only isa_prelude.h precedes it.
#include "isa_prelude.h"  // before the pragma: see there
#if defined(__x86_64__) && !defined(__AVX2__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx2,fma,f16c")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define PYOPS_CPU_ISA avx2
#include "derf_kernel.h"
#endif
