// CPU instruction-set copies of the vectorised kernels, and the run-time choice among them.
//
// A kernel header (derf_kernel.h, vq_kernel.h) is compiled three times: by <op>_kernel_base.cpp with the
// compiler's default flags, and by <op>_kernel_avx2.cpp / <op>_kernel_avx512.cpp with real -m flags and
// -DCPU_CAPABILITY=AVX2|AVX512 (setup.py's ISA_FLAGS and CMakeLists.txt's PYOPS_ISA_FLAGS, kept in step),
// as ATen builds its own per-capability kernels. Each copy defines everything in pyops::<op>::<level>
// (PYOPS_ISA_NAMESPACE) and ATen's Vectorized in its at::vec::<CPU_CAPABILITY> inline namespace, so no two
// copies share a mangled name. Host code calls a copy through PYOPS_CPU_ISA_CALL, which follows
// pyops::cpu_isa::active(): the best level this CPU has, or PYOPS_CPU_ISA=base|avx2|avx512|amx. "amx" runs
// the AVX-512 copies plus the AMX-INT8 tile kernels of the VQ search (vq_int8_amx.cpp); it needs a CPU with
// AMX and a kernel that grants the tile state (Linux >= 5.16, arch_prctl(ARCH_REQ_XCOMP_PERM)).
//
// The build defines PYOPS_CPU_ISA_X86=1 when it compiles the AVX2/AVX-512 copies (x86-64 with GCC or
// Clang); other builds have the base copy only.
#pragma once

#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#ifndef PYOPS_CPU_ISA_X86
#define PYOPS_CPU_ISA_X86 0
#endif

// The namespace of the copy this translation unit compiles, checked against the flags it was given.
#if defined(CPU_CAPABILITY_AVX512)
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__) || \
    !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "CPU_CAPABILITY_AVX512 without the AVX-512 compiler flags (see setup.py ISA_FLAGS)"
#endif
#define PYOPS_ISA_NAMESPACE avx512
#elif defined(CPU_CAPABILITY_AVX2)
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "CPU_CAPABILITY_AVX2 without the AVX2 compiler flags (see setup.py ISA_FLAGS)"
#endif
#define PYOPS_ISA_NAMESPACE avx2
#else
#define PYOPS_ISA_NAMESPACE base
#endif

namespace pyops {
namespace cpu_isa {

enum class Level : int { kBase = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

// "base", "avx2", "avx512" or "amx".
const char* name(Level level);
// Whether this build carries the level's copy and this CPU can run it (decided once).
bool supported(Level level);
// The level the kernels run at: PYOPS_CPU_ISA if set (an error naming it if the CPU or build lacks that
// level, or the value is not a level), else the best supported one. Read on first use, then cached.
Level active();
// Switches every op to `level` (pyops::cpu_isa op, for tests); a ValueError if it is not supported.
void set_active(Level level);

// What the copies use instead of library templates. A copy must not instantiate a function of a library
// (std::vector<float>'s members, TORCH_CHECK's message builder, at::Tensor's destructor, ...) out of line: the
// instantiation keeps the library's mangled name, the linker keeps one of the copies' same-named definitions,
// and baseline code may then run AVX-512 instructions. So host code (derf.cpp, vq.cpp) checks arguments,
// dispatches on dtype and allocates tensors; the copies take raw pointers, use these helpers (named per
// copy) and ATen's Vectorized (per copy through CPU_CAPABILITY). tests/test_isa.py disassembles the build
// to check this.
namespace PYOPS_ISA_NAMESPACE {

// A heap array of n Ts, zeroed, 64-byte aligned: a cache line, and a whole AVX-512 vector / AMX tile row,
// so no tile row or vector load of a buffer straddles two lines (misaligned int8 rows halved the AMX rate).
template <typename T>
class Buffer {
  static_assert(std::is_trivially_copyable_v<T>, "Buffer zeroes raw memory");
  static constexpr std::align_val_t kAlign{64};

 public:
  explicit Buffer(int64_t n) : data_(n > 0 ? static_cast<T*>(::operator new[](n * sizeof(T), kAlign)) : nullptr) {
    if (n > 0) std::memset(static_cast<void*>(data_), 0, n * sizeof(T));
  }
  ~Buffer() {
    if (data_) ::operator delete[](data_, kAlign);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() const { return data_; }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  T* data_;
};

}  // namespace PYOPS_ISA_NAMESPACE

}  // namespace cpu_isa
}  // namespace pyops

// Declares the same entry points in every copy's namespace (declaring a copy the build lacks is harmless:
// PYOPS_CPU_ISA_CALL only calls it when PYOPS_CPU_ISA_X86).
#define PYOPS_CPU_ISA_DECLARE(...) \
  namespace base {                 \
  __VA_ARGS__                      \
  }                                \
  namespace avx2 {                 \
  __VA_ARGS__                      \
  }                                \
  namespace avx512 {               \
  __VA_ARGS__                      \
  }

// Explicit instantiations of a copy's kernels for every dtype the CPU entry points dispatch over
// (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)): M(T) instantiates them for one T.
#define PYOPS_CPU_ISA_INSTANTIATE_DTYPES(M) M(float) M(double) M(at::Half) M(at::BFloat16)

// Calls fn(args...) from the active copy's namespace (relative to the caller's, e.g. pyops::derf).
#if PYOPS_CPU_ISA_X86
#define PYOPS_CPU_ISA_CALL(fn, ...)          \
  do {                                       \
    switch (::pyops::cpu_isa::active()) {    \
      case ::pyops::cpu_isa::Level::kAmx:    \
      case ::pyops::cpu_isa::Level::kAvx512: \
        avx512::fn(__VA_ARGS__);             \
        break;                               \
      case ::pyops::cpu_isa::Level::kAvx2:   \
        avx2::fn(__VA_ARGS__);               \
        break;                               \
      case ::pyops::cpu_isa::Level::kBase:   \
        base::fn(__VA_ARGS__);               \
        break;                               \
    }                                        \
  } while (0)
#else
#define PYOPS_CPU_ISA_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif
