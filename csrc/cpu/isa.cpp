// The run-time choice among the CPU ISA copies (see isa.h) and the pyops::cpu_isa op that reads or forces it.
#include "isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#if PYOPS_CPU_ISA_X86 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pyops {
namespace cpu_isa {
namespace {

constexpr Level kLevels[] = {Level::kBase, Level::kAvx2, Level::kAvx512, Level::kAmx};

// Whether this CPU has AMX-INT8 tiles and the kernel lets this process use them: Linux keeps the 8 KiB tile
// state off until the process asks (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); without the grant
// the first tile instruction faults. The permission covers every thread of the process.
bool amx_usable() {
#if PYOPS_CPU_ISA_X86 && defined(__linux__)
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8")) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The best level this build and CPU can run; the AVX-512 copy is also compiled with AVX2/FMA/F16C.
Level best() {
#if PYOPS_CPU_ISA_X86
  static const Level level = [] {
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    // The AMX level also runs the VNNI copy (vq_int8_avx512vnni.cpp) for the blocks too small for tiles.
    const bool amx = avx512 && __builtin_cpu_supports("avx512vnni") && amx_usable();
    return amx ? Level::kAmx : avx512 ? Level::kAvx512 : avx2 ? Level::kAvx2 : Level::kBase;
  }();
  return level;
#else
  return Level::kBase;
#endif
}

std::string supported_list() {
  std::string out;
  for (Level l : kLevels)
    if (supported(l)) out += std::string(out.empty() ? "" : ", ") + name(l);
  return out;
}

// The level named `text`; a ValueError naming `what` (the variable or argument) when it is not one, or
// when this build or CPU cannot run it.
Level parse(std::string_view text, const char* what) {
  for (Level l : kLevels) {
    if (text != name(l)) continue;
    TORCH_CHECK_VALUE(supported(l), what, "=", text, ": this ",
                      PYOPS_CPU_ISA_X86 ? "CPU cannot run that level" : "build has only the base copy",
                      "; supported levels: ", supported_list());
    return l;
  }
  TORCH_CHECK_VALUE(false, what, "='", text, "' is not a CPU ISA level; expected one of base, avx2, avx512, amx");
}

// -1 until the first active() call reads PYOPS_CPU_ISA.
std::atomic<int> g_active{-1};

}  // namespace

const char* name(Level level) {
  switch (level) {
    case Level::kAmx:
      return "amx";
    case Level::kAvx512:
      return "avx512";
    case Level::kAvx2:
      return "avx2";
    case Level::kBase:
      break;
  }
  return "base";
}

bool supported(Level level) { return static_cast<int>(level) <= static_cast<int>(best()); }

Level active() {
  int level = g_active.load(std::memory_order_relaxed);
  if (level < 0) {
    // Not cached when it throws: every op call then names the bad setting again.
    const char* env = std::getenv("PYOPS_CPU_ISA");
    level = static_cast<int>(env && *env ? parse(env, "PYOPS_CPU_ISA") : best());
    g_active.store(level, std::memory_order_relaxed);
  }
  return static_cast<Level>(level);
}

void set_active(Level level) {
  TORCH_CHECK_VALUE(supported(level), "cpu_isa: this CPU or build cannot run '", name(level),
                    "'; supported levels: ", supported_list());
  g_active.store(static_cast<int>(level), std::memory_order_relaxed);
}

namespace {

// pyops::cpu_isa(level=None): the active level's name; with a level, switches to it first.
std::string cpu_isa_op(std::optional<c10::string_view> level) {
  if (level) set_active(parse(std::string_view(level->data(), level->size()), "level"));
  return name(active());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyops, m) {
  // The CPU instruction-set level of the native CPU kernels ("base", "avx2", "avx512", "amx"); with `level`,
  // switches to it (ValueError if this CPU or build cannot run it). For tests and benchmarks.
  m.def("cpu_isa(str? level=None) -> str", &cpu_isa_op);
}

}  // namespace cpu_isa
}  // namespace pyops
