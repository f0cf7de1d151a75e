// Baseline-ISA copy of the CPU VQ kernels (whatever the compiler targets by default).
#define PYOPS_CPU_ISA base
#include "vq_kernel.h"
