// Baseline-ISA copy of the CPU Derf kernels (whatever the compiler targets by default).
#define PYOPS_CPU_ISA base
#include "derf_kernel.h"
